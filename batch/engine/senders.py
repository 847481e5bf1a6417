"""The senders: rows from the write queue to Graph, one PATCH each or in `$batch`es.

`--concurrency` senders take rows from the write queue, reserve write slots from the limiter and
send. What each answer means comes from one place, `retry.classify`; what it does to the budget
is `Limiter.settle`'s: an answer counts the write's slot from now; a 429 closes the gate for
every sender (`Throttle`), a 503 delays only its own row, and both give the slot back (Graph did
not carry the write out); a lost answer (504, no answer) is read back (`ReadBack`) before the row
spends another write slot.

With `--verify` a row Graph accepted does not finish here: `on_accepted` (the verifier's
`check`) takes it with the result it earned, still in flight in the write queue, until it is
read back (`batch.engine.verify`).

A sender never sleeps through a row's Retry-After or backoff: the row waits in the queue
(`WorkQueue.retry`) while the sender goes on with the next one. The one exception is a whole
`$batch` Intune refused for one bad item: its rows go one by one, and that sender waits out their
retries itself, so a re-queued row cannot end up in another `$batch` with the bad row.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from batch import runlog
from batch.engine import outcomes
from batch.engine.readback import ReadBack
from batch.engine.stats import RunStats
from batch.engine.stop import StopControl
from batch.engine.throttle import Throttle
from batch.engine.work import ResultStream, Work
from batch.errors import AuthError, GraphError, PermissionDenied
from batch.graph import GraphClient
from batch.ledger import Ledger
from batch.limiter import Grant, Limiter
from batch.model import RowResult
from batch.planner import batch_requests
from batch.resources import EVENTS, Resource
from batch.retry import Final, Retry, Throttled, classify
from batch.workqueue import WorkQueue

__all__ = ["Senders"]

log = logging.getLogger("batch.engine")


class Senders:
    """The write stage: `single` and `batch` are the sender loops (one task each)."""

    def __init__(
        self,
        *,
        client: GraphClient,
        limiter: Limiter,
        queue: WorkQueue[Work],
        results: ResultStream,
        stats: RunStats,
        stop: StopControl,
        throttle: Throttle,
        ledger: Ledger | None,
        batch_size: int,
        max_retries: int,
        graph_root: str,
        resource: Resource = EVENTS,
        on_accepted: Callable[[Work, RowResult], Awaitable[None]] | None = None,
    ) -> None:
        self.resource = resource
        self.on_accepted = on_accepted
        # A success status the resource's description does not list is said once per run.
        self._odd_status_seen = False
        self.client = client
        self.limiter = limiter
        self.queue = queue
        self.results = results
        self.stats = stats
        self.stop = stop
        self.throttle = throttle
        self.ledger = ledger
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.graph_root = graph_root
        self.read_back = ReadBack(
            client=client,
            limiter=limiter,
            stats=stats,
            stop=stop,
            throttle=throttle,
            resource=resource,
        )

    # --- single mode -----------------------------------------------------------------------

    async def single(self) -> None:
        """Send rows one PATCH each; a row to retry goes back to the queue with its delay."""
        while (work := await self.queue.get()) is not None:
            delay = await self._patch_once(work)
            if self.stop.stopping:
                return  # the row stays in flight: reported not_attempted, sent by --resume
            if delay is not None:
                await self._requeue(work, delay)

    async def _patch_once(self, work: Work) -> float | None:
        """One attempt at one row's PATCH: None once the row has its result (or the run stops),
        else the seconds to wait before sending it again.
        """
        if work.lost:
            delay = await self._recheck(work)
            if work.lost or delay is None:
                return delay
        try:
            # Sign in before taking budget, so a slow sign-in never delays a counted send.
            await self.client.ensure_token()
        except AuthError as error:
            await self.stop.stop(error)
            return None
        grant = await self._reserve(1)
        if not grant.count or self.stop.stopping:
            return None  # stopping: the row stays in flight
        work.attempts += 1
        if work.attempts == 1:
            work.answers_at_send = self.stats.answers
            if self.ledger is not None:
                self.ledger.mark_in_flight([(work.raw.number, work.update.event_id)])
        else:
            self.stats.note_retries([work], "write")
        self.stats.requests_sent += 1
        self.stats.writes_sent += 1
        try:
            response = await self.client.write(
                self.resource, work.update.event_id, work.update.body
            )
        except PermissionDenied as error:
            # The client names the events' permission when Graph names none: say this one's.
            refusal = error.error
            await self.stop.stop(
                PermissionDenied(refusal, refusal.permission or self.resource.permission)
            )
            return None
        except AuthError as error:
            await self.stop.stop(error)
            return None
        except GraphError as error:
            work.last_error = error
            if error.status:
                self.stats.answers += 1
            answer = classify(error, work.attempts)
            if isinstance(answer, Throttled):
                self.limiter.settle(grant, released=1)
                self.stats.note_429(error, "write", [work.raw.number])
                self.throttle.throttled(answer.retry_after)
                return 0.0
            if isinstance(answer, Retry) and answer.lost:
                return self._retry_in(work) if await self._after_lost([work], grant) else None
            if isinstance(answer, Retry):
                self.limiter.settle(grant, released=1)
                runlog.transient(error, kind="write", rows=[work.raw.number], seconds=answer.delay)
                return answer.delay
            self.limiter.settle(grant, counted=1)
            await self.results.finish(self.queue, work, outcomes.failed(work, error))
            return None
        self.stats.answers += 1
        self.limiter.settle(grant, counted=1)
        self.limiter.note_success()
        result = outcomes.updated(
            work,
            status=response.status,
            request_id=response.request_id,
            client_request_id=response.client_request_id,
        )
        await self._accepted(work, result)
        return None

    async def _accepted(self, work: Work, result: RowResult) -> None:
        """Graph accepted the row's write: it is done, or (`--verify`) read back first."""
        status = result.status
        if status is not None and status not in self.resource.answers and not self._odd_status_seen:
            # Any 2xx is success (GraphClient), but an answer the service is not known to give
            # is worth a line: the service may have changed (--verify reads the rows back).
            self._odd_status_seen = True
            log.warning(
                "Graph answered a %s write with %d, not %s as documented; taken as success",
                self.resource.noun,
                status,
                " or ".join(map(str, self.resource.answers)),
                extra={"event": "unexpected_status", "status": status},
            )
        if self.on_accepted is not None:
            await self.on_accepted(work, result)
        else:
            await self.results.finish(self.queue, work, result)

    async def _reserve(self, want: int) -> Grant:
        """Write slots from the limiter; a grant of none if the run stops while waiting."""
        grant = Grant(0, self.stop.now())

        async def reserve(n: int) -> int:
            nonlocal grant
            grant = await self.limiter.reserve_writes(n)
            return grant.count

        await self.stop.acquire(reserve, want)
        return grant

    # --- lost answers ------------------------------------------------------------------------

    def _retry_in(self, work: Work) -> float:
        """A row's delay after a lost answer whose write did not land (logged as transient)."""
        error = work.last_error
        assert error is not None  # only rows that failed get here
        answer = classify(error, work.attempts)
        delay = answer.delay if isinstance(answer, Retry) else 0.0
        runlog.transient(error, kind="write", rows=[work.raw.number], seconds=delay)
        return delay

    async def _after_lost(self, works: list[Work], grant: Grant) -> list[Work]:
        """Rows whose write's answer was lost: read back before a re-send (see `ReadBack`).

        A row whose event holds every value sent is updated; the slots of rows whose write did
        not land go back (Graph did not carry them out). Returns the rows to send again (the
        caller delays them). Rows the read could not answer keep their slots counted and stay
        `lost`: they are read again before their next write (`_recheck`).
        """
        landed = await self.read_back.landed(works) or {}
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

    async def _recheck(self, work: Work) -> float | None:
        """Read back a row whose lost write could not be read back before.

        None: the row is done (the write had landed) or the run stops; 0: send the write now;
        more: still not known, read again after that many seconds (an attempt of its own, so
        a read that keeps failing ends in the row's failure like any retry).
        """
        grant = work.lost
        assert grant is not None  # only lost rows are rechecked
        landed = await self.read_back.landed([work])
        if self.stop.stopping:
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

    async def _complete_landed(self, work: Work) -> None:
        """The row's write landed although its answer was lost: it is updated."""
        error = work.last_error
        assert error is not None  # its answer was lost
        work.retried_after = str(error)
        self.limiter.note_success()
        result = outcomes.updated(
            work,
            status=None,  # the answer never came; the read showed the write
            request_id=error.request_id,
            client_request_id=error.client_request_id,
        )
        await self.results.finish(self.queue, work, result)

    # --- batch mode ------------------------------------------------------------------------

    async def batch(self) -> None:
        """Send rows in `$batch`es of up to `--batch-size`, as many as the budget has room for."""
        while (first := await self.queue.get()) is not None:
            if first.lost:
                # Rare (a lost answer whose read-back failed too): read it back alone first.
                delay = await self._recheck(first)
                if self.stop.stopping:
                    return
                if delay is not None:
                    await self._requeue(first, delay)
                continue
            try:
                # Sign in before taking budget, so a slow sign-in never delays a counted send.
                await self.client.ensure_token()
            except AuthError as error:
                await self.stop.stop(error)
                return  # the row stays in flight and is reported not_attempted at the end
            want = min(self.batch_size, 1 + self.queue.ready_count())
            grant = await self._reserve(want)
            if not grant.count or self.stop.stopping:
                return  # the row stays in flight and is reported not_attempted at the end
            works = [first, *self.queue.take_nowait(grant.count - 1)]
            # Another sender may have taken rows we counted on: unused slots go back at once.
            self.limiter.refund_writes(grant.count - len(works))
            await self._send_batch(works, replace(grant, count=len(works)))

    async def _send_batch(self, works: list[Work], grant: Grant) -> None:
        """One `$batch` of writes; every row gets its result or goes back to the queue.

        The budget hears what each item's answer means (see the module docstring); a whole
        `$batch` refused or throttled gives all its slots back.
        """
        for w in works:
            w.attempts += 1
            if w.attempts == 1:
                w.answers_at_send = self.stats.answers
        self.stats.note_retries([w for w in works if w.attempts > 1], "write")
        if self.ledger is not None:
            self.ledger.mark_in_flight((w.raw.number, w.update.event_id) for w in works)
        by_id = {str(w.seq): w for w in works}
        self.stats.requests_sent += 1
        self.stats.writes_sent += len(works)
        try:
            envelope, responses = await self.client.batch(
                batch_requests([(k, w.update) for k, w in by_id.items()], resource=self.resource)
            )
        except AuthError as error:
            await self.stop.stop(error)
            return
        except GraphError as error:
            await self._batch_failed(works, grant, error)
            return
        self.stats.answers += 1
        answers = outcomes.BatchAnswers.read(by_id, envelope, responses, lambda w: w.attempts)
        if answers.denied is not None and answers.denied.permission_denied:
            # The app lacks a permission: no row can succeed. The rows stay in flight (reported
            # not_attempted, sent again by --resume once the permission is granted).
            done = [a for a in answers.items if a.ok]
            self.limiter.settle(grant, counted=len(done), released=len(works) - len(done))
            for a in done:
                await self._complete_updated(a, envelope.client_request_id)
            denied = answers.denied
            permission = denied.permission or self.resource.permission
            await self.stop.stop(PermissionDenied(denied, permission))
            return
        # What each answer means for the budget first (settled before a 429 pauses, so the
        # limiter judges the window without the refused items), then the rows' fates.
        counted = sum(1 for a in answers.items if a.ok or isinstance(a.answer, Final))
        released = sum(
            1
            for a in answers.items
            if isinstance(a.answer, Throttled)
            or (isinstance(a.answer, Retry) and not a.answer.lost)
        )
        self.limiter.settle(grant, counted=counted, released=released)
        if answers.throttled is not None:
            # One pause per batch: every throttled item carries about the same wait.
            rows = answers.throttled_rows
            self.stats.note_429(answers.throttled, "write", rows, len(rows))
            self.throttle.throttled(answers.retry_after)
        lost: list[Work] = []
        for a in answers.items:
            w = a.work
            if a.error is None:
                self.limiter.note_success()
                await self._complete_updated(a, envelope.client_request_id)
                continue
            w.last_error = a.error
            if isinstance(a.answer, Throttled):
                await self._requeue(w, 0.0)
            elif isinstance(a.answer, Retry) and a.answer.lost:
                lost.append(w)
            elif isinstance(a.answer, Retry):
                runlog.transient(a.error, kind="write", rows=[w.raw.number], seconds=a.answer.delay)
                await self._requeue(w, a.answer.delay)
            else:
                await self.results.finish(self.queue, w, outcomes.failed(w, a.error))
        if lost:
            # Only the lost items' slots are still unsettled: a grant of just those.
            for w in await self._after_lost(lost, replace(grant, count=len(lost))):
                await self._requeue(w, self._retry_in(w))

    async def _complete_updated(self, answer: outcomes.ItemAnswer, client_request_id: str) -> None:
        result = outcomes.updated(
            answer.work,
            status=answer.status,
            request_id=answer.request_id,
            client_request_id=client_request_id,
        )
        await self._accepted(answer.work, result)

    async def _batch_failed(self, works: list[Work], grant: Grant, error: GraphError) -> None:
        """The `$batch` envelope itself failed: throttled, lost, refused or failed as a whole."""
        if error.status:
            self.stats.answers += 1
        for w in works:
            w.last_error = error
        rows = [w.raw.number for w in works]
        answer = classify(error, works[0].attempts)
        if isinstance(answer, Retry) and answer.lost:
            # The answer was lost, not the batch: its writes may have landed.
            for w in await self._after_lost(works, grant):
                await self._requeue(w, self._retry_in(w))
            return
        # Throttled, unavailable or refused as a whole: Graph carried none of it out.
        self.limiter.settle(grant, released=len(works))
        if isinstance(answer, Throttled):
            self.stats.note_429(error, "write", rows)
            self.throttle.throttled(answer.retry_after)
            for w in works:
                await self._requeue(w, 0.0)
        elif isinstance(answer, Retry):
            runlog.transient(error, kind="write", rows=rows, seconds=answer.delay)
            for w in works:
                await self._requeue(w, answer.delay)
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
                await self.results.finish(self.queue, w, outcomes.failed(w, error))

    async def _send_singly(self, works: list[Work]) -> None:
        """Send each row of a refused `$batch` as its own request, waiting out its retries."""
        for w in works:
            while (delay := await self._patch_once(w)) is not None:
                if self.stop.stopping:
                    return  # these rows stay in flight, reported not_attempted
                if w.attempts > self.max_retries:
                    await self._give_up(w)
                    break
                await self.stop.sleep(delay)
            if self.stop.stopping:
                return

    # --- retries -----------------------------------------------------------------------------

    async def _requeue(self, work: Work, delay: float) -> None:
        """Send the row again after `delay` seconds (waiting in the queue), or give up on it."""
        if work.attempts > self.max_retries:
            await self._give_up(work)
            return
        await self.queue.retry(work, delay)

    async def _give_up(self, work: Work) -> None:
        """A row out of retries fails, unless Graph never answered meanwhile: then the run stops."""
        error = work.last_error
        assert error is not None  # only rows that failed are retried
        abort = outcomes.unreachable(
            error,
            answers_before=work.answers_at_send,
            answers_now=self.stats.answers,
            graph_root=self.graph_root,
        )
        if abort is not None:
            await self.stop.stop(abort)
        else:
            await self.results.finish(self.queue, work, outcomes.failed(work, error))
