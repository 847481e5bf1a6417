"""The job lock: one running job at a time (`flock` on `<state dir>/job.lock`)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from batch.errors import ConfigError, LockHeld
from batch.jobs.clock import now_iso


class JobLock:
    """One running job at a time: `flock` on `<state dir>/job.lock`, holding the PID for messages.

    The kernel releases the lock when its process ends, however it ends, so a lock file left by
    a dead process is taken over without any guessing from PIDs. The file is never deleted:
    deleting it would let two processes lock two different files of the same name.
    """

    def __init__(self, path: Path, job_name: str) -> None:
        self.path = path
        self.job_name = job_name
        self._fd: int | None = None
        #: The previous holder's record when it died without releasing (stale lock taken over).
        self.taken_over: dict[str, Any] | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockHeld` at once; records this process in the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"cannot lock {self.path}: {error.strerror}") from None
            raise LockHeld(self._held_message(_holder(self.path))) from None
        previous = _parse_lock(os.pread(fd, 4096, 0))
        if previous and previous.get("pid") != os.getpid():
            self.taken_over = previous
        record = {"pid": os.getpid(), "started": now_iso(), "host": os.uname().nodename}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        who = ""
        if holder:
            who = f" by pid {holder.get('pid', '?')}"
            if holder.get("started"):
                who += f" since {holder['started']}"
        return (
            f"job {self.job_name} is already running{who} (lock {self.path}); "
            "this start does nothing"
        )

    def release(self) -> None:
        """Empty the record and unlock (the kernel would unlock at exit anyway)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parse_lock(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.decode("utf-8", "replace") or "null")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _holder(path: Path) -> dict[str, Any] | None:
    """The holder's record; it writes it just after taking the lock, so wait a moment for it."""
    for _ in range(_RECORD_WAITS):
        record = read_lock(path)
        if record:
            return record
        time.sleep(_RECORD_WAIT_SECONDS)
    return read_lock(path)


# Two starts at the same instant: the loser may look between the winner's flock and its write.
_RECORD_WAITS = 20
_RECORD_WAIT_SECONDS = 0.025


def read_lock(path: Path) -> dict[str, Any] | None:
    """The record in a lock file (`pid`, `started`, `host`), or None when it is free or absent."""
    try:
        return _parse_lock(path.read_bytes())
    except OSError:
        return None


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
