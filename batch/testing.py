"""Test doubles for code built on this package: `FakeClock`, virtual time for a `Clock`.

Everything in `batch` that waits or reads the time takes a `batch.limiter.Clock` (the limiter,
the retries, the engine, the export and `--key` readers), so a test hands it a `FakeClock` and a
run that would wait minutes for Graph's budget finishes in milliseconds, deterministically. The
double lives here, not beside the real clock, so production code never imports it by accident
and the public API (`batch.__all__`) shows where test helpers are.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]


@dataclass(order=True)
class _Sleeper:
    deadline: float
    seq: int
    done: bool = field(default=False, compare=False)


class FakeClock:
    """Virtual time for tests: sleeping advances the clock instead of waiting.

    Concurrent sleepers wake in deadline order, each at its own deadline (not the sum of all
    sleeps): a sleeper advances the clock only once it holds the earliest deadline and has seen
    that for several scheduler rounds in a row, which gives tasks just woken the chance to
    register their next sleep first. Every sleep yields to the event loop, so tasks interleave
    deterministically. `advance()` moves time by hand (e.g. to let a window go quiet).
    """

    # Scheduler rounds the earliest sleeper waits before jumping the clock; enough for a woken
    # task to pass a lock hand-over and a few checkpoints before it sleeps again.
    _SETTLE_ROUNDS = 8

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by hand; sleepers whose deadline passed wake up."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time reaches now + `seconds`, yielding to other tasks meanwhile."""
        if not seconds > 0:  # also catches NaN
            await anyio.lowlevel.checkpoint()
            return
        me = _Sleeper(self._now + seconds, next(self._seq))
        heapq.heappush(self._sleepers, me)
        rounds = 0
        try:
            while self._now < me.deadline:
                await anyio.lowlevel.checkpoint()
                self._drop_done()
                if self._sleepers[0] is me:
                    rounds += 1
                    if rounds >= self._SETTLE_ROUNDS:
                        self._now = max(self._now, me.deadline)
                else:
                    rounds = 0
        finally:
            me.done = True
            self._drop_done()

    def _drop_done(self) -> None:
        while self._sleepers and self._sleepers[0].done:
            heapq.heappop(self._sleepers)
