"""The job's memory: every input file it started, by content SHA-256 (`files.sqlite`)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batch.errors import ConfigError
from batch.jobs.clock import now_iso

_STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS files (
    sha256 TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,        -- running | stopped | done | rejected | abandoned
    run_dir TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    archived_to TEXT NOT NULL DEFAULT '',
    started TEXT NOT NULL,
    finished TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sha256, dry_run)
);
"""

RESUMABLE: Final = ("running", "stopped")
# Rejected files are not finished: every run reads them again (see _JobRun._one).


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One input file the job has seen, by content digest."""

    sha256: str
    path: str
    state: str
    run_dir: str
    exit_code: int | None
    started: str
    finished: str
    error: str


class JobState:
    """`<state dir>/files.sqlite`: every input file the job started, by content SHA-256."""

    def __init__(self, path: Path, *, dry_run: bool, readonly: bool = False) -> None:
        self.path = path
        self.dry_run = int(dry_run)
        try:
            if readonly and path.exists():
                # `job check` reads the state a running job may be writing; it never writes.
                self._db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
                self._db.execute("PRAGMA query_only=1")
                self._db.execute("SELECT 1 FROM files LIMIT 1")
                return
            # Read-only without a state yet: an empty one in memory (nothing was processed).
            self._db = sqlite3.connect(":memory:" if readonly else path, isolation_level=None)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_STATE_SCHEMA)
        except sqlite3.Error as error:
            raise ConfigError(f"{path}: cannot use the job's state: {error}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get(self, sha256: str) -> FileRecord | None:
        """The record of this content, if the job has seen it (in this dry-run mode)."""
        row = self._db.execute(
            "SELECT sha256, path, state, run_dir, exit_code, started, finished, error"
            " FROM files WHERE sha256 = ? AND dry_run = ?",
            (sha256, self.dry_run),
        ).fetchone()
        return None if row is None else FileRecord(*row)

    def resumable(self) -> list[FileRecord]:
        """Files whose run did not finish, oldest first."""
        rows = self._db.execute(
            "SELECT sha256, path, state, run_dir, exit_code, started, finished, error FROM files"
            f" WHERE dry_run = ? AND state IN {RESUMABLE!r} ORDER BY started, rowid",
            (self.dry_run,),
        )
        return [FileRecord(*r) for r in rows]

    def start(self, sha256: str, path: Path, run_dir: Path) -> None:
        """Record that this file's run begins (committed before anything is sent)."""
        self._db.execute(
            "INSERT INTO files(sha256, dry_run, path, state, run_dir, started)"
            " VALUES(?, ?, ?, 'running', ?, ?) ON CONFLICT(sha256, dry_run) DO UPDATE SET"
            " path = excluded.path, state = 'running', run_dir = excluded.run_dir,"
            " started = excluded.started, exit_code = NULL, error = '', finished = ''",
            (sha256, self.dry_run, str(path), str(run_dir), now_iso()),
        )

    def finish(
        self,
        sha256: str,
        state: str,
        *,
        exit_code: int | None = None,
        counts: Mapping[str, int] | None = None,
        error: str = "",
    ) -> None:
        """Record how the file's run ended."""
        self._db.execute(
            "UPDATE files SET state = ?, exit_code = ?, counts = ?, error = ?, finished = ?"
            " WHERE sha256 = ? AND dry_run = ?",
            (
                state,
                exit_code,
                json.dumps(dict(counts or {})),
                error,
                now_iso(),
                sha256,
                self.dry_run,
            ),
        )

    def reject(self, sha256: str, path: Path, error: str) -> None:
        """Record a file that cannot be used (read again by the next run: nothing was sent)."""
        self._db.execute(
            "INSERT INTO files(sha256, dry_run, path, state, error, exit_code, started, finished)"
            " VALUES(?, ?, ?, 'rejected', ?, 2, ?, ?) ON CONFLICT(sha256, dry_run) DO UPDATE SET"
            " path = excluded.path, state = 'rejected', error = excluded.error, exit_code = 2,"
            " finished = excluded.finished",
            (sha256, self.dry_run, str(path), error, now_iso(), now_iso()),
        )

    def processed_path(self, path: Path) -> bool:
        """Whether a file at this path was processed to the end (in this dry-run mode)."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE path = ? AND dry_run = ? AND state = 'done' LIMIT 1",
            (str(path), self.dry_run),
        ).fetchone()
        return row is not None

    def recent(self, limit: int = 50) -> list[dict[str, object]]:
        """The files most recently started, newest first (for job.html), with their counts."""
        rows = self._db.execute(
            "SELECT path, state, run_dir, exit_code, counts, error, started, finished FROM files"
            " WHERE dry_run = ? ORDER BY started DESC, rowid DESC LIMIT ?",
            (self.dry_run, limit),
        )
        keys = ("path", "state", "run_dir", "exit_code", "counts", "error", "started", "finished")
        found: list[dict[str, object]] = []
        for row in rows:
            record = dict(zip(keys, row, strict=True))
            try:
                record["counts"] = json.loads(str(record["counts"]))
            except ValueError:
                record["counts"] = {}
            found.append(record)
        return found

    def archived(self, sha256: str, to: Path) -> None:
        """Record where the file was moved."""
        self._db.execute(
            "UPDATE files SET archived_to = ? WHERE sha256 = ? AND dry_run = ?",
            (str(to), sha256, self.dry_run),
        )


def file_digest(path: Path, *, follow_symlinks: bool = True) -> str:
    """The SHA-256 of a regular file's bytes (the identity of a dropped file).

    Raises `OSError` for anything but a regular file. The drop folder scan refuses links,
    FIFOs and devices from `lstat` already; this closes the gap when one is swapped in after
    the scan: opened non-blocking (a FIFO does not hang the job), checked with `fstat` before
    a byte is read, and with `follow_symlinks=False` a symbolic link fails to open at all.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    digest = hashlib.sha256()
    with open(os.open(path, flags), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
