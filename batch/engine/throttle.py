"""What a 429 does to the run: the limiter's pause gate for the writes, a hold for the reads.

Shared by the read stage and the senders (a 429 to either holds both); they reach it as a value
handed to each, not through each other.
"""

from __future__ import annotations

import math

from batch.engine.stop import StopControl
from batch.limiter import Clock, Limiter

__all__ = ["Throttle", "waiting"]


class Throttle:
    """The reaction to a 429: pause the writes (`Limiter.throttled`), hold the reads.

    `hold`: how long reads stay back after a 429 without Retry-After (a whole window).
    """

    def __init__(self, limiter: Limiter, clock: Clock, *, hold: float) -> None:
        self._limiter = limiter
        self._clock = clock
        self._hold = hold
        self._reads_held_until = -math.inf

    def throttled(self, retry_after: float | None) -> None:
        """A 429: the limiter pauses the writes, and after one without Retry-After, the reads
        hold back for a whole window.

        Graph did not say how long its penalty lasts: the writers probe it with backoff (the
        limiter's gate), but reads are never urgent (they only stay ahead of the writes) and a
        `$batch` of reads sent into the penalty would only prolong it, 20 items at a time.
        """
        self._limiter.throttled(retry_after)
        if retry_after is None:
            self._reads_held_until = max(self._reads_held_until, self._clock.now() + self._hold)

    async def wait_for_reads(self, stop: StopControl) -> None:
        """Wait out the read hold (a stop ends the wait)."""
        while (left := self._reads_held_until - self._clock.now()) > 0:
            if stop.stopping:
                return
            await stop.sleep(left)


def waiting(limiter: Limiter) -> str | None:
    """What the writes wait for now, for the progress bar (only reads: any thread)."""
    held = limiter.holding
    if held == "pause":
        return f"paused by Graph (429): {limiter.paused_for:.0f} s"
    return "waiting for the write window" if held == "window" else None
