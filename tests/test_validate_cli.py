"""`validate`, `schema` and `template` through the real CLI: output, streams and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.reader import open_input
from batch.schema import PROPERTIES

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
ID1 = "3e455cab-5cab-3e45-ab5c-453eab5c453e"


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_validate_all_valid() -> None:
    result = invoke("validate", SAMPLES / "events.csv")
    assert result.exit_code == 0
    assert result.stdout == "events.csv: 300 rows: 300 valid, 0 invalid, 0 skipped\n"
    assert result.stderr == ""


def test_validate_xlsx() -> None:
    result = invoke("validate", SAMPLES / "events.xlsx", "--sheet", "Events")
    assert result.exit_code == 0
    assert result.stdout == "events.xlsx: 300 rows: 300 valid, 0 invalid, 0 skipped\n"


def test_validate_bad_rows_lists_every_problem_on_stderr() -> None:
    result = invoke("validate", SAMPLES / "bad_rows.csv")
    assert result.exit_code == 1
    assert result.stdout == ("bad_rows.csv: 18 rows: 1 valid, 16 invalid, 1 skipped, 1 warning\n")
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: column 'targetedAppCount' is a legacy property")
    problems = lines[1:]
    assert problems[0] == "row 3: id: missing id (every row needs the event id)"
    assert (
        "row 8: enrollmentState: must be one of unknown, enrolled, pendingReset, failed, "
        "notContacted, blocked (got 'Enroled')"
    ) in problems
    assert sum(line.startswith("row 18: ") for line in problems) == 3
    assert all(line.startswith("row ") for line in problems)
    assert len({line.split(":")[0] for line in problems}) == 16


def test_validate_quiet_keeps_only_errors() -> None:
    result = invoke("validate", SAMPLES / "bad_rows.csv", "--quiet")
    assert result.exit_code == 1
    assert "warning" not in result.stderr
    assert result.stderr.startswith("row 3: id: missing id")
    assert result.stdout.startswith("bad_rows.csv: 18 rows")


def test_validate_json_is_one_object_on_stdout() -> None:
    result = invoke("validate", SAMPLES / "bad_rows.csv", "--json")
    assert result.exit_code == 1
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert (data["rows"], data["valid"], data["invalid"], data["skipped"]) == (18, 1, 16, 1)
    assert data["exit_code"] == 1
    assert data["file"].endswith("bad_rows.csv") and len(data["sha256"]) == 64
    assert data["columns"]["targetedAppCount"] == "targetedAppCount"
    assert len(data["warnings"]) == 1
    assert len(data["invalid_rows"]) == 16
    first = data["invalid_rows"][0]
    assert first == {
        "row": 3,
        "id": "",
        "problems": [
            {"column": "id", "value": "", "reason": "missing id (every row needs the event id)"}
        ],
    }


def test_validate_json_all_valid() -> None:
    result = invoke("validate", SAMPLES / "events.csv", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert data["invalid_rows"] == [] and data["valid"] == 300


def test_validate_options_reach_the_mapper(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("Event;When;Colour\n" + f"{ID1};2025-07-01 12:00;red\n", encoding="cp1252")
    map_file = tmp_path / "map.toml"
    map_file.write_text('[columns]\n"Event" = "id"\n"When" = "eventDateTime"\n')
    result = invoke(
        "validate",
        path,
        "--encoding",
        "cp1252",
        "--map",
        map_file,
        "--assume-tz",
        "UTC",
        "--ignore-unknown-columns",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == "warning: column 'Colour' is not a property of the event: ignored\n"
    assert result.stdout == "in.csv: 1 row: 1 valid, 0 invalid, 0 skipped, 1 warning\n"


def test_validate_null_token(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"id,deviceSerialNumber\n{ID1},NULL\n")
    assert invoke("validate", path, "--null-token", "NULL").exit_code == 0


def _xlsx(tmp_path: Path) -> Path:
    book = openpyxl.Workbook()
    book.active.title = "Data"
    book.active.append(["id"])
    book.active.append([ID1])
    path = tmp_path / "in.xlsx"
    book.save(path)
    return path


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        pytest.param(None, (), "no such file", id="missing"),
        pytest.param(b"", (), "the file is empty", id="empty"),
        pytest.param(b"id,osVersion\r\n", (), "no data rows", id="header-only"),
        pytest.param(bytes(range(256)) * 8, (), "binary data", id="binary"),
        pytest.param("id\nJürgen\n".encode("cp1252"), (), "not valid UTF-8", id="encoding"),
        pytest.param(_xlsx, ("--sheet", "Nope"), "no sheet named 'Nope'", id="no-sheet"),
        pytest.param(b"id,Serial\n1,2\n", (), "did you mean deviceSerialNumber", id="unknown"),
        pytest.param(b"id,osVersion\n1,2,3\n", (), "row 2 has 3 cells", id="ragged"),
        pytest.param(b"id\n1\n", ("--assume-tz", "Nowhere/Place"), "time zone", id="tz"),
        pytest.param(b"id\n1\n", ("--map", "missing.toml"), "map file not found", id="map"),
    ],
)
def test_file_level_failures_are_one_line_and_exit_2(
    tmp_path: Path, make: object, args: tuple[str, ...], message: str
) -> None:
    if callable(make):
        path = make(tmp_path)
    else:
        path = tmp_path / "in.csv"
        if isinstance(make, bytes):
            path.write_bytes(make)
    result = invoke("validate", path, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "junk.csv"
    path.write_bytes(bytes(range(256)) * 8)
    proc = subprocess.run(
        [sys.executable, "-m", "batch", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"Error: {path}: binary data, not CSV text\n"


def test_validate_help_has_an_example() -> None:
    result = invoke("validate", "--help")
    assert result.exit_code == 0
    assert "autopilot-batch validate events.csv" in result.stdout
    for option in ("--encoding", "--sheet", "--map", "--null-token", "--assume-tz", "--json"):
        assert option in result.stdout


# --- schema ------------------------------------------------------------------------------------


def test_schema_plain_text() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["property", "type", "nullable", "note", "/", "allowed", "values"]
    assert len(lines) == 1 + len(PROPERTIES)
    assert lines[1].split()[:3] == ["id", "String", "no"]
    state = next(line for line in lines if line.startswith("enrollmentState "))
    assert "unknown, enrolled, pendingReset, failed, notContacted, blocked" in state
    legacy = next(line for line in lines if line.startswith("targetedAppCount "))
    assert "legacy" in legacy


def test_schema_json() -> None:
    data = json.loads(invoke("schema", "--json").stdout)
    assert [p["name"] for p in data] == list(PROPERTIES)
    serial = next(p for p in data if p["name"] == "deviceSerialNumber")
    assert serial == {
        "name": "deviceSerialNumber",
        "type": "String",
        "edm": "String",
        "nullable": True,
        "legacy": False,
        "key": False,
        "allowed": [],
        "description": "Device serial number",
    }


# --- template ----------------------------------------------------------------------------------


def test_template_csv(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    result = invoke("template", out)
    assert result.exit_code == 0
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,deviceId,eventDateTime,")
    assert raw.endswith(b"enrollmentFailureDetails\r\n")
    assert b"targetedAppCount" not in raw
    headers = open_input(out).headers
    assert headers[0] == "id" and len(headers) == len(PROPERTIES) - 3


def test_template_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("precious")
    result = invoke("template", out)
    assert result.exit_code == 2
    assert "already exists (pass --force" in result.stderr
    assert out.read_text() == "precious"
    assert invoke("template", out, "--force", "--include-legacy").exit_code == 0
    assert "targetedAppCount" in out.read_text(encoding="utf-8-sig")


def test_template_xlsx_is_readable_input(tmp_path: Path) -> None:
    out = tmp_path / "t.xlsx"
    assert invoke("template", out, "--include-legacy").exit_code == 0
    assert open_input(out).headers == list(PROPERTIES)
    book = openpyxl.load_workbook(out)
    sheet = book["Events"]
    assert sheet.column_dimensions["A"].number_format == "@"  # ids typed in stay text
    # Filled in, it validates.
    sheet.append([ID1, "device-1"])
    book.save(out)
    assert invoke("validate", out).exit_code == 0


@pytest.mark.parametrize("name", ["t.txt", "t.xls", "missing-dir/t.csv"])
def test_template_bad_targets(tmp_path: Path, name: str) -> None:
    result = invoke("template", tmp_path / name)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")


def test_a_file_of_the_other_resource_names_the_option(tmp_path: Path) -> None:
    # The Intune portal's device file read as events, and an event file read as devices: the
    # error names --resource, not a column suggestion ("did you mean id?") or
    # --ignore-unknown-columns (which would send the rest to the wrong entities).
    devices = tmp_path / "devices.csv"
    devices.write_text("Device Serial Number,Group Tag,Assigned User\nSN1,tag,a@b.c\n")
    result = invoke("validate", devices)
    assert result.exit_code == 2
    assert "unknown columns 'Group Tag', 'Assigned User'" in result.stderr
    assert "these are device identity columns: pass --resource devices" in result.stderr
    assert "--ignore-unknown-columns" not in result.stderr
    events = tmp_path / "events.csv"
    events.write_text(f"id,managedDeviceName,osVersion,userPrincipalName\n{ID1},PC1,10,<null>\n")
    result = invoke("validate", events, "--resource", "devices")
    assert result.exit_code == 2
    assert "these are Autopilot event columns: pass --resource events" in result.stderr
    assert "did you mean" not in result.stderr
    assert "--ignore-unknown-columns" not in result.stderr
    # One stray column of the admin's own is still just unknown, with the usual advice.
    stray = tmp_path / "stray.csv"
    stray.write_text(f"id,osVersion,Colour\n{ID1},10,red\n")
    result = invoke("validate", stray, "--resource", "devices")
    assert "--ignore-unknown-columns" in result.stderr and "--resource" not in result.stderr


def test_the_summary_counts_every_warning_printed(tmp_path: Path) -> None:
    path = tmp_path / "warned.csv"
    path.write_text(
        "id,userPrincipalName,managedDeviceName,targetedAppCount\n"
        f"{ID1},bob,=PC1,3\n"
        "e2,adele@contoso.com,PC2,\n",
        encoding="utf-8",
    )
    result = invoke("validate", path)
    printed = [line for line in result.stderr.splitlines() if "warning:" in line]
    # The legacy column (once, for the file), then two for row 2.
    assert len(printed) == 3
    assert result.stdout.endswith(", 3 warnings\n")
    # Quiet prints none of them, but the count is the file's own all the same.
    assert invoke("validate", path, "--quiet").stdout == result.stdout
    summary = json.loads(invoke("validate", path, "--json").stdout)
    assert summary["warning_count"] == 3 and len(summary["warnings"]) == 1
    # Row warnings alone are counted too (the summary said nothing of them).
    path.write_text(f"id,userPrincipalName\n{ID1},bob\n", encoding="utf-8")
    result = invoke("validate", path)
    assert result.stderr.count("warning:") == 1
    assert result.stdout == "warned.csv: 1 row: 1 valid, 0 invalid, 0 skipped, 1 warning\n"


def test_validate_says_a_cell_emptied_in_an_export_changes_nothing(tmp_path: Path) -> None:
    from batch.stamp import Stamper

    event = {"id": "e1", "groupTag": "x", "userPrincipalName": "adele@contoso.com"}
    stamp = Stamper(["userPrincipalName"])(event)
    path = tmp_path / "export.csv"
    path.write_text(f"id,userPrincipalName,_exported\ne1,,{stamp}\n", encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 0
    assert result.stderr == (
        "row 2: warning: userPrincipalName emptied: an empty cell changes nothing; "
        "write <null> to clear it\n"
    )
    assert result.stdout == "export.csv: 1 row: 0 valid, 0 invalid, 1 skipped, 1 warning\n"
