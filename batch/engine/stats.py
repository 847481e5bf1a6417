"""Run stats: the one object every stage counts into, passed by reference.

Requests, writes, reads, 429s, retries by reason, answers (the unreachable check), outcomes and
the tally: summary.json and run.log's last line read them here. Stages never copy counters
between each other; they hold the same `RunStats`. What is noted here is also logged to run.log
(`batch.runlog`), so a count and its lines cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from batch import runlog
from batch.engine.work import Work
from batch.errors import GraphError
from batch.report.tally import Tally

__all__ = ["ReadCounts", "RunStats"]


class ReadCounts(Protocol):
    """What a read done before or around the run counted (`KeyResolver`, `ListWalk`)."""

    @property
    def throttled(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def retry_reasons(self) -> Counter[str]: ...


@dataclass
class RunStats:
    """Counters of one run (see the module docstring)."""

    # Hears the count of 429 answers as they come (the ledger keeps them for the timeline).
    on_throttled: Callable[[int], None] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    tally: Tally = field(default_factory=Tally)
    requests_sent: int = 0
    writes_sent: int = 0
    reads_sent: int = 0
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)  # see runlog.retry_reason
    throttled: int = 0
    # Requests Graph answered (any status): a row whose retries saw none means Graph is gone.
    answers: int = 0

    def add_reads(self, requests: int, counts: ReadCounts, answers: int = 0) -> None:
        """Count a read of the tenant done outside the read stage (`--key`, the list walk)."""
        self.requests_sent += requests
        self.reads_sent += requests
        self.throttled += counts.throttled
        if counts.throttled and self.on_throttled is not None:
            # The list walk's and --key's 429s belong on the run's timeline like the stages'.
            self.on_throttled(counts.throttled)
        self.retries += counts.retries
        self.retry_reasons.update(counts.retry_reasons)
        self.answers += answers

    def note_429(
        self, error: GraphError, kind: runlog.Kind, rows: Sequence[int], items: int = 1
    ) -> None:
        """`items` 429 answers to one request (a `$batch`'s items, or the request itself)."""
        self.throttled += items
        if self.on_throttled is not None:
            self.on_throttled(items)
        runlog.throttled(error, kind=kind, rows=rows, items=items)

    def note_retries(self, works: Sequence[Work], kind: runlog.Kind) -> None:
        """These rows go out again: count each retry by the error that caused it, log them.

        A row sent again because `--verify` found its write not applied has no error behind
        it: the verifier counts it (`resent`), and `retries` keeps adding up to its reasons.
        """
        works = [w for w in works if w.last_error is not None or not w.resent]
        if not works:
            return
        self.retries += len(works)
        by_error: dict[int, list[Work]] = {}
        for w in works:
            if w.last_error is not None:
                by_error.setdefault(id(w.last_error), []).append(w)
                w.retried_after = str(w.last_error)
        for group in by_error.values():
            error = group[0].last_error
            assert error is not None  # grouped by it
            self.retry_reasons[runlog.retry_reason(error)] += len(group)
            attempt = max(w.read_attempts if kind == "read" else w.attempts for w in group)
            runlog.retry(error, kind=kind, rows=[w.raw.number for w in group], attempt=attempt)
