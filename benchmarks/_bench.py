"""Shared pieces of the benchmarks: the machine, a recording emulator, inputs, measured children.

Benchmarks are scripts, not tests. Each contender (the real CLI, or a baseline script) runs as a
child process, so its CPU time and peak memory are its own (`os.wait4` returns the rusage of that
one child); the Graph emulator runs in a thread of the benchmark process and records the moment it
admitted every write, which is what the throughput figures are computed from.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.emulator.faults import Fault
from batch.emulator.throttle import Decision
from batch.model import Rate

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
TOKEN = "bench-token"


# --- the machine --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, Python, load when the run started."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line for table headers."""
    return (
        f"{info['nproc']} CPU ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_at_start'][0]:.2f} at start"
    )


# --- the emulator ---------------------------------------------------------------------------------


def scaled_config(
    write: Rate, *, latency_ms: int = 0, token: str | None = TOKEN, **kw: Any
) -> EmulatorConfig:
    """Graph's four budgets with the write budget `write` and the others scaled alike.

    The per-app "any request" budget (1000/20 s) counts writes too, so it is scaled with the
    window; the tenant budgets keep Graph's 2:1 and 20:1 ratios to the app write budget.
    `token=None` is open mode: every bearer token names an app (a second app shares the tenant).
    """
    seconds = write.seconds
    return EmulatorConfig(
        token=token,
        write_limit=write,
        tenant_write_limit=Rate(write.count * 2, seconds),
        read_limit=Rate(write.count * 10, seconds),
        tenant_read_limit=Rate(write.count * 20, seconds),
        latency_ms=latency_ms,
        **kw,
    )


@dataclass
class Admission:
    """One decision of the emulator's throttle (a single request or one `$batch` item)."""

    t: float
    write: bool
    admitted: bool
    opened: bool = False  # this rejection started a new Retry-After period (a 429 episode)
    app: str = ""


class RecordingEmulator:
    """An `EmulatorServer` that remembers every throttle decision with its monotonic time."""

    def __init__(self, config: EmulatorConfig, events: int, *, seed: int = 11) -> None:
        self.store = EventStore()
        self.ids = self.store.seed(events, seed=seed)
        self.server = EmulatorServer(config, store=self.store)
        self.log: list[Admission] = []
        # Every Graph request's arrival (after the latency, as the throttle sees it) and the
        # faults among them: (time, kind or None).
        self.arrivals: list[tuple[float, str | None]] = []
        throttle = self.server.state.throttle
        admit = throttle.admit
        faults = self.server.state.faults
        draw = faults.draw

        def recording_admit(
            app: str, tenant: str, *, write: bool, service: str = "events"
        ) -> Decision:
            now = time.monotonic()
            # Each Intune service (events, devices) has budgets of its own.
            running = throttle.retry_after_until(app, service) > now
            decision = admit(app, tenant, write=write, service=service)
            opened = not decision.admitted and not running
            self.log.append(Admission(now, write, decision.admitted, opened, app))
            return decision

        def recording_draw() -> Fault | None:
            fault = draw()
            self.arrivals.append((time.monotonic(), None if fault is None else fault.value))
            return fault

        # Only the server's event loop calls these, so appending needs no lock.
        throttle.admit = recording_admit  # type: ignore[method-assign]
        faults.draw = recording_draw  # type: ignore[method-assign]

    def __enter__(self) -> RecordingEmulator:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        """The Graph root to point a client at."""
        return self.server.url

    def write_times(self, app: str | None = None) -> list[float]:
        """Admission times of the admitted writes (of `app`, or every app's), in order."""
        return [a.t for a in self.log if a.write and a.admitted and (app is None or a.app == app)]

    def rejected_times(self, app: str | None = None) -> list[float]:
        """Times of the requests (or batch items) answered 429 (to `app`, or to any)."""
        return [a.t for a in self.log if not a.admitted and (app is None or a.app == app)]

    def fault_times(self) -> list[float]:
        """Times of the injected faults (503, 504, dropped connections)."""
        return [t for t, fault in self.arrivals if fault is not None]

    def first_request(self) -> float | None:
        """When the first Graph request arrived (after the latency), or None."""
        return self.arrivals[0][0] if self.arrivals else None

    def episode_times(self) -> list[float]:
        """Times at which a 429 started a new Retry-After period."""
        return [a.t for a in self.log if a.opened]


def sustained_ratio(times: Sequence[float], limit: Rate) -> float:
    """Sustained admitted writes per second ÷ the limit's rate, from the emulator's own clock.

    The first `N = limit.count` writes find an empty window and cost nothing; every further
    write needs a slot that an earlier write frees. Write `N + kN` (1-based) cannot be admitted
    before `t_N + kW`, so `kN / (t_{N+kN} - t_N)` is at most `N / W` for any client the throttle
    admits, and a perfect client scores 1.0 whatever the run's length and however it spreads
    its sends inside a window. k is the largest whole number of windows the run covers.
    Rows per second over the wall time, by contrast, exceeds the limit on short runs because
    of the free first window, and includes the process start.
    """
    n, count = len(times), limit.count
    k = (n - count) // count
    if k < 1:
        return float("nan")
    span = times[count + k * count - 1] - times[count - 1]
    return ((k * count) / span) / limit.per_second if span > 0 else float("nan")


def ideal_ratio(rows: int, limit: Rate, first_request: float, last_write: float) -> float:
    """The ideal writing time ÷ the run's, as issue 14 defines it (1.0 is perfect).

    Ideal: the first window carries its whole budget at once, every later write waits for the
    limit, so `rows` writes need (rows - N) / (N / W) seconds. Measured: from the run's first
    Graph request (its first read when it reads before-images, so reads that delay the first
    writes count against it) to the admission of its last write, on the emulator's clock.
    """
    ideal = (rows - limit.count) / limit.per_second
    span = last_write - first_request
    if ideal <= 0 or span <= 0:
        return float("nan")
    return ideal / span


# --- inputs ---------------------------------------------------------------------------------------

UPDATE_HEADER = (
    "id",
    "Device Serial Number",
    "enrollmentState",
    "deploymentDuration",
    "eventDateTime",
    "userPrincipalName",
)


def write_updates(path: Path, ids: Sequence[str], *, seed: int = 7) -> Path:
    """One plausible update row per event id, in the spellings admins paste into Excel."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(UPDATE_HEADER)
        for i, event_id in enumerate(ids):
            writer.writerow(
                [
                    event_id,
                    f"00{rng.randrange(10**8):08d}",
                    rng.choice(["ENROLLED", "failed", "PendingReset", "blocked"]),
                    f"00:{rng.randrange(60):02d}:{rng.randrange(60):02d}.25",
                    f"2026-0{1 + i % 9}-1{i % 10}T08:{i % 60:02d}:00+01:00",
                    f"user{i}@contoso.com",
                ]
            )
    return path


# --- measured children ----------------------------------------------------------------------------


@dataclass
class Measured:
    """A finished child process: exit code, output, wall time and its own rusage."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall: float
    user: float
    system: float
    maxrss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        """User + system CPU seconds of the child (and anything it waited for)."""
        return self.user + self.system

    def json(self) -> dict[str, Any]:
        """The stdout parsed as one JSON object (the CLI's `--json`)."""
        try:
            result: dict[str, Any] = json.loads(self.stdout)
        except json.JSONDecodeError:
            raise SystemExit(
                f"the child printed no JSON (exit {self.returncode}): {self.stderr[-2000:]}"
            ) from None
        return result


def child_env(token: str | None = TOKEN) -> dict[str, str]:
    """The environment for a child: no stray Azure credentials, the benchmark's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "GRAPH_"))}
    if token is not None:
        env["GRAPH_ACCESS_TOKEN"] = token
    # The source tree first; a PYTHONPATH given to the benchmark is kept (to try a package out).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# A tiny launcher between this process and the measured child. Linux carries the high-water RSS
# of the memory a process had *before* exec into its `ru_maxrss`, and subprocess spawns by
# (v)fork from this process, which may hold an emulator with thousands of events: measured
# directly, a small child would report this process's size. The launcher is small, so the child
# it spawns starts from a clean slate; it reports that child's own rusage and wall time.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
proc = subprocess.Popen(command)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
proc.returncode = code
with open(report, "w") as handle:
    json.dump({"wall": wall, "user": usage.ru_utime, "system": usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss, "code": code}, handle)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    command: Sequence[str], *, timeout: float = 900, cwd: Path | None = None
) -> Measured:
    """Run a child to completion and return its wall time, CPU time and peak RSS.

    The figures are the child's own (`os.wait4` in a small launcher process), so earlier
    children, the launcher and the emulator thread in this process do not blur them.
    """
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        report = Path(tmp) / "rusage.json"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _LAUNCHER, str(report), *command],
            stdout=out,
            stderr=err,
            env=child_env(),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        try:
            usage = json.loads(report.read_text())
        except (OSError, ValueError):
            usage = {"wall": float("nan"), "user": 0.0, "system": 0.0, "maxrss_kib": 0}
    # Linux reports ru_maxrss in KiB.
    return Measured(
        list(command),
        proc.returncode,
        stdout,
        stderr,
        usage["wall"],
        usage["user"],
        usage["system"],
        usage["maxrss_kib"] / 1024,
    )


def cli(*args: str | Path) -> list[str]:
    """The command line of the real CLI (`python -m batch ...`)."""
    return [sys.executable, "-m", "batch", *map(str, args)]


@contextmanager
def self_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds this process (the emulator thread, mostly) used inside the block."""
    box: dict[str, float] = {}
    before = os.times()
    try:
        yield box
    finally:
        after = os.times()
        box["cpu"] = (after.user - before.user) + (after.system - before.system)


# --- output ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (prints fine in a terminal too)."""
    cells = [[str(c) for c in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def save(name: str, data: dict[str, Any]) -> Path:
    """Write a benchmark's figures to `benchmarks/out/<name>.json` for run_all and RESULTS.md."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
