"""The sending engine: input → validation → planner → throttled senders → ledger and reports.

One anyio task group holds a producer (reads and validates rows, streaming), `--concurrency`
senders, and one reporter that owns the output files and the ledger writes. Per-row trouble is a
`RowResult`, never an exception leaving a worker; only whole-run conditions (authentication lost,
Graph unreachable, a signal) stop the run, and even then every input row gets exactly one result.

Unless `--no-backup` (without `--only-changed`) says otherwise, `--concurrency` readers sit between
the producer and the senders: they read each row's current values (`$batch` GETs under the read
budget), let `batch.changes.judge` decide (unchanged, conflict, or what to send), and commit the
row's before-image before handing it to the senders, so no PATCH ever leaves without one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch import __version__, runlog
from batch.auth import REQUIRED_PERMISSION, TokenProvider, token_tenant
from batch.changes import (
    LIST_MAX_EVENTS,
    BeforeImages,
    Change,
    ListWalk,
    Verdict,
    conflicts_to_json,
    current_values,
    describe_conflicts,
    judge,
    read_request,
    render_diff,
    resumed_verdict,
    same_value,
    use_list_walk,
)
from batch.errors import (
    AuthError,
    GraphError,
    Interrupted,
    PermissionDenied,
    RunAborted,
    UsageError,
)
from batch.graph import BatchItemResponse, GraphClient, GraphResponse
from batch.ledger import Ledger, read_meta, read_timeline
from batch.limiter import Clock, Grant, Limiter, SystemClock
from batch.logs import JsonLinesHandler
from batch.mapper import Prepared, prepare
from batch.model import JSON, Invalid, Outcome, RawRow, RowResult, Skipped, Update
from batch.options import RunOptions
from batch.planner import MAX_BATCH, batch_requests, patch_url
from batch.progress import ProgressSink, make_progress
from batch.report import (
    ChangesWriter,
    FailuresWriter,
    RequestsWriter,
    ResultsWriter,
    key_columns,
    write_json_atomic,
)
from batch.report.commands import report_command, resume_command, revert_command
from batch.report.tally import Tally
from batch.report.timeline import parts_summary, split_parts
from batch.resolve import KeyResolver
from batch.retry import transient_delay
from batch.stop import open_stop_receiver, signal_name, stop_signals
from batch.workqueue import WorkQueue

__all__ = ["RowPlan", "RunOptions", "RunSummary", "default_out_dir", "execute"]

log = logging.getLogger("batch.engine")

#: Where a run takes SIGINT/SIGTERM/SIGBREAK from: the process's signals (`batch.stop`: anyio's
#: receiver, or `signal.signal` handlers where anyio has none, as on Windows), or, when several
#: runs share the process (`job run` over tenants), a hub handing each signal to every run.
signal_receiver: ContextVar[Callable[..., Any]] = ContextVar(
    "signal_receiver", default=open_stop_receiver
)
# The run whose task logs a record: run.log takes only its own run's records.
_run_scope: ContextVar[object | None] = ContextVar("run_scope", default=None)

# How long in-flight requests may take to finish after Ctrl-C/SIGTERM before they are abandoned.
STOP_GRACE_SECONDS = 10.0
# How far (in rows) the producer may run ahead of the first row still waiting for its answer;
# bounds the reporter's reordering buffer, so memory stays flat on huge files.
REORDER_WINDOW = 20_000
# The producer yields to the other tasks once per this many rows, not per row: a dry run of a
# million rows otherwise spends most of its time switching tasks and flushing one-row reports.
PRODUCER_YIELD_ROWS = 64
# How long a reader waits for a full `$batch` of rows to read before it sends fewer.
READ_LINGER_SECONDS = 0.1


@dataclass
class RunSummary:
    """What a run did, as written to summary.json; `exit_code` follows CONTRACT.md."""

    out_dir: Path
    counts: Counter[str]
    total: int
    exit_code: int
    data: dict[str, Any]


class _Headers(Protocol):
    @property
    def headers(self) -> Sequence[str]: ...


class RowPlan(Protocol):
    """What a run streams: a prepared input file (`mapper.Prepared`) or a `revert.RevertPlan`."""

    @property
    def source(self) -> _Headers:
        """The columns failures.csv repeats (`.headers`)."""
        ...

    @property
    def total(self) -> int:
        """How many rows `rows()` yields."""
        ...

    @property
    def sha256(self) -> str:
        """The digest `--resume` checks the plan against."""
        ...

    @property
    def columns(self) -> Mapping[str, str]:
        """Header → property of the columns in use."""
        ...

    @property
    def warnings(self) -> Sequence[str]:
        """File-level warnings, logged at the start."""
        ...

    @property
    def stamped(self) -> bool:
        """Whether rows carry export stamps (the tenant's values must then be read)."""
        ...

    def rows(self) -> Iterator[tuple[RawRow, Update | Invalid | Skipped]]:
        """Every row with what it maps to, in order."""
        ...


def default_out_dir(options: RunOptions, now: dt.datetime | None = None) -> Path:
    """`runs/<UTC timestamp>-<input stem>/`."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return options.runs_root / f"{stamp}-{options.source.file.stem}"


# --- a row in flight ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Work:
    seq: int
    raw: RawRow
    update: Update
    attempts: int = 0
    last_error: GraphError | None = None
    read_attempts: int = 0
    answers_at_read: int = 0  # the run's answer count at the first read (unreachable check)
    answers_at_send: int = 0  # the same at the first write in a $batch (unreachable check)
    changed: tuple[str, ...] | None = None  # what really changes (None: not read)
    conflicts: str = ""  # fields left alone (conflicts) while the others are written
    before: dict[str, JSON] | None = None  # the event's values before (None: not read)
    retried_after: str = ""  # the error behind the latest retry (results.csv last_error)
    # The grant of a write whose answer was lost and that was not read back yet (_after_lost).
    lost: Grant | None = None


# --- the run ----------------------------------------------------------------------------------

_Item = tuple[int, RawRow, RowResult]


class _Run:
    def __init__(
        self,
        options: RunOptions,
        prepared: RowPlan,
        out_dir: Path,
        *,
        client: GraphClient | None,
        ledger: Ledger | None,
        progress: ProgressSink,
        clock: Clock,
        limiter: Limiter | None = None,
    ) -> None:
        self.o = options
        self.prepared = prepared
        self.out_dir = out_dir
        self.client = client
        self.ledger = ledger
        self.progress = progress
        self.clock = clock
        self.limiter = limiter or Limiter(
            write=options.sending.write_limit, read=options.sending.reads, clock=clock
        )
        if ledger is not None:
            # Graph's window outlives a process: a resume starts from what the interrupted run
            # sent in it, and this run's sends are kept for the next resume.
            ledger.keep_window(self.limiter, resume=options.resume)
        capacity = max(options.sending.concurrency * options.sending.batch_size * 2, 64)
        self.queue = WorkQueue[_Work](capacity, clock)
        self.counts: Counter[str] = Counter()
        self.requests_sent = 0
        self.writes_sent = 0
        self.retries = 0
        self.retry_reasons: Counter[str] = Counter()  # see batch.runlog.retry_reason
        self.throttled = 0
        self.answers = 0
        self.tally = Tally()
        self.stop_reason: BaseException | None = None
        self.stopping = anyio.Event()
        # Senders waiting for write budget or a retry: a stop cancels these waits (nothing is
        # being sent during them), so a stop never waits for budget or backoff.
        self._waits: set[anyio.CancelScope] = set()
        self._retry_clock = _StoppableClock(clock, self._stoppable_sleep)
        self.written_seq = -1
        self._seq_cond = anyio.Condition()
        self.signals = 0
        self.results_send: MemoryObjectSendStream[_Item]
        self.results_recv: MemoryObjectReceiveStream[_Item]
        self.results_send, self.results_recv = anyio.create_memory_object_stream[_Item](1000)
        self.requests_writer = (
            RequestsWriter(out_dir / "requests.jsonl") if options.dry_run else None
        )
        # Reads of the current values ahead of the writes (before-images, --only-changed, revert
        # conflicts): rows go producer → read queue → readers → (write) queue → senders.
        # An export's stamps need the tenant's values (three-way), even with --no-backup.
        self.reading = client is not None and (
            options.judging.only_changed
            or prepared.stamped
            or (options.judging.backup and not options.dry_run)
        )
        if prepared.stamped and not self.reading:
            log.warning(
                "the file comes from export: cells not edited since are left out, but without "
                "--only-changed a dry run does not read the tenant, so it cannot show conflicts "
                "with changes made there since the export"
            )
        self.read_queue = WorkQueue[_Work](capacity, clock)
        self.reads_sent = 0
        self.reads_held_until = -math.inf  # see _hold_reads
        self.before_images = (
            BeforeImages(out_dir / "before.jsonl")
            if self.reading and ledger is not None and options.judging.backup
            else None
        )
        # Resumed rows whose before-image was already committed (their write may have gone out).
        self.stored_before: dict[int, dict[str, JSON]] = {}
        # The tenant's current values from a list walk (a pre-filter only; see changes.ListWalk).
        self.walked: dict[str, dict[str, JSON]] | None = None

    # --- stopping --------------------------------------------------------------------------

    async def stop(self, reason: BaseException) -> None:
        """Stop taking new rows; the first reason wins (it decides the exit code)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping: %s", reason)
        self.stopping.set()
        for scope in self._waits:
            scope.cancel()
        await self.queue.stop()
        await self.read_queue.stop()

    async def _acquire_writes(self, want: int) -> int:
        """Write slots from the limiter, or 0 if the run stops while waiting for them.

        At Graph's pace senders spend most of their time here; a stop must not wait for budget
        that would only be used for rows that are not sent anyway.
        """
        return await self._acquire(self.limiter.acquire_writes, want)

    async def _acquire(self, acquire: Callable[[int], Awaitable[int]], want: int) -> int:
        """Slots from `acquire` (a limiter's), or 0 if the run stops while waiting for them."""
        if self.stopping.is_set():
            return 0
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                return await acquire(want)
            finally:
                self._waits.discard(scope)
        return 0

    async def _stoppable_sleep(self, seconds: float) -> None:
        """A retry's wait, ended early by a stop (the next attempt is then abandoned)."""
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                if not self.stopping.is_set():
                    await self.clock.sleep(seconds)
            finally:
                self._waits.discard(scope)

    async def watch_signals(self) -> None:
        with signal_receiver.get()(*stop_signals()) as signals:
            async for signum in signals:
                self.signals += 1
                if self.signals > 1:
                    # A second Ctrl-C: leave now. SQLite commits are atomic, so the ledger stays
                    # consistent; reports are flushed as far as they got.
                    log.error("second interrupt: exiting at once")
                    if self.ledger is not None:
                        self.ledger.commit()
                    os._exit(130)
                name = signal_name(signum)
                await self.stop(Interrupted(f"{name} received; finishing requests in flight"))

    # --- producer --------------------------------------------------------------------------

    async def produce(self) -> None:
        finished = self.ledger.finished() if (self.ledger and self.o.resume) else {}
        if self.reading and self.ledger is not None and self.o.resume:
            self.stored_before = {
                number: image
                for number, _, image in self.ledger.before_images()
                if number not in finished
            }
        try:
            await self._walk_list()
            for seq, (raw, mapped) in enumerate(self.prepared.rows()):
                await self._wait_reorder_room(seq)
                if self.stopping.is_set():
                    await self._emit(seq, raw, self._not_attempted(raw, mapped))
                    continue
                done = finished.get(raw.number)
                if done is not None:
                    self._restore_values(done, mapped)
                    await self._emit(seq, raw, done, restored=True)
                elif isinstance(mapped, Invalid | Skipped):
                    await self._emit(seq, raw, self._unsent(raw, mapped))
                elif self.reading:
                    await self._to_read(_Work(seq, raw, mapped))
                elif self.requests_writer is not None:
                    self.requests_writer.write(
                        raw.number,
                        "PATCH",
                        patch_url(self.o.target.graph_root, mapped.event_id),
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
                            written=mapped.body,
                        ),
                    )
                elif not await self.queue.put(_Work(seq, raw, mapped)):
                    await self._emit(seq, raw, self._not_attempted(raw, mapped))
                if seq % PRODUCER_YIELD_ROWS == PRODUCER_YIELD_ROWS - 1:
                    await anyio.lowlevel.checkpoint()
        finally:
            # With reads, the readers close the write queue's input once they are done.
            await (self.read_queue if self.reading else self.queue).close_input()

    def _restore_values(self, done: RowResult, mapped: Update | Invalid | Skipped) -> None:
        """A row an earlier part finished: its values again, for changes.csv (resume)."""
        if not done.changed_fields or not isinstance(mapped, Update):
            return
        # What was written is what the file says (a PATCH sends the file's values as they are);
        # what was there before is the committed before-image, if the run kept one.
        done.written = mapped.body
        if self.ledger is not None:
            done.before = self.ledger.before_image(done.number)

    async def _wait_reorder_room(self, seq: int) -> None:
        if seq - self.written_seq <= REORDER_WINDOW:
            return
        async with self._seq_cond:
            while seq - self.written_seq > REORDER_WINDOW:
                await self._seq_cond.wait()

    @staticmethod
    def _unsent(raw: RawRow, mapped: Invalid | Skipped) -> RowResult:
        """The result of a row that validation already decided: invalid or skipped."""
        if isinstance(mapped, Invalid):
            return RowResult(
                raw.number,
                mapped.event_id,
                Outcome.INVALID,
                error_code="InvalidRow",
                error_message=mapped.message,
            )
        return RowResult(raw.number, mapped.event_id, Outcome.SKIPPED, error_message=mapped.reason)

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
            result.restored = True
        # Without yielding while the stream has room: the reporter then takes rows in chunks.
        try:
            self.results_send.send_nowait((seq, raw, result))
        except anyio.WouldBlock:
            await self.results_send.send((seq, raw, result))

    # --- reads: current values, before-images, --only-changed, conflicts --------------------

    def waiting(self) -> str | None:
        """What the writes wait for now, for the progress bar (only reads: any thread)."""
        held = self.limiter.holding
        if held == "pause":
            return f"paused by Graph (429): {self.limiter.paused_for:.0f} s"
        return "waiting for the write window" if held == "window" else None

    def count_reads_of(self, keys: KeyResolver) -> None:
        """Count `--key`'s read of the tenant (before this run object existed) as this run's."""
        self.requests_sent += keys.requests
        self.reads_sent += keys.requests
        self.throttled += keys.throttled
        self.retries += keys.retries
        self.retry_reasons.update(keys.retry_reasons)

    async def _walk_list(self) -> None:
        """With --only-changed on a big file, read the tenant's list first (see ListWalk).

        Not for a file with export stamps: its rows not edited since the export are skipped
        without a read, so the list would be read for the few edited rows only.
        """
        if not (
            self.reading
            and not self.prepared.stamped
            and use_list_walk(self.prepared.total, only_changed=self.o.judging.only_changed)
        ):
            return
        assert self.client is not None
        walk = ListWalk(
            self.client,
            self.limiter,
            self._retry_clock,
            select=self.prepared.columns.values(),
            max_events=min(2 * self.prepared.total, LIST_MAX_EVENTS),
            max_retries=self.o.sending.max_retries,
        )
        try:
            self.walked = await walk.run(self.stopping.is_set)
        except (AuthError, RunAborted) as error:
            await self.stop(error)
        finally:
            self.requests_sent += walk.pages
            self.reads_sent += walk.pages
            self.throttled += walk.throttled
            self.retries += walk.retries
            self.retry_reasons.update(walk.retry_reasons)
            self.answers += walk.answers

    async def _to_read(self, work: _Work) -> None:
        """A valid row on its way to the writers: judged on stored or walked values, or read."""
        update = work.update
        stored = self.stored_before.pop(work.raw.number, None)
        if stored is not None:
            # Resumed after this row's before-image was committed: its PATCH may already have
            # gone out, so the event may hold the new values. Judge against the image instead.
            await self._judged([(work, self._resumed_verdict(work, stored))], None)
            return
        if self.walked is not None:
            current = self.walked.get(update.event_id.casefold())
            if current is not None:
                verdict = self._judge(update, current)
                if verdict.action == "unchanged":
                    await self._judged([(work, verdict)], None)
                    return
        if not await self.read_queue.put(work):
            await self._emit(work.seq, work.raw, self._not_attempted(work.raw, update))

    def _judge(self, update: Update, current: Mapping[str, JSON]) -> Verdict:
        """`changes.judge` with this run's options."""
        return judge(
            update,
            current,
            only_changed=self.o.judging.only_changed,
            force=self.o.judging.force,
            accept_lost_zeros=self.o.judging.accept_lost_zeros,
        )

    def _resumed_verdict(self, work: _Work, image: dict[str, JSON]) -> Verdict:
        assert self.ledger is not None
        written = self.ledger.written(work.raw.number)
        if written is None:
            return self._judge(work.update, image)
        return resumed_verdict(written.body, image, written.conflicts)

    async def read_sender(self) -> None:
        """Read the current values of up to 20 rows per `$batch`, under the read budget."""
        assert self.client is not None
        while True:
            # Reads are never urgent: wait a moment for a full batch rather than send 1-item
            # ones (with --only-changed most rows may need no read, so they trickle in).
            await self.read_queue.fill(MAX_BATCH, linger=READ_LINGER_SECONDS)
            first = await self.read_queue.get()
            if first is None:
                return
            try:
                await self.client.ensure_token()
            except AuthError as error:
                await self.stop(error)
                return  # the row stays in flight and is reported not_attempted by drain()
            await self._wait_read_hold()
            want = min(MAX_BATCH, 1 + self.read_queue.ready_count())
            granted = await self._acquire_reads(want)
            if not granted or self.stopping.is_set():
                return
            works = [first, *self.read_queue.take_nowait(granted - 1)]
            await self._read_batch(works)

    # --- what happened, for summary.json, run.log and the timeline ------------------------------

    def _note_429(
        self, error: GraphError, kind: runlog.Kind, rows: Sequence[int], items: int = 1
    ) -> None:
        """`items` 429 answers to one request (a `$batch`'s items, or the request itself)."""
        self.throttled += items
        if self.ledger is not None:
            self.ledger.note_throttled(items)
        runlog.throttled(error, kind=kind, rows=rows, items=items)

    def _note_retries(self, works: Sequence[_Work], kind: runlog.Kind) -> None:
        """These rows go out again: count each retry by the error that caused it, log them."""
        if not works:
            return
        self.retries += len(works)
        by_error: dict[int, list[_Work]] = {}
        for w in works:
            if w.last_error is not None:
                by_error.setdefault(id(w.last_error), []).append(w)
                w.retried_after = str(w.last_error)
        for group in by_error.values():
            error = group[0].last_error
            assert error is not None
            self.retry_reasons[runlog.retry_reason(error)] += len(group)
            attempt = max(w.read_attempts if kind == "read" else w.attempts for w in group)
            runlog.retry(error, kind=kind, rows=[w.raw.number for w in group], attempt=attempt)

    def _pause(self, retry_after: float | None) -> None:
        """A 429 from a `$batch`: the limiter pauses the writes, and the reads hold back."""
        self.limiter.throttled(retry_after)
        self._hold_reads(retry_after)

    def _hold_reads(self, retry_after: float | None) -> None:
        """After a 429 without Retry-After, keep the readers back for a whole window.

        Graph did not say how long its penalty lasts: the writers probe it with backoff (the
        limiter's gate), but reads are never urgent (they only stay ahead of the writes) and a
        `$batch` of reads sent into the penalty would only prolong it, 20 items at a time.
        """
        if retry_after is None:
            window = max(self.o.sending.write_limit.seconds, self.o.sending.reads.seconds) * 1.05
            self.reads_held_until = max(self.reads_held_until, self.clock.now() + window)

    async def _wait_read_hold(self) -> None:
        while (left := self.reads_held_until - self.clock.now()) > 0:
            if self.stopping.is_set():
                return
            await self._stoppable_sleep(left)

    async def _acquire_reads(self, want: int) -> int:
        """Read slots from the limiter, or 0 if the run stops while waiting for them."""
        return await self._acquire(self.limiter.acquire_reads, want)

    async def _read_stage(self) -> None:
        try:
            async with anyio.create_task_group() as readers:
                for _ in range(self.o.sending.concurrency):
                    readers.start_soon(self.read_sender)
        finally:
            with anyio.CancelScope(shield=True):
                await self.queue.close_input()

    async def _read_batch(self, works: list[_Work]) -> None:
        assert self.client is not None
        for w in works:
            w.read_attempts += 1
            if w.read_attempts == 1:
                w.answers_at_read = self.answers
        self._note_retries([w for w in works if w.read_attempts > 1], "read")
        by_id = {str(w.seq): w for w in works}
        self.requests_sent += 1
        self.reads_sent += len(works)
        try:
            envelope, responses = await self.client.batch(
                [read_request(key, w.update) for key, w in by_id.items()]
            )
        except AuthError as error:
            await self.stop(error)
            return
        except GraphError as error:
            if error.status:
                self.answers += 1
            if error.status == 429:
                self._note_429(error, "read", [w.raw.number for w in works])
                self._pause(error.retry_after)
                for w in works:
                    await self._reread(w, error, 0.0)
            elif error.transient:
                delay = self._backoff(error, works[0].read_attempts)
                runlog.transient(
                    error, kind="read", rows=[w.raw.number for w in works], seconds=delay
                )
                for w in works:
                    await self._reread(w, error, delay)
            else:
                for w in works:
                    await self._complete(w, self._read_failed(w, error), self.read_queue)
            return
        self.answers += 1
        denied = next(
            (_item_error(r, envelope) for r in responses.values() if r.status in (401, 403)),
            None,
        )
        if denied is not None and denied.permission_denied:
            # No read can succeed: stop; the rows stay in flight (not_attempted, resumable).
            await self.stop(PermissionDenied(denied, denied.permission or REQUIRED_PERMISSION))
            return
        verdicts: list[tuple[_Work, Verdict]] = []
        throttled_here = False
        for key, w in by_id.items():
            item = responses[key]
            if 200 <= item.status < 300:
                self.limiter.note_success()
                current = current_values(item.body)
                verdict = self._judge(w.update, current)
                verdicts.append((w, verdict))
                continue
            item_error = _item_error(item, envelope)
            if item.status == 429:
                if not throttled_here:
                    throttled_here = True
                    self._note_429(item_error, "read", *_throttled_items(responses, by_id))
                    self._pause(_throttle_wait(responses))
                await self._reread(w, item_error, 0.0)
            elif item_error.transient:
                delay = self._backoff(item_error, w.read_attempts)
                runlog.transient(item_error, kind="read", rows=[w.raw.number], seconds=delay)
                await self._reread(w, item_error, delay)
            else:
                # 404 (no such event) and other final answers: the row fails, nothing is written.
                await self._complete(w, self._read_failed(w, item_error), self.read_queue)
        self._save_before(verdicts)
        await self._judged(verdicts, self.read_queue)

    async def _reread(self, work: _Work, error: GraphError, delay: float) -> None:
        work.last_error = error
        if work.read_attempts <= self.o.sending.max_retries:
            await self.read_queue.retry(work, delay)
        elif not await self._graph_unreachable(error, work.answers_at_read):
            await self._complete(work, self._read_failed(work, error), self.read_queue)

    def _read_failed(self, work: _Work, error: GraphError) -> RowResult:
        result = self._failed(work, error)
        result.attempts = work.read_attempts
        return result

    def _save_before(self, verdicts: list[tuple[_Work, Verdict]]) -> None:
        """Commit the before-images (and the bodies to send) before any of these rows is written."""
        if self.ledger is None or self.before_images is None:
            return
        writes = [(w, v) for w, v in verdicts if v.action == "write"]
        if not writes:
            return
        for w, v in writes:
            # Revert checks against these bodies; a resumed row must still report the fields
            # its conflicts left alone.
            self.ledger.save_before(
                w.raw.number,
                w.update.event_id,
                v.before,
                written=v.body,
                conflicts=conflicts_to_json(v.conflicts),
            )
        self.ledger.commit()
        for w, v in writes:
            self.before_images.write(w.raw.number, w.update.event_id, v.before)
        self.before_images.flush()

    def _settle(self, work: _Work, verdict: Verdict) -> RowResult | None:
        """A row's result from its verdict, or None when it goes to the writers (body trimmed)."""
        work.before = verdict.before
        if verdict.action == "invalid":
            # Excel's damage, seen only now that the current values are known.
            return self._result_from(
                work,
                Outcome.INVALID,
                error_code="InvalidRow",
                error_message="; ".join(verdict.problems),
            )
        if verdict.action == "conflict":
            return self._result_from(
                work,
                Outcome.CONFLICT,
                error_code="Conflict",
                error_message=describe_conflicts(verdict.conflicts),
            )
        if verdict.action == "unchanged":
            return self._result_from(work, Outcome.UNCHANGED)
        work.update = replace(work.update, body=verdict.body)
        work.changed = verdict.changed_fields
        # Conflicting fields are left alone; the others are written, and the row says so.
        work.conflicts = describe_conflicts(verdict.conflicts) if verdict.conflicts else ""
        if self.requests_writer is None:
            return None
        url = patch_url(self.o.target.graph_root, work.update.event_id)
        self.requests_writer.write(work.raw.number, "PATCH", url, verdict.body)
        # The diff is printed by the reporter, in input order (readers finish in any order).
        if work.conflicts:
            return self._result_from(
                work,
                Outcome.CONFLICT,
                error_code="Conflict",
                error_message=work.conflicts,
                changed_fields=verdict.changed_fields,
            )
        return self._result_from(work, Outcome.PLANNED, changed_fields=verdict.changed_fields)

    async def _judged(
        self, judged: list[tuple[_Work, Verdict]], queue: WorkQueue[_Work] | None
    ) -> None:
        """Act on verdicts: report the rows, plan them (dry run) or hand them to the writers.

        `queue` is the queue the rows are in flight in (None: straight from the producer). Rows
        for the writers go in together (full batches) and leave `queue` only once they are in
        the write queue: in between, the readers could find nothing left, close the write
        queue's input and let the writers go home.
        """
        to_write: list[_Work] = []
        for work, verdict in judged:
            result = self._settle(work, verdict)
            if result is None:
                to_write.append(work)
                continue
            if queue is not None:
                await queue.finish(work)
            await self._emit(work.seq, work.raw, result)
        if not to_write:
            return
        accepted = await self.queue.put_all(to_write)
        for work in to_write:
            if queue is not None:
                await queue.finish(work)
            if not accepted:
                await self._emit(work.seq, work.raw, self._not_attempted(work.raw, work.update))

    # --- senders ---------------------------------------------------------------------------

    def _result_from(self, work: _Work, outcome: Outcome, **kw: Any) -> RowResult:
        return RowResult(
            work.raw.number,
            work.update.event_id,
            outcome,
            attempts=work.attempts,
            written=work.update.body,
            before=work.before,
            last_error=work.retried_after,
            **kw,
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
        self, work: _Work, *, status: int | None, request_id: str, client_request_id: str
    ) -> RowResult:
        # Written, but some fields were left alone as conflicts: the row is a conflict.
        conflict = {"error_code": "Conflict", "error_message": work.conflicts}
        return self._result_from(
            work,
            Outcome.CONFLICT if work.conflicts else Outcome.UPDATED,
            **(conflict if work.conflicts else {}),
            status=status,
            changed_fields=tuple(work.update.body) if work.changed is None else work.changed,
            request_id=request_id,
            client_request_id=client_request_id,
        )

    async def _complete(
        self, work: _Work, result: RowResult, queue: WorkQueue[_Work] | None = None
    ) -> None:
        await (queue or self.queue).finish(work)
        await self._emit(work.seq, work.raw, result)

    async def _graph_unreachable(self, error: GraphError, answers_before: int) -> bool:
        """A row that exhausted its retries without any answer from Graph meanwhile: stop.

        `answers_before` is the run's answer count at the row's first attempt. The row stays in
        flight (reported not_attempted, resumable); True when the run stops.
        """
        if error.status == 0 and self.answers == answers_before:
            await self.stop(
                RunAborted(f"Graph is unreachable at {self.o.target.graph_root}: {error.message}")
            )
            return True
        return False

    async def single_sender(self) -> None:
        """Send rows one PATCH each; a row to retry goes back to the queue with its delay.

        The sender never sleeps through a row's Retry-After or backoff: the row waits in the
        queue (`WorkQueue.retry`) while the sender goes on with the next one.
        """
        assert self.client is not None
        while (work := await self.queue.get()) is not None:
            delay = await self._patch_once(work)
            if self.stopping.is_set():
                return  # the row stays in flight: reported not_attempted, sent by --resume
            if delay is not None:
                await self._requeue(work, delay)

    async def _reserve_writes(self, want: int) -> Grant:
        """Write slots from the limiter; a grant of none if the run stops while waiting."""
        grant = Grant(0, self.clock.now())

        async def reserve(n: int) -> int:
            nonlocal grant
            grant = await self.limiter.reserve_writes(n)
            return grant.count

        await self._acquire(reserve, want)
        return grant

    async def _patch_once(self, work: _Work) -> float | None:
        """One attempt at one row's PATCH: None once the row has its result (or the run stops),
        else the seconds to wait before sending it again.

        What the answer does to the budget (`Limiter.settle`): an answer counts the write's slot
        from now; a 429 closes the gate for every sender, a 503 delays only this row, and both
        give the slot back (Graph did not carry the write out); a lost answer (504, no answer)
        is checked with a read before the row spends another write slot (`_after_lost`).
        """
        assert self.client is not None
        if work.lost:
            delay = await self._recheck(work)
            if work.lost or delay is None:
                return delay
        try:
            # Sign in before taking budget, so a slow sign-in never delays a counted send.
            await self.client.ensure_token()
        except AuthError as error:
            await self.stop(error)
            return None
        grant = await self._reserve_writes(1)
        if not grant.count or self.stopping.is_set():
            return None  # stopping: the row stays in flight
        work.attempts += 1
        if work.attempts == 1:
            work.answers_at_send = self.answers
            if self.ledger is not None:
                self.ledger.mark_in_flight([(work.raw.number, work.update.event_id)])
        else:
            self._note_retries([work], "write")
        self.requests_sent += 1
        self.writes_sent += 1
        try:
            response = await self.client.patch_event(work.update.event_id, work.update.body)
        except AuthError as error:
            await self.stop(error)
            return None
        except GraphError as error:
            work.last_error = error
            if error.status:
                self.answers += 1
            rows = [work.raw.number]
            if error.status == 429:
                self.limiter.settle(grant, released=1)
                self._note_429(error, "write", rows)
                self._pause(error.retry_after)
                return 0.0
            if error.status in _LOST:
                return None if not await self._after_lost([work], grant) else self._retry_in(work)
            if error.transient:
                self.limiter.settle(grant, released=1)
                delay = self._backoff(error, work.attempts)
                runlog.transient(error, kind="write", rows=rows, seconds=delay)
                return delay
            self.limiter.settle(grant, counted=1)
            await self._complete(work, self._failed(work, error))
            return None
        self.answers += 1
        self.limiter.settle(grant, counted=1)
        self.limiter.note_success()
        await self._complete(
            work,
            self._updated(
                work,
                status=response.status,
                request_id=response.request_id,
                client_request_id=response.client_request_id,
            ),
        )
        return None

    def _retry_in(self, work: _Work) -> float:
        """A row's delay after a lost answer whose write did not land (logged as transient)."""
        error = work.last_error
        assert error is not None
        delay = self._backoff(error, work.attempts)
        runlog.transient(error, kind="write", rows=[work.raw.number], seconds=delay)
        return delay

    async def _after_lost(self, works: list[_Work], grant: Grant) -> list[_Work]:
        """Rows whose write's answer was lost (504, no answer): read back before a re-send.

        The write may have landed, and Graph counted it then: sending it again would spend a
        second write slot (the scarce budget) on a row that is done. A read (the budget ten
        times larger) tells: a row whose event holds every value sent is updated; the slots of
        rows whose write did not land go back (Graph did not carry them out). Returns the rows
        to send again (the caller delays them). Rows the read could not answer keep their slots
        counted and stay `lost`: they are read again before their next write (`_recheck`).
        """
        landed = await self._landed(works) or {}
        done = [w for w in works if landed.get(w.seq)]
        again = [w for w in works if not landed.get(w.seq)]
        failed = [w for w in again if w.seq in landed]
        self.limiter.settle(
            grant,
            counted=len(done),
            released=len(failed),
            unknown=len(again) - len(failed),
        )
        for w in again:
            w.lost = None if w.seq in landed else grant
        for w in done:
            await self._complete_landed(w)
        return again

    async def _recheck(self, work: _Work) -> float | None:
        """Read back a row whose lost write could not be read back before.

        None: the row is done (the write had landed) or the run stops; 0: send the write now;
        more: still not known, read again after that many seconds (an attempt of its own, so
        a read that keeps failing ends in the row's failure like any retry).
        """
        grant = work.lost
        assert grant is not None
        landed = await self._landed([work])
        if self.stopping.is_set():
            return None
        if landed is None or work.seq not in landed:
            work.attempts += 1
            return self._retry_in(work)
        work.lost = None
        if landed[work.seq]:
            self.limiter.settle(grant, counted=1)
            await self._complete_landed(work)
            return None
        self.limiter.settle(grant, released=1)
        return 0.0

    async def _complete_landed(self, work: _Work) -> None:
        """The row's write landed although its answer was lost: it is updated."""
        error = work.last_error
        assert error is not None
        work.retried_after = str(error)
        self.limiter.note_success()
        await self._complete(
            work,
            self._updated(
                work,
                status=None,  # the answer never came; the read showed the write
                request_id=error.request_id,
                client_request_id=error.client_request_id,
            ),
        )

    async def _landed(self, works: list[_Work]) -> dict[int, bool] | None:
        """Whether each row's event holds the values its write sent (one `$batch` of GETs).

        Keyed by `seq`; a row the read could not answer is missing. None when the read failed
        as a whole (the rows are then simply sent again).
        """
        assert self.client is not None

        async def reads(n: int) -> int:
            return await self.limiter.acquire_reads(n, at_least=n)

        if not await self._acquire(reads, len(works)) or self.stopping.is_set():
            return None
        self.requests_sent += 1
        self.reads_sent += len(works)
        try:
            _, responses = await self.client.batch(
                [read_request(str(w.seq), w.update) for w in works]
            )
        except AuthError as error:
            await self.stop(error)
            return None
        except GraphError as error:
            rows = [w.raw.number for w in works]
            if error.status:
                self.answers += 1
            if error.status == 429:
                self._note_429(error, "read", rows)
                self._pause(error.retry_after)
            else:
                runlog.transient(error, kind="read", rows=rows)
            return None
        self.answers += 1
        landed: dict[int, bool] = {}
        for w in works:
            item = responses.get(str(w.seq))
            if item is None or not 200 <= item.status < 300:
                continue
            current = current_values(item.body)
            landed[w.seq] = all(
                name in current and same_value(name, current[name], value)
                for name, value in w.update.body.items()
            )
        return landed

    async def batch_sender(self) -> None:
        """Send rows in `$batch`es of up to `--batch-size`, as many as the budget has room for."""
        assert self.client is not None
        while (first := await self.queue.get()) is not None:
            if first.lost:
                # Rare (a lost answer whose read-back failed too): read it back alone first.
                delay = await self._recheck(first)
                if self.stopping.is_set():
                    return
                if delay is not None:
                    await self._requeue(first, delay)
                continue
            try:
                # Sign in before taking budget, so a slow sign-in never delays a counted send.
                await self.client.ensure_token()
            except AuthError as error:
                await self.stop(error)
                return  # the row stays in flight and is reported not_attempted by drain()
            want = min(self.o.sending.batch_size, 1 + self.queue.ready_count())
            grant = await self._reserve_writes(want)
            if not grant.count or self.stopping.is_set():
                return  # the row stays in flight and is reported not_attempted by drain()
            works = [first, *self.queue.take_nowait(grant.count - 1)]
            # Another sender may have taken rows we counted on: unused slots go back at once.
            self.limiter.refund_writes(grant.count - len(works))
            await self._send_batch(works, replace(grant, count=len(works)))

    async def _send_batch(self, works: list[_Work], grant: Grant) -> None:
        """One `$batch` of writes; every row gets its result or goes back to the queue.

        The budget hears what each item's answer means (see `_patch_once`); a whole `$batch`
        refused or throttled gives all its slots back.
        """
        assert self.client is not None
        for w in works:
            w.attempts += 1
            if w.attempts == 1:
                w.answers_at_send = self.answers
        self._note_retries([w for w in works if w.attempts > 1], "write")
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
            await self._batch_failed(works, grant, error)
            return
        self.answers += 1
        denied = next(
            (_item_error(r, envelope) for r in responses.values() if r.status in (401, 403)),
            None,
        )
        if denied is not None and denied.permission_denied:
            # The app lacks a permission: no row can succeed. The rows stay in flight (reported
            # not_attempted, sent again by --resume once the permission is granted).
            done = [(k, w) for k, w in by_id.items() if 200 <= responses[k].status < 300]
            self.limiter.settle(grant, counted=len(done), released=len(works) - len(done))
            for key, w in done:
                item = responses[key]
                await self._complete(
                    w,
                    self._updated(
                        w,
                        status=item.status,
                        request_id=_item_request_id(item, envelope),
                        client_request_id=envelope.client_request_id,
                    ),
                )
            await self.stop(PermissionDenied(denied, denied.permission or REQUIRED_PERMISSION))
            return
        # What each answer means for the budget first (settled before a 429 pauses, so the
        # limiter judges the window without the refused items), then the rows' fates.
        fates: list[tuple[_Work, BatchItemResponse, GraphError | None]] = []
        counted = released = 0
        for key, w in by_id.items():
            item = responses[key]
            item_error = None if 200 <= item.status < 300 else _item_error(item, envelope)
            fates.append((w, item, item_error))
            if item_error is None or not item_error.transient:
                counted += 1
            elif item.status not in _LOST:
                released += 1
        self.limiter.settle(grant, counted=counted, released=released)
        if any(item.status == 429 for _, item, _ in fates):
            # One pause per batch: every throttled item carries about the same wait.
            self._note_429(
                next(e for _, i, e in fates if i.status == 429 and e is not None),
                "write",
                *_throttled_items(responses, by_id),
            )
            self._pause(_throttle_wait(responses))
        lost: list[_Work] = []
        for w, item, item_error in fates:
            if item_error is None:
                self.limiter.note_success()
                await self._complete(
                    w,
                    self._updated(
                        w,
                        status=item.status,
                        request_id=_item_request_id(item, envelope),
                        client_request_id=envelope.client_request_id,
                    ),
                )
                continue
            w.last_error = item_error
            if item.status == 429:
                await self._requeue(w, 0.0)
            elif item.status in _LOST:
                lost.append(w)
            elif item_error.transient:
                delay = self._backoff(item_error, w.attempts)
                runlog.transient(item_error, kind="write", rows=[w.raw.number], seconds=delay)
                await self._requeue(w, delay)
            else:
                await self._complete(w, self._failed(w, item_error))
        if lost:
            # Only the lost items' slots are still unsettled: a grant of just those.
            for w in await self._after_lost(lost, replace(grant, count=len(lost))):
                await self._requeue(w, self._retry_in(w))

    async def _batch_failed(self, works: list[_Work], grant: Grant, error: GraphError) -> None:
        """The `$batch` envelope itself failed: throttled, lost, refused or failed as a whole."""
        if error.status:
            self.answers += 1
        for w in works:
            w.last_error = error
        rows = [w.raw.number for w in works]
        if error.status in _LOST:
            # The answer was lost, not the batch: its writes may have landed.
            for w in await self._after_lost(works, grant):
                await self._requeue(w, self._retry_in(w))
            return
        # Throttled, unavailable or refused as a whole: Graph carried none of it out.
        self.limiter.settle(grant, released=len(works))
        if error.status == 429:
            self._note_429(error, "write", rows)
            self._pause(error.retry_after)
            await self._requeue_all(works, 0.0)
        elif error.transient:
            delay = self._backoff(error, works[0].attempts)
            runlog.transient(error, kind="write", rows=rows, seconds=delay)
            await self._requeue_all(works, delay)
        elif error.status == 400 and len(works) > 1:
            # Intune refuses a whole `$batch` for one bad item ("Invalid batch payload
            # format."): one bad row must not fail twenty, so each gets its own request.
            log.warning(
                "whole $batch refused (%s %s: %s): sending its %d rows one by one",
                error.status,
                error.code,
                error.message,
                len(works),
                extra={"event": "batch_refused", "rows": rows},
            )
            await self._send_singly(works)
        else:
            for w in works:
                await self._complete(w, self._failed(w, error))

    async def _send_singly(self, works: list[_Work]) -> None:
        """Send each row of a refused `$batch` as its own request, so each gets its own answer.

        Rare (one bad row in a batch), so this sender sends the rows one after another and
        waits out their retries itself instead of re-queueing them: a re-queued row could end
        up in another `$batch` with the bad row.
        """
        for w in works:
            while (delay := await self._patch_once(w)) is not None:
                if self.stopping.is_set():
                    return  # these rows stay in flight, reported not_attempted
                if w.attempts > self.o.sending.max_retries:
                    await self._give_up(w)
                    break
                await self._stoppable_sleep(delay)
            if self.stopping.is_set():
                return

    def _backoff(self, error: GraphError, attempts: int) -> float:
        """A transient error's delay for this request only: its Retry-After, else backoff."""
        return transient_delay(self.limiter, error, attempts)

    async def _requeue_all(self, works: list[_Work], delay: float) -> None:
        for w in works:
            await self._requeue(w, delay)

    async def _requeue(self, work: _Work, delay: float) -> None:
        """Send the row again after `delay` seconds (waiting in the queue), or give up on it."""
        if work.attempts > self.o.sending.max_retries:
            await self._give_up(work)
            return
        await self.queue.retry(work, delay)

    async def _give_up(self, work: _Work) -> None:
        """A row out of retries fails, unless Graph never answered meanwhile: then the run stops."""
        assert work.last_error is not None
        if not await self._graph_unreachable(work.last_error, work.answers_at_send):
            await self._complete(work, self._failed(work, work.last_error))

    # --- reporter --------------------------------------------------------------------------

    async def report(
        self, results: ResultsWriter, failures: FailuresWriter, changes: ChangesWriter
    ) -> None:
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
                    self.ledger.record(r for _, _, r in batch if not r.restored)
                    self.ledger.commit()
                for s, rw, rs in batch:
                    pending[s] = (rw, rs)
                    self.counts[rs.outcome.value] += 1
                    self.progress.advance(rs.outcome, throttled=self.throttled)
                while next_seq in pending:
                    rw, rs = pending.pop(next_seq)
                    results.write(rs, rw)
                    changes.write(rw, rs)
                    self.tally.add(rs)
                    self._show_diff(rs)
                    if rs.outcome in (Outcome.FAILED, Outcome.INVALID, Outcome.CONFLICT):
                        failures.write(rw, rs)
                    next_seq += 1
                results.flush()
                failures.flush()
                changes.flush()
                async with self._seq_cond:
                    self.written_seq = next_seq - 1
                    self._seq_cond.notify_all()

    def _show_diff(self, result: RowResult) -> None:
        """A dry run that read the tenant prints what each row would change, in input order."""
        before = result.before
        if not self.o.dry_run or before is None or not result.changed_fields:
            return
        diff = [
            Change(name, before.get(name), result.written.get(name), name in before)
            for name in result.changed_fields
        ]
        log.info(
            "%s",
            render_diff(result.number, result.event_id, diff),
            extra={"row": result.number, "event_id": result.event_id},
        )

    # --- orchestration -----------------------------------------------------------------------

    async def run(self) -> None:
        keys = key_columns(self.prepared.columns)
        results = ResultsWriter(self.out_dir / "results.csv", keys)
        failures = FailuresWriter(self.out_dir / "failures.csv", self.prepared.source.headers)
        changes = ChangesWriter(self.out_dir / "changes.csv", keys)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.report, results, failures, changes)
                watcher = anyio.CancelScope()
                tg.start_soon(self._watch, watcher)
                async with self.results_send:
                    await self._work()
                watcher.cancel()
        finally:
            results.close()
            failures.close()
            changes.close()
            if self.requests_writer is not None:
                self.requests_writer.close()
            if self.before_images is not None:
                self.before_images.close()

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
                if self.client is not None and (self.reading or not self.o.dry_run):
                    sender = (
                        self.single_sender if self.o.sending.mode == "single" else self.batch_sender
                    )
                    async with anyio.create_task_group() as senders:
                        if self.reading:
                            senders.start_soon(self._read_stage)
                        if not self.o.dry_run:
                            for _ in range(self.o.sending.concurrency):
                                senders.start_soon(sender)
            killer.cancel()
            # Whatever was never answered (stop, abort) is reported not_attempted; its ledger
            # state stays pending/in_flight, so --resume sends it.
            # A row handed from readers to writers may sit in both queues for a moment: once.
            left = {w.seq: w for w in [*self.read_queue.drain(), *self.queue.drain()]}
            for _, work in sorted(left.items()):
                await self._emit(work.seq, work.raw, self._not_attempted(work.raw, work.update))

    async def _grace_killer(self, senders: anyio.CancelScope, own: anyio.CancelScope) -> None:
        with own:
            await self.stopping.wait()
            await anyio.sleep(STOP_GRACE_SECONDS)
            log.warning("requests still in flight after %.0f s: abandoning", STOP_GRACE_SECONDS)
            senders.cancel()


def _item_request_id(item: BatchItemResponse, envelope: GraphResponse) -> str:
    """An item's request-id, else its `$batch`'s (Graph does not always repeat it per item)."""
    return item.headers.get("request-id", "") or envelope.request_id


def _item_error(item: BatchItemResponse, envelope: GraphResponse) -> GraphError:
    """A failed `$batch` item's error, with the ids it lacks taken from the envelope."""
    error = item.error() or GraphError(item.status, "Unknown", "no error body")
    if not error.request_id:
        error.request_id = _item_request_id(item, envelope)
    if not error.client_request_id:
        error.client_request_id = envelope.client_request_id
    return error


def _throttled_items(
    responses: Mapping[str, BatchItemResponse], by_id: Mapping[str, _Work]
) -> tuple[list[int], int]:
    """The rows of a `$batch`'s 429 items, and how many items were answered 429."""
    rows = [by_id[k].raw.number for k, r in responses.items() if r.status == 429 and k in by_id]
    return rows, len(rows)


def _throttle_wait(responses: Mapping[str, BatchItemResponse]) -> float | None:
    """The longest Retry-After among a `$batch`'s 429 items (None: none said how long)."""
    return (
        max((r.retry_after or 0.0 for r in responses.values() if r.status == 429), default=0.0)
        or None
    )


# Errors after which a write's answer is lost, not refused: the write may have landed.
_LOST = frozenset({0, 504})


@dataclass(frozen=True)
class _StoppableClock:
    """The run's clock for retry waits: the time as it is, sleeps that a stop cuts short."""

    clock: Clock
    stoppable_sleep: Callable[[float], Awaitable[None]]

    def now(self) -> float:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        await self.stoppable_sleep(seconds)


# --- entry point ------------------------------------------------------------------------------


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
        max_connections=max(options.sending.concurrency * 2, 8),
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
    key = options.source.reading.key
    keys = KeyResolver(key, pick=options.source.pick) if key and plan is None else None
    prepared: RowPlan
    if plan is not None:
        prepared = plan
    else:
        prepared = prepare(
            options.source.file, options.source.reading, resolve=keys.resolve if keys else None
        )
        if keys is not None:
            keys.want(prepared)
        if on_prepared is not None:
            on_prepared(prepared)
    out_dir = _prepare_out_dir(options, prepared.sha256)
    ledger: Ledger | None = None
    if not options.dry_run:
        ledger = Ledger(out_dir / "state.sqlite")
        # A ledger without the input digest was killed before it recorded the input, so before
        # anything was sent: resuming it is starting it over.
        if options.resume and ledger.get_meta("input_sha256") is not None:
            ledger.check_resumable(prepared.sha256)
            ended = ledger.finished_run()
            if ended is not None:
                ledger.close()
                return _nothing_to_resume(out_dir, ended)
        else:
            ledger.set_meta(
                input_path=str(options.source.file.resolve()),
                input_sha256=prepared.sha256,
                total_rows=str(prepared.total),
                tool_version=__version__,
                # Where the run wrote: `revert` goes back to the same Graph by default.
                graph_root=options.target.graph_root,
                cloud=options.target.cloud,
            )
    if keys is not None:
        try:
            # --key: ids from one read of the tenant (or, on --resume, the ledger's cache).
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
    handler = JsonLinesHandler(out_dir / "run.log")
    scope = object()  # runs side by side in one process (a job's tenants) keep their logs apart
    _run_scope.set(scope)
    handler.addFilter(lambda _record: _run_scope.get() in (None, scope))
    root_log = logging.getLogger("batch")
    root_log.addHandler(handler)
    if root_log.level == logging.NOTSET or root_log.level > logging.INFO:
        root_log.setLevel(logging.INFO)
    progress = progress or make_progress(quiet=True)
    started_wall = dt.datetime.now(dt.UTC)
    started = time.monotonic()
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
    for warning in prepared.warnings:
        log.warning("%s", warning)
    if ledger is not None:
        ledger.start_part(resumed=options.resume, write_limit=str(options.sending.write_limit))
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
                limiter=limiter,
            )
            if keys is not None:
                run.count_reads_of(keys)
            progress.watch(run.waiting)
            verb = "dry run" if options.dry_run else f"sending ({options.sending.mode} mode)"
            progress.start(prepared.total, f"{options.source.file.name}: {verb}")
            await run.run()
        summary = _summarise(
            options, prepared, out_dir, run, started_wall, time.monotonic() - started
        )
        summary.data["tenant"] = token_tenant(tokens) if tokens is not None else None
        if ledger is not None:
            ledger.end_part(summary.exit_code)
    finally:
        progress.close()
        if ledger is not None:
            ledger.close()
    # Every part of the run, this one closed: the ledger has its end now.
    summary.data["parts"] = parts_summary(split_parts(read_timeline(out_dir / "state.sqlite")))
    write_json_atomic(out_dir / "summary.json", summary.data)
    log.info(
        "run finished: exit %d",
        summary.exit_code,
        extra={
            "event": "run_finished",
            "exit_code": summary.exit_code,
            "counts": {k: v for k, v in summary.data["counts"].items() if v},
            **{k: summary.data[k] for k in _FINAL_FIGURES},
        },
    )
    _write_report(out_dir)
    root_log.removeHandler(handler)
    handler.close()
    return summary


# The figures run.log's last line repeats from summary.json.
_FINAL_FIGURES = (
    "elapsed_seconds",
    "requests_sent",
    "writes_sent",
    "reads_sent",
    "throttled_429",
    "retries",
    "retry_reasons",
    "error_codes",
)


def _write_report(out_dir: Path) -> None:
    """report.html; a run's outcome never depends on it, so trouble is logged, not raised."""
    from batch.report.html import write_report

    try:
        write_report(out_dir)
    except Exception as error:
        log.error("report.html not written: %s: %s", type(error).__name__, error)


def _nothing_to_resume(out_dir: Path, ended: Mapping[str, Any]) -> RunSummary:
    """`--resume` of a run that ran to the end: say so, send nothing, repeat its outcome."""
    exit_code = int(ended.get("exit_code", 0))
    try:
        data: dict[str, Any] = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"counts": {}, "rows": 0}
    when = dt.datetime.fromtimestamp(float(ended.get("at", 0)), dt.UTC)
    note = (
        f"nothing to resume: the run in {out_dir} finished at {when:%Y-%m-%d %H:%M:%S} UTC "
        f"(exit {exit_code}); nothing was sent"
    )
    if exit_code == 1:
        note += f". Its failed rows are in {out_dir / 'failures.csv'}: fix them and run that file"
    log.info("%s", note)
    data.update(nothing_to_resume=True, note=note, exit_code=exit_code)
    counts = Counter({k: int(v) for k, v in data.get("counts", {}).items() if v})
    return RunSummary(out_dir, counts, int(data.get("rows", 0)), exit_code, data)


def _summarise(
    options: RunOptions,
    prepared: RowPlan,
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
        # `revert`: the input is the reverted run's folder.
        "command": "revert" if _reverting(prepared) else "run",
        "input": str(options.source.file),
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
        "reads_sent": run.reads_sent,
        "throttled_429": run.throttled,
        "retries": run.retries,
        "resumed": options.resume,
        # Values that came with surrounding spaces (Excel pastes them): trimmed before sending.
        "values_trimmed": prepared.trimmed if isinstance(prepared, Prepared) else 0,
        "exit_code": exit_code,
        "ok": exit_code == 0,
        "stopped_because": None if reason is None else str(reason),
        # What a script reads when the run itself failed (rows failing is not an error here).
        "error": str(reason) if exit_code in (3, 130) else None,
        **options.recorded(),
        # What changed and what went wrong, over every row (restored rows of a resume too).
        **run.tally.to_json(),
        "retry_reasons": {
            **dict.fromkeys(runlog.RETRY_REASONS, 0),
            **dict(sorted(run.retry_reasons.items())),
        },
        "commands": {
            "resume": resume_command(options, out_dir, reverting=_reverting(prepared)),
            "revert": revert_command(out_dir, wrote=_wrote(counts, run.tally, options)),
            "report": report_command(out_dir),
        },
    }
    return RunSummary(out_dir, counts, prepared.total, exit_code, data)


def _reverting(prepared: RowPlan) -> bool:
    """Whether the run is a `revert` (its rows come from a run folder, not an input file)."""
    return not isinstance(prepared, Prepared)


def _wrote(counts: Counter[str], tally: Tally, options: RunOptions) -> bool:
    """Whether the run changed anything in the tenant (so that there is something to revert)."""
    if options.dry_run:
        return False
    return counts.get(Outcome.UPDATED.value, 0) > 0 or (
        counts.get(Outcome.CONFLICT.value, 0) > 0 and bool(tally.fields)
    )
