"""Benchmarks 1 and 4: throughput at Graph's write limit, against the obvious alternatives.

    .venv/bin/python benchmarks/bench_throttle.py [--limit 100/5] [--rows 1200] [--latency-ms 50]
        [--only single,batch,sequential,gather]

Every contender gets its own fresh emulator with the same budgets (the write limit L, Graph's
other budgets scaled to the same window), the same latency, the same events and the same update
bodies, and runs as a child process:

- `autopilot-batch single` / `batch`: the real CLI with its defaults and `--write-limit L`.
- `sequential`: a plain httpx PATCH loop (benchmarks/baselines.py).
- `gather`: every PATCH at once with asyncio.gather, naive retry (3 times, sleep Retry-After).

Graph's window is 20 s; it is scaled (100/5 by default) so a contender takes about a minute
(1,200 rows = 12 windows) with the same shape. Figures, from the emulator's own clock:
`sustained ÷ L` = (writes admitted after the first, free window) per second ÷ (N/W) — a perfect
client scores 1.0 (see `_bench.sustained_ratio`); `429 share` = 429 answers ÷ all write requests
and batch items the emulator judged. Targets for autopilot-batch: sustained ≥ 0.95 and ≤ 1 %.
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
    sustained_ratio,
    table,
    write_updates,
)

from batch.model import Rate

CONTENDERS = ("single", "batch", "sequential", "gather")
TARGET_RATIO = 0.95
TARGET_429 = 0.01


def plan_requests(input_csv: Path, work: Path) -> Path:
    """`run --dry-run` once: the exact requests the baselines send (same bodies, same URLs)."""
    out = work / "plan"
    shutil.rmtree(out, ignore_errors=True)
    done = run_measured(
        cli("run", input_csv, "--dry-run", "--graph-url", "http://127.0.0.1:9", "--out", out, "-q")
    )
    if done.returncode != 0:
        raise SystemExit(f"dry run failed: {done.stderr[-2000:]}")
    return out / "requests.jsonl"


def run_contender(
    kind: str,
    *,
    limit: Rate,
    tool_limit: Rate | None = None,
    rows: int,
    latency_ms: int,
    work: Path,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One contender against a fresh emulator; returns its figures and the emulator's timeline."""
    with RecordingEmulator(scaled_config(limit, latency_ms=latency_ms), rows) as emulator:
        input_csv = write_updates(work / f"input-{rows}.csv", emulator.ids)
        if kind in ("single", "batch"):
            out = work / f"run-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            command = cli(
                "run",
                input_csv,
                "--graph-url",
                emulator.url,
                "--mode",
                kind,
                "--write-limit",
                str(tool_limit or limit),
                "--out",
                out,
                "--json",
                "--quiet",
                *extra_args,
            )
        else:
            requests = plan_requests(input_csv, work)
            baseline = Path(__file__).resolve().parent / "baselines.py"
            command = [
                sys.executable,
                str(baseline),
                kind,
                str(requests),
                "--graph-url",
                emulator.url,
            ]
        with self_cpu() as emulator_cpu:
            done = run_measured(command)
        stats = emulator.server.stats()
        writes = emulator.write_times()
        rejected = emulator.rejected_times()
        episodes = emulator.episode_times()
        judged = sum(1 for a in emulator.log if a.write)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{kind} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    output = done.json()
    if kind in ("single", "batch"):
        updated = output["counts"]["updated"]
        failed = output["counts"]["failed"] + output["counts"]["not_attempted"]
        requests_sent = output["requests_sent"]
    else:
        updated, failed, requests_sent = output["updated"], output["failed"], output["sent"]
    throttled = int(stats["throttled"])  # type: ignore[arg-type]
    return {
        "contender": f"autopilot-batch {kind}" if kind in ("single", "batch") else kind,
        "kind": kind,
        "limit": str(limit),
        "tool_limit": str(tool_limit or limit) if kind in ("single", "batch") else None,
        "rows": rows,
        "latency_ms": latency_ms,
        "wall_seconds": round(done.wall, 2),
        "cpu_seconds": round(done.cpu, 2),
        "emulator_cpu_seconds": round(emulator_cpu["cpu"], 2),
        "updated": updated,
        "failed": failed,
        "http_requests": requests_sent,
        "write_operations": judged,
        "throttled_429": throttled,
        "share_429": throttled / judged if judged else 0.0,
        "during_retry_after": stats["during_retry_after"],
        "sustained_ratio": sustained_ratio(writes, limit),
        "wall_ratio": (updated / done.wall) / limit.per_second,
        "timeline": {
            "start": writes[0] if writes else None,
            "writes": writes,
            "rejected": rejected,
            "episodes": episodes,
        },
        "exit_code": done.returncode,
    }


def main() -> int:
    """Run the contenders one after another and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit", default="100/5", help="the emulator's (and the tool's) N/SECONDS"
    )
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument(
        "--extra", default="", help="more options for autopilot-batch, e.g. '--concurrency 8'"
    )
    args = parser.parse_args()
    extra = tuple(args.extra.split())
    limit = Rate.parse(args.limit)
    kinds = [k for k in args.only.split(",") if k]
    if unknown := set(kinds) - set(CONTENDERS):
        parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    info = machine()
    work = OUT / "throttle"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in kinds:
        print(f"running {kind} ...", file=sys.stderr, flush=True)
        results.append(
            run_contender(
                kind,
                limit=limit,
                rows=args.rows,
                latency_ms=args.latency_ms,
                work=work,
                extra_args=extra,
            )
        )
    print(
        f"Throughput at the write limit: emulator {limit} writes per app "
        f"({limit.per_second:g}/s), latency {args.latency_ms} ms, {args.rows:,} rows; "
        f"{machine_line(info)}" + (f"; autopilot-batch options {args.extra}" if extra else "")
    )
    print(
        table(
            [
                "contender",
                "wall s",
                "sustained ÷ L",
                "rows/s ÷ L",
                "updated",
                "failed",
                "429s",
                "429 share",
                "sent in Retry-After",
                "HTTP requests",
                "client CPU s",
            ],
            [
                [
                    r["contender"],
                    r["wall_seconds"],
                    r["sustained_ratio"],
                    r["wall_ratio"],
                    r["updated"],
                    r["failed"],
                    r["throttled_429"],
                    f"{r['share_429']:.2%}",
                    r["during_retry_after"],
                    r["http_requests"],
                    r["cpu_seconds"],
                ]
                for r in results
            ],
        )
    )
    ok = True
    for r in results:
        if r["kind"] in ("single", "batch"):
            met = r["sustained_ratio"] >= TARGET_RATIO and r["share_429"] <= TARGET_429
            ok = ok and met and r["failed"] == 0
            print(
                f"{r['contender']}: sustained {r['sustained_ratio']:.3f} of L "
                f"(target ≥ {TARGET_RATIO}), 429s {r['share_429']:.2%} (target ≤ 1 %): "
                f"{'met' if met else 'MISSED'}"
            )
    summary = {"machine": info, "command": " ".join(sys.argv), "results": results}
    path = save("throttle", summary)
    print(f"figures: {path}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
