"""Intune's throttling as sliding logs per app and per tenant, with honest Retry-After values.

Four budgets apply (GRAPH.md, "Throttling"): writes per app (100/20 s), writes per tenant
(200/20 s), any request per app (1000/20 s), any request per tenant (2000/20 s). Every `$batch`
item is judged on its own; the envelope itself is not counted. A log holds the arrival times of
the requests it admitted; a request is admitted when every log that applies to it has room, and
only admitted requests use budget.

A rejected request starts a Retry-After period for its app: until it ends, every request of that
app is answered 429 with the remaining time (Graph: "requests sent during the wait keep the
throttle on"). The advertised value is what the client is told, so the period lasts exactly as
long as the header says; when it ends the window has room again, so a request sent right after
Retry-After is admitted (unless someone else used the room meanwhile).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from batch.model import Rate

__all__ = ["Decision", "SlidingLog", "Throttle", "format_retry_after"]

_EDGE = 1e-9


class SlidingLog:
    """At most `rate.count` admissions in any `rate.seconds`-long window (half-open: (t-W, t])."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        # A nanosecond of tolerance at the edge keeps float rounding from turning "exactly
        # Retry-After later" into "a hair too early".
        horizon = now - self.rate.seconds + _EDGE
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()

    def wait(self, now: float) -> float:
        """Seconds until one more admission fits (0 when it fits now)."""
        self._prune(now)
        if len(self._times) < self.rate.count:
            return 0.0
        # The window has room once the admission that made it full falls out of it.
        return self._times[len(self._times) - self.rate.count] + self.rate.seconds - now

    def add(self, now: float) -> None:
        """Record one admission at `now`."""
        self._times.append(now)

    def __len__(self) -> int:
        return len(self._times)


@dataclass(frozen=True, slots=True)
class Decision:
    """The throttle's answer for one request.

    `retry_after` is the wait in seconds for a rejected request, already in the advertised form
    (rounded up); `header` is the `Retry-After` text, or None when the header is left out.
    `during_retry_after` says the request arrived inside a running Retry-After period, after the
    grace for requests that were already in flight.
    """

    admitted: bool
    retry_after: float = 0.0
    header: str | None = None
    during_retry_after: bool = False


@dataclass(slots=True)
class _Period:
    until: float = -math.inf
    opened_at: float = -math.inf


@dataclass(slots=True)
class _Budgets:
    writes: SlidingLog
    requests: SlidingLog
    periods: _Period = field(default_factory=_Period)


def format_retry_after(seconds: float, style: str) -> tuple[float, str | None]:
    """The advertised wait and header text: "int" rounds up to whole seconds (at least 1),
    "decimal" to milliseconds (like `2.128`), "none" keeps the exact wait but sends no header."""
    # Rounding before the ceiling keeps float noise (0.6 * 1000 = 600.0000000000001) from
    # adding a whole unit.
    if style == "int":
        whole = max(1, math.ceil(round(seconds, 9)))
        return float(whole), str(whole)
    if style == "decimal":
        millis = max(1, math.ceil(round(seconds * 1000, 6)))
        return millis / 1000, f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return seconds, None


class Throttle:
    """The per-app and per-tenant budgets, and each app's Retry-After period."""

    def __init__(
        self,
        *,
        write_limit: Rate,
        tenant_write_limit: Rate,
        read_limit: Rate,
        tenant_read_limit: Rate,
        retry_after_format: str = "int",
        retry_after_grace: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = (write_limit, tenant_write_limit, read_limit, tenant_read_limit)
        self._format = retry_after_format
        self._grace = retry_after_grace
        self._clock = clock
        self._apps: dict[str, _Budgets] = {}
        self._tenants: dict[str, _Budgets] = {}

    def reset(self) -> None:
        """Forget every admission and every Retry-After period."""
        self._apps.clear()
        self._tenants.clear()

    def _app(self, app: str) -> _Budgets:
        budgets = self._apps.get(app)
        if budgets is None:
            write, _, read, _ = self._limits
            budgets = self._apps[app] = _Budgets(SlidingLog(write), SlidingLog(read))
        return budgets

    def _tenant(self, tenant: str) -> _Budgets:
        budgets = self._tenants.get(tenant)
        if budgets is None:
            _, write, _, read = self._limits
            budgets = self._tenants[tenant] = _Budgets(SlidingLog(write), SlidingLog(read))
        return budgets

    def admit(self, app: str, tenant: str, *, write: bool) -> Decision:
        """Judge one request (a single request or one `$batch` item) arriving now."""
        now = self._clock()
        mine, theirs = self._app(app), self._tenant(tenant)
        period = mine.periods
        if now < period.until:
            remaining = period.until - now
            advertised, header = format_retry_after(remaining, self._format)
            # Requests that arrive within the grace were on the wire before the 429 that opened
            # the period reached the client: they are not the client ignoring Retry-After.
            during = now > period.opened_at + self._grace
            return Decision(False, advertised, header, during_retry_after=during)
        logs = [mine.requests, theirs.requests]
        if write:
            logs += [mine.writes, theirs.writes]
        wait = max(log.wait(now) for log in logs)
        if wait > 0:
            advertised, header = format_retry_after(wait, self._format)
            period.until = now + advertised
            period.opened_at = now
            return Decision(False, advertised, header)
        for log in logs:
            log.add(now)
        return Decision(True)

    def retry_after_until(self, app: str) -> float:
        """When the app's current Retry-After period ends (clock time; -inf when none ran)."""
        budgets = self._apps.get(app)
        return budgets.periods.until if budgets else -math.inf
