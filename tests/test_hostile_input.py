"""Hostile input through the real CLI (issue 19): nothing crashes, hangs, exhausts memory or leaks.

Every file is generated here, at test time, in `tmp_path`: the failing inputs of issue 19 that are
about CSV and values, rebuilt one by one, then a small seeded random corpus. Each goes through
`validate` and (the named cases) `run --dry-run` as a real subprocess under an address-space
limit, and must end with exit code 1 or 2 (0 where a value is legitimately fine), without a
traceback or an `Internal error`, within a time bound.

The XLSX cases of the issue are generated at the end (zip and XML written by hand) and marked
xfail while the reader is being rewritten. `main`'s last line of defence (a library raising a
`BaseException` subclass, like a PyO3 panic) is tested in-process at the very end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch import cli
from batch.errors import InputFileError

# The CLI runs under this address-space limit (RLIMIT_AS): a file that makes memory grow with
# the square of something, or a library that allocates a whole sheet rectangle, fails the test
# instead of the machine.
MEMORY_LIMIT = 1536 * 2**20
# Seconds one CLI call may take; a hang (a FIFO, a quadratic loop) fails rather than blocks.
TIMEOUT = 60
# The CLI entry point (`python -m batch`) with the limit set inside the child: no preexec_fn,
# which is unsafe when the tests start children from several threads.
_LIMITED_CLI = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
    "sys.argv[0] = 'autopilot-batch'; "
    "runpy.run_module('batch', run_name='__main__', alter_sys=True)"
)
ID = "3e455cab-5cab-3e45-ab5c-453eab5c453e"
HUGE = "9" * 5_000


@dataclass(frozen=True)
class Outcome:
    """What one CLI call did."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "GRAPH_")) and k != "AUTOPILOT_BATCH_DEBUG"
    }
    # Thread pools reserve address space per thread (OpenBLAS buffers, glibc malloc arenas):
    # one of each keeps the limit about the data, not about how many cores the machine has.
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", NO_COLOR="1")
    return env


def run_cli(*args: str | Path, cwd: Path) -> Outcome:
    """The real CLI in a child process, memory-limited, with a time bound."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LIMITED_CLI, *(str(a) for a in args)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=TIMEOUT,
            env=_env(),
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"autopilot-batch {' '.join(map(str, args))} took more than {TIMEOUT} s")
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def validate_and_plan(path: Path, cwd: Path) -> tuple[Outcome, Outcome]:
    """`validate PATH` and `run PATH --dry-run --out CWD/run`, side by side (half the wait)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        checked = pool.submit(run_cli, "validate", path, cwd=cwd)
        planned = pool.submit(run_cli, "run", path, "--dry-run", "--out", cwd / "run", cwd=cwd)
        return checked.result(), planned.result()


def assert_handled(outcome: Outcome, codes: Sequence[int] = (1, 2)) -> None:
    """Exit code as expected, no traceback, no internal error; exit 2 is one `Error:` line."""
    tail = outcome.output[-3000:]
    assert outcome.code in codes, f"exit {outcome.code}:\n{tail}"
    assert "Traceback" not in outcome.output, tail
    assert "Internal error" not in outcome.output, tail
    assert "panicked" not in outcome.output, tail
    if outcome.code == 2:
        errors = [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, tail


# --- the CSV and value cases of issue 19 -----------------------------------------------------


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _one_cell(column: str, value: str) -> Callable[[Path], Path]:
    return lambda folder: _csv(folder / "in.csv", ["id", column], [[ID, value]])


def _same_id_rows(folder: Path) -> Path:
    path = folder / "same-id.csv"
    path.write_text("id,osVersion\n" + f"{ID},10\n" * 100_000, encoding="utf-8")
    return path


def _nul_after_64_kb(folder: Path) -> Path:
    rows = [[f"00000000-0000-4000-8000-{n:012d}", f"PC-{n:05d}"] for n in range(2_500)]
    path = _csv(folder / "nul.csv", ["id", "managedDeviceName"], rows)
    assert path.stat().st_size > 65_536
    with path.open("ab") as handle:
        handle.write(b"00000000-0000-4000-8000-999999999999,EVIL\x00PC\r\n")
    return path


HOSTILE = [
    pytest.param(_one_cell("targetedAppCount", "9" * 4_301), "Int32 range", id="int32-4301-digits"),
    pytest.param(_one_cell("deploymentDuration", f"P{HUGE}D"), "TimeSpan", id="duration-days"),
    pytest.param(_one_cell("deploymentDuration", f"PT{HUGE}S"), "TimeSpan", id="duration-seconds"),
    pytest.param(
        _one_cell("deploymentDuration", f"{HUGE}.00:00:00"), "TimeSpan", id="timespan-days"
    ),
    pytest.param(
        _one_cell("deploymentDuration", "P" + "0" * 40_000 + "1D"),
        "32,767 characters",
        id="typed-cell-over-the-length-limit",
    ),
    pytest.param(
        _one_cell("enrollmentFailureDetails", "x" * 40_000),
        "32,767 characters",
        id="string-cell-over-the-length-limit",
    ),
    pytest.param(_same_id_rows, "and 99,996 more", id="100000-rows-same-id"),
    pytest.param(_nul_after_64_kb, "U+0000", id="nul-after-the-first-64-kb"),
    pytest.param(
        _one_cell("eventDateTime", "2024-05-01T09:30:00+\u0660\u0661:00"),
        "U+0660 ARABIC-INDIC DIGIT ZERO",
        id="arabic-indic-offset-digits",
    ),
]


@pytest.mark.parametrize(("make", "says"), HOSTILE)
def test_hostile_csv_is_an_invalid_row_or_a_one_line_error(
    tmp_path: Path, make: Callable[[Path], Path], says: str
) -> None:
    checked, planned = validate_and_plan(make(tmp_path), tmp_path)
    assert_handled(checked)
    assert says in checked.output, checked.output[-2000:]
    assert_handled(planned)
    assert planned.code == checked.code
    if planned.code == 1:
        results = (tmp_path / "run" / "results.csv").read_text(encoding="utf-8-sig")
        # The hostile row is the file's last (the others of the NUL file are plain rows).
        assert results.splitlines()[-1].split(",")[2] == "invalid"


# An id must be one plain URL path segment: `PATCH .../autopilotEvents/..` is a PATCH of
# `.../deviceManagement` once the URL is normalised, and invisible characters make two ids
# look the same. One row each (row number → what the message names).
HOSTILE_IDS = {
    2: ("..", "path step"),
    3: (".", "path step"),
    4: ("a/b", "contains '/'"),
    5: ("a%2Fb", "contains '%'"),
    6: (f"{ID}\u200b", "U+200B ZERO WIDTH SPACE"),
    7: (f"\ufeff{ID}", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    8: (f"\u202e{ID}", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    9: (f"{ID}\u200f", "U+200F RIGHT-TO-LEFT MARK"),
}


def test_ids_that_are_not_plain_key_segments_are_invalid_rows(tmp_path: Path) -> None:
    rows = [[value, "10"] for value, _ in HOSTILE_IDS.values()]
    path = _csv(tmp_path / "ids.csv", ["id", "osVersion"], rows)
    checked, planned = validate_and_plan(path, tmp_path)
    assert_handled(checked, codes=(1,))
    assert_handled(planned, codes=(1,))
    lines = checked.output.splitlines()
    for number, (_, says) in HOSTILE_IDS.items():
        (line,) = [x for x in lines if x.startswith(f"row {number}: ")]
        assert "not a valid event id" in line and says in line, line
    assert not (tmp_path / "run" / "requests.jsonl").read_text(encoding="utf-8").strip()


def test_full_width_offset_digits_are_sent_as_ascii(tmp_path: Path) -> None:
    path = _one_cell("eventDateTime", "2024-05-01T09:30:00+\uff10\uff11:\uff10\uff10")(tmp_path)
    checked, planned = validate_and_plan(path, tmp_path)
    assert_handled(checked, codes=(0,))
    assert_handled(planned, codes=(0,))
    lines = (tmp_path / "run" / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    (request,) = [json.loads(line) for line in lines]
    assert request["body"] == {"eventDateTime": "2024-05-01T09:30:00+01:00"}


# --- a small random corpus ---------------------------------------------------------------------

_PROPERTIES = [
    "id",
    "deviceSerialNumber",
    "managedDeviceName",
    "eventDateTime",
    "deploymentDuration",
    "targetedAppCount",
    "enrollmentState",
    "userPrincipalName",
]


def _random_text(rng: random.Random, size: int) -> str:
    # Any code point but surrogates (they cannot be written as UTF-8), with ASCII weighted up.
    out = []
    for _ in range(size):
        if rng.random() < 0.5:
            out.append(chr(rng.randint(0x20, 0x7E)))
        else:
            code = rng.randint(0, 0x10FFFF)
            out.append(chr(code if not 0xD800 <= code <= 0xDFFF else 0xFFFD))
    return "".join(out)


def _random_cell(rng: random.Random) -> str:
    choices: list[Callable[[], str]] = [
        lambda: "",
        lambda: "<null>",
        lambda: ID,
        lambda: str(rng.randint(-(10**12), 10**12)),
        lambda: rng.choice("0123456789") * rng.randint(1, 6_000),
        lambda: rng.choice(["PT3M21.5S", "00:03:21,5", "1.02:03:04", "P1DT", "-PT0S"]),
        lambda: rng.choice(["2024-05-01T09:30:00+02:00", "01.10.2025 09:30", "2024-02-30"]),
        lambda: rng.choice(["enrolled", "FAILED", "Enroled", "=1+1", "@SUM(A1)", "'0012"]),
        lambda: _random_text(rng, rng.randint(1, 40)),
        lambda: _random_text(rng, rng.randint(1_000, 40_000)),
        lambda: '"' * rng.randint(1, 5) + 'quoted, with "quotes"\nand a line break',
        lambda: rng.choice(["\ufeff", "\u200b", "\u202e", "\x00", "\x1b[31m", "\r"]) + "x",
    ]
    return rng.choice(choices)()


def _random_csv(rng: random.Random, path: Path) -> None:
    header = rng.sample(_PROPERTIES, rng.randint(1, len(_PROPERTIES)))
    if rng.random() < 0.3:
        header.append(_random_text(rng, rng.randint(1, 12)))  # an unknown column
    rows = [
        [_random_cell(rng) for _ in range(len(header) + rng.choice([-1, 0, 0, 0, 1]))]
        for _ in range(rng.randint(0, 30))
    ]
    buffer = io.StringIO()
    writer = csv.writer(
        buffer,
        delimiter=rng.choice([",", ",", ";", "\t"]),
        quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
        lineterminator=rng.choice(["\r\n", "\n", "\r"]),
    )
    writer.writerow(header)
    writer.writerows(rows)
    encoding = rng.choice(["utf-8", "utf-8-sig", "utf-16", "cp1252"])
    path.write_bytes(buffer.getvalue().encode(encoding, errors="replace"))


def _mutated_csv(rng: random.Random, path: Path) -> None:
    rows = [[f"00000000-0000-4000-8000-{n:012d}", f"PC-{n}", "enrolled"] for n in range(200)]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["id", "managedDeviceName", "enrollmentState"], *rows])
    data = bytearray(buffer.getvalue().encode())
    for _ in range(rng.randint(1, 20)):
        at = rng.randrange(len(data))
        action = rng.choice(["flip", "nul", "quote", "cut", "bad-utf8"])
        if action == "flip":
            data[at] = rng.randrange(256)
        elif action == "nul":
            data[at:at] = b"\x00"
        elif action == "quote":
            data[at:at] = b'"'
        elif action == "cut":
            del data[at:]
            break
        else:
            data[at:at] = b"\xc3\x28\xff"
    path.write_bytes(bytes(data))


def _corpus(folder: Path, seed: int = 19) -> list[Path]:
    rng = random.Random(seed)
    paths: list[Path] = []
    for n in range(6):
        path = folder / f"bytes-{n}.csv"
        path.write_bytes(rng.randbytes(rng.choice([0, 1, 7, 300, 4_096, 70_000])))
        paths.append(path)
    for n in range(2):
        path = folder / f"bytes-{n}.xlsx"
        path.write_bytes(b"PK\x03\x04" * n + rng.randbytes(rng.randint(0, 2_000)))
        paths.append(path)
    for n in range(16):
        path = folder / f"random-{n}.csv"
        _random_csv(rng, path)
        paths.append(path)
    for n in range(6):
        path = folder / f"mutated-{n}.csv"
        _mutated_csv(rng, path)
        paths.append(path)
    return paths


def test_a_random_corpus_never_crashes_the_cli(tmp_path: Path) -> None:
    paths = _corpus(tmp_path)
    assert len(paths) == 30
    started = time.perf_counter()
    # A few children at a time: each spends most of its time importing, on its own core.
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(lambda p: run_cli("validate", p, cwd=tmp_path), paths))
    for path, outcome in zip(paths, outcomes, strict=True):
        try:
            assert_handled(outcome, codes=(0, 1, 2))
        except AssertionError as error:
            raise AssertionError(f"{path.name}: {error}") from None
    assert time.perf_counter() - started < 50


# --- XLSX cases of issue 19 (the reader is being rewritten) --------------------------------------
#
# Minimal workbooks written by hand with zipfile, so each can hold exactly the damage to test:
# a number format, a sheet XML in another encoding, a cell at the last address, error cells.

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>
<Override PartName="/xl/styles.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>
<Override PartName="/xl/sharedStrings.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>
</Types>"""
_ROOT_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Target="xl/workbook.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>
</Relationships>"""
_WORKBOOK = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"
 xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">
<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets>
</workbook>"""
_WORKBOOK_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Target="worksheets/sheet1.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>
<Relationship Id="rId2" Target="styles.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles"/>
<Relationship Id="rId3" Target="sharedStrings.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"/>
</Relationships>"""
# Style 0 General, style 1 the elapsed-time format `[h]:mm:ss` (a duration cell).
_STYLES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">
<numFmts count="1"><numFmt numFmtId="164" formatCode="[h]:mm:ss"/></numFmts>
<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>
<fills count="1"><fill><patternFill patternType="none"/></fill></fills>
<borders count="1"><border/></borders>
<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>
<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>
<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>
</styleSheet>"""


def _xlsx(
    path: Path,
    strings: Sequence[str],
    rows_xml: str,
    *,
    dimension: str | None = None,
    sheet_encoding: str = "UTF-8",
) -> Path:
    """A workbook whose sheet1 holds `rows_xml` (the `<row>` elements), strings shared."""
    shared = "".join(f"<si><t>{s}</t></si>" for s in strings)
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    sheet = (
        f'<?xml version="1.0" encoding="{sheet_encoding}" standalone="yes"?>\n'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"{dim}<sheetData>{rows_xml}</sheetData></worksheet>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr("[Content_Types].xml", _CONTENT_TYPES)
        book.writestr("_rels/.rels", _ROOT_RELS)
        book.writestr("xl/workbook.xml", _WORKBOOK)
        book.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        book.writestr("xl/styles.xml", _STYLES)
        book.writestr(
            "xl/sharedStrings.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            f'count="{len(strings)}" uniqueCount="{len(strings)}">{shared}</sst>',
        )
        encoded = sheet.encode("utf-16" if sheet_encoding == "UTF-16" else "utf-8")
        book.writestr("xl/worksheets/sheet1.xml", encoded)
    return path


def _header_and_id(column: str) -> tuple[list[str], str]:
    """Shared strings (0 id, 1 `column`, 2 the event id, 3 the text "10") and row 1."""
    header = '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
    return ["id", column, ID, "10"], header


def _duration_cell(value: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        strings, header = _header_and_id("deploymentDuration")
        row = f'<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2" s="1"><v>{value}</v></c></row>'
        return _xlsx(folder / "duration.xlsx", strings, header + row)

    return make


def _last_cell(dimension: str | None) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        strings, header = _header_and_id("osVersion")
        rows = (
            '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2" t="s"><v>3</v></c></row>'
            '<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>'
        )
        return _xlsx(folder / "far.xlsx", strings, header + rows, dimension=dimension)

    return make


def _utf16_sheet(folder: Path) -> Path:
    strings, header = _header_and_id("osVersion")
    row = '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2" t="s"><v>3</v></c></row>'
    return _xlsx(folder / "utf16.xlsx", strings, header + row, sheet_encoding="UTF-16")


def _error_cells(folder: Path) -> Path:
    strings, header = _header_and_id("osVersion")
    rows = (
        '<row r="2"><c r="A2" t="s"><v>2</v></c>'
        '<c r="B2" t="e"><f>1/0</f><v>#DIV/0!</v></c></row>'
        '<row r="3"><c r="A3" t="e"><f>NA()</f><v>#N/A</v></c><c r="B3" t="s"><v>3</v></c></row>'
    )
    return _xlsx(folder / "errors.xlsx", strings, header + rows)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_duration_cell("1e10"), id="elapsed-time-1e10"),
        pytest.param(_duration_cell("1e300"), id="elapsed-time-1e300"),
        pytest.param(_duration_cell("-1e300"), id="elapsed-time-minus-1e300-panics-calamine"),
    ],
)
def test_an_elapsed_time_cell_out_of_range_is_a_problem_of_its_row(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    checked, planned = validate_and_plan(make(tmp_path), tmp_path)
    assert_handled(checked, codes=(1,))
    assert "row 2: deploymentDuration" in checked.output
    assert_handled(planned, codes=(1,))


@pytest.mark.parametrize(
    "dimension",
    [pytest.param("A1:B2", id="lying-dimension"), pytest.param(None, id="no-dimension")],
)
def test_one_cell_at_xfd1048576_never_aborts(tmp_path: Path, dimension: str | None) -> None:
    # Reading only what holds data (the far cell has no header: ignored) or refusing the sheet
    # with a clear error are both fine; allocating the whole rectangle (512 GiB) is not.
    checked, planned = validate_and_plan(_last_cell(dimension)(tmp_path), tmp_path)
    assert_handled(checked, codes=(0, 1, 2))
    assert_handled(planned, codes=(0, 1, 2))
    if checked.code != 2:
        assert "far.xlsx: 1 row" in checked.output


def test_a_utf16_sheet_is_read_or_refused_never_empty(tmp_path: Path) -> None:
    outcome = run_cli("validate", _utf16_sheet(tmp_path), cwd=tmp_path)
    assert_handled(outcome, codes=(0, 2))
    if outcome.code == 0:
        assert "1 row: 1 valid" in outcome.output


def test_cached_formula_errors_are_problems_of_their_rows(tmp_path: Path) -> None:
    outcome = run_cli("validate", _error_cells(tmp_path), cwd=tmp_path)
    assert_handled(outcome, codes=(1,))
    assert "#DIV/0!" in outcome.output and "#N/A" in outcome.output
    assert "missing id" not in outcome.output


# --- main: the last line of defence ------------------------------------------------------------


class PanicException(BaseException):
    """Stands in for pyo3_runtime.PanicException, which PyO3 derives from BaseException."""


PanicException.__module__ = "pyo3_runtime"


def _main_raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def app() -> None:
        raise error

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.delenv("AUTOPILOT_BATCH_DEBUG", raising=False)
    cli.main()


def test_a_library_panic_is_one_line_and_an_internal_error_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    panic = PanicException("called `Result::unwrap()` on an `Err` value\nnote: run with BACKTRACE")
    with pytest.raises(SystemExit) as caught:
        _main_raising(monkeypatch, panic)
    assert caught.value.code == 1  # as every internal error
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "Internal error: PanicException: called `Result::unwrap()` on an `Err` value "
        "note: run with BACKTRACE (set AUTOPILOT_BATCH_DEBUG=1"
    )


def test_a_bug_inside_a_task_group_names_the_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("x" * 5_000)])
    with pytest.raises(SystemExit) as caught:
        _main_raising(monkeypatch, group)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Internal error: ValueError: xxx") and err.count("\n") == 1
    assert len(err) < 700  # cut, not a dump


def test_a_domain_error_inside_a_task_group_is_reported_as_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    group = ExceptionGroup("unhandled errors", [InputFileError(Path("in.csv"), "cannot be read")])
    with pytest.raises(SystemExit) as caught:
        _main_raising(monkeypatch, group)
    assert caught.value.code == 2
    assert capsys.readouterr().err == "Error: in.csv: cannot be read\n"


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(KeyboardInterrupt(), id="ctrl-c"),
        pytest.param(SystemExit(3), id="exit"),
        pytest.param(GeneratorExit(), id="generator-exit"),
        pytest.param(BaseExceptionGroup("stop", [KeyboardInterrupt()]), id="group-with-ctrl-c"),
    ],
)
def test_interrupts_and_exits_are_not_swallowed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop: BaseException
) -> None:
    with pytest.raises(type(stop)) as caught:
        _main_raising(monkeypatch, stop)
    assert caught.value is stop
    assert "Internal error" not in capsys.readouterr().err


def test_debug_shows_the_panic_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def app() -> None:
        raise PanicException("boom")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setenv("AUTOPILOT_BATCH_DEBUG", "1")
    with pytest.raises(PanicException):
        cli.main()
