"""Benchmark: `autopilot-batch validate` on a 1,000,000-row CSV — wall time and peak memory.

    .venv/bin/python benchmarks/bench_validate.py [--rows 1000000] [--regenerate]

Generates `benchmarks/out/validate-<rows>.csv` once (deterministic, plausible updates: GUID ids,
serials with leading zeros, UPNs, enums in mixed case, dates with offsets, ISO and TimeSpan
durations, a few `<null>`s), then runs the real CLI on it as a subprocess and reports its wall time
and peak RSS (`getrusage(RUSAGE_CHILDREN).ru_maxrss`). Target: under 60 s and under 300 MB.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TARGET_SECONDS = 60.0
TARGET_MB = 300.0

HEADER = [
    "id",
    "deviceSerialNumber",
    "userPrincipalName",
    "managedDeviceName",
    "enrollmentState",
    "deploymentState",
    "eventDateTime",
    "deploymentDuration",
    "enrollmentFailureDetails",
]
STATES = ["enrolled", "Enrolled", "ENROLLED", "failed", "pendingReset"]
DEPLOYMENT = ["success", "Success", "failure", "inProgress", "successWithTimeout"]
NAMES = ["anna", "ben", "chloe", "david", "emma", "felix", "grace", "hugo", "ines", "jonas"]


def generate(path: Path, rows: int) -> None:
    """Write a deterministic CSV of `rows` valid update rows (UTF-8 with BOM, like Excel)."""
    rng = random.Random(1_000_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for n in range(rows):
            first, last = rng.choice(NAMES), rng.choice(NAMES)
            minutes, seconds = rng.randrange(60), rng.randrange(60)
            fraction = rng.randrange(10_000_000)
            duration = (
                f"PT{minutes}M{seconds}.{fraction:07d}S"
                if n % 2
                else f"00:{minutes:02d}:{seconds:02d}.{fraction:07d}"
            )
            writer.writerow(
                [
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    f"{rng.randrange(10**10):010d}",
                    f"{first}.{last}@contoso.com",
                    f"CONTOSO-{n:07d}",
                    rng.choice(STATES),
                    rng.choice(DEPLOYMENT),
                    f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                    f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
                    f".{rng.randrange(10**7):07d}{rng.choice(['Z', '+01:00', '-08:00'])}",
                    duration,
                    "<null>" if n % 50 == 0 else "",
                ]
            )
    partial.replace(path)


def main() -> int:
    """Generate the input if needed, run validate on it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()
    path = OUT / f"validate-{args.rows}.csv"
    if args.regenerate or not path.exists():
        started = time.perf_counter()
        generate(path, args.rows)
        print(f"generated {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    size_mb = path.stat().st_size / 1e6
    command = [sys.executable, "-m", "batch", "validate", str(path), "--quiet"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = peak_kib / 1024 if sys.platform != "darwin" else peak_kib / 2**20
    print(result.stdout.strip())
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    ok = elapsed < TARGET_SECONDS and peak_mb < TARGET_MB and result.returncode == 0
    print(
        f"validate {args.rows:,} rows ({size_mb:.0f} MB CSV): {elapsed:.1f} s wall, "
        f"{args.rows / elapsed:,.0f} rows/s, peak RSS {peak_mb:.0f} MB, exit {result.returncode} "
        f"(target < {TARGET_SECONDS:.0f} s, < {TARGET_MB:.0f} MB: {'met' if ok else 'MISSED'})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
