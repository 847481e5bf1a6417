"""Issue 14: the limit unknown, and another app taking a changing share of the tenant's budget.

    .venv/bin/python benchmarks/bench_unknown_limit.py [--limit 100/5] [--factor 2]
        [--rows 1800] [--latency-ms 30] [--shares 0.25,0.75,0.4,0.6] [--phase-windows 6]
        [--modes single,batch] [--seed 14]

The emulator enforces Graph's budgets with the window scaled (`--limit` per app, twice that per
tenant: 100/5 and 200/5 by default) and its realistic defaults (mixed Retry-After forms, some
429s without one). autopilot-batch is told `--write-limit` = factor * the real app limit, as when
an admin guesses wrong. Meanwhile another app takes a share of the
tenant's write budget that changes every `--phase-windows` windows (`--shares`): with 75 % of
the tenant's 200 taken, 50 are left for us, whatever we were told. Its writes go straight into
the emulator's budgets (`OtherApp`, `EmulatorServer.background_writes`), so it gets exactly its
share and what is left for us is known; our tool sees only the 429s and their Retry-After.

Figures, on the emulator's clock, per fixed window from the run's first request: what is left
for us = min(app limit, tenant limit - the other app's admitted writes); `÷ left` = our admitted
writes ÷ what was left, summed over the whole windows of our run (ours can never exceed it);
`429 share` = our write answers (single requests and `$batch` items) that were 429 ÷ all our
write answers; `in Retry-After` = our requests that arrived while a Retry-After told to us was
running (violations). Targets: ≥ 0.90 of what is left, ≤ 5 % 429s, 0 violations, no row lost.
Timelines: `benchmarks/out/unknown_limit/<mode>.svg` (ours, the other app's, what is left).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
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
    table,
    write_updates,
)
from _timeline import Timeline, write_svg

from batch.emulator import EmulatorServer
from batch.model import Rate

US = "bench-token"
OTHER = "other-app"
TARGET_LEFT = 0.90
TARGET_429 = 0.05


class OtherApp:
    """Another app taking a scheduled share of the tenant's write budget, whatever we do.

    Its writes go straight into the emulator's budgets (`EmulatorServer.background_writes`),
    evenly spaced at the share of the phase: never refused, so the share is exactly what the
    schedule says and what is left for us is known (a busy app that keeps retrying would take
    it just the same, only less predictably). Its admission times are kept for the figures.
    """

    def __init__(
        self,
        server: EmulatorServer,
        *,
        tenant: Rate,
        shares: list[float],
        phase_seconds: float,
    ) -> None:
        self._server = server
        self._tenant = tenant
        self._shares = shares
        self._phase = phase_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self.start = 0.0
        self.times: list[float] = []

    def share_at(self, seconds: float) -> float:
        """The share of the tenant's write budget the app takes, `seconds` after its start."""
        return self._shares[min(int(seconds // self._phase), len(self._shares) - 1)]

    def __enter__(self) -> OtherApp:
        self.start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _write(self, *_: object) -> None:
        due = 0.0
        last = self.start
        while not self._stop.is_set():
            now = time.monotonic()
            rate = self.share_at(now - self.start) * self._tenant.count / self._tenant.seconds
            due += (now - last) * rate
            last = now
            if due >= 1:
                writes = int(due)
                due -= writes
                self._server.background_writes(OTHER, writes)
                self.times.extend([time.monotonic()] * writes)
            self._stop.wait(0.01)


def windows(times: list[float], start: float, seconds: float, count: int) -> list[int]:
    """Admitted writes in each of `count` consecutive windows of `seconds` from `start`."""
    counts = [0] * count
    for t in times:
        i = int((t - start) // seconds)
        if 0 <= i < count:
            counts[i] += 1
    return counts


def run_mode(
    mode: str,
    *,
    limit: Rate,
    factor: float,
    rows: int,
    latency_ms: int,
    shares: list[float],
    phase_windows: int,
    seed: int,
    work: Path,
) -> dict[str, Any]:
    """One mode against a fresh emulator shared with the other app."""
    tenant = Rate(limit.count * 2, limit.seconds)
    tool_limit = Rate(round(limit.count * factor), limit.seconds)
    config = scaled_config(limit, latency_ms=latency_ms, token=None, seed=seed)
    with RecordingEmulator(config, rows) as emulator:
        input_csv = write_updates(work / f"input-{rows}.csv", emulator.ids)
        out = work / f"run-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        command = cli(
            "run",
            input_csv,
            "--graph-url",
            emulator.url,
            "--mode",
            mode,
            "--write-limit",
            str(tool_limit),
            "--out",
            out,
            "--json",
            "--quiet",
        )
        other = OtherApp(
            emulator.server,
            tenant=tenant,
            shares=shares,
            phase_seconds=phase_windows * limit.seconds,
        )
        with other:
            done = run_measured(command)
        stats = emulator.server.stats()
        log = list(emulator.log)
        first = min((a.t for a in log if a.app == US), default=other.start)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{mode} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    output = done.json()
    mine = [a for a in log if a.app == US and a.write]
    my_writes = [a.t for a in mine if a.admitted]
    my_429 = [a.t for a in mine if not a.admitted]
    their_writes = other.times
    # Whole windows of our run: from our first request to the window our last write fell in.
    full = int((my_writes[-1] - first) // limit.seconds) if my_writes else 0
    ours_w = windows(my_writes, first, limit.seconds, full)
    theirs_w = windows(their_writes, first, limit.seconds, full)
    left_w = [min(limit.count, tenant.count - t) for t in theirs_w]
    ratio = sum(ours_w) / sum(left_w) if sum(left_w) else float("nan")
    apps = stats["apps"]
    assert isinstance(apps, dict)
    us = apps.get(US, {})
    assert isinstance(us, dict)
    picture = write_svg(
        OUT / "unknown_limit" / f"{mode}.svg",
        Timeline(
            title=f"unknown limit ({mode} mode, told {tool_limit}, real {limit}, tenant {tenant} "
            f"shared): {ratio:.3f} of what is left",
            window=limit.seconds,
            limit_rate=limit.per_second,
            writes=[t - first for t in my_writes],
            rejected=[t - first for t in my_429],
            other_writes=[t - first for t in their_writes],
            left=[(i * limit.seconds, left / limit.seconds) for i, left in enumerate(left_w)],
        ),
    )
    counts = output["counts"]
    return {
        "mode": mode,
        "limit": str(limit),
        "tool_limit": str(tool_limit),
        "tenant_limit": str(tenant),
        "rows": rows,
        "shares": shares,
        "phase_windows": phase_windows,
        "wall_seconds": round(done.wall, 2),
        "ratio_to_left": ratio,
        "per_window": {"ours": ours_w, "other": theirs_w, "left": left_w},
        "updated": counts["updated"],
        "not_updated": rows - counts["updated"],
        "write_answers": len(mine),
        "throttled_429": len(my_429),
        "share_429": len(my_429) / len(mine) if mine else 0.0,
        "during_retry_after": us.get("during_retry_after", 0),
        "http_requests": output["requests_sent"],
        "timeline_svg": str(picture.relative_to(OUT.parent)),
        "timeline": {
            "start": first,
            "writes": my_writes,
            "rejected": my_429,
            "other": their_writes,
        },
        "exit_code": done.returncode,
    }


def main() -> int:
    """Run the modes with a too-high limit and a second app; print how they fared."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="100/5", help="the emulator's real per-app N/SECONDS")
    parser.add_argument("--factor", type=float, default=2.0, help="tool limit = factor * real")
    parser.add_argument("--rows", type=int, default=1800)
    parser.add_argument("--latency-ms", type=int, default=30)
    parser.add_argument("--shares", default="0.25,0.75,0.4,0.6")
    parser.add_argument("--phase-windows", type=int, default=6)
    parser.add_argument("--modes", default="single,batch")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    limit = Rate.parse(args.limit)
    shares = [float(s) for s in args.shares.split(",") if s]
    info = machine()
    work = OUT / "unknown_limit"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in [m for m in args.modes.split(",") if m]:
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        results.append(
            run_mode(
                mode,
                limit=limit,
                factor=args.factor,
                rows=args.rows,
                latency_ms=args.latency_ms,
                shares=shares,
                phase_windows=args.phase_windows,
                seed=args.seed,
                work=work,
            )
        )
    path = save(
        "unknown_limit", {"machine": info, "command": " ".join(sys.argv), "results": results}
    )
    print(
        f"Unknown limit with a second app: emulator {limit} writes per app and "
        f"{results[0]['tenant_limit'] if results else '?'} per tenant, tool told "
        f"{results[0]['tool_limit'] if results else '?'}; the other app takes {args.shares} of "
        f"the tenant's writes, {args.phase_windows} windows each; latency {args.latency_ms} ms, "
        f"{args.rows:,} rows; {machine_line(info)}"
    )
    print(
        table(
            [
                "mode",
                "÷ left",
                "wall s",
                "lost",
                "429s",
                "429 share",
                "in Retry-After",
                "HTTP requests",
            ],
            [
                [
                    r["mode"],
                    r["ratio_to_left"],
                    r["wall_seconds"],
                    r["not_updated"],
                    r["throttled_429"],
                    f"{r['share_429']:.2%}",
                    r["during_retry_after"],
                    r["http_requests"],
                ]
                for r in results
            ],
        )
    )
    ok = True
    for r in results:
        met = (
            r["ratio_to_left"] >= TARGET_LEFT
            and r["share_429"] <= TARGET_429
            and r["during_retry_after"] == 0
            and r["not_updated"] == 0
        )
        ok = ok and met
        windows_text = " ".join(
            f"{o}/{left}"
            for o, left in zip(r["per_window"]["ours"], r["per_window"]["left"], strict=True)
        )
        print(
            f"{r['mode']}: ours/left per window {windows_text}; timeline {r['timeline_svg']}: "
            f"{'met' if met else 'MISSED'}"
        )
    print(f"figures: {path}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
