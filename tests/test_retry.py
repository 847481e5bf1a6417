"""Retry policy: transient errors retried on a fake clock, 429s through the limiter's gate."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
import tenacity
from tenacity import RetryCallState

from batch.errors import AuthError, GraphError, PermissionDenied
from batch.graph import GraphClient, GraphResponse
from batch.limiter import Limiter
from batch.model import Rate
from batch.retry import (
    Answer,
    Final,
    Retry,
    Throttled,
    backoff,
    classify,
    close_gate_on_429,
    graph_retrying,
    is_transient,
    retry_wait,
)
from batch.testing import FakeClock

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789"
Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    async def token(self, *, force_refresh: bool = False) -> str:
        return TOKEN


class Server:
    """A scripted Graph: answers in order (the last one repeats), recording send times."""

    def __init__(self, clock: FakeClock, *answers: httpx.Response | Exception) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.sent_at: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent_at.append(self.clock.now())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def error(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"code": f"Code{status}", "message": f"status {status}"}}
    return httpx.Response(status, json=body, headers=headers)


async def patch_with_retries(
    server: Server, limiter: Limiter, clock: FakeClock, *, max_retries: int = 8
) -> tuple[GraphResponse, int]:
    """The engine's loop for one PATCH, verbatim; returns the answer and the attempt count."""
    attempts = 0
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(server)) as http,
        GraphClient("https://graph.example.test", Tokens(), http=http) as client,
    ):
        async for attempt in graph_retrying(limiter, max_retries=max_retries, clock=clock):
            with attempt:
                attempts += 1
                await limiter.acquire_writes(1)
                resp = await client.patch_event("eid", {"osVersion": "10"})
    return resp, attempts


async def test_503_then_success() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(503), httpx.Response(204))
    resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (204, 2)
    # Backoff for the first retry: 0.5 s plus up to 0.5 s of jitter.
    assert 0.5 <= server.sent_at[1] <= 1.0
    assert limiter.stats["throttled"] == 0  # a 503 says nothing about the app's budget
    assert limiter.paused_for == 0


async def test_503_retry_after_delays_only_that_request() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(503, "7"), error(504, "1.5"), httpx.Response(204))
    others: list[float] = []

    async def other_sender() -> None:
        await clock.sleep(1.0)
        await limiter.acquire_writes(1)
        others.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_sender)
        resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (204, 3)
    assert server.sent_at == [0.0, 7.0, 8.5]
    assert others == [1.0]  # not held up by the 503


async def test_429_closes_the_gate_for_every_sender() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(429, "3"), httpx.Response(204))
    others: list[float] = []

    async def other_sender() -> None:
        await clock.sleep(1.0)  # starts inside the pause
        await limiter.acquire_writes(1)
        others.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_sender)
        resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (204, 2)
    assert server.sent_at == [0.0, 3.0]
    assert others == [3.0]
    assert limiter.stats["throttled"] == 1


async def test_429_without_retry_after_backs_off_through_the_limiter() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(429), error(429), httpx.Response(204))
    resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (204, 3)
    first_pause = server.sent_at[1] - server.sent_at[0]
    second_pause = server.sent_at[2] - server.sent_at[1]
    assert 0.5 <= first_pause <= 1.0
    assert 1.0 <= second_pause <= 2.0


async def test_stops_after_max_retries_with_the_last_error() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(503, "1"), error(504, "1"))
    with pytest.raises(GraphError) as caught:
        await patch_with_retries(server, limiter, clock, max_retries=3)
    assert caught.value.status == 504  # the last one, not a tenacity RetryError
    assert len(server.sent_at) == 4  # 1 + max_retries


async def test_zero_retries_means_one_attempt() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(503))
    with pytest.raises(GraphError):
        await patch_with_retries(server, limiter, clock, max_retries=0)
    assert len(server.sent_at) == 1


async def test_connection_errors_are_retried() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), error(200))
    resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (200, 3)


@pytest.mark.parametrize("status", [400, 403, 404, 409])
async def test_final_errors_are_not_retried(status: int) -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(status), httpx.Response(204))
    with pytest.raises(GraphError) as caught:
        await patch_with_retries(server, limiter, clock)
    assert caught.value.status == status
    assert len(server.sent_at) == 1
    assert clock.now() == 0.0


async def test_auth_errors_are_not_retried() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(401))
    with pytest.raises(AuthError):
        await patch_with_retries(server, limiter, clock)
    assert len(server.sent_at) == 2  # the request and its one resend with a refreshed token


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(GraphError(0, "ConnectionError", "x"), True, id="0"),
        pytest.param(GraphError(429, "TooManyRequests", "x"), True, id="429"),
        pytest.param(GraphError(503, "ServiceUnavailable", "x"), True, id="503"),
        pytest.param(GraphError(504, "GatewayTimeout", "x"), True, id="504"),
        pytest.param(GraphError(500, "InternalServerError", "x"), False, id="500"),
        pytest.param(GraphError(400, "BadRequest", "x"), False, id="400"),
        pytest.param(AuthError("no"), False, id="auth"),
        pytest.param(TimeoutError(), False, id="not-graph"),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    retrying = tenacity.Retrying()
    state = RetryCallState(retrying, None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_retry_wait_caps_the_backoff_and_composes() -> None:
    wait = retry_wait(base=0.5, cap=30.0)
    assert wait(state_after(GraphError(503, "X", "x"), 20)) == 30.0
    combined = wait + tenacity.wait_fixed(1)
    assert 1.5 <= combined(state_after(GraphError(0, "X", "x"), 1)) <= 2.0


def test_retry_wait_for_429_defers_to_the_gate_and_is_pure() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    state = state_after(GraphError(429, "X", "x", retry_after=4.0), 1)
    assert retry_wait()(state) == 0.0
    assert limiter.paused_for == 0  # the wait has no side effect
    close_gate_on_429(limiter)(state)  # tenacity's `after` hook closes the gate
    assert limiter.paused_for == 4.0


def test_bad_settings_are_refused() -> None:
    limiter = Limiter(write=Rate(100, 20.0), clock=FakeClock())
    with pytest.raises(ValueError):
        retry_wait(base=5.0, cap=1.0)
    with pytest.raises(ValueError):
        graph_retrying(limiter, max_retries=-1, clock=FakeClock())


# -- Intune's Retry-After forms and its 401 for rights (issue 13) -------------------------------


def throttled(retry_after: str, date: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after}
    if date is not None:
        headers["Date"] = date
    body = {"error": {"code": "TooManyRequests", "message": "slow down"}}
    return httpx.Response(429, json=body, headers=headers)


@pytest.mark.parametrize(
    ("answer", "second_send"),
    [
        pytest.param(throttled("2.128"), 2.128, id="decimal"),
        pytest.param(throttled("3,120"), 3.0, id="list-first-number"),
        pytest.param(
            throttled("Wed, 21 Oct 2026 07:28:05 GMT", date="Wed, 21 Oct 2026 07:28:00 GMT"),
            5.0,
            id="http-date-from-the-answer-date",
        ),
    ],
)
async def test_429_retry_after_forms_hold_the_gate_exactly(
    answer: httpx.Response, second_send: float
) -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, answer, httpx.Response(204))
    resp, attempts = await patch_with_retries(server, limiter, clock)
    assert (resp.status, attempts) == (204, 2)
    assert server.sent_at == [0.0, pytest.approx(second_send)]


async def test_503_with_a_list_retry_after_waits_the_first_number() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    server = Server(clock, error(503, "4,30"), httpx.Response(204))
    resp, _ = await patch_with_retries(server, limiter, clock)
    assert resp.status == 204
    assert server.sent_at == [0.0, 4.0]


async def test_a_401_for_rights_is_neither_retried_nor_resent() -> None:
    clock = FakeClock()
    limiter = Limiter(write=Rate(100, 20.0), clock=clock)
    document = json.dumps(
        {
            "_version": 3,
            "Message": "An error has occurred - Operation ID (for customer support): 0 - "
            "Activity ID: a-1 - Url: https://fef.example/x",
        }
    )
    wrapper = json.dumps({"ErrorCode": "Forbidden", "Message": document})
    denied = httpx.Response(401, json={"error": {"code": "UnknownError", "message": wrapper}})
    server = Server(clock, denied, httpx.Response(204))
    with pytest.raises(PermissionDenied):
        await patch_with_retries(server, limiter, clock)
    assert len(server.sent_at) == 1  # a token 401 is resent once; this one is not
    assert clock.now() == 0.0


# -- one classification of Graph answers (issue 14) ----------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(GraphError(429, "X", "x", retry_after=4.0), Throttled(4.0), id="429"),
        pytest.param(GraphError(429, "X", "x"), Throttled(None), id="429-no-retry-after"),
        pytest.param(GraphError(503, "X", "x", retry_after=7.0), Retry(7.0), id="503"),
        pytest.param(GraphError(504, "X", "x", retry_after=2.0), Retry(2.0, lost=True), id="504"),
        pytest.param(GraphError(0, "X", "x", retry_after=1.0), Retry(1.0, lost=True), id="none"),
        pytest.param(GraphError(400, "X", "x"), Final(), id="400"),
        pytest.param(GraphError(401, "X", "x"), Final(), id="401"),
        pytest.param(GraphError(404, "X", "x", retry_after=3.0), Final(), id="404"),
        pytest.param(GraphError(500, "X", "x"), Final(), id="500"),
    ],
)
def test_classify_each_kind_of_answer(error: GraphError, expected: Answer) -> None:
    assert classify(error, 1) == expected


def test_classify_backs_off_without_retry_after() -> None:
    answer = classify(GraphError(503, "X", "x"), 3)
    assert isinstance(answer, Retry) and not answer.lost
    assert 2.0 <= answer.delay <= 2.5  # 0.5 · 2² plus up to 0.5 of jitter
    lost = classify(GraphError(504, "X", "x"), 1)
    assert isinstance(lost, Retry) and lost.lost and 0.5 <= lost.delay <= 1.0


@pytest.mark.parametrize("attempt", [1, 2, 5, 7, 200])
@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_backoff_is_tenacitys_exponential_plus_jitter_capped(attempt: int, jitter: float) -> None:
    state = state_after(GraphError(503, "X", "x"), attempt)
    exponential = float(tenacity.wait_exponential(multiplier=0.5, max=30.0)(state))
    assert backoff(attempt, jitter=lambda: jitter) == min(exponential + 0.5 * jitter, 30.0)


def test_retry_wait_is_classifys_delay() -> None:
    assert retry_wait()(state_after(GraphError(503, "X", "x", retry_after=6.0), 1)) == 6.0
    assert retry_wait()(state_after(GraphError(504, "X", "x", retry_after=2.5), 4)) == 2.5
