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

Budgets are per Intune service (issue 16): autopilot events belong to the troubleshooting
service, device identities to the enrollment service, each with its own documented limits
(`services`), so a device write never uses an event write's budget, and a Retry-After period of
one service holds only that service's requests. The service is named per request (`service=`;
"events" when not named, the only one configured by default).

Two realistic refinements (issue 13; both off unless configured):

* **Separate write and read throttles** (`split=True`; learn.microsoft.com/graph/throttling:
  writes can be throttled while reads still go). A write refused because a *write* budget is
  spent opens a period that holds only the app's writes; a request refused because the
  *any-request* budget is spent opens one that holds everything, writes included (they count in
  that budget too).
* **Retry-After forms** (`retry_after_format="mixed"`): every 429 draws its form from a
  generator seeded with the emulator's seed, so a seed gives the same forms for the same
  sequence of requests. The shares (`MIXED_SHARES`) are our choice — no public figures exist —
  to exercise what public reports show: Intune 429s without Retry-After (IntuneCD#217, Learn
  Q&A 5784629), decimals like `2.128`, and lists like `30,120` (msgraph-sdk-python#1159; the
  first number is the wait). A 429 without the header still holds the app for the period, but
  a client cannot be blamed for a request it sent without having been told how long to wait:
  `during_retry_after` counts only requests after a 429 of that period carried the header.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from batch.model import Rate

__all__ = ["MIXED_SHARES", "Decision", "SlidingLog", "Throttle", "format_retry_after"]

# The forms of Retry-After under "mixed", with their shares of 429 answers.
MIXED_SHARES: Final[tuple[tuple[str, float], ...]] = (
    ("int", 0.50),
    ("none", 0.25),
    ("decimal", 0.15),
    ("list", 0.10),
)

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
    """One Retry-After period: when it ends, and when a 429 of it first carried the header."""

    until: float = -math.inf
    told_at: float = math.inf  # inf: no 429 of this period has said how long to wait

    def open(self, now: float, advertised: float, header: str | None) -> None:
        self.until = now + advertised
        self.told_at = now if header is not None else math.inf


@dataclass(slots=True)
class _Budgets:
    writes: SlidingLog
    requests: SlidingLog
    # `held` holds every request of the app; `writes_held` only its writes (split throttles).
    held: _Period = field(default_factory=_Period)
    writes_held: _Period = field(default_factory=_Period)


def format_retry_after(seconds: float, style: str) -> tuple[float, str | None]:
    """The advertised wait and header text: "int" rounds up to whole seconds (at least 1),
    "decimal" to milliseconds (like `2.128`), "list" sends whole seconds followed by a longer
    second value (like `30,120`; the first is the wait), "none" keeps the exact wait but sends
    no header. ("mixed" is resolved by the caller: see `Throttle`.)"""
    # Rounding before the ceiling keeps float noise (0.6 * 1000 = 600.0000000000001) from
    # adding a whole unit.
    if style in ("int", "list"):
        whole = max(1, math.ceil(round(seconds, 9)))
        if style == "list":
            return float(whole), f"{whole},{max(4 * whole, 120)}"
        return float(whole), str(whole)
    if style == "decimal":
        millis = max(1, math.ceil(round(seconds * 1000, 6)))
        return millis / 1000, f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return seconds, None


class Throttle:
    """The per-app and per-tenant budgets, and each app's Retry-After periods."""

    def __init__(
        self,
        *,
        write_limit: Rate,
        tenant_write_limit: Rate,
        read_limit: Rate,
        tenant_read_limit: Rate,
        retry_after_format: str = "int",
        retry_after_grace: float = 0.2,
        split: bool = False,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        services: dict[str, tuple[Rate, Rate, Rate, Rate]] | None = None,
    ) -> None:
        limits = (write_limit, tenant_write_limit, read_limit, tenant_read_limit)
        # (writes per app, writes per tenant, any per app, any per tenant) of each service.
        self._services = {"events": limits, **(services or {})}
        self._format = retry_after_format
        self._grace = retry_after_grace
        self._split = split
        self._seed = seed
        self._rng = self._new_rng()
        self._clock = clock
        self._apps: dict[tuple[str, str], _Budgets] = {}
        self._tenants: dict[tuple[str, str], _Budgets] = {}

    def _new_rng(self) -> random.Random:
        # Its own stream: drawing forms must not disturb faults or batch shuffling.
        return random.Random(None if self._seed is None else f"retry-after:{self._seed}")

    def reset(self) -> None:
        """Forget every admission and every Retry-After period; restart the seeded forms."""
        self._apps.clear()
        self._tenants.clear()
        self._rng = self._new_rng()

    def _app(self, app: str, service: str) -> _Budgets:
        budgets = self._apps.get((service, app))
        if budgets is None:
            write, _, read, _ = self._services[service]
            budgets = self._apps[service, app] = _Budgets(SlidingLog(write), SlidingLog(read))
        return budgets

    def _tenant(self, tenant: str, service: str) -> _Budgets:
        budgets = self._tenants.get((service, tenant))
        if budgets is None:
            _, write, _, read = self._services[service]
            budgets = self._tenants[service, tenant] = _Budgets(SlidingLog(write), SlidingLog(read))
        return budgets

    def _style(self) -> str:
        """The Retry-After form of the next 429 (a seeded draw under "mixed")."""
        if self._format != "mixed":
            return self._format
        forms = [form for form, _ in MIXED_SHARES]
        shares = [share for _, share in MIXED_SHARES]
        return self._rng.choices(forms, shares)[0]

    def admit(self, app: str, tenant: str, *, write: bool, service: str = "events") -> Decision:
        """Judge one request (a single request or one `$batch` item) arriving now."""
        now = self._clock()
        mine, theirs = self._app(app, service), self._tenant(tenant, service)
        holding = [mine.held]
        if write and self._split:
            holding.append(mine.writes_held)
        running = [p for p in holding if now < p.until]
        if running:
            period = max(running, key=lambda p: p.until)
            advertised, header = format_retry_after(period.until - now, self._style())
            # Requests that arrive within the grace were on the wire before the 429 that told
            # the client to wait reached it: they are not the client ignoring Retry-After.
            during = now > period.told_at + self._grace
            if header is not None and period.told_at == math.inf:
                period.told_at = now
            return Decision(False, advertised, header, during_retry_after=during)
        requests = [mine.requests, theirs.requests]
        writes = [mine.writes, theirs.writes] if write else []
        wait_any = max(log.wait(now) for log in requests)
        wait_writes = max((log.wait(now) for log in writes), default=0.0)
        wait = max(wait_any, wait_writes)
        if wait > 0:
            advertised, header = format_retry_after(wait, self._style())
            # A spent write budget holds only writes (split); a spent request budget, all.
            period = mine.writes_held if self._split and wait_any <= 0 else mine.held
            period.open(now, advertised, header)
            return Decision(False, advertised, header)
        for log in (*requests, *writes):
            log.add(now)
        return Decision(True)

    def consume(self, app: str, tenant: str, *, write: bool, service: str = "events") -> None:
        """Use one unit of `app`'s and `tenant`'s budgets now, without judging it.

        For load that always gets through (`EmulatorServer.background_writes`): another app of
        the tenant that takes its share whatever the client under test does. A log may then
        hold more than its limit for a while; requests judged by `admit` wait until it drains.
        """
        now = self._clock()
        mine, theirs = self._app(app, service), self._tenant(tenant, service)
        logs = [mine.requests, theirs.requests]
        if write:
            logs += [mine.writes, theirs.writes]
        for log in logs:
            log.add(now)

    def retry_after_until(self, app: str, service: str = "events") -> float:
        """When the app's current Retry-After period ends (clock time; -inf when none ran)."""
        budgets = self._apps.get((service, app))
        if budgets is None:
            return -math.inf
        return max(budgets.held.until, budgets.writes_held.until)
