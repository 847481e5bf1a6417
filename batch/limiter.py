"""The request budgets: sliding-window write and read logs, the 429 pause gate, an adaptive rate.

Graph throttles Intune writes per app per tenant (100 per 20 s) and all requests at 1000 per 20 s,
counting every item of a `$batch` individually (GRAPH.md, "Throttling"). The limiter turns those
budgets into waits *before* sending, so a well-behaved run never sees a 429:

- **Sliding log.** Each budget keeps a time per recent item. An item may go at time `t` only
  while fewer than `N` items are logged in `(t - W, t]`, with `W = seconds * (1 + margin)`, so
  no `seconds`-long window ever holds more than `N`. A grant is logged at its send time, which
  is earlier than Graph counts it by up to the request's latency: the margin covers that.
- **Settled by the answer** (`reserve_writes` → `settle`, issue 14). Once Graph answered, the
  engine says what it made of each write: *counted* ones are logged again at the answer, less
  the margin, so a slot is used again exactly one plain window after Graph's answer (Graph
  counted it before it answered: no latency can make that too early, and the margin no longer
  costs 3 % of every window); *released* ones (429, 503, a lost answer whose write did not
  land) leave the log at once: a request the service refused costs no budget, and the writer
  waiting at the head of the queue is woken to take the slot mid-window.
- **In flight.** Settled grants keep at most a `$batch`'s worth of writes in flight, and where
  room is in doubt (after a 429; above the level the limit held, while probing a step up) they
  start with one write and grow as Graph counts them: a budget smaller than the log thinks (an
  unknown limit, another app's share of the tenant) costs one 429, not a batch of them.
- **Pause gate.** A 429 means Graph's budget for this app is spent, whatever our own log says, so
  `throttled()` closes one gate for every caller until the `Retry-After` has passed (or an
  exponential backoff with jitter when Graph gives none). Nothing is granted through a closed gate.
  503, 504 and lost answers never touch the gate or the rate: they delay only their request.
- **Adaptive rate.** Every 429 aims the write limit at what the log says Graph took from us in
  the last window (the refused slots given back first), never below half of where the episode
  began: that is what is left for us, whether the app's limit is lower than configured or
  another app takes part of the tenant's budget. It climbs back over quiet windows in which
  the limit held writes back: after one, by 5, 10, 20, 25 % of N per window (a halving is
  undone in four windows, not twenty), each step probed slowly, so a step too far costs one 429.
- **Carried over across processes.** Graph's window does not end with our process: a run resumed
  right after an interruption at full speed would otherwise start with an empty log and spend a
  budget Graph still counts as used. A `Journal` hears of every grant (and refund, and pause) the
  moment it happens, before the request leaves, so the ledger can keep it; `carry_over` seeds a
  new limiter with what an earlier process sent, given as ages ("0.8 s ago"), not clock readings:
  the monotonic clocks of two processes share no origin, so the ledger keeps wall-clock times and
  turns them into ages. `window()` is the inverse, for a ledger that starts journaling a limiter
  which already sent (`job run` shares one limiter among its files' runs). The journal keeps send
  times only (settling is not journaled): a resumed run waits the margin-widened window, which
  errs on the safe side.

Every pause and every change of the adaptive rate is a `batch.runlog` event (`pause`, `rate`) in
run.log. All time goes through an injected `Clock`, so tests on `batch.testing.FakeClock` run
without real sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import anyio

from batch import runlog
from batch.model import Rate

__all__ = ["Carried", "Clock", "Grant", "Journal", "Limiter", "Sent", "SystemClock"]

#: The any-request budget Graph documents for Intune (per app per tenant).
DEFAULT_READ_RATE = Rate(1000, 20.0)

# Sleeping at least this long guarantees progress when float rounding leaves a wake-up a hair
# before the moment a slot frees.
_MIN_SLEEP = 1e-6

# Backoff for a 429 without Retry-After: base * 2**k seconds (k = consecutive 429 episodes),
# capped, scaled down for short test windows.
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 60.0
# Adaptive rate (see `_adapt_down` and `_recover`): one 429 episode never cuts the limit below
# this share of what it was; the first step up is this share of the configured limit, and each
# step after a successful one is twice as large, up to `_STEP_MAX_SHARE`.
_DECREASE_FLOOR = 0.5
_STEP_SHARE = 0.05
_STEP_MAX_SHARE = 0.25
# Write slots of settled grants in flight at most (one $batch): a budget smaller than the log
# thinks meets at most this many writes at once (`reserve_writes`).
_IN_FLIGHT = 20


class Clock(Protocol):
    """Where the limiter and the retries read the time and wait."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (any value ≤ 0 only yields to other tasks)."""
        ...


class Journal(Protocol):
    """Hears of what the limiter grants, as it happens (the ledger keeps it for a resume).

    Each call comes synchronously from inside the limiter, before the caller can send anything,
    so what the journal stores before returning is known to a resumed process even after
    `kill -9`.
    """

    def granted(self, writes: int, reads: int) -> None:
        """`writes` write slots and `reads` read slots were granted just now."""
        ...

    def refunded(self, writes: int) -> None:
        """The latest grant gave back `writes` of its write slots (see `refund_writes`)."""
        ...

    def throttled(self, paused_for: float, write_limit: int) -> None:
        """The pause gate now stays closed `paused_for` more seconds; the write limit in force."""
        ...


class Sent(NamedTuple):
    """Slots granted together by an earlier process, `ago` seconds before now."""

    ago: float
    writes: int
    reads: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Carried:
    """What an earlier process of the same run left in Graph's windows, relative to now.

    `pause_ends_in`: seconds until its pause gate opens (negative: it opened that long ago; None:
    it never paused). `write_limit`: the adaptive write limit in force at its last 429.
    """

    sends: Sequence[Sent] = ()
    pause_ends_in: float | None = None
    write_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """Write slots granted together by `Limiter.reserve_writes`: how many, and when.

    The caller hands it back to `Limiter.settle` once Graph answered, so the limiter finds the
    grant's entries in its logs by their time `at`. `count` 0: nothing was granted (a stop).
    """

    count: int
    at: float


class SystemClock:
    """The real clock: `time.monotonic()` and `anyio.sleep`."""

    def now(self) -> float:
        """Monotonic seconds (usable outside the event loop too)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real; non-positive values still yield once."""
        await anyio.sleep(max(seconds, 0.0))


class Limiter:
    """The shared write and read budgets, the 429 pause gate and the adaptive write rate.

    One instance serves every sender of a run. `acquire_writes`/`acquire_reads` are FIFO-fair:
    callers queue on a lock and the head of the queue does the waiting.
    """

    def __init__(
        self,
        *,
        write: Rate,
        read: Rate | None = None,
        margin: float = 0.03,
        clock: Clock | None = None,
        adaptive: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not margin >= 0:
            raise ValueError(f"margin must be ≥ 0, got {margin!r}")
        self._write = write
        self._read = read if read is not None else DEFAULT_READ_RATE
        self._write_window = write.seconds * (1.0 + margin)
        self._read_window = self._read.seconds * (1.0 + margin)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._adaptive = adaptive
        self._rng = rng if rng is not None else random.Random()
        # A write is logged in both (it is also "any request"); writes in flight are not in
        # either but in `_pending`, and count against both.
        self._write_log = _Log(write.seconds, margin)
        self._any_log = _Log(self._read.seconds, margin)
        self._write_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        # Pause gate and adaptive state.
        self._paused_until = -math.inf
        self._limit = write.count
        self._streak = 0  # consecutive 429 episodes without a success in between
        # Every episode closes the gate at least this long (0.21 s for a 20 s window), so the
        # other answers of one burst land inside it even when Graph says Retry-After: 0.
        self._min_pause = self._write_window / 100.0
        self._quiet_since: float | None = None  # start of the current quiet period while < N
        self._base_step = max(1, round(write.count * _STEP_SHARE))
        self._max_step = max(1, round(write.count * _STEP_MAX_SHARE))
        self._step = self._base_step  # the next step up
        self._waited = 0  # binding quiet windows held since the last 429
        self._peak = 0  # the most writes the log held since the current quiet window began
        self._episode_from = write.count  # the limit in force when the episode began
        self._held = write.count  # the limit known to hold (a quiet window, or an episode's end)
        # Slow start (`reserve_writes`): after a 429, and above the held limit, writes go out
        # at most as many at once as slow-started writes were counted since it began, until a
        # $batch's worth was. Grants made slowly, by time, so their answers count.
        self._cautious = False
        self._ok = 0
        self._slow: set[float] = set()
        # Counters for `stats`.
        self._throttled = 0
        self._pauses = 0
        self._paused_seconds = 0.0
        self._decreases = 0
        self._writes = 0
        self._reads = 0
        self._successes = 0
        self._journal: Journal | None = None
        # A writer is sleeping until the write window has room (read by `holding`).
        self._window_wait = False
        # Set when slots are given back or answered, to wake that writer early (`_nap`).
        self._freed = anyio.Event()
        # Settled grants in flight: grant time -> slots not settled yet (`reserve_writes`).
        self._pending: dict[float, int] = {}
        self._in_flight = 0
        # Settled grants whose answers were lost and not known to have landed (`unknown`):
        # counted from their send time like those in flight, but no longer in flight.
        self._lost: dict[float, int] = {}
        self._last_grant = -math.inf
        self._last_settles = False  # whether the latest grant is in `_pending` (refund_writes)
        # What the journal was last told of the gate, so a burst of 429s is one record.
        self._journaled_gate: tuple[float, int] | None = None

    # -- budgets ---------------------------------------------------------------------------

    async def acquire_writes(self, want: int, *, at_least: int = 1) -> int:
        """Take up to `want` write slots (at least `at_least`) and return how many were taken.

        `reserve_writes` for callers that never `settle`: their slots count from their send
        time (with the margin), and they are not held to the in-flight allowance, which only
        settled grants can keep track of.
        """
        return (await self._take_writes(want, at_least, settles=False)).count

    async def reserve_writes(self, want: int, *, at_least: int = 1) -> Grant:
        """Take up to `want` write slots (at least `at_least`); the `Grant` says how many, when.

        Waits while the pause gate is closed, then until `at_least` slots are free in the write
        window (and in the any-request window, which writes also count against), then takes as
        many as are free right now, up to `want`: a partial batch beats an idle budget.
        `at_least` larger than the current effective limit is lowered to it (waiting for more
        slots than the window can ever hold would wait forever). Hand the grant to `settle`
        once Graph answered.

        Until it is settled, a grant's slots are *in flight*, and few may be, so that a budget
        smaller than the log thinks (another app took part of the tenant's) costs few 429s:
        the first 429 closes the gate before much else left. At most `_IN_FLIGHT` (a `$batch`)
        at once; and where room is in doubt they start slowly: after a 429, and beyond the
        level the limit held for a whole window (the probe of a step up, `_recover`), one write
        goes alone, then as many at once as were counted since (1, 1, 2, 4, ...), so a burst
        that finds no room costs one 429, not a batch. A window's budget still goes out in a
        few round trips.
        """
        return await self._take_writes(want, at_least, settles=True)

    async def _take_writes(self, want: int, at_least: int, *, settles: bool) -> Grant:
        want, at_least = _check_counts(want, at_least)
        async with self._write_lock:
            while True:
                await self._wait_gate()
                now = self._clock.now()
                self._recover(now)
                used, used_any = self._used(now)
                limit = self._limit
                need = min(at_least, limit, self._read.count)
                free = min(limit - used, self._read.count - used_any)
                room = free
                slow = False
                if settles:
                    room = max(_IN_FLIGHT - self._in_flight, 0)
                    need = min(need, _IN_FLIGHT)
                    below = self._held - used  # slots up to the held limit
                    if self._limit > self._held and below > 0:
                        room = min(room, below)  # the slots above it go slowly
                    probing = self._limit > self._held and below <= 0
                    slow = self._ok < _IN_FLIGHT and (self._cautious or probing)
                    if slow:
                        need, room = 1, min(room, max(self._ok, 1) - self._in_flight)
                if free >= need and room >= need:
                    take = min(want, free, room)
                    if settles:
                        self._pending[now] = self._pending.get(now, 0) + take
                        self._in_flight += take
                    else:
                        self._write_log.sent.extend(itertools.repeat(now, take))
                        self._any_log.sent.extend(itertools.repeat(now, take))
                    if slow:
                        self._slow.add(now)
                    self._peak = max(self._peak, used + take)
                    self._writes += take
                    self._last_grant, self._last_settles = now, settles
                    if self._journal is not None:
                        self._journal.granted(take, 0)
                    return Grant(take, now)
                unanswered = self._unanswered()
                delay = max(
                    self._write_log.delay(unanswered, used, limit, need, now),
                    self._any_log.delay(unanswered, used_any, self._read.count, need, now),
                )
                if free >= need:
                    # Only writes in flight hold this grant back: an answer frees it (`_nap`
                    # wakes on settle), at the latest when the oldest grant's window ends.
                    delay = min(self._pending, default=now) + self._write_window - now
                # Loop back through the gate: a 429 may have closed it while we waited.
                self._window_wait = True
                try:
                    await self._nap(max(delay, _MIN_SLEEP))
                finally:
                    self._window_wait = False

    def _used(self, now: float) -> tuple[int, int]:
        """Write and any-request slots in use now: logged in the windows, or in flight."""
        self._write_log.prune(now)
        self._any_log.prune(now)
        # A grant never settled (an answer that never came), or lost, stops counting after a
        # window from its send, like any send.
        for at in [at for at in self._pending if at + self._write_window <= now]:
            self._unpend(at, self._pending[at])
            self._slow.discard(at)
        for at in [at for at in self._lost if at + self._write_window <= now]:
            del self._lost[at]
        unanswered = self._in_flight + sum(self._lost.values())
        return len(self._write_log) + unanswered, len(self._any_log) + unanswered

    def _unanswered(self) -> Counter[float]:
        """Grant time → writes in flight or lost: counted from their send times."""
        return Counter(self._pending) + Counter(self._lost)

    def _unpend(self, at: float, n: int) -> int:
        """Up to `n` slots of the grant made at `at` are no longer in flight; how many were."""
        n = _take(self._pending, at, n)
        self._in_flight -= n
        return n

    async def _nap(self, seconds: float) -> None:
        """Sleep `seconds` on the clock, or less when slots are given back meanwhile.

        Slots come back at any time (`settle` after a 503, `refund_writes`), not only when the
        oldest send leaves the window: the writer waiting at the head of the queue must take
        them then, or a slot freed mid-window stays idle until the window turns.
        """
        freed = self._freed = anyio.Event()
        async with anyio.create_task_group() as nap:

            async def wake() -> None:
                await freed.wait()
                nap.cancel_scope.cancel()

            nap.start_soon(wake)
            await self._clock.sleep(seconds)
            nap.cancel_scope.cancel()

    def refund_writes(self, n: int) -> None:
        """Give back `n` slots of the latest `acquire_writes` that will not be sent after all.

        Call it right after that acquire, before awaiting anything: the newest `n` send times are
        then the caller's own (a `$batch` that found fewer rows than it was granted slots).
        """
        if self._last_settles:
            n = max(0, min(n, self._pending.get(self._last_grant, 0)))
            self._unpend(self._last_grant, n)
        else:
            n = max(0, min(n, len(self._write_log.sent)))
            for _ in range(n):
                self._write_log.sent.pop()
                if self._any_log.sent:
                    self._any_log.sent.pop()
        self._writes -= n
        if n:
            self._freed.set()
            if self._journal is not None:
                self._journal.refunded(n)

    def settle(
        self, grant: Grant, *, counted: int = 0, released: int = 0, unknown: int = 0
    ) -> None:
        """What Graph made of `grant`'s writes, told once their answers are in.

        `counted`: Graph carried them out, or answered them for what they were (400, 404). It
        counted each no later than its answer arrived, so each slot is used again exactly one
        window after the answer (no margin: no network delay can make that too early) instead
        of one widened window after the send. `released`: Graph did not carry them out (429,
        503, a lost answer whose write did not land): their slots are free again at once, so a
        request the service refused costs no budget. `unknown`: their answers are lost for good
        (and a read could not tell whether they landed): they stay counted from their send time,
        with the margin, but are no longer in flight; a later `settle` of the same grant (the
        read-back that worked) counts or releases them after all. Slots left unsettled stay in
        flight (until a window passed after their send). Any number of awaits may lie between
        the grant and its settling, and a grant may be settled in parts.
        """
        now = self._clock.now()
        counted, released, unknown = max(counted, 0), max(released, 0), max(unknown, 0)
        self._unpend(grant.at, counted + released + unknown)
        # Read back later, a lost write is counted or released after all.
        _take(self._lost, grant.at, counted + released)
        if unknown:
            self._lost[grant.at] = self._lost.get(grant.at, 0) + unknown
        if grant.at in self._slow:
            self._ok += counted
            if grant.at not in self._pending:
                self._slow.discard(grant.at)
            if self._ok >= _IN_FLIGHT:
                self._cautious = False
        self._freed.set()
        # A grant already out of flight (an answer slower than the window) is counted all the
        # same: Graph may have counted it as late as now.
        for log in (self._write_log, self._any_log):
            log.answered.extend(itertools.repeat(now, counted))

    async def acquire_reads(self, want: int, *, at_least: int = 1) -> int:
        """Take up to `want` slots of the any-request budget (at least `at_least`); see writes.

        A read never consumes write slots.
        """
        want, at_least = _check_counts(want, at_least)
        async with self._read_lock:
            while True:
                await self._wait_gate()
                now = self._clock.now()
                _, used = self._used(now)
                need = min(at_least, self._read.count)
                free = self._read.count - used
                if free >= need:
                    take = min(want, free)
                    self._any_log.sent.extend(itertools.repeat(now, take))
                    self._reads += take
                    if self._journal is not None:
                        self._journal.granted(0, take)
                    return take
                delay = self._any_log.delay(self._unanswered(), used, self._read.count, need, now)
                await self._clock.sleep(max(delay, _MIN_SLEEP))

    async def _wait_gate(self) -> None:
        while (remaining := self._paused_until - self._clock.now()) > 0:
            await self._clock.sleep(remaining)

    # -- throttling ------------------------------------------------------------------------

    def throttled(self, retry_after: float | None) -> float:
        """Record a 429: close the gate for every caller; return the pause from now, in seconds.

        With `retry_after` the gate stays closed until now + `retry_after` (an already longer
        pause is never shortened). Without it, the pause is an exponential backoff with jitter
        over the consecutive 429 episodes. A 429 that arrives while the gate is already closed
        belongs to the same episode: its request left before the gate closed, so it only extends
        the pause. Every episode closes the gate for at least a hundredth of the window, so the
        answers of one burst are one episode even with `Retry-After: 0`. A new episode less than
        one window after the previous one ended means 429s keep coming: the effective write
        limit is cut (adaptive mode).
        """
        now = self._clock.now()
        self._throttled += 1
        new_episode = now >= self._paused_until
        if new_episode:
            self._pauses += 1
        if self._adaptive:
            self._adapt_down(new_episode)
        # A negative or NaN Retry-After is no instruction at all.
        wait = retry_after if retry_after is not None and retry_after >= 0 else None
        if new_episode:
            pause = max(wait if wait is not None else self._backoff(), self._min_pause)
            self._streak += 1
            runlog.pause(pause, wait)
        else:
            # Same episode: the pause already running covers this answer unless Graph now
            # asks for a longer one.
            pause = wait if wait is not None else 0.0
        until = now + pause
        if until > self._paused_until:
            self._paused_seconds += until - max(self._paused_until, now)
            self._paused_until = until
        if self._limit < self._write.count:
            # A quiet window only starts counting once the pause is over.
            self._quiet_since = self._paused_until
            self._waited = 0
            self._peak = 0
        self._journal_gate(now)
        return max(self._paused_until - now, 0.0)

    def _journal_gate(self, now: float) -> None:
        gate = (self._paused_until, self._limit)
        if self._journal is not None and gate != self._journaled_gate:
            self._journaled_gate = gate
            self._journal.throttled(self._paused_until - now, self._limit)

    def note_success(self, n: int = 1) -> None:
        """Record `n` successful answers; once the gate is open they end the 429 streak."""
        self._successes += n
        if self._clock.now() >= self._paused_until:
            self._streak = 0

    def _backoff(self) -> float:
        # Scale for short windows so scaled-down test budgets stay fast (20 s is Graph's window).
        scale = min(1.0, self._write.seconds / 20.0)
        ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** min(self._streak, 32)) * scale
        # "Equal jitter": a random point in the upper half. Full jitter could draw a pause near
        # zero and send straight back into a throttle that is still on.
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _adapt_down(self, new_episode: bool) -> None:
        """A 429: aim the write limit at what Graph took from us in the last window.

        Called for every 429, after the engine gave back the slots of the refused requests
        (`settle`), so the log holds what Graph admitted from us in the window plus what is
        still in flight; each further 429 of a burst lowers the estimate as its slot goes back.
        That count is the best estimate of what is left for us, whether the app's limit is
        lower than configured or another app takes a share of the tenant's budget: undershooting
        it costs throughput, overshooting costs only re-sent 429s. One episode never cuts below
        half of where it began, so a window thinned out by a pause does not collapse the rate.
        """
        if new_episode:
            self._step = self._base_step
            self._episode_from = self._limit
            self._cautious, self._ok = True, 0
            self._slow.clear()
        observed, _ = self._used(self._clock.now())
        floor = max(1, int(self._episode_from * _DECREASE_FLOOR))
        lowered = max(floor, min(self._limit - 1, observed))
        if lowered < self._limit:
            runlog.rate(lowered, self._limit, "429: aiming at what Graph took in the last window")
            if new_episode or self._limit == self._episode_from:
                self._decreases += 1
            self._limit = lowered
        self._held = self._limit

    def _recover(self, now: float) -> None:
        """Step the write limit back up over quiet windows in which it held the writes back.

        Only a limit that held writes back (the log reached it) since it was set is raised: one
        the rows never reached says nothing about a higher one. After one quiet window at the
        level an episode left, each further one raises the limit by a step that doubles while
        they keep coming (5, 10, 20, 25 % of N): back from a halving in four windows, not
        twenty. A step that meets a 429 is undone by `_adapt_down`; it cost one 429, since the
        writes above the held level start slowly (`reserve_writes`), so probing every window
        is cheap. Windows are counted from the end of the last pause, whenever the limiter is
        next asked (so not aligned with bursts).
        """
        if self._limit >= self._write.count or self._quiet_since is None:
            return
        windows = int((now - self._quiet_since) // self._write_window)
        if windows <= 0:
            return
        self._quiet_since += windows * self._write_window
        if self._peak < self._limit:
            return  # the limit held nothing back since it was set: no reason to raise it
        self._held = self._limit  # a whole window at this limit without a 429
        if self._waited < 1:
            self._waited += windows
            return
        previous = self._limit
        self._limit = min(self._write.count, self._limit + self._step)
        self._step = min(self._step * 2, self._max_step)
        self._peak = 0
        self._ok = 0  # the writes above the held limit start slowly
        runlog.rate(self._limit, previous, "a quiet window at the limit")

    # -- across processes ------------------------------------------------------------------

    def attach(self, journal: Journal | None) -> None:
        """Report every grant, refund and pause to `journal` from now on (None: stop)."""
        self._journal = journal
        self._journaled_gate = None

    def detach(self, journal: Journal) -> None:
        """Stop reporting to `journal` if it is still the one attached.

        A closing ledger calls it: the limiter may go on to serve the next run of a `job run`,
        which attaches its own ledger's journal.
        """
        if self._journal is journal:
            self._journal = None

    @property
    def horizon(self) -> float:
        """How far back a send still matters to some budget (the longest window), in seconds."""
        return max(self._write_window, self._read_window)

    def carry_over(self, carried: Carried) -> int:
        """Start from what an earlier process sent and paused; return its writes still counted.

        Meant for a new limiter (merging into one that already granted is safe too: the logs
        stay in time order). Each of `carried.sends` goes into the logs at
        `now - ago`, as if this limiter had granted it, so the budgets count it until it leaves
        the window; sends already out of every window are ignored. A negative age (the wall clock
        was set back meanwhile) counts as "just now": waiting a little too long is the safe way
        to be wrong. A pause still running closes the gate until it ends, and a write limit the
        earlier process had lowered stays lowered, recovering from that pause's end as it would
        have there. None of it counts in `stats`: those are this process's own.
        """
        now = self._clock.now()
        writes: list[float] = []
        anys: list[float] = []
        for sent in carried.sends:
            at = now - max(sent.ago, 0.0)
            if at + self._read_window > now:
                anys.extend(itertools.repeat(at, max(sent.writes, 0) + max(sent.reads, 0)))
            if at + self._write_window > now:
                writes.extend(itertools.repeat(at, max(sent.writes, 0)))
        # Sorted merges: the logs must stay oldest first for pruning and delays.
        self._write_log.sent = deque(sorted([*self._write_log.sent, *writes]))
        self._any_log.sent = deque(sorted([*self._any_log.sent, *anys]))
        if carried.pause_ends_in is not None:
            ends = now + carried.pause_ends_in
            self._paused_until = max(self._paused_until, ends)
            if carried.write_limit is not None and 1 <= carried.write_limit < self._limit:
                self._limit = self._held = carried.write_limit
                self._quiet_since = ends
        return len(writes)

    def window(self) -> Carried:
        """What this limiter's windows hold now, in the form `carry_over` takes.

        Sends that left the write window but not the any-request one come back as reads: for
        the budgets that is what they still are. Writes in flight come back at their send time,
        answered ones at their answer's (the process that carries them over adds the margin).
        """
        now = self._clock.now()
        self._used(now)
        unanswered = self._unanswered()
        writes = Counter(self._write_log.sent) + Counter(self._write_log.answered) + unanswered
        anys = Counter(self._any_log.sent) + Counter(self._any_log.answered) + unanswered
        sends = tuple(
            Sent(now - t, writes[t], max(anys[t] - writes[t], 0))
            for t in sorted(writes.keys() | anys.keys())
        )
        paused = math.isfinite(self._paused_until)
        return Carried(
            sends=sends,
            pause_ends_in=self._paused_until - now if paused else None,
            write_limit=self._limit if paused else None,
        )

    # -- introspection ---------------------------------------------------------------------

    @property
    def write_rate(self) -> Rate:
        """The configured write budget (N per SECONDS), before any adaptive cut."""
        return self._write

    @property
    def effective_write_limit(self) -> int:
        """The write limit in force now (the configured N unless 429s lowered it)."""
        self._recover(self._clock.now())
        return self._limit

    @property
    def holding(self) -> str | None:
        """What holds the writes back now: `pause` (a 429's gate), `window`, or None.

        `window`: a writer sleeps until the write window has room (the budget is spent, as it
        is most of the time at Graph's pace). Only reads attributes, so a progress display may
        call it from its own refresh thread.
        """
        if self._paused_until > self._clock.now():
            return "pause"
        return "window" if self._window_wait else None

    @property
    def paused_for(self) -> float:
        """Seconds until the pause gate opens (0 when it is open)."""
        return max(self._paused_until - self._clock.now(), 0.0)

    @property
    def stats(self) -> dict[str, int | float]:
        """Counters for the summary and the progress bar."""
        return {
            "throttled": self._throttled,
            "pauses": self._pauses,
            "paused_seconds": round(self._paused_seconds, 3),
            "decreases": self._decreases,
            "write_limit": self.effective_write_limit,
            "configured_write_limit": self._write.count,
            "writes": self._writes,
            "reads": self._reads,
            "successes": self._successes,
        }


def _check_counts(want: int, at_least: int) -> tuple[int, int]:
    if want < 1:
        raise ValueError(f"want must be ≥ 1, got {want}")
    if at_least < 1:
        raise ValueError(f"at_least must be ≥ 1, got {at_least}")
    return want, min(at_least, want)


def _prune(log: deque[float], window: float, now: float) -> None:
    """Forget sends that left the window (`t + window <= now`, the same test as `_delay`)."""
    while log and log[0] + window <= now:
        log.popleft()


class _Log:
    """One budget's sliding log, in two parts kept in time order.

    `sent`: send times, each counted a margin-widened window (`wide`); `answered`: the answer
    times of writes Graph counted (`Limiter.settle`), each counted a plain window. Writes in
    flight, or whose answers were lost, are in neither: the limiter keeps them by grant time
    (`_pending`, `_lost`) and counts them against both budgets from their send times.
    """

    def __init__(self, seconds: float, margin: float) -> None:
        self.plain = seconds
        self.wide = seconds * (1.0 + margin)
        self.sent: deque[float] = deque()
        self.answered: deque[float] = deque()

    def __len__(self) -> int:
        return len(self.sent) + len(self.answered)

    def prune(self, now: float) -> None:
        """Forget what left its window."""
        _prune(self.sent, self.wide, now)
        _prune(self.answered, self.plain, now)

    def delay(
        self, unanswered: Mapping[float, int], used: int, limit: int, need: int, now: float
    ) -> float:
        """Seconds until `need` slots are free, `used` being in use (logged and `unanswered`)."""
        expire = used - limit + need  # how many items must leave the window first
        if expire <= 0:
            return 0.0
        in_flight = (at + self.wide for at in sorted(unanswered) for _ in range(unanswered[at]))
        expiries = heapq.merge(
            (t + self.wide for t in self.sent), (t + self.plain for t in self.answered), in_flight
        )
        nth = next(itertools.islice(expiries, expire - 1, None), now)
        return nth - now


def _take(counts: dict[float, int], at: float, n: int) -> int:
    """Take up to `n` from `counts[at]` (dropping it at 0); return how many were there."""
    have = counts.get(at, 0)
    n = min(max(n, 0), have)
    if n == have:
        counts.pop(at, None)
    else:
        counts[at] = have - n
    return n
