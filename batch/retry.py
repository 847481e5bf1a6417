"""Retry policy for Graph answers: one classification, one wait, used by every path.

`classify(error, attempt)` decides what a failed answer means, once for the whole tool:

- `Throttled(retry_after)` — a 429: the *app's* budget is spent. The caller hands it to
  `Limiter.throttled`, which closes the shared pause gate; the request goes again through the
  gate (its own `acquire_*` call, and every other sender's, then waits there).
- `Retry(delay, lost)` — a 503, 504 or no answer: nothing about the budget. It delays only its
  own request, by its Retry-After or an exponential backoff with jitter (`backoff`). `lost`: the
  answer was lost (504, no answer), so a write may have landed (the engine reads it back).
- `Final()` — anything else (400, 403, 404, ...): not retried.

A caller that does one thing at a time wraps a request like this (list pages, `export`,
`whoami`)::

    async for attempt in graph_retrying(limiter, max_retries=8, clock=clock):
        with attempt:
            await limiter.acquire_reads(1)
            page = await client.list_page(url)

There tenacity's `wait` is pure (`retry_wait`: the delay `classify` chose, 0 for a 429) and the
side effect — closing the limiter's gate for a 429 — happens in tenacity's `after` hook, which
runs after every retryable failure (the last one too: other senders must still wait).

Decision (issue 14): the engine's writes do not loop here. tenacity sleeps inside its caller,
and a sender that sleeps through a 503's Retry-After leaves one of `--concurrency` idle; the
engine re-queues the row with the delay `classify` chose instead (its `WorkQueue` holds the row
until then) and the sender goes on with the next one. Both paths share this module's policy.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from tenacity import RetryCallState
from tenacity.wait import wait_base

from batch.errors import GraphError
from batch.limiter import Clock, Limiter

__all__ = [
    "Answer",
    "Final",
    "Retry",
    "Throttled",
    "backoff",
    "classify",
    "close_gate_on_429",
    "graph_retrying",
    "is_transient",
    "retry_wait",
]

TRANSIENT_STATUSES = frozenset({0, 429, 503, 504})
# Statuses after which a request's answer is lost, not refused: a write may have landed.
LOST_STATUSES = frozenset({0, 504})
# The backoff: base·2^(n-1) capped, plus up to `base` of jitter, capped again.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Send this request again after `delay` seconds; the budget is not concerned.

    `lost`: Graph's answer was lost (504, no answer), so a write may have been carried out.
    """

    delay: float
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Throttled:
    """A 429: close the pause gate for every sender (`retry_after` None: Graph did not say)."""

    retry_after: float | None


@dataclass(frozen=True, slots=True)
class Final:
    """Not worth sending again: the answer stands."""


Answer = Retry | Throttled | Final


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away by itself: a `GraphError` with status 0, 429, 503 or 504."""
    return isinstance(exc, GraphError) and exc.status in TRANSIENT_STATUSES


def backoff(
    attempt: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    jitter: Callable[[], float] = random.random,
) -> float:
    """The backoff after `attempt` failed attempts: base·2^(attempt-1), capped, plus jitter.

    The same numbers as tenacity's `wait_exponential(multiplier=base, max=cap) +
    wait_random(0, base)`, capped at `cap`; `jitter` returns a number in [0, 1).
    """
    try:
        exponential = min(base * 2.0 ** (max(attempt, 1) - 1), cap)
    except OverflowError:
        exponential = cap
    return min(max(exponential, 0.0) + base * jitter(), cap)


def classify(
    error: GraphError, attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> Answer:
    """What a failed answer means after `attempt` attempts (see the module docstring)."""
    if error.status == 429:
        return Throttled(error.retry_after)
    if error.status not in TRANSIENT_STATUSES:
        return Final()
    delay = (
        error.retry_after if error.retry_after is not None else backoff(attempt, base=base, cap=cap)
    )
    return Retry(delay, lost=error.status in LOST_STATUSES)


def _graph_error(retry_state: RetryCallState) -> GraphError | None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None and outcome.failed else None
    return exc if isinstance(exc, GraphError) else None


class _GraphWait(wait_base):
    """tenacity wait, pure: a 429 → 0 (the gate waits); 503/504/0 → `classify`'s delay."""

    def __init__(self, *, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        error = _graph_error(retry_state)
        attempt = retry_state.attempt_number
        if error is None:
            return backoff(attempt, base=self._base, cap=self._cap)
        answer = classify(error, attempt, base=self._base, cap=self._cap)
        return answer.delay if isinstance(answer, Retry) else 0.0


def retry_wait(*, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> wait_base:
    """The pure wait strategy for Graph retries (see the module docstring); composable with `+`."""
    if not 0 <= base <= cap:
        raise ValueError(f"need 0 ≤ base ≤ cap, got base={base!r}, cap={cap!r}")
    return _GraphWait(base=base, cap=cap)


def close_gate_on_429(limiter: Limiter) -> Callable[[RetryCallState], None]:
    """tenacity `after` hook: a 429 closes the limiter's gate (for every sender)."""

    def after(retry_state: RetryCallState) -> None:
        error = _graph_error(retry_state)
        if error is not None:
            answer = classify(error, retry_state.attempt_number)
            if isinstance(answer, Throttled):
                limiter.throttled(answer.retry_after)

    return after


def graph_retrying(limiter: Limiter, *, max_retries: int, clock: Clock) -> tenacity.AsyncRetrying:
    """An `AsyncRetrying` that retries transient Graph errors up to `max_retries` times.

    `1 + max_retries` attempts at most; the last `GraphError` is re-raised as it is (not wrapped
    in `RetryError`); sleeping goes through `clock`, so tests with `FakeClock` take no time.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be ≥ 0, got {max_retries}")
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        retry=tenacity.retry_if_exception(is_transient),
        wait=retry_wait(),
        after=close_gate_on_429(limiter),
        sleep=clock.sleep,
        reraise=True,
    )
