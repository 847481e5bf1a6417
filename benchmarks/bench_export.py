"""Benchmark: `autopilot-batch export` of 100,000 events to CSV and XLSX — time and peak memory.

    .venv/bin/python benchmarks/bench_export.py [--events 100000] [--formats csv,xlsx]

Starts the Graph emulator as a child process seeded with deterministic events, then runs the real
CLI as another child once per format and reports its wall time, CPU time, events per second and
peak RSS (`os.wait4` gives the rusage of exactly that child). The emulator is a process of its
own on purpose: a child forked from a process that holds 100,000 events reports the parent's
size as its own peak RSS. The emulator serves Graph's default budgets (1000 requests per 20 s
per app); at 999 events a page, 100,000 events are 101 requests, so the figures measure the
tool, not the throttle. Target: peak RSS under 300 MB for each format (flat memory: the export
streams pages to the file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TARGET_MB = 300.0
TOKEN = "bench-token"


def run_child(command: list[str]) -> tuple[int, str, str, float, float, float]:
    """Run one child; (exit code, stdout, stderr, wall s, CPU s, peak RSS MB) of that child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "GRAPH_"))}
    env["GRAPH_ACCESS_TOKEN"] = TOKEN
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return proc.returncode, stdout, stderr, wall, usage.ru_utime + usage.ru_stime, peak


@contextlib.contextmanager
def emulator(events: int) -> Iterator[str]:
    """A seeded emulator in a child process; yields its Graph root URL."""
    command = [
        sys.executable,
        "-m",
        "batch",
        "emulator",
        "--port",
        "0",
        "--seed-events",
        str(events),
        "--seed",
        "2026",
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Graph emulator listening on "):
                url = line.split()[4]
                break
        else:
            raise RuntimeError(f"the emulator did not start (exit {proc.wait()})")
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    """Seed the emulator, export once per format, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,xlsx")
    args = parser.parse_args()
    formats = [f.strip().lstrip(".") for f in args.formats.split(",") if f.strip()]
    OUT.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    figures: list[dict[str, object]] = []
    ok = True
    started = time.perf_counter()
    with emulator(args.events) as url:
        print(
            f"emulator with {args.events:,} events up in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        for fmt in formats:
            target = OUT / f"export-{args.events}.{fmt}"
            command = [
                sys.executable,
                "-m",
                "batch",
                "export",
                str(target),
                "--graph-url",
                url,
                "--force",
                "--json",
            ]
            code, stdout, stderr, wall, cpu, peak = run_child(command)
            if code != 0:
                print(stderr[-2000:], file=sys.stderr)
            result = json.loads(stdout) if code == 0 else {}
            written = int(result.get("events_written", 0))
            met = code == 0 and written == args.events and peak < TARGET_MB
            ok = ok and met
            figures.append(
                {
                    "format": fmt,
                    "events": written,
                    "exit_code": code,
                    "wall_seconds": round(wall, 2),
                    "cpu_seconds": round(cpu, 2),
                    "events_per_second": round(written / wall, 1) if wall else 0.0,
                    "peak_rss_mb": round(peak, 1),
                    "file_mb": round(target.stat().st_size / 1e6, 1) if target.exists() else 0,
                    "pages": result.get("pages"),
                    "throttled_429": result.get("throttled_429"),
                    "target_met": met,
                }
            )
            print(
                f"export {written:,} events to {fmt.upper()}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                f"{written / wall:,.0f} events/s, peak RSS {peak:.0f} MB, "
                f"{figures[-1]['file_mb']} MB file, exit {code} "
                f"(target < {TARGET_MB:.0f} MB: {'met' if met else 'MISSED'})"
            )
    report = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": round(load, 2),
        },
        "events": args.events,
        "figures": figures,
    }
    saved = OUT / "export.json"
    saved.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"saved {saved} (load average {load:.2f} at start)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
