"""The emulator's throttle on a fake clock: exact windows, honest Retry-After values."""

from __future__ import annotations

import math

import pytest

from batch.emulator.throttle import Throttle, format_retry_after
from batch.model import Rate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, *, fmt: str = "decimal", grace: float = 0.2, **limits: Rate) -> Throttle:
    rates = {
        "write_limit": Rate(20, 1),
        "tenant_write_limit": Rate(1000, 1),
        "read_limit": Rate(1000, 1),
        "tenant_read_limit": Rate(1000, 1),
    }
    rates.update(limits)
    return Throttle(**rates, retry_after_format=fmt, retry_after_grace=grace, clock=clock)


def max_in_any_window(times: list[float], seconds: float) -> int:
    """The most admissions inside any half-open window (t - seconds, t]."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("fmt", ["int", "decimal", "none"])
def test_steady_client_at_twice_the_limit(fmt: str) -> None:
    clock = Clock()
    throttle = make(clock, fmt=fmt)
    admitted: list[float] = []
    rejected = 0
    for step in range(400):  # 40 per second for 10 s against 20 per second
        clock.now = step * 0.025
        decision = throttle.admit("app", "tenant", write=True)
        if decision.admitted:
            admitted.append(clock.now)
            continue
        rejected += 1
        assert (decision.header is None) == (fmt == "none")
        # A probe exactly Retry-After later (with nobody else sending) is admitted.
        probe = make(clock, fmt=fmt)
        for t in admitted:
            clock.now, keep = t, clock.now
            probe.admit("app", "tenant", write=True)
            clock.now = keep
        clock.now += decision.retry_after
        assert probe.admit("app", "tenant", write=True).admitted
        clock.now = step * 0.025
    # Exact to far below clock jitter (float sums like 0.025 * 43 are not exact).
    assert max_in_any_window(admitted, 1.0 - 1e-6) <= 20
    assert rejected > 0
    # The budget is used: close to 20 per second over the 10 s. Whole-second Retry-After
    # values round the wait up, so an obedient client leaves some budget unused.
    assert len(admitted) >= (20 * 6 if fmt == "int" else 20 * 9)


def test_retry_after_is_the_time_until_the_window_has_room() -> None:
    clock = Clock()
    throttle = make(clock, write_limit=Rate(3, 10))
    for t in (0.0, 1.0, 2.5):
        clock.now = t
        assert throttle.admit("a", "t", write=True).admitted
    clock.now = 4.0
    decision = throttle.admit("a", "t", write=True)
    assert not decision.admitted
    assert decision.retry_after == pytest.approx(6.0)  # the first admission leaves at t=10
    assert decision.header == "6"
    clock.now = 9.999
    assert not throttle.admit("a", "t", write=True).admitted
    clock.now = 10.0
    assert throttle.admit("a", "t", write=True).admitted


def test_reads_do_not_use_write_budget_but_writes_use_request_budget() -> None:
    clock = Clock()
    throttle = make(clock, write_limit=Rate(2, 1), read_limit=Rate(3, 1))
    assert throttle.admit("a", "t", write=True).admitted
    assert throttle.admit("a", "t", write=True).admitted
    assert throttle.admit("a", "t", write=False).admitted  # third request: reads still fit
    assert not throttle.admit("a", "t", write=False).admitted  # 3 requests in the window


def test_tenant_limit_is_shared_between_apps() -> None:
    clock = Clock()
    throttle = make(clock, write_limit=Rate(5, 1), tenant_write_limit=Rate(6, 1))
    assert all(throttle.admit("a", "t", write=True).admitted for _ in range(5))
    assert throttle.admit("b", "t", write=True).admitted
    rejected = throttle.admit("b", "t", write=True)
    assert not rejected.admitted  # app b is far below its own limit: the tenant is full
    assert throttle.admit("c", "other-tenant", write=True).admitted


def test_requests_during_retry_after_are_rejected_and_counted_after_the_grace() -> None:
    clock = Clock()
    throttle = make(clock, fmt="int", write_limit=Rate(1, 5), grace=0.2)
    assert throttle.admit("a", "t", write=True).admitted
    clock.now = 1.0
    first = throttle.admit("a", "t", write=True)
    assert not first.admitted and not first.during_retry_after
    assert first.header == "4"
    clock.now = 1.1  # in flight when the 429 was sent: rejected, not blamed
    in_flight = throttle.admit("a", "t", write=False)
    assert not in_flight.admitted and not in_flight.during_retry_after
    clock.now = 2.5  # the client ignored Retry-After
    ignored = throttle.admit("a", "t", write=False)
    assert not ignored.admitted and ignored.during_retry_after
    assert ignored.header == "3"  # what is left of the period, rounded up
    assert throttle.retry_after_until("a") == pytest.approx(5.0)
    assert throttle.retry_after_until("b") == -math.inf
    other = throttle.admit("b", "t", write=False)  # another app is not affected
    assert other.admitted
    clock.now = 5.0
    assert throttle.admit("a", "t", write=True).admitted


def test_reset_forgets_everything() -> None:
    clock = Clock()
    throttle = make(clock, write_limit=Rate(1, 100))
    throttle.admit("a", "t", write=True)
    assert not throttle.admit("a", "t", write=True).admitted
    throttle.reset()
    assert throttle.admit("a", "t", write=True).admitted


@pytest.mark.parametrize(
    ("seconds", "style", "advertised", "header"),
    [
        (2.128, "decimal", 2.128, "2.128"),
        (2.1281, "decimal", 2.129, "2.129"),
        (0.6, "decimal", 0.6, "0.6"),
        (0.0000001, "decimal", 0.001, "0.001"),
        (2.0, "int", 2.0, "2"),
        (2.001, "int", 3.0, "3"),
        (0.05, "int", 1.0, "1"),
        (1.234, "none", 1.234, None),
    ],
)
def test_format_retry_after(
    seconds: float, style: str, advertised: float, header: str | None
) -> None:
    assert format_retry_after(seconds, style) == (pytest.approx(advertised), header)
