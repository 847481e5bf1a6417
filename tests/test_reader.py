"""The reader: CSV and Excel to text rows with the file's own row numbers; file-level errors."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import openpyxl
import pytest

from batch.errors import InputFileError, UsageError
from batch.model import RawRow
from batch.reader import column_letter, excel_cell_text, file_sha256, open_input


def write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def rows(path: Path, **kwargs: object) -> list[tuple[int, dict[str, str]]]:
    return [(r.number, r.cells) for r in open_input(path, **kwargs)]  # type: ignore[arg-type]


def xlsx(tmp_path: Path, sheets: dict[str, list[list[object]]], name: str = "in.xlsx") -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, data in sheets.items():
        sheet = book.create_sheet(title)
        for row in data:
            sheet.append(row)
    path = tmp_path / name
    book.save(path)
    return path


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_cells_are_verbatim_text(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffid,serial,a,b,c\r\n1,007,NA,nan,1e5\r\n2, x ,null,TRUE,3.0\r\n")
    source = open_input(path)
    assert source.headers == ["id", "serial", "a", "b", "c"]  # BOM stripped
    assert rows(path) == [
        (2, {"id": "1", "serial": "007", "a": "NA", "b": "nan", "c": "1e5"}),
        (3, {"id": "2", "serial": " x ", "a": "null", "b": "TRUE", "c": "3.0"}),
    ]


def test_row_numbers_are_the_files_own(tmp_path: Path) -> None:
    text = 'id,note\n1,"two\nlines"\n\n,\n   ,  \n5,x\n'
    assert rows(write(tmp_path, text)) == [
        (2, {"id": "1", "note": "two\nlines"}),  # one record over two lines is one row
        (6, {"id": "5", "note": "x"}),  # blank rows are absent but keep their numbers
    ]


def test_chunking_does_not_change_anything(tmp_path: Path) -> None:
    lines = ["id,v"] + [f"{n},{n * 2}" if n % 7 else "," for n in range(1, 60)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert rows(path, chunk_size=1) == rows(path, chunk_size=4) == rows(path)
    assert open_input(path, chunk_size=3).count() == 59 - 8


def test_short_rows_are_padded_with_empty_cells(tmp_path: Path) -> None:
    assert rows(write(tmp_path, "id,a,b\n1\n2,x\n")) == [
        (2, {"id": "1", "a": "", "b": ""}),
        (3, {"id": "2", "a": "x", "b": ""}),
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 1000])
def test_a_row_with_more_cells_than_the_header_names_the_row(
    tmp_path: Path, chunk_size: int
) -> None:
    path = write(tmp_path, "id,a\n1,x\n2,y\n3,z,extra\n")
    source = open_input(path, chunk_size=chunk_size)
    with pytest.raises(InputFileError, match=r"row 4 has 3 cells but the header \(row 1\) has 2"):
        list(source)


def test_an_unclosed_quote_names_its_row(tmp_path: Path) -> None:
    path = write(tmp_path, 'id,a\n1,x\n2,"oops\n3,z\n')
    with pytest.raises(InputFileError, match="row 3 opens a quoted cell"):
        list(open_input(path))


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab")])
def test_delimiter_is_taken_from_the_header_line(tmp_path: Path, sep: str, name: str) -> None:
    path = write(tmp_path, f"id{sep}a\n1{sep}x,y\n")
    assert rows(path) == [(2, {"id": "1", "a": "x,y"})]


def test_declared_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "id,name\n1,Jürgen Müller\n".encode("cp1252"))
    with pytest.raises(InputFileError, match=r"not valid UTF-8 text \(line 2\).*--encoding cp1252"):
        open_input(path).count()
    assert rows(path, encoding="cp1252") == [(2, {"id": "1", "name": "Jürgen Müller"})]


def test_utf16_is_refused_with_a_hint_and_read_when_declared(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a\n1,x\n".encode("utf-16"))
    with pytest.raises(InputFileError, match="--encoding utf-16"):
        open_input(path)
    assert rows(path, encoding="utf-16") == [(2, {"id": "1", "a": "x"})]


def test_explicit_utf8_still_strips_the_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffid\n1\n")
    assert open_input(path, encoding="utf-8").headers == ["id"]


def test_blank_header_columns_are_dropped_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "id,,a,\n1,junk,x,\n")
    source = open_input(path)
    assert source.headers == ["id", "a"]
    assert source.ignored_columns == ["B", "D"]
    assert rows(path) == [(2, {"id": "1", "a": "x"})]
    assert list(source.column("a")) == [(2, "x")]


def test_header_cells_are_trimmed(tmp_path: Path) -> None:
    assert open_input(write(tmp_path, " id , Device Serial \n1,2\n")).headers == [
        "id",
        "Device Serial",
    ]


def test_column_matches_full_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "a,id\nx,1\n,\ny,\n ,\n,3\n")
    source = open_input(path, chunk_size=2)
    assert list(source.column("id")) == [(r.number, r.cells["id"]) for r in source]
    assert list(source.column("id")) == [(2, "1"), (4, ""), (6, "3")]


def test_source_is_re_iterable(tmp_path: Path) -> None:
    source = open_input(write(tmp_path, "id\n1\n2\n"))
    assert list(source) == list(source) == [RawRow(2, {"id": "1"}), RawRow(3, {"id": "2"})]


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    source = open_input(write(tmp_path, "id,a\r\n"))
    assert source.headers == ["id", "a"]
    assert source.count() == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xef\xbb\xbf", "empty", id="bom-only"),
        pytest.param(b"\r\n\r\n", "empty", id="blank-lines"),
        pytest.param(b"\nid\n1\n", r"header row \(row 1\) is empty", id="blank-first-line"),
        pytest.param(b",,\n1,2,3\n", "header row .row 1. is empty", id="blank-header"),
        pytest.param(
            b"id,a,id\n1,2,3\n", "duplicate column header 'id' .columns A and C.", id="dup"
        ),
        pytest.param(bytes(range(256)) * 4, "binary data", id="binary"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 40, "Excel workbook", id="zip"),
    ],
)
def test_unusable_csv_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InputFileError, match=message) as caught:
        open_input(write(tmp_path, content))
    assert "\n" not in str(caught.value)


def test_missing_directory_and_extension(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        open_input(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputFileError, match="is a directory"):
        open_input(tmp_path / "dir.csv")
    with pytest.raises(InputFileError, match=r"unsupported file type '.xls'"):
        open_input(write(tmp_path, "id\n1\n", "old.xls"))
    with pytest.raises(InputFileError, match="no extension"):
        open_input(write(tmp_path, "id\n1\n", "noext"))


def test_option_mistakes_are_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "id\n1\n")
    with pytest.raises(UsageError, match="unknown encoding"):
        open_input(path, encoding="klingon")
    with pytest.raises(UsageError, match="--sheet applies only to Excel"):
        open_input(path, sheet="Data")
    book = xlsx(tmp_path, {"Data": [["id"], ["1"]]})
    with pytest.raises(UsageError, match="--encoding applies only to CSV"):
        open_input(book, encoding="utf-8")


def test_file_sha256(tmp_path: Path) -> None:
    path = write(tmp_path, b"id\n1\n" * 100_000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputFileError):
        file_sha256(tmp_path / "missing.csv")


# --- Excel -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("007", "007", id="text"),
        pytest.param(3, "3", id="int"),
        pytest.param(3.0, "3", id="whole-float"),
        pytest.param(-3.5, "-3.5", id="float"),
        pytest.param(1e-7, "0.0000001", id="small"),
        pytest.param(1e20, "100000000000000000000", id="big"),
        pytest.param(0.1 + 0.2, "0.30000000000000004", id="repr"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(dt.datetime(2024, 5, 1, 9, 30), "2024-05-01T09:30:00", id="datetime"),
        pytest.param(dt.datetime(2024, 5, 1, 9, 30, 0, 5), "2024-05-01T09:30:00.000005", id="us"),
        pytest.param(dt.date(2024, 5, 1), "2024-05-01T00:00:00", id="date"),
        pytest.param(dt.time(1, 2, 3), "01:02:03", id="time"),
        pytest.param(dt.timedelta(days=1, hours=2, seconds=3.5), "1.02:00:03.500000", id="td"),
        pytest.param(-dt.timedelta(minutes=1, seconds=32), "-00:01:32", id="negative-td"),
        pytest.param(None, "", id="none"),
    ],
)
def test_excel_cell_text(value: object, text: str) -> None:
    assert excel_cell_text(value) == text


def test_column_letter() -> None:
    assert [column_letter(i) for i in (0, 25, 26, 51, 701, 702)] == [
        "A",
        "Z",
        "AA",
        "AZ",
        "ZZ",
        "AAA",
    ]


def test_xlsx_native_cells_become_text(tmp_path: Path) -> None:
    path = xlsx(
        tmp_path,
        {
            "Data": [
                ["id", "count", "when", "how long", "flag", "serial"],
                ["a", 3, dt.datetime(2024, 5, 1, 9, 30), dt.time(0, 3, 21), True, "0042"],
                [],
                ["b", 3.0, None, None, False, None],
            ]
        },
    )
    assert rows(path) == [
        (
            2,
            {
                "id": "a",
                "count": "3",
                "when": "2024-05-01T09:30:00",
                "how long": "00:03:21",
                "flag": "true",
                "serial": "0042",
            },
        ),
        (4, {"id": "b", "count": "3", "when": "", "how long": "", "flag": "false", "serial": ""}),
    ]


def test_xlsx_header_below_and_right_keeps_excel_numbers(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet["C3"], sheet["D3"], sheet["F3"] = "id", "a", "b"
    sheet["C4"], sheet["D4"] = "1", "x"
    sheet["C6"], sheet["F6"] = "2", "y"
    path = tmp_path / "offset.xlsx"
    book.save(path)
    source = open_input(path)
    assert source.headers == ["id", "a", "b"]
    assert source.ignored_columns == ["E"]
    assert rows(path) == [(4, {"id": "1", "a": "x", "b": ""}), (6, {"id": "2", "a": "", "b": "y"})]


def test_xlsx_sheets(tmp_path: Path) -> None:
    path = xlsx(tmp_path, {"First": [["id"], ["1"]], "Updates": [["id"], ["2"]]})
    assert rows(path) == [(2, {"id": "1"})]
    assert rows(path, sheet="Updates") == [(2, {"id": "2"})]
    assert rows(path, sheet="updates") == [(2, {"id": "2"})]
    with pytest.raises(
        InputFileError, match=r"no sheet named 'Nope' \(sheets: 'First', 'Updates'\)"
    ):
        open_input(path, sheet="Nope")


def test_xlsx_default_is_the_first_visible_sheet(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    hidden = book.active
    hidden.title = "Lookup"
    hidden.append(["x"])
    hidden.sheet_state = "hidden"
    shown = book.create_sheet("Events")
    shown.append(["id"])
    shown.append(["7"])
    path = tmp_path / "hidden.xlsx"
    book.save(path)
    assert rows(path) == [(2, {"id": "7"})]


def test_xlsm_is_read_like_xlsx(tmp_path: Path) -> None:
    path = xlsx(tmp_path, {"Data": [["id"], ["1"]]}, name="macro.xlsm")
    assert rows(path) == [(2, {"id": "1"})]


def test_xlsx_source_is_re_iterable(tmp_path: Path) -> None:
    source = open_input(xlsx(tmp_path, {"Data": [["id"], ["1"], ["2"]]}))
    assert list(source) == list(source)
    assert list(source.column("id")) == [(2, "1"), (3, "2")]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda p: p.write_text("id\n1\n"), "not a readable Excel workbook", id="csv"),
        pytest.param(lambda p: p.write_bytes(b""), "not a readable Excel workbook", id="empty"),
        pytest.param(
            lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)),
            "not a readable Excel workbook",
            id="broken-zip",
        ),
    ],
)
def test_unusable_excel_files(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.xlsx"
    make(path)  # type: ignore[operator]
    with pytest.raises(InputFileError, match=message):
        open_input(path)


def test_empty_sheet_and_blank_header(tmp_path: Path) -> None:
    path = xlsx(tmp_path, {"Data": []})
    with pytest.raises(InputFileError, match="has no header row"):
        open_input(path)
    path = xlsx(tmp_path, {"Data": [["id", "a", "id"], ["1", "2", "3"]]}, name="dup.xlsx")
    with pytest.raises(InputFileError, match="duplicate column header 'id'"):
        open_input(path)
