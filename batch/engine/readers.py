"""The read stage: the tenant's current values ahead of the writes.

Rows go producer → read queue → readers → write queue → senders. `--concurrency` readers read up
to 20 rows per `$batch` of GETs under the read budget, let `batch.changes.judge` decide
(unchanged, conflict, invalid, or what to send), and commit each row's before-image (and the body
about to be sent) to the ledger *before* the row enters the write queue, so no PATCH ever leaves
without one. With `--only-changed` on a big file the tenant's list is walked first
(`changes.ListWalk`), a pre-filter only: rows it shows unchanged skip the read.

Cut this way because it is the only stage that judges rows; it meets the rest of the run through
values only: the two queues, the result stream, the stats, the stop control and the throttle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import anyio

from batch import runlog
from batch.changes import (
    LIST_MAX_EVENTS,
    BeforeImages,
    ListWalk,
    Verdict,
    conflicts_to_json,
    current_values,
    describe_conflicts,
    judge,
    read_request,
    resumed_verdict,
    use_list_walk,
)
from batch.engine import outcomes
from batch.engine.options import RowPlan, RunOptions
from batch.engine.stats import RunStats
from batch.engine.stop import StopControl
from batch.engine.throttle import Throttle
from batch.engine.work import ResultStream, Work
from batch.errors import AuthError, GraphError, PermissionDenied, RunAborted
from batch.graph import GraphClient
from batch.ledger import Ledger
from batch.limiter import Limiter
from batch.model import JSON, RowResult, Update
from batch.planner import MAX_BATCH, write_url
from batch.report import RequestsWriter
from batch.retry import Final, Retry, Throttled, classify
from batch.workqueue import WorkQueue

__all__ = ["READ_LINGER_SECONDS", "ReadStage"]

# How long a reader waits for a full `$batch` of rows to read before it sends fewer.
READ_LINGER_SECONDS = 0.1


class ReadStage:
    """Readers between the producer (`queue`) and the senders (`to_write`); see the module."""

    def __init__(
        self,
        options: RunOptions,
        plan: RowPlan,
        *,
        client: GraphClient,
        limiter: Limiter,
        queue: WorkQueue[Work],
        to_write: WorkQueue[Work],
        results: ResultStream,
        stats: RunStats,
        stop: StopControl,
        throttle: Throttle,
        ledger: Ledger | None,
        before_images: BeforeImages | None,
        requests: RequestsWriter | None,
        finished: Mapping[int, RowResult],
    ) -> None:
        self.o = options
        self.plan = plan
        self.client = client
        self.limiter = limiter
        self.queue = queue
        self.to_write = to_write
        self.results = results
        self.stats = stats
        self.stop = stop
        self.throttle = throttle
        self.ledger = ledger
        self.before_images = before_images
        self.requests = requests
        # Resumed rows whose before-image was already committed (their write may have gone out).
        self.stored_before: dict[int, dict[str, JSON]] = (
            {n: image for n, _, image in ledger.before_images() if n not in finished}
            if ledger is not None and options.resume
            else {}
        )
        # The tenant's current values from a list walk (a pre-filter only; see changes.ListWalk).
        self.walked: dict[str, dict[str, JSON]] | None = None

    # --- before the rows: the list walk and the rows' way in ----------------------------------

    async def walk_list(self) -> None:
        """With --only-changed on a big file, read the tenant's list first (see ListWalk).

        Not for a file with export stamps: its rows not edited since the export are skipped
        without a read, so the list would be read for the few edited rows only.
        """
        if self.plan.stamped or not use_list_walk(
            self.plan.total, only_changed=self.o.judging.only_changed
        ):
            return
        walk = ListWalk(
            self.client,
            self.limiter,
            self.stop,
            select=self.plan.columns.values(),
            max_events=min(2 * self.plan.total, LIST_MAX_EVENTS),
            max_retries=self.o.sending.max_retries,
            resource=self.o.resource,
        )
        try:
            self.walked = await walk.run(lambda: self.stop.stopping)
        except (AuthError, RunAborted) as error:
            await self.stop.stop(error)
        finally:
            self.stats.add_reads(walk.pages, walk, answers=walk.answers)

    async def admit(self, work: Work) -> None:
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
        if not await self.queue.put(work):
            await self.results.emit(work.seq, work.raw, outcomes.not_attempted(work.raw, update))

    def _judge(self, update: Update, current: Mapping[str, JSON]) -> Verdict:
        """`changes.judge` with this run's options."""
        return judge(
            update,
            current,
            only_changed=self.o.judging.only_changed,
            force=self.o.judging.force,
            accept_lost_zeros=self.o.judging.accept_lost_zeros,
            resource=self.o.resource,
        )

    def _resumed_verdict(self, work: Work, image: dict[str, JSON]) -> Verdict:
        written = self.ledger.written(work.raw.number) if self.ledger else None
        if written is None:
            return self._judge(work.update, image)
        return resumed_verdict(written.body, image, written.conflicts, self.o.resource)

    # --- the readers -----------------------------------------------------------------------

    async def run(self) -> None:
        """`--concurrency` readers; the write queue's input closes once they are done."""
        try:
            async with anyio.create_task_group() as readers:
                for _ in range(self.o.sending.senders):
                    readers.start_soon(self.reader)
        finally:
            with anyio.CancelScope(shield=True):
                await self.to_write.close_input()

    async def reader(self) -> None:
        """Read the current values of up to 20 rows per `$batch`, under the read budget."""
        while True:
            # Reads are never urgent: wait a moment for a full batch rather than send 1-item
            # ones (with --only-changed most rows may need no read, so they trickle in).
            await self.queue.fill(MAX_BATCH, linger=READ_LINGER_SECONDS)
            first = await self.queue.get()
            if first is None:
                return
            try:
                await self.client.ensure_token()
            except AuthError as error:
                await self.stop.stop(error)
                return  # the row stays in flight and is reported not_attempted at the end
            await self.throttle.wait_for_reads(self.stop)
            want = min(MAX_BATCH, 1 + self.queue.ready_count())
            granted = await self.stop.acquire(self.limiter.acquire_reads, want)
            if not granted or self.stop.stopping:
                return
            await self._read([first, *self.queue.take_nowait(granted - 1)])

    async def _read(self, works: list[Work]) -> None:
        """One `$batch` of GETs; every row is judged, read again later, or fails."""
        for w in works:
            w.read_attempts += 1
            if w.read_attempts == 1:
                w.answers_at_read = self.stats.answers
        self.stats.note_retries([w for w in works if w.read_attempts > 1], "read")
        by_id = {str(w.seq): w for w in works}
        self.stats.requests_sent += 1
        self.stats.reads_sent += len(works)
        try:
            envelope, responses = await self.client.batch(
                [read_request(key, w.update, self.o.resource) for key, w in by_id.items()]
            )
        except AuthError as error:
            await self.stop.stop(error)
            return
        except GraphError as error:
            if error.status:
                self.stats.answers += 1
            rows = [w.raw.number for w in works]
            answer = classify(error, works[0].read_attempts)
            if isinstance(answer, Throttled):
                self.stats.note_429(error, "read", rows)
                self.throttle.throttled(answer.retry_after)
            elif isinstance(answer, Retry):
                runlog.transient(error, kind="read", rows=rows, seconds=answer.delay)
            for w in works:
                await self._answered(w, error, answer)
            return
        self.stats.answers += 1
        answers = outcomes.BatchAnswers.read(by_id, envelope, responses, lambda w: w.read_attempts)
        if answers.denied is not None and answers.denied.permission_denied:
            # No read can succeed: stop; the rows stay in flight (not_attempted, resumable).
            denied = answers.denied
            permission = denied.permission or self.o.resource.permission
            await self.stop.stop(PermissionDenied(denied, permission))
            return
        verdicts: list[tuple[Work, Verdict]] = []
        paused = False
        for a in answers.items:
            if isinstance(a.answer, Throttled) and not paused and a.error is not None:
                # One pause per batch: every throttled item carries about the same wait.
                paused = True
                rows = answers.throttled_rows
                self.stats.note_429(a.error, "read", rows, len(rows))
                self.throttle.throttled(answers.retry_after)
            if a.error is None:
                self.limiter.note_success()
                current = current_values(answers.bodies[a.work.seq])
                verdicts.append((a.work, self._judge(a.work.update, current)))
                continue
            if isinstance(a.answer, Retry):
                runlog.transient(
                    a.error, kind="read", rows=[a.work.raw.number], seconds=a.answer.delay
                )
            await self._answered(a.work, a.error, a.answer or Final())
        self._save_before(verdicts)
        await self._judged(verdicts, self.queue)

    async def _answered(
        self, work: Work, error: GraphError, answer: Retry | Throttled | Final
    ) -> None:
        """A failed read: read again after the answer's delay, or the row fails.

        404 (no such event) and other final answers fail the row; nothing is written.
        """
        if isinstance(answer, Final):
            await self.results.finish(self.queue, work, outcomes.read_failed(work, error))
            return
        work.last_error = error
        if work.read_attempts <= self.o.sending.max_retries:
            await self.queue.retry(work, answer.delay if isinstance(answer, Retry) else 0.0)
            return
        abort = outcomes.unreachable(
            error,
            answers_before=work.answers_at_read,
            answers_now=self.stats.answers,
            graph_root=self.o.target.graph_root,
        )
        if abort is not None:
            await self.stop.stop(abort)
        else:
            await self.results.finish(self.queue, work, outcomes.read_failed(work, error))

    def _save_before(self, verdicts: list[tuple[Work, Verdict]]) -> None:
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

    def _settle(self, work: Work, verdict: Verdict) -> RowResult | None:
        """A row's result from its verdict, or None when it goes to the writers (body trimmed)."""
        work.before = verdict.before
        if verdict.action == "write":
            work.update = replace(work.update, body=verdict.body)
            work.changed = verdict.changed_fields
            # Conflicting fields are left alone; the others are written, and the row says so.
            work.conflicts = describe_conflicts(verdict.conflicts) if verdict.conflicts else ""
            if self.requests is not None:
                resource = self.o.resource
                url = write_url(self.o.target.graph_root, resource, work.update.event_id)
                self.requests.write(work.raw.number, resource.write.method, url, verdict.body)
        # A dry run's diff is printed by the reporter, in input order (readers finish in any).
        return outcomes.from_verdict(work, verdict, dry_run=self.requests is not None)

    async def _judged(
        self, judged: list[tuple[Work, Verdict]], queue: WorkQueue[Work] | None
    ) -> None:
        """Act on verdicts: report the rows, plan them (dry run) or hand them to the writers.

        `queue` is the queue the rows are in flight in (None: straight from the producer). Rows
        for the writers go in together (full batches) and leave `queue` only once they are in
        the write queue: in between, the readers could find nothing left, close the write
        queue's input and let the writers go home.
        """
        to_write: list[Work] = []
        for work, verdict in judged:
            result = self._settle(work, verdict)
            if result is None:
                to_write.append(work)
                continue
            if queue is not None:
                await queue.finish(work)
            await self.results.emit(work.seq, work.raw, result)
        if not to_write:
            return
        accepted = await self.to_write.put_all(to_write)
        for work in to_write:
            if queue is not None:
                await queue.finish(work)
            if not accepted:
                result = outcomes.not_attempted(work.raw, work.update)
                await self.results.emit(work.seq, work.raw, result)
