"""`job check`: validate the settings and the next inputs like `validate`, sending nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from batch.errors import ConfigError, InputFileError, UsageError
from batch.jobs.lock import pid_alive, read_lock
from batch.jobs.plan import plan_files, require_processed, write_column_map
from batch.jobs.spec import Job
from batch.jobs.state import JobState

# The files `job check` reads, as the next `job run` would.
_PENDING: Final = ("new", "resume")


@dataclass(slots=True)
class FileCheck:
    """`job check`'s verdict on one input file."""

    path: Path
    action: Literal["new", "resume", "done", "waiting", "skipped"]
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    skipped: int = 0
    error: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The verdict as a JSON object."""
        return {
            "file": str(self.path),
            "action": self.action,
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "error": self.error,
            "problems": self.problems,
            "warnings": self.warnings,
            "note": self.note,
        }


@dataclass(slots=True)
class CheckReport:
    """`job check`: the job's settings and every input file it would handle next."""

    job: Job
    credentials: str = ""
    problems: list[str] = field(default_factory=list)  # settings: exit 2
    files: list[FileCheck] = field(default_factory=list)
    lock: str = "free"
    webhook: str = ""
    #: A job with [[tenants]]: each tenant's own check.
    tenants: list[CheckReport] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """2 a setting is wrong, 1 an input file or row is bad, 0 ready to run (any tenant)."""
        if self.problems:
            return 2
        worst = max((t.exit_code for t in self.tenants), default=0)
        if any(f.error or f.invalid for f in self.files if f.action in _PENDING):
            return max(worst, 1)
        return worst

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`job check --json`)."""
        job = self.job
        if self.tenants:
            return {
                "job": job.name,
                "job_file": str(job.path),
                "webhook": self.webhook,
                "problems": self.problems,
                "tenants": [{"tenant": t.job.tenant, **t.to_json()} for t in self.tenants],
                "exit_code": self.exit_code,
            }
        return {
            "job": job.name,
            "job_file": str(job.path),
            "input": str(job.input_file or job.folder),
            "globs": list(job.globs) if job.folder else [],
            "cloud": job.endpoints.cloud,
            "graph_root": job.endpoints.graph_root,
            "credentials": self.credentials,
            "output_root": str(job.output_root),
            "archive": str(job.archive) if job.archive else None,
            "state_dir": str(job.state_dir),
            "lock": self.lock,
            "webhook": self.webhook,
            "problems": self.problems,
            "files": [f.to_json() for f in self.files],
            "exit_code": self.exit_code,
        }


def check_job(job: Job, *, env: Mapping[str, str] = os.environ) -> CheckReport:
    """Validate a job's settings and its current inputs like `validate`, sending nothing.

    Changes nothing on disk: no lock is taken and the state is read only. A job with
    [[tenants]] checks every tenant (`CheckReport.tenants`).
    """
    report = CheckReport(job)
    if job.notify.webhook_env is not None:
        from batch.notify import webhook_url

        try:
            webhook_url(job.notify.webhook_env, env)  # never shown: the URL is a secret
            report.webhook = (
                f"{job.notify.webhook_format} to ${job.notify.webhook_env} "
                f"(notify_on = {job.notify.notify_on})"
            )
        except ConfigError as error:
            report.problems.append(str(error))
    if job.tenants:
        report.tenants = [check_job(tenant, env=env) for tenant in job.tenants]
        return report
    try:
        tokens = job.tokens(env)
        if tokens is None:
            report.credentials = "none needed (dry run)"
        else:
            from batch.auth import credential_name

            kind = credential_name(tokens)
            kind = "access token" if kind == "GRAPH_ACCESS_TOKEN" else kind
            report.credentials = f"{kind} ({job.credentials.describe()})"
    except ConfigError as error:
        report.problems.append(f"credentials: {error}")
    for what, folder in (
        ("[output] root", job.output_root),
        ("[output] state_dir", job.state_dir),
        ("[output] archive", job.archive),
    ):
        if folder is not None and (problem := _unwritable(folder)):
            report.problems.append(f"{what} {folder}: {problem}")
    holder = read_lock(job.state_dir / "job.lock")
    if holder:
        alive = "running" if pid_alive(holder.get("pid")) else "not running: will be taken over"
        report.lock = f"last taken by pid {holder.get('pid')} at {holder.get('started')} ({alive})"
    try:
        state = JobState(job.state_dir / "files.sqlite", dry_run=job.dry_run, readonly=True)
    except ConfigError as error:
        report.problems.append(str(error))
        return report
    try:
        plan = plan_files(job, state)
    except ConfigError as error:
        report.problems.append(str(error))
        return report
    finally:
        state.close()
    if job.input_file is not None and not job.input_file.exists():
        try:
            require_processed(job)
            report.files.append(FileCheck(job.input_file, "done", note="processed and archived"))
        except ConfigError as error:
            report.problems.append(str(error))
    for path, record in plan.duplicates:
        report.files.append(FileCheck(path, "done", note=f"{record.finished} {record.run_dir}"))
    for path in plan.waiting:
        report.files.append(FileCheck(path, "waiting", note="modified within settle_seconds"))
    for path, why in [*plan.skipped, *plan.refused]:
        report.files.append(FileCheck(path, "skipped", note=why))
    map_dir = tempfile.TemporaryDirectory(prefix="autopilot-batch-job-") if job.columns else None
    try:
        map_file = (
            write_column_map(job.columns, Path(map_dir.name)) if map_dir and job.columns else None
        )
        for item in plan.items:
            action: Literal["new", "resume"] = "resume" if item.resume_dir else "new"
            report.files.append(_check_file(job, item.path, action, map_file))
    finally:
        if map_dir is not None:
            map_dir.cleanup()
    return report


def _unwritable(folder: Path) -> str:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return ""


def _check_file(
    job: Job, path: Path, action: Literal["new", "resume"], map_file: Path | None
) -> FileCheck:
    from batch.mapper import prepare
    from batch.model import Invalid, Skipped, Update

    check = FileCheck(path, action)
    try:
        prepared = prepare(path, job.input_options(map_file))
    except (InputFileError, UsageError) as error:
        check.error = str(error)
        return check
    check.warnings = list(prepared.warnings)
    for _raw, mapped in prepared.rows():
        check.rows += 1
        if isinstance(mapped, Update):
            check.valid += 1
        elif isinstance(mapped, Skipped):
            check.skipped += 1
        elif isinstance(mapped, Invalid):
            check.invalid += 1
            check.problems.extend(f"row {mapped.number}: {p}" for p in mapped.problems)
    return check


def iter_check_lines(report: CheckReport) -> Iterator[tuple[bool, str]]:
    """`job check`'s text output as (to_stderr, line) pairs."""
    job = report.job
    where = (
        f"file {job.input_file}"
        if job.input_file
        else (f"folder {job.folder} ({', '.join(job.globs)})")
    )
    if report.tenants:
        count = len(report.tenants)
        yield False, f"job {job.name} ({job.path}): {count} tenant{'' if count == 1 else 's'}"
        if report.webhook:
            yield False, f"  webhook:     {report.webhook}"
        for problem in report.problems:
            yield True, f"error: {problem}"
        for tenant in report.tenants:
            for to_stderr, line in iter_check_lines(tenant):
                yield to_stderr, line if to_stderr else f"  {line}"
        verdict = {0: "ready", 1: "some input is bad", 2: "the job's settings are wrong"}
        yield False, f"job {job.name}: {verdict[report.exit_code]} (exit {report.exit_code})"
        return
    label = f"tenant {job.tenant}" if job.tenant else f"job {job.name}"
    yield False, f"{label} ({job.path})" if not job.tenant else label
    yield False, f"  input:       {where}"
    yield False, f"  graph:       {job.endpoints.cloud} {job.endpoints.graph_root}"
    if report.credentials:
        yield False, f"  credentials: {report.credentials}"
    archive = f", archive {job.archive}" if job.archive else ""
    yield False, f"  output:      {job.output_root}{archive}"
    yield False, f"  lock:        {report.lock}"
    if report.webhook:
        yield False, f"  webhook:     {report.webhook}"
    for problem in report.problems:
        yield True, f"error: {problem}"
    for f in report.files:
        if f.action in _PENDING:
            if f.error:
                yield True, f"{f.path.name}: {f.error}"
                yield False, f"  {f.action:<7} {f.path}: cannot be used"
                continue
            for warning in f.warnings:
                yield True, f"{f.path.name}: warning: {warning}"
            for problem in f.problems:
                yield True, f"{f.path.name} {problem}"
            counts = f"{f.valid} valid, {f.invalid} invalid, {f.skipped} skipped"
            yield False, f"  {f.action:<7} {f.path}: {f.rows} rows: {counts}"
        else:
            yield False, f"  {f.action:<7} {f.path}: {f.note}"
    pending = sum(f.action in ("new", "resume") for f in report.files)
    verdict = {0: "ready", 1: "some input is bad", 2: "the job's settings are wrong"}
    yield (
        False,
        (
            f"{label}: {pending} file{'s' if pending != 1 else ''} to process; "
            f"{verdict[report.exit_code]} (exit {report.exit_code})"
        ),
    )
