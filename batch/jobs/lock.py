"""The job lock: one running job at a time (an OS lock on `<state dir>/job.lock`).

Decision: two small OS calls behind one interface (`_os_lock`, `_os_unlock`), not the `filelock`
package. The file must hold the holder's record (pid, start), readable while it is locked, so a
second start can name the holder; filelock opens the file with `O_TRUNC` before trying the lock
(the loser erases the holder's record), deletes it on release on Windows, and locks byte 0 there,
which Windows then refuses to let any other process read. So:

- POSIX: `fcntl.flock` on the whole file.
- Windows (no `fcntl`): `msvcrt.locking` on one byte far past the record (`_LOCK_OFFSET`): Windows
  locks are mandatory, so the locked byte must not be one a reader needs.

Either way the OS drops the lock when its process ends, however it ends, so a lock left by a
dead process is taken over without guessing from PIDs. Neither backend module is imported at
module import time: every module of the package imports on any platform.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from batch.errors import ConfigError, LockHeld
from batch.jobs.clock import now_iso

# Where the Windows lock sits: a byte no record reaches (records are read up to 4 KiB).
_LOCK_OFFSET = 1 << 20
# What a refused non-blocking lock raises: flock EWOULDBLOCK/EAGAIN (EACCES on some systems),
# msvcrt EACCES or EDEADLOCK ("resource deadlock would occur" after its ten one-second tries
# with LK_LOCK; LK_NBLCK gives EACCES).
_HELD_ERRNOS = frozenset(
    {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}
)


def _backend() -> tuple[str, ModuleType]:
    """`("flock", fcntl)` where there is `fcntl`, else `("msvcrt", msvcrt)` (Windows)."""
    try:
        return "flock", importlib.import_module("fcntl")
    except ImportError:
        pass
    try:
        return "msvcrt", importlib.import_module("msvcrt")
    except ImportError:
        raise ConfigError("no file locking on this platform (neither fcntl nor msvcrt)") from None


def _os_lock(fd: int) -> bool:
    """Lock `fd` without waiting: True if taken, False if another process holds it."""
    kind, module = _backend()
    try:
        if kind == "flock":
            module.flock(fd, module.LOCK_EX | module.LOCK_NB)
        else:
            os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
            module.locking(fd, module.LK_NBLCK, 1)
    except OSError as error:
        if error.errno in _HELD_ERRNOS:
            return False
        raise
    return True


def _os_unlock(fd: int) -> None:
    """Unlock `fd` (closing it would too, on both platforms; this is explicit)."""
    kind, module = _backend()
    if kind == "flock":
        module.flock(fd, module.LOCK_UN)
    else:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        module.locking(fd, module.LK_UNLCK, 1)


def _read_at_start(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)  # no os.pread on Windows
    return os.read(fd, 4096)


def _write_record(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # no os.pwrite on Windows
    os.write(fd, data)


class JobLock:
    """One running job at a time: an OS lock on `<state dir>/job.lock`, with the PID for messages.

    The OS releases the lock when its process ends, however it ends, so a lock file left by
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
        # O_BINARY: Windows would otherwise translate line ends (0 elsewhere).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            taken = _os_lock(fd)
        except OSError as error:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path}: {error.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise LockHeld(self._held_message(_holder(self.path)))
        previous = _parse_lock(_read_at_start(fd))
        if previous and previous.get("pid") != os.getpid():
            self.taken_over = previous
        record = {"pid": os.getpid(), "started": now_iso(), "host": socket.gethostname()}
        _write_record(fd, (json.dumps(record) + "\n").encode())
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
            _os_unlock(self._fd)
        finally:
            os.close(self._fd)  # closing the descriptor releases the lock anyway
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


# Two starts at the same instant: the loser may look between the winner's lock and its write.
_RECORD_WAITS = 20
_RECORD_WAIT_SECONDS = 0.025


def read_lock(path: Path) -> dict[str, Any] | None:
    """The record in a lock file (`pid`, `started`, `host`), or None when it is free or absent."""
    try:
        return _parse_lock(path.read_bytes())
    except OSError:
        return None


def pid_alive(pid: object) -> bool:
    """Whether a process `pid` runs (for `job check`'s word on a lock's holder)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if sys.platform == "win32":
        # Not os.kill(pid, 0): on Windows that terminates the process.
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _windows_pid_alive(pid: int) -> bool:
    """OpenProcess + GetExitCodeProcess: alive while the exit code is STILL_ACTIVE (259)."""
    if sys.platform != "win32":  # mypy checks the rest only for Windows, where it runs
        raise NotImplementedError("Windows only")
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: someone else's process
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return bool(code.value == 259)
    finally:
        kernel32.CloseHandle(handle)
