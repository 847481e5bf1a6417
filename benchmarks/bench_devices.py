"""Issue 16: throughput of group-tag updates on Autopilot devices at the device write limit.

    .venv/bin/python benchmarks/bench_devices.py [--limit 100/5] [--rows 600] [--latency-ms 30]
        [--modes single,batch] [--seed 16] [--extra '--verify']

Modelled on `bench_faults.py`'s `none` case. Each mode runs the real CLI (`run --resource
devices --key serialNumber`, before-image reads on, as by default) against a fresh emulator with
its realistic defaults (the action answering 204, PATCH refused, pages of 50, `$select` on
devices answering 500, mixed Retry-After forms, split read/write throttles) holding `--rows`
seeded devices; the file sets a new group tag on every one, rows keyed by serial number as an
admin's file is. The emulator's device write budget (the Intune enrollment service's, its own
budget apart from the events') is `--limit`, the tenant's twice that, reads scaled alike; the
tool is given the same `--write-limit`.

Figures, on the emulator's clock: `÷ ideal` = ideal ÷ measured writing time (`_bench.ideal_ratio`:
the first window carries its whole budget, every later write waits for the limit), measured
from the first Graph request (the serial number walk, then before-image reads) to the last
admitted write; `429 share` = 429 answers ÷ write operations judged; `in Retry-After` =
requests that arrived while a Retry-After told to the tool was running; `lost` = rows not
updated, and devices whose group tag is not the file's; `PATCH` = PATCH requests (must be 0:
devices are written by POST to `updateDeviceProperties`); `÷ ideal, writing` = the same ideal ÷
the time from the first admitted write to the last (the writing phase alone). Targets: ≥ 0.95 of
ideal (the events' 0.97, less the serial number walk `--key` needs before any write: rows / 50
list pages, each waiting for the previous one's next link, about 0.4 s of the ideal 25 s at
30 ms), ≤ 1 % 429s, 0 in Retry-After, 0 lost, 0 PATCH. Each mode writes a timeline (writes/s
against the limit) to `benchmarks/out/devices/<mode>.svg`.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from _bench import (
    OUT,
    RecordingEmulator,
    cli,
    ideal_ratio,
    machine,
    machine_line,
    run_measured,
    save,
    scaled_config,
    table,
)
from _timeline import Timeline, write_svg

from batch.model import Rate

MODES = ("single", "batch")
TARGET = 0.95
TARGET_429 = 0.01


def write_tags(path: Path, devices: list[dict[str, Any]], *, seed: int) -> dict[str, str]:
    """A portal-style file: serial number and a new group tag per device; id → the new tag."""
    rng = random.Random(seed)
    wanted: dict[str, str] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Device Serial Number", "Group Tag"])
        for device in devices:
            tag = f"{rng.choice(['EMEA', 'AMER', 'APAC'])}-{rng.choice(['Sales', 'Kiosk'])}"
            tag += f"-{rng.randrange(1000):03d}"
            wanted[str(device["id"])] = tag
            writer.writerow([device["serialNumber"], tag])
    return wanted


def run_mode(
    mode: str,
    *,
    limit: Rate,
    rows: int,
    latency_ms: int,
    seed: int,
    extra: tuple[str, ...],
    work: Path,
) -> dict[str, Any]:
    """One mode against a fresh emulator holding `rows` devices; its figures and timeline."""
    config = scaled_config(
        limit,
        latency_ms=latency_ms,
        seed=seed,
        device_write_limit=limit,
        device_tenant_write_limit=Rate(limit.count * 2, limit.seconds),
    )
    with RecordingEmulator(config, 0) as emulator:
        devices = emulator.server.devices
        devices.seed(rows, seed=seed)
        # A serial drawn twice makes its rows ambiguous (invalid, rightly): leave those out.
        by_serial: dict[str, list[dict[str, Any]]] = {}
        for device in devices.list():
            by_serial.setdefault(str(device["serialNumber"]).casefold(), []).append(device)
        unique = [found[0] for found in by_serial.values() if len(found) == 1]
        wanted = write_tags(work / f"tags-{rows}.csv", unique, seed=seed)
        out = work / f"run-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        command = cli(
            "run",
            work / f"tags-{rows}.csv",
            "--resource",
            "devices",
            "--key",
            "serialNumber",
            "--graph-url",
            emulator.url,
            "--mode",
            mode,
            "--write-limit",
            str(limit),
            "--out",
            out,
            "--json",
            "--quiet",
            *extra,
        )
        done = run_measured(command)
        stats = emulator.server.stats()
        writes = emulator.write_times()
        rejected = emulator.rejected_times()
        first = emulator.first_request()
        judged = sum(1 for a in emulator.log if a.write)
        final = {str(d["id"]): d.get("groupTag") for d in devices.list()}
    if done.returncode not in (0, 1):
        raise SystemExit(f"{mode} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    output = done.json()
    counts = output["counts"]
    written = len(wanted)
    wrong = sum(1 for device_id, tag in wanted.items() if final.get(device_id) != tag)
    start = first if first is not None else (writes[0] if writes else 0.0)
    ratio = ideal_ratio(written, limit, start, writes[-1]) if writes else float("nan")
    picture = write_svg(
        OUT / "devices" / f"{mode}.svg",
        Timeline(
            title=f"devices, {mode} mode: {ratio:.3f} of ideal, limit {limit}, "
            f"{written} devices by serial, {latency_ms} ms",
            window=limit.seconds,
            limit_rate=limit.per_second,
            writes=[t - start for t in writes],
            rejected=[t - start for t in rejected],
            faults=[],
        ),
    )
    patches = stats["patches"]
    assert isinstance(patches, dict)
    return {
        "mode": mode,
        "limit": str(limit),
        "rows": written,
        "latency_ms": latency_ms,
        "wall_seconds": round(done.wall, 2),
        "cpu_seconds": round(done.cpu, 2),
        "ratio_to_ideal": ratio,
        "target": TARGET,
        "first_write_after_s": round(writes[0] - start, 3) if writes else None,
        "ratio_writing": (
            ideal_ratio(written, limit, writes[0], writes[-1]) if writes else float("nan")
        ),
        "updated": counts["updated"],
        "not_updated": written - counts["updated"],
        "wrong_tag": wrong,
        "patch_requests": sum(patches.values()),
        "write_operations": judged,
        "throttled_429": int(stats["throttled"]),  # type: ignore[arg-type]
        "share_429": int(stats["throttled"]) / judged if judged else 0.0,  # type: ignore[arg-type]
        "during_retry_after": stats["during_retry_after"],
        "http_requests": output["requests_sent"],
        "reads_sent": output["reads_sent"],
        "retries": output["retries"],
        "timeline_svg": str(picture.relative_to(OUT.parent)),
        "timeline": {"start": start, "writes": writes, "rejected": rejected},
        "exit_code": done.returncode,
    }


def main() -> int:
    """Run both modes and print the table, the verdicts and the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="100/5", help="the emulator's (and the tool's) N/S")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--latency-ms", type=int, default=30)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=16, help="the emulator's seed (devices)")
    parser.add_argument("--extra", default="", help="more options for the CLI")
    args = parser.parse_args()
    limit = Rate.parse(args.limit)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    extra = tuple(args.extra.split())
    info = machine()
    work = OUT / "devices"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in modes:
        print(f"running devices / {mode} ...", file=sys.stderr, flush=True)
        results.append(
            run_mode(
                mode,
                limit=limit,
                rows=args.rows,
                latency_ms=args.latency_ms,
                seed=args.seed,
                extra=extra,
                work=work,
            )
        )
    path = save("devices", {"machine": info, "command": " ".join(sys.argv), "results": results})
    print(
        f"Group tags by serial at the device write limit: emulator {limit} device writes per "
        f"app (realistic defaults), latency {args.latency_ms} ms, {args.rows:,} devices, seed "
        f"{args.seed}, before-image reads on; {machine_line(info)}"
        + (f"; options {args.extra}" if extra else "")
    )
    print(
        table(
            [
                "mode",
                "÷ ideal",
                "÷ ideal, writing",
                "first write s",
                "wall s",
                "lost",
                "PATCH",
                "429s",
                "429 share",
                "in Retry-After",
                "HTTP requests",
                "reads",
            ],
            [
                [
                    r["mode"],
                    r["ratio_to_ideal"],
                    r["ratio_writing"],
                    r["first_write_after_s"],
                    r["wall_seconds"],
                    f"{r['not_updated']} / {r['wrong_tag']}",
                    r["patch_requests"],
                    r["throttled_429"],
                    f"{r['share_429']:.2%}",
                    r["during_retry_after"],
                    r["http_requests"],
                    r["reads_sent"],
                ]
                for r in results
            ],
        )
    )
    ok = True
    for r in results:
        met = (
            r["ratio_to_ideal"] >= r["target"]
            and r["share_429"] <= TARGET_429
            and r["during_retry_after"] == 0
            and r["not_updated"] == 0
            and r["wrong_tag"] == 0
            and r["patch_requests"] == 0
        )
        ok = ok and met
        print(
            f"devices/{r['mode']}: {r['ratio_to_ideal']:.3f} of ideal (target ≥ {r['target']}), "
            f"timeline {r['timeline_svg']}: {'met' if met else 'MISSED'}"
        )
    print(f"figures: {path}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
