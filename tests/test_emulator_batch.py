"""`POST /beta/$batch` on the emulator: envelope checks, per-item answers, order, throttling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import Rate

EmulatorFactory = Callable[..., EmulatorServer]
BATCH = "/beta/$batch"
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def emulator_factory(emulator_factory: EmulatorFactory) -> EmulatorFactory:
    """The conftest factory, but a config given by fields starts from the friendly profile.

    This module checks the emulator's Graph mechanics where answers carry bodies to compare
    (PATCH 200 with the object, per-item `$batch` failures, whole-second Retry-After);
    tests/test_emulator_realistic.py checks the defaults, Intune's real answers.
    """

    def start(config: EmulatorConfig | None = None, **kwargs: Any) -> EmulatorServer:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("store", "events")}
        if config is None:
            config = EmulatorConfig.friendly(**fields)
        return emulator_factory(config, **kwargs)

    return start


@pytest.fixture
def emulator(emulator_factory: EmulatorFactory) -> EmulatorServer:
    """Conftest's emulator in the friendly profile (see `emulator_factory` above)."""
    return emulator_factory(token="test-token", seed=2026, events=50)


def patch_item(item_id: str, event_id: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "method": "PATCH",
        "url": f"/deviceManagement/autopilotEvents/{event_id}",
        "headers": dict(JSON_HEADERS),
        "body": body,
        **extra,
    }


def send(server: EmulatorServer, requests: list[Any], token: str = "test-token") -> httpx.Response:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        return c.post(BATCH, json={"requests": requests})


def by_id(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    items = response.json()["responses"]
    return {item["id"]: item for item in items}


def ids_of(server: EmulatorServer) -> list[str]:
    return [str(e["id"]) for e in server.store.list()]


def test_each_item_is_answered_on_its_own(emulator: EmulatorServer) -> None:
    ids = ids_of(emulator)
    requests = [
        patch_item("ok", ids[0], {"osVersion": "10.0.1"}),
        patch_item("bad", ids[1], {"enrollmentState": "nope"}),
        patch_item("missing", "no-such-id", {"osVersion": "1"}),
        {"id": "read", "method": "GET", "url": f"/deviceManagement/autopilotEvents/{ids[2]}"},
        {"id": "list", "method": "GET", "url": "deviceManagement/autopilotEvents?$top=2"},
        patch_item("abs", ids[3], {"osVersion": "1"}, url="https://graph.microsoft.com/beta/x"),
    ]
    items = by_id(send(emulator, requests))
    assert set(items) == {"ok", "bad", "missing", "read", "list", "abs"}
    assert items["ok"]["status"] == 200 and items["ok"]["body"]["osVersion"] == "10.0.1"
    assert items["bad"]["status"] == 400
    assert items["bad"]["body"]["error"]["code"] == "BadRequest"
    assert items["missing"]["status"] == 404
    assert items["missing"]["body"]["error"]["code"] == "ResourceNotFound"
    assert items["read"]["status"] == 200 and items["read"]["body"]["id"] == ids[2]
    assert len(items["list"]["body"]["value"]) == 2
    assert items["list"]["body"]["@odata.nextLink"].startswith(emulator.url)
    assert items["abs"]["status"] == 400
    for item in items.values():
        assert set(item) >= {"id", "status", "headers", "body"}
        assert item["headers"]["Content-Type"].startswith("application/json")
        if item["status"] >= 400:
            inner = item["body"]["error"]["innerError"]
            assert set(inner) >= {"date", "request-id", "client-request-id"}
    assert emulator.store.get(ids[0])["osVersion"] == "10.0.1"  # type: ignore[index]
    stats = emulator.stats()
    assert stats["batches"] == 1 and stats["batch_items"] == 6
    # The item with an absolute URL never reaches the service, so it costs no budget.
    assert stats["writes"] == 3 and stats["reads"] == 2
    assert stats["patches"] == {ids[0]: 1}


def test_responses_are_shuffled_reproducibly_and_matched_by_id(
    emulator_factory: EmulatorFactory,
) -> None:
    orders = []
    for seed in (1, 1, 2):
        server = emulator_factory(token="test-token", seed=seed, events=20)
        ids = ids_of(server)
        requests = [patch_item(str(i), ids[i], {"osVersion": f"v{i}"}) for i in range(20)]
        response = send(server, requests)
        order = [item["id"] for item in response.json()["responses"]]
        assert sorted(order, key=int) == [str(i) for i in range(20)]
        for item_id, item in by_id(response).items():
            assert item["body"]["osVersion"] == f"v{item_id}"  # each answer is its own item's
        orders.append(order)
    assert orders[0] != [str(i) for i in range(20)]  # not in request order
    assert orders[0] == orders[1]  # same seed, same order
    assert orders[0] != orders[2]


def test_more_than_20_items_fails_the_whole_batch(emulator: EmulatorServer) -> None:
    ids = ids_of(emulator)
    before = emulator.store.digest()
    response = send(emulator, [patch_item(str(i), ids[i], {"osVersion": "x"}) for i in range(21)])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert emulator.store.digest() == before
    ok = send(emulator, [patch_item(str(i), ids[i], {"osVersion": "x"}) for i in range(20)])
    assert ok.status_code == 200


def test_duplicate_ids_fail_the_batch_case_insensitively(emulator: EmulatorServer) -> None:
    ids = ids_of(emulator)
    before = emulator.store.digest()
    response = send(
        emulator,
        [patch_item("Row-1", ids[0], {"osVersion": "a"}), patch_item("row-1", ids[1], {})],
    )
    assert response.status_code == 400
    assert "row-1" in response.json()["error"]["message"]
    assert emulator.store.digest() == before


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        pytest.param(b"not json", "payload", id="not-json"),
        pytest.param(b'{"requests": {}}', "payload", id="requests-not-array"),
        pytest.param(b'{"requests": []}', "at least one", id="empty"),
        pytest.param(b'{"requests": [1]}', "not a JSON object", id="item-not-object"),
        pytest.param(b'{"requests": [{"id": "1", "url": "/x"}]}', "'method'", id="no-method"),
        pytest.param(
            b'{"requests": [{"id": "1", "method": "PATCH", "url": "/x", "body": {}}]}',
            "Content-Type",
            id="body-without-content-type",
        ),
        pytest.param(
            b'{"requests": [{"id": "1", "method": "GET", "url": "/x", "dependsOn": ["2"]}]}',
            "dependsOn",
            id="depends-on-unknown",
        ),
    ],
)
def test_malformed_envelopes_are_400(emulator: EmulatorServer, payload: bytes, needle: str) -> None:
    with httpx.Client(base_url=emulator.url, headers={"Authorization": "Bearer test-token"}) as c:
        response = c.post(BATCH, content=payload, headers=JSON_HEADERS)
        assert response.status_code == 400
        assert needle in response.json()["error"]["message"]
        assert c.get(BATCH).status_code == 405


def test_relative_urls_with_or_without_slash_and_quoted_ids(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(token="t", store=EventStore([{"id": "a b", "osVersion": "1"}]))
    items = by_id(
        send(
            server,
            [
                patch_item("1", "a%20b", {"osVersion": "2"}),
                {"id": "2", "method": "get", "url": "deviceManagement/autopilotEvents/a%20b"},
            ],
            token="t",
        )
    )
    assert items["1"]["status"] == 200
    assert items["2"]["status"] == 200 and items["2"]["body"]["osVersion"] == "2"


def test_depends_on_failed_request_is_424(emulator: EmulatorServer) -> None:
    ids = ids_of(emulator)
    items = by_id(
        send(
            emulator,
            [
                patch_item("1", ids[0], {"enrollmentState": "bad"}),
                patch_item("2", ids[1], {"osVersion": "x"}, dependsOn=["1"]),
                patch_item("3", ids[2], {"osVersion": "x"}),
                patch_item("4", ids[3], {"osVersion": "x"}, dependsOn=["3"]),
            ],
        )
    )
    assert [items[i]["status"] for i in "1234"] == [400, 424, 200, 200]


def test_item_client_request_id_is_echoed(emulator: EmulatorServer) -> None:
    item = patch_item("1", "missing", {"osVersion": "x"})
    item["headers"]["client-request-id"] = "item-crid"
    body = by_id(send(emulator, [item]))["1"]["body"]
    assert body["error"]["innerError"]["client-request-id"] == "item-crid"


def test_throttled_items_get_their_own_429_and_retry_after(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(
        token="t", write_limit=Rate(7, 30), retry_after_format="decimal", events=20
    )
    ids = ids_of(server)
    items = by_id(
        send(server, [patch_item(str(i), ids[i], {"osVersion": "x"}) for i in range(20)], "t")
    )
    accepted = [i for i in range(20) if items[str(i)]["status"] == 200]
    throttled = [i for i in range(20) if items[str(i)]["status"] == 429]
    assert accepted == list(range(7))  # items are judged in request order
    assert throttled == list(range(7, 20))
    for i in throttled:
        item = items[str(i)]
        assert float(item["headers"]["Retry-After"]) == pytest.approx(30, abs=0.5)
        assert item["body"]["error"]["code"] == "TooManyRequests"
        assert item["body"]["error"]["innerError"]["status"] == "429"
    stats = server.stats()
    assert stats["throttled"] == 13 and stats["writes"] == 7
    assert stats["during_retry_after"] == 0  # one batch: all items arrived together
    assert len(stats["patches"]) == 7  # type: ignore[arg-type]


def test_items_count_individually_against_the_write_limit(
    emulator_factory: EmulatorFactory,
) -> None:
    server = emulator_factory(token="t", write_limit=Rate(5, 30), events=10)
    ids = ids_of(server)
    first = by_id(send(server, [patch_item(str(i), ids[i], {}) for i in range(3)], "t"))
    second = by_id(send(server, [patch_item(str(i), ids[i], {}) for i in range(3)], "t"))
    assert [first[str(i)]["status"] for i in range(3)] == [200, 200, 200]
    assert [second[str(i)]["status"] for i in range(3)] == [200, 200, 429]
