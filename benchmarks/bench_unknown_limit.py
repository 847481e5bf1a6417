"""Benchmark 2: the tool told a limit twice the real one — how fast it settles, what it achieves.

    .venv/bin/python benchmarks/bench_unknown_limit.py [--limit 100/5] [--factor 2] [--rows 1200]
        [--latency-ms 50] [--only single,batch]

The emulator enforces L (100/5 by default: Graph's 100 writes per 20 s with the window scaled so
a run takes about a minute); the tool runs with `--write-limit` = factor * L, as when an admin
guesses the budget wrong or another app shares the tenant. Only the 429s and their Retry-After
can teach it the real limit (the limiter's pause gate and AIMD back-off).

Figures, on the emulator's clock from the first admitted write: 429 answers and their share,
429 episodes (429s that started a new Retry-After period), when the last episode started
("settled": no 429 after it), the sustained rate over the whole run ÷ the real L (same
definition as bench_throttle: a perfect client scores 1.0), and the same on the writes after
the first two windows (once it has had the chance to learn). Target: ≥ 0.85 of the real limit.
"""

from __future__ import annotations

import argparse
import sys

from _bench import OUT, machine, machine_line, save, sustained_ratio, table
from bench_throttle import run_contender

from batch.model import Rate

TARGET_RATIO = 0.85


def per_window(times: list[float], start: float, seconds: float) -> list[int]:
    """Admitted writes in each consecutive window of `seconds` from `start`."""
    if not times:
        return []
    counts = [0] * (int((times[-1] - start) // seconds) + 1)
    for t in times:
        counts[int((t - start) // seconds)] += 1
    return counts


def main() -> int:
    """Run single and batch mode with a too-high limit and print how they fared."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="100/5", help="the emulator's real N/SECONDS")
    parser.add_argument("--factor", type=float, default=2.0, help="tool limit = factor * real")
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--only", default="single,batch")
    args = parser.parse_args()
    limit = Rate.parse(args.limit)
    tool_limit = Rate(round(limit.count * args.factor), limit.seconds)
    info = machine()
    work = OUT / "unknown-limit"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in [k for k in args.only.split(",") if k]:
        print(f"running {kind} ...", file=sys.stderr, flush=True)
        r = run_contender(
            kind,
            limit=limit,
            tool_limit=tool_limit,
            rows=args.rows,
            latency_ms=args.latency_ms,
            work=work,
        )
        timeline = r["timeline"]
        start = timeline["start"]
        writes = timeline["writes"]
        episodes = [t - start for t in timeline["episodes"]]
        after = start + 2 * limit.seconds
        late = [t for t in writes if t >= after]
        r["episodes"] = len(episodes)
        r["first_429_s"] = round(episodes[0], 2) if episodes else None
        r["settled_s"] = round(episodes[-1], 2) if episodes else 0.0
        r["episode_starts_s"] = [round(e, 2) for e in episodes]
        # The same measure as the whole run's, on the writes after the first two windows.
        r["after_two_windows_ratio"] = sustained_ratio(late, limit)
        r["per_window"] = per_window(writes, start, limit.seconds)
        results.append(r)
    print(
        f"Unknown limit: emulator {limit} writes per app, tool told {tool_limit}; latency "
        f"{args.latency_ms} ms, {args.rows:,} rows; {machine_line(info)}"
    )
    print(
        table(
            [
                "mode",
                "wall s",
                "sustained ÷ real L",
                "after 2 windows ÷ L",
                "429s",
                "429 share",
                "episodes",
                "first 429 at s",
                "last episode at s",
                "failed",
            ],
            [
                [
                    r["kind"],
                    r["wall_seconds"],
                    r["sustained_ratio"],
                    r["after_two_windows_ratio"],
                    r["throttled_429"],
                    f"{r['share_429']:.2%}",
                    r["episodes"],
                    r["first_429_s"],
                    r["settled_s"],
                    r["failed"],
                ]
                for r in results
            ],
        )
    )
    ok = True
    for r in results:
        met = r["sustained_ratio"] >= TARGET_RATIO and r["failed"] == 0
        ok = ok and met
        print(
            f"{r['kind']}: writes per {limit.seconds:g} s window {r['per_window']}; episodes at "
            f"{r['episode_starts_s']} s; sustained {r['sustained_ratio']:.3f} of the real limit "
            f"(target ≥ {TARGET_RATIO}): {'met' if met else 'MISSED'}"
        )
    path = save(
        "unknown_limit", {"machine": info, "command": " ".join(sys.argv), "results": results}
    )
    print(f"figures: {path}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
