"""`execute`: one run from its input to its run folder, and the wiring of the stages.

`execute` prepares (input, run folder, ledger, `--key`), then `_Run.wire` builds the stages and
`_Run.go` runs them in one task group:

    producer ──► [read queue] ──► ReadStage ──► [write queue] ──► Senders ──► Graph
        │                            │                              │
        └────────────── ResultStream (every row's one result) ──────┴──► Reporter

with the `StopControl` (signals, grace) and one `RunStats` shared by reference. Stages get what
they use as values (a stage that talks to Graph gets a `GraphClient`, never an optional one) and
never call each other. Time is the injected `Clock`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from batch import __version__, runlog
from batch.auth import TokenProvider, token_tenant
from batch.changes import BeforeImages
from batch.engine import outcomes
from batch.engine.options import RowPlan, RunOptions, RunSummary, default_out_dir
from batch.engine.producer import Producer
from batch.engine.readback import ReadBack
from batch.engine.readers import ReadStage
from batch.engine.reporter import Reporter
from batch.engine.senders import Senders
from batch.engine.stats import RunStats
from batch.engine.stop import StopControl
from batch.engine.summary import FINAL_FIGURES, nothing_to_resume, summarise, write_report_html
from batch.engine.throttle import Throttle, waiting
from batch.engine.verify import Verifier
from batch.engine.work import ResultStream, Work
from batch.errors import UsageError
from batch.graph import GraphClient
from batch.ledger import Ledger, read_meta, read_timeline
from batch.limiter import Clock, Limiter, SystemClock
from batch.mapper import Prepared, prepare
from batch.model import RowResult
from batch.progress import ProgressSink, make_progress
from batch.report import (
    ChangesWriter,
    FailuresWriter,
    RequestsWriter,
    ResultsWriter,
    key_columns,
    write_json_atomic,
)
from batch.report.timeline import parts_summary, split_parts
from batch.resolve import KeyResolver
from batch.workqueue import WorkQueue

__all__ = ["execute"]

log = logging.getLogger("batch.engine")


async def execute(
    options: RunOptions,
    *,
    tokens: TokenProvider | None,
    progress: ProgressSink | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
    on_prepared: Callable[[Prepared], None] | None = None,
    plan: RowPlan | None = None,
    limiter: Limiter | None = None,
) -> RunSummary:
    """Run (or dry-run) one input file end to end and write its run folder.

    `plan` replaces the input file (`revert` passes its `RevertPlan`; `options.source.file` then
    only names the run). `limiter`: budgets shared with earlier runs of this process against the
    same app and tenant (`job run` passes one to each file, so a file never spends the budget the
    previous one used; it must run on `clock`). Raises `UsageError`/`InputFileError`/
    `ResumeError` before anything is sent; after that every outcome, including an abort or an
    interrupt, is in the returned summary's `exit_code`.
    """
    clock = clock or SystemClock()
    key = options.source.reading.key
    keys = (
        KeyResolver(key, pick=options.source.pick, resource=options.resource)
        if key and plan is None
        else None
    )
    if plan is None:
        plan = prepare(
            options.source.file, options.source.reading, resolve=keys.resolve if keys else None
        )
        if keys is not None:
            keys.want(plan)
        if on_prepared is not None:
            on_prepared(plan)
    out_dir = _prepare_out_dir(options, plan.sha256)
    ledger = None if options.dry_run else Ledger(out_dir / "state.sqlite")
    if ledger is not None:
        ended = _open_ledger(ledger, options, plan)
        if ended is not None:
            ledger.close()
            return nothing_to_resume(out_dir, ended)
    if keys is not None:
        await _load_keys(keys, options, out_dir, ledger, tokens, clock, http)
    with runlog.run_log(out_dir / "run.log"):
        summary = await _run_logged(
            options, plan, out_dir, ledger, keys, tokens, progress, clock, http, limiter
        )
        log.info(
            "run finished: exit %d",
            summary.exit_code,
            extra={
                "event": "run_finished",
                "exit_code": summary.exit_code,
                "counts": {k: v for k, v in summary.data["counts"].items() if v},
                **{k: summary.data[k] for k in FINAL_FIGURES},
            },
        )
        write_report_html(out_dir)
    return summary


async def _load_keys(
    keys: KeyResolver,
    options: RunOptions,
    out_dir: Path,
    ledger: Ledger | None,
    tokens: TokenProvider | None,
    clock: Clock,
    http: httpx.AsyncClient | None,
) -> None:
    """--key: ids from one read of the tenant (or, on --resume, the ledger's cache)."""
    try:
        await keys.load(
            out_dir=out_dir,
            ledger=ledger,
            resume=options.resume,
            tokens=tokens,
            graph_root=options.target.graph_root,
            read_limit=options.sending.reads,
            max_retries=options.sending.max_retries,
            clock=clock,
            http=http,
        )
    except BaseException:
        if ledger is not None:
            ledger.close()
        raise


def _open_ledger(ledger: Ledger, options: RunOptions, plan: RowPlan) -> Mapping[str, Any] | None:
    """Check a resumed ledger or record a new run's input; a finished run's end if resumed."""
    # A ledger without the input digest was killed before it recorded the input, so before
    # anything was sent: resuming it is starting it over.
    if options.resume and ledger.get_meta("input_sha256") is not None:
        ledger.check_resumable(plan.sha256)
        ended = ledger.finished_run()
        return ended
    ledger.set_meta(
        input_path=str(options.source.file.resolve()),
        input_sha256=plan.sha256,
        total_rows=str(plan.total),
        tool_version=__version__,
        # Where the run wrote: `revert` goes back to the same Graph by default.
        graph_root=options.target.graph_root,
        cloud=options.target.cloud,
        # What the run updated: `revert` writes it back the same way (`revert.recorded_resource`).
        resource=options.resource.name,
    )
    return None


async def _run_logged(
    options: RunOptions,
    plan: RowPlan,
    out_dir: Path,
    ledger: Ledger | None,
    keys: KeyResolver | None,
    tokens: TokenProvider | None,
    progress: ProgressSink | None,
    clock: Clock,
    http: httpx.AsyncClient | None,
    limiter: Limiter | None,
) -> RunSummary:
    """The run itself, with run.log installed: the stages, then summary.json."""
    progress = progress or make_progress(quiet=True)
    started_wall = dt.datetime.now(dt.UTC)
    started = clock.now()
    log.info(
        "run started: %s -> %s (%s)",
        options.source.file.name,
        out_dir,
        "resumed" if options.resume else "new",
        extra={
            "event": "run_started",
            "input": str(options.source.file),
            "out": str(out_dir),
            **options.recorded(),
        },
    )
    for warning in plan.warnings:
        log.warning("%s", warning)
    if ledger is not None:
        ledger.start_part(resumed=options.resume, write_limit=str(options.sending.write_limit))
    try:
        async with _client(options, tokens, http) as client:
            run = _Run(options, plan, out_dir, client, ledger, progress, clock, limiter)
            if keys is not None:
                run.stats.add_reads(keys.requests, keys)
            progress.watch(lambda: waiting(run.limiter))
            verb = "dry run" if options.dry_run else f"sending ({options.sending.mode} mode)"
            progress.start(plan.total, f"{options.source.file.name}: {verb}")
            await run.go()
        summary = summarise(
            options, plan, out_dir, run.stats, run.stop.reason, started_wall, clock.now() - started
        )
        summary.data["tenant"] = token_tenant(tokens) if tokens is not None else None
        if run.verifier is not None:
            # --verify: what the read-backs found (not_applied rows are also `failed`).
            summary.data["verify"] = {
                "verified": run.verifier.verified,
                "resent": run.verifier.resent,
                "not_applied": run.verifier.not_applied,
                "unverified": run.verifier.unverified,
            }
        if ledger is not None:
            ledger.end_part(summary.exit_code)
    finally:
        progress.close()
        if ledger is not None:
            ledger.close()
    # Every part of the run, this one closed: the ledger has its end now.
    summary.data["parts"] = parts_summary(split_parts(read_timeline(out_dir / "state.sqlite")))
    write_json_atomic(out_dir / "summary.json", summary.data)
    return summary


class _Run:
    """One run's shared values and its stages (see the module docstring)."""

    def __init__(
        self,
        o: RunOptions,
        plan: RowPlan,
        out_dir: Path,
        client: GraphClient | None,
        ledger: Ledger | None,
        progress: ProgressSink,
        clock: Clock,
        limiter: Limiter | None,
    ) -> None:
        self.o, self.plan, self.out_dir, self.client = o, plan, out_dir, client
        self.ledger, self.progress, self.clock = ledger, progress, clock
        self.limiter = limiter or Limiter(
            write=o.sending.write_limit, read=o.sending.reads, clock=clock
        )
        if ledger is not None:
            # Graph's window outlives a process: a resume starts from what the interrupted run
            # sent in it, and this run's sends are kept for the next resume.
            ledger.keep_window(self.limiter, resume=o.resume)
        capacity = max(o.sending.senders * o.sending.batch_size * 2, 64)
        self.queue = WorkQueue[Work](capacity, clock)
        self.read_queue = WorkQueue[Work](capacity, clock)
        self.verify_queue = WorkQueue[Work](capacity, clock)
        self.stats = RunStats(on_throttled=ledger.note_throttled if ledger else None)
        self.stop = StopControl(clock, (self.queue, self.read_queue, self.verify_queue))
        self.results = ResultStream()
        self.requests = RequestsWriter(self.out_dir / "requests.jsonl") if o.dry_run else None
        # Reads of the current values ahead of the writes (before-images, --only-changed, revert
        # conflicts). An export's stamps need the tenant's values (three-way), even --no-backup.
        reading = (
            o.judging.only_changed or self.plan.stamped or (o.judging.backup and not o.dry_run)
        )
        if self.plan.stamped and not (self.client is not None and reading):
            log.warning(
                "the file comes from export: cells not edited since are left out, but without "
                "--only-changed a dry run does not read the tenant, so it cannot show conflicts "
                "with changes made there since the export"
            )
        self.before_images = (
            BeforeImages(self.out_dir / "before.jsonl")
            if self.client is not None and reading and ledger is not None and o.judging.backup
            else None
        )
        self.finished: dict[int, RowResult] = ledger.finished() if ledger and o.resume else {}
        throttle = Throttle(
            self.limiter,
            clock,
            hold=max(o.sending.write_limit.seconds, o.sending.reads.seconds) * 1.05,
        )
        self.reads: ReadStage | None = None
        self.senders: Senders | None = None
        self.verifier: Verifier | None = None
        if self.client is not None:
            if reading:
                self.reads = ReadStage(
                    o,
                    self.plan,
                    client=self.client,
                    limiter=self.limiter,
                    queue=self.read_queue,
                    to_write=self.queue,
                    results=self.results,
                    stats=self.stats,
                    stop=self.stop,
                    throttle=throttle,
                    ledger=ledger,
                    before_images=self.before_images,
                    requests=self.requests,
                    finished=self.finished,
                )
            if not o.dry_run and o.judging.verify:
                self.verifier = Verifier(
                    read_back=ReadBack(
                        client=self.client,
                        limiter=self.limiter,
                        stats=self.stats,
                        stop=self.stop,
                        throttle=throttle,
                        resource=o.resource,
                    ),
                    queue=self.verify_queue,
                    writes=self.queue,
                    results=self.results,
                    stop=self.stop,
                    throttle=throttle,
                    max_retries=o.sending.max_retries,
                )
            if not o.dry_run:
                self.senders = Senders(
                    client=self.client,
                    limiter=self.limiter,
                    queue=self.queue,
                    results=self.results,
                    stats=self.stats,
                    stop=self.stop,
                    throttle=throttle,
                    ledger=ledger,
                    batch_size=o.sending.batch_size,
                    max_retries=o.sending.max_retries,
                    graph_root=o.target.graph_root,
                    resource=o.resource,
                    on_accepted=self.verifier.check if self.verifier is not None else None,
                )

    async def go(self) -> None:
        """The reporter, the signal watch and the stages, until every row has its result."""
        keys = key_columns(self.plan.columns)
        reporter = Reporter(
            results=ResultsWriter(self.out_dir / "results.csv", keys),
            failures=FailuresWriter(self.out_dir / "failures.csv", self.plan.source.headers),
            changes=ChangesWriter(self.out_dir / "changes.csv", keys),
            stats=self.stats,
            ledger=self.ledger,
            progress=self.progress,
            dry_run=self.o.dry_run,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reporter.run, self.results)
                watcher = anyio.CancelScope()
                tg.start_soon(partial(self.stop.watch, watcher, on_exit=self._commit))
                async with self.results.send:
                    await self._stages()
                watcher.cancel()
        finally:
            for writer in (reporter.results, reporter.failures, reporter.changes):
                writer.close()
            if self.requests is not None:
                self.requests.close()
            if self.before_images is not None:
                self.before_images.close()

    def _commit(self) -> None:
        if self.ledger is not None:
            self.ledger.commit()

    async def _stages(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._produce)
            killer = anyio.CancelScope()
            with anyio.CancelScope() as senders_scope:
                tg.start_soon(self.stop.enforce_grace, senders_scope, killer)
                async with anyio.create_task_group() as stages:
                    if self.reads is not None:
                        stages.start_soon(self.reads.run)
                    if self.senders is not None:
                        stages.start_soon(self._send)
                    if self.verifier is not None:
                        stages.start_soon(self.verifier.run)
            killer.cancel()
            # Whatever was never answered (stop, abort) is reported not_attempted; its ledger
            # state stays pending/in_flight, so --resume sends it.
            # A row handed from readers to writers may sit in both queues for a moment: once.
            left = {w.seq: w for w in [*self.read_queue.drain(), *self.queue.drain()]}
            for _, work in sorted(left.items()):
                result = outcomes.not_attempted(work.raw, work.update)
                await self.results.emit(work.seq, work.raw, result)

    async def _send(self) -> None:
        """`--concurrency` senders; then the verifier's input ends (nothing more is written)."""
        assert self.senders is not None  # started only with senders
        send = self.senders.single if self.o.sending.mode == "single" else self.senders.batch
        try:
            async with anyio.create_task_group() as senders:
                for _ in range(self.o.sending.senders):
                    senders.start_soon(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.verify_queue.close_input()

    async def _produce(self) -> None:
        producer = Producer(
            self.plan,
            results=self.results,
            queue=self.queue,
            stop=self.stop,
            finished=self.finished,
            ledger=self.ledger,
            admit=self.reads.admit if self.reads is not None else None,
            requests=self.requests,
            graph_root=self.o.target.graph_root,
            resource=self.o.resource,
        )
        try:
            if self.reads is not None:
                await self.reads.walk_list()
            await producer.run()
        finally:
            # With reads, the readers close the write queue's input once they are done.
            await (self.read_queue if self.reads is not None else self.queue).close_input()


def _prepare_out_dir(options: RunOptions, sha256: str) -> Path:
    if options.resume:
        out = options.out or _latest_run(options, sha256)
        if not (out / "state.sqlite").exists():
            raise UsageError(f"{out}: no run to resume there (no state.sqlite)")
        return out
    out = options.out or default_out_dir(options)
    if (out / "state.sqlite").exists() or (out / "results.csv").exists():
        raise UsageError(
            f"{out} already holds a run; use --resume to continue it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the run folder {out}: {error.strerror}") from None
    return out


def _latest_run(options: RunOptions, sha256: str) -> Path:
    """The newest run folder under the runs root whose ledger recorded this input's digest.

    By digest, not by name: a run started with `--out runs/migration` (or of a renamed copy of
    the file) is found too. Newest by the ledger's modification time.
    """
    root = options.runs_root
    folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    candidates = [
        ledger
        for folder in folders
        if (ledger := folder / "state.sqlite").is_file()
        and read_meta(ledger, "input_sha256") == sha256
    ]
    if not candidates:
        raise UsageError(
            f"--resume: no earlier run of {options.source.file.name} under {root}/ "
            "(no ledger there recorded this file's content); pass --out RUN_DIR"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


@asynccontextmanager
async def _client(
    options: RunOptions, tokens: TokenProvider | None, http: httpx.AsyncClient | None
) -> AsyncIterator[GraphClient | None]:
    if not options.touches_graph or tokens is None:
        yield None  # a plain dry run touches no Graph; with --only-changed it reads
        return
    async with GraphClient(
        options.target.graph_root,
        tokens,
        http=http,
        max_connections=max(options.sending.senders * 2, 8),
    ) as client:
        yield client
