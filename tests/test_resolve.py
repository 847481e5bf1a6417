"""`--key deviceSerialNumber|managedDeviceName`: resolving keys to event ids (batch/resolve.py).

Unit tests of the matching rules, the cache and the tenant read (httpx.MockTransport, FakeClock),
the mapper's key mode, and the issue's must-hold runs through the real CLI against the emulator.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from batch.auth import StaticTokenProvider
from batch.emulator import EmulatorConfig, EmulatorServer, EventStore, generate_event
from batch.errors import AuthError, InputFileError, RunAborted, UsageError
from batch.ledger import Ledger
from batch.mapper import InputOptions, key_property, prepare
from batch.model import Invalid, Problem, Rate, Skipped, Update
from batch.resolve import KEYS_FILE, KeyResolver
from batch.testing import FakeClock
from tests.conftest import EmulatorFactory
from tests.e2e import cli, cli_here, read_csv, write_csv

ROOT = "https://graph.example.test"
TOKEN = "test-token"
SERIAL = "deviceSerialNumber"


def loaded(*events: dict[str, Any], key: str = SERIAL, pick: str | None = None) -> KeyResolver:
    resolver = KeyResolver(key, pick=pick)
    for event in events:
        resolver.add(event)
    resolver.mark_loaded()
    return resolver


def ev(
    event_id: str, serial: str | None, when: str | None = "2024-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {"id": event_id, SERIAL: serial, "eventDateTime": when}


# --- matching rules ----------------------------------------------------------------------------


def test_case_and_surrounding_spaces_are_ignored() -> None:
    resolver = loaded(ev("id-1", " 5CG1234ABC "))
    assert resolver.resolve("5cg1234abc") == "id-1"
    assert resolver.resolve("5CG1234ABC") == "id-1"


def test_leading_zeros_are_never_ignored() -> None:
    resolver = loaded(ev("zeros", "00012345"), ev("plain", "12345"))
    assert resolver.resolve("00012345") == "zeros"
    assert resolver.resolve("12345") == "plain"
    missing = resolver.resolve("0123")
    assert isinstance(missing, Problem)
    assert missing.reason == "no event with serial '0123'"


def test_a_key_that_lost_its_leading_zeros_says_so() -> None:
    """Issue 12: Excel turned the serial 0024486700 into 24486700; the row says so."""
    resolver = KeyResolver(SERIAL)
    wanted = {"24486700", "5cg1"}
    for event in (ev("zeros", "0024486700"), ev("other", "5CG1"), ev("far", "0099")):
        resolver.add(event, wanted)
    resolver.mark_loaded()
    problem = resolver.resolve("24486700")
    assert problem == Problem(
        "",
        "",
        "no event with serial '24486700', but the tenant has 0024486700: looks like Excel "
        "dropped the leading zeros (format the column as Text and type the keys again)",
    )
    assert resolver.resolve("5CG1") == "other"
    # --resume resolves from the cache exactly the same way.
    again = KeyResolver(SERIAL)
    assert again.restore(json.loads(json.dumps(resolver.to_json())))
    assert again.resolve("24486700") == problem
    # Only digits lose zeros in Excel, and only keys the file holds are kept.
    assert resolver.resolve("99") == Problem("", "", "no event with serial '99'")


def test_no_match_is_a_problem_naming_the_key() -> None:
    resolver = loaded(ev("id-1", "A"), key=SERIAL)
    assert resolver.resolve("nope") == Problem("", "", "no event with serial 'nope'")
    by_name = loaded({"id": "x", "managedDeviceName": "DESKTOP-1"}, key="managedDeviceName")
    assert by_name.resolve("desktop-1") == "x"
    problem = by_name.resolve("DESKTOP-2")
    assert isinstance(problem, Problem)
    assert problem.reason == "no event with device name 'DESKTOP-2'"


def test_several_matches_list_candidates_newest_first_with_their_date() -> None:
    resolver = loaded(
        ev("old", "DUP", "2024-01-01T09:00:00Z"),
        ev("new", "dup", "2024-01-01T10:30:00+01:00"),  # 09:30 UTC: newer
        ev("none", "DUP", None),
    )
    problem = resolver.resolve("Dup")
    assert isinstance(problem, Problem)
    assert problem.reason == (
        "3 events with serial 'Dup': new (2024-01-01T10:30:00+01:00), "
        "old (2024-01-01T09:00:00Z), none (no eventDateTime); pass --pick latest to take the newest"
    )


def test_pick_latest_compares_instants_not_text() -> None:
    resolver = loaded(
        ev("text-later", "DUP", "2024-01-01T10:00:00+02:00"),  # 08:00 UTC
        ev("utc-later", "DUP", "2024-01-01T09:00:00Z"),
        ev("unreadable", "DUP", "yesterday"),
        pick="latest",
    )
    assert resolver.resolve("dup") == "utc-later"


def test_pick_latest_breaks_no_ties() -> None:
    resolver = loaded(
        ev("a", "DUP", "2024-01-01T09:00:00.1234567Z"),
        ev("b", "DUP", "2024-01-01T10:00:00.1234567+01:00"),  # the same instant
        ev("c", "DUP", "2023-01-01T00:00:00Z"),
        pick="latest",
    )
    problem = resolver.resolve("DUP")
    assert isinstance(problem, Problem)
    assert problem.reason.startswith(
        "2 events with serial 'DUP' share the newest eventDateTime "
        "2024-01-01T09:00:00.1234567Z: a ("
    )
    assert "--pick latest cannot choose" in problem.reason
    assert ", c (" not in problem.reason
    # A tick (100 ns) beyond the microsecond is enough to decide.
    later = loaded(
        ev("a", "DUP", "2024-01-01T09:00:00.1234567Z"),
        ev("b", "DUP", "2024-01-01T09:00:00.1234568Z"),
        pick="latest",
    )
    assert later.resolve("DUP") == "b"


def test_long_candidate_lists_are_cut() -> None:
    resolver = loaded(*(ev(f"id-{i}", "DUP", f"2024-01-0{i + 1}T00:00:00Z") for i in range(8)))
    problem = resolver.resolve("DUP")
    assert isinstance(problem, Problem)
    assert problem.reason.startswith("8 events with serial 'DUP': id-7 (2024-01-08T00:00:00Z)")
    assert "id-3 (2024-01-04T00:00:00Z) and 3 more; pass --pick latest" in problem.reason


def test_events_without_key_or_id_are_not_indexed() -> None:
    resolver = loaded(ev("a", None), ev("b", "  "), {SERIAL: "X"}, ev("", "Y"), ev("c", "Z"))
    assert resolver.to_json()["matches"] == {"z": [["c", "2024-01-01T00:00:00Z"]]}


def test_resolve_before_load_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="before load"):
        KeyResolver(SERIAL).resolve("X")


@pytest.mark.parametrize(
    ("key", "pick", "message"),
    [
        pytest.param("id", None, "--key must be", id="key"),
        pytest.param(SERIAL, "first", "--pick must be latest", id="pick"),
    ],
)
def test_bad_key_or_pick(key: str, pick: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        KeyResolver(key, pick=pick)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deviceSerialNumber", SERIAL),
        ("Device Serial Number", SERIAL),
        ("serial", SERIAL),
        ("managed_device_name", "managedDeviceName"),
        ("device name", "managedDeviceName"),
    ],
)
def test_key_option_spellings(text: str, expected: str) -> None:
    assert key_property(text) == expected


@pytest.mark.parametrize("text", ["id", "userPrincipalName", "nonsense", ""])
def test_key_option_refuses_other_properties(text: str) -> None:
    with pytest.raises(UsageError, match="--key must be deviceSerialNumber or managedDeviceName"):
        key_property(text)


# --- cache -------------------------------------------------------------------------------------


def test_cache_round_trip() -> None:
    resolver = loaded(ev("a", "DUP", "2024-01-01T00:00:00Z"), ev("b", "dup", ""), ev("c", "X"))
    data = json.loads(json.dumps(resolver.to_json()))
    again = KeyResolver(SERIAL, pick="latest")
    assert again.restore(data)
    assert again.resolve("dup") == "a"
    assert again.resolve("x") == "c"


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"version": 2, "key": SERIAL, "matches": {}},
        {"version": 1, "key": "managedDeviceName", "matches": {}},
        {"version": 1, "key": SERIAL, "matches": []},
        {"version": 1, "key": SERIAL, "matches": {"x": [["only-id"]]}},
        {"version": 1, "key": SERIAL, "matches": {"x": "id"}},
        {"version": 1, "key": SERIAL, "matches": {}, "padded": {"1": "0001"}},
    ],
)
def test_a_cache_that_does_not_fit_is_not_used(data: object) -> None:
    resolver = KeyResolver(SERIAL)
    assert not resolver.restore(data)
    with pytest.raises(RuntimeError):
        resolver.resolve("x")


# --- reading the tenant (MockTransport) ---------------------------------------------------------


class Tenant:
    """A MockTransport Graph: the event list in pages of 2, optional failures first."""

    def __init__(self, events: list[dict[str, Any]], *failures: httpx.Response) -> None:
        self.events = events
        self.failures = list(failures)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            return self.failures.pop(0)
        query = parse_qs(urlsplit(str(request.url)).query)
        offset = int(query.get("skip", ["0"])[0])
        body: dict[str, Any] = {"value": self.events[offset : offset + 2]}
        if offset + 2 < len(self.events):
            body["@odata.nextLink"] = (
                f"{ROOT}/beta/deviceManagement/autopilotEvents?skip={offset + 2}"
            )
        return httpx.Response(200, json=body)


def _keyed_file(tmp_path: Path, *serials: str) -> Path:
    return write_csv(tmp_path / "keyed.csv", [{SERIAL: s, "osVersion": "10.0.1"} for s in serials])


async def _load(
    resolver: KeyResolver,
    tmp_path: Path,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    ledger: Ledger | None = None,
    resume: bool = False,
    tokens: StaticTokenProvider | None = None,
    max_retries: int = 8,
    clock: FakeClock | None = None,
) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        await resolver.load(
            out_dir=tmp_path,
            ledger=ledger,
            resume=resume,
            tokens=tokens or StaticTokenProvider(TOKEN),
            graph_root=ROOT,
            read_limit=Rate(1000, 20),
            max_retries=max_retries,
            clock=clock or FakeClock(),
            http=http,
        )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "state.sqlite")
    yield ledger
    ledger.close()


@pytest.mark.anyio
async def test_load_reads_every_page_once_and_keeps_only_wanted_keys(
    tmp_path: Path, ledger: Ledger
) -> None:
    tenant = Tenant([ev("a", "A"), ev("b", "B"), ev("c", "c"), ev("d", "D"), ev("e", "C")])
    resolver = KeyResolver(SERIAL)
    resolver.want(prepare(_keyed_file(tmp_path, "a", " C "), InputOptions(key=SERIAL)))
    await _load(resolver, tmp_path, tenant, ledger=ledger)
    assert len(tenant.requests) == 3
    first = parse_qs(urlsplit(str(tenant.requests[0].url)).query)
    assert first == {"$top": ["999"], "$select": ["id,deviceSerialNumber,eventDateTime"]}
    assert resolver.events_read == 5
    assert resolver.resolve("A") == "a"
    assert isinstance(resolver.resolve("B"), Problem)  # not in the input: not kept
    assert isinstance(resolver.resolve("c"), Problem)  # two events: c and e
    saved = json.loads((tmp_path / KEYS_FILE).read_text())
    assert saved["matches"] == {
        "a": [["a", "2024-01-01T00:00:00Z"]],
        "c": [["c", "2024-01-01T00:00:00Z"], ["e", "2024-01-01T00:00:00Z"]],
    }
    assert ledger.get_cache("keys:deviceSerialNumber") == saved


@pytest.mark.anyio
async def test_resume_uses_the_ledger_cache_and_reads_nothing(
    tmp_path: Path, ledger: Ledger
) -> None:
    first = KeyResolver(SERIAL)
    await _load(first, tmp_path, Tenant([ev("a", "A")]), ledger=ledger)

    def no_graph(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"resume must not read the tenant: {request.url}")

    again = KeyResolver(SERIAL)
    await _load(again, tmp_path, no_graph, ledger=ledger, resume=True, tokens=None)
    assert again.from_cache
    assert again.resolve("a") == "a"


@pytest.mark.anyio
async def test_resume_without_a_cache_reads_again(tmp_path: Path, ledger: Ledger) -> None:
    tenant = Tenant([ev("a", "A")])
    resolver = KeyResolver(SERIAL)
    await _load(resolver, tmp_path, tenant, ledger=ledger, resume=True)
    assert not resolver.from_cache
    assert len(tenant.requests) == 1


@pytest.mark.anyio
async def test_without_a_token_the_ids_cannot_be_resolved(tmp_path: Path) -> None:
    resolver = KeyResolver(SERIAL)
    with pytest.raises(UsageError, match="reads the tenant's events"):
        await resolver.load(
            out_dir=tmp_path,
            ledger=None,
            resume=False,
            tokens=None,
            graph_root=ROOT,
            read_limit=Rate(1000, 20),
            max_retries=1,
        )


@pytest.mark.anyio
async def test_throttled_and_failing_pages_are_retried(tmp_path: Path) -> None:
    tenant = Tenant(
        [ev("a", "A"), ev("b", "B"), ev("c", "C")],
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"code": "TooMany"}}),
        httpx.Response(503, json={"error": {"code": "ServiceUnavailable", "message": "busy"}}),
    )
    clock = FakeClock()
    resolver = KeyResolver(SERIAL)
    await _load(resolver, tmp_path, tenant, clock=clock)
    assert clock.now() >= 7  # the Retry-After was honoured (in virtual time)
    assert len(tenant.requests) == 4
    assert resolver.resolve("c") == "c"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        pytest.param(403, AuthError, "DeviceManagementManagedDevices.Read.All", id="403"),
        pytest.param(503, RunAborted, "did not serve the event list after 2 retries", id="503"),
        pytest.param(400, RunAborted, "listing the autopilot events failed: 400", id="400"),
    ],
)
async def test_a_tenant_that_cannot_be_read_stops_the_run(
    tmp_path: Path, status: int, error: type[Exception], message: str
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json={"error": {"code": "Nope", "message": "no"}}, headers={"request-id": "r1"}
        )

    with pytest.raises(error, match=message):
        await _load(KeyResolver(SERIAL), tmp_path, refuse, max_retries=2)
    assert not (tmp_path / KEYS_FILE).exists()


# --- the mapper in key mode ----------------------------------------------------------------------


def test_key_mode_refuses_an_id_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ids.csv", [{"id": "x", SERIAL: "A", "osVersion": "1"}])
    with pytest.raises(InputFileError, match="holds event ids, but --key deviceSerialNumber"):
        prepare(path, InputOptions(key=SERIAL))


def test_key_mode_needs_the_key_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "names.csv", [{"managedDeviceName": "PC1", "osVersion": "1"}])
    with pytest.raises(InputFileError, match="no deviceSerialNumber column"):
        prepare(path, InputOptions(key=SERIAL))
    with pytest.raises(InputFileError, match="--key deviceSerialNumber to find events"):
        prepare(path, InputOptions())


def test_key_mode_rows(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "keyed.csv",
        [
            {"Serial Number": " a ", "osVersion": "1"},  # "Serial Number" via --map below
            {"Serial Number": "", "osVersion": "2"},
            {"Serial Number": "<null>", "osVersion": "3"},
            {"Serial Number": "UNKNOWN", "osVersion": "4"},
            {"Serial Number": "dup", "osVersion": "5"},
            {"Serial Number": " DUP", "osVersion": "6"},
            {"Serial Number": "b", "osVersion": ""},
            {"Serial Number": "has space/slash", "osVersion": "8"},
        ],
    )
    column_map = tmp_path / "map.toml"
    column_map.write_text('[columns]\n"Serial Number" = "deviceSerialNumber"\n')
    options = InputOptions(key=SERIAL, map_file=column_map)
    resolver = loaded(
        ev("id-a", "A"), ev("id-b", "B"), ev("id-dup", "DUP"), ev("id-s", "HAS SPACE/SLASH")
    )
    prepared = prepare(path, options, resolve=resolver.resolve)
    assert prepared.id_column == "Serial Number"
    mapped = {raw.number: m for raw, m in prepared.rows()}
    # The key identifies the event: it is never sent back in the body.
    assert mapped[2] == Update(2, "id-a", {"osVersion": "1"})
    assert mapped[3] == Invalid(
        3,
        "",
        (
            Problem(
                "Serial Number",
                "",
                "missing deviceSerialNumber (with --key deviceSerialNumber every row needs it)",
            ),
        ),
    )
    assert isinstance(mapped[4], Invalid)
    assert str(mapped[4].problems[0]) == (
        "Serial Number: the deviceSerialNumber cannot be <null> (got '<null>')"
    )
    assert mapped[5] == Invalid(
        5, "", (Problem("Serial Number", "", "no event with serial 'UNKNOWN'"),)
    )
    # The same key on two rows: both invalid, as for ids (even though the key resolves).
    for number, other in ((6, 7), (7, 6)):
        row = mapped[number]
        assert isinstance(row, Invalid)
        assert row.event_id == "id-dup"
        assert row.message == (
            f"Serial Number: deviceSerialNumber also on row {other} "
            f"(rows with the same key are never sent) (got {'dup' if number == 6 else 'DUP'!r})"
        )
    assert mapped[8] == Skipped(8, "id-b")
    assert mapped[9] == Update(9, "id-s", {"osVersion": "8"})


def test_key_mode_without_a_resolver_checks_only(tmp_path: Path) -> None:
    path = _keyed_file(tmp_path, "A", "")
    rows = [m for _, m in prepare(path, InputOptions(key=SERIAL)).rows()]
    assert rows[0] == Update(2, "", {"osVersion": "10.0.1"})
    assert isinstance(rows[1], Invalid)


# --- end to end: the real CLI against the emulator ---------------------------------------------


def _tenant() -> tuple[EventStore, dict[str, str]]:
    """40 seeded events plus the interesting ones; returns the store and name → id."""
    import random

    store = EventStore()
    seeded = store.seed(40, seed=8)
    rng = random.Random(99)  # not the seed's: the same seed would make the same ids
    ids = {"seeded": seeded[3]}
    specials = {
        "zeros": ("00012345", "2024-03-01T08:00:00.0000000Z"),
        "plain": ("12345", "2024-03-01T08:00:00.0000000Z"),
        "dup_old": ("DUP-77", "2024-03-02T12:00:00.0000000+02:00"),  # 10:00 UTC
        "dup_new": ("dup-77", "2024-03-02T11:00:00.0000000Z"),
    }
    for name, (serial, when) in specials.items():
        event = generate_event(rng)
        event[SERIAL] = serial
        event["eventDateTime"] = when
        store.add(event)
        ids[name] = str(event["id"])
    return store, ids


def _emulator(factory: EmulatorFactory, store: EventStore) -> EmulatorServer:
    return factory(
        EmulatorConfig(
            token=TOKEN,
            write_limit=Rate(1000, 1),
            tenant_write_limit=Rate(2000, 1),
            read_limit=Rate(10_000, 1),
            tenant_read_limit=Rate(20_000, 1),
        ),
        store=store,
    )


@pytest.mark.e2e
def test_serial_keyed_file_end_to_end(emulator_factory: EmulatorFactory, tmp_path: Path) -> None:
    store, ids = _tenant()
    server = _emulator(emulator_factory, store)
    seeded_serial = str(store.get(ids["seeded"])[SERIAL])  # type: ignore[index]
    src = write_csv(
        tmp_path / "serials.csv",
        [
            {"Device Serial Number": " 00012345 ", "userPrincipalName": "zeros@contoso.com"},
            {"Device Serial Number": "12345", "userPrincipalName": "plain@contoso.com"},
            {"Device Serial Number": "NOPE-999", "userPrincipalName": "nobody@contoso.com"},
            {"Device Serial Number": "Dup-77", "userPrincipalName": "dup@contoso.com"},
            {"Device Serial Number": seeded_serial.lower(), "userPrincipalName": "s@contoso.com"},
        ],
    )
    args = ["--graph-url", server.url, "--write-limit", "1000/1", "--read-limit", "10000/1"]

    checked = cli_here("validate", src, "--key", "serial")
    assert checked.returncode == 0, checked.stderr
    assert "event ids are resolved from the tenant when you run the file" in checked.stderr

    first = cli("run", src, "--key", "deviceSerialNumber", "--out", tmp_path / "r1", *args)
    assert first.returncode == 1, first.stderr
    results = read_csv(tmp_path / "r1" / "results.csv")
    assert [(r["row"], r["id"], r["outcome"]) for r in results] == [
        ("2", ids["zeros"], "updated"),
        ("3", ids["plain"], "updated"),
        ("4", "", "invalid"),
        ("5", "", "invalid"),
        ("6", ids["seeded"], "updated"),
    ]
    assert results[2]["error_message"] == ("Device Serial Number: no event with serial 'NOPE-999'")
    assert results[3]["error_message"] == (
        f"Device Serial Number: 2 events with serial 'Dup-77': "
        f"{ids['dup_new']} (2024-03-02T11:00:00.0000000Z), "
        f"{ids['dup_old']} (2024-03-02T12:00:00.0000000+02:00); "
        "pass --pick latest to take the newest"
    )
    assert store.get(ids["zeros"])["userPrincipalName"] == "zeros@contoso.com"  # type: ignore[index]
    assert store.get(ids["plain"])["userPrincipalName"] == "plain@contoso.com"  # type: ignore[index]
    # The key is not sent: the serial keeps its spelling in the tenant.
    assert store.get(ids["seeded"])[SERIAL] == seeded_serial  # type: ignore[index]
    patched = server.stats()["patches"]
    assert isinstance(patched, dict)
    assert sorted(patched) == sorted([ids["zeros"], ids["plain"], ids["seeded"]])
    assert (tmp_path / "r1" / KEYS_FILE).exists()

    # --resume resolves from the ledger's cache: not one more read of the tenant. (The run
    # finished, and a finished run is not resumed at all: it is made to look killed first.)
    with closing(sqlite3.connect(tmp_path / "r1" / "state.sqlite")) as db, db:
        db.execute("DELETE FROM meta WHERE key = 'finished'")
    reads = server.stats()["reads"]
    resumed = cli_here(
        "run", src, "--key", "deviceSerialNumber", "--out", tmp_path / "r1", "--resume", *args
    )
    assert resumed.returncode == 1, resumed.stderr
    assert server.stats()["reads"] == reads
    assert "not read again" in resumed.stderr
    assert read_csv(tmp_path / "r1" / "results.csv") == results

    latest = cli_here(
        "run",
        src,
        "--key",
        "deviceSerialNumber",
        "--pick",
        "latest",
        "--out",
        tmp_path / "r2",
        *args,
    )
    assert latest.returncode == 1, latest.stderr  # NOPE-999 stays invalid
    outcomes = [(r["id"], r["outcome"]) for r in read_csv(tmp_path / "r2" / "results.csv")]
    assert outcomes[3] == (ids["dup_new"], "updated")
    assert outcomes[2] == ("", "invalid")
    patched = server.stats()["patches"]
    assert isinstance(patched, dict)
    assert patched.get(ids["dup_new"]) == 1
    assert ids["dup_old"] not in patched


@pytest.mark.e2e
def test_dry_run_with_key_reads_but_never_writes(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    store, ids = _tenant()
    server = _emulator(emulator_factory, store)
    src = write_csv(tmp_path / "s.csv", [{"deviceSerialNumber": "00012345", "osVersion": "1.2"}])
    done = cli_here(
        "run", src, "--key", SERIAL, "--dry-run", "--graph-url", server.url, "--out", tmp_path / "d"
    )
    assert done.returncode == 0, done.stderr
    planned = json.loads((tmp_path / "d" / "requests.jsonl").read_text())
    assert planned["url"].endswith(f"/autopilotEvents/{ids['zeros']}")
    assert planned["body"] == {"osVersion": "1.2"}
    assert server.stats()["writes"] == 0

    no_token = cli_here(
        "run", src, "--key", SERIAL, "--dry-run", "--graph-url", server.url, token=None
    )
    assert no_token.returncode == 2
    assert "Error:" in no_token.stderr
