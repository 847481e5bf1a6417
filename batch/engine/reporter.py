"""The reporter: the only writer of results.csv, failures.csv, changes.csv and the ledger's rows.

It takes every row's one result from the `ResultStream` (in any order), records it in the ledger
at once (in chunks: one transaction for everything already waiting), and writes the files in
input order, moving the reorder window on as it goes. Counts and the tally go into the run's
`RunStats`; progress hears each row. A dry run that read the tenant prints each row's diff here,
in input order. One owner for the files, so no two tasks ever write one.
"""

from __future__ import annotations

import logging

import anyio

from batch.changes import Change, render_diff
from batch.engine.stats import RunStats
from batch.engine.work import ResultStream
from batch.ledger import Ledger
from batch.model import Outcome, RawRow, RowResult
from batch.progress import ProgressSink
from batch.report import ChangesWriter, FailuresWriter, ResultsWriter

__all__ = ["Reporter"]

log = logging.getLogger("batch.engine")


class Reporter:
    """Writes every result (see the module docstring); `run` until the stream closes."""

    def __init__(
        self,
        *,
        results: ResultsWriter,
        failures: FailuresWriter,
        changes: ChangesWriter,
        stats: RunStats,
        ledger: Ledger | None,
        progress: ProgressSink,
        dry_run: bool,
    ) -> None:
        self.results = results
        self.failures = failures
        self.changes = changes
        self.stats = stats
        self.ledger = ledger
        self.progress = progress
        self.dry_run = dry_run

    async def run(self, stream: ResultStream) -> None:
        """Take results until every stage is done with the stream."""
        pending: dict[int, tuple[RawRow, RowResult]] = {}
        next_seq = 0
        async with stream.receive:
            async for seq, raw, result in stream.receive:
                batch = [(seq, raw, result)]
                # Everything already waiting goes into the same ledger transaction.
                while True:
                    try:
                        batch.append(stream.receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if self.ledger is not None:
                    self.ledger.record(r for _, _, r in batch if not r.restored)
                    self.ledger.commit()
                for s, rw, rs in batch:
                    pending[s] = (rw, rs)
                    self.stats.counts[rs.outcome.value] += 1
                    self.progress.advance(rs.outcome, throttled=self.stats.throttled)
                while next_seq in pending:
                    rw, rs = pending.pop(next_seq)
                    self._write(rw, rs)
                    next_seq += 1
                self.results.flush()
                self.failures.flush()
                self.changes.flush()
                await stream.written_up_to(next_seq - 1)

    def _write(self, raw: RawRow, result: RowResult) -> None:
        self.results.write(result, raw)
        self.changes.write(raw, result)
        self.stats.tally.add(result)
        self._show_diff(result)
        if result.outcome in (Outcome.FAILED, Outcome.INVALID, Outcome.CONFLICT):
            self.failures.write(raw, result)

    def _show_diff(self, result: RowResult) -> None:
        """A dry run that read the tenant prints what each row would change, in input order."""
        before = result.before
        if not self.dry_run or before is None or not result.changed_fields:
            return
        diff = [
            Change(name, before.get(name), result.written.get(name), name in before)
            for name in result.changed_fields
        ]
        log.info(
            "%s",
            render_diff(result.number, result.event_id, diff),
            extra={"row": result.number, "event_id": result.event_id},
        )
