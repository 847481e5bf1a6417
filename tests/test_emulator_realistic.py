"""The emulator's realistic profile (issue 13): Intune as it really answers, over real sockets.

Each behaviour of the issue's table has a test here, run with `EmulatorConfig.realistic()`;
where the friendly profile differs, the contrast is shown too. The last part drives the Graph
client against the realistic emulator (not only MockTransport).
"""

from __future__ import annotations

import csv
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from batch.auth import REQUIRED_PERMISSION, StaticTokenProvider
from batch.cli import app
from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.emulator.config import FRIENDLY, PROFILES, REALISTIC
from batch.emulator.throttle import MIXED_SHARES, Throttle
from batch.errors import ConfigError, GraphError, PermissionDenied
from batch.graph import BatchRequest, GraphClient, event_path
from batch.model import Rate
from batch.options import SINGLE_SENDERS
from tests import e2e

EmulatorFactory = Callable[..., EmulatorServer]

TOKEN = "t"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVENTS = "/beta/deviceManagement/autopilotEvents"
DOCS_ID = "3e455cab-5cab-3e45-ab5c-453eab5c453e"
LEGACY = ("devicePreparationDuration", "targetedAppCount", "targetedPolicyCount")


def realistic(factory: EmulatorFactory, *, events: int = 20, **fields: Any) -> EmulatorServer:
    fields.setdefault("token", TOKEN)
    fields.setdefault("seed", 13)
    return factory(EmulatorConfig.realistic(**fields), events=events)


def client_for(server: EmulatorServer, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}", **headers}, timeout=10
    )


def ids_of(server: EmulatorServer) -> list[str]:
    return [str(event["id"]) for event in server.store.list()]


def intune_message(response: httpx.Response) -> dict[str, Any]:
    """The JSON document inside `error.message`, checked for Intune's shape."""
    text = response.json()["error"]["message"]
    assert "\r\n" in text  # .NET's indented JSON
    document = json.loads(text)
    assert list(document) == [
        "_version",
        "Message",
        "CustomApiErrorPhrase",
        "RetryAfter",
        "ErrorSourceService",
        "HttpHeaders",
    ]
    assert document["_version"] == 3
    assert (
        " - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000"
        in (document["Message"])
    )
    return dict(document)


# --- the profile ---------------------------------------------------------------------------------


def test_profiles_are_named_sets_of_fields() -> None:
    real = EmulatorConfig.realistic()
    assert all(getattr(real, name) == value for name, value in REALISTIC.items())
    assert real.profile == "realistic"
    assert EmulatorConfig.friendly().profile == "friendly"
    assert EmulatorConfig().profile == "realistic"  # the defaults are Intune's real answers
    assert set(FRIENDLY) == set(REALISTIC) and set(PROFILES) == {"friendly", "realistic"}
    # A softening flag on top of the profile: the rest stays realistic.
    softened = EmulatorConfig.realistic(patch_status=200, token="x")
    assert softened.patch_status == 200 and softened.schema == "current"
    assert softened.token == "x" and softened.profile is None
    kept = EmulatorConfig(token="y", write_limit=Rate(5, 1)).with_profile("realistic")
    assert kept.profile == "realistic" and kept.token == "y" and kept.write_limit == Rate(5, 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"error_style": "xml"},
        {"batch_refusal": "some"},
        {"deny_permission": "reads"},
        {"retry_after_format": "float"},
    ],
)
def test_bad_wire_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EmulatorConfig.realistic(**fields)


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="friendly, realistic"):
        EmulatorConfig.for_profile("strict")


# --- PATCH 204 and the current schema ------------------------------------------------------------


def test_patch_answers_204_without_a_body(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory)
    event_id = ids_of(server)[0]
    with client_for(server) as c:
        response = c.patch(f"{EVENTS}/{event_id}", json={"deviceSerialNumber": "00123"})
        assert response.status_code == 204
        assert response.content == b""
        assert c.get(f"{EVENTS}/{event_id}").json()["deviceSerialNumber"] == "00123"


@pytest.fixture
def docs_store() -> EventStore:
    response = json.loads((FIXTURES / "docs-example-response.json").read_text(encoding="utf-8"))
    return EventStore([{k: v for k, v in response.items() if not k.startswith("@")}])


def test_the_docs_example_is_refused_and_validate_warns(
    emulator_factory: EmulatorFactory, docs_store: EventStore, tmp_path: Path
) -> None:
    server = emulator_factory(EmulatorConfig.realistic(token=TOKEN), store=docs_store)
    before = server.store.digest()
    request = (FIXTURES / "docs-example-request.json").read_bytes()
    with client_for(server) as c:
        response = c.patch(
            f"{EVENTS}/{DOCS_ID}", content=request, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    # Intune's model validation: plain text, repeated in innerError, Intune's type namespace.
    assert error["code"] == "ModelValidationFailure"
    assert error["message"] == error["innerError"]["message"]
    assert "'devicePreparationDuration' does not exist" in error["message"]
    assert "microsoft.management.services.api.deviceManagementAutopilotEvent" in error["message"]
    assert server.store.digest() == before
    # The same body as an input file: `validate` warns about the legacy columns beforehand.
    body = json.loads(request)
    body.pop("@odata.type")
    path = tmp_path / "docs.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, ["id", *body])
        writer.writeheader()
        writer.writerow({"id": DOCS_ID, **body})
    result = CliRunner().invoke(app, ["validate", str(path)])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    for name in LEGACY:
        assert any(f"'{name}' is a legacy property" in line for line in warnings), warnings


def test_legacy_properties_are_not_served(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, events=3)
    with client_for(server) as c:
        shown = c.get(f"{EVENTS}/{ids_of(server)[0]}").json()
        listed = c.get(EVENTS).json()["value"]
    assert not set(LEGACY) & set(shown)
    assert all(not set(LEGACY) & set(event) for event in listed)


# --- Intune's error envelope ---------------------------------------------------------------------


def test_not_found_in_intunes_envelope(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory)
    with client_for(server) as c:
        mine = str(uuid.uuid4())
        sent = c.get(f"{EVENTS}/no-such-id", headers={"client-request-id": mine})
        unsent = c.get(f"{EVENTS}/no-such-id")
    for response in (sent, unsent):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "ResourceNotFound"
        document = intune_message(response)
        assert document["Message"].startswith("An error has occurred - Operation ID")
        assert "Url: https://fef." in document["Message"]
    # The Activity ID is the client-request-id (or the request-id when none was sent) ...
    assert f"Activity ID: {mine} " in intune_message(sent)["Message"]
    own = unsent.headers["request-id"]
    assert f"Activity ID: {own} " in intune_message(unsent)["Message"]
    # ... and innerError names client-request-id only when the client sent one.
    assert sent.json()["error"]["innerError"]["client-request-id"] == mine
    assert "client-request-id" not in unsent.json()["error"]["innerError"]
    assert unsent.json()["error"]["innerError"]["request-id"] == own


def test_graphs_own_refusals_stay_plain(emulator_factory: EmulatorFactory) -> None:
    """Graph's front door (routes, query options) answers before Intune, in Graph's shape."""
    server = realistic(emulator_factory)
    with client_for(server) as c:
        response = c.get("/beta/deviceManagement/autopilotEventz")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    assert error["message"].startswith("Resource not found for the segment")


# --- paging --------------------------------------------------------------------------------------


def test_pages_of_at_most_50_with_top_capped(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, events=120)
    with client_for(server) as c:
        assert len(c.get(EVENTS).json()["value"]) == 50
        capped = c.get(EVENTS, params={"$top": "999"})
        assert capped.status_code == 200  # capped, not refused
        assert len(capped.json()["value"]) == 50
        over = c.get(EVENTS, params={"$top": "5000"})
        assert over.status_code == 200 and len(over.json()["value"]) == 50
        assert len(c.get(EVENTS, params={"$top": "7"}).json()["value"]) == 7
        seen: list[str] = []
        link: str | None = f"{EVENTS}?$top=999"
        while link:
            body = c.get(link).json()
            assert len(body["value"]) <= 50
            seen += [event["id"] for event in body["value"]]
            link = body.get("@odata.nextLink")
    assert seen == ids_of(server)


def test_friendly_pages_refuse_a_top_over_999(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(EmulatorConfig.friendly(token=TOKEN), events=3)
    with client_for(server) as c:
        assert c.get(EVENTS, params={"$top": "1000"}).status_code == 400


# --- whole-batch refusals ------------------------------------------------------------------------


def _batch(c: httpx.Client, *items: dict[str, Any]) -> httpx.Response:
    return c.post("/beta/$batch", json={"requests": list(items)})


def _patch_item(item_id: str, event_id: str, **body: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "method": "PATCH",
        "url": f"/deviceManagement/autopilotEvents/{event_id}",
        "headers": {"Content-Type": "application/json"},
        "body": body,
    }


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            {"id": "9", "method": "GET", "url": "https://graph.microsoft.com/beta/x"},
            id="absolute-url",
        ),
        pytest.param(
            {"id": "9", "method": "PATCH", "url": "/deviceManagement/autopilotEvents/x"},
            id="write-without-body",
        ),
    ],
)
def test_one_bad_item_refuses_the_whole_batch(
    emulator_factory: EmulatorFactory, bad: dict[str, Any]
) -> None:
    server = realistic(emulator_factory)
    event_id = ids_of(server)[0]
    before = server.store.digest()
    with client_for(server) as c:
        response = _batch(c, _patch_item("1", event_id, osVersion="10.0.1"), bad)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "BadRequest",
        "message": "Invalid batch payload format.",
        "innerError": response.json()["error"]["innerError"],
    }
    assert server.store.digest() == before  # the good item was not applied either
    assert server.stats()["patches"] == {}


def test_friendly_batches_fail_only_the_bad_item(emulator_factory: EmulatorFactory) -> None:
    server = emulator_factory(EmulatorConfig.friendly(token=TOKEN), events=3)
    event_id = ids_of(server)[0]
    absolute = {"id": "2", "method": "GET", "url": "https://graph.microsoft.com/beta/x"}
    with client_for(server) as c:
        response = _batch(c, _patch_item("1", event_id, osVersion="10.0.1"), absolute)
    statuses = {r["id"]: r["status"] for r in response.json()["responses"]}
    assert response.status_code == 200 and statuses == {"1": 200, "2": 400}


def test_a_good_batch_answers_204_items(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory)
    first, second = ids_of(server)[:2]
    with client_for(server) as c:
        response = _batch(
            c,
            _patch_item("1", first, osVersion="1"),
            {"id": "2", "method": "GET", "url": f"/deviceManagement/autopilotEvents/{second}"},
        )
    statuses = {r["id"]: r["status"] for r in response.json()["responses"]}
    assert statuses == {"1": 204, "2": 200}


# --- 429s: forms of Retry-After, separate throttles ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rejections(seed: int, count: int) -> list[str | None]:
    """The Retry-After headers of `count` 429s in a row from a throttle with this seed."""
    clock = Clock()
    throttle = Throttle(
        write_limit=Rate(1, 60),
        tenant_write_limit=Rate(100, 60),
        read_limit=Rate(1000, 60),
        tenant_read_limit=Rate(1000, 60),
        retry_after_format="mixed",
        split=True,
        seed=seed,
        clock=clock,
    )
    assert throttle.admit("a", "t", write=True).admitted
    headers = []
    for step in range(count):
        clock.now = 1 + step * 0.01
        decision = throttle.admit("a", "t", write=True)
        assert not decision.admitted
        headers.append(decision.header)
    return headers


def _form(header: str | None) -> str:
    if header is None:
        return "none"
    if "," in header:
        return "list"
    return "decimal" if "." in header else "int"


def test_mixed_retry_after_is_seeded_and_keeps_its_shares() -> None:
    draws = _rejections(seed=5, count=4000)
    assert draws == _rejections(seed=5, count=4000)  # reproducible
    assert draws != _rejections(seed=6, count=4000)
    shares = Counter(_form(h) for h in draws)
    for form, share in MIXED_SHARES:
        assert math.isclose(shares[form] / len(draws), share, abs_tol=0.03), (form, shares)
    listed = next(h for h in draws if h and "," in h)
    first, second = (float(part) for part in listed.split(","))
    assert second > first >= 1


def test_a_429_without_retry_after_does_not_blame_the_next_request() -> None:
    clock = Clock()
    throttle = Throttle(
        write_limit=Rate(1, 10),
        tenant_write_limit=Rate(100, 10),
        read_limit=Rate(1000, 10),
        tenant_read_limit=Rate(1000, 10),
        retry_after_format="none",
        clock=clock,
    )
    assert throttle.admit("a", "t", write=True).admitted
    clock.now = 1.0
    assert throttle.admit("a", "t", write=True).header is None
    clock.now = 3.0  # a blind retry (backoff): still held, but the client was never told
    later = throttle.admit("a", "t", write=True)
    assert not later.admitted and not later.during_retry_after
    clock.now = 10.0
    assert throttle.admit("a", "t", write=True).admitted


def test_a_spent_request_budget_holds_writes_too() -> None:
    clock = Clock()
    throttle = Throttle(
        write_limit=Rate(100, 10),
        tenant_write_limit=Rate(100, 10),
        read_limit=Rate(2, 10),
        tenant_read_limit=Rate(100, 10),
        split=True,
        clock=clock,
    )
    assert throttle.admit("a", "t", write=False).admitted
    assert throttle.admit("a", "t", write=False).admitted
    assert not throttle.admit("a", "t", write=False).admitted
    clock.now = 1.0
    assert not throttle.admit("a", "t", write=True).admitted  # every request counts there


def test_429s_over_http_mix_their_forms_reproducibly(emulator_factory: EmulatorFactory) -> None:
    def forms(server: EmulatorServer) -> list[tuple[str, str]]:
        event_id = ids_of(server)[0]
        out = []
        with client_for(server) as c:
            for _ in range(40):
                response = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "1"})
                if response.status_code == 429:
                    out.append((_form(response.headers.get("retry-after")), response.text))
        return out

    one = forms(realistic(emulator_factory, seed=21, write_limit=Rate(1, 60)))
    two = forms(realistic(emulator_factory, seed=21, write_limit=Rate(1, 60)))
    assert len(one) == 39
    assert [form for form, _ in one] == [form for form, _ in two]
    assert {form for form, _ in one} == {"int", "none", "decimal", "list"}
    for form, text in one:
        error = json.loads(text)["error"]
        assert error["code"] == "TooManyRequests"
        # Intune's own 429s (no Retry-After) come in its envelope; Graph's say how long.
        assert error["message"].startswith("{") == (form == "none")


def test_reads_go_on_while_writes_are_throttled(emulator_factory: EmulatorFactory) -> None:
    def answers(server: EmulatorServer) -> tuple[int, int, int]:
        event_id = ids_of(server)[0]
        with client_for(server) as c:
            for _ in range(2):
                assert c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "1"}).is_success
            write = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "2"}).status_code
            read = c.get(f"{EVENTS}/{event_id}").status_code
            listed = c.get(EVENTS).status_code
        return write, read, listed

    assert answers(realistic(emulator_factory, write_limit=Rate(2, 60))) == (429, 200, 200)
    friendly = emulator_factory(
        EmulatorConfig.friendly(token=TOKEN, write_limit=Rate(2, 60)), events=3
    )
    assert answers(friendly) == (429, 429, 429)  # one Retry-After period holds everything


# --- ids and Date on every answer ----------------------------------------------------------------


def test_every_answer_has_request_ids_and_a_date(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory)
    event_id = ids_of(server)[0]
    with client_for(server) as c:
        answers = [
            c.get(f"{EVENTS}/{event_id}"),
            c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "1"}),
            c.get(f"{EVENTS}/nope"),
            c.get("/beta/nowhere"),
            c.get("/not-graph"),
            c.post("/beta/$batch", content=b"{}"),
            c.get(EVENTS, headers={"Authorization": "Bearer wrong"}),
        ]
        echoed = c.get(EVENTS, headers={"client-request-id": "mine-1"})
    for response in answers:
        assert response.headers["client-request-id"] == response.headers["request-id"]
        assert uuid.UUID(response.headers["request-id"])
        assert response.headers["date"].endswith(" GMT")
    assert echoed.headers["client-request-id"] == "mine-1"
    friendly = emulator_factory(EmulatorConfig.friendly(token=TOKEN), events=1)
    with client_for(friendly) as c:
        assert "client-request-id" not in c.get(EVENTS).headers


# --- Intune's 401 for a missing permission -------------------------------------------------------


def test_deny_permission_on_writes_answers_intunes_401(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, deny_permission="writes")
    event_id = ids_of(server)[0]
    with client_for(server) as c:
        assert c.get(f"{EVENTS}/{event_id}").status_code == 200  # reads are allowed
        response = c.patch(f"{EVENTS}/{event_id}", json={"osVersion": "1"})
        item = _batch(c, _patch_item("1", event_id, osVersion="1")).json()["responses"][0]
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers  # unlike a token problem
    error = response.json()["error"]
    assert error["code"] == "UnknownError"
    wrapper = json.loads(error["message"])
    assert wrapper["ErrorCode"] == "Forbidden"
    assert set(wrapper) == {
        "ErrorCode",
        "Message",
        "Target",
        "Details",
        "InnerError",
        "InstanceAnnotations",
    }
    document = json.loads(wrapper["Message"])
    assert document["Message"].startswith("An error has occurred - Operation ID")
    assert "urn:intune:service" in json.loads(document["HttpHeaders"])["WWW-Authenticate"]
    assert item["status"] == 401 and item["body"]["error"]["code"] == "UnknownError"
    assert server.stats()["denied"] == 2
    assert server.stats()["patches"] == {}


def test_deny_permission_on_all_refuses_reads(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, deny_permission="all")
    with client_for(server) as c:
        assert c.get(EVENTS).status_code == 401


# --- the client against the realistic emulator ---------------------------------------------------


def graph_client(server: EmulatorServer) -> GraphClient:
    return GraphClient(server.url, StaticTokenProvider(TOKEN))


@pytest.mark.anyio
async def test_client_reads_intunes_errors_without_the_document(
    emulator_factory: EmulatorFactory,
) -> None:
    server = realistic(emulator_factory)
    async with graph_client(server) as client:
        with pytest.raises(GraphError) as caught:
            await client.get_event("no-such-id")
        with pytest.raises(GraphError) as refused:
            await client.patch_event(ids_of(server)[0], {"targetedAppCount": 1})
    missing = caught.value
    assert (missing.status, missing.code, missing.message) == (
        404,
        "ResourceNotFound",
        "An error has occurred",
    )
    assert uuid.UUID(missing.request_id)
    legacy = refused.value
    assert legacy.code == "ModelValidationFailure"
    assert legacy.message.startswith("The property 'targetedAppCount' does not exist")


@pytest.mark.anyio
async def test_client_patches_and_walks_pages(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, events=75)
    ids = ids_of(server)
    async with graph_client(server) as client:
        response = await client.patch_event(ids[0], {"osVersion": "10.0.2"})
        assert (response.status, response.body) == (204, None)
        seen: list[str] = []
        items, link = await client.list_page(top=999)
        assert len(items) == 50 and link
        seen += [str(item["id"]) for item in items]
        while link:
            items, link = await client.list_page(link)
            seen += [str(item["id"]) for item in items]
    assert seen == ids


@pytest.mark.anyio
async def test_client_batches_are_not_refused_whole(emulator_factory: EmulatorFactory) -> None:
    """What the client sends in a `$batch` passes the realistic checks (relative, with bodies)."""
    server = realistic(emulator_factory)
    first, second = ids_of(server)[:2]
    async with graph_client(server) as client:
        envelope, answers = await client.batch(
            [
                BatchRequest("1", "PATCH", event_path(first), {"osVersion": "1"}),
                BatchRequest("2", "GET", event_path(second)),
            ]
        )
    assert envelope.status == 200
    assert {key: a.status for key, a in answers.items()} == {"1": 204, "2": 200}


@pytest.mark.anyio
async def test_client_stops_at_intunes_401_for_rights(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, deny_permission="writes")
    async with graph_client(server) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.patch_event(ids_of(server)[0], {"osVersion": "1"})
    assert caught.value.permission == REQUIRED_PERMISSION
    assert caught.value.error.message == "An error has occurred"
    assert server.stats()["requests"] == 1  # no token refresh and resend


@pytest.mark.anyio
async def test_client_reads_429s_without_retry_after(emulator_factory: EmulatorFactory) -> None:
    server = realistic(emulator_factory, write_limit=Rate(1, 60), retry_after_format="none")
    async with graph_client(server) as client:
        await client.patch_event(ids_of(server)[0], {"osVersion": "1"})
        with pytest.raises(GraphError) as caught:
            await client.patch_event(ids_of(server)[0], {"osVersion": "2"})
    error = caught.value
    assert (error.status, error.retry_after, error.message) == (429, None, "An error has occurred")
    assert error.transient


# --- a run against the realistic emulator ---------------------------------------------------------


@pytest.mark.e2e
def test_a_single_mode_run_stops_at_the_401_for_rights(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server = realistic(emulator_factory, events=12, token=e2e.TOKEN, deny_permission="writes")
    src = e2e.write_csv(tmp_path / "in.csv", e2e.update_rows(ids_of(server)))
    out = tmp_path / "run"
    result = e2e.cli_here("run", src, "--graph-url", server.url, "--mode", "single", "--out", out)
    assert result.returncode == 3, result.stderr
    assert f"it lacks the permission {REQUIRED_PERMISSION}" in result.stdout + result.stderr
    stats = server.stats()
    # No refresh-and-resend: at most the writes already in flight (single mode's 16 senders)
    # met the 401.
    assert 1 <= stats["denied"] <= SINGLE_SENDERS
    assert stats["statuses"]["401"] == stats["denied"]


@pytest.mark.e2e
def test_reports_carry_intunes_human_text(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server = realistic(emulator_factory, events=3, token=e2e.TOKEN)
    rows = e2e.update_rows([*ids_of(server), "00000000-0000-0000-0000-00000000dead"])
    src = e2e.write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    result = e2e.cli_here("run", src, "--graph-url", server.url, "--out", out)
    assert result.returncode == 1, result.stderr
    results = {r["id"]: r for r in e2e.read_csv(out / "results.csv")}
    missing = results["00000000-0000-0000-0000-00000000dead"]
    assert (missing["outcome"], missing["error_code"]) == ("failed", "ResourceNotFound")
    assert missing["error_message"] == "An error has occurred"
    assert uuid.UUID(missing["request_id"])
    failures = (out / "failures.csv").read_text(encoding="utf-8-sig")
    assert "ResourceNotFound: An error has occurred" in failures
    for text in (failures, result.stdout, result.stderr):
        assert "_version" not in text and "Operation ID" not in text
    assert {r["outcome"] for r in results.values()} == {"updated", "failed"}
