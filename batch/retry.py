"""Retry policy for Graph requests (tenacity), in step with the limiter.

A 429 says the *app's* budget is spent: the wait hands it to `Limiter.throttled`, which closes
the shared pause gate, and returns 0 — the retry's own `acquire_*` call (and every other
sender's) then waits at the gate. A 503, 504 or lost connection says nothing about the budget:
it delays only its own request, by its Retry-After or an exponential backoff with jitter.
Anything else (400, 403, 404, ...) is final and not retried.

A caller that does one thing at a time wraps a request like this (list pages, `export`,
`whoami`)::

    async for attempt in graph_retrying(limiter, max_retries=8, clock=clock):
        with attempt:
            await limiter.acquire_reads(1)
            page = await client.list_page(url)

Decision (issue 14): the engine's writes do not loop here. tenacity sleeps inside its caller,
and a sender that sleeps through a 503's Retry-After leaves one of `--concurrency` idle; the
engine re-queues the row with `transient_delay` instead (its `WorkQueue` holds the row until
then) and the sender goes on with the next one. Both paths share this module's policy.
"""

from __future__ import annotations

import tenacity
from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_exponential, wait_random

from batch.errors import GraphError
from batch.limiter import Clock, Limiter

__all__ = ["graph_retrying", "is_transient", "retry_wait", "transient_delay"]

TRANSIENT_STATUSES = frozenset({0, 429, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away by itself: a `GraphError` with status 0, 429, 503 or 504."""
    return isinstance(exc, GraphError) and exc.status in TRANSIENT_STATUSES


class _GraphWait(wait_base):
    """tenacity wait: 429 → the limiter's gate; 503/504/0 → Retry-After or backoff."""

    def __init__(self, limiter: Limiter, *, base: float, cap: float) -> None:
        self._limiter = limiter
        self._cap = cap
        # tenacity's own pieces: base·2^(n-1) capped, plus up to `base` of jitter.
        self._backoff = wait_exponential(multiplier=base, max=cap) + wait_random(0, base)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, GraphError):
            if exc.status == 429:
                # The gate delays this retry and every other sender alike.
                self._limiter.throttled(exc.retry_after)
                return 0.0
            if exc.retry_after is not None:
                return exc.retry_after
        return min(float(self._backoff(retry_state)), self._cap)


def retry_wait(limiter: Limiter, *, base: float = 0.5, cap: float = 30.0) -> wait_base:
    """The wait strategy for Graph retries (see the module docstring); composable with `+`."""
    if not 0 <= base <= cap:
        raise ValueError(f"need 0 ≤ base ≤ cap, got base={base!r}, cap={cap!r}")
    return _GraphWait(limiter, base=base, cap=cap)


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
        wait=retry_wait(limiter),
        sleep=clock.sleep,
        reraise=True,
    )


def transient_delay(limiter: Limiter, error: GraphError, attempt: int) -> float:
    """The wait `retry_wait` chooses after `attempt` failed attempts ending in `error`.

    For callers that re-queue a request instead of looping (the engine's senders re-send a
    failed row later, from the queue), so both paths share one policy.
    """
    state = RetryCallState(tenacity.AsyncRetrying(), None, (), {})
    state.attempt_number = max(attempt, 1)
    state.set_exception((type(error), error, error.__traceback__))
    return float(retry_wait(limiter)(state))
