"""`--verify`: read every written row back, and send again once what Graph accepted but did not do.

Intune has been seen to answer a write with 204 and carry it out only on a second call
(microsoft-graph-docs#11620, device identities). A 2xx is therefore not proof with `--verify`:
a row whose write was accepted does not get its result yet. The senders hand it here
(`Verifier.check`), still in flight in the write queue, so the senders do not end while it waits.
The verifier reads rows back in `$batch`es of GETs under the read budget (`ReadBack`, the same
read that settles a lost answer; the read budget is ten times the write budget) and compares
every value sent with what the entity now holds, by wire meaning (`batch.changes.same_value`):

* every value took → the row's result is the one its write earned (`updated`, or `conflict`);
* a value did not take, the first time → the row goes back to the write queue, sent once more;
* a value did not take after that second write → the row is `failed`, error code `NotApplied`,
  "accepted but not applied" (results.csv, failures.csv, the summary's `error_codes`);
* the read itself fails (429, 503, no answer) → read again after a pause, up to `--max-retries`
  times; a row that could never be read back keeps its write's result, and the log says so.

A secret property (a device account password) is never read back, so it is not compared.
Its own stage because it is the one stage that holds a row after Graph answered it; it meets
the others through the two queues, the result stream, the stats and the stop control.
"""

from __future__ import annotations

import logging

from batch.engine import outcomes
from batch.engine.readback import ReadBack
from batch.engine.stop import StopControl
from batch.engine.throttle import Throttle
from batch.engine.work import ResultStream, Work
from batch.model import RowResult
from batch.planner import MAX_BATCH
from batch.workqueue import WorkQueue

__all__ = ["VERIFY_LINGER_SECONDS", "VERIFY_RETRY_SECONDS", "Verifier"]

log = logging.getLogger("batch.engine")

# How long the verifier waits for a full `$batch` of rows to read back before it reads fewer.
VERIFY_LINGER_SECONDS = 0.1
# The pause before a failed read-back is tried again (a 429 also closes the read gate).
VERIFY_RETRY_SECONDS = 1.0


class Verifier:
    """Reads written rows back and settles them (see the module docstring)."""

    def __init__(
        self,
        *,
        read_back: ReadBack,
        queue: WorkQueue[Work],
        writes: WorkQueue[Work],
        results: ResultStream,
        stop: StopControl,
        throttle: Throttle,
        max_retries: int,
    ) -> None:
        self.read_back = read_back
        self.queue = queue
        self.writes = writes
        self.results = results
        self.stop = stop
        self.throttle = throttle
        self.max_retries = max_retries
        self._pending: dict[int, RowResult] = {}
        #: Rows read back and found as sent, rows sent again, rows failed as not applied.
        self.verified = 0
        self.resent = 0
        self.not_applied = 0
        self.unverified = 0

    async def check(self, work: Work, result: RowResult) -> None:
        """A row Graph accepted: hold `result` until the row is read back (the senders call)."""
        self._pending[work.seq] = result
        if not await self.queue.put(work):
            # Stopping: nothing more is read; the write was accepted, so it keeps its result.
            await self._settle(work, self._pending.pop(work.seq))

    async def run(self) -> None:
        """Read rows back until the senders are done and every row is settled."""
        while True:
            await self.queue.fill(MAX_BATCH, linger=VERIFY_LINGER_SECONDS)
            first = await self.queue.get()
            if first is None:
                return
            await self.throttle.wait_for_reads(self.stop)
            works = [first, *self.queue.take_nowait(MAX_BATCH - 1)]
            landed = await self.read_back.landed(works)
            if self.stop.stopping:
                return  # the rows stay in flight: reported not_attempted, sent by --resume
            for work in works:
                took = None if landed is None else landed.get(work.seq)
                await self._judged(work, took)

    async def _judged(self, work: Work, took: bool | None) -> None:
        if took is None:
            work.verify_reads += 1
            if work.verify_reads <= self.max_retries:
                await self.queue.retry(work, VERIFY_RETRY_SECONDS)
                return
            self.unverified += 1
            log.warning(
                "row %d could not be read back after %d tries: its write is not verified",
                work.raw.number,
                work.verify_reads,
                extra={"event": "not_verified", "rows": [work.raw.number]},
            )
            await self.queue.finish(work)
            await self._settle(work, self._pending.pop(work.seq))
            return
        await self.queue.finish(work)
        pending = self._pending.pop(work.seq)
        if took:
            self.verified += 1
            await self._settle(work, pending)
            return
        if not work.resent:
            # Intune has carried such a write out on the second call: one more, not a loop.
            work.resent = True
            work.last_error = None
            work.retried_after = outcomes.NOT_APPLIED
            self.resent += 1
            log.info(
                "row %d: the write was accepted but not applied; sending it once more",
                work.raw.number,
                extra={"event": "not_applied", "rows": [work.raw.number], "resend": True},
            )
            await self.writes.retry(work, 0.0)
            return
        self.not_applied += 1
        log.warning(
            "row %d: the write was accepted twice but not applied",
            work.raw.number,
            extra={"event": "not_applied", "rows": [work.raw.number], "resend": False},
        )
        await self._settle(work, outcomes.not_applied(work, pending))

    async def _settle(self, work: Work, result: RowResult) -> None:
        await self.results.finish(self.writes, work, result)
