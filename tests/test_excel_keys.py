"""Excel cells in `--key` and text columns: the key is what Excel displays, conversions are refused.

A serial typed into a number-formatted column (`000000`: the sheet shows `000456`, the cell holds
456) is looked up, reported and labelled as `000456`, the text the admin sees, for devices and
events alike. A date or TRUE/FALSE cell in a text property (Excel turned typed text into it) makes
the row invalid instead of sending `2026-01-02T00:00:00` or `true`.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore, generate_event
from batch.emulator.devices import DeviceStore, generate_device
from batch.mapper import InputOptions, prepare
from batch.model import Invalid, Rate, Update
from batch.resources import DEVICES
from tests.e2e import TOKEN, cli_here, read_csv, write_csv

DEVICE_SERIAL = "000456"
EVENT_SERIAL = "0023206474"
BIG = 1234567890123456789  # a float in Excel: 1.23457E+18, digits beyond the 15th lost


def workbook(path: Path, rows: list[list[object]], formats: dict[str, str] | None = None) -> Path:
    """An .xlsx with `rows` (header first); `formats` maps a cell (A2) to its number format."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    for ref, code in (formats or {}).items():
        sheet[ref].number_format = code
    book.save(path)
    return path


def _limits() -> dict[str, Rate]:
    return {
        "write_limit": Rate(1000, 1),
        "tenant_write_limit": Rate(2000, 1),
        "read_limit": Rate(10_000, 1),
        "tenant_read_limit": Rate(20_000, 1),
    }


@pytest.fixture
def device_tenant() -> Iterator[tuple[EmulatorServer, str]]:
    """40 seeded devices and one with the zero-padded serial; yields the server and its id."""
    store = DeviceStore()
    store.seed(40, seed=2026)
    device = generate_device(random.Random(456))
    device["serialNumber"] = DEVICE_SERIAL
    store.add(device)
    with EmulatorServer(EmulatorConfig(token=TOKEN, **_limits()), devices=store) as server:
        yield server, str(device["id"])


@pytest.fixture
def event_tenant() -> Iterator[tuple[EmulatorServer, str]]:
    """40 seeded events and one with the zero-padded serial; yields the server and its id."""
    store = EventStore()
    store.seed(40, seed=2026)
    event = generate_event(random.Random(23206474))
    event["deviceSerialNumber"] = EVENT_SERIAL
    store.add(event)
    with EmulatorServer(EmulatorConfig(token=TOKEN, **_limits()), store=store) as server:
        yield server, str(event["id"])


# --- bug 1: the key is the text Excel displays ---------------------------------------------------


@pytest.mark.e2e
def test_zero_padded_device_serial_resolves_at_run(
    device_tenant: tuple[EmulatorServer, str], tmp_path: Path
) -> None:
    server, device_id = device_tenant
    path = workbook(
        tmp_path / "tags.xlsx",
        [["Device Serial Number", "Group Tag"], [456, "EMEA-Lab"], [float(BIG), "Nobody"]],
        {"A2": "000000"},
    )
    key = ("--resource", "devices", "--key", "serialNumber")
    checked = cli_here("validate", path, *key)
    assert "row 2" not in checked.stderr, checked.stderr
    out = tmp_path / "run"
    done = cli_here("run", path, *key, "--dry-run", "--graph-url", server.url, "--out", out)
    assert done.returncode == 1, done.stderr  # row 3 is invalid
    rows = {r["row"]: r for r in read_csv(out / "results.csv")}
    assert (rows["2"]["id"], rows["2"]["outcome"]) == (device_id, "planned")
    assert rows["2"]["serialNumber"] == DEVICE_SERIAL
    assert rows["3"]["outcome"] == "invalid"
    assert rows["3"]["serialNumber"] == "1.23457E+18"
    # The row is named by what its cell shows, not by the float's digits.
    assert "serial 1.23457E+18" in done.stdout + done.stderr
    assert "1234567890123457" not in done.stdout + done.stderr
    failures = read_csv(out / "failures.csv")
    assert [f["Device Serial Number"] for f in failures] == ["1.23457E+18"]
    assert server.devices.get(device_id)["groupTag"] != "EMEA-Lab"  # type: ignore[index]


@pytest.mark.e2e
def test_zero_padded_event_serial_resolves_at_run(
    event_tenant: tuple[EmulatorServer, str], tmp_path: Path
) -> None:
    server, event_id = event_tenant
    path = workbook(
        tmp_path / "serials.xlsx",
        [["Device Serial Number", "userPrincipalName"], [23206474, "zeros@contoso.com"]],
        {"A2": "0000000000"},
    )
    key = ("--key", "deviceSerialNumber")
    checked = cli_here("validate", path, *key)
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "run"
    done = cli_here("run", path, *key, "--dry-run", "--graph-url", server.url, "--out", out)
    assert done.returncode == 0, done.stderr
    (row,) = read_csv(out / "results.csv")
    assert (row["id"], row["outcome"]) == (event_id, "planned")
    assert row["deviceSerialNumber"] == EVENT_SERIAL


def test_padded_and_plain_numbers_are_different_keys(tmp_path: Path) -> None:
    # 456 shown as 000456 and 456 shown as 456 are two serials, not one key on two rows.
    path = workbook(
        tmp_path / "two.xlsx",
        [["Device Serial Number", "Group Tag"], [456, "A"], ["456", "B"], [456, "C"]],
        {"A2": "000000", "A4": "000000"},
    )
    options = InputOptions(key="serialNumber", resource=DEVICES)
    prepared = prepare(path, options)
    assert list(prepared.key_cells()) == [(2, DEVICE_SERIAL), (3, "456"), (4, DEVICE_SERIAL)]
    mapped = {raw.number: (raw.cells["Device Serial Number"], m) for raw, m in prepared.rows()}
    assert isinstance(mapped[3][1], Update)
    assert isinstance(mapped[2][1], Invalid) and isinstance(mapped[4][1], Invalid)
    assert "also on row 4" in mapped[2][1].problems[0].reason
    assert [mapped[n][0] for n in (2, 3, 4)] == [DEVICE_SERIAL, "456", DEVICE_SERIAL]


# --- bug 2: dates and TRUE/FALSE in text properties ---------------------------------------------


def _converted_book(tmp_path: Path) -> Path:
    return workbook(
        tmp_path / "converted.xlsx",
        [
            ["Device Serial Number", "Group Tag"],
            ["SER-1", dt.datetime(2026, 1, 2)],
            ["SER-2", True],
            ["SER-3", "EMEA"],
            ["SER-4", dt.time(12, 30)],
        ],
        {"B2": "d-mmm", "B5": "h:mm"},
    )


def test_date_and_boolean_cells_in_a_text_property_are_invalid(tmp_path: Path) -> None:
    prepared = prepare(
        _converted_book(tmp_path), InputOptions(key="serialNumber", resource=DEVICES)
    )
    mapped = {raw.number: m for raw, m in prepared.rows()}
    date, boolean, plain, time = mapped[2], mapped[3], mapped[4], mapped[5]
    assert isinstance(date, Invalid)
    assert (date.problems[0].column, date.problems[0].value) == ("Group Tag", "2-Jan")
    assert date.problems[0].reason == (
        "a date in a text column (Excel shows 2-Jan): Excel turned the typed text into a date; "
        "format the column as Text and type the value again"
    )
    assert isinstance(boolean, Invalid)
    assert boolean.problems[0].reason == (
        "a TRUE/FALSE value in a text column (Excel shows TRUE): Excel turned the typed text "
        "into a TRUE/FALSE value; format the column as Text and type the value again"
    )
    assert isinstance(time, Invalid)
    assert time.problems[0].reason.startswith("a time in a text column (Excel shows 12:30)")
    assert isinstance(plain, Update) and plain.body == {"groupTag": "EMEA"}


def test_date_cells_in_a_key_or_event_text_column_are_invalid(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "events.xlsx",
        [
            ["id", "deviceSerialNumber", "userPrincipalName", "eventDateTime"],
            ["3e455cab-5cab-3e45-ab5c-453eab5c453e", dt.datetime(2026, 3, 4), False, None],
            ["8a1c2f55-0000-4d2e-9c1b-2b7f3f0e9a11", "SER", None, dt.datetime(2026, 1, 2, 8)],
        ],
        {"B2": "d-mmm", "D3": "yyyy-mm-dd hh:mm"},
    )
    prepared = prepare(path, InputOptions(assume_tz="UTC"))
    first, second = (m for _, m in prepared.rows())
    assert isinstance(first, Invalid)
    assert [(p.column, p.value) for p in first.problems] == [
        ("deviceSerialNumber", "4-Mar"),
        ("userPrincipalName", "FALSE"),
    ]
    # A date in a date property is what it should be.
    assert isinstance(second, Update)
    assert second.body["deviceSerialNumber"] == "SER"
    assert second.body["eventDateTime"] == "2026-01-02T08:00:00+00:00"
    # The key column of a --key file too.
    keyed = workbook(
        tmp_path / "keyed.xlsx",
        [["Device Serial Number", "Group Tag"], [dt.datetime(2026, 3, 4), "A"]],
        {"A2": "d-mmm"},
    )
    (row,) = (
        m for _, m in prepare(keyed, InputOptions(key="serialNumber", resource=DEVICES)).rows()
    )
    assert isinstance(row, Invalid)
    assert row.problems[0].reason.startswith("a date in a text column (Excel shows 4-Mar)")


def test_converted_cells_through_validate_and_run(tmp_path: Path) -> None:
    ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(3)]
    path = workbook(
        tmp_path / "events.xlsx",
        [
            ["id", "userPrincipalName", "deviceSerialNumber"],
            [ids[0], dt.datetime(2026, 1, 2), "SER-1"],
            [ids[1], "a@contoso.com", True],
            [ids[2], "b@contoso.com", "SER-3"],
        ],
        {"B2": "d-mmm"},
    )
    checked = cli_here("validate", path)
    assert checked.returncode == 1
    assert "row 2: userPrincipalName: a date in a text column (Excel shows 2-Jan)" in (
        checked.stderr
    )
    assert "row 3: deviceSerialNumber: a TRUE/FALSE value in a text column (Excel shows TRUE)" in (
        checked.stderr
    )
    assert "row 4" not in checked.stderr
    out = tmp_path / "run"
    done = cli_here("run", path, "--dry-run", "--out", out, token=None)
    assert done.returncode == 1, done.stderr
    outcomes = [(r["row"], r["outcome"]) for r in read_csv(out / "results.csv")]
    assert outcomes == [("2", "invalid"), ("3", "invalid"), ("4", "planned")]
    planned = (out / "requests.jsonl").read_text(encoding="utf-8")
    assert "2026-01-02" not in planned and "true" not in planned


def test_csv_text_that_looks_like_a_date_or_boolean_is_sent_as_written(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "tags.csv",
        [
            {"Device Serial Number": "SER-1", "Group Tag": "2-Jan"},
            {"Device Serial Number": "SER-2", "Group Tag": "TRUE"},
        ],
    )
    prepared = prepare(path, InputOptions(key="serialNumber", resource=DEVICES))
    bodies = [m.body for _, m in prepared.rows() if isinstance(m, Update)]
    assert bodies == [{"groupTag": "2-Jan"}, {"groupTag": "TRUE"}]
