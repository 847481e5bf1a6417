"""Issue 12: Excel's damage and stale exports never reach the tenant; revert is field by field.

The real CLI against the emulator: an export saved again the way Excel does; an export run after
another writer changed the tenant (three values per cell: exported, in the file, in the tenant);
a revert after someone else changed one field of a row.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import openpyxl
import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import JSON, Rate
from batch.stamp import NOT_EDITED, STAMP_COLUMN
from tests.conftest import EmulatorFactory
from tests.e2e import cli, cli_here, read_csv, write_csv

pytestmark = pytest.mark.e2e

TOKEN = "test-token"
LIMITS = ("--write-limit", "1000/1", "--read-limit", "10000/1")


def _emulator(factory: EmulatorFactory, n: int, seed: int) -> tuple[EmulatorServer, list[str]]:
    store = EventStore()
    ids = store.seed(n, seed=seed)
    config = EmulatorConfig(
        token=TOKEN,
        write_limit=Rate(1000, 1),
        tenant_write_limit=Rate(2000, 1),
        read_limit=Rate(10_000, 1),
        tenant_read_limit=Rate(20_000, 1),
    )
    return factory(config, store=store), ids


def _export(server: EmulatorServer, out: Path) -> None:
    done = cli_here("export", out, "--graph-url", server.url, "--quiet")
    assert done.returncode == 0, done.stderr


def _event(server: EmulatorServer, event_id: str) -> dict[str, JSON]:
    event = server.store.get(event_id)
    assert event is not None
    return event


def _resave_as_excel_does(src: Path, dst: Path) -> None:
    """Open the CSV in Excel and save it as CSV: numbers lose their zeros, `;`, Windows-1252."""
    with src.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        for i, cell in enumerate(row):
            if cell.isascii() and cell.isdigit():
                row[i] = str(int(cell))  # Excel read the digits as a number
    with dst.open("w", encoding="cp1252", newline="") as handle:
        csv.writer(handle, delimiter=";").writerows(rows)


def _edit(path: Path, edits: dict[str, dict[str, str]]) -> None:
    """Set cells by event id and column, in a CSV or (as a user in Excel would) an XLSX."""
    if path.suffix == ".csv":
        rows = read_csv(path)
        for row in rows:
            row.update(edits.get(row["id"], {}))
        with path.open("w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    book = openpyxl.load_workbook(path)
    sheet = book["Events"]
    headers = [c.value for c in sheet[1]]
    for line in sheet.iter_rows(min_row=2):
        for column, value in edits.get(str(line[0].value), {}).items():
            line[headers.index(column)].value = value
    book.save(path)
    book.close()


# --- an export saved again by Excel ---------------------------------------------------------------


def test_an_export_saved_again_by_excel_writes_nothing_and_names_the_lost_zeros(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = _emulator(emulator_factory, 60, seed=41)
    server.store.patch(ids[0], {"managedDeviceName": "Café-Müller"})  # cp1252 has these
    digest = server.store.digest()
    _export(server, tmp_path / "tenant.csv")
    saved = tmp_path / "tenant-excel.csv"
    _resave_as_excel_does(tmp_path / "tenant.csv", saved)
    zeros = {i: str(_event(server, i)["deviceSerialNumber"]) for i in ids}
    zeros = {i: s for i, s in zeros.items() if s.startswith("0")}
    assert len(zeros) >= 5  # the emulator gives ~20 % of the serials leading zeros

    done = cli(
        "run", saved, "--only-changed", "--encoding", "cp1252", "--graph-url", server.url,
        *LIMITS, "--out", tmp_path / "run", "--json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]  # the invalid rows
    assert server.stats()["writes"] == 0 and server.store.digest() == digest
    results = {r["id"]: r for r in read_csv(tmp_path / "run" / "results.csv")}
    assert {i for i, r in results.items() if r["outcome"] == "invalid"} == set(zeros)
    for event_id, serial in zeros.items():
        assert results[event_id]["error_message"] == (
            f"deviceSerialNumber: looks like Excel dropped the leading zeros of {serial} "
            f"(file has {int(serial)}); --accept-lost-zeros sends it anyway"
        )
    others = [r for i, r in results.items() if i not in zeros]
    assert {(r["outcome"], r["error_message"]) for r in others} == {("skipped", NOT_EDITED)}
    failures = read_csv(tmp_path / "run" / "failures.csv")
    assert {f["id"] for f in failures} == set(zeros)
    assert all(f["_outcome"] == "invalid" and f[STAMP_COLUMN] for f in failures)
    # Fed back as they are, the failures are still refused: the stamp travels with the row.
    again = cli_here(
        "run", tmp_path / "run" / "failures.csv", "--graph-url", server.url, *LIMITS,
        "--out", tmp_path / "again",
    )  # fmt: skip
    assert again.returncode == 1, again.stderr[-2000:]
    assert {r["outcome"] for r in read_csv(tmp_path / "again" / "results.csv")} == {"invalid"}
    assert server.stats()["writes"] == 0


# --- three values per cell ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "options"),
    [
        pytest.param(".csv", ("--only-changed",), id="csv-only-changed"),
        # Stamps need the tenant's values: read even when before-images are off.
        pytest.param(".xlsx", ("--no-backup",), id="xlsx-no-backup"),
    ],
)
def test_a_stale_export_never_undoes_newer_work(
    emulator_factory: EmulatorFactory, tmp_path: Path, suffix: str, options: tuple[str, ...]
) -> None:
    server, ids = _emulator(emulator_factory, 30, seed=43)
    export = tmp_path / f"tenant{suffix}"
    _export(server, export)
    b_only, both = ids[4], ids[9]
    old_upn = str(_event(server, both)["userPrincipalName"])
    # Another writer changes field A (userPrincipalName) of two events after the export.
    for event_id in (b_only, both):
        server.store.patch(event_id, {"userPrincipalName": f"new.owner.{event_id[:4]}@contoso.com"})
    # The admin edits field B (osVersion) of both rows, and field A of the second too.
    _edit(
        export,
        {
            b_only: {"osVersion": "10.0.26100.1"},
            both: {"osVersion": "10.0.26100.2", "userPrincipalName": "admin.pick@contoso.com"},
        },
    )
    out = tmp_path / "run"
    done = cli_here("run", export, "--graph-url", server.url, *LIMITS, *options, "--out", out)
    assert done.returncode == 1, done.stderr[-2000:]  # the conflict

    # B is written in both rows; A keeps the other writer's value in both.
    assert server.stats()["patches"] == {b_only: 1, both: 1}
    for event_id, version in ((b_only, "10.0.26100.1"), (both, "10.0.26100.2")):
        event = _event(server, event_id)
        assert event["osVersion"] == version
        assert event["userPrincipalName"] == f"new.owner.{event_id[:4]}@contoso.com"
    results = {r["id"]: r for r in read_csv(out / "results.csv")}
    assert (results[b_only]["outcome"], results[b_only]["changed_fields"]) == (
        "updated",
        "osVersion",
    )
    conflict = results[both]
    message = (
        "changed in the tenant since the export, not written: userPrincipalName is "
        f"new.owner.{both[:4]}@contoso.com in the tenant, admin.pick@contoso.com in the file "
        "(--force writes the file's values)"
    )
    assert (conflict["outcome"], conflict["error_code"], conflict["changed_fields"]) == (
        "conflict",
        "Conflict",
        "osVersion",
    )
    assert conflict["error_message"] == message
    assert {r["outcome"] for i, r in results.items() if i not in (b_only, both)} == {"skipped"}
    assert old_upn != "admin.pick@contoso.com"

    # failures.csv holds the conflict row with the file's values, its stamp and both values.
    (failed,) = read_csv(out / "failures.csv")
    assert (failed["id"], failed["_outcome"], failed["userPrincipalName"]) == (
        both,
        "conflict",
        "admin.pick@contoso.com",
    )
    assert failed["_error"] == f"Conflict: {message}"
    assert failed[STAMP_COLUMN]

    # Fed back: osVersion (now in the tenant) is no conflict; A still is, until --force.
    rerun = cli_here(
        "run", out / "failures.csv", "--graph-url", server.url, *LIMITS, "--only-changed",
        "--out", tmp_path / "rerun",
    )  # fmt: skip
    assert rerun.returncode == 1, rerun.stderr[-2000:]
    (again,) = read_csv(tmp_path / "rerun" / "results.csv")
    assert (again["outcome"], again["changed_fields"]) == ("conflict", "")
    forced = cli_here(
        "run", out / "failures.csv", "--graph-url", server.url, *LIMITS, "--only-changed",
        "--force", "--out", tmp_path / "forced",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]
    (done_row,) = read_csv(tmp_path / "forced" / "results.csv")
    assert (done_row["outcome"], done_row["changed_fields"]) == ("updated", "userPrincipalName")
    assert _event(server, both)["userPrincipalName"] == "admin.pick@contoso.com"


# --- field-level revert ---------------------------------------------------------------------------


def test_revert_restores_every_field_nobody_changed_since(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = _emulator(emulator_factory, 6, seed=47)
    original = {i: _event(server, i) for i in ids}
    rows = [
        {
            "id": event_id,
            "osVersion": f"10.0.9999.{n}",
            "userPrincipalName": f"run.{n}@contoso.com",
            "managedDeviceName": f"RUN-{n}",
        }
        for n, event_id in enumerate(ids)
    ]
    src = write_csv(tmp_path / "in.csv", rows)
    run = cli_here("run", src, "--graph-url", server.url, *LIMITS, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr[-2000:]
    # Someone else changes one field of row 4's event after the run.
    changed = ids[2]
    server.store.patch(changed, {"userPrincipalName": "someone.else@contoso.com"})

    revert = cli_here("revert", tmp_path / "run", *LIMITS, "--out", tmp_path / "rv", "--json")
    assert revert.returncode == 1, revert.stderr[-2000:]
    assert json.loads(revert.stdout)["counts"]["conflict"] == 1
    for event_id in ids:
        event = _event(server, event_id)
        for name in ("osVersion", "managedDeviceName"):
            assert event[name] == original[event_id][name], (event_id, name)
        expected = (
            "someone.else@contoso.com"
            if event_id == changed
            else original[event_id]["userPrincipalName"]
        )
        assert event["userPrincipalName"] == expected
    results = {r["id"]: r for r in read_csv(tmp_path / "rv" / "results.csv")}
    row = results[changed]
    assert (row["outcome"], row["changed_fields"]) == (
        "conflict",
        "osVersion;managedDeviceName",
    )
    message = (
        "changed since the run, not restored: userPrincipalName is someone.else@contoso.com "
        "(the run wrote run.2@contoso.com, the revert would write "
        f"{original[changed]['userPrincipalName']}) (--force overwrites)"
    )
    assert row["error_message"] == message
    assert {r["outcome"] for i, r in results.items() if i != changed} == {"updated"}
    (failed,) = read_csv(tmp_path / "rv" / "failures.csv")
    assert (failed["id"], failed["_row"], failed["_outcome"]) == (changed, "4", "conflict")
    assert failed["_error"] == f"Conflict: {message}"

    # The fields the revert did restore in the conflict row can be reverted in turn.
    undo = cli_here("revert", tmp_path / "rv", *LIMITS, "--out", tmp_path / "undo")
    assert undo.returncode == 0, undo.stderr[-2000:]
    assert _event(server, changed)["osVersion"] == "10.0.9999.2"
    assert _event(server, changed)["managedDeviceName"] == "RUN-2"
    assert _event(server, changed)["userPrincipalName"] == "someone.else@contoso.com"


def test_a_resumed_row_still_reports_the_fields_it_left_alone(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """Killed after the PATCH left, before its answer was recorded: the resume says the same."""
    server, ids = _emulator(emulator_factory, 5, seed=53)
    export = tmp_path / "tenant.csv"
    _export(server, export)
    event_id = ids[1]
    server.store.patch(event_id, {"userPrincipalName": "new.owner@contoso.com"})
    _edit(export, {event_id: {"osVersion": "11", "userPrincipalName": "admin@contoso.com"}})
    out = tmp_path / "run"
    first = cli_here("run", export, "--graph-url", server.url, *LIMITS, "--out", out)
    assert first.returncode == 1, first.stderr[-2000:]
    before = read_csv(out / "results.csv")
    with closing(sqlite3.connect(out / "state.sqlite")) as db, db:
        db.execute("UPDATE rows SET state = 'in_flight' WHERE number = 3")
    resumed = cli_here("run", export, "--graph-url", server.url, *LIMITS, "--out", out, "--resume")
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    after = read_csv(out / "results.csv")
    kept = ("row", "id", "outcome", "error_code", "error_message", "changed_fields")
    assert [{k: r[k] for k in kept} for r in after] == [{k: r[k] for k in kept} for r in before]
    assert (after[1]["outcome"], after[1]["changed_fields"]) == ("conflict", "osVersion")
    assert server.stats()["patches"] == {event_id: 2}
    assert _event(server, event_id)["userPrincipalName"] == "new.owner@contoso.com"


# --- a cell emptied in an export ---------------------------------------------------------------


def test_a_cell_emptied_in_an_export_is_skipped_saying_empty_changes_nothing(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    server, ids = _emulator(emulator_factory, 3, seed=43)
    digest = server.store.digest()
    path = tmp_path / "tenant.csv"
    _export(server, path)
    # The admin empties a filled cell, meaning to clear it (`<null>` would).
    assert _event(server, ids[0])["managedDeviceName"]
    _edit(path, {ids[0]: {"managedDeviceName": ""}})
    done = cli_here("run", path, "--graph-url", server.url, *LIMITS, "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["id"]: r for r in read_csv(tmp_path / "run" / "results.csv")}
    assert (results[ids[0]]["outcome"], results[ids[0]]["error_message"]) == (
        "skipped",
        "managedDeviceName emptied: an empty cell changes nothing; write <null> to clear it",
    )
    assert {results[i]["error_message"] for i in ids[1:]} == {NOT_EDITED}
    assert server.stats()["writes"] == 0 and server.store.digest() == digest
