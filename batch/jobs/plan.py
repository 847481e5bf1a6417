"""What a job run handles next: input files to resume, process, skip or wait for."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from batch.errors import ConfigError
from batch.jobs.spec import Job
from batch.jobs.state import RESUMABLE, FileRecord, JobState, file_digest


@dataclass(slots=True)
class Item:
    path: Path
    sha256: str
    resume_dir: Path | None = None


@dataclass(slots=True)
class Plan:
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why), logged
    refused: list[tuple[Path, str]] = field(default_factory=list)  # not regular files: unopened
    waiting: list[Path] = field(default_factory=list)  # too fresh (settle_seconds)
    abandoned: list[tuple[FileRecord, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, FileRecord]] = field(default_factory=list)  # already done


def _ignored_name(name: str) -> bool:
    # Hidden files, Excel's "~$book.xlsx" owner files and editors' temporary files.
    return name.startswith((".", "~$", "~")) or name.endswith(("~", ".tmp", ".part", ".partial"))


@dataclass(slots=True)
class FolderScan:
    """The files a drop folder offers: ready, still settling, and refused (with the reason)."""

    ready: list[Path] = field(default_factory=list)
    settling: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


_NOT_OPENED: Final = "a job reads only regular files inside its folder, so it was not opened"


def _refusal(path: Path, mode: int, folder: Path) -> str | None:
    """Why a matched name is not input, judged from `lstat` alone; None for a regular file.

    A drop folder is often a share others can write to: a link there could point at a file
    only the job's account may read (and its first line would be echoed as an unknown column),
    and opening a FIFO blocks forever. Nothing refused here is ever opened.
    """
    if stat.S_ISLNK(mode):
        return f"a symbolic link (not followed); {_NOT_OPENED}"
    if stat.S_ISFIFO(mode):
        return f"a named pipe (FIFO); {_NOT_OPENED}"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"a device; {_NOT_OPENED}"
    if stat.S_ISSOCK(mode):
        return f"a socket; {_NOT_OPENED}"
    if not stat.S_ISREG(mode):
        return f"not a regular file; {_NOT_OPENED}"
    # A regular file reached through a linked subfolder (`glob = "sub/*.csv"`) lives elsewhere.
    if not path.resolve().is_relative_to(folder):
        return f"its real location is outside the folder (a linked folder); {_NOT_OPENED}"
    return None


def scan_folder(job: Job, now: float | None = None) -> FolderScan:
    """The job's input files: ready (oldest first: mtime, then name), settling, and refused.

    Refused names (links, FIFOs, devices, sockets, files whose real path is elsewhere) are
    judged from `lstat` and never opened.
    """
    scan = FolderScan()
    if job.input_file is not None:
        # One file the job file names itself: the admin chose that path, links included.
        if job.input_file.is_file():
            scan.ready.append(job.input_file)
        return scan
    assert job.folder is not None
    if not job.folder.is_dir():
        raise ConfigError(f"{job.path}: [input] folder {job.folder} does not exist")
    folder = job.folder.resolve()
    excluded = [p for p in (job.archive, job.output_root, job.state_dir) if p is not None]
    found: dict[Path, os.stat_result] = {}
    refused: dict[Path, str] = {}
    for pattern in job.globs:
        for path in job.folder.glob(pattern):
            if path in found or path in refused or _ignored_name(path.name):
                continue
            if any(path.is_relative_to(ex) for ex in excluded):
                continue
            try:
                st = path.lstat()  # never follows a link, never opens
            except OSError:
                continue  # vanished meanwhile
            if stat.S_ISDIR(st.st_mode):
                continue  # a subfolder matching the pattern is not an input
            why = _refusal(path, st.st_mode, folder)
            if why is not None:
                refused[path] = why
            else:
                found[path] = st
    clock = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    scan.ready = [p for p, st in found.items() if clock - st.st_mtime >= job.settle_seconds]
    scan.settling = sorted(p for p in found if p not in scan.ready)
    scan.ready.sort(key=lambda p: (found[p].st_mtime, p.name))
    scan.refused = sorted(refused.items())
    return scan


def candidates(job: Job, now: float | None = None) -> tuple[list[Path], list[Path]]:
    """The job's input files, oldest first (mtime, then name), and those still settling."""
    scan = scan_folder(job, now)
    return scan.ready, scan.settling


def plan_files(job: Job, state: JobState) -> Plan:
    plan = Plan()
    shas: set[str] = set()
    # A drop folder's files are never read through a link (see `_refusal`).
    follow = job.folder is None
    for record in state.resumable():
        path = Path(record.path)
        try:
            sha = file_digest(path, follow_symlinks=follow)
        except OSError:
            plan.abandoned.append((record, "the file is gone"))
            continue
        if sha != record.sha256:
            plan.abandoned.append((record, "the file changed since"))
            continue
        plan.items.append(Item(path, sha, Path(record.run_dir) if record.run_dir else None))
        shas.add(sha)
    scan = scan_folder(job)
    ready, plan.waiting = scan.ready, scan.settling
    plan.refused = scan.refused
    in_plan = {item.path for item in plan.items}
    for path in ready:
        if path in in_plan:
            continue
        try:
            sha = file_digest(path, follow_symlinks=follow)
        except OSError as error:
            plan.skipped.append((path, f"cannot be read: {error.strerror or error}"))
            continue
        if sha in shas:
            plan.skipped.append((path, "same content as another file of this run"))
            continue
        seen = state.get(sha)
        if seen is not None and seen.state == "done":
            plan.duplicates.append((path, seen))
            continue
        if seen is not None and seen.state in RESUMABLE:
            plan.skipped.append((path, f"same content as {seen.path}, which is resumed"))
            continue
        plan.items.append(Item(path, sha))
        shas.add(sha)
    return plan


def write_column_map(columns: Mapping[str, str], folder: Path) -> Path:
    """The inline [columns] table as a `--map` file (the mapper reads column maps from files)."""
    path = folder / "columns.toml"
    lines = ["# Written by `autopilot-batch job` from the job file's [columns]; edit that instead."]
    lines.append("[columns]")
    lines += [f"{json.dumps(header)} = {json.dumps(target)}" for header, target in columns.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def require_processed(job: Job) -> None:
    """A one-off job whose file is gone: fine once it was processed (and archived)."""
    assert job.input_file is not None
    state_path = job.state_dir / "files.sqlite"
    if state_path.exists():
        state = JobState(state_path, dry_run=job.dry_run, readonly=True)
        try:
            if state.processed_path(job.input_file):
                return
        finally:
            state.close()
    raise ConfigError(f"{job.path}: [input] file {job.input_file} does not exist")
