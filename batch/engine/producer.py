"""The producer: the plan's rows, in order, each to where it goes next.

A row an earlier part finished (`--resume`) is reported again as it was; an invalid or skipped
row gets its result at once; a valid one goes to the read stage (`admit`) or straight to the
write queue, or, in a plain dry run, is planned (`requests.jsonl`). It never runs more than the
reorder window ahead of the reporter, so memory stays flat on huge files. Cut off from the rest
because reading the input is the one thing that may take minutes before anything is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio

from batch.engine import outcomes
from batch.engine.options import RowPlan
from batch.engine.stop import StopControl
from batch.engine.work import ResultStream, Work
from batch.ledger import Ledger
from batch.model import Invalid, RowResult, Skipped, Update
from batch.planner import write_url
from batch.report import RequestsWriter
from batch.resources import EVENTS, Resource
from batch.workqueue import WorkQueue

__all__ = ["PRODUCER_YIELD_ROWS", "Producer"]

# The producer yields to the other tasks once per this many rows, not per row: a dry run of a
# million rows otherwise spends most of its time switching tasks and flushing one-row reports.
PRODUCER_YIELD_ROWS = 64


class Producer:
    """Streams `plan`'s rows into the run (see the module docstring).

    `admit`: where valid rows go when the run reads first (the read stage); otherwise `queue`.
    `requests`: set in a dry run, which plans rows instead of sending them.
    """

    def __init__(
        self,
        plan: RowPlan,
        *,
        results: ResultStream,
        queue: WorkQueue[Work],
        stop: StopControl,
        finished: Mapping[int, RowResult],
        ledger: Ledger | None,
        admit: Callable[[Work], Awaitable[None]] | None,
        requests: RequestsWriter | None,
        graph_root: str,
        resource: Resource = EVENTS,
    ) -> None:
        self.plan = plan
        self.resource = resource
        self.results = results
        self.queue = queue
        self.stop = stop
        self.finished = finished
        self.ledger = ledger
        self.admit = admit
        self.requests = requests
        self.graph_root = graph_root

    async def run(self) -> None:
        """Every row of the plan, in order (the caller closes the queue's input after)."""
        emit = self.results.emit
        for seq, (raw, mapped) in enumerate(self.plan.rows()):
            await self.results.wait_room(seq)
            if self.stop.stopping:
                await emit(seq, raw, outcomes.not_attempted(raw, mapped))
                continue
            done = self.finished.get(raw.number)
            if done is not None:
                self._restore_values(done, mapped)
                await emit(seq, raw, done, restored=True)
            elif isinstance(mapped, Invalid | Skipped):
                await emit(seq, raw, outcomes.unsent(raw, mapped))
            elif self.admit is not None:
                await self.admit(Work(seq, raw, mapped))
            elif self.requests is not None:
                url = write_url(self.graph_root, self.resource, mapped.event_id)
                self.requests.write(raw.number, self.resource.write.method, url, mapped.body)
                await emit(seq, raw, outcomes.planned(raw, mapped))
            elif not await self.queue.put(Work(seq, raw, mapped)):
                await emit(seq, raw, outcomes.not_attempted(raw, mapped))
            if seq % PRODUCER_YIELD_ROWS == PRODUCER_YIELD_ROWS - 1:
                await anyio.lowlevel.checkpoint()

    def _restore_values(self, done: RowResult, mapped: Update | Invalid | Skipped) -> None:
        """A row an earlier part finished: its values again, for changes.csv (resume)."""
        if not done.changed_fields or not isinstance(mapped, Update):
            return
        # What was written is what the file says (a PATCH sends the file's values as they are);
        # what was there before is the committed before-image, if the run kept one.
        done.written = mapped.body
        if self.ledger is not None:
            done.before = self.ledger.before_image(done.number)
