"""`job run`: process the planned files one run folder each, archive them, log and report."""

from __future__ import annotations

import logging
import os
import shutil
import typing
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio

from batch.errors import (
    AuthError,
    ConfigError,
    InputFileError,
    Interrupted,
    LockHeld,
    RunAborted,
    UsageError,
)
from batch.jobs.clock import now_iso
from batch.jobs.lock import JobLock
from batch.jobs.plan import Item, plan_files, require_processed, write_column_map
from batch.jobs.spec import Job
from batch.jobs.state import JobState
from batch.stop import signal_name, stop_signals

if typing.TYPE_CHECKING:
    from batch.auth import TokenProvider
    from batch.engine import RunOptions, RunSummary
    from batch.jobs.tenants import RollUp
    from batch.limiter import Limiter
    from batch.mapper import Prepared

log = logging.getLogger("batch.jobs")


FileStatus = Literal["ok", "rows_failed", "rejected", "aborted", "interrupted"]

#: How a file's status reads in messages (the status names are for scripts: --json, the log).
STATUS_WORDS: Final[dict[str, str]] = {
    "ok": "ok",
    "rows_failed": "with failed or invalid rows",
    "rejected": "unreadable",
    "aborted": "aborted",
    "interrupted": "interrupted",
}
# The summary line names this many run folders with failures at most.
_FOLDERS_NAMED: Final = 3


@dataclass(slots=True)
class FileResult:
    """What happened to one input file in a job run."""

    path: Path
    sha256: str
    status: FileStatus
    exit_code: int
    run_dir: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    error: str = ""
    archived_to: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (job log, `--json`)."""
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "status": self.status,
            "exit_code": self.exit_code,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "counts": self.counts,
            "resumed": self.resumed,
            "error": self.error,
            "archived_to": str(self.archived_to) if self.archived_to else None,
        }


def job_exit_code(files: Sequence[FileResult], *, interrupted: bool = False) -> int:
    """130 interrupted, else 3 if a file's run aborted, else 1 if a row or file was bad, else 0."""
    statuses = {f.status for f in files}
    if interrupted or "interrupted" in statuses:
        return 130
    if "aborted" in statuses:
        return 3
    if statuses & {"rows_failed", "rejected"}:
        return 1
    return 0


@dataclass(slots=True)
class JobReport:
    """A job run's outcome: the files it handled, and the one-line summary it reports."""

    job: Job
    files: list[FileResult] = field(default_factory=list)
    skipped: int = 0
    waiting: int = 0
    refused: int = 0
    interrupted: bool = False
    started: str = field(default_factory=now_iso)
    ended: str = ""

    @property
    def exit_code(self) -> int:
        """The job's exit code (see `job_exit_code`); a refused drop-folder entry makes it 1.

        A link or a FIFO in a drop folder others can write to needs someone to look at it,
        like a rejected file does.
        """
        code = job_exit_code(self.files, interrupted=self.interrupted)
        return 1 if code == 0 and self.refused else code

    def counts(self) -> Counter[str]:
        """Row outcomes over all files."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.counts)
        return total

    def line(self) -> str:
        """The summary line: files, row outcomes, exit code."""
        statuses = Counter(f.status for f in self.files)
        if self.files:
            parts = ", ".join(f"{n} {STATUS_WORDS[s]}" for s, n in statuses.items())
            noun = "file" if len(self.files) == 1 else "files"
            text = f"{len(self.files)} {noun} ({parts})"
        else:
            text = "no new files"
        extras = []
        if self.skipped:
            extras.append(f"{self.skipped} already processed")
        if self.waiting:
            extras.append(f"{self.waiting} still being written")
        if self.refused:
            extras.append(f"{self.refused} refused (not regular files in the folder)")
        if extras:
            text += f", {', '.join(extras)}"
        rows = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()) if v)
        if rows:
            text += f"; rows: {rows}"
        if self.interrupted and not statuses.get("interrupted"):
            text += "; interrupted"
        # Where to look: cron mails this line, and a person must find the failed rows from it.
        folders = [
            f.run_dir for f in self.files if f.status == "rows_failed" and f.run_dir is not None
        ]
        if folders:
            named = ", ".join(str(d / "failures.csv") for d in folders[:_FOLDERS_NAMED])
            more = len(folders) - _FOLDERS_NAMED
            text += f"; failures in {named}" + (f" and {more} more" if more > 0 else "")
        return f"job {self.job.name}: {text}; exit {self.exit_code}"

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`job run --json`)."""
        return {
            "job": self.job.name,
            "job_file": str(self.job.path),
            "started": self.started,
            "ended": self.ended,
            "files": [f.to_json() for f in self.files],
            "counts": dict(self.counts()),
            "skipped": self.skipped,
            "waiting": self.waiting,
            "refused": self.refused,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "summary": self.line(),
        }


class _Stop(Exception):
    """The job was asked to stop between or before files' runs."""


class _JobRun:
    def __init__(self, job: Job, tokens: TokenProvider | None, *, quiet: bool) -> None:
        self.job = job
        self.tokens = tokens
        self.quiet = quiet
        self.report = JobReport(job)
        self.signal_name: str | None = None
        self.map_file: Path | None = None
        # One budget for all the files of this job run (see `_limiter`).
        self.limiter: Limiter | None = None

    # Signals: the engine watches SIGINT/SIGTERM while a file's rows are being sent (and stops
    # that run cleanly, exit 130). Around it (hashing, reading a file, resolving keys) the job
    # watches them itself and cancels the current step; nothing is being written to Graph then.
    @asynccontextmanager
    async def _stoppable(self) -> AsyncIterator[anyio.CancelScope]:
        if self.signal_name is not None:
            raise _Stop()
        error: Exception | None = None
        step = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            await tg.start(self._watch, step)
            try:
                with step:
                    yield step
            except Exception as exc:
                # Raised after the task group, so callers see it as it is (not in a group).
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if step.cancelled_caught or self.signal_name is not None:
            raise _Stop()

    async def _watch(
        self, step: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        from batch.engine import signal_receiver

        try:
            # The process's signals, or a job's tenant hub's (`batch.jobs.tenants`).
            receiver = signal_receiver.get()(*stop_signals())
            with receiver as signals:
                task_status.started()
                async for signum in signals:
                    if self.signal_name is not None:
                        log.error("second interrupt: exiting at once")
                        os._exit(130)
                    self.signal_name = signal_name(signum)
                    log.warning("%s received: stopping the job", self.signal_name)
                    step.cancel()
        except (NotImplementedError, ValueError, RuntimeError):
            # Not the main thread (in-process tests): no signal watch.
            task_status.started()
            await anyio.sleep_forever()

    async def main(self, state: JobState) -> None:
        try:
            async with self._stoppable():
                plan = plan_files(self.job, state)
            for record, why in plan.abandoned:
                log.warning(
                    "interrupted run of %s cannot be resumed: %s; its run folder %s keeps what "
                    "was sent, and the file is treated as new",
                    record.path,
                    why,
                    record.run_dir,
                    extra={"file": record.path, "run_dir": record.run_dir},
                )
                state.finish(record.sha256, "abandoned", error=why)
            for path, why in plan.skipped:
                log.warning("skipped %s: %s", path, why, extra={"file": str(path)})
            # By name only: what a link points at, or a FIFO holds, is never read or shown.
            for path, why in plan.refused:
                log.warning("refused %s: %s", path, why, extra={"file": str(path)})
            self.report.refused = len(plan.refused)
            for path in plan.waiting:
                log.info(
                    "not yet: %s was modified less than %g s ago (settle_seconds)",
                    path,
                    self.job.settle_seconds,
                    extra={"file": str(path)},
                )
            self.report.waiting = len(plan.waiting)
            self.report.skipped = len(plan.duplicates)
            for path, record in plan.duplicates:
                same = "" if record.path == str(path) else f", same content as {record.path}"
                log.info(
                    "already processed: %s (finished %s%s)",
                    path,
                    record.finished,
                    same,
                    extra={"file": str(path), "run_dir": record.run_dir},
                )
                self._archive(state, path, record.sha256)
            for item in plan.items:
                result = await self._one(state, item)
                self.report.files.append(result)
                if result.status in ("aborted", "interrupted"):
                    break  # the next job run resumes it first; other files wait for that
        except _Stop:
            self.report.interrupted = True

    async def _one(self, state: JobState, item: Item) -> FileResult:
        from batch.engine import execute
        from batch.progress import make_progress

        resume = item.resume_dir is not None and (item.resume_dir / "state.sqlite").exists()
        out = item.resume_dir if resume and item.resume_dir else self._fresh_run_dir(item.path)
        options = self.job.run_options(item.path, out=out, resume=resume, map_file=self.map_file)
        result = FileResult(item.path, item.sha256, "ok", 0, run_dir=out, resumed=resume)

        def started(prepared: Prepared) -> None:
            # Read and checked; nothing sent yet. From here on the file is resumable.
            if self.signal_name is not None:
                raise Interrupted(f"{self.signal_name} received before {item.path.name} started")
            result.sha256 = prepared.sha256
            state.start(prepared.sha256, item.path, out)

        log.info(
            "%s %s",
            "resuming" if resume else "processing",
            item.path,
            extra={"file": str(item.path), "sha256": item.sha256, "run_dir": str(out)},
        )
        try:
            async with self._stoppable():
                summary: RunSummary = await execute(
                    options,
                    tokens=self.tokens,
                    progress=make_progress(quiet=self.quiet),
                    on_prepared=started,
                    limiter=self._limiter(options),
                )
        except InputFileError as error:
            # The file itself cannot be used (unreadable, unknown column, ...). It stays where it
            # is and is read again by every run (nothing is sent): a corrected file, or a job
            # file that now maps its columns, lets it through.
            state.reject(item.sha256, item.path, str(error))
            log.error("rejected: %s", error, extra={"file": str(item.path)})
            result.status, result.exit_code, result.error = "rejected", error.exit_code, str(error)
            result.run_dir = out if out.exists() else None
            return result
        except (AuthError, RunAborted) as error:
            state.finish(result.sha256, "stopped", exit_code=error.exit_code, error=str(error))
            log.error("aborted %s: %s", item.path, error, extra={"file": str(item.path)})
            result.status, result.exit_code, result.error = "aborted", error.exit_code, str(error)
            return result
        except (Interrupted, _Stop) as error:
            state.finish(result.sha256, "stopped", exit_code=130, error=str(error))
            self.report.interrupted = True
            result.status, result.exit_code = "interrupted", 130
            result.error = str(error) or f"{self.signal_name} received"
            return result
        except UsageError as error:
            # Settings, not the file (a map file, the run folder, resume refused): job setup.
            state.finish(result.sha256, "stopped", exit_code=error.exit_code, error=str(error))
            raise ConfigError(f"{item.path}: {error}") from None
        result.counts = {k: v for k, v in summary.data["counts"].items() if v}
        result.exit_code = summary.exit_code
        if summary.exit_code in (0, 1):
            result.status = "ok" if summary.exit_code == 0 else "rows_failed"
            state.finish(result.sha256, "done", exit_code=summary.exit_code, counts=result.counts)
            result.archived_to = self._archive(state, item.path, result.sha256)
        else:
            result.status = "interrupted" if summary.exit_code == 130 else "aborted"
            state.finish(
                result.sha256,
                "stopped",
                exit_code=summary.exit_code,
                counts=result.counts,
                error=str(summary.data.get("stopped_because") or ""),
            )
            if summary.exit_code == 130:
                self.report.interrupted = True
        log.info(
            "finished %s: %s",
            item.path,
            STATUS_WORDS[result.status],
            extra={"file": str(item.path), **result.to_json()},
        )
        return result

    def _limiter(self, options: RunOptions) -> Limiter:
        """The job run's one limiter: Graph throttles per app and tenant, not per file.

        A file started right after another must not spend the budget that one just used (with
        a limiter per file, the second of two 100-row files met 100 429s at 100/5 s). The
        first file's options set the budgets; a job's files share its [run] table.
        """
        if self.limiter is None:
            from batch.limiter import Limiter

            self.limiter = Limiter(write=options.sending.write_limit, read=options.sending.reads)
        return self.limiter

    def _fresh_run_dir(self, path: Path) -> Path:
        from batch.engine import default_out_dir

        base = default_out_dir(self.job.run_options(path, out=None, resume=False))
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
        return out

    def _archive(self, state: JobState, path: Path, sha256: str) -> Path | None:
        archive = self.job.archive
        if archive is None or self.job.dry_run or not path.exists():
            return None
        target = archive / path.name
        if target.exists():
            target = archive / f"{path.stem}-{sha256[:12]}{path.suffix}"
        n = 1
        while target.exists():
            n += 1
            target = archive / f"{path.stem}-{sha256[:12]}-{n}{path.suffix}"
        try:
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except OSError as error:
            # The file is remembered by digest, so it is not sent again even if it stays put.
            log.error(
                "cannot archive %s to %s: %s", path, archive, error.strerror or error,
                extra={"file": str(path)},
            )  # fmt: skip
            return None
        state.archived(sha256, target)
        log.info("archived %s to %s", path, target, extra={"file": str(path), "to": str(target)})
        return target


def open_job_log(job: Job, failure: str) -> logging.Handler:
    """Make the job's state folder and open its JSON-lines log; `ConfigError(failure…)` if not."""
    from batch.logs import JsonLinesHandler

    try:
        job.state_dir.mkdir(parents=True, exist_ok=True)
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        return JsonLinesHandler(job.log_file)
    except OSError as error:
        raise ConfigError(
            f"{failure} ({job.state_dir}, {job.log_file}): {error.strerror or error}"
        ) from None


def run_job(
    job: Job, *, env: Mapping[str, str] = os.environ, quiet: bool = False
) -> JobReport | RollUp:
    """Run a job once: lock, resume, process new files, archive, log; returns the report.

    Raises `LockHeld` when another run of the job holds the lock, `ConfigError` for settings
    that are wrong (credentials, folders); everything about the files is in the report. A job
    with [[tenants]] runs them side by side (`batch.jobs.tenants`) and returns their roll-up.
    """
    if job.tenants:
        from batch.jobs.tenants import run_tenants

        return run_tenants(job, env=env, quiet=quiet)
    tokens = job.tokens(env)
    if job.input_file is not None and not job.input_file.exists():
        require_processed(job)
    handler = open_job_log(job, f"{job.path}: cannot write the job's state or log")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    lock = JobLock(job.state_dir / "job.lock", job.name)
    state: JobState | None = None
    try:
        try:
            lock.acquire()
        except LockHeld as error:
            # In the job log too: "why did last night's start do nothing?" is answered there.
            # Only there: the console says it once, as the command's error.
            handler.handle(
                log.makeRecord(
                    log.name,
                    logging.WARNING,
                    __file__,
                    0,
                    "%s",
                    (error,),
                    None,
                    extra={"job": job.name, "pid": os.getpid()},
                )
            )
            raise
        log.info(
            "job started", extra={"job": job.name, "job_file": str(job.path), "pid": os.getpid()}
        )
        if lock.taken_over is not None:
            log.warning(
                "took over the lock of pid %s (started %s), which is no longer running",
                lock.taken_over.get("pid", "?"),
                lock.taken_over.get("started", "?"),
                extra={"previous": lock.taken_over},
            )
        state = JobState(job.state_dir / "files.sqlite", dry_run=job.dry_run)
        runner = _JobRun(job, tokens, quiet=quiet)
        if job.columns is not None:
            runner.map_file = write_column_map(job.columns, job.state_dir)
        anyio.run(runner.main, state)
        report = runner.report
        report.ended = now_iso()
        line = report.line()
        log.info(line, extra=report.to_json())
        _notify_file(job, f"{report.ended} {line}")
        _write_job_page(job, report, state)
        write_summary_json(job.log_file.parent / "job.summary.json", report.to_json())
        notify_webhook(job, report.to_json(), env)
        return report
    finally:
        if state is not None:
            state.close()
        lock.release()
        log.removeHandler(handler)
        handler.close()


def _write_job_page(job: Job, report: JobReport, state: JobState) -> None:
    """job.html next to the job log; the job's outcome never depends on it."""
    from batch.report.job_html import write_job_report

    try:
        write_job_report(job.log_file.parent / "job.html", report, state.recent())
    except Exception as error:
        log.error("job.html not written: %s: %s", type(error).__name__, error)


def _notify_file(job: Job, line: str) -> None:
    if job.notify.file is None:
        return
    try:
        job.notify.file.parent.mkdir(parents=True, exist_ok=True)
        with job.notify.file.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as error:
        log.error("cannot write %s: %s", job.notify.file, error.strerror or error)


def write_summary_json(path: Path, data: Mapping[str, Any]) -> None:
    """job.summary.json (the run's report as JSON); the job's outcome never depends on it."""
    import json

    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        log.error("cannot write %s: %s", path, error.strerror or error)


def notify_webhook(job: Job, data: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """[notify] webhook: one POST for this job run; returns sent, skipped, failed or "" (none).

    A notification that fails is logged and never changes the job's exit code. Neither the
    URL nor any part of it is logged: only the variable's name.
    """
    notify = job.notify
    if notify.webhook_env is None:
        return ""
    from batch.notify import (
        NotifyError,
        build_payload,
        post_webhook,
        wants_notification,
        webhook_url,
    )

    where = f"${notify.webhook_env}, {notify.webhook_format}"
    if not wants_notification(notify.notify_on, data):
        log.info("webhook (%s) not sent: no problems in this run (notify_on = problems)", where)
        return "skipped"
    try:
        url = webhook_url(notify.webhook_env, env)
        status = post_webhook(url, build_payload(notify.webhook_format, data))
    except (ConfigError, NotifyError) as error:
        log.error("webhook notification (%s) failed: %s", where, error)
        return "failed"
    log.info("webhook notification (%s) sent: HTTP %s", where, status)
    return "sent"
