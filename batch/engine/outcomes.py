"""Pure outcome builders: a row's `RowResult` from its work and Graph's answer.

No I/O and no run state: every function takes values and returns values, so each outcome the
contract names (updated, conflict, failed, invalid, skipped, planned, not_attempted) is built in
one place and tested without a run. `BatchAnswers` reads a `$batch`'s answer once for both
`$batch` paths (reads and writes): each item's error and `retry.classify` verdict, the item that
says a permission is missing, and the 429s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batch.changes import Verdict, describe_conflicts
from batch.engine.work import Work
from batch.errors import GraphError, RunAborted
from batch.graph import BatchItemResponse, GraphResponse
from batch.model import JSON, Invalid, Outcome, RawRow, RowResult, Skipped, Update
from batch.retry import Answer, Throttled, classify

__all__ = [
    "BatchAnswers",
    "ItemAnswer",
    "failed",
    "from_verdict",
    "item_error",
    "item_request_id",
    "not_attempted",
    "planned",
    "read_failed",
    "result_from",
    "unreachable",
    "unsent",
    "updated",
]


def unsent(raw: RawRow, mapped: Invalid | Skipped) -> RowResult:
    """The result of a row that validation already decided: invalid or skipped."""
    if isinstance(mapped, Invalid):
        return RowResult(
            raw.number,
            mapped.event_id,
            Outcome.INVALID,
            error_code="InvalidRow",
            error_message=mapped.message,
        )
    return RowResult(raw.number, mapped.event_id, Outcome.SKIPPED, error_message=mapped.reason)


def not_attempted(raw: RawRow, mapped: Update | Invalid | Skipped) -> RowResult:
    """A row the run stopped before sending (resumable: its ledger state stays pending)."""
    return RowResult(
        raw.number,
        mapped.event_id,
        Outcome.NOT_ATTEMPTED,
        error_message="the run stopped before this row was sent",
    )


def planned(raw: RawRow, update: Update) -> RowResult:
    """A dry run's row that would be sent as it is (nothing was read)."""
    return RowResult(
        raw.number,
        update.event_id,
        Outcome.PLANNED,
        changed_fields=tuple(update.body),
        written=update.body,
    )


def result_from(work: Work, outcome: Outcome, **kw: Any) -> RowResult:
    """A result carrying what the row's work knows: attempts, body, before-image, last error."""
    return RowResult(
        work.raw.number,
        work.update.event_id,
        outcome,
        attempts=work.attempts,
        written=work.update.body,
        before=work.before,
        last_error=work.retried_after,
        **kw,
    )


def failed(work: Work, error: GraphError) -> RowResult:
    """A row Graph refused for good (or that ran out of retries)."""
    return result_from(
        work,
        Outcome.FAILED,
        status=error.status or None,
        error_code=error.code,
        error_message=error.message,
        request_id=error.request_id,
        client_request_id=error.client_request_id,
    )


def read_failed(work: Work, error: GraphError) -> RowResult:
    """A row whose read failed: nothing was written; its attempts are its reads."""
    result = failed(work, error)
    result.attempts = work.read_attempts
    return result


def updated(
    work: Work, *, status: int | None, request_id: str, client_request_id: str
) -> RowResult:
    """A row Graph carried out (a conflict if some fields were left alone)."""
    conflict = {"error_code": "Conflict", "error_message": work.conflicts}
    return result_from(
        work,
        Outcome.CONFLICT if work.conflicts else Outcome.UPDATED,
        **(conflict if work.conflicts else {}),
        status=status,
        changed_fields=tuple(work.update.body) if work.changed is None else work.changed,
        request_id=request_id,
        client_request_id=client_request_id,
    )


#: `--verify`: what a row says whose write Graph accepted twice but did not carry out.
NOT_APPLIED = "accepted but not applied"


def not_applied(work: Work, accepted: RowResult) -> RowResult:
    """A row Graph answered with success twice, whose values a read-back does not show.

    `accepted` is the result its write earned (its status and request ids are kept).
    """
    names = ", ".join(work.update.body)
    return result_from(
        work,
        Outcome.FAILED,
        status=accepted.status,
        error_code="NotApplied",
        error_message=(
            f"{NOT_APPLIED}: Graph answered the write with success twice, but reading it back "
            f"shows {names} not as sent (--verify)"
        ),
        request_id=accepted.request_id,
        client_request_id=accepted.client_request_id,
    )


def from_verdict(work: Work, verdict: Verdict, *, dry_run: bool) -> RowResult | None:
    """A read row's result from its verdict; None when it goes to the writers.

    `work` already carries the verdict (`before`, the trimmed body, `changed`, `conflicts`).
    """
    if verdict.action == "invalid":
        # Excel's damage, seen only now that the current values are known.
        return result_from(
            work,
            Outcome.INVALID,
            error_code="InvalidRow",
            error_message="; ".join(verdict.problems),
        )
    if verdict.action == "conflict":
        return result_from(
            work,
            Outcome.CONFLICT,
            error_code="Conflict",
            error_message=describe_conflicts(verdict.conflicts),
        )
    if verdict.action == "unchanged":
        return result_from(work, Outcome.UNCHANGED)
    if not dry_run:
        return None
    if work.conflicts:
        return result_from(
            work,
            Outcome.CONFLICT,
            error_code="Conflict",
            error_message=work.conflicts,
            changed_fields=verdict.changed_fields,
        )
    return result_from(work, Outcome.PLANNED, changed_fields=verdict.changed_fields)


def unreachable(
    error: GraphError, *, answers_before: int, answers_now: int, graph_root: str
) -> RunAborted | None:
    """A row out of retries with no answer from Graph since its first attempt: Graph is gone.

    `answers_before` is the run's answer count at the row's first attempt.
    """
    if error.status == 0 and answers_now == answers_before:
        return RunAborted(f"Graph is unreachable at {graph_root}: {error.message}")
    return None


def item_request_id(item: BatchItemResponse, envelope: GraphResponse) -> str:
    """An item's request-id, else its `$batch`'s (Graph does not always repeat it per item)."""
    return item.headers.get("request-id", "") or envelope.request_id


def item_error(item: BatchItemResponse, envelope: GraphResponse) -> GraphError:
    """A failed `$batch` item's error, with the ids it lacks taken from the envelope."""
    error = item.error() or GraphError(item.status, "Unknown", "no error body")
    if not error.request_id:
        error.request_id = item_request_id(item, envelope)
    if not error.client_request_id:
        error.client_request_id = envelope.client_request_id
    return error


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    """One `$batch` item's answer for its row: success (`error` None) or what its error means."""

    work: Work
    status: int
    request_id: str
    error: GraphError | None
    answer: Answer | None  # `retry.classify`'s verdict on `error`

    @property
    def ok(self) -> bool:
        """Graph carried the item out."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class BatchAnswers:
    """A `$batch`'s answer, item by item, in the order the rows were sent."""

    items: list[ItemAnswer]
    bodies: dict[int, JSON]  # seq → a successful item's body
    denied: GraphError | None  # the first 401/403 item's error
    throttled: GraphError | None  # the first 429 item's error
    throttled_rows: list[int]
    retry_after: float | None  # the longest Retry-After among the 429 items

    @classmethod
    def read(
        cls,
        works: Mapping[str, Work],
        envelope: GraphResponse,
        responses: Mapping[str, BatchItemResponse],
        attempts: Callable[[Work], int],
    ) -> BatchAnswers:
        """Read `responses` (keyed like `works`); `attempts` a row's attempts so far."""
        items: list[ItemAnswer] = []
        bodies: dict[int, JSON] = {}
        for key, work in works.items():
            item = responses[key]
            request_id = item_request_id(item, envelope)
            if 200 <= item.status < 300:
                items.append(ItemAnswer(work, item.status, request_id, None, None))
                bodies[work.seq] = item.body
                continue
            error = item_error(item, envelope)
            items.append(
                ItemAnswer(work, item.status, request_id, error, classify(error, attempts(work)))
            )
        denied = next(
            (item_error(r, envelope) for r in responses.values() if r.status in (401, 403)),
            None,
        )
        throttled = next((a.error for a in items if isinstance(a.answer, Throttled)), None)
        rows = [works[k].raw.number for k, r in responses.items() if r.status == 429 and k in works]
        wait = max(
            (r.retry_after or 0.0 for r in responses.values() if r.status == 429), default=0.0
        )
        return cls(items, bodies, denied, throttled, rows, wait or None)
