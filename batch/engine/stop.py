"""Stop control: one place that knows whether the run stops, why, and how long it may take.

A stop (a signal, lost authentication, Graph unreachable, a missing permission) comes from any
stage; the first reason wins and decides the exit code. Every wait that sends nothing — for
budget, a retry's backoff, the read hold — goes through `acquire`/`sleep` here, so a stop ends
it at once instead of waiting for budget that would only be spent on rows not sent anyway.
Requests already on the wire get `grace` seconds to finish, then are abandoned.

Signals come from `batch.stop` (the process's, or a job's tenant hub through
`batch.stop.signal_receiver`), the same component `batch.jobs.run` watches between files.
Time is the injected `Clock`'s, so the grace is tested on a `FakeClock`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from batch.errors import Interrupted
from batch.limiter import Clock
from batch.stop import signal_name, signal_receiver, stop_signals
from batch.workqueue import WorkQueue

__all__ = ["STOP_GRACE_SECONDS", "StopControl"]

log = logging.getLogger("batch.engine")

# How long in-flight requests may take to finish after Ctrl-C/SIGTERM before they are abandoned.
STOP_GRACE_SECONDS = 10.0


class StopControl:
    """Whether the run stops (`stopping`), why (`reason`), and the waits a stop cuts short.

    `queues` stop taking rows when the run stops (their `get` returns None).
    """

    def __init__(
        self,
        clock: Clock,
        queues: Sequence[WorkQueue[Any]] = (),
        *,
        grace: float = STOP_GRACE_SECONDS,
    ) -> None:
        self.clock = clock
        self.reason: BaseException | None = None
        self.grace = grace
        self.signals = 0
        self._queues = tuple(queues)
        self._event = anyio.Event()
        self._waits: set[anyio.CancelScope] = set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    async def stop(self, reason: BaseException) -> None:
        """Stop taking new rows; the first reason wins (it decides the exit code)."""
        if self.reason is None:
            self.reason = reason
            log.warning("stopping: %s", reason)
        self._event.set()
        for scope in self._waits:
            scope.cancel()
        for queue in self._queues:
            await queue.stop()

    async def acquire(self, acquire: Callable[[int], Awaitable[int]], want: int) -> int:
        """Slots from `acquire` (a limiter's), or 0 if the run stops while waiting for them."""
        if self.stopping:
            return 0
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                return await acquire(want)
            finally:
                self._waits.discard(scope)
        return 0

    async def sleep(self, seconds: float) -> None:
        """A wait (a retry's, the read hold) on the run's clock, ended early by a stop."""
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                if not self.stopping:
                    await self.clock.sleep(seconds)
            finally:
                self._waits.discard(scope)

    def now(self) -> float:
        """The run's clock's time (with `sleep`, this object is a `Clock` for retry loops)."""
        return self.clock.now()

    async def watch_signals(self, *, on_exit: Callable[[], None]) -> None:
        """Stop on the first signal; on a second, call `on_exit` and leave the process (130)."""
        with signal_receiver.get()(*stop_signals()) as signals:
            async for signum in signals:
                self.signals += 1
                if self.signals > 1:
                    # A second Ctrl-C: leave now. SQLite commits are atomic, so the ledger stays
                    # consistent; reports are flushed as far as they got.
                    log.error("second interrupt: exiting at once")
                    on_exit()
                    os._exit(130)
                name = signal_name(signum)
                await self.stop(Interrupted(f"{name} received; finishing requests in flight"))

    async def watch(self, scope: anyio.CancelScope, *, on_exit: Callable[[], None]) -> None:
        """`watch_signals` until `scope` is cancelled; nothing to watch off the main thread."""
        with scope:
            try:
                await self.watch_signals(on_exit=on_exit)
            except (NotImplementedError, ValueError, RuntimeError):
                # Not the main thread (tests calling in-process) or no signal support: no watch.
                await anyio.sleep_forever()

    async def enforce_grace(self, senders: anyio.CancelScope, own: anyio.CancelScope) -> None:
        """Once stopping, give requests in flight `grace` seconds, then cancel `senders`."""
        with own:
            await self._event.wait()
            await self.clock.sleep(self.grace)
            log.warning("requests still in flight after %.0f s: abandoning", self.grace)
            senders.cancel()
