"""A row in flight (`Work`) and the stream its result leaves by (`ResultStream`).

The shared values under every stage: the producer makes `Work`, the readers and senders carry it
through the `WorkQueue`s, and every stage hands a finished row to the `ResultStream`, the only
way into the reporter. No stage calls another's methods; they meet here.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.errors import GraphError
from batch.limiter import Grant
from batch.model import JSON, RawRow, RowResult, Update
from batch.workqueue import WorkQueue

__all__ = ["REORDER_WINDOW", "Item", "ResultStream", "Work"]

# How far (in rows) the producer may run ahead of the first row still waiting for its answer;
# bounds the reporter's reordering buffer, so memory stays flat on huge files.
REORDER_WINDOW = 20_000
# Results waiting for the reporter before an emitting stage blocks.
_STREAM_SIZE = 1000


@dataclass(eq=False)
class Work:
    """One valid row on its way through the readers and senders, with what happened to it."""

    seq: int
    raw: RawRow
    update: Update
    attempts: int = 0
    last_error: GraphError | None = None
    read_attempts: int = 0
    answers_at_read: int = 0  # the run's answer count at the first read (unreachable check)
    answers_at_send: int = 0  # the same at the first write (unreachable check)
    changed: tuple[str, ...] | None = None  # what really changes (None: not read)
    conflicts: str = ""  # fields left alone (conflicts) while the others are written
    before: dict[str, JSON] | None = None  # the event's values before (None: not read)
    retried_after: str = ""  # the error behind the latest retry (results.csv last_error)
    # The grant of a write whose answer was lost and that was not read back yet.
    lost: Grant | None = None
    verify_reads: int = 0  # --verify: failed read-backs of the written row
    resent: bool = False  # --verify: sent once more after a write accepted but not applied


#: A finished row on its way to the reporter: its place in the input, the row, its result.
Item = tuple[int, RawRow, RowResult]


class ResultStream:
    """Every row's one result, from any stage to the reporter, and the reorder window.

    The reporter writes results in input order; `wait_room` keeps the producer at most
    `REORDER_WINDOW` rows ahead of the first row the reporter still waits for.
    """

    def __init__(self, window: int = REORDER_WINDOW) -> None:
        self.send: MemoryObjectSendStream[Item]
        self.receive: MemoryObjectReceiveStream[Item]
        self.send, self.receive = anyio.create_memory_object_stream[Item](_STREAM_SIZE)
        self._window = window
        self._written = -1
        self._cond = anyio.Condition()

    async def emit(self, seq: int, raw: RawRow, result: RowResult, restored: bool = False) -> None:
        """Hand a row's result to the reporter (`restored`: finished by an earlier part)."""
        if restored:
            result.restored = True
        # Without yielding while the stream has room: the reporter then takes rows in chunks.
        try:
            self.send.send_nowait((seq, raw, result))
        except anyio.WouldBlock:
            await self.send.send((seq, raw, result))

    async def finish(self, queue: WorkQueue[Work], work: Work, result: RowResult) -> None:
        """The row leaves `queue` (where it was in flight) with its result."""
        await queue.finish(work)
        await self.emit(work.seq, work.raw, result)

    async def wait_room(self, seq: int) -> None:
        """Wait until row `seq` is inside the reorder window."""
        if seq - self._written <= self._window:
            return
        async with self._cond:
            while seq - self._written > self._window:
                await self._cond.wait()

    async def written_up_to(self, seq: int) -> None:
        """The reporter wrote every row up to `seq`: the window moves on."""
        async with self._cond:
            self._written = seq
            self._cond.notify_all()
