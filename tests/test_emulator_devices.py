"""The emulator's Autopilot device identities over real sockets on 127.0.0.1 (issue 16)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch.emulator import (
    DeviceStore,
    EmulatorConfig,
    EmulatorServer,
    EventStore,
    demo_devices,
)
from batch.emulator.oauth import WRITE_PERMISSION, Principal
from batch.errors import InputFileError
from batch.graph import GraphClient, batch_item
from batch.model import Rate
from batch.resources import DEVICES, EVENTS

TOKEN = "device-token"
DEVICES_PATH = "/beta/deviceManagement/windowsAutopilotDeviceIdentities"
EVENTS_PATH = "/beta/deviceManagement/autopilotEvents"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "devices.csv"


def start(**fields: Any) -> EmulatorServer:
    devices = DeviceStore()
    devices.seed(fields.pop("seed_devices", 120), seed=7)
    events = EventStore()
    events.seed(fields.pop("seed_events", 5), seed=7)
    config = EmulatorConfig(token=TOKEN, seed=7, **fields)
    return EmulatorServer(config, store=events, devices=devices).start()


@pytest.fixture(scope="module")
def shared() -> Iterator[EmulatorServer]:
    server = start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(shared: EmulatorServer) -> EmulatorServer:
    shared.reset(store=True)
    return shared


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as c:
        yield c


def first(server: EmulatorServer) -> dict[str, Any]:
    return dict(server.devices.list()[0])


def action(device_id: str) -> str:
    return f"{DEVICES_PATH}/{device_id}/updateDeviceProperties"


def intune_text(response: httpx.Response) -> str:
    """The human text inside Intune's JSON-document message."""
    document = json.loads(response.json()["error"]["message"])
    return str(document["Message"])


# --- reads ---------------------------------------------------------------------------------------


def test_list_is_paged_like_events(server: EmulatorServer, client: httpx.Client) -> None:
    seen: list[str] = []
    url: str | None = DEVICES_PATH
    pages = 0
    while url:
        body = client.get(url).raise_for_status().json()
        assert len(body["value"]) <= 50  # realistic pages of 50, as for events
        seen += [d["id"] for d in body["value"]]
        url = body.get("@odata.nextLink")
        pages += 1
    assert pages == 3
    assert seen == [d["id"] for d in server.devices.list()]
    device = client.get(DEVICES_PATH, params={"$top": "1"}).json()["value"][0]
    assert device["@odata.type"] == "#microsoft.graph.windowsAutopilotDeviceIdentity"
    assert set(device) - {"@odata.type"} == set(DEVICES.properties)


def test_get_one_and_404_in_intunes_envelope(server: EmulatorServer, client: httpx.Client) -> None:
    device = first(server)
    body = client.get(f"{DEVICES_PATH}/{str(device['id']).upper()}").raise_for_status().json()
    assert body["serialNumber"] == device["serialNumber"]
    missing = client.get(f"{DEVICES_PATH}/no-such-device")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceNotFound"
    assert intune_text(missing).startswith("An error has occurred - Operation ID")


def test_select_answers_500_as_the_real_service(client: httpx.Client) -> None:
    for path in (DEVICES_PATH, f"{DEVICES_PATH}/anything"):
        answer = client.get(path, params={"$select": "serialNumber"})
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "InternalServerError"
        assert "An internal server error has occurred" in intune_text(answer)


def test_friendly_profile_serves_select() -> None:
    server = start(device_select_fails=False, seed_devices=3)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            body = c.get(DEVICES_PATH, params={"$select": "serialNumber"}).json()
    finally:
        server.stop()
    assert {k for d in body["value"] for k in d} == {"@odata.type", "id", "serialNumber"}


def test_filter_contains_serial(server: EmulatorServer, client: httpx.Client) -> None:
    serial = str(first(server)["serialNumber"])
    body = client.get(
        DEVICES_PATH, params={"$filter": f"contains(serialNumber,'{serial.lower()}')"}
    ).json()
    assert [d["serialNumber"] for d in body["value"]] == [serial]


# --- the write -----------------------------------------------------------------------------------


def test_update_device_properties_answers_204_and_applies(
    server: EmulatorServer, client: httpx.Client
) -> None:
    device_id = str(first(server)["id"])
    body = {"groupTag": "EMEA-Sales", "userPrincipalName": "", "displayName": "BER-01"}
    answer = client.post(action(device_id), json=body)
    assert answer.status_code == 204 and answer.content == b""
    after = client.get(f"{DEVICES_PATH}/{device_id}").json()
    assert (after["groupTag"], after["userPrincipalName"], after["displayName"]) == (
        "EMEA-Sales",
        "",
        "BER-01",
    )
    # The namespace-qualified action name is the same route.
    again = client.post(
        f"{DEVICES_PATH}/{device_id}/microsoft.graph.updateDeviceProperties",
        json={"groupTag": None},
    )
    assert again.status_code == 204
    assert client.get(f"{DEVICES_PATH}/{device_id}").json()["groupTag"] == ""
    assert server.stats()["device_writes"] == {device_id: 2}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param({"serialNumber": "X"}, "'serialNumber'", id="read-only"),
        pytest.param({"orderId": "X"}, "'orderId'", id="unknown"),
        pytest.param({"groupTag": 5}, "Edm.String", id="not-a-string"),
    ],
)
def test_action_refuses_what_intune_refuses(
    server: EmulatorServer, client: httpx.Client, body: dict[str, Any], needle: str
) -> None:
    before = server.devices.digest()
    answer = client.post(action(str(first(server)["id"])), json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "ModelValidationFailure"  # Intune's model-validation envelope
    assert needle in error["message"]
    assert server.devices.digest() == before


def test_patch_of_a_device_is_refused_like_intune(
    server: EmulatorServer, client: httpx.Client
) -> None:
    device_id = str(first(server)["id"])
    answer = client.patch(f"{DEVICES_PATH}/{device_id}", json={"groupTag": "X"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "No method match route template"
    assert error["message"].startswith(
        "No OData route exists that match template ~/singleton/navigation/key with http verb PATCH"
    )
    assert client.post(DEVICES_PATH, json={}).status_code == 400  # no create route either
    assert client.get(action(device_id)).status_code == 405
    assert client.post(action("no-such-device"), json={"groupTag": "X"}).status_code == 404


# --- $batch --------------------------------------------------------------------------------------


def test_batch_items_post_to_the_action(server: EmulatorServer, client: httpx.Client) -> None:
    ids = [str(d["id"]) for d in server.devices.list()[:3]]
    requests = [
        {
            "id": str(n),
            "method": "POST",
            "url": f"/deviceManagement/windowsAutopilotDeviceIdentities/{i}/updateDeviceProperties",
            "headers": {"Content-Type": "application/json"},
            "body": {"groupTag": f"T{n}"},
        }
        for n, i in enumerate(ids)
    ]
    requests.append(
        {
            "id": "get",
            "method": "GET",
            "url": f"/deviceManagement/windowsAutopilotDeviceIdentities/{ids[0]}",
        }
    )
    answer = client.post("/beta/$batch", json={"requests": requests}).raise_for_status().json()
    statuses = {r["id"]: r["status"] for r in answer["responses"]}
    assert statuses == {"0": 204, "1": 204, "2": 204, "get": 200}
    assert [server.devices.get(i)["groupTag"] for i in ids] == ["T0", "T1", "T2"]  # type: ignore[index]


def test_batch_post_item_without_content_type_fails_the_batch(
    server: EmulatorServer, client: httpx.Client
) -> None:
    item = {
        "id": "1",
        "method": "POST",
        "url": f"/deviceManagement/windowsAutopilotDeviceIdentities/{first(server)['id']}"
        "/updateDeviceProperties",
        "body": {"groupTag": "X"},
    }
    answer = client.post("/beta/$batch", json={"requests": [item]})
    assert answer.status_code == 400
    assert "Content-Type" in answer.json()["error"]["message"]


# --- throttling, faults, permission --------------------------------------------------------------


def test_device_writes_have_their_own_budget() -> None:
    server = start(device_write_limit=Rate(4, 30), write_limit=Rate(100, 30))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            device_id = str(first(server)["id"])
            statuses = [
                c.post(action(device_id), json={"groupTag": "X"}).status_code for _ in range(5)
            ]
            assert statuses == [204, 204, 204, 204, 429]
            # Autopilot events are another Intune service: their writes still go.
            event_id = str(server.store.list()[0]["id"])
            patched = c.patch(f"{EVENTS_PATH}/{event_id}", json={"osVersion": "10.0.1"})
            assert patched.status_code == 204
            # Device reads are not held by a write 429 (split throttles).
            assert c.get(f"{DEVICES_PATH}/{device_id}").status_code == 200
        stats = server.stats()
        assert stats["throttled"] == 1 and stats["device_writes"] == {device_id: 4}
    finally:
        server.stop()


def test_device_requests_meet_faults() -> None:
    server = start(fault_rate=1.0, fault_mix=(("503", 1.0),), seed_devices=2)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            answer = c.post(action(str(first(server)["id"])), json={"groupTag": "X"})
        assert answer.status_code == 503 and "Retry-After" in answer.headers
    finally:
        server.stop()


def test_device_writes_need_the_service_config_permission() -> None:
    events_only = Principal("app", "tenant", frozenset({WRITE_PERMISSION}))
    assert events_only.may(write=True, resource=EVENTS)
    assert not events_only.may(write=True, resource=DEVICES)
    assert not events_only.may(write=False, resource=DEVICES)
    config_rw = Principal("app", "tenant", frozenset({DEVICES.permission}))
    assert config_rw.may(write=True, resource=DEVICES)
    assert config_rw.may(write=False, resource=DEVICES)
    assert Principal("app", "tenant", frozenset({DEVICES.read_permission})).may(
        write=False, resource=DEVICES
    )


# --- the --verify hook ---------------------------------------------------------------------------


def test_unapplied_writes_answer_204_and_take_effect_on_the_second_call() -> None:
    # microsoft-graph-docs#11620: the first call is accepted but not applied.
    server = start(unapplied_writes=1, seed_devices=2)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            device_id = str(first(server)["id"])
            before = c.get(f"{DEVICES_PATH}/{device_id}").json()["groupTag"]
            assert c.post(action(device_id), json={"groupTag": "New"}).status_code == 204
            assert c.get(f"{DEVICES_PATH}/{device_id}").json()["groupTag"] == before
            assert c.post(action(device_id), json={"groupTag": "New"}).status_code == 204
            assert c.get(f"{DEVICES_PATH}/{device_id}").json()["groupTag"] == "New"
            # Events too (--verify serves both resources).
            event_id = str(server.store.list()[0]["id"])
            assert c.patch(f"{EVENTS_PATH}/{event_id}", json={"osVersion": "1"}).status_code == 204
            assert server.store.get(event_id)["osVersion"] != "1"  # type: ignore[index]
        assert server.stats()["unapplied"] == 2
    finally:
        server.stop()


def test_skip_writes_for_one_device(server: EmulatorServer, client: httpx.Client) -> None:
    one, other = (str(d["id"]) for d in server.devices.list()[:2])
    server.skip_writes(one, times=2)
    for _ in range(2):
        assert client.post(action(one), json={"groupTag": "Z"}).status_code == 204
    assert server.devices.get(one)["groupTag"] != "Z"  # type: ignore[index]
    assert client.post(action(other), json={"groupTag": "Z"}).status_code == 204
    assert server.devices.get(other)["groupTag"] == "Z"  # type: ignore[index]
    assert client.post(action(one), json={"groupTag": "Z"}).status_code == 204
    assert server.devices.get(one)["groupTag"] == "Z"  # type: ignore[index]
    assert server.stats()["unapplied"] == 2
    with pytest.raises(ValueError, match="events or devices"):
        server.skip_writes(one, resource="users")


# --- the store, the demo tenant, the sample ------------------------------------------------------


def test_seeded_devices_are_the_demo_tenant_and_realistic() -> None:
    store = DeviceStore()
    store.seed(40, seed=2026)
    demo = demo_devices()
    assert store.list() == demo
    serials = [str(d["serialNumber"]) for d in demo]
    assert len(set(serials)) == len(serials)
    assert any(s.startswith("0") and s.isdigit() for s in serials)  # leading zeros kept
    assert {d["groupTag"] for d in demo} > {""}
    assert any(d["userPrincipalName"] for d in demo) and any(d["displayName"] for d in demo)
    assert {d["manufacturer"] for d in demo} >= {"HP", "LENOVO"}


def test_sample_devices_csv_matches_the_demo_tenant() -> None:
    with SAMPLE.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Device Serial Number", "Group Tag", "Assigned User", "Display name"]
    assert len(rows) == 20
    by_serial = {str(d["serialNumber"]): d for d in demo_devices()}
    serials = [row["Device Serial Number"] for row in rows]
    assert len(set(serials)) == 20 and all(s in by_serial for s in serials)
    assert any(s.startswith("0") for s in serials)
    assert sum(row["Group Tag"] == "<null>" for row in rows) == 1
    # Every header is one the device description knows.
    assert all(DEVICES.property_for(h) is not None for h in rows[0])


def test_load_a_portal_style_csv_and_json(tmp_path: Path) -> None:
    portal = tmp_path / "devices.csv"
    portal.write_text(
        "id,Device Serial Number,Windows Product ID,Hardware Hash,Group Tag,Assigned User\n"
        "d-1,00123,,T0FBQQ==,Sales,adele.vance@contoso.com\n"
        "d-2,5CG1,,,<null>,\n",
        encoding="utf-8",
    )
    store = DeviceStore()
    assert store.load(portal) == 2
    one, two = store.get("D-1"), store.get("d-2")
    assert one is not None and two is not None
    assert (one["serialNumber"], one["groupTag"], one["userPrincipalName"]) == (
        "00123",
        "Sales",
        "adele.vance@contoso.com",
    )
    assert two["groupTag"] == "" and two["enrollmentState"] == "unknown"
    assert set(one) == set(DEVICES.properties)
    listing = tmp_path / "devices.json"
    listing.write_text(json.dumps({"value": [{"id": "d-3", "groupTag": "X"}]}), encoding="utf-8")
    assert store.load(listing) == 1 and len(store) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("id,Favourite colour\nd-9,blue\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="Favourite colour"):
        DeviceStore().load(bad)


def test_reset_restores_devices(server: EmulatorServer, client: httpx.Client) -> None:
    digest = server.devices.digest()
    client.post(action(str(first(server)["id"])), json={"groupTag": "moved"})
    assert server.stats()["devices_digest"] != digest
    server.reset(store=True)
    stats = server.stats()
    assert stats["devices_digest"] == digest and stats["devices"] == 120


# --- the Graph client against the emulator -------------------------------------------------------


class _Tokens:
    async def token(self, *, force_refresh: bool = False) -> str:
        return TOKEN


@pytest.mark.anyio
async def test_graph_client_walks_writes_and_batches_devices(server: EmulatorServer) -> None:
    """The requests `batch.graph` builds from the description are what the emulator serves:
    the list walk asks for `$select` but never sends it (no 500), writes are the action."""
    seen: list[str] = []
    async with GraphClient(server.url, _Tokens()) as client:
        items, link = await client.list_page(resource=DEVICES, select=("id", "serialNumber"))
        while link:
            seen += [str(d["id"]) for d in items]
            items, link = await client.list_page(link, resource=DEVICES)
        seen += [str(d["id"]) for d in items]
        assert seen == [str(d["id"]) for d in server.devices.list()]
        one, two, three = seen[:3]
        answer = await client.write(DEVICES, one, {"groupTag": "Written"})
        assert answer.status == 204
        _, results = await client.batch(
            [batch_item(DEVICES, "a", two, {"groupTag": "B1"}), batch_item(DEVICES, "b", three, {})]
        )
        assert {k: r.status for k, r in results.items()} == {"a": 204, "b": 204}
        got = await client.get(DEVICES, two, select=("groupTag",))
        assert isinstance(got.body, dict) and got.body["groupTag"] == "B1"
    assert server.devices.get(one)["groupTag"] == "Written"  # type: ignore[index]
    assert server.stats()["statuses"].get("500") is None  # type: ignore[union-attr]


def test_emulator_defaults_are_the_documented_device_budget() -> None:
    config = EmulatorConfig()
    assert config.device_write_limit == DEVICES.write_limit
    assert config.device_tenant_write_limit == DEVICES.tenant_write_limit
    assert config.device_select_fails and not EmulatorConfig.friendly().device_select_fails
    assert config.profile == "realistic" and EmulatorConfig.friendly().profile == "friendly"


def test_the_device_account_password_is_never_read_back(
    server: EmulatorServer, client: httpx.Client
) -> None:
    device_id = str(first(server)["id"])
    body = {"deviceAccountUpn": "hub@contoso.com", "deviceAccountPassword": "not-a-real-one"}
    assert client.post(action(device_id), json=body).status_code == 204
    read = client.get(f"{DEVICES_PATH}/{device_id}").json()
    assert read["deviceAccountUpn"] == "hub@contoso.com"
    assert read["deviceAccountPassword"] == ""
