"""Issue 12, input side: cells are read as Excel shows them, and damage is never sent silently.

Every case runs the real CLI (`validate`, and `run --dry-run`, which plans without Graph) on a
workbook or CSV written here, the way Excel or a script would have written it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import openpyxl
import pytest
from typer.testing import CliRunner

from batch.cli import app
from batch.reader import open_input
from batch.xlsx import format_number

ID1 = "3e455cab-5cab-3e45-ab5c-453eab5c453e"
ID2 = "8a1c2f55-0000-4d2e-9c1b-2b7f3f0e9a11"
ID3 = "c0ffee00-1234-4abc-8def-000000000003"


def invoke(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def workbook(path: Path, rows: list[list[object]], formats: dict[str, str] | None = None) -> Path:
    """An .xlsx with `rows` (header first); `formats` maps a cell (B2) to its number format."""
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    for ref, code in (formats or {}).items():
        sheet[ref].number_format = code
    book.save(path)
    return path


def planned(out: Path) -> dict[int, dict[str, object]]:
    """Row number → the body `run --dry-run` planned for it."""
    lines = (out / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    return {item["row"]: item["body"] for item in map(json.loads, lines)}


def results(out: Path) -> dict[int, dict[str, str]]:
    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        return {int(r["row"]): r for r in csv.DictReader(handle)}


# --- number cells in text columns ---------------------------------------------------------------


def test_zero_padded_number_cell_is_sent_as_displayed(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "serials.xlsx",
        [["id", "deviceSerialNumber"], [ID1, 18401107]],
        {"B2": "0000000000"},
    )
    result = invoke("run", path, "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert planned(tmp_path / "out")[2] == {"deviceSerialNumber": "0018401107"}


def test_general_number_in_text_column_is_invalid_unless_allowed(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "serials.xlsx",
        [["id", "deviceSerialNumber"], [ID1, 936382000000], [ID2, "5CG0501UDL"]],
    )
    result = invoke("validate", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "row 2: deviceSerialNumber: a number in a text column (Excel shows 9.36382E+11): "
        "leading zeros are lost that way; format the column as Text and type the values again, "
        "or pass --allow-numeric-text to send 936382000000"
    )
    assert "row 3" not in result.stderr
    result = invoke("run", path, "--dry-run", "--allow-numeric-text", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert planned(tmp_path / "o")[2] == {"deviceSerialNumber": "936382000000"}


def test_sixteen_digit_number_is_invalid_even_when_allowed(tmp_path: Path) -> None:
    path = workbook(tmp_path / "long.xlsx", [["id", "deviceSerialNumber"], [ID1, 1234567890123456]])
    result = invoke("validate", path, "--allow-numeric-text")
    assert result.exit_code == 1
    assert "a number of 16 digits: Excel keeps only 15" in result.stderr
    assert result.stderr.startswith("row 2: deviceSerialNumber:")


def test_scientific_format_and_scientific_text_are_invalid(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "sci.xlsx",
        [["id", "deviceSerialNumber"], [ID1, 936382000000]],
        {"B2": "0.00E+00"},
    )
    result = invoke("validate", path, "--allow-numeric-text")
    assert result.exit_code == 1
    assert "row 2: deviceSerialNumber: a number shown in scientific notation" in result.stderr
    csv_path = tmp_path / "sci.csv"
    csv_path.write_text(f"id,deviceSerialNumber\n{ID1},9.36382E+11\n{ID2},1.2E+15\n")
    result = invoke("validate", csv_path)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(
        "row 2: deviceSerialNumber: looks like a number Excel showed in scientific notation"
    )
    assert lines[1].startswith("row 3: deviceSerialNumber:")


def test_numbers_in_numeric_columns_stay_numbers(tmp_path: Path) -> None:
    path = workbook(tmp_path / "n.xlsx", [["id", "targetedAppCount"], [ID1, 3.0]])
    result = invoke("run", path, "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert planned(tmp_path / "out")[2] == {"targetedAppCount": 3}


@pytest.mark.parametrize(
    ("value", "code", "shown", "kind"),
    [
        pytest.param("18401107", "0000000000", "0018401107", "digits", id="zero-padding"),
        pytest.param("1234567", "#,##0", "1234567", "digits", id="no-thousands-separator"),
        pytest.param("3", "0.00", "3.00", "digits", id="decimals"),
        pytest.param("42", '"SN-"00000', "SN-00042", "digits", id="literal-prefix"),
        pytest.param("936382000000", "General", "9.36382E+11", "general", id="general-12-digits"),
        pytest.param("24486700", "General", "24486700", "general", id="general-short"),
        pytest.param("936382000000", "0.00E+00", "9.36E+11", "scientific", id="scientific"),
        pytest.param("0.5", "0%", "0.5", "other", id="percent"),
    ],
)
def test_format_number(value: str, code: str, shown: str, kind: str) -> None:
    assert format_number(value, code) == (shown, kind)


# --- what the admin cannot see --------------------------------------------------------------------


def test_formula_without_saved_value_is_invalid(tmp_path: Path) -> None:
    # openpyxl, like most scripts, writes formulas without a calculated value.
    path = workbook(
        tmp_path / "formula.xlsx",
        [["id", "managedDeviceName", "enrollmentState"], [ID1, '="DESKTOP-"&"4"', "enrolled"]],
    )
    result = invoke("validate", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "row 2: managedDeviceName: a formula without a saved value (a program wrote the "
        "workbook and Excel never calculated it): open and save the workbook in Excel, or paste "
        'values (got \'="DESKTOP-"&"4"\')'
    )


def test_error_cells_are_problems_not_empty_cells(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "errors.xlsx",
        [["id", "deploymentDuration"], ["#N/A", "00:05:00"], [ID2, "#DIV/0!"]],
    )
    result = invoke("validate", path)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "row 2: id: the cell shows the Excel error #N/A, not a value (got '#N/A')"
    assert lines[1] == (
        "row 3: deploymentDuration: the cell shows the Excel error #DIV/0!, not a value "
        "(got '#DIV/0!')"
    )


def test_hidden_rows_are_reported_and_can_be_skipped(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["id", "enrollmentState"])
    for event_id in (ID1, ID2, ID3):
        sheet.append([event_id, "enrolled"])
    sheet.row_dimensions[3].hidden = True
    path = tmp_path / "filtered.xlsx"
    book.save(path)
    result = invoke("validate", path)
    assert result.exit_code == 0
    assert (
        "warning: row 3 hidden in the sheet (a filter?): sent like the others; "
        "--skip-hidden-rows leaves them out"
    ) in result.stderr
    out = tmp_path / "out"
    result = invoke("run", path, "--dry-run", "--skip-hidden-rows", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(planned(out)) == [2, 4]
    assert results(out)[3]["outcome"] == "skipped"
    assert results(out)[3]["error_message"] == "hidden in the sheet (--skip-hidden-rows)"


def test_surrounding_spaces_are_trimmed_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spaces.csv"
    path.write_text(
        f"id,managedDeviceName,userPrincipalName\n{ID1},  DESKTOP-4  ,   \n{ID2}, x ,a@b.c\n"
    )
    out = tmp_path / "out"
    result = invoke("run", path, "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    assert planned(out) == {
        2: {"managedDeviceName": "DESKTOP-4"},  # a value of spaces only is an empty cell
        3: {"managedDeviceName": "x", "userPrincipalName": "a@b.c"},
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["values_trimmed"] == 2
    result = invoke("validate", path)
    assert "note: 2 value(s) had surrounding spaces; they are trimmed" in result.stderr


# --- title rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_title_row_is_suggested_and_header_row_reads_it(tmp_path: Path, suffix: str) -> None:
    rows = [
        ["Autopilot updates, March"],
        [],
        ["id", "enrollmentState"],
        [ID1, "failed"],
    ]
    path = tmp_path / f"titled{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(row + [""] * (2 - len(row)) for row in rows)
    else:
        workbook(path, rows)
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert "row 1 has a single filled cell, a title? Row 3 looks like the header: " in (
        result.stderr
    )
    assert "pass --header-row 3" in result.stderr
    out = tmp_path / "out"
    result = invoke("run", path, "--dry-run", "--header-row", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert planned(out) == {4: {"enrollmentState": "failed"}}


# --- formula-looking text -----------------------------------------------------------------------


def test_formula_looking_text_is_reported_and_quote_taken_off(tmp_path: Path) -> None:
    path = tmp_path / "formulas.csv"
    path.write_text(f"id,managedDeviceName,userPrincipalName\n{ID1},'=HYPERLINK(1),@contoso.com\n")
    result = invoke("validate", path)
    assert result.exit_code == 0
    assert "row 2: warning: managedDeviceName: '=HYPERLINK(1)' starts with '='" in result.stderr
    assert "row 2: warning: userPrincipalName: '@contoso.com' starts with '@'" in result.stderr
    out = tmp_path / "out"
    assert invoke("run", path, "--dry-run", "--out", out).exit_code == 0
    # The neutralising quote of a report or an export is taken off again.
    assert planned(out)[2]["managedDeviceName"] == "=HYPERLINK(1)"


# --- the reader itself --------------------------------------------------------------------------


def test_far_away_cell_costs_nothing(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["id", "enrollmentState"])
    sheet.append([ID1, "failed"])
    sheet["XFD1048576"] = "x"
    path = tmp_path / "far.xlsx"
    book.save(path)
    source = open_input(path)
    assert source.headers == ["id", "enrollmentState"]
    assert [r.cells for r in source] == [{"id": ID1, "enrollmentState": "failed"}]


# --- local formats ------------------------------------------------------------------------------


def test_decimal_comma_timespan_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "durations.csv"
    # A German Excel saves `;`-separated CSV and writes the decimal comma.
    path.write_text(f"id;deploymentDuration\n{ID1};00:03:21,5549443\n", encoding="cp1252")
    out = tmp_path / "out"
    result = invoke("run", path, "--dry-run", "--encoding", "cp1252", "--out", out)
    assert result.exit_code == 0, result.output
    assert planned(out)[2] == {"deploymentDuration": "PT3M21.5549443S"}


def test_dotted_day_first_dates_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "dates.csv"
    path.write_text(f"id,eventDateTime\n{ID1},01.10.2025 09:30\n{ID2},31.12.2025\n")
    result = invoke("validate", path)
    assert result.exit_code == 1  # no offset: the zone must be said
    assert "row 2: eventDateTime:" in result.stderr
    assert "--assume-tz" in result.stderr
    out = tmp_path / "out"
    result = invoke("run", path, "--dry-run", "--assume-tz", "Europe/Berlin", "--out", out)
    assert result.exit_code == 0, result.output
    bodies = planned(out)
    assert bodies[2]["eventDateTime"].startswith("2025-10-01T09:30:00")  # type: ignore[union-attr]
    assert str(bodies[2]["eventDateTime"]).endswith("+02:00")
    assert str(bodies[3]["eventDateTime"]).startswith("2025-12-31T00:00:00")
    path.write_text(f"id,eventDateTime\n{ID1},1st of October\n")
    result = invoke("validate", path, "--assume-tz", "UTC")
    assert result.exit_code == 1
    assert "01.10.2025" in result.stderr  # the message names the accepted formats


# --- stated limits (issue 19) ---------------------------------------------------------------------


def test_workbook_limits_are_checked_before_loading(tmp_path: Path) -> None:
    from batch.errors import InputFileError
    from batch.xlsx import XlsxLimits, XlsxSheet, list_sheets

    path = workbook(tmp_path / "w.xlsx", [["id", "managedDeviceName"], [ID1, "PC-1"]])
    with pytest.raises(InputFileError, match=r"workbooks over 0 MiB are not read"):
        list_sheets(path, XlsxLimits(file_bytes=10))
    (info,) = list_sheets(path)
    import zipfile

    with zipfile.ZipFile(path, "a") as archive:  # openpyxl writes inline strings: add a table
        archive.writestr(
            "xl/sharedStrings.xml",
            '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            "<si><t>PC-1</t></si></sst>",
        )
    with pytest.raises(InputFileError, match=r"shared strings unpack to .* MiB is not read"):
        XlsxSheet(path, info, XlsxLimits(shared_strings_bytes=10))
    with pytest.raises(InputFileError, match=r"sheets over 0 GiB are not read"):
        XlsxSheet(path, info, XlsxLimits(sheet_bytes=10))


def test_too_many_columns_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(20_000)) + "\n" + "x," * 19_999 + "x\n")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert "has 20,000 columns; at most 16,384 are read (Excel's limit)" in result.stderr
    path.write_text("id," + ",".join(f"junk{i}" for i in range(50)) + "\n" + "x," * 50 + "x\n")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert "and 40 more; rename them" in result.stderr
    assert len(result.stderr) < 1_000


def test_damaged_sheet_xml_is_one_line_error(tmp_path: Path) -> None:
    import zipfile

    good = workbook(tmp_path / "good.xlsx", [["id"], [ID1]])
    bad = tmp_path / "bad.xlsx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data[: len(data) // 2]  # cut in the middle of the sheet
            target.writestr(item, data)
    result = invoke("validate", bad)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert "the sheet's XML is damaged" in result.stderr
    assert "Traceback" not in result.output
