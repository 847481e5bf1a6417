"""The sending engine: input → validation → planner → throttled senders → ledger and reports.

One anyio task group holds a producer (reads and validates rows, streaming), `--concurrency`
senders, and one reporter that owns the output files and the ledger writes. Per-row trouble is a
`RowResult`, never an exception leaving a worker; only whole-run conditions (authentication lost,
Graph unreachable, a signal) stop the run, and even then every input row gets exactly one result.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import math
import os
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch import __version__
from batch.auth import TokenProvider
from batch.errors import AuthError, GraphError, Interrupted, RunAborted, UsageError
from batch.graph import GraphClient, GraphResponse
from batch.ledger import Ledger
from batch.limiter import Clock, Limiter, SystemClock
from batch.logs import JsonLinesHandler
from batch.mapper import InputOptions, Prepared, prepare
from batch.model import Invalid, Outcome, Rate, RawRow, RowResult, Skipped, Update
from batch.planner import MAX_BATCH, batch_requests, patch_url
from batch.progress import ProgressSink, make_progress
from batch.report import FailuresWriter, RequestsWriter, ResultsWriter, write_json_atomic
from batch.retry import graph_retrying, transient_delay

__all__ = ["RunOptions", "RunSummary", "default_out_dir", "execute"]

log = logging.getLogger("batch.engine")

# How long in-flight requests may take to finish after Ctrl-C/SIGTERM before they are abandoned.
STOP_GRACE_SECONDS = 10.0
# How far (in rows) the producer may run ahead of the first row still waiting for its answer;
# bounds the reporter's reordering buffer, so memory stays flat on huge files.
REORDER_WINDOW = 20_000


@dataclass(kw_only=True)
class RunOptions:
    """Everything that shapes one run (the CLI and job files both build this)."""

    input: Path
    out: Path | None = None
    resume: bool = False
    dry_run: bool = False
    mode: Literal["single", "batch"] = "batch"
    batch_size: int = MAX_BATCH
    write_limit: Rate = field(default_factory=lambda: Rate(100, 20))
    # None: ten times the write budget over the same window, as Graph's limits are (1000 vs 100).
    read_limit: Rate | None = None
    concurrency: int = 4
    max_retries: int = 8
    input_options: InputOptions = field(default_factory=InputOptions)
    graph_root: str = "https://graph.microsoft.com"
    cloud: str = "global"
    runs_root: Path = Path("runs")

    @property
    def reads(self) -> Rate:
        """The read (any request) budget in effect."""
        return self.read_limit or Rate(self.write_limit.count * 10, self.write_limit.seconds)

    def check(self) -> None:
        """Reject impossible combinations before anything is read or sent."""
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH}")
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if self.mode not in ("single", "batch"):
            raise UsageError("--mode must be single or batch")

    def recorded(self) -> dict[str, Any]:
        """The options as stored in the ledger and summary (no secrets exist here)."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "write_limit": str(self.write_limit),
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "dry_run": self.dry_run,
            "graph_root": self.graph_root,
            "cloud": self.cloud,
        }


@dataclass
class RunSummary:
    """What a run did, as written to summary.json; `exit_code` follows CONTRACT.md."""

    out_dir: Path
    counts: Counter[str]
    total: int
    exit_code: int
    data: dict[str, Any]


def default_out_dir(options: RunOptions, now: dt.datetime | None = None) -> Path:
    """`runs/<UTC timestamp>-<input stem>/`."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return options.runs_root / f"{stamp}-{options.input.stem}"


# --- the work queue ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Work:
    seq: int
    raw: RawRow
    update: Update
    attempts: int = 0
    last_error: GraphError | None = None


class _WorkQueue:
    """Rows waiting to be sent: fresh ones (bounded: backpressure) and re-queued ones.

    Re-queued rows may carry a not-before time (a 503's Retry-After delays only that request).
    `get` returns None when the input is exhausted and nothing is waiting or in flight, or once
    the queue was stopped.
    """

    def __init__(self, capacity: int, clock: Clock) -> None:
        self._capacity = capacity
        self._clock = clock
        self._ready: deque[_Work] = deque()
        self._delayed: list[tuple[float, int, _Work]] = []
        self._tiebreak = itertools.count()
        self._cond = anyio.Condition()
        self._input_done = False
        self._stopped = False
        self.in_flight: dict[int, _Work] = {}

    def ready_count(self) -> int:
        return len(self._ready)

    async def put(self, work: _Work) -> bool:
        async with self._cond:
            while len(self._ready) >= self._capacity and not self._stopped:
                await self._cond.wait()
            if self._stopped:
                return False
            self._ready.append(work)
            self._cond.notify_all()
            return True

    async def close_input(self) -> None:
        async with self._cond:
            self._input_done = True
            self._cond.notify_all()

    async def stop(self) -> None:
        async with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _promote_due(self) -> None:
        now = self._clock.now()
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.appendleft(heapq.heappop(self._delayed)[2])

    async def get(self) -> _Work | None:
        async with self._cond:
            while True:
                if self._stopped:
                    return None
                self._promote_due()
                if self._ready:
                    work = self._ready.popleft()
                    self.in_flight[work.seq] = work
                    self._cond.notify_all()
                    return work
                if self._input_done and not self._delayed and not self.in_flight:
                    self._cond.notify_all()
                    return None
                timeout = self._delayed[0][0] - self._clock.now() if self._delayed else math.inf
                with anyio.move_on_after(max(timeout, 0.0)):
                    await self._cond.wait()

    def take_nowait(self, n: int) -> list[_Work]:
        self._promote_due()
        taken: list[_Work] = []
        while self._ready and len(taken) < n:
            work = self._ready.popleft()
            self.in_flight[work.seq] = work
            taken.append(work)
        return taken

    async def finish(self, work: _Work) -> None:
        async with self._cond:
            self.in_flight.pop(work.seq, None)
            self._cond.notify_all()

    async def retry(self, work: _Work, delay: float = 0.0) -> None:
        async with self._cond:
            self.in_flight.pop(work.seq, None)
            if delay > 0:
                heapq.heappush(
                    self._delayed, (self._clock.now() + delay, next(self._tiebreak), work)
                )
            else:
                # Throttled rows go first: they are the oldest and the gate already holds them.
                self._ready.appendleft(work)
            self._cond.notify_all()

    def drain(self) -> list[_Work]:
        """Everything never answered (after a stop): waiting and in-flight rows, in row order."""
        left = [*self._ready, *(w for _, _, w in self._delayed), *self.in_flight.values()]
        self._ready.clear()
        self._delayed.clear()
        self.in_flight.clear()
        return sorted(left, key=lambda w: w.seq)


# --- the run ----------------------------------------------------------------------------------

_Item = tuple[int, RawRow, RowResult]


class _Run:
    def __init__(
        self,
        options: RunOptions,
        prepared: Prepared,
        out_dir: Path,
        *,
        client: GraphClient | None,
        ledger: Ledger | None,
        progress: ProgressSink,
        clock: Clock,
    ) -> None:
        self.o = options
        self.prepared = prepared
        self.out_dir = out_dir
        self.client = client
        self.ledger = ledger
        self.progress = progress
        self.clock = clock
        self.limiter = Limiter(write=options.write_limit, read=options.reads, clock=clock)
        capacity = max(options.concurrency * options.batch_size * 2, 64)
        self.queue = _WorkQueue(capacity, clock)
        self.counts: Counter[str] = Counter()
        self.requests_sent = 0
        self.writes_sent = 0
        self.retries = 0
        self.throttled = 0
        self.answers = 0
        self.stop_reason: BaseException | None = None
        self.stopping = anyio.Event()
        self.written_seq = -1
        self._seq_cond = anyio.Condition()
        self.signals = 0
        self.results_send: MemoryObjectSendStream[_Item]
        self.results_recv: MemoryObjectReceiveStream[_Item]
        self.results_send, self.results_recv = anyio.create_memory_object_stream[_Item](1000)
        self.requests_writer = (
            RequestsWriter(out_dir / "requests.jsonl") if options.dry_run else None
        )

    # --- stopping --------------------------------------------------------------------------

    async def stop(self, reason: BaseException) -> None:
        """Stop taking new rows; the first reason wins (it decides the exit code)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping: %s", reason)
        self.stopping.set()
        await self.queue.stop()

    async def watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.signals += 1
                if self.signals > 1:
                    # A second Ctrl-C: leave now. SQLite commits are atomic, so the ledger stays
                    # consistent; reports are flushed as far as they got.
                    log.error("second interrupt: exiting at once")
                    if self.ledger is not None:
                        self.ledger.commit()
                    os._exit(130)
                name = signal.Signals(signum).name
                await self.stop(Interrupted(f"{name} received; finishing requests in flight"))

    # --- producer --------------------------------------------------------------------------

    async def produce(self) -> None:
        finished = self.ledger.finished() if (self.ledger and self.o.resume) else {}
        try:
            for seq, (raw, mapped) in enumerate(self.prepared.rows()):
                await self._wait_reorder_room(seq)
                if self.stopping.is_set():
                    await self._emit(seq, raw, self._not_attempted(raw, mapped))
                    continue
                done = finished.get(raw.number)
                if done is not None:
                    await self._emit(seq, raw, done, restored=True)
                elif isinstance(mapped, Invalid):
                    await self._emit(
                        seq,
                        raw,
                        RowResult(
                            raw.number,
                            mapped.event_id,
                            Outcome.INVALID,
                            error_code="InvalidRow",
                            error_message=mapped.message,
                        ),
                    )
                elif isinstance(mapped, Skipped):
                    await self._emit(
                        seq,
                        raw,
                        RowResult(
                            raw.number,
                            mapped.event_id,
                            Outcome.SKIPPED,
                            error_message=mapped.reason,
                        ),
                    )
                elif self.requests_writer is not None:
                    self.requests_writer.write(
                        raw.number,
                        "PATCH",
                        patch_url(self.o.graph_root, mapped.event_id),
                        mapped.body,
                    )
                    await self._emit(
                        seq,
                        raw,
                        RowResult(
                            raw.number,
                            mapped.event_id,
                            Outcome.PLANNED,
                            changed_fields=tuple(mapped.body),
                        ),
                    )
                elif not await self.queue.put(_Work(seq, raw, mapped)):
                    await self._emit(seq, raw, self._not_attempted(raw, mapped))
                await anyio.lowlevel.checkpoint()
        finally:
            await self.queue.close_input()
            if self.requests_writer is not None:
                self.requests_writer.close()

    async def _wait_reorder_room(self, seq: int) -> None:
        if seq - self.written_seq <= REORDER_WINDOW:
            return
        async with self._seq_cond:
            while seq - self.written_seq > REORDER_WINDOW:
                await self._seq_cond.wait()

    @staticmethod
    def _not_attempted(raw: RawRow, mapped: Update | Invalid | Skipped) -> RowResult:
        return RowResult(
            raw.number,
            mapped.event_id,
            Outcome.NOT_ATTEMPTED,
            error_message="the run stopped before this row was sent",
        )

    async def _emit(self, seq: int, raw: RawRow, result: RowResult, restored: bool = False) -> None:
        if restored:
            result.extra["restored"] = "1"
        await self.results_send.send((seq, raw, result))

    # --- senders ---------------------------------------------------------------------------

    def _result_from(self, work: _Work, outcome: Outcome, **kw: Any) -> RowResult:
        return RowResult(
            work.raw.number, work.update.event_id, outcome, attempts=work.attempts, **kw
        )

    def _failed(self, work: _Work, error: GraphError) -> RowResult:
        return self._result_from(
            work,
            Outcome.FAILED,
            status=error.status or None,
            error_code=error.code,
            error_message=error.message,
            request_id=error.request_id,
            client_request_id=error.client_request_id,
        )

    def _updated(
        self, work: _Work, *, status: int, request_id: str, client_request_id: str
    ) -> RowResult:
        return self._result_from(
            work,
            Outcome.UPDATED,
            status=status,
            changed_fields=tuple(work.update.body),
            request_id=request_id,
            client_request_id=client_request_id,
        )

    async def _complete(self, work: _Work, result: RowResult) -> None:
        await self.queue.finish(work)
        await self._emit(work.seq, work.raw, result)

    async def _graph_unreachable(self, work: _Work, error: GraphError, answers_before: int) -> bool:
        """A row that exhausted its retries without any answer from Graph meanwhile: stop."""
        if error.status == 0 and self.answers == answers_before:
            await self.stop(
                RunAborted(f"Graph is unreachable at {self.o.graph_root}: {error.message}")
            )
            return True
        return False

    async def single_sender(self) -> None:
        assert self.client is not None
        while (work := await self.queue.get()) is not None:
            if self.ledger is not None:
                self.ledger.mark_in_flight([(work.raw.number, work.update.event_id)])
            answers_before = self.answers
            try:
                response = await self._patch_with_retries(work)
            except _Abandon:
                return  # still in flight: drained as not_attempted, resent on --resume
            except AuthError as error:
                await self.stop(error)
                return
            except GraphError as error:
                if error.transient and await self._graph_unreachable(work, error, answers_before):
                    return
                await self._complete(work, self._failed(work, error))
            else:
                await self._complete(
                    work,
                    self._updated(
                        work,
                        status=response.status,
                        request_id=response.request_id,
                        client_request_id=response.client_request_id,
                    ),
                )

    async def _patch_with_retries(self, work: _Work) -> GraphResponse:
        assert self.client is not None
        async for attempt in graph_retrying(
            self.limiter, max_retries=self.o.max_retries, clock=self.clock
        ):
            with attempt:
                if self.stopping.is_set() and work.attempts:
                    # Stopping: do not start another attempt; the row stays resumable.
                    raise _Abandon()
                await self.limiter.acquire_writes(1)
                if self.stopping.is_set():
                    raise _Abandon()
                work.attempts += 1
                if work.attempts > 1:
                    self.retries += 1
                self.requests_sent += 1
                self.writes_sent += 1
                try:
                    response = await self.client.patch_event(work.update.event_id, work.update.body)
                except GraphError as error:
                    if error.status:
                        self.answers += 1
                    if error.status == 429:
                        self.throttled += 1
                    work.last_error = error
                    raise
                self.answers += 1
                self.limiter.note_success()
                return response
        raise AssertionError("tenacity stops by raising")  # pragma: no cover

    async def batch_sender(self) -> None:
        assert self.client is not None
        while (first := await self.queue.get()) is not None:
            want = min(self.o.batch_size, 1 + self.queue.ready_count())
            granted = await self.limiter.acquire_writes(want)
            if self.stopping.is_set():
                return  # the row stays in flight and is reported not_attempted by drain()
            works = [first, *self.queue.take_nowait(granted - 1)]
            await self._send_batch(works)

    async def _send_batch(self, works: list[_Work]) -> None:
        assert self.client is not None
        for w in works:
            w.attempts += 1
            if w.attempts > 1:
                self.retries += 1
        if self.ledger is not None:
            self.ledger.mark_in_flight((w.raw.number, w.update.event_id) for w in works)
        by_id = {str(w.seq): w for w in works}
        self.requests_sent += 1
        self.writes_sent += len(works)
        try:
            envelope, responses = await self.client.batch(
                batch_requests([(k, w.update) for k, w in by_id.items()])
            )
        except AuthError as error:
            await self.stop(error)
            return
        except GraphError as error:
            if error.status:
                self.answers += 1
            for w in works:
                w.last_error = error
            if error.status == 429:
                self.throttled += 1
                self.limiter.throttled(error.retry_after)
                await self._requeue_all(works, 0.0)
            elif error.transient:
                await self._requeue_all(works, self._backoff(error, works[0].attempts))
            else:
                for w in works:
                    await self._complete(w, self._failed(w, error))
            return
        self.answers += 1
        throttled_here = False
        for key, w in by_id.items():
            item = responses[key]
            request_id = item.headers.get("request-id", "") or envelope.request_id
            if 200 <= item.status < 300:
                self.limiter.note_success()
                await self._complete(
                    w,
                    self._updated(
                        w,
                        status=item.status,
                        request_id=request_id,
                        client_request_id=envelope.client_request_id,
                    ),
                )
                continue
            item_error = item.error() or GraphError(item.status, "Unknown", "no error body")
            if not item_error.request_id:
                item_error.request_id = request_id
            if not item_error.client_request_id:
                item_error.client_request_id = envelope.client_request_id
            w.last_error = item_error
            if item.status == 429:
                self.throttled += 1
                if not throttled_here:
                    # One pause per batch: every throttled item carries about the same wait.
                    throttled_here = True
                    self.limiter.throttled(
                        max(
                            (r.retry_after or 0.0 for r in responses.values() if r.status == 429),
                            default=0.0,
                        )
                        or None
                    )
                await self._requeue(w, 0.0)
            elif item_error.transient:
                await self._requeue(w, self._backoff(item_error, w.attempts))
            else:
                await self._complete(w, self._failed(w, item_error))

    def _backoff(self, error: GraphError, attempts: int) -> float:
        """A transient error's delay for this request only: its Retry-After, else backoff."""
        return transient_delay(self.limiter, error, attempts)

    async def _requeue_all(self, works: list[_Work], delay: float) -> None:
        for w in works:
            await self._requeue(w, delay)

    async def _requeue(self, work: _Work, delay: float) -> None:
        if work.attempts > self.o.max_retries:
            assert work.last_error is not None
            await self._complete(work, self._failed(work, work.last_error))
            return
        await self.queue.retry(work, delay)

    # --- reporter --------------------------------------------------------------------------

    async def report(self, results: ResultsWriter, failures: FailuresWriter) -> None:
        pending: dict[int, tuple[RawRow, RowResult]] = {}
        next_seq = 0
        async with self.results_recv:
            async for seq, raw, result in self.results_recv:
                batch = [(seq, raw, result)]
                # Everything already waiting goes into the same ledger transaction.
                while True:
                    try:
                        batch.append(self.results_recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if self.ledger is not None:
                    self.ledger.record(r for _, _, r in batch if "restored" not in r.extra)
                    self.ledger.commit()
                for s, rw, rs in batch:
                    pending[s] = (rw, rs)
                    self.counts[rs.outcome.value] += 1
                    self.progress.advance(rs.outcome, throttled=self.throttled)
                while next_seq in pending:
                    rw, rs = pending.pop(next_seq)
                    results.write(rs)
                    if rs.outcome in (Outcome.FAILED, Outcome.INVALID):
                        failures.write(rw, rs)
                    next_seq += 1
                results.flush()
                failures.flush()
                async with self._seq_cond:
                    self.written_seq = next_seq - 1
                    self._seq_cond.notify_all()

    # --- orchestration -----------------------------------------------------------------------

    async def run(self) -> None:
        results = ResultsWriter(self.out_dir / "results.csv")
        failures = FailuresWriter(self.out_dir / "failures.csv", self.prepared.source.headers)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.report, results, failures)
                watcher = anyio.CancelScope()
                tg.start_soon(self._watch, watcher)
                async with self.results_send:
                    await self._work()
                watcher.cancel()
        finally:
            results.close()
            failures.close()

    async def _watch(self, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await self.watch_signals()
            except (NotImplementedError, ValueError, RuntimeError):
                # Not the main thread (tests calling in-process) or no signal support: no watch.
                await anyio.sleep_forever()

    async def _work(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.produce)
            killer = anyio.CancelScope()
            with anyio.CancelScope() as senders_scope:
                tg.start_soon(self._grace_killer, senders_scope, killer)
                if self.client is not None and not self.o.dry_run:
                    sender = self.single_sender if self.o.mode == "single" else self.batch_sender
                    async with anyio.create_task_group() as senders:
                        for _ in range(self.o.concurrency):
                            senders.start_soon(sender)
            killer.cancel()
            # Whatever was never answered (stop, abort) is reported not_attempted; its ledger
            # state stays pending/in_flight, so --resume sends it.
            for work in self.queue.drain():
                await self._emit(work.seq, work.raw, self._not_attempted(work.raw, work.update))

    async def _grace_killer(self, senders: anyio.CancelScope, own: anyio.CancelScope) -> None:
        with own:
            await self.stopping.wait()
            await anyio.sleep(STOP_GRACE_SECONDS)
            log.warning("requests still in flight after %.0f s: abandoning", STOP_GRACE_SECONDS)
            senders.cancel()


class _Abandon(Exception):
    """Raised inside a retry loop when the run is stopping; the row is left unsent."""


# --- entry point ------------------------------------------------------------------------------


def _prepare_out_dir(options: RunOptions) -> Path:
    if options.resume:
        out = options.out or _latest_run(options)
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


def _latest_run(options: RunOptions) -> Path:
    candidates = sorted(options.runs_root.glob(f"*-{options.input.stem}"))
    if not candidates:
        raise UsageError(f"--resume: no earlier run of {options.input.name}; pass --out RUN_DIR")
    return candidates[-1]


@asynccontextmanager
async def _client(
    options: RunOptions, tokens: TokenProvider | None, http: httpx.AsyncClient | None
) -> AsyncIterator[GraphClient | None]:
    if options.dry_run or tokens is None:
        yield None
        return
    async with GraphClient(
        options.graph_root,
        tokens,
        http=http,
        max_connections=max(options.concurrency * 2, 8),
    ) as client:
        yield client


async def execute(
    options: RunOptions,
    *,
    tokens: TokenProvider | None,
    progress: ProgressSink | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
    on_prepared: Callable[[Prepared], None] | None = None,
) -> RunSummary:
    """Run (or dry-run) one input file end to end and write its run folder.

    Raises `UsageError`/`InputFileError`/`ResumeError` before anything is sent; after that every
    outcome, including an abort or an interrupt, is in the returned summary's `exit_code`.
    """
    options.check()
    prepared = prepare(options.input, options.input_options)
    if on_prepared is not None:
        on_prepared(prepared)
    out_dir = _prepare_out_dir(options)
    ledger: Ledger | None = None
    if not options.dry_run:
        ledger = Ledger(out_dir / "state.sqlite")
        if options.resume:
            ledger.check_resumable(prepared.sha256)
        else:
            ledger.set_meta(
                input_path=str(options.input.resolve()),
                input_sha256=prepared.sha256,
                total_rows=str(prepared.total),
                tool_version=__version__,
            )
    handler = JsonLinesHandler(out_dir / "run.log")
    root_log = logging.getLogger("batch")
    root_log.addHandler(handler)
    if root_log.level == logging.NOTSET or root_log.level > logging.INFO:
        root_log.setLevel(logging.INFO)
    progress = progress or make_progress(quiet=True)
    started_wall = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    log.info(
        "run started",
        extra={"input": str(options.input), "out": str(out_dir), **options.recorded()},
    )
    for warning in prepared.warnings:
        log.warning("%s", warning)
    run: _Run | None = None
    try:
        async with _client(options, tokens, http) as client:
            run = _Run(
                options,
                prepared,
                out_dir,
                client=client,
                ledger=ledger,
                progress=progress,
                clock=clock or SystemClock(),
            )
            verb = "dry run" if options.dry_run else f"sending ({options.mode} mode)"
            progress.start(prepared.total, f"{options.input.name}: {verb}")
            await run.run()
    finally:
        progress.close()
        if ledger is not None:
            ledger.close()
    elapsed = time.monotonic() - started
    summary = _summarise(options, prepared, out_dir, run, started_wall, elapsed)
    write_json_atomic(out_dir / "summary.json", summary.data)
    log.info("run finished", extra={"exit_code": summary.exit_code, **dict(summary.counts)})
    root_log.removeHandler(handler)
    handler.close()
    return summary


def _summarise(
    options: RunOptions,
    prepared: Prepared,
    out_dir: Path,
    run: _Run | None,
    started: dt.datetime,
    elapsed: float,
) -> RunSummary:
    assert run is not None
    counts = run.counts
    reason = run.stop_reason
    if isinstance(reason, Interrupted):
        exit_code = 130
    elif isinstance(reason, AuthError | RunAborted):
        exit_code = 3
    elif all(Outcome(k).ok for k, v in counts.items() if v):
        exit_code = 0
    else:
        exit_code = 1
    data: dict[str, Any] = {
        "tool_version": __version__,
        "input": str(options.input),
        "input_sha256": prepared.sha256,
        "out_dir": str(out_dir),
        "rows": prepared.total,
        "counts": {o.value: counts.get(o.value, 0) for o in Outcome},
        "started": started.isoformat(),
        "ended": dt.datetime.now(dt.UTC).isoformat(),
        "elapsed_seconds": round(elapsed, 3),
        "rows_per_second": round(sum(counts.values()) / elapsed, 2) if elapsed > 0 else 0.0,
        "requests_sent": run.requests_sent,
        "writes_sent": run.writes_sent,
        "throttled_429": run.throttled,
        "retries": run.retries,
        "resumed": options.resume,
        "exit_code": exit_code,
        "stopped_because": None if reason is None else str(reason),
        **options.recorded(),
    }
    return RunSummary(out_dir, counts, prepared.total, exit_code, data)


def replace_options(options: RunOptions, **changes: Any) -> RunOptions:
    """A copy of `options` with some fields changed (job files build on a base)."""
    return replace(options, **changes)
