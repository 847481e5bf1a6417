"""Benchmark: `--only-changed` on a file where 90 % of the rows already match the tenant.

    .venv/bin/python benchmarks/bench_only_changed.py [--rows 10000] [--scale 25]

The tenant (the Graph emulator, in this process) holds `rows` events; the input file has one row
per event, 90 % of them holding the event's own values written the way admins paste them (enum in
upper case, duration as TimeSpan, date-time in UTC instead of its offset) and 10 % with a new
userPrincipalName. The real CLI runs as a subprocess against it:

* `run` (default: reads the current values for the before-images, then writes every row),
* `run --no-backup` (writes every row, reads nothing),
* `run --only-changed` (the file covers the tenant: one walk of the event list, then a fresh read
  and a write for the 10 % that differ),
* `run --only-changed` on a tenant 3.5 times the file (the walk gives up; every row is read by id).

Limits are Graph's, sped up `--scale` times (100 writes and 1000 requests per 20 s per app become
100 and 1000 per 20/scale s), on the emulator and the tool alike. Reported: the engine's elapsed
time (summary.json), the wall time of the process, PATCHes and reads the emulator admitted, 429s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore  # noqa: E402
from batch.model import JSON, Rate  # noqa: E402
from tests.e2e import in_utc, powershell_timespan, write_csv  # noqa: E402

TOKEN = "bench-token"
SEED = 77


def input_rows(events: list[dict[str, JSON]], share_changed: float) -> list[dict[str, str]]:
    """One row per event: its own values in other spellings; every 1/share-th row changed."""
    every = round(1 / share_changed)
    rows = []
    for n, e in enumerate(events):
        upn = str(e["userPrincipalName"])
        rows.append(
            {
                "id": str(e["id"]),
                "deviceSerialNumber": str(e["deviceSerialNumber"]),
                "enrollmentState": str(e["enrollmentState"]).upper(),
                "deploymentDuration": powershell_timespan(str(e["deploymentDuration"])),
                "eventDateTime": in_utc(str(e["eventDateTime"])),
                "userPrincipalName": f"moved.{n}@contoso.com" if n % every == 0 else upn,
            }
        )
    return rows


def config(scale: float) -> tuple[EmulatorConfig, Rate]:
    window = 20.0 / scale
    tool = Rate(100, window)
    emulator = EmulatorConfig(
        token=TOKEN,
        seed=SEED,
        write_limit=tool,
        tenant_write_limit=Rate(200, window),
        read_limit=Rate(1000, window),
        tenant_read_limit=Rate(2000, window),
        page_size=999,
    )
    return emulator, tool


def run_cli(
    server: EmulatorServer, src: Path, out: Path, limit: Rate, extra: list[str]
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "GRAPH_"))}
    env["GRAPH_ACCESS_TOKEN"] = TOKEN
    server.reset(store=True)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "batch", "run", str(src), "--graph-url", server.url,
         "--write-limit", str(limit), "--out", str(out), "--json", "--quiet", *extra],
        capture_output=True, text=True, env=env, check=False, cwd=ROOT,
    )  # fmt: skip
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"run {extra} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    stats = server.stats()
    patches = stats["patches"]
    assert isinstance(patches, dict)
    return {
        "elapsed": summary["elapsed_seconds"],
        "wall": wall,
        "patches": sum(int(v) for v in patches.values() if isinstance(v, int)),
        "reads": stats["reads"],
        "throttled": stats["throttled"],
        "counts": {k: v for k, v in summary["counts"].items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--scale", type=float, default=25.0, help="speed-up of Graph's limits")
    args = parser.parse_args()
    emulator_config, limit = config(args.scale)
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-only-changed-") as tmp:
        work = Path(tmp)
        store = EventStore()
        store.seed(args.rows, seed=SEED)
        rows = input_rows(store.list(), 0.10)
        src = write_csv(work / "events.csv", rows)
        with EmulatorServer(emulator_config, store=store) as server:
            for label, extra in (
                ("run (before-images)", []),
                ("run --no-backup", ["--no-backup"]),
                ("run --only-changed", ["--only-changed"]),
            ):
                results.append(
                    (label, run_cli(server, src, work / label.replace(" ", "_"), limit, extra))
                )
        big = EventStore()
        big.seed(int(args.rows * 3.5), seed=SEED)  # the same first `rows` events, and more
        with EmulatorServer(emulator_config, store=big) as server:
            label = "run --only-changed (tenant 3.5x)"
            results.append((label, run_cli(server, src, work / "big", limit, ["--only-changed"])))
    load = os.getloadavg()[0]
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    print(
        f"{args.rows} rows, 90 % already matching; limits {limit} writes and "
        f"{Rate(1000, limit.seconds)} requests (Graph's, {args.scale:g}x faster)"
    )
    print(
        f"machine: {os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
        f"load {load:.2f} at the end"
    )
    base = results[0][1]["elapsed"]
    header = f"{'configuration':<34} {'engine s':>9} {'wall s':>7} {'PATCHes':>8} {'reads':>7} "
    header += f"{'429s':>5} {'time vs run':>11}  outcomes"
    print(header)
    print("-" * len(header))
    for label, r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
        print(
            f"{label:<34} {r['elapsed']:>9.1f} {r['wall']:>7.1f} {r['patches']:>8} "
            f"{r['reads']:>7} {r['throttled']:>5} {r['elapsed'] / base:>11.2f}  {outcomes}"
        )
    ideal = args.rows / limit.per_second
    print(
        f"\nfloor for {args.rows} writes at {limit}: {ideal:.1f} s; "
        f"for {args.rows // 10}: {ideal / 10:.1f} s"
    )


if __name__ == "__main__":
    main()
