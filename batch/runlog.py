"""run.log's events: one JSON line per thing that happened, with the same field names everywhere.

`run.log` (`batch.logs.JsonLinesHandler`) takes every record of the `batch` loggers. The records
written here are the ones an admin looks for the morning after: each carries `event` and only
the fields below, so `jq 'select(.event == "throttled")' run.log` works and a field means the
same thing in every line.

- `throttled`: Graph answered 429. kind, rows, items, status, retry_after, request_id.
- `transient`: a 503, 504 or no answer; the request is retried. kind, rows, status, code,
  error (Graph's message), retry_after, seconds, request_id.
- `retry`: a request goes out again. kind, rows, reason, attempt.
- `pause`: the limiter closed its gate for every sender. seconds, retry_after.
- `rate`: the adaptive write limit changed. write_limit, previous, reason.
- `token`: a token was obtained (sign-in, renewal, or after a 401). credential, renewal, forced,
  expires_in.

`kind` is `write`, `read` (a `$batch` of GETs) or `list` (a page of the event list); `rows` the
input rows concerned (a `$batch` has up to 20); `retry_after` the seconds Graph asked for, or
null when the answer had no Retry-After (the wait was then a backoff); `seconds` a wait chosen
by the tool; `reason` one of `RETRY_REASONS`. `run started` / `run finished` (batch.engine)
carry `event` too, the final counts on the latter.

`run_log(path)` installs the file for the length of a run, as a context manager: the handler
takes only the records of its own run's tasks (several runs share a process in `job run` over
tenants), and it is removed however the run ends.

Decision: these records are for the file. They are logged at info on the `batch.events` logger,
which `batch.logs.setup_console` keeps off the console: the progress line already counts 429s and
shows pauses, and a line per retry would drown the terminal at Graph's pace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Final, Literal

from batch.errors import GraphError
from batch.logs import JsonLinesHandler

__all__ = [
    "EVENTS_LOGGER",
    "RETRY_REASONS",
    "Kind",
    "pause",
    "rate",
    "retry",
    "retry_reason",
    "run_log",
    "throttled",
    "token",
    "transient",
]

EVENTS_LOGGER: Final = "batch.events"
#: Why a request was sent again, as summary.json's `retry_reasons` counts them.
RETRY_REASONS: Final = ("429", "503", "504", "connection")
# A line names at most this many rows (a `$batch` holds 20; a list page names none).
_ROWS_SHOWN: Final = 20

Kind = Literal["write", "read", "list"]

log = logging.getLogger(EVENTS_LOGGER)
# The run whose task logs a record: run.log takes only its own run's records.
_run_scope: ContextVar[object | None] = ContextVar("run_scope", default=None)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """run.log at `path` takes the `batch` loggers' records of this run while inside."""
    handler = JsonLinesHandler(path)
    scope = object()  # runs side by side in one process (a job's tenants) keep their logs apart
    token = _run_scope.set(scope)
    handler.addFilter(lambda _record: _run_scope.get() in (None, scope))
    root = logging.getLogger("batch")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        _run_scope.reset(token)


def retry_reason(error: GraphError) -> str:
    """`429`, `503`, `504`, or `connection` (no answer: refused, dropped, timed out)."""
    return "connection" if error.status == 0 else str(error.status)


def _rows(rows: Iterable[int]) -> list[int]:
    return sorted(rows)[:_ROWS_SHOWN]


def throttled(error: GraphError, *, kind: Kind, rows: Iterable[int] = (), items: int = 1) -> None:
    """Graph answered 429 to `items` requests (the `$batch` items, or one request)."""
    shown = _rows(rows)
    wait = "no Retry-After" if error.retry_after is None else f"Retry-After {error.retry_after:g} s"
    log.info(
        "429 on %s (%d item%s, %s)",
        kind,
        items,
        "" if items == 1 else "s",
        wait,
        extra={
            "event": "throttled",
            "kind": kind,
            "rows": shown,
            "items": items,
            "status": 429,
            "retry_after": error.retry_after,
            "request_id": error.request_id,
        },
    )


def transient(
    error: GraphError, *, kind: Kind, rows: Iterable[int] = (), seconds: float | None = None
) -> None:
    """A 503, 504 or missing answer: the request is retried after `seconds` (None: not known)."""
    after = "" if seconds is None else f"; again in {seconds:.2f} s"
    log.info(
        "%s on %s%s",
        error,
        kind,
        after,
        extra={
            "event": "transient",
            "kind": kind,
            "rows": _rows(rows),
            "status": error.status,
            "code": error.code,
            "error": error.message,  # `message` is taken: every LogRecord has one
            "retry_after": error.retry_after,
            "seconds": None if seconds is None else round(seconds, 3),
            "request_id": error.request_id,
        },
    )


def retry(error: GraphError, *, kind: Kind, rows: Iterable[int] = (), attempt: int) -> None:
    """A request goes out again because of `error` (`attempt`: 2 for the first retry)."""
    reason = retry_reason(error)
    log.info(
        "retry %s (attempt %d) after %s",
        kind,
        attempt,
        reason,
        extra={
            "event": "retry",
            "kind": kind,
            "rows": _rows(rows),
            "reason": reason,
            "attempt": attempt,
        },
    )


def pause(seconds: float, retry_after: float | None) -> None:
    """The limiter closed its gate for `seconds` (Graph's Retry-After, or a backoff: None)."""
    why = "Retry-After" if retry_after is not None else "backoff (no Retry-After)"
    log.info(
        "all sending paused for %.2f s (%s)",
        seconds,
        why,
        extra={"event": "pause", "seconds": round(seconds, 3), "retry_after": retry_after},
    )


def rate(write_limit: int, previous: int, reason: str) -> None:
    """The adaptive write limit went from `previous` to `write_limit` writes per window."""
    log.info(
        "write limit %d -> %d per window (%s)",
        previous,
        write_limit,
        reason,
        extra={
            "event": "rate",
            "write_limit": write_limit,
            "previous": previous,
            "reason": reason,
        },
    )


def token(credential: str, *, renewal: bool, forced: bool, expires_in: float | None) -> None:
    """A token was obtained: the first sign-in, a renewal, or (`forced`) one after a 401."""
    what = "token renewed" if renewal else "signed in"
    if forced:
        what += " (Graph answered 401 to the previous token)"
    log.info(
        "%s (%s)",
        what,
        credential,
        extra={
            "event": "token",
            "credential": credential,
            "renewal": renewal,
            "forced": forced,
            "expires_in": None if expires_in is None else round(expires_in),
        },
    )
