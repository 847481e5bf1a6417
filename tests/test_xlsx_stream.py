"""The streaming sheet reader (`batch.xlsx`) cell by cell, on sheet XML written by hand.

The benchmark workbook (openpyxl: inline strings, one element per line, no whitespace) is one
shape of sheet XML; Excel writes shared strings, other writers indent, rich text carries
phonetic runs. These pin what every shape reads as, so a faster parser cannot drift.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batch import xlsx
from batch.model import CellNote
from batch.reader import RowSource, open_input
from batch.xlsx import SheetRow, XlsxSheet, list_sheets

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"

# Styles: 0 General, 1 `0000000000`, 2 `0.00`, 3 `#,##0`, 4 a date (14), 5 `[h]:mm:ss`,
# 6 `0.00E+00`, 7 `"SN-"000000;"neg "0`, 8 `@` (text), 9 `00000` with a condition and colour.
_FORMATS = {
    164: "0000000000",
    165: "[h]:mm:ss",
    166: '"SN-"000000;"neg "0',
    167: "[Red][<=99999]00000",
}
_XF_FORMATS = [0, 164, 2, 3, 14, 165, 11, 166, 49, 167]


def _book(path: Path, rows_xml: str, strings: list[str]) -> Path:
    formats = "".join(
        f'<numFmt numFmtId="{n}" formatCode={quoteattr(code)}/>' for n, code in _FORMATS.items()
    )
    xfs = "".join(f'<xf numFmtId="{n}" fontId="0" fillId="0" borderId="0"/>' for n in _XF_FORMATS)
    shared = "".join(f"<si>{s}</si>" for s in strings)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr(
            "_rels/.rels",
            f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Target="xl/workbook.xml" '
            f'Type="{_REL}/officeDocument"/></Relationships>',
        )
        book.writestr(
            "xl/workbook.xml",
            f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>'
            '<sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>',
        )
        book.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" '
            f'Target="worksheets/sheet1.xml" Type="{_REL}/worksheet"/></Relationships>',
        )
        book.writestr(
            "xl/styles.xml",
            f'<styleSheet xmlns="{_MAIN}"><numFmts>{formats}</numFmts>'
            f"<cellXfs>{xfs}</cellXfs></styleSheet>",
        )
        book.writestr("xl/sharedStrings.xml", f'<sst xmlns="{_MAIN}">{shared}</sst>')
        book.writestr(
            "xl/worksheets/sheet1.xml",
            f'<?xml version="1.0" encoding="UTF-8"?>\n<worksheet xmlns="{_MAIN}">'
            f"<sheetData>{rows_xml}</sheetData></worksheet>",
        )
    return path


def _rows(path: Path, first: int = 0, last: int = 16383) -> list[SheetRow]:
    return list(XlsxSheet(path, list_sheets(path)[0]).rows(first, last))


def _note(kind: str, shown: str, detail: str) -> CellNote:
    return CellNote(kind, shown, detail)


_SHARED = [
    "<t>id</t>",
    '<t xml:space="preserve">  spaced  </t>',
    '<r><t>Ri</t></r><r><rPr><b/></rPr><t xml:space="preserve">ch </t></r>'
    '<rPh sb="0" eb="2"><t>フリガナ</t></rPh><phoneticPr fontId="1"/>',
    "<t>a &amp; b &lt;c&gt;</t>",
]

# Every shape in one sheet: indented, shared and inline strings, rich text with phonetic runs,
# cells without `r`, formulas with and without a value, errors, booleans, dates, durations,
# number formats, a hidden row and cells outside the table's columns.
_SHEET = """
  <row r="1" spans="1:4">
    <c r="A1" t="s"><v>0</v></c>
    <c r="B1" t="s">
      <v>1</v>
    </c>
    <c r="C1" t="s"><v>2</v></c>
    <c t="s"><v>3</v></c>
  </row>
  <row r="3" hidden="1">
    <c r="A3" t="inlineStr"><is><t>in&#x41;line</t></is></c>
    <c r="B3" t="inlineStr">
      <is>
        <r><t>rich</t></r>
        <r><t xml:space="preserve"> text</t></r>
        <rPh sb="0" eb="1"><t>ふり</t></rPh>
      </is>
    </c>
    <c r="C3" s="1"><v>18401107</v></c>
    <c r="D3" s="1" t="n"><v>1.8401107E7</v></c>
    <c r="F3" t="s"><v>0</v></c>
  </row>
  <row r="4">
    <c r="A4"><v>936382000000</v></c>
    <c r="B4" s="2"><v>3.14159</v></c>
    <c r="C4" s="3"><v>1234567</v></c>
    <c r="D4" s="4"><v>45000.5</v></c>
  </row>
  <row r="5" hidden="true">
    <c r="A5" s="5"><v>1.5</v></c>
    <c r="B5" s="6"><v>12345</v></c>
    <c r="C5" s="7"><v>-42</v></c>
    <c r="D5" s="7"><v>42</v></c>
  </row>
  <row r="6">
    <c r="A6" s="8"><v>7</v></c>
    <c r="B6" s="9"><v>123</v></c>
    <c r="C6"><v>0</v></c>
    <c r="D6"><v>-17</v></c>
  </row>
  <row r="7">
    <c r="A7"><f>SUM(B7:C7)</f><v>3</v></c>
    <c r="B7"><f>1/0</f></c>
    <c r="C7" t="str"><f>A1</f><v></v></c>
    <c r="D7" t="e"><v>#N/A</v></c>
  </row>
  <row r="8">
    <c r="A8" t="b"><v>1</v></c>
    <c r="B8" t="b"><v>0</v></c>
    <c r="C8" s="99"><v>12</v></c>
    <c r="D8" t="s"><v>42</v></c>
  </row>
  <row r="9">
    <c r="A9"><v>1E+16</v></c>
    <c r="B9"><v>0.25</v></c>
    <c r="C9"><v>not a number</v></c>
    <c r="D9" t="d"><v>2025-01-02T03:04:05</v></c>
  </row>
  <row r="10"><c r="A10" s="1"><v>007</v></c><c r="B10" s="1"><v>12.6</v></c></row>
"""

_EXPECTED = [
    SheetRow(1, False, {0: "id", 1: "  spaced  ", 2: "Rich ", 3: "a & b <c>"}, None),
    SheetRow(
        3,
        True,
        {0: "inAline", 1: "rich text", 2: "18401107", 3: "18401107"},
        {
            2: _note("number", "0018401107", "digits"),
            3: _note("number", "0018401107", "digits"),
        },
    ),
    SheetRow(
        4,
        False,
        {0: "936382000000", 1: "3.14159", 2: "1234567", 3: "2023-03-15T12:00:00"},
        {
            0: _note("number", "9.36382E+11", "general"),
            1: _note("number", "3.14", "digits"),
            2: _note("number", "1234567", "digits"),
            # A date cell says what Excel shows: text properties refuse it (the mapper).
            3: _note("date", "03-15-23", "date"),
        },
    ),
    SheetRow(
        5,
        True,
        {0: "1.12:00:00", 1: "12345", 2: "-42", 3: "42"},
        {
            0: _note("date", "36:00:00", "duration"),
            1: _note("number", "1.23E+04", "scientific"),
            2: _note("number", "neg 42", "digits"),
            3: _note("number", "SN-000042", "digits"),
        },
    ),
    SheetRow(
        6,
        False,
        {0: "7", 1: "123", 2: "0", 3: "-17"},
        {
            0: _note("number", "7", "other"),
            1: _note("number", "00123", "digits"),
            2: _note("number", "0", "general"),
            3: _note("number", "-17", "general"),
        },
    ),
    SheetRow(
        7,
        False,
        {0: "3"},
        {
            0: _note("number", "3", "general"),
            1: _note("formula", "", "=1/0"),
            3: _note("error", "#N/A", "#N/A"),
        },
    ),
    SheetRow(
        8,
        False,
        {0: "true", 1: "false", 2: "12"},
        {
            0: _note("boolean", "TRUE", ""),
            1: _note("boolean", "FALSE", ""),
            2: _note("number", "12", "general"),
            3: _note("error", "", "points at shared string 42, not there"),
        },
    ),
    SheetRow(
        9,
        False,
        {0: "10000000000000000", 1: "0.25", 3: "2025-01-02T03:04:05"},
        {
            0: _note("number", "1E+16", "general"),
            1: _note("number", "0.25", "general"),
            2: _note("error", "not a number", "not a number: 'not a number'"),
            3: _note("date", "2025-01-02T03:04:05", "date"),
        },
    ),
    SheetRow(
        10,
        False,
        {0: "7", 1: "12.6"},
        {0: _note("number", "0000000007", "digits"), 1: _note("number", "0000000013", "digits")},
    ),
]


def test_every_shape_of_sheet_xml_reads_as_excel_shows_it(tmp_path: Path) -> None:
    path = _book(tmp_path / "shapes.xlsx", _SHEET, _SHARED)
    assert _rows(path, 0, 3) == _EXPECTED
    # The replay of the spooled first pass gives the very same rows.
    sheet = XlsxSheet(path, list_sheets(path)[0])
    first, again = list(sheet.rows(0, 3)), list(sheet.rows(0, 3))
    assert first == again == _EXPECTED


def test_only_the_table_columns_are_read(tmp_path: Path) -> None:
    path = _book(tmp_path / "cols.xlsx", _SHEET, _SHARED)
    rows = _rows(path, 1, 2)
    assert rows[1] == SheetRow(
        3,
        True,
        {1: "rich text", 2: "18401107"},
        {2: _note("number", "0018401107", "digits")},
    )
    assert [r.number for r in rows] == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert rows[5].texts == {} and rows[5].notes == {1: _note("formula", "", "=1/0")}


_CODES = [
    "General",
    "0",
    "0000000000",
    "00000",
    "#,##0",
    "0.00",
    "0.",
    '"SN-"000000;"neg "0',
    "[Red][<=99999]00000",
    "0.00E+00",
    "@",
    "#",
    "#,###",
    '000" kg"',
    '"id "#;;"zero"',
    "0%",
    "# ?/?",
    "yyyy-mm-dd",
    "[h]:mm:ss",
]


@pytest.fixture(scope="module")
def every_format(tmp_path_factory: pytest.TempPathFactory) -> XlsxSheet:
    """A sheet whose styles 0.. are the formats of `_CODES`, in that order."""
    path = tmp_path_factory.mktemp("formats") / "formats.xlsx"
    _book(path, '<row r="1"><c r="A1"><v>1</v></c></row>', [])
    sheet = XlsxSheet(path, list_sheets(path)[0])
    sheet._formats = list(_CODES)
    return sheet


@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**17).map(str),
        st.from_regex(r"0{0,3}[0-9]{1,16}", fullmatch=True),
        st.sampled_from(["0", "00", "-0", "12.0", "1E3", " 12", "١٢", "+5", "99999999999"]),
    ),
    st.integers(min_value=-1, max_value=len(_CODES)).map(str) | st.sampled_from(["", "x"]),
)
def test_whole_numbers_read_as_the_general_path_shows_them(
    every_format: XlsxSheet, value: str, style: str
) -> None:
    """The per-style plan for whole numbers gives exactly what `format_number` gives."""
    assert every_format.number(value, style or None) == every_format._number(value, style or None)


@pytest.mark.parametrize("style", [str(i) for i in range(len(_CODES))])
@pytest.mark.parametrize(
    "value", ["0", "000", "7", "0042", "99999999999", "100000000000", "18401107", "12345678901234"]
)
def test_edge_numbers_of_every_style(every_format: XlsxSheet, value: str, style: str) -> None:
    assert every_format.number(value, style) == every_format._number(value, style)


@pytest.mark.parametrize("size", [1, 3000])
def test_many_rows_replay_the_same(tmp_path: Path, size: int) -> None:
    rows_xml = "".join(
        f'<row r="{n}"><c r="A{n}" t="inlineStr"><is><t>id{n}</t></is></c>'
        f'<c r="B{n}" s="1"><v>{n}</v></c></row>'
        for n in range(1, size + 1)
    )
    path = _book(tmp_path / "many.xlsx", rows_xml, [])
    sheet = XlsxSheet(path, list_sheets(path)[0])
    first, again = list(sheet.rows(0, 1)), list(sheet.rows(0, 1))
    assert first == again
    assert len(first) == size
    assert first[-1] == SheetRow(
        size, False, {0: f"id{size}", 1: str(size)}, {1: _note("number", f"{size:010d}", "digits")}
    )


def test_excel_rows_and_columns_match_the_generic_source_path(tmp_path: Path) -> None:
    """`_ExcelSource` reads sheet rows directly; the generic `_records` path gives the same."""
    # The table starts in column B, column D has no header, E is outside it; row 4 is blank
    # (spaces only), row 5 hidden, row 6 has only a note, row 7 only a cell outside the table.
    rows_xml = """
      <row r="1"><c r="A1" t="inlineStr"><is><t>Title</t></is></c></row>
      <row r="2"><c r="B2" t="inlineStr"><is><t>id</t></is></c>
        <c r="C2" t="inlineStr"><is><t>deviceSerialNumber</t></is></c>
        <c r="E2" t="inlineStr"><is><t>groupTag</t></is></c></row>
      <row r="3"><c r="B3" t="inlineStr"><is><t>e1</t></is></c><c r="C3" s="1"><v>42</v></c>
        <c r="D3" t="inlineStr"><is><t>no header</t></is></c>
        <c r="E3" t="inlineStr"><is><t>  tag </t></is></c><c r="F3"><v>9</v></c></row>
      <row r="4"><c r="B4" t="inlineStr"><is><t>   </t></is></c></row>
      <row r="5" hidden="1"><c r="B5" t="inlineStr"><is><t>e2</t></is></c>
        <c r="D5"><f>1/0</f></c></row>
      <row r="6"><c r="C6"><f>A1</f></c></row>
      <row r="7"><c r="A7" t="inlineStr"><is><t>outside</t></is></c></row>
      <row r="8"><c r="B8" t="inlineStr"><is><t>e3</t></is></c><c r="D8" t="e"><v>#N/A</v></c>
        <c r="E8"><v>12345678901</v></c></row>
    """
    path = _book(tmp_path / "table.xlsx", rows_xml, [])
    source = open_input(path, header_row=2)
    assert source.headers == ["id", "deviceSerialNumber", "groupTag"]
    fast = list(source)
    fast_hidden = (source.hidden_rows.count, source.hidden_rows.first)
    generic = list(RowSource.__iter__(source))
    assert fast == generic
    assert fast_hidden == (source.hidden_rows.count, source.hidden_rows.first) == (1, [5])
    assert [r.number for r in fast] == [3, 5, 6, 8]
    assert fast[0].cells == {"id": "e1", "deviceSerialNumber": "42", "groupTag": "  tag "}
    assert fast[0].notes == {"deviceSerialNumber": _note("number", "0000000042", "digits")}
    assert fast[1].notes is None and fast[1].hidden
    for header in source.headers:
        assert list(source.column(header)) == list(RowSource.column(source, header))


def test_builtin_formats_are_openpyxls() -> None:
    from openpyxl.styles.numbers import BUILTIN_FORMATS

    assert xlsx._BUILTIN_FORMATS == BUILTIN_FORMATS


@given(
    st.lists(
        st.sampled_from([*'dmhysDMHYS0#.,;:"[]\\_@ E+-%$/', "[h]", "[mm]", "[Red]", "AM/PM"]),
        max_size=12,
    ).map("".join)
)
@example("yyyy-mm-dd;@")
@example("[h]:mm:ss.00")
@example('"day "0')
@example("[$-409]0")
def test_date_and_elapsed_formats_are_told_as_openpyxl_tells_them(code: str) -> None:
    from openpyxl.styles.numbers import is_date_format, is_timedelta_format

    assert xlsx._is_date_format(code) is is_date_format(code)
    assert xlsx._is_elapsed_format(code) is is_timedelta_format(code)


def test_a_sheet_without_shared_strings_or_dates_does_not_import_openpyxl(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _book(tmp_path / "plain.xlsx", '<row r="1"><c r="A1" s="1"><v>42</v></c></row>', [])
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "plain2.xlsx", "w") as out:
        for item in source.infolist():
            if item.filename != "xl/sharedStrings.xml":
                out.writestr(item, source.read(item))
    code = (
        "import sys; from pathlib import Path; from batch.xlsx import XlsxSheet, list_sheets; "
        f"p = Path({str(tmp_path / 'plain2.xlsx')!r}); "
        "rows = list(XlsxSheet(p, list_sheets(p)[0]).rows()); "
        "assert rows[0].notes[0].shown == '0000000042', rows; "
        "print('openpyxl' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
