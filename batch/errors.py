"""Every exception autopilot-batch raises on purpose, in one place.

The tree::

    BatchError                      base; carries the process exit code the CLI should use
    ├── UsageError          (2)     bad option or combination of options
    │   ├── ConfigError     (2)     a job file, map file or credential setting is wrong or missing
    │   └── ResumeError     (2)     `--resume` cannot continue (input changed, no ledger, ...)
    ├── InputFileError      (2)     the input file cannot be read (missing, empty, bad encoding)
    ├── AuthError           (3)     no token could be obtained, or Graph keeps rejecting the token
    │   └── PermissionDenied (3)    Graph says the app lacks a permission (a 401 that is no
    │                               token problem): grant it, no token refresh can help
    ├── RunAborted          (3)     the run stopped before the end (Graph unreachable, auth lost)
    ├── Interrupted       (130)     Ctrl-C / SIGTERM: in-flight work finished, reports flushed
    ├── LockHeld           (75)     another `job run` of the same job holds its lock
    └── GraphError          (1)     one Graph answer that is not a success (status, code, ids)

Per-row trouble is never an exception that leaves a worker: it becomes a `RowResult`. These
exceptions are for whole-run or whole-file conditions, and `GraphError` is the value the Graph
client raises for one failed request, which the engine turns into a row outcome.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_CODES",
    "AuthError",
    "BatchError",
    "ConfigError",
    "GraphError",
    "InputFileError",
    "Interrupted",
    "LockHeld",
    "PermissionDenied",
    "ResumeError",
    "RunAborted",
    "UsageError",
]


#: What each process exit code means (CONTRACT.md, "Exit codes"); `run --help` and report.html
#: say it in these words.
EXIT_CODES: Final = {
    0: "every row updated, unchanged or skipped (dry run: every row planned)",
    1: "finished, but some rows failed, were invalid, or conflicted",
    2: "usage, configuration or input-file error: nothing was sent",
    3: "run aborted (sign-in, permission, Graph unreachable): resumable with --resume",
    75: "job run: another run of the same job holds its lock; this start did nothing",
    130: "interrupted (Ctrl-C, SIGTERM): requests in flight finished, reports flushed, resumable",
}


class BatchError(Exception):
    """Base of every deliberate autopilot-batch error; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(BatchError):
    """A bad option or option combination; nothing was sent."""

    exit_code = 2


class ConfigError(UsageError):
    """A job file, map file, cloud or credential setting is wrong or missing; nothing was sent."""


class ResumeError(UsageError):
    """`--resume` was refused (the input changed since the run, or there is nothing to resume)."""


class InputFileError(BatchError):
    """The input file cannot be read at all; the message names the file and the reason."""

    exit_code = 2

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AuthError(BatchError):
    """No token could be obtained, or Graph rejected a freshly obtained one."""

    exit_code = 3


class RunAborted(BatchError):
    """The run stopped before the end for a reason that affects every row; it can be resumed."""

    exit_code = 3


class Interrupted(BatchError):
    """The user or the system asked the run to stop; reports are flushed and it can be resumed."""

    exit_code = 130


class LockHeld(BatchError):
    """Another process is running the same job (EX_TEMPFAIL, so cron wrappers may retry later)."""

    exit_code = 75


class GraphError(BatchError):
    """One request that Graph answered with a non-success status (or not at all: status 0)."""

    exit_code = 1

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str = "",
        client_request_id: str = "",
        retry_after: float | None = None,
        permission_denied: bool = False,
        permission: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.retry_after = retry_after
        # A 401 whose body says the app lacks rights (Intune answers those 401 too): no token
        # refresh helps. `permission`: the scopes the answer names, when it names any.
        self.permission_denied = permission_denied
        self.permission = permission
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later (throttled, unavailable, no answer)."""
        return self.status in (0, 429, 503, 504)


class PermissionDenied(AuthError):
    """Graph refused a request because the app lacks a permission; `error` is its answer.

    Raised for single requests only (a `$batch` item carries `GraphError.permission_denied`).
    `permission` is what to grant: the scopes the answer named, else the tool's requirement.
    """

    def __init__(self, error: GraphError, permission: str) -> None:
        self.error = error
        self.permission = permission
        request = error.request_id or error.client_request_id or "none"
        super().__init__(
            f"Graph refused the app: it lacks the permission {permission} (this is not a token "
            f"problem). Grant {permission} to the app (an application permission with admin "
            f"consent, or the delegated one for a user sign-in), then resume the run. "
            f"({error.status} {error.code}: {error.message}; request-id {request})"
        )
