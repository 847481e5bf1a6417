"""`job run` over [[tenants]]: each tenant a job of its own, side by side, and one roll-up.

Graph throttles per app and tenant, so N tenants are N independent budgets: each tenant runs
as the single-tenant job would (its own limiter, processed-files state, resume, lock and run
folders under `<root>/<tenant>/`), up to `parallel_tenants` at once in this one process.

Decisions worth knowing:

- One tenant's failure is a value, never an exception that cancels the others: a tenant whose
  settings are wrong (a variable not set, a missing folder) or that cannot start is reported
  with exit 3; sign-in refused or Graph unreachable abort its file (exit 3, resumable) as in a
  single-tenant job. The job's exit code is the worst tenant's (130 > 3 > 1 > 75 > 0): 75 for
  a tenant whose lock another process holds (it did nothing; that is no problem).
- The job itself locks `<state_dir>/job.lock` too, so an overlapping start exits 75 at once.
- Signals: one process, one signal handler. A hub takes SIGINT/SIGTERM and hands each one to
  every tenant's run (`engine.signal_receiver`), so all stop cleanly, not just the last one
  that opened a receiver; tenants still waiting for a slot do not start.
- Logs: the job log gets every record with a `tenant` field; each tenant's own job log (in its
  state folder) only its own. Progress bars are off: several would fight over one terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.errors import AuthError, ConfigError, LockHeld
from batch.jobs.clock import now_iso
from batch.jobs.lock import JobLock
from batch.jobs.plan import require_processed, write_column_map
from batch.jobs.run import (
    JobReport,
    _JobRun,
    _notify_file,
    _write_job_page,
    log,
    notify_webhook,
    open_job_log,
    write_summary_json,
)
from batch.jobs.spec import Job
from batch.jobs.state import JobState
from batch.stop import open_stop_receiver, signal_name, stop_signals

__all__ = ["RollUp", "TenantResult", "run_tenants", "worst_exit_code"]

# The tenant whose task logs a record (set in each tenant's task).
_TENANT: ContextVar[str] = ContextVar("tenant", default="")

# Worst first: interrupted, aborted or not started, rows or files bad, locked elsewhere, fine.
_RANK: Final = {130: 5, 3: 4, 2: 4, 1: 3, 75: 2, 0: 0}


def worst_exit_code(codes: list[int]) -> int:
    """The job's exit code from its tenants': 130 > 3 > 1 > 75 > 0 (0 for no tenants)."""
    return max(codes, key=lambda c: _RANK.get(c, 4), default=0)


class _TenantFilter(logging.Filter):
    """Stamps records with the tenant of the task logging them; `only` keeps one tenant's."""

    def __init__(self, only: str | None = None) -> None:
        super().__init__()
        self.only = only

    def filter(self, record: logging.LogRecord) -> bool:
        tenant = _TENANT.get()
        if tenant and not hasattr(record, "tenant"):
            record.tenant = tenant
        return self.only is None or getattr(record, "tenant", "") == self.only


@dataclass(slots=True)
class TenantResult:
    """One tenant's part of a job run: its report, or why it did not run."""

    job: Job
    report: JobReport | None = None
    exit_code: int = 0
    error: str = ""
    recent: list[dict[str, object]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The tenant's name (its folder under the job's root)."""
        return self.job.tenant

    def line(self) -> str:
        """The tenant's part of the summary line."""
        if self.report is None:
            return f"{self.name}: not run: {self.error}; exit {self.exit_code}"
        text = self.report.line().removeprefix(f"job {self.job.name}: ")
        return f"{self.name}: {text}"

    def to_json(self) -> dict[str, Any]:
        """The tenant as a JSON object (roll-up, job.summary.json, webhook)."""
        data: dict[str, Any] = {
            "tenant": self.name,
            "exit_code": self.exit_code,
            "error": self.error,
            "output_root": str(self.job.output_root),
            "state_dir": str(self.job.state_dir),
            "log": str(self.job.log_file),
            "files": [],
            "counts": {},
        }
        if self.report is not None:
            report = self.report.to_json()
            for key in ("job", "job_file", "exit_code"):
                report.pop(key, None)
            data.update(report)
        data["summary"] = self.line()
        return data


@dataclass(slots=True)
class RollUp:
    """A multi-tenant job run: every tenant's result, and the one summary reported."""

    job: Job
    tenants: list[TenantResult] = field(default_factory=list)
    interrupted: bool = False
    started: str = field(default_factory=now_iso)
    ended: str = ""

    @property
    def exit_code(self) -> int:
        """The worst tenant's exit code (`worst_exit_code`); 130 when interrupted."""
        codes = [t.exit_code for t in self.tenants]
        return 130 if self.interrupted else worst_exit_code(codes)

    def counts(self) -> Counter[str]:
        """Row outcomes over all tenants."""
        total: Counter[str] = Counter()
        for t in self.tenants:
            if t.report is not None:
                total.update(t.report.counts())
        return total

    def line(self) -> str:
        """The summary line: the job's verdict first, then each tenant's part."""
        codes = Counter(t.exit_code for t in self.tenants)
        parts = ", ".join(f"{n} exit {c}" for c, n in sorted(codes.items()))
        count = len(self.tenants)
        head = f"job {self.job.name}: {count} tenant{'' if count == 1 else 's'} ({parts})"
        rows = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()) if v)
        if rows:
            head += f"; rows: {rows}"
        if self.interrupted:
            head += "; interrupted"
        head += f"; exit {self.exit_code}"
        return " | ".join([head, *(t.line() for t in self.tenants)])

    def to_json(self) -> dict[str, Any]:
        """The roll-up as one JSON object (`job run --json`, job.summary.json, webhook json)."""
        return {
            "job": self.job.name,
            "job_file": str(self.job.path),
            "started": self.started,
            "ended": self.ended,
            "tenants": [t.to_json() for t in self.tenants],
            "counts": dict(self.counts()),
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "summary": self.line(),
        }


class _SignalHub:
    """One signal receiver for the process; every tenant's run gets each signal it takes."""

    def __init__(self) -> None:
        self._streams: list[MemoryObjectSendStream[int]] = []
        self.signal_name: str | None = None

    @contextlib.contextmanager
    def receiver(self, *_signals: int) -> Iterator[MemoryObjectReceiveStream[int]]:
        """Shaped like `anyio.open_signal_receiver` (`engine.signal_receiver`)."""
        send, receive = anyio.create_memory_object_stream[int](16)
        self._streams.append(send)
        try:
            yield receive
        finally:
            self._streams.remove(send)
            send.close()
            receive.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with open_stop_receiver(*stop_signals()) as signals:
                task_status.started()
                async for signum in signals:
                    self.signal_name = signal_name(signum)
                    log.warning("%s received: stopping every tenant", self.signal_name)
                    for send in list(self._streams):
                        with contextlib.suppress(
                            anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                        ):
                            send.send_nowait(signum)
        except (NotImplementedError, ValueError, RuntimeError):
            # Not the main thread (in-process tests): no signal watch.
            task_status.started()
            await anyio.sleep_forever()


async def _run_all(rollup: RollUp, env: Mapping[str, str]) -> None:
    from batch.engine import signal_receiver

    hub = _SignalHub()
    signal_receiver.set(hub.receiver)
    slots = anyio.CapacityLimiter(rollup.job.parallel_tenants)
    async with anyio.create_task_group() as outer:
        await outer.start(hub.run)
        async with anyio.create_task_group() as tenants:
            for result in rollup.tenants:
                tenants.start_soon(_one_tenant, result, env, slots, hub)
        outer.cancel_scope.cancel()
    rollup.interrupted = hub.signal_name is not None


async def _one_tenant(
    result: TenantResult, env: Mapping[str, str], slots: anyio.CapacityLimiter, hub: _SignalHub
) -> None:
    job = result.job
    _TENANT.set(job.tenant)
    async with slots:
        if hub.signal_name is not None:
            result.exit_code, result.error = 130, f"{hub.signal_name} received before it started"
            return
        handler: logging.Handler | None = None
        lock: JobLock | None = None
        state: JobState | None = None
        try:
            tokens = job.tokens(env)
            if job.input_file is not None and not job.input_file.exists():
                require_processed(job)
            handler = open_job_log(job, "cannot write the tenant's state or log")
            handler.addFilter(_TenantFilter(job.tenant))
            log.addHandler(handler)
            lock = JobLock(job.state_dir / "job.lock", f"{job.name} (tenant {job.tenant})")
            lock.acquire()
            log.info("tenant started", extra={"job": job.name, "output_root": job.output_root})
            if lock.taken_over is not None:
                log.warning(
                    "took over the lock of pid %s, which is no longer running",
                    lock.taken_over.get("pid", "?"),
                )
            state = JobState(job.state_dir / "files.sqlite", dry_run=job.dry_run)
            runner = _JobRun(job, tokens, quiet=True)
            if job.columns is not None:
                runner.map_file = write_column_map(job.columns, job.state_dir)
            await runner.main(state)
            report = runner.report
            report.ended = now_iso()
            result.report, result.exit_code = report, report.exit_code
            log.info(result.line(), extra=report.to_json())
            _write_job_page(job, report, state)
            write_summary_json(job.log_file.parent / "job.summary.json", result.to_json())
            result.recent = state.recent()
        except LockHeld as error:
            result.exit_code, result.error = 75, str(error)
            log.warning("tenant %s not run: %s", job.tenant, error)
        except (ConfigError, AuthError) as error:
            result.exit_code, result.error = 3, str(error).removeprefix(f"{job.path}: ")
            log.error("tenant %s not run: %s", job.tenant, result.error)
        except Exception as error:
            # A bug must not take the other tenants down with it; it is in the log in full.
            result.exit_code, result.error = 3, f"internal error: {type(error).__name__}: {error}"
            log.exception("tenant %s stopped by an internal error", job.tenant)
        finally:
            if state is not None:
                state.close()
            if lock is not None:
                lock.release()
            if handler is not None:
                log.removeHandler(handler)
                handler.close()


def run_tenants(job: Job, *, env: Mapping[str, str] = os.environ, quiet: bool = False) -> RollUp:
    """Run every tenant of a job once, `parallel_tenants` at a time; returns the roll-up.

    Raises `LockHeld` when another run of this job holds its lock, `ConfigError` when the
    job's own folder cannot be written; everything about a tenant is in its result.
    """
    del quiet  # no progress bars with several tenants: they would share one terminal
    from batch.logs import JsonLinesHandler

    try:
        job.state_dir.mkdir(parents=True, exist_ok=True)
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = JsonLinesHandler(job.log_file)
    except OSError as error:
        raise ConfigError(
            f"{job.path}: cannot write the job's state or log ({job.state_dir}, {job.log_file}): "
            f"{error.strerror or error}"
        ) from None
    handler.addFilter(_TenantFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    lock = JobLock(job.state_dir / "job.lock", job.name)
    try:
        try:
            lock.acquire()
        except LockHeld as error:
            handler.handle(
                log.makeRecord(
                    log.name, logging.WARNING, __file__, 0, "%s", (error,), None,
                    extra={"job": job.name, "pid": os.getpid()},
                )
            )  # fmt: skip
            raise
        log.info(
            "job started",
            extra={
                "job": job.name,
                "job_file": str(job.path),
                "pid": os.getpid(),
                "tenants": [t.tenant for t in job.tenants],
            },
        )
        rollup = RollUp(job, [TenantResult(t) for t in job.tenants])
        anyio.run(_run_all, rollup, env)
        rollup.ended = now_iso()
        data = rollup.to_json()
        log.info(rollup.line(), extra=data)
        _notify_file(job, f"{rollup.ended} {rollup.line()}")
        _write_page(job, rollup)
        write_summary_json(job.log_file.parent / "job.summary.json", data)
        notify_webhook(job, data, env)
        return rollup
    finally:
        lock.release()
        log.removeHandler(handler)
        handler.close()


def _write_page(job: Job, rollup: RollUp) -> None:
    """job.html with one section per tenant; the job's outcome never depends on it."""
    from batch.report.job_html import write_tenants_report

    try:
        write_tenants_report(job.log_file.parent / "job.html", rollup)
    except Exception as error:
        log.error("job.html not written: %s: %s", type(error).__name__, error)
