"""Graph requests built from a resource's description (issue 16), over httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from batch.errors import GraphError
from batch.graph import (
    BatchRequest,
    GraphClient,
    batch_item,
    entity_path,
    event_path,
    write_request,
)
from batch.model import JSON, Update
from batch.planner import batch_requests, patch_url, write_url
from batch.resources import DEVICES, EVENTS

pytestmark = pytest.mark.anyio

ROOT = "https://graph.example.test"
DEVICES_URL = f"{ROOT}/beta/deviceManagement/windowsAutopilotDeviceIdentities"
DEVICE_ID = "7f2b61d4-5c1e-4b9a-9d3e-0c1f2a3b4c5d"

Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    async def token(self, *, force_refresh: bool = False) -> str:
        return "a-test-token-long-enough"


@asynccontextmanager
async def graph(handler: Handler) -> AsyncIterator[GraphClient]:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        GraphClient(ROOT, Tokens(), http=http) as client,
    ):
        yield client


# --- pure request building -------------------------------------------------------------------


def test_device_write_is_a_post_to_the_action() -> None:
    request = write_request(DEVICES, DEVICE_ID, {"groupTag": "Sales"})
    assert request.method == "POST"
    assert request.path == (
        f"/deviceManagement/windowsAutopilotDeviceIdentities/{DEVICE_ID}/updateDeviceProperties"
    )
    assert request.body == {"groupTag": "Sales"}
    assert request.headers == {"Content-Type": "application/json"}


def test_event_write_is_a_patch_of_the_entity() -> None:
    request = write_request(EVENTS, "a/b", {"osVersion": "10"})
    assert (request.method, request.path) == ("PATCH", event_path("a/b"))
    assert request.path == "/deviceManagement/autopilotEvents/a%2Fb"


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_path_steps_are_never_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a device id"):
        entity_path(DEVICES, bad)
    with pytest.raises(ValueError, match="is not an event id"):
        event_path(bad)


def test_batch_items_carry_content_type_each() -> None:
    item = batch_item(DEVICES, "3", DEVICE_ID, {"userPrincipalName": ""})
    assert item.wire() == {
        "id": "3",
        "method": "POST",
        "url": f"/deviceManagement/windowsAutopilotDeviceIdentities/{DEVICE_ID}"
        "/updateDeviceProperties",
        "headers": {"Content-Type": "application/json"},
        "body": {"userPrincipalName": ""},
    }
    # A read item has no body, so no Content-Type either.
    assert BatchRequest("4", "get", "/x").wire() == {"id": "4", "method": "GET", "url": "/x"}


# --- sent through the client ---------------------------------------------------------------------


async def test_client_write_posts_the_action_and_accepts_204() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with graph(handler) as client:
        answer = await client.write(DEVICES, DEVICE_ID, {"groupTag": "Kiosk", "displayName": ""})
    assert answer.status == 204 and answer.body is None
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{DEVICES_URL}/{DEVICE_ID}/updateDeviceProperties"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"groupTag": "Kiosk", "displayName": ""}


async def test_client_batch_of_device_writes_has_post_items_with_content_type() -> None:
    envelopes: list[JSON] = []

    def handler(request: httpx.Request) -> httpx.Response:
        envelopes.append(json.loads(request.content))
        answers = [{"id": str(i), "status": 204, "headers": {}} for i in (1, 2)]
        return httpx.Response(200, json={"responses": answers})

    items = [batch_item(DEVICES, str(i), f"dev-{i}", {"groupTag": f"T{i}"}) for i in (1, 2)]
    async with graph(handler) as client:
        _, results = await client.batch(items)
    assert {k: r.status for k, r in results.items()} == {"1": 204, "2": 204}
    (envelope,) = envelopes
    assert isinstance(envelope, dict)
    for sent in envelope["requests"]:  # type: ignore[union-attr]
        assert isinstance(sent, dict)
        assert sent["method"] == "POST"
        assert str(sent["url"]).endswith("/updateDeviceProperties")
        assert sent["headers"] == {"Content-Type": "application/json"}


async def test_no_select_is_ever_sent_for_devices() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("Identities"):
            return httpx.Response(200, json={"value": [{"id": DEVICE_ID}]})
        return httpx.Response(200, json={"id": DEVICE_ID})

    async with graph(handler) as client:
        items, next_link = await client.list_page(
            resource=DEVICES, top=50, select=("id", "serialNumber")
        )
        await client.get(DEVICES, DEVICE_ID, select=("groupTag",))
    assert items == [{"id": DEVICE_ID}] and next_link is None
    listing, one = seen
    assert listing.url.path == "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
    assert dict(listing.url.params) == {"$top": "50"}
    assert one.url.path.endswith(f"/{DEVICE_ID}") and not one.url.params


async def test_events_keep_select() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": []})

    async with graph(handler) as client:
        await client.list_page(select=("id", "osVersion"))
        await client.get(EVENTS, "e1", select=("osVersion",))
    assert seen[0].url.params["$select"] == "id,osVersion"
    assert seen[0].url.path == "/beta/deviceManagement/autopilotEvents"
    assert seen[1].url.params["$select"] == "osVersion"


async def test_device_list_answer_without_value_names_devices() -> None:
    async with graph(lambda request: httpx.Response(200, json={})) as client:
        with pytest.raises(
            GraphError, match="list answer of /deviceManagement/windowsAutopilotDeviceIdentities"
        ):
            await client.list_page(resource=DEVICES)


# --- the planner ---------------------------------------------------------------------------------


def test_planner_plans_the_resources_write() -> None:
    updates = [("1", Update(2, DEVICE_ID, {"groupTag": "A"})), ("2", Update(3, "e/1", {"x": 1}))]
    (device,) = batch_requests(updates[:1], resource=DEVICES)
    assert (device.method, device.url) == (
        "POST",
        f"/deviceManagement/windowsAutopilotDeviceIdentities/{DEVICE_ID}/updateDeviceProperties",
    )
    (event,) = batch_requests(updates[1:])
    assert (event.method, event.url) == ("PATCH", "/deviceManagement/autopilotEvents/e%2F1")
    assert patch_url(ROOT, "e/1") == f"{ROOT}/beta/deviceManagement/autopilotEvents/e%2F1"
    assert write_url(ROOT, EVENTS, "e/1") == patch_url(ROOT, "e/1")
    assert write_url(ROOT + "/", DEVICES, DEVICE_ID).endswith(
        f"/{DEVICE_ID}/updateDeviceProperties"
    )
