"""The emulator's event store: generated events, loading files, patching, digests."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from batch.emulator import EventStore, generate_event
from batch.errors import InputFileError
from batch.schema import PROPERTIES, check_wire

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_generated_events_are_valid_wire_values_with_every_property() -> None:
    rng = random.Random(7)
    for _ in range(200):
        event = generate_event(rng)
        assert list(event) == list(PROPERTIES)  # every property, in the schema's order
        for name, value in event.items():
            assert check_wire(PROPERTIES[name], value) is None, (name, value)
        assert GUID.match(str(event["id"]))
        assert str(event["managedDeviceName"]).startswith("DESKTOP-")
        assert str(event["userPrincipalName"]).endswith("@contoso.com")


def test_generated_values_look_like_graphs() -> None:
    rng = random.Random(11)
    events = [generate_event(rng) for _ in range(300)]
    serials = [str(e["deviceSerialNumber"]) for e in events]
    assert any(re.fullmatch(r"5CG\d{4}[A-Z]{3}", s) for s in serials)
    assert any(s.startswith("00") and s.isdigit() for s in serials)  # leading zeros kept
    durations = [str(e["deploymentDuration"]) for e in events]
    assert all(re.fullmatch(r"PT(\d+H)?(\d+M)?(\d+(\.\d+)?S)?", d) for d in durations)
    assert all(not re.search(r"\.\d*0S$", d) for d in durations)  # canonical: no trailing 0
    stamps = [str(e["eventDateTime"]) for e in events]
    assert all(re.search(r"\.\d{7}(Z|[+-]\d{2}:\d{2})$", s) for s in stamps)
    assert {s[-6:] for s in stamps if not s.endswith("Z")} - {"+00:00"}  # real offsets too


def test_generate_event_keeps_a_given_id() -> None:
    event = generate_event(random.Random(1), event_id="abc")
    assert event["id"] == "abc"


def test_seed_is_deterministic() -> None:
    a, b, c = EventStore(), EventStore(), EventStore()
    assert a.seed(20, seed=5) == b.seed(20, seed=5)
    assert a.digest() == b.digest()
    c.seed(20, seed=6)
    assert a.digest() != c.digest()


def test_add_get_patch_and_case_insensitive_ids() -> None:
    store = EventStore()
    store.add({"id": "AbC-1", "deviceSerialNumber": "S1"})
    store.add({"id": "x2", "deviceSerialNumber": "S1", "eventDateTime": "2024-01-01T00:00:00Z"})
    assert "abc-1" in store and len(store) == 2
    got = store.get("ABC-1")
    assert got == {"id": "AbC-1", "deviceSerialNumber": "S1"}
    got["deviceSerialNumber"] = "changed"  # a copy: the store is untouched
    assert store.get("abc-1") == {"id": "AbC-1", "deviceSerialNumber": "S1"}
    updated = store.patch("abc-1", {"deviceSerialNumber": "S2", "osVersion": None})
    assert updated == {"id": "AbC-1", "deviceSerialNumber": "S2", "osVersion": None}
    assert [e["id"] for e in store.find("deviceSerialNumber", "S1")] == ["x2"]
    assert store.get("missing") is None
    with pytest.raises(KeyError):
        store.patch("missing", {})
    with pytest.raises(ValueError, match="id"):
        store.add({"deviceSerialNumber": "no id"})


def test_add_drops_odata_annotations() -> None:
    store = EventStore([{"@odata.type": "#x", "id": "1"}])
    assert store.get("1") == {"id": "1"}


def test_digest_returns_to_the_same_value_after_a_revert() -> None:
    store = EventStore()
    ids = store.seed(10, seed=1)
    before = store.digest()
    original = store.get(ids[3])
    assert original is not None
    store.patch(ids[3], {"deviceSerialNumber": "NEW"})
    assert store.digest() != before
    store.patch(ids[3], {"deviceSerialNumber": original["deviceSerialNumber"]})
    assert store.digest() == before


def test_page_snapshot_restore() -> None:
    store = EventStore()
    ids = store.seed(7, seed=2)
    assert [e["id"] for e in store.page(5, 10)] == ids[5:]
    snap = store.snapshot()
    store.patch(ids[0], {"osVersion": "x"})
    store.restore(snap)
    assert store.list() == snap


def test_load_csv_with_input_file_conventions(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "\ufeffEvent ID,Device Serial Number,deploymentDuration,enrollmentState,osVersion,_note\n"
        "e1,000123,00:03:21.5549443,ENROLLED,<null>,ignored\n"
        "e2,5CG1,PT1M,failed,,\n",
        encoding="utf-8",
    )
    store = EventStore()
    assert store.load(path) == 2
    assert store.get("e1") == {
        "id": "e1",
        "deviceSerialNumber": "000123",
        "deploymentDuration": "PT3M21.5549443S",
        "enrollmentState": "enrolled",
        "osVersion": None,
    }
    assert store.get("e2") == {
        "id": "e2",
        "deviceSerialNumber": "5CG1",
        "deploymentDuration": "PT1M",
        "enrollmentState": "failed",
    }


def test_load_jsonl_and_json(tmp_path: Path) -> None:
    events = [generate_event(random.Random(i)) for i in range(3)]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in events) + "\n\n", encoding="utf-8")
    store = EventStore()
    assert store.load(jsonl) == 3
    assert store.list() == events
    listing = tmp_path / "page.json"
    listing.write_text(json.dumps({"value": events}), encoding="utf-8")
    other = EventStore()
    other.load(listing)
    assert other.digest() == store.digest()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("missing.csv", None, "no such file", id="missing"),
        pytest.param("e.txt", "id\n1\n", ".csv, .jsonl or .json", id="suffix"),
        pytest.param("e.csv", "", "no header", id="empty"),
        pytest.param("e.csv", "serial\n1\n", "'serial' is not an autopilot", id="unknown-column"),
        pytest.param("e.csv", "deviceSerialNumber\nX\n", "no id column", id="no-id-column"),
        pytest.param("e.csv", "id,osVersion\n,x\n", "row 2: no id", id="empty-id"),
        pytest.param(
            "e.csv", "id,enrollmentState\n1,bogus\n", "row 2, enrollmentState", id="bad-enum"
        ),
        pytest.param("e.csv", "id\n1\n1\n", "row 3: id 1 appears twice", id="duplicate"),
        pytest.param("e.jsonl", '{"id": "1"}\n{oops\n', "line 2: not JSON", id="bad-json"),
        pytest.param("e.jsonl", "[1]\n", "line 1: not a JSON object", id="not-object"),
        pytest.param("e.jsonl", '{"id": "1", "foo": 1}\n', "unknown property 'foo'", id="prop"),
        pytest.param(
            "e.jsonl", '{"id": "1", "targetedAppCount": "3"}\n', "Int32", id="bad-wire-value"
        ),
        pytest.param("e.json", '{"value": 3}', "JSON array", id="json-shape"),
    ],
)
def test_load_errors_are_clear(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError, match=re.escape(message)):
        EventStore().load(path)


def test_load_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes("id\n\xe9\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="UTF-8"):
        EventStore().load(path)
