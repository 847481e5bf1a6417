"""One worksheet of an .xlsx/.xlsm workbook, streamed row by row, each cell as Excel shows it.

Why not calamine (what the reader used before) or openpyxl's read-only mode:

* calamine returns values only: no number formats (a serial typed as a number with the format
  `0000000000` came out as `18401107`), no formulas (a formula without a saved value looked like
  an empty cell), no error cells (`#N/A` looked empty), no hidden rows. It also allocates the whole
  used rectangle before the first row (one cell at XFD1048576 asked for 512 GiB and aborted the
  process) and panics (a `BaseException`) on some duration cells.
* openpyxl's read-only worksheet has the number formats but took 16.7 s for the 100,000-row
  benchmark workbook (calamine: 1.1 s), and it does not say whether a formula has a saved value
  or which rows are hidden.

So the sheet XML is read here with the standard library's expat, in chunks, with Python
callbacks that keep only what a row needs (no element objects; memory flat). For the benchmark
workbook with number formats that pass takes ~3.7 s CPU, of which ~2.1 s is expat itself with
handlers that do nothing: the callbacks decide the common cells (inline or shared string, whole
number) inline and leave the rest to `XlsxSheet.value` (benchmarks/RESULTS.md, section 5).
Parsing XML is the cost, and callers read a file more than once (the mapper's duplicate-id pass,
then the rows): the first complete pass also writes every row to an anonymous temporary file
(`marshal`, about the size of the same data as CSV), and later passes replay it in a fraction of
the time. Without room for it, every pass parses again.
openpyxl still does what it does well: the shared-string table and Excel serial → date
conversion (imported only when a workbook has shared strings or date cells); the built-in
number formats and date/duration format detection are copied here from it (see
`_BUILTIN_FORMATS`).

Decisions worth knowing:

* Only the cells between the header's first and last filled column are materialised; a cell far
  away (XFD1048576) costs nothing. Row and column numbers beyond Excel's own limits are refused.
* A number cell yields its value as plain text (`3.0` → `3`, no exponent) for numeric properties,
  and a `CellNote` with the text Excel *displays* (its number format applied) for text
  properties, where that is what the admin sees and means. The mapper decides which applies.
* A date, time or duration cell yields ISO text (what a date property reads) and a `date` note
  with the text Excel displays (`d-mmm`: `2-Jan`); a boolean cell `true`/`false` and a `boolean`
  note (`TRUE`). In a text property they are Excel's conversion of what was typed (`2-Jan`,
  `true`), not a value anyone meant to send: the mapper makes them a problem there.
* A formula without a saved value and an error cell (`#N/A`, `#DIV/0!`) are not empty cells:
  they carry a note, and the mapper makes them a problem of their row.
* Sizes are checked before anything is loaded (`XlsxLimits`); parts held in memory (shared
  strings, styles) have a ceiling, the sheet itself is streamed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import marshal
import math
import posixpath
import re
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Final, NamedTuple
from xml.etree.ElementTree import Element, ParseError, fromstring
from xml.parsers import expat

from batch.errors import InputFileError
from batch.model import CellNote

__all__ = [
    "MAX_COLUMNS",
    "MAX_ROWS",
    "SheetInfo",
    "SheetRow",
    "XlsxLimits",
    "XlsxSheet",
    "column_index",
    "excel_cell_text",
    "format_date",
    "format_number",
    "list_sheets",
]

_MAIN_URI: Final = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_MAIN: Final = "{" + _MAIN_URI + "}"
# expat names elements "uri}local" (namespace_separator "}"); ElementTree "{uri}local".
_SHEET: Final = _MAIN_URI + "}"
_REL: Final = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL: Final = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_ROW: Final = _SHEET + "row"
_CELL: Final = _SHEET + "c"
_VALUE: Final = _SHEET + "v"
_FORMULA: Final = _SHEET + "f"
_INLINE: Final = _SHEET + "is"
_TEXT: Final = _SHEET + "t"
_PHONETIC: Final = _SHEET + "rPh"

#: Excel's own sheet limits (a cell reference beyond them is damage, not data).
MAX_ROWS: Final = 1_048_576
MAX_COLUMNS: Final = 16_384
_CHUNK_BYTES: Final = 256 * 1024
_NAMES: Final = (_ROW, _CELL, _VALUE, _FORMULA, _INLINE, _TEXT, _PHONETIC)
_SPOOL_ROWS: Final = 2000
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_REF: Final = re.compile(r"([A-Za-z]{1,3})(\d{1,7})")


@dataclass(frozen=True, kw_only=True)
class XlsxLimits:
    """What a workbook may need before it is refused (each message names its limit)."""

    file_bytes: int = 256 * 1024 * 1024
    #: Parts read whole into memory: the shared-string table, styles, the workbook part.
    shared_strings_bytes: int = 512 * 1024 * 1024
    small_part_bytes: int = 32 * 1024 * 1024
    #: The sheet XML is streamed; this only stops a zip bomb from running for hours.
    sheet_bytes: int = 8 * 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SheetInfo:
    """A worksheet's name, whether the user can see its tab, and its part in the zip."""

    name: str
    visible: bool
    part: str


class SheetRow(NamedTuple):
    """One `<row>`: Excel's row number, hidden or not, and its cells by 0-based column.

    A named tuple, not a frozen dataclass: one is made per row and pass, and a tuple costs a
    fraction of a frozen dataclass's `__init__`.
    """

    number: int
    hidden: bool
    texts: dict[int, str]
    notes: dict[int, CellNote] | None


def column_index(letters: str) -> int:
    """The 0-based index of a column's letters (A → 0, AA → 26)."""
    index = 0
    for char in letters.upper():
        index = index * 26 + ord(char) - 64
    return index - 1


def _bad(path: Path, reason: str) -> InputFileError:
    return InputFileError(path, f"not a readable Excel workbook ({reason})")


@contextlib.contextmanager
def _open_zip(path: Path, limits: XlsxLimits) -> Iterator[zipfile.ZipFile]:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(8)
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    if size > limits.file_bytes:
        raise InputFileError(
            path,
            f"the workbook is {size / 2**20:.0f} MiB; workbooks over "
            f"{limits.file_bytes // 2**20} MiB are not read (save it as CSV instead)",
        )
    if magic == _OLE_MAGIC:
        raise InputFileError(
            path,
            "the workbook is password-protected or an old .xls saved as .xlsx; "
            "remove the password or save it as .xlsx",
        )
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as error:
        raise _bad(path, f"not a zip archive: {error}") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError) as error:
        raise _bad(path, str(error)) from None


def _read_part(archive: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > limit:
        raise InputFileError(
            path,
            f"the workbook's part {name} unpacks to {info.file_size / 2**20:.0f} MiB; "
            f"parts over {limit // 2**20} MiB are not read",
        )
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        raise _bad(path, f"{name}: {error}") from None


def _xml(path: Path, name: str, data: bytes) -> Element:
    try:
        return fromstring(data)
    except ParseError as error:
        raise _bad(path, f"{name} is not valid XML: {error}") from None


def _part_path(base: str, target: str) -> str:
    """A relationship target as a zip member name (targets are relative to the part's folder)."""
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), target))


def _workbook_part(archive: zipfile.ZipFile, path: Path, limits: XlsxLimits) -> str:
    rels = _read_part(archive, path, "_rels/.rels", limits.small_part_bytes)
    if rels is not None:
        for rel in _xml(path, "_rels/.rels", rels).iter(_PKG_REL + "Relationship"):
            if rel.get("Type", "").endswith("/officeDocument"):
                return _part_path("", rel.get("Target", ""))
    return "xl/workbook.xml"


def list_sheets(path: Path, limits: XlsxLimits | None = None) -> list[SheetInfo]:
    """The workbook's worksheets in tab order (chart and macro sheets left out)."""
    limits = limits or XlsxLimits()
    with _open_zip(path, limits) as archive:
        book_part = _workbook_part(archive, path, limits)
        book = _read_part(archive, path, book_part, limits.small_part_bytes)
        if book is None:
            raise _bad(path, "no workbook part; is it really an .xlsx file?")
        rels_part = posixpath.join(
            posixpath.dirname(book_part), "_rels", posixpath.basename(book_part) + ".rels"
        )
        rels = _read_part(archive, path, rels_part, limits.small_part_bytes)
        targets: dict[str, str] = {}
        if rels is not None:
            for rel in _xml(path, rels_part, rels).iter(_PKG_REL + "Relationship"):
                if rel.get("Type", "").endswith("/worksheet"):
                    targets[rel.get("Id", "")] = _part_path(book_part, rel.get("Target", ""))
        sheets = []
        for sheet in _xml(path, book_part, book).iter(_MAIN + "sheet"):
            part = targets.get(sheet.get(_REL + "id", ""))
            if part is None:
                continue  # a chart sheet or a dialog sheet: no cells to read
            state = sheet.get("state", "visible")
            sheets.append(SheetInfo(sheet.get("name", ""), state == "visible", part))
        return sheets


# Excel's built-in number formats (ECMA-376 18.8.30), the ids styles use without declaring
# them, as openpyxl lists them; with the date tests below they are here so that reading a sheet
# of inline strings and numbers never imports openpyxl (~0.15 s of every run). openpyxl is still
# imported for the shared-string table and for date cells. tests/test_xlsx_stream.py checks
# all three against openpyxl's own.
_BUILTIN_FORMATS: Final[dict[int, str]] = {
    0: "General",
    1: "0",
    2: "0.00",
    3: "#,##0",
    4: "#,##0.00",
    5: '"$"#,##0_);("$"#,##0)',
    6: '"$"#,##0_);[Red]("$"#,##0)',
    7: '"$"#,##0.00_);("$"#,##0.00)',
    8: '"$"#,##0.00_);[Red]("$"#,##0.00)',
    9: "0%",
    10: "0.00%",
    11: "0.00E+00",
    12: "# ?/?",
    13: "# ??/??",
    14: "mm-dd-yy",
    15: "d-mmm-yy",
    16: "d-mmm",
    17: "mmm-yy",
    18: "h:mm AM/PM",
    19: "h:mm:ss AM/PM",
    20: "h:mm",
    21: "h:mm:ss",
    22: "m/d/yy h:mm",
    37: "#,##0_);(#,##0)",
    38: "#,##0_);[Red](#,##0)",
    39: "#,##0.00_);(#,##0.00)",
    40: "#,##0.00_);[Red](#,##0.00)",
    41: r'_(* #,##0_);_(* \(#,##0\);_(* "-"_);_(@_)',
    42: r'_("$"* #,##0_);_("$"* \(#,##0\);_("$"* "-"_);_(@_)',
    43: r'_(* #,##0.00_);_(* \(#,##0.00\);_(* "-"??_);_(@_)',
    44: r'_("$"* #,##0.00_)_("$"* \(#,##0.00\)_("$"* "-"??_)_(@_)',
    45: "mm:ss",
    46: "[h]:mm:ss",
    47: "mmss.0",
    48: "##0.0E+0",
    49: "@",
}
# A date format shows a day, month, year, hour, minute or second (outside quotes and brackets
# other than [h], [m], [s]); an elapsed-time format starts with [h], [m] or [s].
_DATE_NOISE: Final = re.compile(r'".*?"|\[(?!hh?\]|mm?\]|ss?\])[^\]]*\]')
_DATE_PART: Final = re.compile(r"(?<![_\\])[dmhysDMHYS]")
_ELAPSED: Final = re.compile(
    r"\[hh?\](:mm(:ss(\.0*)?)?)?|\[mm?\](:ss(\.0*)?)?|\[ss?\](\.0*)?", re.I
)


def _is_date_format(code: str) -> bool:
    """Whether a format code shows a date or time (only its first section counts)."""
    return _DATE_PART.search(_DATE_NOISE.sub("", code.split(";")[0])) is not None


def _is_elapsed_format(code: str) -> bool:
    """Whether a format code shows elapsed time (`[h]:mm:ss`): the cell is a duration."""
    return _ELAPSED.search(code.split(";")[0]) is not None


def _number_formats(archive: zipfile.ZipFile, path: Path, limits: XlsxLimits) -> list[str]:
    """The number format code of every cell style (`s` attribute) of the workbook."""
    data = _read_part(archive, path, "xl/styles.xml", limits.small_part_bytes)
    if data is None:
        return []
    root = _xml(path, "xl/styles.xml", data)
    custom: dict[int, str] = {}
    for fmt in root.iter(_MAIN + "numFmt"):
        with contextlib.suppress(ValueError):
            custom[int(fmt.get("numFmtId", ""))] = fmt.get("formatCode", "General")
    codes: list[str] = []
    xfs = root.find(_MAIN + "cellXfs")
    for xf in xfs if xfs is not None else ():
        try:
            number = int(xf.get("numFmtId", "0"))
        except ValueError:
            number = 0
        codes.append(custom.get(number) or _BUILTIN_FORMATS.get(number, "General"))
    return codes


def _shared_strings(archive: zipfile.ZipFile, path: Path, limits: XlsxLimits) -> list[str]:
    try:
        info = archive.getinfo("xl/sharedStrings.xml")
    except KeyError:
        return []
    # Imported only here: a workbook of inline strings is read without loading openpyxl.
    from openpyxl.reader.strings import read_string_table

    if info.file_size > limits.shared_strings_bytes:
        raise InputFileError(
            path,
            f"the workbook's shared strings unpack to {info.file_size / 2**20:.0f} MiB; "
            f"over {limits.shared_strings_bytes // 2**20} MiB is not read (save it as CSV)",
        )
    try:
        with archive.open(info) as handle:
            return list(read_string_table(handle))
    except (ParseError, zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise _bad(path, f"xl/sharedStrings.xml: {error}") from None


def _date_1904(archive: zipfile.ZipFile, path: Path, limits: XlsxLimits) -> bool:
    data = _read_part(archive, path, "xl/workbook.xml", limits.small_part_bytes)
    if data is None:
        return False
    pr = _xml(path, "xl/workbook.xml", data).find(_MAIN + "workbookPr")
    return pr is not None and pr.get("date1904", "").lower() in ("1", "true")


def _timespan_text(value: dt.timedelta) -> str:
    """A duration as .NET TimeSpan text `[-][d.]hh:mm:ss[.ffffff]`, as PowerShell prints it."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    days = f"{value.days}." if value.days else ""
    fraction = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{days}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}"


def excel_cell_text(value: object) -> str:
    """Turn one native Excel value (number, date, duration, bool) into the text a user types."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer():
            return str(int(value))
        # repr is the shortest text that reads back as the same float; Decimal drops the exponent.
        return format(Decimal(repr(value)), "f")
    if isinstance(value, dt.datetime):  # before date: datetime is a date subclass
        # Excel stores no offset: leave it off, so the value counts as "without offset".
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00"
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, dt.timedelta):
        return _timespan_text(value)
    if value is None:
        return ""
    return str(value)


# --- date formats --------------------------------------------------------------------------------

# One token of a date format section: "literal", \x, _x (space), *x (fill), [h]/[mm]/[ss]
# (elapsed), another [..] (colour, locale), AM/PM or A/P, a run of one date letter, a
# fraction of a second (.0), or any other character (shown as it is).
_DATE_TOKENS: Final = re.compile(
    r'"([^"]*)"|\\(.)|[_*].|\[([hms])+\]|\[[^\]]*\]|(am/pm|a/p)|(y+|m+|d+|h+|s+|e+)|(\.0+)|(.)',
    re.I | re.S,
)
_MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


_DatePlan = tuple[tuple[tuple[str, str], ...], bool, str]


@functools.lru_cache(maxsize=256)
def _date_plan(code: str) -> _DatePlan:
    """A date format as (step, text) parts, whether it shows AM/PM, and `date` or `time`.

    Steps: `text` (shown as it is), `elapsed` ([h], [m], [s]), `ampm`, `minutes`, `letter` (a
    run of one date letter), `fraction` (.00). Parsed once per format: a sheet of a million
    dates has a handful of formats. `date` when the format shows a day, month or year.
    """
    tokens = _DATE_TOKENS.findall(code.split(";")[0])
    letters = [i for i, t in enumerate(tokens) if t[2] or t[4]]
    steps: list[tuple[str, str]] = []
    detail = "time"
    for i, (quoted, escaped, elapsed, ampm, letter, fraction, other) in enumerate(tokens):
        if quoted or escaped or other:
            steps.append(("text", quoted or escaped or other))
        elif elapsed:
            steps.append(("elapsed", elapsed.lower()))
        elif ampm:
            steps.append(("ampm", ampm))
        elif letter and _is_minutes(tokens, letters, i):
            steps.append(("minutes", letter))
        elif letter:
            steps.append(("letter", letter))
            if letter[0].lower() in "ydem":
                detail = "date"
        elif fraction:
            steps.append(("fraction", fraction))
    return tuple(steps), any(t[3] for t in tokens), detail


def _date_detail(code: str) -> str:
    """`date` when the format shows a day, month or year, else `time` (`h:mm`)."""
    return _date_plan(code)[2]


def format_date(value: dt.datetime | dt.date | dt.time | dt.timedelta, code: str) -> str:
    """About what Excel displays for a date, time or duration cell with the format `code`.

    For messages only (the admin finds the cell by it): English month and day names, the
    built-in formats as their codes say (Excel shows some in the system's locale), fractions
    of a second truncated. Any value the code cannot show falls back to its ISO text.
    """
    if isinstance(value, dt.timedelta):
        total = value.total_seconds()
        stamp = dt.datetime.combine(dt.date(1899, 12, 31), dt.time()) + value
    elif isinstance(value, dt.time):
        total = value.hour * 3600 + value.minute * 60 + value.second
        stamp = dt.datetime.combine(dt.date(1899, 12, 31), value)
    elif isinstance(value, dt.datetime):
        total, stamp = 0.0, value
    else:
        total, stamp = 0.0, dt.datetime.combine(value, dt.time())
    steps, twelve, _ = _date_plan(code)
    parts: list[str] = []
    for step, text in steps:
        if step == "text":
            parts.append(text)
        elif step == "elapsed":
            parts.append(str(int(total // {"h": 3600, "m": 60, "s": 1}[text])))
        elif step == "ampm":
            pm = stamp.hour >= 12
            shown = ("PM" if pm else "AM") if len(text) == 5 else ("P" if pm else "A")
            parts.append(shown.lower() if text[0].islower() else shown)
        elif step == "fraction":
            digits = len(text) - 1
            parts.append("." + f"{stamp.microsecond:06d}"[:digits].ljust(digits, "0"))
        else:
            parts.append(_date_part(text, stamp, twelve, step == "minutes"))
    return "".join(parts).strip() or excel_cell_text(value)


def _is_minutes(tokens: list[tuple[str, ...]], letters: list[int], at: int) -> bool:
    """Whether `m`/`mm` at `at` means minutes: right after an hour or right before seconds."""
    if tokens[at][4][0].lower() != "m" or len(tokens[at][4]) > 2:
        return False
    place = letters.index(at)
    before = tokens[letters[place - 1]] if place > 0 else None
    after = tokens[letters[place + 1]] if place + 1 < len(letters) else None
    return (before is not None and (before[2] or before[4]).lower()[0] == "h") or (
        after is not None and (after[2] or after[4]).lower()[0] == "s"
    )


def _date_part(letter: str, stamp: dt.datetime, twelve: bool, minutes: bool) -> str:
    """One run of a date letter (`yyyy`, `mmm`, `d`, `hh`, `ss`) of `stamp`."""
    kind, width = letter[0].lower(), len(letter)
    if minutes:
        return f"{stamp.minute:0{min(width, 2)}d}"
    if kind in "ye":
        return f"{stamp.year % 100:02d}" if kind == "y" and width <= 2 else f"{stamp.year:04d}"
    if kind == "m":
        name = _MONTHS[stamp.month - 1]
        return (f"{stamp.month}", f"{stamp.month:02d}", name[:3], name, name[0])[min(width, 5) - 1]
    if kind == "d":
        day = _DAYS[stamp.weekday()]
        return (f"{stamp.day}", f"{stamp.day:02d}", day[:3], day)[min(width, 4) - 1]
    if kind == "h":
        hour = (stamp.hour % 12 or 12) if twelve else stamp.hour
        return f"{hour:0{min(width, 2)}d}"
    return f"{stamp.second:0{min(width, 2)}d}"


# --- number formats ------------------------------------------------------------------------------

_QUOTED: Final = re.compile(r'"[^"]*"|\\.')
# One token of a format section: "literal", \x, _x (a space as wide as x), *x (fill with x),
# [Red] or [>100] (colour, condition), a run of digit placeholders, or any other character.
_FORMAT_TOKENS: Final = re.compile(r'"([^"]*)"|\\(.)|[_*].|\[[^\]]*\]|([0#?,.]+)|(.)', re.S)
_PLACEHOLDER: Final = re.compile(r"[0#?]")


def _code_of(section: str) -> str:
    """A format section without its quoted literals, escapes, colours and conditions."""
    bare = _QUOTED.sub("", section)
    return re.sub(r"\[[^\]]*\]", "", bare)


@functools.lru_cache(maxsize=256)
def _format_kind(code: str) -> str:
    """general, scientific, digits or other (see `format_number`) for a whole format code."""
    bare = _code_of(code.split(";")[0])
    if code.strip().lower() in ("general", ""):
        return "general"
    if "E+" in bare.upper() or "E-" in bare.upper():
        return "scientific"
    if "%" in bare or "/" in bare or "@" in bare or not _PLACEHOLDER.search(bare):
        return "other"
    return "digits"


@functools.lru_cache(maxsize=256)
def _section_plan(section: str) -> tuple[tuple[bool, str], ...]:
    """A `digits` format section as (is the number, text) parts; parsed once per section."""
    plan: list[tuple[bool, str]] = []
    placed = False
    for quoted, escaped, digits, other in _FORMAT_TOKENS.findall(section):
        if quoted or escaped:
            plan.append((False, quoted or escaped))
        elif digits and not placed and _PLACEHOLDER.search(digits):
            plan.append((True, digits))
            placed = True
        elif digits:
            plan.append((False, digits.replace(",", "")))
        elif other:
            plan.append((False, other))
        # Spacing (_x), fills (*x), colours and conditions show no text.
    return tuple(plan)


def format_number(value: str, code: str) -> tuple[str, str]:
    """The text Excel displays for a number cell's stored value, and the kind of display.

    Kinds: `general` (no format chosen, Excel shows what fits, `9.36382E+11` for a 12-digit
    number), `scientific` (an `E+` format), `digits` (placeholders `0`/`#`: zero padding and
    decimals applied, thousands separators dropped, literals kept) and `other` (currency,
    percent, fractions, text `@`: the value is shown as plain digits, but it was not typed as
    text either).
    """
    kind = _format_kind(code)
    number = _decimal(value)
    if number is None or kind in ("general", "other"):
        return _general(value), "general" if number is None else kind
    sections = code.split(";")
    section = sections[0]
    if number < 0 and len(sections) > 1 and sections[1]:
        section = sections[1]
        number = -number
    if kind == "scientific":
        return _scientific(number, _code_of(section)), kind
    parts = [
        _digits(number, text) if is_number else text for is_number, text in _section_plan(section)
    ]
    return "".join(parts).strip(), kind


def _decimal(value: str) -> Decimal | None:
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _digits(number: Decimal, placeholders: str) -> str:
    whole, _, fraction = placeholders.replace(",", "").partition(".")
    decimals = len(fraction)
    sign = "-" if number < 0 else ""
    rounded = abs(number).quantize(Decimal(1).scaleb(-decimals)) if decimals else None
    if rounded is None:
        integer = abs(number).to_integral_value()
        digits = format(integer, "f")
        text = digits.zfill(whole.count("0")) if digits != "0" or "0" in whole else ""
        return sign + text
    integer_text, _, fraction_text = format(rounded, "f").partition(".")
    if integer_text == "0" and "0" not in whole:
        integer_text = ""
    return f"{sign}{integer_text.zfill(whole.count('0'))}.{fraction_text}"


def _general(value: str) -> str:
    """Excel's General display: up to 11 characters, scientific notation beyond."""
    number = _decimal(value)
    if number is None:
        return value
    if number == number.to_integral_value() and abs(number) < Decimal("1e11"):
        return format(number.to_integral_value(), "f")
    if Decimal("1e-9") <= abs(number) < Decimal("1e11"):
        text = f"{float(number):.10g}"
        return text if "e" not in text else _scientific(number, "0.00000E+00")
    return _scientific(number, "0.#####E+00")


def _scientific(number: Decimal, code: str) -> str:
    mantissa_code = code.upper().split("E")[0]
    decimals = len(mantissa_code.partition(".")[2])
    text = f"{float(number):.{decimals}E}"
    mantissa, _, exponent = text.partition("E")
    if "." in mantissa and "#" in mantissa_code:
        mantissa = mantissa.rstrip("0").rstrip(".")
    sign = exponent[0]
    return f"{mantissa}E{sign}{int(exponent[1:]):02d}"


# --- the sheet -----------------------------------------------------------------------------------


class XlsxSheet:
    """One worksheet: iterate `rows()` any number of times, each a fresh streaming pass."""

    def __init__(self, path: Path, sheet: SheetInfo, limits: XlsxLimits | None = None) -> None:
        self.path = path
        self.sheet = sheet
        self.limits = limits or XlsxLimits()
        with _open_zip(path, self.limits) as archive:
            try:
                info = archive.getinfo(sheet.part)
            except KeyError:
                raise _bad(path, f"sheet {sheet.name!r} has no part {sheet.part}") from None
            if info.file_size > self.limits.sheet_bytes:
                raise InputFileError(
                    path,
                    f"sheet {sheet.name!r} unpacks to {info.file_size / 2**30:.1f} GiB; "
                    f"sheets over {self.limits.sheet_bytes // 2**30} GiB are not read",
                )
            self._formats = _number_formats(archive, path, self.limits)
            self._strings = _shared_strings(archive, path, self.limits)
            self._epoch_1904 = _date_1904(archive, path, self.limits)
        # Per style index: None (General or plain), "date", "duration" or the format code.
        self._kinds: dict[int, tuple[str, str]] = {}
        # The rows of the latest complete pass, and the columns it covered (see the docstring).
        self._spool: _Spool | None = None
        self._spooled: tuple[int, int] | None = None
        self._finalizer: Callable[[], object] | None = None
        # Column letters → 0-based index, as met (a sheet repeats the same few letters).
        self._columns: dict[str, int] = {}
        # Per `s` attribute as written: how a whole number of that style is shown (see
        # `_integer_display`), or None where only the general path knows.
        self._integers: dict[str | None, _IntegerDisplay | None] = {}

    def _style(self, index: int) -> tuple[str, str]:
        """(kind, format code) of a cell style: kind is number, date or duration."""
        found = self._kinds.get(index)
        if found is None:
            code = self._formats[index] if 0 <= index < len(self._formats) else "General"
            if _is_elapsed_format(code):
                found = ("duration", code)
            elif _is_date_format(code):
                found = ("date", code)
            else:
                found = ("number", code)
            self._kinds[index] = found
        return found

    def rows(self, first: int = 0, last: int = MAX_COLUMNS - 1) -> Iterator[SheetRow]:
        """Every `<row>` in order with the cells of columns `first`..`last` (0-based).

        Raises `InputFileError` for damage (broken XML, a row or column beyond Excel's limits).
        """
        if self._spool is not None and self._spooled == (first, last):
            yield from self._replay(self._spool)
            return
        spool = _Spool.create()
        complete = False
        path = self.path
        try:
            with _open_zip(path, self.limits) as archive:
                try:
                    handle = archive.open(self.sheet.part)
                except (KeyError, zipfile.BadZipFile, OSError, NotImplementedError) as error:
                    raise _bad(path, f"{self.sheet.part}: {error}") from None
                with handle:
                    for row in self._parse(handle, first, last):
                        if spool is not None and not spool.add(row):
                            spool = None
                        yield row
            complete = spool is not None and spool.finish()
        finally:
            if complete and spool is not None:
                self._keep(spool, (first, last))
            elif spool is not None:
                spool.close()

    def _keep(self, spool: _Spool, columns: tuple[int, int]) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._spool, self._spooled = spool, columns
        self._finalizer = weakref.finalize(self, spool.close)

    @staticmethod
    def _replay(spool: _Spool) -> Iterator[SheetRow]:
        make = SheetRow._make
        for row in spool.replay():
            notes = row[3]
            if notes is None:
                yield make(row)
            else:
                yield SheetRow(row[0], row[1], row[2], {i: CellNote(*n) for i, n in notes.items()})

    def _parse(self, handle: IO[bytes], first: int, last: int) -> Iterator[SheetRow]:
        """The rows of the sheet XML, parsed in chunks by expat with `_Rows` collecting them."""
        rows = _Rows(self, first, last)
        # Names interned as the constants themselves: each comparison is an identity test.
        parser = expat.ParserCreate(namespace_separator="}", intern={name: name for name in _NAMES})
        parser.buffer_text = True
        parser.StartElementHandler = rows.start
        parser.EndElementHandler = rows.end
        parser.CharacterDataHandler = rows.text
        # A worksheet never has a DOCTYPE: refusing one shuts out entity tricks altogether.
        parser.StartDoctypeDeclHandler = _refuse_doctype
        try:
            while chunk := handle.read(_CHUNK_BYTES):
                parser.Parse(chunk, False)
                yield from rows.done
                rows.done.clear()
            parser.Parse(b"", True)
            yield from rows.done
        except expat.ExpatError as error:
            where = f" after row {rows.number}" if rows.number else ""
            raise _bad(self.path, f"the sheet's XML is damaged{where}: {error}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise _bad(self.path, f"the sheet cannot be unpacked: {error}") from None

    def column(self, letters: str, ref: str, number: int) -> int:
        """The 0-based column of a cell reference's letters (remembered; checked once)."""
        found = self._columns.get(letters)
        if found is not None:
            return found
        if _REF.fullmatch(ref) is None:
            raise InputFileError(self.path, f"row {number}: bad cell reference {ref!r}")
        column = column_index(letters)
        if column >= MAX_COLUMNS:
            raise InputFileError(
                self.path, f"cell {ref} is beyond Excel's last column (XFD, {MAX_COLUMNS:,})"
            )
        self._columns[letters] = column
        return column

    def row_number(self, ref: str | None, previous: int) -> int:
        """A `<row r>` number, checked: within Excel's limit and after the previous row."""
        number = int(ref) if ref and ref.isdigit() and len(ref) <= 7 else previous + 1
        if number > MAX_ROWS:
            raise InputFileError(
                self.path, f"row number {ref} is beyond Excel's last row ({MAX_ROWS:,})"
            )
        if number <= previous:
            raise InputFileError(
                self.path, f"row {ref} comes after row {previous}: the sheet's rows are disordered"
            )
        return number

    def value(
        self,
        kind: str,
        value: str | None,
        formula: str | None,
        inline: list[str] | None,
        style: str | None,
    ) -> tuple[str, CellNote | None]:
        """One cell's text (and note) from what its XML held."""
        if inline is not None and kind == "inlineStr":
            return "".join(inline), None
        # A formula without a saved value: no <v>, or an empty one where the result is a number
        # (openpyxl and other writers leave `<v></v>`); an empty text result is a real value.
        if formula is not None and (value is None or (not value and kind in ("n", "e", "b"))):
            return "", CellNote("formula", "", "=" + formula)
        if value is None:
            return "", None
        if kind == "s":
            try:
                return self._strings[int(value)], None
            except (ValueError, IndexError):
                return "", CellNote("error", "", f"points at shared string {value}, not there")
        if kind in ("str", "inlineStr"):
            return value, None
        if kind == "d":
            # An ISO 8601 date cell (strict OOXML): still a date Excel made, not typed text.
            return value, CellNote("date", value, "date")
        if kind == "b":
            truth = value.strip() in ("1", "true")
            # Excel shows (and turns typed `true` into) TRUE/FALSE; the property decides.
            return ("true" if truth else "false"), CellNote("boolean", str(truth).upper(), "")
        if kind == "e":
            return "", CellNote("error", value, value)
        return self.number(value, style)

    def number(self, value: str, style: str | None) -> tuple[str, CellNote | None]:
        """A number cell's text and note; `value` is its `<v>`, `style` its `s` attribute.

        Nearly every number cell holds a whole number of plain ASCII digits (a serial, a count):
        those are shown from a per-style plan without `Decimal` arithmetic. The plan gives the
        same text as `format_number` (tests/test_xlsx_stream.py compares them); every other
        value takes the general path.
        """
        try:
            display = self._integers[style]
        except KeyError:
            display = self._integers[style] = self._integer_display(style)
        if display is not None and value.isdigit() and value.isascii():
            plain = value.lstrip("0") or "0"
            detail, prefix, zeros, suffix = display
            if zeros < 0:  # General (and `other`): the digits, while they fit in 11 characters
                if len(plain) <= 11:
                    return plain, CellNote("number", plain, detail)
            else:
                digits = plain.zfill(zeros) if zeros or plain != "0" else ""
                if prefix or suffix:
                    digits = f"{prefix}{digits}{suffix}".strip()
                return plain, CellNote("number", digits, detail)
        return self._number(value, style)

    def _integer_display(self, style: str | None) -> _IntegerDisplay | None:
        """How `format_number` shows a whole non-negative number of this style, when simple."""
        kind, code = self._style(_style_index(style))
        if kind != "number":
            return None
        detail = _format_kind(code)
        if detail in ("general", "other"):
            return (detail, "", -1, "")
        if detail != "digits":
            return None
        # A number that is not negative is always shown by the first section.
        plan = _section_plan(code.split(";")[0])
        numbers = [i for i, (is_number, _) in enumerate(plan) if is_number]
        if len(numbers) != 1:
            return None
        at = numbers[0]
        whole, _, fraction = plan[at][1].replace(",", "").partition(".")
        if fraction:
            return None  # decimals: `_digits` rounds with Decimal
        prefix = "".join(text for _, text in plan[:at])
        suffix = "".join(text for _, text in plan[at + 1 :])
        return (detail, prefix, whole.count("0"), suffix)

    def _number(self, value: str, style: str | None) -> tuple[str, CellNote | None]:
        kind, code = self._style(_style_index(style))
        number = _decimal(value.strip())
        if number is None:
            return "", CellNote("error", value, f"not a number: {value[:40]!r}")
        if kind != "number":
            return self._date(number, kind, code)
        plain = _plain(number)
        shown, display = format_number(value.strip(), code)
        return plain, CellNote("number", shown, display)

    def _date(self, number: Decimal, kind: str, code: str) -> tuple[str, CellNote | None]:
        from openpyxl.utils.datetime import CALENDAR_MAC_1904, CALENDAR_WINDOWS_1900, from_excel

        epoch = CALENDAR_MAC_1904 if self._epoch_1904 else CALENDAR_WINDOWS_1900
        try:
            # Past timedelta's and datetime's ranges Excel itself shows ####.
            if abs(number) > 3_000_000:
                raise OverflowError
            converted = from_excel(float(number), epoch, timedelta=kind == "duration")
        except (OverflowError, ValueError, ArithmeticError):
            what = "duration" if kind == "duration" else "date"
            return "", CellNote("error", "####", f"the {what} {_plain(number)} is out of range")
        # The note says what Excel displays, for a text property where the date is damage.
        detail = "duration" if kind == "duration" else _date_detail(code)
        return excel_cell_text(converted), CellNote("date", format_date(converted, code), detail)


class _DoctypeRefused(expat.ExpatError):
    pass


def _refuse_doctype(*_: object) -> None:
    raise _DoctypeRefused("a worksheet has no DOCTYPE; this one declares one")


class _Rows:
    """expat callbacks that collect a sheet's rows into `done`, one `SheetRow` per `<row>`.

    Only what a row needs is kept: no element objects are built (building them was most of the
    cost of reading a sheet with ElementTree). The callbacks are closures over local state, not
    methods: expat calls them twice per element, and a closure cell is cheaper than an attribute.
    """

    def __init__(self, sheet: XlsxSheet, first: int, last: int) -> None:
        self.done: list[SheetRow] = []
        self._number = [0]
        self.start, self.end, self.text = _callbacks(sheet, first, last, self.done, self._number)

    @property
    def number(self) -> int:
        """The number of the row read last."""
        return self._number[0]


def _callbacks(
    sheet: XlsxSheet, first: int, last: int, done: list[SheetRow], latest: list[int]
) -> tuple[Callable[[str, dict[str, str]], None], Callable[[str], None], Callable[[str], None]]:
    # Per element expat makes a call into Python, so each branch does as little as it can:
    # the common cells (an inline or shared string, a number) are decided here, the rest by
    # `XlsxSheet.value`; an inline string's runs go straight into one list.
    number = 0
    hidden = False
    texts: dict[int, str] = {}
    notes: dict[int, CellNote] | None = None
    column = -1
    cell: dict[str, str] = {}
    value: str | None = None
    formula: str | None = None
    inline: list[str] | None = None
    phonetic = False
    buffer: list[str] | None = None
    column_of, cell_value, number_of = sheet.column, sheet.value, sheet.number
    columns, strings = sheet._columns, sheet._strings
    make_row = SheetRow._make

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal number, hidden, texts, notes, column, cell, value, formula, inline
        nonlocal phonetic, buffer
        if name == _CELL:
            cell = attrs
            ref = attrs.get("r")
            if ref:
                letters = ref.rstrip("0123456789")
                found = columns.get(letters)
                column = column_of(letters, ref, number) if found is None else found
            else:
                column += 1
            value = formula = inline = None
        elif name == _TEXT:
            if inline is not None and not phonetic:
                buffer = inline
        elif name == _INLINE:
            inline = []
        elif name in (_VALUE, _FORMULA):
            buffer = []
        elif name == _ROW:
            number = latest[0] = sheet.row_number(attrs.get("r"), number)
            hidden = attrs.get("hidden") in ("1", "true")
            texts, notes, column = {}, None, -1
        elif name == _PHONETIC:
            phonetic = True  # furigana runs are not the cell's text

    def end(name: str) -> None:
        nonlocal notes, value, formula, phonetic, buffer
        if name == _CELL:
            if first <= column <= last:
                note = None
                kind = cell.get("t", "n")
                if inline is not None and kind == "inlineStr":
                    text = "".join(inline)
                elif formula is None and value is not None and kind == "n":
                    text, note = number_of(value, cell.get("s"))
                elif formula is None and value is not None and kind == "s":
                    try:
                        text = strings[int(value)]
                    except (ValueError, IndexError):
                        text, note = cell_value(kind, value, formula, inline, cell.get("s"))
                else:
                    text, note = cell_value(kind, value, formula, inline, cell.get("s"))
                if text:
                    texts[column] = text
                if note is not None:
                    if notes is None:
                        notes = {}
                    notes[column] = note
        elif name == _TEXT:
            buffer = None  # the run is already in `inline`
        elif name == _INLINE:
            pass
        elif name == _VALUE:
            value = "".join(buffer or ())
            buffer = None
        elif name == _ROW:
            done.append(make_row((number, hidden, texts, notes)))
        elif name == _FORMULA:
            formula = "".join(buffer or ())
            buffer = None
        elif name == _PHONETIC:
            phonetic = False

    def text(data: str) -> None:
        if buffer is not None:
            buffer.append(data)

    return start, end, text


# (display kind, text before the digits, zeros to pad to or -1 for General, text after).
_IntegerDisplay = tuple[str, str, int, str]

_SpoolRow = tuple[int, bool, dict[int, str], dict[int, tuple[str, str, str]] | None]


class _Spool:
    """An anonymous temporary file of rows in `marshal` blocks of `_SPOOL_ROWS` rows each."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._block: list[_SpoolRow] = []

    @classmethod
    def create(cls) -> _Spool | None:
        """A new spool, or None when no temporary file can be made (every pass then parses)."""
        try:
            return cls(tempfile.TemporaryFile(prefix="autopilot-batch-"))
        except OSError:
            return None

    def add(self, row: SheetRow) -> bool:
        """Keep one row; False (and the spool closed) when the disk refuses it."""
        number, hidden, texts, notes = row
        if notes is not None:
            self._block.append(
                (number, hidden, texts, {i: (n.kind, n.shown, n.detail) for i, n in notes.items()})
            )
        else:
            self._block.append((number, hidden, texts, None))
        return len(self._block) < _SPOOL_ROWS or self._flush()

    def finish(self) -> bool:
        """Write what is left; False (and the spool closed) when the disk refuses it."""
        return self._flush()

    def _flush(self) -> bool:
        data = marshal.dumps(self._block)
        self._block = []
        try:
            self._handle.write(len(data).to_bytes(8, "little"))
            self._handle.write(data)
        except OSError:
            self.close()
            return False
        return True

    def replay(self) -> Iterator[_SpoolRow]:
        """Every kept row, in order."""
        handle = self._handle
        handle.seek(0)
        while header := handle.read(8):
            rows: list[_SpoolRow] = marshal.loads(handle.read(int.from_bytes(header, "little")))
            yield from rows

    def close(self) -> None:
        """Delete the file."""
        self._handle.close()


def _style_index(style: str | None) -> int:
    """A cell's `s` attribute as a style index (missing or unreadable: style 0)."""
    try:
        return int(style) if style else 0
    except ValueError:
        return 0


def _plain(number: Decimal) -> str:
    """A number as plain digits: `3.0` → `3`, `1.5E+3` → `1500`, never an exponent."""
    if number == number.to_integral_value():
        return format(number.to_integral_value(), "f")
    # Excel stores doubles: their shortest repr is what the user typed.
    as_float = float(number)
    if math.isfinite(as_float):
        return format(Decimal(repr(as_float)), "f")
    return format(number, "f")
