"""The limiter on a fake clock: sliding-window budgets, the 429 gate, backoff, adaptive rate."""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest

from batch.limiter import Carried, Limiter, Sent, SystemClock
from batch.model import Rate
from batch.testing import FakeClock

pytestmark = pytest.mark.anyio

WRITE = Rate(100, 20.0)
WINDOW = 20.0 * 1.03  # the window the limiter uses with the default 3 % margin


def max_in_any_window(grants: Sequence[tuple[float, int]], seconds: float) -> int:
    """The most items granted in any closed `seconds`-long window (worst case for us)."""
    times = sorted(grants)
    best = 0
    for i, (start, _) in enumerate(times):
        total = 0
        for t, n in times[i:]:
            if t > start + seconds:
                break
            total += n
        best = max(best, total)
    return best


# -- FakeClock ---------------------------------------------------------------------------------


async def test_fake_clock_wakes_concurrent_sleepers_at_their_own_deadlines() -> None:
    clock = FakeClock()
    woke: dict[str, float] = {}

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke[name] = clock.now()

    async with anyio.create_task_group() as tg:
        tg.start_soon(nap, "long", 3.0)
        tg.start_soon(nap, "short", 1.0)
        tg.start_soon(nap, "mid", 2.0)
    assert woke == {"short": 1.0, "mid": 2.0, "long": 3.0}
    assert clock.now() == 3.0  # concurrent sleeps overlap; they do not add up


async def test_fake_clock_chained_sleeps_and_manual_advance() -> None:
    clock = FakeClock(start=10.0)
    await clock.sleep(1.5)
    await clock.sleep(0)  # only yields
    await clock.sleep(-1)
    assert clock.now() == 11.5
    clock.advance(2)
    assert clock.now() == 13.5
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_fake_clock_cancelled_sleeper_leaves_the_queue() -> None:
    clock = FakeClock()
    scopes: list[anyio.CancelScope] = []
    woke: list[float] = []

    async def doomed() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await clock.sleep(1.0)

    async def later() -> None:
        await clock.sleep(2.0)
        woke.append(clock.now())

    with anyio.fail_after(5):  # real-time guard: a stuck queue would spin forever
        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed)
            tg.start_soon(later)
            await anyio.lowlevel.checkpoint()
            scopes[0].cancel()
    assert woke == [2.0]


async def test_system_clock_is_monotonic_and_sleeps() -> None:
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0)
    await clock.sleep(-5)
    await clock.sleep(0.001)
    assert clock.now() >= before


# -- sliding window ----------------------------------------------------------------------------


async def test_no_window_ever_holds_more_than_n_under_heavy_concurrent_demand() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    grants: list[tuple[float, int]] = []
    rng = random.Random(7)
    wants = [rng.randint(1, 20) for _ in range(40)]

    async def sender(want: int) -> None:
        got = 0
        while got < 60:
            n = await limiter.acquire_writes(want)
            grants.append((clock.now(), n))
            got += n

    async with anyio.create_task_group() as tg:
        for want in wants:
            tg.start_soon(sender, want)

    assert sum(n for _, n in grants) >= 40 * 60
    assert max_in_any_window(grants, WRITE.seconds) <= WRITE.count
    # Not merely safe but busy: the budget is spent in full each window.
    assert max_in_any_window(grants, WINDOW - 1e-9) == WRITE.count


async def test_batch_takes_what_is_free_now() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    assert await limiter.acquire_writes(93) == 93
    assert await limiter.acquire_writes(20) == 7  # partial batch, no waiting
    assert clock.now() == 0.0


async def test_at_least_waits_until_the_oldest_sends_leave_the_window() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    assert await limiter.acquire_writes(6) == 6  # t=0
    clock.advance(5)
    assert await limiter.acquire_writes(3) == 3  # t=5, 1 left
    # Needs 4: the 6 sends of t=0 must leave, at 0 + 20.6 (the window plus the 3 % margin).
    assert await limiter.acquire_writes(20, at_least=4) == 7
    assert clock.now() == pytest.approx(20.6)


async def test_at_least_above_the_limit_is_lowered_to_it() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(5, 10.0), clock=clock)
    assert await limiter.acquire_writes(20, at_least=20) == 5
    assert clock.now() == 0.0


async def test_steady_state_throughput_is_n_per_window() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    times: list[float] = []

    async def sender() -> None:
        while len(times) < 1000:
            await limiter.acquire_writes(1)
            times.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(sender)
    first_thousand = sorted(times)[:1000]
    # 1000 items at 100 per 21 s: ten windows, the last one starting at 9 * 21 s.
    assert first_thousand[-1] == pytest.approx(9 * WINDOW)
    assert first_thousand[99] == 0.0 and first_thousand[100] == pytest.approx(WINDOW)


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(4, 10.0), clock=clock)
    await limiter.acquire_writes(4)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire_writes(4, at_least=4)
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(waiter, i)
            await anyio.lowlevel.checkpoint()  # let each one queue before the next starts
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_takes_no_slots() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(2, 10.0), clock=clock)
    await limiter.acquire_writes(2)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire_writes(1)
    assert limiter.stats["writes"] == 2


async def test_bad_counts_are_rejected() -> None:
    limiter = Limiter(write=WRITE, clock=FakeClock())
    with pytest.raises(ValueError):
        await limiter.acquire_writes(0)
    with pytest.raises(ValueError):
        await limiter.acquire_reads(1, at_least=0)
    with pytest.raises(ValueError):
        Limiter(write=WRITE, margin=-0.1)


# -- reads -------------------------------------------------------------------------------------


async def test_reads_never_use_write_slots() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(5, 20.0), read=Rate(50, 20.0), clock=clock)
    assert await limiter.acquire_reads(40) == 40
    assert await limiter.acquire_writes(5) == 5
    assert clock.now() == 0.0


async def test_writes_count_against_the_any_request_budget() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(5, 20.0), read=Rate(8, 20.0), clock=clock)
    assert await limiter.acquire_writes(5) == 5
    assert await limiter.acquire_reads(10) == 3  # 8 requests in all
    assert await limiter.acquire_reads(1) == 1  # waits for the window
    assert clock.now() == pytest.approx(20.6)


async def test_a_full_read_budget_holds_writes_back() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(5, 20.0), read=Rate(8, 10.0), clock=clock)
    await limiter.acquire_reads(8)
    assert await limiter.acquire_writes(5) == 5
    assert clock.now() == pytest.approx(10.3)


async def test_read_grants_respect_their_window() -> None:
    clock = FakeClock()
    read = Rate(30, 2.0)
    limiter = Limiter(write=Rate(5, 2.0), read=read, clock=clock)
    grants: list[tuple[float, int]] = []

    async def reader() -> None:
        for _ in range(20):
            n = await limiter.acquire_reads(7)
            grants.append((clock.now(), n))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(reader)
    assert max_in_any_window(grants, read.seconds) <= read.count


# -- the 429 gate ------------------------------------------------------------------------------


async def test_retry_after_pauses_every_sender() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    assert limiter.throttled(2.5) == 2.5
    starts: list[float] = []

    async def sender() -> None:
        await limiter.acquire_writes(1)
        starts.append(clock.now())

    async def reader() -> None:
        await limiter.acquire_reads(1)
        starts.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(sender)
        tg.start_soon(reader)
    assert len(starts) == 11
    assert min(starts) >= 2.5


async def test_a_429_during_a_window_wait_is_honoured() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    await limiter.acquire_writes(10)
    granted: list[float] = []

    async def waiter() -> None:
        await limiter.acquire_writes(1)  # the window frees at 21 s
        granted.append(clock.now())

    async def throttle_later() -> None:
        await clock.sleep(20.0)
        limiter.throttled(30.0)  # arrives while the waiter sleeps on the window

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(throttle_later)
    assert granted == [pytest.approx(50.0)]


async def test_a_pause_is_never_shortened() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    limiter.throttled(10.0)
    clock.advance(0.1)
    assert limiter.throttled(1.0) == pytest.approx(9.9)
    assert limiter.throttled(12.0) == pytest.approx(12.0)
    assert limiter.paused_for == pytest.approx(12.0)
    assert limiter.stats["pauses"] == 1 and limiter.stats["throttled"] == 3


async def test_backoff_without_retry_after_grows_with_jitter() -> None:
    pauses: list[list[float]] = []
    for seed in range(5):
        clock = FakeClock()
        limiter = Limiter(write=WRITE, clock=clock, rng=random.Random(seed))
        run: list[float] = []
        for _ in range(7):
            pause = limiter.throttled(None)
            run.append(pause)
            clock.advance(pause)  # the next 429 comes right after the gate opens
        pauses.append(run)
    for run in pauses:
        for k, pause in enumerate(run):
            ceiling = min(60.0, 2.0**k)
            assert ceiling / 2 <= pause <= ceiling
    assert len({run[3] for run in pauses}) == len(pauses)  # jittered, not one fixed schedule


async def test_backoff_restarts_after_a_success() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock, rng=random.Random(1))
    for _ in range(4):
        clock.advance(limiter.throttled(None))
    limiter.note_success()
    assert limiter.throttled(None) <= 1.0


async def test_backoff_scales_down_with_short_windows() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 2.0), clock=clock, rng=random.Random(3))
    assert 0.05 <= limiter.throttled(None) <= 0.1


async def test_success_during_the_pause_keeps_the_streak() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock, rng=random.Random(2))
    clock.advance(limiter.throttled(None))
    clock.advance(limiter.throttled(None))
    limiter.throttled(None)
    limiter.note_success(3)  # an answer to a request sent before the 429s
    clock.advance(limiter.paused_for)
    assert limiter.throttled(None) >= 4.0


async def test_answers_of_one_burst_are_one_episode() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    for _ in range(20):  # a $batch whose items were all throttled
        limiter.throttled(0.0)
    assert limiter.stats["pauses"] == 1
    # An empty window says little about the real limit: one episode at most halves it.
    assert limiter.effective_write_limit == 50
    assert limiter.stats["decreases"] == 1


# -- adaptive rate -----------------------------------------------------------------------------


async def _fill(limiter: Limiter, clock: FakeClock, n: int) -> list[float]:
    """Take `n` write slots one at a time, answered at once; the times they were granted."""
    times = []
    for _ in range(n):
        grant = await limiter.reserve_writes(1)
        limiter.settle(grant, counted=1)
        times.append(clock.now())
    return times


async def test_a_429_aims_the_limit_at_what_graph_took_in_the_window() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    await _fill(limiter, clock, 70)
    grant = await limiter.reserve_writes(10)  # in flight when the first 429 comes back
    limiter.throttled(2.0)
    assert limiter.effective_write_limit == 80  # 70 answered and 10 in flight
    limiter.settle(grant, released=10)  # those ten were refused too: their slots come back
    limiter.throttled(2.0)
    assert limiter.effective_write_limit == 70
    assert limiter.stats["decreases"] == 1 and limiter.stats["pauses"] == 1


async def test_a_429_with_a_full_window_still_lowers_the_limit_by_one() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    await _fill(limiter, clock, 10)
    limiter.throttled(1.0)  # our own log cannot explain it: the budget is smaller
    assert limiter.effective_write_limit == 9


async def test_quiet_windows_at_the_limit_step_it_back_up_doubling() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    await _fill(limiter, clock, 40)
    clock.advance(limiter.throttled(1.0))
    assert limiter.effective_write_limit == 50  # at most a halving at once
    seen = []
    for _ in range(7):  # each round fills the limit, i.e. the limit holds the writes back
        await _fill(limiter, clock, limiter.effective_write_limit)
        seen.append(limiter.effective_write_limit)
    # One quiet window at 50 first; then +5, +10, +20, +25 % of N; never above N.
    assert seen == [50, 50, 55, 65, 85, 100, 100]
    assert limiter.stats["pauses"] == 1


async def test_a_limit_the_rows_never_reach_is_not_raised() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    clock.advance(limiter.throttled(1.0))
    assert limiter.effective_write_limit == 50
    for _ in range(5):
        await _fill(limiter, clock, 10)  # ten a window: the limit of 50 holds nothing back
        clock.advance(WINDOW)
    assert limiter.effective_write_limit == 50


async def test_a_step_up_is_probed_one_write_at_a_time() -> None:
    """Above the level the limit held, writes go alone until one is counted: a failed step up
    costs one 429, not a batch."""
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    await _fill(limiter, clock, 40)
    clock.advance(limiter.throttled(1.0))
    for _ in range(3):
        await _fill(limiter, clock, limiter.effective_write_limit)
    assert limiter.effective_write_limit == 55  # held 50 for a window, now probing 55
    clock.advance(WINDOW)
    up_to_held = await limiter.reserve_writes(100)
    assert up_to_held.count == 20  # a $batch in flight at most
    limiter.settle(up_to_held, counted=20)
    for _ in range(2):
        grant = await limiter.reserve_writes(100)
        limiter.settle(grant, counted=grant.count)
    probe = await limiter.reserve_writes(100)
    assert probe.count == 1  # the 51st: above what held, alone
    limiter.settle(probe, released=1)
    limiter.throttled(1.0)
    assert limiter.effective_write_limit == 50


async def test_after_a_429_writes_start_again_slowly() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    clock.advance(limiter.throttled(1.0))
    counts = []
    for _ in range(6):
        grant = await limiter.reserve_writes(20)
        counts.append(grant.count)
        limiter.settle(grant, counted=grant.count)
    assert counts == [1, 1, 2, 4, 8, 16]
    assert (await limiter.reserve_writes(20)).count == 18  # 32 counted: a $batch again, to 50


async def test_the_lowered_rate_is_enforced() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    clock.advance(limiter.throttled(1.0))
    # An empty window says nothing about the real limit: at most a halving at once.
    assert limiter.effective_write_limit == 5
    assert await limiter.acquire_writes(20) == 5


async def test_the_rate_never_drops_below_one() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(3, 20.0), clock=clock)
    for _ in range(10):
        clock.advance(limiter.throttled(1.0) + 1.5)
    assert limiter.effective_write_limit == 1
    assert await limiter.acquire_writes(5, at_least=5) == 1


async def test_adaptive_off_keeps_the_configured_rate() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock, adaptive=False)
    for _ in range(5):
        clock.advance(limiter.throttled(1.0) + 1.5)
    assert limiter.effective_write_limit == 100
    assert limiter.stats["decreases"] == 0


async def test_stats_report_the_counters() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    await limiter.acquire_writes(3)
    await limiter.acquire_reads(2)
    limiter.note_success(3)
    limiter.throttled(4.0)
    assert limiter.stats == {
        "throttled": 1,
        "pauses": 1,
        "paused_seconds": 4.0,
        "decreases": 1,
        "write_limit": 50,
        "configured_write_limit": 100,
        "writes": 3,
        "reads": 2,
        "successes": 3,
    }


async def test_refunded_write_slots_are_free_again() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 1), clock=clock)
    assert await limiter.acquire_writes(10) == 10
    limiter.refund_writes(4)  # a batch found only 6 rows for its 10 slots
    assert await limiter.acquire_writes(10) == 4
    assert clock.now() == 0  # no waiting: the refunded slots were free at once


# -- settling: what Graph made of the writes -----------------------------------------------------


async def test_an_answered_write_counts_a_plain_window_from_its_answer() -> None:
    """No margin for a settled slot: Graph counted it before its answer arrived."""
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    grant = await limiter.reserve_writes(10)
    clock.advance(0.5)  # the answer
    limiter.settle(grant, counted=10)
    assert await limiter.acquire_writes(1) == 1
    assert clock.now() == pytest.approx(20.5)  # not 20 * 1.03, not 20 from the send


async def test_an_unsettled_write_keeps_its_send_time_and_the_margin() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), clock=clock)
    await limiter.reserve_writes(10)
    assert await limiter.acquire_writes(1) == 1
    assert clock.now() == pytest.approx(20.6)


async def test_a_released_slot_is_free_at_once_for_a_waiting_writer() -> None:
    """A 503 gives its slot back mid-window: the writer waiting for one takes it then."""
    clock = FakeClock()
    limiter = Limiter(write=Rate(2, 60.0), clock=clock)
    refused = await limiter.reserve_writes(1)
    await limiter.reserve_writes(1)
    got: list[float] = []

    async def waiter() -> None:
        await limiter.reserve_writes(1)
        got.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await clock.sleep(1.0)
        limiter.settle(refused, released=1)
    assert got == [1.0]


async def test_in_flight_writes_are_at_most_a_batch() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    first = await limiter.reserve_writes(100)
    assert first.count == 20
    got: list[float] = []

    async def waiter() -> None:
        got.append((await limiter.reserve_writes(100)).count)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await clock.sleep(0.3)
        assert got == []  # the budget has room, but twenty are in flight
        limiter.settle(first, counted=20)
    assert got == [20] and clock.now() == pytest.approx(0.3)
    # Callers that never settle (`acquire_writes`) are not held to it.
    assert await limiter.acquire_writes(100) == 60


async def test_a_lost_write_read_back_later_is_counted_or_released_then() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(2, 60.0), clock=clock)
    first, second = await limiter.reserve_writes(1), await limiter.reserve_writes(1)
    limiter.settle(first, unknown=1)  # lost, and the read-back failed: still counted
    limiter.settle(second, unknown=1)
    clock.advance(1.0)
    limiter.settle(first, released=1)  # read back again: it had not landed
    limiter.settle(second, counted=1)  # it had
    assert await limiter.acquire_writes(2) == 1 and clock.now() == 1.0
    assert await limiter.acquire_writes(1) == 1
    assert clock.now() == pytest.approx(61.0)  # a plain window from the second's read-back


async def test_a_write_whose_answer_never_comes_stops_being_in_flight() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    lost = await limiter.reserve_writes(20)
    limiter.settle(lost, unknown=20)  # a read could not tell whether it landed
    assert (await limiter.reserve_writes(20)).count == 20
    assert clock.now() == 0
    # Never settled at all: after a window it no longer holds the others back either.
    assert (await limiter.reserve_writes(20)).count == 20
    assert clock.now() == pytest.approx(WINDOW)


# -- carried over from an interrupted process ----------------------------------------------------


class _Spy:
    """A `Journal` that records what it hears."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int]] = []

    def granted(self, writes: int, reads: int) -> None:
        self.calls.append(("granted", writes, reads))

    def refunded(self, writes: int) -> None:
        self.calls.append(("refunded", writes, 0))

    def throttled(self, paused_for: float, write_limit: int) -> None:
        self.calls.append(("throttled", paused_for, write_limit))


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("burst", id="one-burst-just-before"),
        pytest.param("steady", id="steady-full-speed"),
        pytest.param("batches", id="batches-of-20"),
    ],
)
async def test_no_window_across_the_resume_holds_more_than_n(pattern: str) -> None:
    """The earlier process's sends plus the new one's: never more than N in any window."""
    rng = random.Random(pattern)
    # What the interrupted process sent, as ages when the new process starts (it took 0.7 s).
    if pattern == "burst":
        earlier = [Sent(0.7, 100, 0)]
    elif pattern == "steady":
        earlier = [Sent(0.7 + i * 0.19, 1, 0) for i in range(100)]  # the last 19.5 s ago
    else:
        earlier = [Sent(0.7 + rng.uniform(0, 15), 20, 0) for _ in range(5)]
    clock = FakeClock(start=1000.0)  # another process: its clock has another origin
    limiter = Limiter(write=WRITE, clock=clock)
    assert limiter.carry_over(Carried(sends=earlier)) == 100
    grants = [(clock.now() - s.ago, s.writes) for s in earlier]

    async def sender(want: int) -> None:
        while sum(n for t, n in grants if t >= 1000.0) < 250:
            n = await limiter.acquire_writes(want)
            grants.append((clock.now(), n))

    async with anyio.create_task_group() as tg:
        for want in (1, 7, 20, 20):
            tg.start_soon(sender, want)
    assert max_in_any_window(grants, WRITE.seconds) <= WRITE.count
    # ...and the new process waited no longer than needed: it went as soon as room freed.
    first = min(t for t, _ in grants if t >= 1000.0)
    oldest = min(t for t, _ in grants)
    assert first == pytest.approx(oldest + WINDOW)


async def test_without_carry_over_the_resume_would_overrun_the_window() -> None:
    """The failure the carry-over prevents: an empty log sends a second full window at once."""
    clock = FakeClock(start=1000.0)
    limiter = Limiter(write=WRITE, clock=clock)
    grants = [(1000.0 - 0.7, 100), (1000.0, await limiter.acquire_writes(100))]
    assert max_in_any_window(grants, WRITE.seconds) == 200


async def test_carried_sends_out_of_the_window_are_ignored_and_reads_count_for_requests() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), read=Rate(30, 20.0), clock=clock)
    carried = Carried(sends=[Sent(25.0, 10, 0), Sent(5.0, 4, 20), Sent(1.0, 2, 0)])
    assert limiter.carry_over(carried) == 6  # the 10 of 25 s ago left the 20.6 s window
    # 6 writes and 20 reads are in the any-request window: 4 requests left, fewer than 4 writes.
    assert await limiter.acquire_writes(10) == 4
    assert clock.now() == 0.0
    assert limiter.stats["writes"] == 4  # carried sends are not this process's


async def test_a_negative_age_counts_as_just_sent() -> None:
    """A wall clock set back between the processes: waiting too long is the safe error."""
    clock = FakeClock()
    limiter = Limiter(write=Rate(5, 10.0), clock=clock)
    assert limiter.carry_over(Carried(sends=[Sent(-30.0, 5, 0)])) == 5
    assert await limiter.acquire_writes(1) == 1
    assert clock.now() == pytest.approx(10.3)


async def test_a_carried_pause_holds_the_gate_and_a_lowered_rate_stays_lowered() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    limiter.carry_over(Carried(pause_ends_in=3.0, write_limit=60))
    assert limiter.paused_for == pytest.approx(3.0)
    assert limiter.effective_write_limit == 60
    assert await limiter.acquire_writes(100) == 60
    assert clock.now() == pytest.approx(3.0)
    # It recovers as it would have in the earlier process: windows count from the pause's end,
    # and a limit that held the writes back for one is raised after the next.
    clock.advance(WINDOW)
    assert await limiter.acquire_writes(60) == 60
    assert limiter.effective_write_limit == 60
    clock.advance(WINDOW)
    assert limiter.effective_write_limit == 65


async def test_a_pause_that_ended_leaves_the_gate_open() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    limiter.carry_over(Carried(pause_ends_in=-2.0, write_limit=250))  # above N: ignored
    assert limiter.paused_for == 0.0
    assert limiter.effective_write_limit == 100
    assert await limiter.acquire_writes(5) == 5 and clock.now() == 0.0


async def test_the_journal_hears_every_grant_refund_and_pause() -> None:
    clock = FakeClock()
    limiter = Limiter(write=WRITE, clock=clock)
    spy = _Spy()
    limiter.attach(spy)
    await limiter.acquire_writes(20)
    limiter.refund_writes(3)
    await limiter.acquire_reads(7)
    limiter.throttled(4.0)
    limiter.throttled(None)  # the same episode, no longer: nothing new to keep
    clock.advance(1.0)
    limiter.throttled(10.0)  # a longer pause: kept
    assert spy.calls == [
        ("granted", 20, 0),
        ("refunded", 3, 0),
        ("granted", 0, 7),
        ("throttled", 4.0, 50),  # the write limit the 429 left
        ("throttled", 10.0, 50),
    ]
    limiter.attach(None)
    await limiter.acquire_writes(1)
    assert len(spy.calls) == 5


async def test_window_gives_back_what_carry_over_takes() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(10, 20.0), read=Rate(30, 20.0), clock=clock)
    await limiter.acquire_writes(4)
    clock.advance(3.0)
    await limiter.acquire_reads(5)
    await limiter.acquire_writes(6)
    limiter.throttled(2.0)
    window = limiter.window()
    assert list(window.sends) == [(3.0, 4, 0), (0.0, 6, 5)]
    assert window.pause_ends_in == 2.0 and window.write_limit == 9

    twin = Limiter(write=Rate(10, 20.0), read=Rate(30, 20.0), clock=FakeClock(start=50.0))
    assert twin.carry_over(window) == 10
    assert twin.paused_for == 2.0
    # The 4 of "3 s ago" leave first; the 429 with a full window left the limit at 9.
    assert await twin.acquire_writes(10) == 3
    assert twin.window().sends[-1].ago == 0.0
    assert Limiter(write=WRITE, clock=FakeClock()).window() == Carried()
