"""Seeded fault injection: 503 with Retry-After, 504, and connections dropped mid-response.

GRAPH.md lists 503 (which may carry Retry-After) and 504 as transient answers a client must
retry, and a client must survive a connection that breaks after the status line. The choice is
drawn from its own seeded generator, so the same seed gives the same faults for the same
sequence of requests (and other random choices, like batch shuffling, do not disturb it).
"""

from __future__ import annotations

import enum
import random

__all__ = ["Fault", "FaultPlan"]


class Fault(enum.StrEnum):
    """What goes wrong with one request."""

    UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    DROP = "drop"


# 503 is what Graph sheds load with most often; dropped connections are the rarest.
_KINDS = (Fault.UNAVAILABLE, Fault.GATEWAY_TIMEOUT, Fault.DROP)
_WEIGHTS = (2, 1, 1)


class FaultPlan:
    """Decides, request by request, whether a fault happens and which one."""

    def __init__(self, rate: float, seed: int | None) -> None:
        self.rate = rate
        self._seed = seed
        self._rng = random.Random(self._derived(seed))

    @staticmethod
    def _derived(seed: int | None) -> str | None:
        return None if seed is None else f"faults:{seed}"

    def reset(self) -> None:
        """Start the sequence again (same seed, same faults)."""
        self._rng = random.Random(self._derived(self._seed))

    def draw(self) -> Fault | None:
        """The fault for the next request, or None; consumes randomness only when rate > 0."""
        if self.rate <= 0:
            return None
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choices(_KINDS, _WEIGHTS)[0]
