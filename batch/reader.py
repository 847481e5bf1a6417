"""Input files (CSV, XLSX, XLSM) → `RawRow`s of text cells, streamed, with file-level errors.

The reader knows files, not properties: it finds the header row, hands out every data row as
text exactly as the user sees it, and turns every way a file can be unreadable into one
`InputFileError` line. Mapping headers to properties is `batch.mapper`'s job.

Decisions worth knowing:

* Every cell is text. CSV cells are read verbatim (no float ids, no lost leading zeros, no `nan`).
  Excel workbooks are read by `batch.xlsx` (see its docstring for why not calamine): whole numbers
  as integers (`3.0` → `3`), other numbers without exponent, date/time cells as ISO text *without*
  an offset (so they need `--assume-tz`), durations as .NET TimeSpan text, booleans as
  `true`/`false`. Number cells, formulas without a saved value and error cells also carry a
  `CellNote` (what Excel displays, or why there is no value); the mapper decides per property.
* Row numbers are the file's own, as Excel shows them: the header is row 1 (or `header_row`, for
  files with a title above the header) and the first data row follows it. Rows whose cells are
  all blank are treated as absent (Excel files often carry trailing empty rows); they are not
  returned and not counted, but they keep their numbers.
* Hidden rows (an Excel filter, or hidden by hand) are returned with `RawRow.hidden`; the source
  counts them (`hidden_rows`) so the caller can say so before anything is sent.
* A column with a blank header is not returned (there is no property to map it to); its letter is
  listed in `RowSource.ignored_columns` so callers can warn about it.
* A CSV row with more cells than the header is an error naming the row; a shorter row is padded
  with empty cells (empty means "leave unchanged").
* Iterating a `RowSource` re-opens the file, so a source can be read any number of times with
  flat memory (pandas chunks for CSV, `batch.xlsx`'s streaming parse and its spool for Excel).
  pandas is imported only when a CSV is read: an Excel run does not pay for loading it.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from batch.errors import InputFileError, UsageError
from batch.model import CellNote, RawRow
from batch.xlsx import MAX_COLUMNS, SheetRow, XlsxSheet, excel_cell_text, list_sheets

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CSV_SUFFIXES",
    "EXCEL_SUFFIXES",
    "HiddenRows",
    "RowSource",
    "column_letter",
    "excel_cell_text",
    "file_sha256",
    "open_input",
]

CSV_SUFFIXES: Final = frozenset({".csv"})
EXCEL_SUFFIXES: Final = frozenset({".xlsx", ".xlsm"})

_HASH_BLOCK = 1 << 20
_SNIFF_BYTES = 64 * 1024
_DELIMITERS: Final = (",", ";", "\t")
# pandas reports tokenizer failures with the record number; these pull it out of the message.
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_IN_STRING = re.compile(r"EOF inside string starting at row (\d+)")
# How many rows below a one-cell "header" are searched for the real header (a title row hint).
_HEADER_SEARCH_ROWS: Final = 20
# Hidden row numbers kept for messages; beyond this only the count grows.
_HIDDEN_SHOWN: Final = 20


class _Record(NamedTuple):
    number: int
    cells: Sequence[str]
    notes: dict[int, CellNote] | None = None
    hidden: bool = False


class HiddenRows:
    """The hidden rows one pass over a sheet met: the count and the first few numbers."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] = []

    def add(self, number: int) -> None:
        """Count one hidden row."""
        self.count += 1
        if len(self.first) < _HIDDEN_SHOWN:
            self.first.append(number)

    def describe(self) -> str:
        """`rows 4, 9 and 12` or `rows 4, 9, … (250 rows)`, for messages."""
        shown = ", ".join(str(n) for n in self.first)
        if self.count > len(self.first):
            return f"rows {shown}, … ({self.count:,} rows)"
        return f"row {shown}" if self.count == 1 else f"rows {shown}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes as lowercase hex (the run ledger's input digest)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    return digest.hexdigest()


def column_letter(index: int) -> str:
    """The spreadsheet letter of a 0-based column index (0 → A, 26 → AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _blank(cell: str) -> bool:
    return not cell or cell.isspace()


def _likely_header(rows: Iterator[tuple[int, Sequence[str]]], header_number: int) -> int | None:
    """The first row below a one-cell header row with two or more filled cells (a title hint)."""
    for number, cells in rows:
        if number > header_number + _HEADER_SEARCH_ROWS:
            return None
        if sum(1 for c in cells if not _blank(c)) >= 2:
            return number
    return None


class RowSource:
    """A re-iterable stream of one input file's data rows.

    Every `iter()` re-opens the file and yields `RawRow(number, cells)` with the file's own row
    numbers and `cells` keyed by the header text, skipping rows whose cells are all blank.
    """

    path: Path
    headers: list[str]
    ignored_columns: list[str]
    #: The hidden rows met by the latest full pass (Excel only; CSV rows are never hidden).
    hidden_rows: HiddenRows
    #: When the header row has a single filled cell (a title?), the row that looks like the
    #: header, for the hint in errors; else None.
    title_hint: int | None = None

    def __init__(
        self,
        path: Path,
        header_cells: Sequence[str],
        header_number: int,
        *,
        first_column: int = 0,
    ) -> None:
        self.path = path
        self.header_number = header_number
        self.hidden_rows = HiddenRows()
        if len(header_cells) > MAX_COLUMNS:
            raise InputFileError(
                path,
                f"the header (row {header_number}) has {len(header_cells):,} columns; "
                f"at most {MAX_COLUMNS:,} are read (Excel's limit)",
            )
        cleaned = [cell.strip() for cell in header_cells]
        if cleaned:
            cleaned[0] = cleaned[0].lstrip("\ufeff").strip()
        self._positions = [i for i, cell in enumerate(cleaned) if cell]
        if not self._positions:
            raise InputFileError(path, f"the header row (row {header_number}) is empty")
        self.headers = [cleaned[i] for i in self._positions]
        # Letters as the spreadsheet shows them (an Excel sheet may start in a later column).
        letter = [column_letter(first_column + i) for i in range(len(cleaned))]
        self.ignored_columns = [letter[i] for i, cell in enumerate(cleaned) if not cell]
        seen: dict[str, int] = {}
        for i in self._positions:
            if cleaned[i] in seen:
                raise InputFileError(
                    path,
                    f"duplicate column header {cleaned[i]!r} "
                    f"(columns {letter[seen[cleaned[i]]]} and {letter[i]})",
                )
            seen[cleaned[i]] = i
        self._width = len(cleaned)

    def _records(self) -> Iterator[_Record]:
        """Every row after the header (number, cells, notes, hidden), blank rows included."""
        raise NotImplementedError  # pragma: no cover - every concrete source overrides it

    def _data(self) -> Iterator[_Record]:
        hidden = self.hidden_rows = HiddenRows()
        for record in self._records():
            # Stops at the first filled cell (usually the id), so it is cheap per row. A cell
            # with a note (a formula without a value, an error) is not blank: it needs a word.
            if record.notes or not all(_blank(cell) for cell in record.cells):
                if record.hidden:
                    hidden.add(record.number)
                yield record

    def __iter__(self) -> Iterator[RawRow]:
        headers, positions = self.headers, self._positions
        contiguous = positions == list(range(len(positions)))
        for number, cells, notes, hidden in self._data():
            if contiguous:
                row = dict(zip(headers, cells, strict=False))
            else:
                row = {h: cells[i] for h, i in zip(headers, positions, strict=True)}
            if notes is None:
                yield RawRow(number, row, None, hidden)
            else:
                named = {
                    headers[positions.index(i)]: note for i, note in notes.items() if i in positions
                }
                yield RawRow(number, row, named or None, hidden)

    def column(self, header: str) -> Iterator[tuple[int, str]]:
        """(row number, cell text) of one column for every data row; cheaper than full rows."""
        index = self._positions[self.headers.index(header)]
        for record in self._data():
            yield record.number, record.cells[index]

    def noted_column(self, header: str) -> Iterator[tuple[int, str, CellNote | None]]:
        """As `column`, with each cell's note (Excel only; None for a plain cell)."""
        index = self._positions[self.headers.index(header)]
        for record in self._data():
            notes = record.notes
            yield record.number, record.cells[index], notes.get(index) if notes else None

    def count(self) -> int:
        """The number of data rows (blank rows excluded), by reading the file once."""
        return sum(1 for _ in self._data())


def _read_csv(
    path: Path,
    encoding: str,
    delimiter: str,
    chunk_size: int,
    nrows: int | None = None,
    skip: int = 0,
) -> Iterator[pd.DataFrame]:
    """pandas chunks of every record from the header on (`skip` title rows left out), as text."""
    import pandas as pd  # CSV only: an Excel file is read without it (pandas takes ~0.3 s)

    reader = pd.read_csv(
        path,
        header=None,
        sep=delimiter,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        # Blank lines stay in so that record numbers are the file's own row numbers.
        skip_blank_lines=False,
        encoding=encoding,
        encoding_errors="strict",
        engine="c",
        chunksize=chunk_size,
        nrows=nrows,
        skiprows=skip,
    )
    with reader:
        yield from reader


@contextlib.contextmanager
def _csv_errors(path: Path, encoding: str, skip: int = 0) -> Iterator[None]:
    """Turn what pandas raises while reading a CSV into one `InputFileError` line."""
    import pandas as pd

    try:
        yield
    except UnicodeDecodeError:
        line = _first_undecodable_line(path, encoding)
        where = f" (line {line})" if line else ""
        hint = ", e.g. --encoding cp1252 if Excel saved it" if _is_utf8(encoding) else ""
        raise InputFileError(
            path,
            f"not valid {_display_encoding(encoding)} text{where}; "
            f"pass the file's encoding with --encoding{hint}",
        ) from None
    except pd.errors.EmptyDataError:
        raise InputFileError(path, "the file is empty (no header row)") from None
    except pd.errors.ParserError as error:
        message = str(error)
        if m := _RAGGED.search(message):
            hint = ""
            if m[1] == "1":
                hint = "; if row 1 is a title above the header, pass --header-row N"
            raise InputFileError(
                path,
                f"row {int(m[2]) + skip} has {m[3]} cells but the header (row {skip + 1}) "
                f"has {m[1]}{hint}",
            ) from None
        if m := _EOF_IN_STRING.search(message):
            raise InputFileError(
                path, f'row {int(m[1]) + 1 + skip} opens a quoted cell (") that is never closed'
            ) from None
        raise InputFileError(path, f"not a readable CSV file: {message}") from None
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise InputFileError(path, f"not a readable CSV file: {error}") from None


class _CsvSource(RowSource):
    def __init__(
        self, path: Path, encoding: str, delimiter: str, chunk_size: int, header_row: int
    ) -> None:
        self._encoding = encoding
        self._delimiter = delimiter
        self._chunk_size = chunk_size
        # Rows above the header (titles) are left out; numbers stay the file's own.
        self._skip = header_row - 1
        with _csv_errors(path, encoding, self._skip):
            first = next(_read_csv(path, encoding, delimiter, 1, nrows=1, skip=self._skip), None)
        if first is None or first.empty:
            where = "no header row" if header_row == 1 else f"nothing at row {header_row}"
            raise InputFileError(path, f"the file is empty ({where})")
        header = [str(cell) for cell in first.iloc[0].tolist()]
        super().__init__(path, header, header_row)
        if sum(1 for c in header if not _blank(c)) == 1:
            self.title_hint = _likely_header(self._first_lines(), header_row)

    def _first_lines(self) -> Iterator[tuple[int, Sequence[str]]]:
        """The rows below the header as the csv module splits them (only for the title hint)."""
        with contextlib.suppress(OSError, UnicodeDecodeError, csv.Error):
            with self.path.open("rb") as handle:
                head = handle.read(_SNIFF_BYTES).decode(self._encoding, errors="replace")
            rows = csv.reader(io.StringIO(head), delimiter=self._delimiter)
            for number, cells in enumerate(rows, start=1):
                if number > self.header_number:
                    yield number, cells

    def _records(self) -> Iterator[_Record]:
        for number, cells in self._cells():
            yield _Record(number, cells)

    def _cells(self) -> Iterator[tuple[int, Sequence[str]]]:
        skip = self._skip
        with _csv_errors(self.path, self._encoding, skip):
            for chunk in _read_csv(
                self.path, self._encoding, self._delimiter, self._chunk_size, skip=skip
            ):
                # pandas numbers the records of every chunk from the header on.
                number = int(chunk.index[0]) + skip
                for cells in zip(*(chunk[name].tolist() for name in chunk.columns), strict=True):
                    number += 1
                    if number > self.header_number:
                        yield number, cells

    def __iter__(self) -> Iterator[RawRow]:
        # As `RowSource.__iter__`, without a `_Record` per row: a CSV row has no notes and is
        # never hidden, and the first cell (usually the id) is enough to tell it is not blank.
        self.hidden_rows = HiddenRows()
        headers, positions = self.headers, self._positions
        contiguous = positions == list(range(len(positions)))
        for number, cells in self._cells():
            first = cells[0] if cells else ""
            if (not first or first.isspace()) and all(_blank(cell) for cell in cells):
                continue
            if contiguous:
                yield RawRow(number, dict(zip(headers, cells, strict=False)))
            else:
                yield RawRow(number, {h: cells[i] for h, i in zip(headers, positions, strict=True)})

    def noted_column(self, header: str) -> Iterator[tuple[int, str, CellNote | None]]:
        """As `RowSource.noted_column`: a CSV cell never has a note."""
        for number, text in self.column(header):
            yield number, text, None

    def column(self, header: str) -> Iterator[tuple[int, str]]:
        """As `RowSource.column`, without building full rows: the first pass over a big file."""
        index = self._positions[self.headers.index(header)]
        skip = self._skip
        with _csv_errors(self.path, self._encoding, skip):
            for chunk in _read_csv(
                self.path, self._encoding, self._delimiter, self._chunk_size, skip=skip
            ):
                first = int(chunk.index[0]) + 1 + skip
                for offset, value in enumerate(chunk[index].tolist()):
                    number = first + offset
                    if number <= self.header_number:
                        continue  # the header row
                    # A blank key cell counts only if some other cell of the row is filled.
                    filled = value and not value.isspace()
                    if filled or not all(_blank(c) for c in chunk.iloc[offset].tolist()):
                        yield number, value


class _ExcelSource(RowSource):
    def __init__(self, path: Path, sheet: XlsxSheet, header_row: int | None) -> None:
        self._sheet = sheet
        number, cells = self._header(path, sheet, header_row)
        filled = sorted(cells)
        # The table starts at the header's first filled column and ends at its last: cells
        # elsewhere are not materialised (one cell at XFD1048576 costs nothing).
        self._first_column = filled[0]
        last = filled[-1]
        header = [cells.get(i, "") for i in range(self._first_column, last + 1)]
        super().__init__(path, header, number, first_column=self._first_column)
        if len(filled) == 1:
            self.title_hint = _likely_header(self._texts_below(number), number)

    @staticmethod
    def _header(path: Path, sheet: XlsxSheet, header_row: int | None) -> tuple[int, dict[int, str]]:
        # Without --header-row the header is the first row with anything in it: leading empty
        # rows are common in hand-made sheets, and their numbers still count.
        for row in sheet.rows():
            if header_row is not None and row.number < header_row:
                continue
            texts = {i: t for i, t in row.texts.items() if not _blank(t)}
            if header_row is not None and row.number > header_row:
                break
            if texts:
                return row.number, texts
            if header_row is not None:
                break
        if header_row is not None:
            raise InputFileError(
                path, f"sheet {sheet.sheet.name!r}: row {header_row} (--header-row) is empty"
            )
        raise InputFileError(path, f"sheet {sheet.sheet.name!r} has no header row (it is empty)")

    def _texts_below(self, header_number: int) -> Iterator[tuple[int, Sequence[str]]]:
        for row in self._sheet.rows(self._first_column, MAX_COLUMNS - 1):
            if row.number > header_number:
                yield row.number, list(row.texts.values())

    # `__iter__` and `column` read the sheet's rows directly rather than through `_records`:
    # no list of every column's text per row and pass, the same rows and cells as the generic
    # path gives (tests/test_xlsx_stream.py compares them).

    def _sheet_rows(self) -> Iterator[SheetRow]:
        """The data rows of the table's columns, blank ones left out, hidden ones counted."""
        hidden = self.hidden_rows = HiddenRows()
        header, first = self.header_number, self._first_column
        for row in self._sheet.rows(first, first + self._width - 1):
            # The texts hold only filled cells, so a row is blank when all of them are spaces.
            if row.number <= header or not (
                row.notes or any(not text.isspace() for text in row.texts.values())
            ):
                continue
            if row.hidden:
                hidden.add(row.number)
            yield row

    def __iter__(self) -> Iterator[RawRow]:
        first = self._first_column
        named = {first + i: h for h, i in zip(self.headers, self._positions, strict=True)}
        empty = dict.fromkeys(self.headers, "")
        for number, hidden, texts, notes in self._sheet_rows():
            cells = empty.copy()
            for column, text in texts.items():
                header = named.get(column)
                if header is not None:
                    cells[header] = text
            if notes is None:
                yield RawRow(number, cells, None, hidden)
            else:
                noted = {named[c]: note for c, note in notes.items() if c in named}
                yield RawRow(number, cells, noted or None, hidden)

    def column(self, header: str) -> Iterator[tuple[int, str]]:
        """As `RowSource.column`: the cell of one column for every data row."""
        column = self._first_column + self._positions[self.headers.index(header)]
        for row in self._sheet_rows():
            yield row.number, row.texts.get(column, "")

    def noted_column(self, header: str) -> Iterator[tuple[int, str, CellNote | None]]:
        """As `RowSource.noted_column`, from the sheet's rows directly (as `column`)."""
        column = self._first_column + self._positions[self.headers.index(header)]
        for row in self._sheet_rows():
            notes = row.notes
            yield row.number, row.texts.get(column, ""), notes.get(column) if notes else None

    def _records(self) -> Iterator[_Record]:
        width, first = self._width, self._first_column
        for row in self._sheet.rows(first, first + width - 1):
            if row.number <= self.header_number:
                continue
            texts = [""] * width
            for column, text in row.texts.items():
                texts[column - first] = text
            notes = None
            if row.notes is not None:
                notes = {column - first: note for column, note in row.notes.items()}
            yield _Record(row.number, texts, notes, row.hidden)


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _display_encoding(encoding: str) -> str:
    return "UTF-8" if _is_utf8(encoding) else encoding


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """The 1-based physical line holding the first byte that does not decode (for the message)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    decoder.decode(line)
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def _sniff(path: Path, encoding: str, header_row: int = 1) -> str:
    """Check the start of a CSV file for the ways it is not CSV text; return the delimiter."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise InputFileError(path, f"cannot read: {error.strerror or error}") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputFileError(path, "the file is empty (no header row)")
    if head.startswith(b"PK\x03\x04"):
        raise InputFileError(
            path, "this is an Excel workbook (or another zip file), not CSV; name it .xlsx"
        )
    if _is_utf8(encoding) and b"\x00" in head:
        hint = " (UTF-16? pass --encoding utf-16)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputFileError(path, f"binary data, not CSV text{hint}")
    # The header line decides the delimiter: Excel in many European locales saves `;`-separated
    # "CSV". Count only outside quotes so that a quoted header containing `,` does not mislead.
    lines = head.split(b"\n", header_row)
    first_line = lines[header_row - 1] if len(lines) >= header_row else b""
    if _is_utf8(encoding) and not first_line.lstrip(b"\xef\xbb\xbf").strip():
        raise InputFileError(path, f"the header row (row {header_row}) is empty")
    try:
        text = codecs.decode(first_line, encoding, errors="ignore")
    except LookupError:  # pragma: no cover - the encoding was checked by open_input
        text = first_line.decode("latin-1")
    unquoted = re.sub(r'"[^"]*"', "", text)
    counts = {d: unquoted.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _open_csv(path: Path, encoding: str | None, chunk_size: int, header_row: int) -> RowSource:
    encoding = encoding or "utf-8-sig"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"--encoding: unknown encoding {encoding!r}") from None
    if _is_utf8(encoding):
        encoding = "utf-8-sig"  # a BOM is never part of the first header
    delimiter = _sniff(path, encoding, header_row)
    return _CsvSource(path, encoding, delimiter, chunk_size, header_row)


def _pick_sheet(path: Path, sheet: str | None) -> XlsxSheet:
    worksheets = list_sheets(path)
    names = [m.name for m in worksheets]
    if not names:
        raise InputFileError(path, "the workbook has no worksheet")
    if sheet is None:
        # "The first sheet" is the first tab the user can see.
        visible = [m for m in worksheets if m.visible]
        return XlsxSheet(path, (visible or worksheets)[0])
    for info in worksheets:
        if info.name == sheet:
            return XlsxSheet(path, info)
    # Excel itself treats sheet names case-insensitively.
    for info in worksheets:
        if info.name.casefold() == sheet.casefold():
            return XlsxSheet(path, info)
    raise InputFileError(
        path, f"no sheet named {sheet!r} (sheets: {', '.join(repr(n) for n in names)})"
    )


def open_input(
    path: Path,
    *,
    encoding: str | None = None,
    sheet: str | None = None,
    chunk_size: int = 20_000,
    header_row: int | None = None,
) -> RowSource:
    """Open a CSV/XLSX/XLSM input, read its header, and return a re-iterable row source.

    Raises `InputFileError` (exit 2) when the file cannot be used: missing, a directory, empty,
    not CSV/Excel, undecodable, no such sheet, blank or duplicate headers. Errors found later in
    the file (a ragged row, a bad byte at row 900,000) are raised while iterating, with the row.
    """
    path = Path(path)
    if header_row is not None and not 1 <= header_row <= 1_048_575:
        raise UsageError(f"--header-row must be a row number from 1, not {header_row}")
    if not path.exists():
        raise InputFileError(path, "no such file")
    if path.is_dir():
        raise InputFileError(path, "is a directory, not a file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        if sheet is not None:
            raise UsageError("--sheet applies only to Excel files (.xlsx, .xlsm)")
        return _open_csv(path, encoding, max(1, chunk_size), header_row or 1)
    if suffix in EXCEL_SUFFIXES:
        if encoding is not None:
            raise UsageError("--encoding applies only to CSV files")
        return _ExcelSource(path, _pick_sheet(path, sheet), header_row)
    raise InputFileError(
        path,
        f"unsupported file type {suffix or '(no extension)'!r}; use .csv, .xlsx or .xlsm "
        "(save older .xls files as .xlsx)",
    )
