"""Seeded fault injection: 503 with Retry-After, 504, and connections dropped mid-response.

GRAPH.md lists 503 (which may carry Retry-After) and 504 as transient answers a client must
retry, and a client must survive a connection that breaks after the status line. The choice is
drawn from its own seeded generator, so the same seed gives the same faults for the same
sequence of requests (and other random choices, like batch shuffling, do not disturb it).

Decisions:

* **The mix is configurable** (`EmulatorConfig.fault_mix`, weights per kind; 2:1:1 by default,
  503 being what Graph sheds load with most often): a benchmark can ask for "3 % 503s" alone or
  "2 % 503 + 1 % 504 + 1 % drops" with one `fault_rate`.
* **A dropped connection may come after the work** (`drop_applied`): the request was carried
  out (the write applied, the budget used) and only the answer is lost, which is what a client
  cannot tell from a drop before the work. The share is drawn only for drops, from the same
  generator, so plans without drops keep their sequence.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

__all__ = ["DEFAULT_FAULT_MIX", "Fault", "FaultPlan"]


class Fault(enum.StrEnum):
    """What goes wrong with one request."""

    UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    DROP = "drop"


# 503 is what Graph sheds load with most often; dropped connections are the rarest.
DEFAULT_FAULT_MIX: tuple[tuple[str, float], ...] = (("503", 2.0), ("504", 1.0), ("drop", 1.0))


class FaultPlan:
    """Decides, request by request, whether a fault happens and which one.

    `mix`: (kind, weight) pairs, kinds being `Fault` values; `drop_applied`: the share of drops
    whose request was carried out before the connection broke (see `applied`).
    """

    def __init__(
        self,
        rate: float,
        seed: int | None,
        *,
        mix: Sequence[tuple[str, float]] = DEFAULT_FAULT_MIX,
        drop_applied: float = 0.0,
    ) -> None:
        self.rate = rate
        self.drop_applied = drop_applied
        self._seed = seed
        self._kinds = [Fault(kind) for kind, weight in mix if weight > 0]
        self._weights = [weight for _, weight in mix if weight > 0]
        self._rng = random.Random(self._derived(seed))

    @staticmethod
    def _derived(seed: int | None) -> str | None:
        return None if seed is None else f"faults:{seed}"

    def reset(self) -> None:
        """Start the sequence again (same seed, same faults)."""
        self._rng = random.Random(self._derived(self._seed))

    def draw(self) -> Fault | None:
        """The fault for the next request, or None; consumes randomness only when rate > 0."""
        if self.rate <= 0 or not self._kinds:
            return None
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choices(self._kinds, self._weights)[0]

    def applied(self) -> bool:
        """Whether the request of a drop just drawn is carried out before the connection breaks."""
        if self.drop_applied <= 0:
            return False
        return self._rng.random() < self.drop_applied
