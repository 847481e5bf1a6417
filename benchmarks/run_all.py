"""Run every benchmark one after another and collect their tables in one Markdown file.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only throttle,unknown_limit,...]

Each benchmark is its own script (see its docstring for what it measures and how); this runner
starts them in turn as child processes — never two at once, so they do not disturb each other —
and writes what they printed, with the exact command, its exit status and its duration, to
`benchmarks/out/run_all.md` (the raw figures of each are in `benchmarks/out/<name>.json`).
The default sizes are the issues' and take about 22 minutes on 2 cores; `--quick` runs every
benchmark on small inputs in about 4 minutes, to check that they all work. A benchmark that
misses its target exits 1; the runner carries on and reports it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _bench import OUT, machine, machine_line

HERE = Path(__file__).resolve().parent

# name: (script, full-size arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "throttle": (
        "bench_throttle.py",
        [],
        ["--rows", "400", "--limit", "100/2"],
    ),
    "faults": (
        "bench_faults.py",
        [],
        ["--rows", "300", "--limit", "100/2", "--cases", "none,mixed"],
    ),
    "unknown_limit": (
        "bench_unknown_limit.py",
        [],
        ["--rows", "500", "--limit", "100/2", "--phase-windows", "3"],
    ),
    "overhead": ("bench_overhead.py", [], ["--rows", "2000", "--small", "500"]),
    "scale": ("bench_scale.py", [], ["--csv-rows", "100000", "--xlsx-rows", "10000"]),
    "only_changed": ("bench_only_changed.py", [], ["--rows", "2000"]),
    "devices": ("bench_devices.py", [], ["--rows", "300", "--limit", "100/2"]),
}


def main() -> int:
    """Run the selected benchmarks and write benchmarks/out/run_all.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke run")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    info = machine()
    sections = [
        "# Benchmark run",
        "",
        f"Machine: {machine_line(info)}; {info['platform']}.",
        "",
    ]
    failures = []
    started_all = time.perf_counter()
    for name in names:
        script, full, quick = BENCHMARKS[name]
        path = HERE / script
        if not path.exists():
            sections += [f"## {name}", "", f"`{script}` does not exist (yet): not run.", ""]
            failures.append(name)
            continue
        command = [sys.executable, str(path), *(quick if args.quick else full)]
        shown = " ".join(["python", f"benchmarks/{script}", *command[2:]])
        print(f"== {shown}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        print(done.stdout, flush=True)
        if done.returncode != 0:
            failures.append(name)
            print(done.stderr[-3000:], file=sys.stderr)
        sections += [
            f"## {name}",
            "",
            f"`{shown}` — exit {done.returncode}, {seconds:.0f} s",
            "",
            done.stdout.strip(),
            "",
        ]
    total = time.perf_counter() - started_all
    sections.append(f"Total: {total / 60:.1f} min.")
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / "run_all.md"
    report.write_text("\n".join(sections) + "\n", encoding="utf-8")
    print(f"report: {report} ({total / 60:.1f} min)", file=sys.stderr)
    if failures:
        print(f"missed a target or failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
