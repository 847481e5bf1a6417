"""The paged list walker (`batch.listing`) on `FakeClock` + `httpx.MockTransport`.

Paging through next links of any collection, the read budget, 429s with and without
Retry-After mid-walk (the limiter's gate), 503s (this page only), lost connections, the final
error and what it means for a command, and a clean stop between pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from batch.errors import AuthError, GraphError, RunAborted
from batch.graph import EVENTS_PATH, PAGE_SIZE, GraphClient
from batch.limiter import DEFAULT_READ_RATE, Limiter
from batch.listing import AUTOPILOT_EVENTS, Collection, ListWalker, Page
from batch.model import Rate
from batch.runlog import EVENTS_LOGGER
from batch.testing import FakeClock

pytestmark = pytest.mark.anyio

ROOT = "https://graph.example.test"
TOKEN = "test-token-0123456789"
IDENTITIES = Collection(
    path="/deviceManagement/windowsAutopilotDeviceIdentities",
    items="Autopilot device identities",
    listing="device identity list",
    permission="DeviceManagementServiceConfig.Read.All",
)


class Tokens:
    async def token(self, *, force_refresh: bool = False) -> str:
        return TOKEN


def answer(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    headers["request-id"] = f"req-{status}"
    body = {"error": {"code": f"Code{status}", "message": f"status {status}"}}
    return httpx.Response(status, json=body, headers=headers)


class Tenant:
    """A MockTransport Graph serving `items` of `path` in pages of `size` through next links.

    `faults` maps a request's index (0-based, retries count) to the answer it gets instead, or
    to an exception the transport raises (no answer). Every request's virtual send time is kept.
    """

    def __init__(
        self,
        clock: FakeClock,
        items: int,
        *,
        path: str = EVENTS_PATH,
        size: int = 2,
        faults: dict[int, httpx.Response | Exception] | None = None,
    ) -> None:
        self.clock = clock
        self.items = [{"id": f"e{n}", "osVersion": str(n)} for n in range(items)]
        self.path = path
        self.size = size
        self.faults = faults or {}
        self.requests: list[httpx.Request] = []
        self.sent_at: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        index = len(self.requests)
        self.requests.append(request)
        self.sent_at.append(self.clock.now())
        fault = self.faults.get(index)
        if isinstance(fault, Exception):
            raise fault
        if fault is not None:
            return fault
        assert request.url.path == f"/beta{self.path}"
        query = parse_qs(urlsplit(str(request.url)).query)
        offset = int(query.get("skip", ["0"])[0])
        body: dict[str, Any] = {"value": self.items[offset : offset + self.size]}
        if offset + self.size < len(self.items):
            body["@odata.nextLink"] = f"{ROOT}/beta{self.path}?skip={offset + self.size}"
        return httpx.Response(200, json=body)


async def walk_all(
    tenant: Tenant,
    limiter: Limiter,
    *,
    collection: Collection = AUTOPILOT_EVENTS,
    max_retries: int = 8,
    stopping: Callable[[], bool] | None = None,
    select: tuple[str, ...] | None = ("id", "osVersion"),
) -> tuple[list[Page], ListWalker]:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(tenant)) as http,
        GraphClient(ROOT, Tokens(), http=http) as client,
    ):
        walker = ListWalker(
            client,
            limiter,
            collection,
            select=select,
            max_retries=max_retries,
            clock=tenant.clock,
        )
        pages = [page async for page in walker.walk(stopping)]
    return pages, walker


def reads_limiter(clock: FakeClock, read: Rate = DEFAULT_READ_RATE) -> Limiter:
    return Limiter(write=read, read=read, clock=clock)


async def test_walks_every_page_of_the_given_collection_through_next_links() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 5, path=IDENTITIES.path)
    pages, walker = await walk_all(tenant, reads_limiter(clock), collection=IDENTITIES)
    assert [[item["id"] for item in page] for page in pages] == [
        ["e0", "e1"],
        ["e2", "e3"],
        ["e4"],
    ]
    first = parse_qs(urlsplit(str(tenant.requests[0].url)).query)
    assert first["$top"] == [str(PAGE_SIZE)] and first["$select"] == ["id,osVersion"]
    # Next links are followed as given: no $top/$select added to them.
    assert all("%24top" not in str(r.url) for r in tenant.requests[1:])
    assert walker.done and not walker.stopped
    assert (walker.requests, walker.answers, walker.pages) == (3, 3, 3)
    assert (walker.throttled, walker.retries) == (0, 0)
    assert clock.now() == 0  # nothing to wait for within the budget


async def test_an_empty_collection_is_one_page() -> None:
    clock = FakeClock()
    pages, walker = await walk_all(Tenant(clock, 0), reads_limiter(clock))
    assert pages == [[]] and walker.requests == 1 and walker.done


async def test_each_page_takes_a_slot_of_the_read_budget() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 10)  # 5 pages
    pages, walker = await walk_all(tenant, reads_limiter(clock, Rate(2, 10)))
    assert len(pages) == 5 and walker.requests == 5
    # No 10 s window ever holds more than 2 list requests, and the walk did wait for that.
    sent = tenant.sent_at
    assert all(sent[i + 2] - sent[i] >= 10 for i in range(len(sent) - 2))
    assert sent[4] >= 20


async def test_a_429_with_retry_after_mid_walk_closes_the_gate_for_that_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 6, faults={1: answer(429, "7")})
    limiter = reads_limiter(clock)
    with caplog.at_level(logging.INFO, logger=EVENTS_LOGGER):
        pages, walker = await walk_all(tenant, limiter)
    assert sum(len(p) for p in pages) == 6 and walker.done
    assert (walker.requests, walker.answers, walker.pages) == (4, 4, 3)
    assert walker.throttled == 1 and walker.retries == 1
    assert walker.retry_reasons == {"429": 1}
    # The retry waited out the Retry-After at the limiter's gate (which every sender shares).
    assert tenant.sent_at[2] - tenant.sent_at[1] >= 7
    assert limiter.stats["pauses"] == 1
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("throttled") == 1 and events.count("retry") == 1
    kinds = {getattr(r, "kind", None) for r in caplog.records if hasattr(r, "event")} - {None}
    assert kinds == {"list"}


async def test_a_429_without_retry_after_backs_off_at_the_gate() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 4, faults={1: answer(429), 2: answer(429)})
    limiter = reads_limiter(clock)
    pages, walker = await walk_all(tenant, limiter)
    assert sum(len(p) for p in pages) == 4
    assert walker.throttled == 2 and walker.retries == 2
    # Each retry waited for a backoff (at least the gate's minimum), none left during it.
    waits = [b - a for a, b in zip(tenant.sent_at[1:], tenant.sent_at[2:], strict=False)]
    assert all(w > 0 for w in waits)
    assert limiter.stats["pauses"] == 2 and limiter.stats["throttled"] == 2


async def test_a_503_delays_only_its_page_and_leaves_the_gate_open() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 4, faults={1: answer(503, "3")})
    limiter = reads_limiter(clock)
    pages, walker = await walk_all(tenant, limiter)
    assert sum(len(p) for p in pages) == 4
    assert walker.throttled == 0 and walker.retry_reasons == {"503": 1}
    assert tenant.sent_at[2] - tenant.sent_at[1] >= 3  # its Retry-After
    assert limiter.stats["pauses"] == 0 and limiter.stats["throttled"] == 0


async def test_a_lost_connection_is_retried_and_is_no_answer() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 2, faults={0: httpx.ConnectError("refused")})
    pages, walker = await walk_all(tenant, reads_limiter(clock))
    assert pages == [tenant.items]
    assert (walker.requests, walker.answers) == (2, 1)
    assert walker.retry_reasons == {"connection": 1}


async def test_spent_retries_raise_the_last_error_and_failure_names_the_collection() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 4, faults={n: answer(503, "1") for n in range(1, 10)})
    with pytest.raises(GraphError) as caught:
        await walk_all(tenant, reads_limiter(clock), max_retries=2)
    assert caught.value.status == 503
    assert len(tenant.requests) == 1 + 3  # the first page, then the second one 3 times
    async with GraphClient(ROOT, Tokens()) as client:
        walker = ListWalker(client, reads_limiter(clock), IDENTITIES, max_retries=2)
        failure = walker.failure(caught.value)
    assert isinstance(failure, RunAborted)
    assert str(failure) == (
        "Graph did not serve the device identity list after 2 retries: "
        "503 Code503: status 503 (request-id req-503)"
    )


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        pytest.param(
            403,
            AuthError,
            "Graph refused to list the autopilot events: 403 Code403: status 403 "
            "(request-id req-403); the app needs DeviceManagementManagedDevices.Read.All "
            "(or ReadWrite.All) with admin consent",
            id="403",
        ),
        pytest.param(
            400,
            RunAborted,
            "listing the autopilot events failed: 400 Code400: status 400 (request-id req-400)",
            id="400",
        ),
    ],
)
async def test_a_final_answer_is_not_retried(
    status: int, kind: type[Exception], message: str
) -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 4, faults={0: answer(status)})
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(tenant)) as http,
        GraphClient(ROOT, Tokens(), http=http) as client,
    ):
        walker = ListWalker(client, reads_limiter(clock), AUTOPILOT_EVENTS, clock=clock)
        with pytest.raises(GraphError) as caught:
            await walker.next_page()
    assert len(tenant.requests) == 1 and walker.retries == 0 and walker.answers == 1
    failure = walker.failure(caught.value)
    assert type(failure) is kind and str(failure) == message


async def test_stopping_ends_the_walk_between_pages() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 10)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(tenant)) as http,
        GraphClient(ROOT, Tokens(), http=http) as client,
    ):
        walker = ListWalker(client, reads_limiter(clock), AUTOPILOT_EVENTS, clock=clock)
        # Asked before each page: stop once two were read (as the engine's stop control would).
        seen = [page async for page in walker.walk(lambda: walker.pages >= 2)]
    assert len(seen) == 2 and len(tenant.requests) == 2
    assert walker.stopped and not walker.done


async def test_stopping_before_the_first_page_sends_nothing() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 4)
    pages, walker = await walk_all(tenant, reads_limiter(clock), stopping=lambda: True)
    assert pages == [] and tenant.requests == [] and walker.stopped


async def test_next_page_pulls_one_page_at_a_time() -> None:
    clock = FakeClock()
    tenant = Tenant(clock, 3)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(tenant)) as http,
        GraphClient(ROOT, Tokens(), http=http) as client,
    ):
        walker = ListWalker(client, reads_limiter(clock), AUTOPILOT_EVENTS, clock=clock)
        assert not walker.done
        assert [i["id"] for i in await walker.next_page()] == ["e0", "e1"]
        assert len(tenant.requests) == 1 and not walker.done
        assert [i["id"] for i in await walker.next_page()] == ["e2"]
        assert walker.done
        assert await walker.next_page() == []  # nothing more is sent
    assert len(tenant.requests) == 2
