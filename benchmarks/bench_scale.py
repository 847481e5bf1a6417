"""Benchmark 5: `validate` and `run --dry-run` on big files — wall time and peak RSS.

    .venv/bin/python benchmarks/bench_scale.py [--csv-rows 1000000] [--xlsx-rows 100000]
        [--only validate-csv,dry-run-csv,validate-xlsx,dry-run-xlsx,validate-xlsx-formats]
        [--regenerate]

Inputs are generated once into benchmarks/out/ (the CSV with bench_validate.generate — GUID
ids, serials with leading zeros, mixed-case enums, dates with offsets, ISO and TimeSpan
durations, some `<null>`s — and the XLSX with the same columns and values, written by openpyxl
in write-only mode; `validate-xlsx-formats` has the serials as number cells with the format
`0000000000`, as admins type them, so every row's number format is applied). Each command
runs the real CLI as a child process; its peak RSS is that child's `ru_maxrss` from
`os.wait4`. Target: flat memory, under 300 MB. A dry run also writes `requests.jsonl` and
`results.csv` for every row (the run folder is deleted afterwards).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _bench import OUT, cli, machine, machine_line, run_measured, save, table
from bench_validate import generate

TARGET_MB = 300.0
CASES = ("validate-csv", "dry-run-csv", "validate-xlsx", "dry-run-xlsx", "validate-xlsx-formats")


def generate_xlsx(path: Path, rows: int, *, formats: bool = False) -> None:
    """The same rows as the CSV generator's, as an .xlsx (every cell text, as admins paste).

    With `formats`, the serial (column B, ten digits with leading zeros) is a number cell with
    the number format `0000000000` instead, so the reader has a format to apply on every row.
    """
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]

    source = OUT / f"scale-xlsx-source-{rows}.csv"
    generate(source, rows)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Updates")
    with source.open(encoding="utf-8-sig", newline="") as handle:
        for number, record in enumerate(csv.reader(handle)):
            if formats and number:
                serial = WriteOnlyCell(sheet, value=int(record[1]))
                serial.number_format = "0000000000"
                sheet.append([record[0], serial, *record[2:]])
            else:
                sheet.append(record)
    partial = path.with_suffix(".partial.xlsx")
    book.save(partial)
    partial.replace(path)
    source.unlink()


def ensure(path: Path, rows: int, *, regenerate: bool) -> Path:
    """Generate an input file unless it is already there."""
    if regenerate or not path.exists():
        started = time.perf_counter()
        if path.suffix == ".xlsx":
            generate_xlsx(path, rows, formats="formats" in path.name)
        else:
            generate(path, rows)
        print(f"generated {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


def measure(case: str, path: Path, rows: int) -> dict[str, Any]:
    """Run one case and return its figures."""
    command, out = _command(case, path)
    done = run_measured(command, timeout=1800)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{case} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return {
        "case": case,
        "rows": rows,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "wall_seconds": round(done.wall, 1),
        "rows_per_second": rows / done.wall,
        "cpu_seconds": round(done.cpu, 1),
        "peak_rss_mb": round(done.maxrss_mb, 1),
        "command": " ".join(str(c) for c in command),
        "stdout": done.stdout.strip()[-500:],
    }


def _command(case: str, path: Path) -> tuple[list[str], Path | None]:
    if case.startswith("validate"):
        return cli("validate", path, "--quiet"), None
    out = OUT / f"scale-run-{path.stem}"
    shutil.rmtree(out, ignore_errors=True)
    return cli("run", path, "--dry-run", "--out", out, "--quiet"), out


def main() -> int:
    """Generate the inputs if needed, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=100_000)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()
    cases = [c for c in args.only.split(",") if c]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    info = machine()
    results = []
    for case in cases:
        rows = args.csv_rows if case.endswith("csv") else args.xlsx_rows
        # The CSV name is bench_validate's, so both benchmarks share one generated file.
        if case.endswith("csv"):
            path = OUT / f"validate-{rows}.csv"
        elif case.endswith("formats"):
            path = OUT / f"scale-formats-{rows}.xlsx"
        else:
            path = OUT / f"scale-{rows}.xlsx"
        ensure(path, rows, regenerate=args.regenerate)
        print(f"running {case} ...", file=sys.stderr, flush=True)
        results.append(measure(case, path, rows))
    print(f"Scale: wall time and peak RSS of the CLI child process; {machine_line(info)}")
    print(
        table(
            ["case", "rows", "file MB", "wall s", "rows/s", "CPU s", "peak RSS MB", "< 300 MB"],
            [
                [
                    r["case"],
                    r["rows"],
                    r["file_mb"],
                    r["wall_seconds"],
                    r["rows_per_second"],
                    r["cpu_seconds"],
                    r["peak_rss_mb"],
                    "yes" if r["peak_rss_mb"] < TARGET_MB else "NO",
                ]
                for r in results
            ],
        )
    )
    path = save("scale", {"machine": info, "command": " ".join(sys.argv), "results": results})
    print(f"figures: {path}", file=sys.stderr)
    return 0 if all(r["peak_rss_mb"] < TARGET_MB for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
