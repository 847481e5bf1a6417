"""Benchmark 3: the client's own cost — no throttle, no latency: rows/s and CPU per 1,000 rows.

    .venv/bin/python benchmarks/bench_overhead.py [--rows 10000] [--small 1000]
        [--only single,batch]

The emulator's budgets are effectively unlimited and it answers at once, so the wall time is
what the client (and the emulator, in a thread of this process) can do. Each mode runs twice,
on `--small` and on `--rows` rows; the client's CPU (user + system of the CLI child process,
from `os.wait4`) per 1,000 rows is the *marginal* cost between the two, so the interpreter
start and imports (about a second) do not count. The emulator's CPU is shown for context: on
a small machine it, not the client, is often what limits rows/s here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from _bench import (
    OUT,
    RecordingEmulator,
    cli,
    machine,
    machine_line,
    run_measured,
    save,
    scaled_config,
    self_cpu,
    table,
    write_updates,
)

from batch.model import Rate

UNLIMITED = Rate(1_000_000_000, 1)


def one_run(kind: str, rows: int, work: Path, extra: tuple[str, ...]) -> dict[str, Any]:
    """The CLI in `kind` mode on `rows` rows against an unthrottled, instant emulator."""
    with RecordingEmulator(scaled_config(UNLIMITED), rows) as emulator:
        input_csv = write_updates(work / f"input-{rows}.csv", emulator.ids)
        out = work / f"run-{kind}-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        command = cli(
            "run",
            input_csv,
            "--graph-url",
            emulator.url,
            "--mode",
            kind,
            "--write-limit",
            str(UNLIMITED),
            "--read-limit",
            str(UNLIMITED),
            "--out",
            out,
            "--json",
            "--quiet",
            *extra,
        )
        with self_cpu() as emulator_cpu:
            done = run_measured(command)
        stats = emulator.server.stats()
    if done.returncode != 0:
        raise SystemExit(f"{kind} on {rows} rows failed (exit {done.returncode}): {done.stderr}")
    summary = done.json()
    return {
        "rows": rows,
        "wall": done.wall,
        "elapsed": float(summary["elapsed_seconds"]),
        "cpu": done.cpu,
        "maxrss_mb": done.maxrss_mb,
        "emulator_cpu": emulator_cpu["cpu"],
        "http_requests": stats["requests"],
        "writes": stats["writes"],
        "reads": stats["reads"],
        "updated": summary["counts"]["updated"],
    }


def main() -> int:
    """Measure both modes at two sizes and print the marginal costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--only", default="single,batch")
    parser.add_argument(
        "--extra", default="", help="more CLI options for both runs, e.g. '--concurrency 8'"
    )
    args = parser.parse_args()
    extra = tuple(args.extra.split())
    info = machine()
    work = OUT / "overhead"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in [k for k in args.only.split(",") if k]:
        print(f"running {kind} ...", file=sys.stderr, flush=True)
        small = one_run(kind, args.small, work, extra)
        big = one_run(kind, args.rows, work, extra)
        extra_rows = big["rows"] - small["rows"]
        results.append(
            {
                "mode": kind,
                "small": small,
                "big": big,
                "rows_per_second": big["rows"] / big["elapsed"],
                "rows_per_second_wall": big["rows"] / big["wall"],
                "cpu_per_1000": 1000 * (big["cpu"] - small["cpu"]) / extra_rows,
                "cpu_per_1000_gross": 1000 * big["cpu"] / big["rows"],
                "emulator_cpu_per_1000": 1000
                * (big["emulator_cpu"] - small["emulator_cpu"])
                / extra_rows,
                "startup_cpu": small["cpu"]
                - small["rows"] * (big["cpu"] - small["cpu"]) / extra_rows,
            }
        )
    print(
        f"Client overhead: no throttle, no latency, {args.rows:,} rows (marginal CPU between "
        f"{args.small:,} and {args.rows:,} rows); {machine_line(info)}"
        + (f"; extra options {' '.join(extra)}" if extra else "")
    )
    print(
        table(
            [
                "mode",
                "rows/s (run)",
                "rows/s (wall)",
                "client CPU s / 1,000 rows",
                "emulator CPU s / 1,000 rows",
                "client start-up CPU s",
                "HTTP requests",
                "reads",
                "writes",
                "peak RSS MB",
            ],
            [
                [
                    r["mode"],
                    r["rows_per_second"],
                    r["rows_per_second_wall"],
                    r["cpu_per_1000"],
                    r["emulator_cpu_per_1000"],
                    r["startup_cpu"],
                    r["big"]["http_requests"],
                    r["big"]["reads"],
                    r["big"]["writes"],
                    r["big"]["maxrss_mb"],
                ]
                for r in results
            ],
        )
    )
    path = save("overhead", {"machine": info, "command": " ".join(sys.argv), "results": results})
    print(f"figures: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
