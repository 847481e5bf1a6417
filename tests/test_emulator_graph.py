"""The emulator's Graph API over real sockets on 127.0.0.1: GET, PATCH, errors, ids, auth."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.emulator.wire import AUTOPILOT_TYPE
from batch.errors import ConfigError
from batch.model import Rate

EmulatorFactory = Callable[..., EmulatorServer]
EMULATOR_TOKEN = "test-token"  # what the `emulator` fixture accepts

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVENTS = "/beta/deviceManagement/autopilotEvents"
DOCS_ID = "3e455cab-5cab-3e45-ab5c-453eab5c453e"


def client_for(server: EmulatorServer, token: str | None = EMULATOR_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def shared() -> Iterator[EmulatorServer]:
    """One default emulator for the tests of this module that only need a fresh state."""
    store = EventStore()
    store.seed(50, seed=2026)
    # This module checks Graph's own wire rules in the forgiving profile, where answers carry
    # bodies to compare (PATCH 200 with the object, plain error texts, `$top` up to 999);
    # tests/test_emulator_realistic.py checks the default, Intune's real answers.
    config = EmulatorConfig.friendly(token=EMULATOR_TOKEN, seed=2026)
    with EmulatorServer(config, store=store) as server:
        yield server


@pytest.fixture
def emulator(shared: EmulatorServer) -> EmulatorServer:
    """The shared emulator, back to its starting events and counters (shadows conftest's)."""
    shared.reset(store=True)
    return shared


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with client_for(emulator) as c:
        yield c


def first_id(server: EmulatorServer) -> str:
    return str(server.store.list()[0]["id"])


def assert_graph_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """GRAPH.md's error shape: error.code, error.message, innerError with date and ids."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    inner = error["innerError"]
    assert set(inner) >= {"date", "request-id", "client-request-id"}
    assert inner["request-id"] == response.headers["request-id"]
    return dict(error)


# --- the docs example ---------------------------------------------------------------------------


def docs_fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text(encoding="utf-8")))


@pytest.fixture
def docs_store() -> EventStore:
    """An event with the docs response's id and keys, holding other values before the PATCH."""
    response = docs_fixture("docs-example-response.json")
    before = {k: v for k, v in response.items() if not k.startswith("@")}
    before.update(
        deviceSerialNumber="OLD",
        enrollmentState="failed",
        targetedAppCount=9,
        devicePreparationDuration="PT1S",
    )
    return EventStore([before])


def test_docs_example_request_is_accepted_verbatim(
    emulator_factory: EmulatorFactory, docs_store: EventStore
) -> None:
    # The docs' body holds the legacy properties: only the legacy schema takes it verbatim
    # (tests/test_emulator_realistic.py shows the default refusing it).
    server = emulator_factory(EmulatorConfig.friendly(token="t"), store=docs_store)
    request_body = (FIXTURES / "docs-example-request.json").read_bytes()
    with client_for(server, "t") as c:
        response = c.patch(
            f"{EVENTS}/{DOCS_ID}",
            content=request_body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text
    expected = docs_fixture("docs-example-response.json")
    body = response.json()
    assert list(body) == list(expected)  # same keys, same order
    assert body == expected  # the stored values are the request's values
    assert server.stats()["patches"] == {DOCS_ID: 1}


def test_legacy_properties_are_unknown_under_the_current_schema(
    emulator_factory: EmulatorFactory, docs_store: EventStore
) -> None:
    server = emulator_factory(
        EmulatorConfig.friendly(token="t", schema="current"), store=docs_store
    )
    before = server.store.digest()
    with client_for(server, "t") as c:
        response = c.patch(
            f"{EVENTS}/{DOCS_ID}",
            content=(FIXTURES / "docs-example-request.json").read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        error = assert_graph_error(response, 400, "BadRequest")
        assert "devicePreparationDuration" in error["message"]
        for legacy in ("targetedAppCount", "targetedPolicyCount"):
            response = c.patch(f"{EVENTS}/{DOCS_ID}", json={legacy: 1})
            assert legacy in assert_graph_error(response, 400, "BadRequest")["message"]
        # Nothing was applied, and reads do not show the legacy properties either.
        assert server.store.digest() == before
        shown = c.get(f"{EVENTS}/{DOCS_ID}").json()
        assert "targetedAppCount" not in shown and "deviceSerialNumber" in shown


# --- PATCH --------------------------------------------------------------------------------------


def test_patch_returns_the_updated_object(emulator: EmulatorServer, client: httpx.Client) -> None:
    event_id = first_id(emulator)
    response = client.patch(
        f"{EVENTS}/{event_id}",
        json={"deviceSerialNumber": "0001234", "osVersion": None, "@odata.type": AUTOPILOT_TYPE},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.type"] == AUTOPILOT_TYPE
    assert body["id"] == event_id
    assert body["deviceSerialNumber"] == "0001234" and body["osVersion"] is None
    assert emulator.store.get(event_id) == {k: v for k, v in body.items() if k[0] != "@"}


def test_patch_status_204(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", patch_status=204, events=3)
    with client_for(server, "t") as c:
        response = c.patch(f"{EVENTS}/{first_id(server)}", json={"osVersion": "11"})
    assert response.status_code == 204
    assert response.content == b""
    assert server.store.get(first_id(server))["osVersion"] == "11"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param({"serial": "X"}, "'serial' does not exist", id="unknown-property"),
        pytest.param({"enrollmentState": "Enrolled"}, "not found in enum", id="enum-case"),
        pytest.param({"deploymentState": "done"}, "not found in enum", id="bad-enum"),
        pytest.param({"eventDateTime": "2024-01-01T10:00:00"}, "DateTimeOffset", id="no-offset"),
        pytest.param({"eventDateTime": "2024-02-30T10:00:00Z"}, "DateTimeOffset", id="bad-date"),
        pytest.param({"deploymentDuration": "00:03:21"}, "Edm.Duration", id="timespan-text"),
        pytest.param({"deploymentDuration": "PT"}, "Edm.Duration", id="empty-duration"),
        pytest.param({"targetedAppCount": "3"}, "Int32", id="int-as-string"),
        pytest.param({"targetedAppCount": 2**31}, "Int32", id="int-range"),
        pytest.param({"targetedAppCount": True}, "Int32", id="bool-for-int"),
        pytest.param({"deviceSerialNumber": 123}, "must be a string", id="number-for-string"),
        pytest.param({"enrollmentState": None}, "cannot be null", id="null-non-nullable"),
        pytest.param({"id": "other"}, "'id'", id="id-in-body"),
        pytest.param({"@odata.type": "#microsoft.graph.user"}, "could not be resolved", id="type"),
        pytest.param([{"osVersion": "1"}], "JSON object", id="array-body"),
        pytest.param("text", "JSON object", id="string-body"),
    ],
)
def test_patch_rejects_what_graph_rejects(
    emulator: EmulatorServer, client: httpx.Client, body: object, needle: str
) -> None:
    before = emulator.store.digest()
    response = client.patch(f"{EVENTS}/{first_id(emulator)}", json=body)
    error = assert_graph_error(response, 400, "BadRequest")
    assert needle in error["message"]
    assert emulator.store.digest() == before  # nothing applied, not even the valid part


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "Empty Payload"), (b"{not json", "valid JSON"), (b"\xff\xfe", "valid JSON")],
)
def test_patch_with_unreadable_body(client: httpx.Client, content: bytes, needle: str) -> None:
    response = client.patch(
        f"{EVENTS}/any", content=content, headers={"Content-Type": "application/json"}
    )
    assert needle in assert_graph_error(response, 400, "BadRequest")["message"]


def test_patch_unknown_id_is_404(client: httpx.Client) -> None:
    response = client.patch(f"{EVENTS}/{uuid.uuid4()}", json={"osVersion": "1"})
    assert_graph_error(response, 404, "ResourceNotFound")


def test_ids_are_case_insensitive_and_url_quoted(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(token="t", store=EventStore([{"id": "Odd Id/1", "osVersion": "a"}]))
    with client_for(server, "t") as c:
        response = c.get(f"{EVENTS}/odd%20id%2F1")
    assert response.status_code == 200
    assert response.json()["id"] == "Odd Id/1"


# --- GET ----------------------------------------------------------------------------------------


def test_get_one_and_select(emulator: EmulatorServer, client: httpx.Client) -> None:
    event_id = first_id(emulator)
    body = client.get(f"{EVENTS}/{event_id}").json()
    assert body["@odata.context"].endswith("/$entity")
    assert {k: v for k, v in body.items() if k[0] != "@"} == emulator.store.get(event_id)
    selected = client.get(f"{EVENTS}/{event_id}", params={"$select": "deviceSerialNumber"}).json()
    assert {k for k in selected if k[0] != "@"} == {"id", "deviceSerialNumber"}
    bad = client.get(f"{EVENTS}/{event_id}", params={"$select": "nope"})
    assert "nope" in assert_graph_error(bad, 400, "BadRequest")["message"]
    assert_graph_error(client.get(f"{EVENTS}/missing"), 404, "ResourceNotFound")


def test_list_pages_with_next_links(emulator: EmulatorServer, client: httpx.Client) -> None:
    seen: list[str] = []
    url: str | None = f"{EVENTS}?$top=7&$select=id,managedDeviceName"
    pages = 0
    while url:
        body = client.get(url).json()
        pages += 1
        assert all(set(e) == {"@odata.type", "id", "managedDeviceName"} for e in body["value"])
        seen += [e["id"] for e in body["value"]]
        url = body.get("@odata.nextLink")
        if url:
            assert url.startswith(emulator.url + EVENTS) and "$skiptoken=" in url
            assert "$select=id,managedDeviceName" in url
    assert pages == 8  # 50 events, 7 per page
    assert seen == [e["id"] for e in emulator.store.list()]


def test_list_default_page_size_and_top_limits(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(EmulatorConfig.friendly(token="t", page_size=20), events=25)
    with client_for(server, "t") as c:
        first = c.get(EVENTS).json()
        assert len(first["value"]) == 20 and "@odata.nextLink" in first
        everything = c.get(EVENTS, params={"$top": "999"}).json()
        assert len(everything["value"]) == 25 and "@odata.nextLink" not in everything
        assert (
            "999" in assert_graph_error(c.get(f"{EVENTS}?$top=1000"), 400, "BadRequest")["message"]
        )
        assert_graph_error(c.get(f"{EVENTS}?$top=abc"), 400, "BadRequest")
        assert_graph_error(c.get(f"{EVENTS}?$top=0"), 400, "BadRequest")
        assert_graph_error(c.get(f"{EVENTS}?$skiptoken=forged"), 400, "BadRequest")
        assert_graph_error(c.get(f"{EVENTS}?$orderby=id"), 400, "BadRequest")


def test_list_filter_by_serial_number(emulator_factory: EmulatorFactory) -> None:
    store = EventStore(
        [
            {"id": "a", "deviceSerialNumber": "S'1", "eventDateTime": "2024-01-01T00:00:00Z"},
            {"id": "b", "deviceSerialNumber": "S'1", "eventDateTime": "2024-02-01T00:00:00Z"},
            {"id": "c", "deviceSerialNumber": "S2"},
        ]
    )
    server = emulator_factory(token="t", store=store)
    with client_for(server, "t") as c:
        body = c.get(EVENTS, params={"$filter": "deviceSerialNumber eq 'S''1'"}).json()
        assert [e["id"] for e in body["value"]] == ["a", "b"]
        bad = c.get(EVENTS, params={"$filter": "startswith(deviceSerialNumber,'S')"})
        assert_graph_error(bad, 400, "BadRequest")
        wrong_type = c.get(EVENTS, params={"$filter": "targetedAppCount eq '1'"})
        assert_graph_error(wrong_type, 400, "BadRequest")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/beta/deviceManagement/somethingElse", 400),
        ("GET", "/beta/users", 400),
        ("GET", f"{EVENTS}/a/b", 400),
        ("DELETE", f"{EVENTS}/a", 405),
        ("POST", EVENTS, 405),
        ("GET", "/v1.0/deviceManagement/autopilotEvents", 404),
    ],
)
def test_other_routes(client: httpx.Client, method: str, path: str, status: int) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message", "innerError"}


# --- ids, auth ----------------------------------------------------------------------------------


def test_request_ids(client: httpx.Client) -> None:
    crid = str(uuid.uuid4())
    response = client.get(EVENTS, headers={"client-request-id": crid})
    assert response.headers["client-request-id"] == crid
    first = response.headers["request-id"]
    uuid.UUID(first)
    second = client.get(EVENTS).headers
    assert second["request-id"] != first
    assert "client-request-id" not in second
    error = client.get(f"{EVENTS}/nope", headers={"client-request-id": crid}).json()
    assert error["error"]["innerError"]["client-request-id"] == crid


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer wrong-token"],
)
def test_401_without_a_valid_bearer(emulator: EmulatorServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=emulator.url) as c:
        response = c.get(EVENTS, headers=headers)
        assert_graph_error(response, 401, "InvalidAuthenticationToken")
        assert response.headers["www-authenticate"].startswith("Bearer")
        batch = c.post("/beta/$batch", json={"requests": []}, headers=headers)
        assert_graph_error(batch, 401, "InvalidAuthenticationToken")


def test_open_mode_any_token_is_its_own_app(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(EmulatorConfig.friendly(write_limit=Rate(1, 60)), events=2)
    event_id = first_id(server)
    with client_for(server, "writer-a") as a, client_for(server, "writer-b") as b:
        assert a.patch(f"{EVENTS}/{event_id}", json={"osVersion": "a"}).status_code == 200
        assert a.patch(f"{EVENTS}/{event_id}", json={"osVersion": "a"}).status_code == 429
        assert b.patch(f"{EVENTS}/{event_id}", json={"osVersion": "b"}).status_code == 200
    server.disable_app("writer-b")
    with client_for(server, "writer-b") as b:
        assert_graph_error(b.get(EVENTS), 401, "InvalidAuthenticationToken")
    server.enable_app("writer-b")
    with client_for(server, "writer-b") as b:
        assert b.get(EVENTS).status_code == 200


# --- administration -----------------------------------------------------------------------------


def test_stats_and_reset(emulator: EmulatorServer, client: httpx.Client) -> None:
    event_id = first_id(emulator)
    digest = emulator.store.digest()
    client.get(EVENTS)
    client.patch(f"{EVENTS}/{event_id}", json={"osVersion": "x"})
    client.patch(f"{EVENTS}/{event_id}", json={"osVersion": "y"})
    client.patch(f"{EVENTS}/{event_id}", json={"bogus": 1})
    stats = client.get("/_emulator/stats").json()
    assert stats == emulator.stats()
    assert stats["requests"] == 4 and stats["reads"] == 1 and stats["writes"] == 3
    assert stats["patches"] == {event_id: 2}
    assert stats["statuses"] == {"200": 3, "400": 1}
    assert stats["events"] == 50 and stats["digest"] == emulator.store.digest() != digest
    after = client.post("/_emulator/reset").json()
    assert after["requests"] == 0 and after["patches"] == {} and after["digest"] != digest
    restored = client.post("/_emulator/reset?store=1").json()
    assert restored["digest"] == digest
    emulator.reset()
    assert emulator.stats()["requests"] == 0


def test_add_events_while_serving(emulator: EmulatorServer, client: httpx.Client) -> None:
    assert emulator.add_events([{"id": "new-1", "osVersion": "1"}, {"id": "new-2"}]) == 2
    assert client.get(f"{EVENTS}/new-1").json()["osVersion"] == "1"
    assert emulator.stats()["events"] == 52


def test_admin_app_switches(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="static-token")
    with client_for(server, "static-token") as c:
        assert c.post("/_emulator/apps/static/disable").json() == {
            "client_id": "static",
            "enabled": False,
        }
        assert_graph_error(c.get(EVENTS), 401, "InvalidAuthenticationToken")
        c.post("/_emulator/apps/static/enable")
        assert c.get(EVENTS).status_code == 200


def test_latency_is_applied(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(token="t", latency_ms=150)
    with client_for(server, "t") as c:
        response = c.get(EVENTS)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.15


def test_config_is_checked() -> None:
    for bad in (
        {"fault_rate": 1.5},
        {"latency_ms": -1},
        {"token": " "},
        {"token_ttl": 0},
        {"patch_status": 201},
        {"retry_after_format": "float"},
        {"schema": "v2"},
        {"page_size": 1000},
        {"port": 70000},
        {"apps": (("id", ""),)},
        {"write_limit": "100/20"},
    ):
        with pytest.raises(ConfigError):
            EmulatorConfig(**bad)  # type: ignore[arg-type]
    assert EmulatorConfig(write_limit=Rate(5, 1)).write_limit == Rate(5, 1)


def test_port_in_use_is_a_clear_error(emulator: EmulatorServer) -> None:
    port = int(emulator.url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="cannot listen"):
        EmulatorServer(EmulatorConfig(port=port)).start()
