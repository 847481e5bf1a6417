"""`export` (batch/export.py): the tenant's events to CSV/XLSX, valid input as they are.

The helpers and the writer through httpx.MockTransport; the issue's round trip (5,000 events →
export → `run --only-changed` writes nothing; one edited cell writes exactly that cell), the
filters and the errors through the real CLI against the emulator.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openpyxl
import pytest

from batch.auth import StaticTokenProvider
from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.errors import BatchError, InputFileError, RunAborted, UsageError
from batch.export import (
    ExportOptions,
    cell_text,
    export_events,
    load_serials,
    make_export_progress,
    parse_columns,
    parse_since,
)
from batch.mapper import InputOptions, prepare, template_columns
from batch.model import Rate, Skipped, Update
from batch.reader import open_input
from batch.report import neutralise_cell
from batch.schema import PROPERTIES, canonical
from batch.stamp import NOT_EDITED, STAMP_COLUMN, Stamper
from batch.testing import FakeClock
from tests.conftest import EmulatorFactory
from tests.e2e import cli, cli_here, read_csv

ROOT = "https://graph.example.test"
TOKEN = "test-token"


# --- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("", ""),
        ("00123", "00123"),
        ("=1+1", "=1+1"),
        (7, "7"),
        (True, "true"),
        ({"a": [1]}, '{"a":[1]}'),
    ],
)
def test_cell_text(value: Any, text: str | None) -> None:
    assert cell_text(value) == text


def test_parse_columns_puts_id_first_and_accepts_header_spellings() -> None:
    assert parse_columns("Device Serial Number, osversion,id,osVersion") == (
        "id",
        "deviceSerialNumber",
        "osVersion",
    )
    assert parse_columns("eventId") == ("id",)
    assert parse_columns("targetedAppCount") == ("id", "targetedAppCount")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("id,serial", "'serial' is not a property \\(did you mean dev", id="hint"),
        pytest.param(" , ", "at least one property", id="empty"),
    ],
)
def test_parse_columns_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_columns(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
        ("2024-05-01T09:30:00+02:00", dt.datetime(2024, 5, 1, 7, 30, tzinfo=dt.UTC)),
        (" 2024-05-01 09:30Z ", dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)),
    ],
)
def test_parse_since(text: str, expected: dt.datetime) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["2024-05-01T09:30:00", "yesterday", "2024-02-30", ""])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_since(text)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("s.txt", '\ufeff5CG1\n\n "00042" \n"5cg2"\n', id="lines"),
        pytest.param("s.csv", "Name,Serial Number\nx,5CG1\ny, 00042\nz,5cg2\n", id="csv"),
        pytest.param("s.csv", "deviceSerialNumber;x\n5CG1;1\n00042;2\n5CG2;3\n", id="semicolon"),
    ],
)
def test_load_serials(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load_serials(path) == {"5cg1", "00042", "5cg2"}


def test_load_serials_from_excel(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Serial", "note"])
    sheet.append(["00042", "kept as text"])
    sheet.append(["5CG1", ""])
    sheet.append([456, "a number shown as 000456"])
    sheet["A4"].number_format = "000000"
    book.save(tmp_path / "s.xlsx")
    assert load_serials(tmp_path / "s.xlsx") == {"00042", "5cg1", "000456"}


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        pytest.param("a,b\n1,2\n", UsageError, "no serial number column", id="no-column"),
        pytest.param("\n \n", InputFileError, "holds no serial numbers", id="empty"),
        pytest.param("Serial\n", InputFileError, "holds no serial numbers", id="header-only"),
    ],
)
def test_load_serials_refuses(
    tmp_path: Path, content: str, error: type[Exception], message: str
) -> None:
    path = tmp_path / "s.csv"
    path.write_text(content)
    with pytest.raises(error, match=message):
        load_serials(path)
    with pytest.raises(InputFileError, match="no such file"):
        load_serials(tmp_path / "missing.txt")


# --- export_events over MockTransport --------------------------------------------------------

SPECIAL: list[dict[str, Any]] = [
    {
        "id": "0001-aaaa",
        "deviceSerialNumber": "000123",
        "enrollmentFailureDetails": '=HYPERLINK("http://evil.example","x")',
        "osVersion": None,
        "managedDeviceName": "Café-ü 電腦",
        "targetedAppCount": 5,  # legacy: not a default column
        "eventDateTime": "2024-01-01T00:00:00.1234567+01:00",
        "deploymentDuration": "-PT1M2.5S",
        "enrollmentState": "enrolled",
        "userPrincipalName": 'line one\nline two, with "quotes"',
    },
    {
        "id": "0002-bbbb",
        "deviceSerialNumber": "5CG1234XYZ",
        "windowsAutopilotDeploymentProfileDisplayName": "+ 1 - @ odd",
        "eventDateTime": "2024-06-01T12:00:00Z",
        "userPrincipalName": "bell\x07@contoso.com",
    },
    {"id": "0003-cccc", "deviceSerialNumber": None, "eventDateTime": None},
]


class Pages:
    """The event list in pages of 2; `fail_after` pages are served, then a 400."""

    def __init__(self, events: list[dict[str, Any]], fail_after: int | None = None) -> None:
        self.events = events
        self.fail_after = fail_after
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_after is not None and len(self.requests) > self.fail_after:
            return httpx.Response(400, json={"error": {"code": "BadRequest", "message": "no"}})
        query = parse_qs(urlsplit(str(request.url)).query)
        offset = int(query.get("skip", ["0"])[0])
        body: dict[str, Any] = {"value": self.events[offset : offset + 2]}
        if offset + 2 < len(self.events):
            body["@odata.nextLink"] = (
                f"{ROOT}/beta/deviceManagement/autopilotEvents?skip={offset + 2}"
            )
        return httpx.Response(200, json=body)


async def _export(options: ExportOptions, pages: Pages) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(pages)) as http:
        return await export_events(
            options, tokens=StaticTokenProvider(TOKEN), clock=FakeClock(), http=http
        )


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
async def test_exported_values_read_back_as_the_wire_values(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"events{suffix}"
    pages = Pages(SPECIAL)
    result = await _export(ExportOptions(out=out, graph_root=ROOT), pages)
    assert (result.read, result.written, result.pages) == (3, 3, 2)
    query = parse_qs(urlsplit(str(pages.requests[0].url)).query)
    assert query["$top"] == ["999"]
    assert query["$select"] == [",".join(template_columns())]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # noqa: ASYNC240 (no .partial)

    source = open_input(out)
    assert source.headers == [*template_columns(), STAMP_COLUMN]
    rows = list(source)
    excel = suffix == ".xlsx"
    for row, event in zip(rows, SPECIAL, strict=True):
        # The stamp records what the file shows (the workbook cannot hold the bell character).
        shown = {
            k: v.replace("\x07", "") if excel and isinstance(v, str) else v
            for k, v in event.items()
        }
        assert row.cells[STAMP_COLUMN] == Stamper(template_columns())(shown)
        for header in template_columns():
            wire = event.get(header)
            expected = "" if wire is None else str(wire)
            # XML cannot hold the bell; CSV holds '=... for =..., which the mapper reads as =...
            expected = expected.replace("\x07", "") if excel else neutralise_cell(expected)
            assert row.cells[header] == expected, header
    assert result.altered_cells == (1 if excel else 0)

    if not excel:
        # Formula-looking cells are neutralised in the CSV; the reader took the ' off again.
        text = out.read_text(encoding="utf-8-sig")
        assert "'=HYPERLINK(" in text and "'-PT1M2.5S" in text and "'+ 1 - @ odd" in text

    # Valid input as it is: untouched, no row has anything to write (its stamp says so) ...
    prepared = prepare(out, InputOptions())
    assert [m for _, m in prepared.rows()] == [
        Skipped(2, "0001-aaaa", NOT_EDITED),
        Skipped(3, "0002-bbbb", NOT_EDITED),
        Skipped(4, "0003-cccc"),
    ]
    # ... and without the stamps each row maps to exactly the event's (non-null) values.
    prepared.stamp_column = None
    for (_, mapped), event in zip(prepared.rows(), SPECIAL, strict=True):
        body = {
            k: v for k, v in event.items() if k in source.headers and k != "id" and v is not None
        }
        if excel and "userPrincipalName" in body:
            body["userPrincipalName"] = str(body["userPrincipalName"]).replace("\x07", "")
        if body:
            # (with validate's warnings, such as a formula-looking text: sent as written)
            assert isinstance(mapped, Update)
            assert (mapped.event_id, mapped.body) == (str(event["id"]), body)
        else:  # nothing but an id: nothing to change
            assert mapped == Skipped(mapped.number, str(event["id"]))

    if excel:
        sheet = openpyxl.load_workbook(out, read_only=True)["Events"]
        cells = next(iter(sheet.iter_rows(min_row=2, max_row=2)))
        # Every cell is a text cell in the text format: Excel keeps what is typed as text too.
        assert {c.number_format for c in cells if c.value is not None} == {"@"}
        assert {c.data_type for c in cells if c.value is not None} == {"s"}
        sheet.parent.close()


@pytest.mark.anyio
async def test_columns_and_client_side_filters(tmp_path: Path) -> None:
    out = tmp_path / "some.csv"
    options = ExportOptions(
        out=out,
        graph_root=ROOT,
        columns=("id", "osVersion"),
        serials=frozenset({"000123", "5cg1234xyz", "absent"}),
        since=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )
    pages = Pages(SPECIAL)
    result = await _export(options, pages)
    query = parse_qs(urlsplit(str(pages.requests[0].url)).query)
    assert query["$select"] == ["id,osVersion,deviceSerialNumber,eventDateTime"]
    # 0001 happened at 2023-12-31T23:00Z (before --since); 0003 has no serial.
    stamp = Stamper(("id", "osVersion"))(SPECIAL[1])
    assert read_csv(out) == [{"id": "0002-bbbb", "osVersion": "", STAMP_COLUMN: stamp}]
    assert (result.read, result.written) == (3, 1)
    assert result.unmatched_serials == ("absent",)


@pytest.mark.anyio
async def test_an_unmatched_serial_is_named_as_the_file_spells_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    serials = tmp_path / "serials.txt"
    serials.write_text("5CG1234XYZ\n  NOPE \nNope\n", encoding="utf-8")
    loaded = load_serials(serials)
    assert loaded == {"5cg1234xyz", "nope"}  # matched case-insensitively
    options = ExportOptions(out=tmp_path / "some.csv", graph_root=ROOT, serials=loaded)
    with caplog.at_level("WARNING", logger="batch.export"):
        result = await _export(options, Pages(SPECIAL))
    # As first written (trimmed), not folded: the admin searches the file for it.
    assert result.unmatched_serials == ("NOPE",)
    assert "matches no event: NOPE" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
async def test_a_failed_export_leaves_the_old_file(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"events{suffix}"
    out.write_bytes(b"the previous export")
    events = [{"id": f"id-{i}", "osVersion": "1"} for i in range(9)]
    with pytest.raises(RunAborted, match="listing the autopilot events failed: 400"):
        await _export(ExportOptions(out=out, graph_root=ROOT, force=True), Pages(events, 2))
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # noqa: ASYNC240


@pytest.mark.anyio
async def test_a_file_that_cannot_be_written_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: object, rows: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("batch.export._CsvSink.write_rows", full)
    out = tmp_path / "events.csv"
    with pytest.raises(BatchError, match="cannot write: No space left on device"):
        await _export(ExportOptions(out=out, graph_root=ROOT), Pages(SPECIAL))
    assert not list(tmp_path.iterdir())  # noqa: ASYNC240


@pytest.mark.parametrize(
    ("name", "force", "message"),
    [
        pytest.param("old.csv", False, "already exists \\(pass --force", id="exists"),
        pytest.param("events.txt", True, "must be a .csv or .xlsx file", id="suffix"),
        pytest.param("missing/events.csv", True, "does not exist", id="folder"),
        pytest.param("adir.xlsx", True, "is a folder", id="dir"),
    ],
)
def test_bad_targets(tmp_path: Path, name: str, force: bool, message: str) -> None:
    (tmp_path / "old.csv").write_text("x")
    (tmp_path / "adir.xlsx").mkdir()
    with pytest.raises(UsageError, match=message):
        ExportOptions(out=tmp_path / name, force=force).check()


# --- end to end: the real CLI against the emulator ---------------------------------------------


def _emulator(factory: EmulatorFactory, store: EventStore) -> EmulatorServer:
    return factory(
        EmulatorConfig(
            token=TOKEN,
            write_limit=Rate(1000, 1),
            tenant_write_limit=Rate(2000, 1),
            read_limit=Rate(100_000, 1),
            tenant_read_limit=Rate(200_000, 1),
        ),
        store=store,
    )


def _run_only_changed(server: EmulatorServer, src: Path, out: Path) -> list[dict[str, str]]:
    done = cli_here(
        "run",
        src,
        "--only-changed",
        "--graph-url",
        server.url,
        "--write-limit",
        "1000/1",
        "--read-limit",
        "100000/1",
        "--out",
        out,
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    return read_csv(out / "results.csv")


@pytest.mark.e2e
def test_round_trip_of_5000_events(emulator_factory: EmulatorFactory, tmp_path: Path) -> None:
    """The issue's must-hold: export to CSV and XLSX, run each untouched: zero PATCHes."""
    store = EventStore()
    ids = store.seed(5000, seed=31)
    server = _emulator(emulator_factory, store)
    digest = store.digest()
    for suffix in (".csv", ".xlsx"):
        out = tmp_path / f"tenant{suffix}"
        done = cli("export", out, "--graph-url", server.url, "--read-limit", "100000/1", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["events_written"] == 5000
        assert summary["pages"] == 100  # Intune serves at most 50 a page, whatever $top asks
        reads = server.stats()["reads"]
        results = _run_only_changed(server, out, tmp_path / f"run{suffix}")
        assert [r["id"] for r in results] == ids
        # Every row's stamp says it was not edited: not written, and not even read.
        assert {r["outcome"] for r in results} == {"skipped"}
        assert {r["error_message"] for r in results} == {NOT_EDITED}
        assert server.stats()["reads"] == reads
    stats = server.stats()
    assert stats["writes"] == 0
    assert stats["patches"] == {}
    assert store.digest() == digest


def _edit_csv(path: Path, row: int, column: str, value: str) -> str:
    """Set one cell of a CSV (row numbered as Excel shows it); returns that row's id."""
    rows = read_csv(path)
    rows[row - 2][column] = value
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows[row - 2]["id"]


def _edit_xlsx(path: Path, row: int, column: str, value: str) -> str:
    """Set one cell as a user in Excel would (openpyxl keeps the cell's text format)."""
    book = openpyxl.load_workbook(path)
    sheet = book["Events"]
    headers = [c.value for c in sheet[1]]
    sheet.cell(row=row, column=headers.index(column) + 1).value = value
    event_id = str(sheet.cell(row=row, column=1).value)
    book.save(path)
    book.close()
    return event_id


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("suffix", "column", "value"),
    [
        pytest.param(".csv", "enrollmentState", "Blocked", id="csv-enum"),
        pytest.param(".xlsx", "deviceSerialNumber", "0042424242", id="xlsx-serial-leading-zeros"),
    ],
)
def test_editing_one_cell_writes_exactly_that_cell(
    emulator_factory: EmulatorFactory, tmp_path: Path, suffix: str, column: str, value: str
) -> None:
    store = EventStore()
    store.seed(150, seed=12)
    server = _emulator(emulator_factory, store)
    out = tmp_path / f"tenant{suffix}"
    done = cli_here("export", out, "--graph-url", server.url, "--quiet")
    assert done.returncode == 0, done.stderr
    edit = _edit_csv if suffix == ".csv" else _edit_xlsx
    event_id = edit(out, 77, column, value)
    results = _run_only_changed(server, out, tmp_path / "run")
    changed = [r for r in results if r["outcome"] != "skipped"]
    assert [(r["row"], r["id"], r["outcome"], r["changed_fields"]) for r in changed] == [
        ("77", event_id, "updated", column)
    ]
    assert server.stats()["patches"] == {event_id: 1}
    event = store.get(event_id)
    assert event is not None
    assert event[column] == ("blocked" if column == "enrollmentState" else value)


@pytest.mark.e2e
def test_export_filters_and_errors_through_the_cli(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    store = EventStore()
    ids = store.seed(60, seed=5)
    server = _emulator(emulator_factory, store)
    events = [store.get(i) for i in ids]
    serials = [str(e["deviceSerialNumber"]) for e in events[:3] if e is not None]
    serial_file = tmp_path / "serials.txt"
    serial_file.write_text(f"{serials[0].lower()}\n  {serials[1]}  \n{serials[2]}\nNOT-THERE\n")
    since = "2024-06-01"
    cutoff = parse_since(since)

    def recent(event: dict[str, Any] | None) -> bool:
        assert event is not None
        instant = canonical(PROPERTIES["eventDateTime"], event["eventDateTime"])
        assert isinstance(instant, tuple)
        return bool(instant[0] >= cutoff)

    out = tmp_path / "some.xlsx"
    done = cli(
        "export",
        out,
        "--graph-url",
        server.url,
        "--columns",
        "Device Serial Number,osVersion",
        "--serial-file",
        serial_file,
        "--since",
        since,
    )
    assert done.returncode == 0, done.stderr
    expected = [e for e in events[:3] if recent(e)]
    rows = list(open_input(out))
    assert [r.cells for r in rows] == [
        {
            "id": e["id"],
            "deviceSerialNumber": e["deviceSerialNumber"],
            "osVersion": e["osVersion"],
            STAMP_COLUMN: Stamper(("id", "deviceSerialNumber", "osVersion"))(e),
        }
        for e in expected
        if e is not None
    ]
    assert "1 serial of the serial file matches no event: NOT-THERE" in done.stderr
    assert done.stdout.startswith(f"wrote {out}: {len(expected)} events of 60 read, 3 columns")

    # The errors: each is one line and an exit code, before (or instead of) a file.
    again = cli_here("export", out, "--graph-url", server.url)
    assert again.returncode == 2
    assert again.stderr == f"Error: {out} already exists (pass --force to overwrite it)\n"

    bad = cli_here("export", tmp_path / "x.csv", "--columns", "id,serial")
    assert bad.returncode == 2
    assert "'serial' is not a property (did you mean deviceSerialNumber?)" in bad.stderr

    refused = cli_here("export", tmp_path / "y.csv", "--graph-url", server.url, token="wrong")
    assert refused.returncode == 3, refused.stderr
    assert "Error: Graph rejected a freshly obtained access token" in refused.stderr
    assert not (tmp_path / "y.csv").exists()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
async def test_a_value_that_starts_with_a_quote_reads_back_as_it_was(
    tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"events{suffix}"
    events = [{"id": "q-1", "osVersion": "'=not a formula", "managedDeviceName": "'-dash"}]
    await _export(
        ExportOptions(out=out, graph_root=ROOT, columns=("id", "osVersion")), Pages(events)
    )
    prepared = prepare(out, InputOptions())
    prepared.stamp_column = None
    ((_, mapped),) = list(prepared.rows())
    assert isinstance(mapped, Update)
    assert mapped.body == {"osVersion": "'=not a formula"}


@pytest.mark.anyio
async def test_export_times_itself_on_the_clock_it_is_given(tmp_path: Path) -> None:
    # One request per 10 s over five pages: 40 s of waiting on the fake clock, none for real.
    clock = FakeClock(start=1000.0)
    events = [{"id": f"id-{i}", "osVersion": "1"} for i in range(9)]
    options = ExportOptions(out=tmp_path / "e.csv", graph_root=ROOT, read_limit=Rate(1, 10))
    started = time.monotonic()
    async with httpx.AsyncClient(transport=httpx.MockTransport(Pages(events))) as http:
        result = await export_events(
            options, tokens=StaticTokenProvider(TOKEN), clock=clock, http=http
        )
    assert result.pages == 5
    assert result.elapsed == pytest.approx(clock.now() - 1000.0) and result.elapsed >= 40
    assert time.monotonic() - started < 30


def test_export_progress_lines_follow_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    progress = make_export_progress(quiet=False, every=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="batch.export"):
        progress.start("export to e.csv")
        clock.advance(5)
        progress.update(read=50, written=50, throttled=0)  # not yet: 5 s < 10 s
        clock.advance(5)
        progress.update(read=100, written=90, throttled=1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "export to e.csv: reading the tenant's autopilot events",
        "export: 100 events read, 90 written (10 events/s, 429s 1)",
    ]
