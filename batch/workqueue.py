"""The engine's queue of rows waiting to be sent (or read): backpressure, retries, a stop.

The queue knows a row only by its `seq` (its place in the input): the row's state is the engine's.

Decisions:

* **A retry waits in the queue, not in a sender.** A row re-queued with a delay (a 503's
  Retry-After, a backoff) sits in a heap with its not-before time while the senders go on with
  other rows; it comes out ahead of fresh rows once due. A sender that slept through the delay
  would leave one of `--concurrency` idle for a whole Retry-After.
* **Time is the queue's clock.** Waits for a delayed row or a linger run on the injected `Clock`,
  so a `FakeClock` test re-queues with a one-second delay in no time: a task sleeping on the
  clock ends the wait. With the `SystemClock` (the event loop's own time) anyio's timer does it:
  the readers wait for rows all the time, and a task per wait cost a third of the unthrottled
  throughput in batch mode.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import Generic, Protocol, TypeVar

import anyio

from batch.limiter import Clock, SystemClock

__all__ = ["WorkQueue"]


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


W = TypeVar("W", bound=_Sequenced)


class WorkQueue(Generic[W]):
    """Rows waiting to be sent: fresh ones (bounded: backpressure) and re-queued ones.

    Re-queued rows may carry a not-before time (a 503's Retry-After delays only that request).
    `get` returns None when the input is exhausted and nothing is waiting or in flight, or once
    the queue was stopped.
    """

    def __init__(self, capacity: int, clock: Clock) -> None:
        self._capacity = capacity
        self._clock = clock
        self._ready: deque[W] = deque()
        self._delayed: list[tuple[float, int, W]] = []
        self._tiebreak = itertools.count()
        self._cond = anyio.Condition()
        self._input_done = False
        self._stopped = False
        self.in_flight: dict[int, W] = {}

    def ready_count(self) -> int:
        """Rows ready to be taken now (fresh ones and re-queued ones that are due)."""
        self._promote_due()
        return len(self._ready)

    async def _wait(self, seconds: float) -> None:
        """Wait (holding the condition's lock) for a notification or `seconds` on the clock."""
        if seconds == math.inf:
            await self._cond.wait()
            return
        if isinstance(self._clock, SystemClock):
            # The real clock is the event loop's: its own timer is much cheaper than a task.
            with anyio.move_on_after(seconds):
                await self._cond.wait()
            return
        async with anyio.create_task_group() as alarm:

            async def ring() -> None:
                await self._clock.sleep(seconds)
                alarm.cancel_scope.cancel()

            alarm.start_soon(ring)
            # Cancelled by the alarm, the wait still takes the lock back before it returns.
            await self._cond.wait()
            alarm.cancel_scope.cancel()

    async def put(self, work: W) -> bool:
        async with self._cond:
            while len(self._ready) >= self._capacity and not self._stopped:
                await self._cond.wait()
            if self._stopped:
                return False
            self._ready.append(work)
            self._cond.notify_all()
            return True

    async def put_all(self, works: list[W]) -> bool:
        """Put several rows at once (False: stopped, none was put); waits for room for all."""
        async with self._cond:
            room = max(self._capacity, len(works))
            while len(self._ready) + len(works) > room and not self._stopped:
                await self._cond.wait()
            if self._stopped:
                return False
            self._ready.extend(works)
            self._cond.notify_all()
            return True

    async def fill(self, n: int, *, linger: float) -> None:
        """Wait up to `linger` seconds until `n` rows are ready, the input ended, or a stop."""
        deadline = self._clock.now() + linger
        async with self._cond:
            while not self._input_done and not self._stopped:
                self._promote_due()
                left = deadline - self._clock.now()
                if len(self._ready) >= n or left <= 0:
                    return
                await self._wait(left)

    async def close_input(self) -> None:
        async with self._cond:
            self._input_done = True
            self._cond.notify_all()

    async def stop(self) -> None:
        async with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _promote_due(self) -> None:
        now = self._clock.now()
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.appendleft(heapq.heappop(self._delayed)[2])

    async def get(self) -> W | None:
        async with self._cond:
            while True:
                if self._stopped:
                    return None
                self._promote_due()
                if self._ready:
                    work = self._ready.popleft()
                    self.in_flight[work.seq] = work
                    self._cond.notify_all()
                    return work
                if self._input_done and not self._delayed and not self.in_flight:
                    self._cond.notify_all()
                    return None
                timeout = self._delayed[0][0] - self._clock.now() if self._delayed else math.inf
                await self._wait(max(timeout, 0.0))

    def take_nowait(self, n: int) -> list[W]:
        self._promote_due()
        taken: list[W] = []
        while self._ready and len(taken) < n:
            work = self._ready.popleft()
            self.in_flight[work.seq] = work
            taken.append(work)
        return taken

    async def finish(self, work: W) -> None:
        async with self._cond:
            self.in_flight.pop(work.seq, None)
            self._cond.notify_all()

    async def retry(self, work: W, delay: float = 0.0) -> None:
        async with self._cond:
            self.in_flight.pop(work.seq, None)
            if delay > 0:
                heapq.heappush(
                    self._delayed, (self._clock.now() + delay, next(self._tiebreak), work)
                )
            else:
                # Throttled rows go first: they are the oldest and the gate already holds them.
                self._ready.appendleft(work)
            self._cond.notify_all()

    def drain(self) -> list[W]:
        """Everything never answered (after a stop): waiting and in-flight rows, in row order."""
        left = [*self._ready, *(w for _, _, w in self._delayed), *self.in_flight.values()]
        self._ready.clear()
        self._delayed.clear()
        self.in_flight.clear()
        return sorted(left, key=lambda w: w.seq)
