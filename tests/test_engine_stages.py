"""Each engine stage on its own, on a `FakeClock` against a scripted Graph (`httpx.MockTransport`).

The stages meet only through values (queues, the result stream, stats, the stop control), so a
test builds just those a stage takes, feeds its queue and reads what came out.
"""

from __future__ import annotations

import json
import types
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from batch.auth import StaticTokenProvider
from batch.changes import BeforeImages
from batch.engine import RunOptions
from batch.engine.outcomes import BatchAnswers
from batch.engine.readback import ReadBack
from batch.engine.readers import ReadStage
from batch.engine.reporter import Reporter
from batch.engine.senders import Senders
from batch.engine.stats import RunStats
from batch.engine.stop import StopControl
from batch.engine.throttle import Throttle
from batch.engine.work import ResultStream, Work
from batch.errors import Interrupted, RunAborted
from batch.graph import BatchItemResponse, GraphClient, GraphResponse
from batch.ledger import Ledger
from batch.limiter import Limiter
from batch.model import Outcome, Rate, RawRow, RowResult, Update
from batch.options import Judging, Sending, Source, Target
from batch.progress import make_progress
from batch.report import ChangesWriter, FailuresWriter, ResultsWriter
from batch.retry import Retry, Throttled
from batch.testing import FakeClock
from batch.workqueue import WorkQueue
from tests.e2e import read_csv
from tests.test_engine_senders import GRAPH, FakeGraph

pytestmark = pytest.mark.anyio

IDS = [str(uuid.UUID(int=n + 1)) for n in range(4)]


def work(n: int) -> Work:
    """Row n (input row n + 2) setting userPrincipalName of event IDS[n]."""
    body = {"userPrincipalName": f"after{n}@x.example"}
    return Work(n, RawRow(n + 2, {}), Update(n + 2, IDS[n], body))


@dataclass
class Stage:
    """The values a stage is built from, on one fake clock."""

    clock: FakeClock
    client: GraphClient
    limiter: Limiter
    queue: WorkQueue[Work]
    results: ResultStream
    stats: RunStats
    stop: StopControl
    throttle: Throttle
    emitted: list[RowResult] = field(default_factory=list)

    def senders(self, *, batch_size: int = 20) -> Senders:
        return Senders(
            client=self.client,
            limiter=self.limiter,
            queue=self.queue,
            results=self.results,
            stats=self.stats,
            stop=self.stop,
            throttle=self.throttle,
            ledger=None,
            batch_size=batch_size,
            max_retries=8,
            graph_root=GRAPH,
        )

    def finished(self) -> dict[str, RowResult]:
        """The results the stage emitted, by event id (once the stage is closed)."""
        out: dict[str, RowResult] = {}
        for result in self.emitted:
            assert result.event_id not in out, "a row got two results"
            out[result.event_id] = result
        return out


@asynccontextmanager
async def stage(graph: FakeGraph, write: Rate = Rate(100, 20)) -> AsyncIterator[Stage]:
    clock = graph.clock
    limiter = Limiter(write=write, clock=clock)
    queue = WorkQueue[Work](64, clock)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(graph.handle)) as http,
        GraphClient(GRAPH, StaticTokenProvider("t"), http=http) as client,
    ):
        s = Stage(
            clock,
            client,
            limiter,
            queue,
            ResultStream(),
            RunStats(),
            StopControl(clock, [queue]),
            Throttle(limiter, clock, hold=21.0),
        )
        try:
            yield s
        finally:
            s.results.send.close()
            with s.results.receive:
                s.emitted.extend([r async for _, _, r in s.results.receive])


async def fill(queue: WorkQueue[Work], *works: Work) -> None:
    for w in works:
        assert await queue.put(w)
    await queue.close_input()


# --- senders ------------------------------------------------------------------------------------


async def test_the_single_sender_requeues_a_503_row_with_its_retry_after_and_takes_the_next() -> (
    None
):
    graph = FakeGraph(FakeClock(), faults={(IDS[0], 1): "503"}, retry_after="7")
    async with stage(graph) as s:
        await fill(s.queue, work(0), work(1))
        await s.senders().single()  # one sender
    assert [(x.t, x.event_id, x.answer) for x in graph.sent] == [
        (0.0, IDS[0], "503"),
        (0.0, IDS[1], "204"),  # the next row at once, not after the Retry-After
        (7.0, IDS[0], "204"),
    ]
    results = s.finished()
    assert results[IDS[0]].outcome is Outcome.UPDATED and results[IDS[0]].attempts == 2
    assert "503" in results[IDS[0]].last_error
    assert results[IDS[1]].attempts == 1
    assert (s.stats.requests_sent, s.stats.retries, s.stats.retry_reasons["503"]) == (3, 1, 1)
    assert s.limiter.stats["pauses"] == 0


async def test_the_batch_sender_gives_a_429_items_slot_back() -> None:
    """Four writes a minute, halved by the 429 to two: the throttled item goes again after its
    Retry-After in the slot it gave back (kept, it would wait a minute); the answered one keeps
    its slot."""
    graph = FakeGraph(FakeClock(), faults={(IDS[0], 1): "429"}, retry_after="2")
    async with stage(graph, write=Rate(4, 60)) as s:
        await fill(s.queue, work(0), work(1))
        await s.senders(batch_size=2).batch()
    assert graph.patch_times(IDS[1]) == [0.0]
    assert graph.patch_times(IDS[0]) == [0.0, pytest.approx(2.0)]
    assert s.stats.throttled == 1 and s.limiter.stats["pauses"] == 1
    assert s.limiter.effective_write_limit == 2
    assert {r.outcome for r in s.finished().values()} == {Outcome.UPDATED}


async def test_a_row_that_never_gets_an_answer_stops_the_run_as_unreachable() -> None:
    graph = FakeGraph(FakeClock(), faults={(IDS[0], n): "drop" for n in range(1, 20)})
    graph.read_faults = {n: "drop" for n in range(1, 40)}
    async with stage(graph) as s:
        await fill(s.queue, work(0))
        await s.senders().single()
    assert isinstance(s.stop.reason, RunAborted)
    assert s.finished() == {}  # left in flight: reported not_attempted by the run, resumable


# --- the read stage ------------------------------------------------------------------------------


async def test_the_read_stage_commits_before_images_before_a_row_reaches_the_writers(
    tmp_path: Path,
) -> None:
    graph = FakeGraph(FakeClock(), values={IDS[0]: "old@x.example"})
    ledger = Ledger(tmp_path / "state.sqlite")
    images = BeforeImages(tmp_path / "before.jsonl")
    to_write = WorkQueue[Work](64, graph.clock)
    options = RunOptions(
        source=Source(file=tmp_path / "in.csv"),
        sending=Sending(concurrency=1),
        target=Target(graph_root=GRAPH),
        judging=Judging(only_changed=True),
    )
    plan = types.SimpleNamespace(stamped=False, total=2, columns={})
    async with stage(graph) as s:
        reads = ReadStage(
            options,
            plan,  # type: ignore[arg-type]
            client=s.client,
            limiter=s.limiter,
            queue=s.queue,
            to_write=to_write,
            results=s.results,
            stats=s.stats,
            stop=s.stop,
            throttle=s.throttle,
            ledger=ledger,
            before_images=images,
            requests=None,
            finished={},
        )
        # Row 1 already holds its value: unchanged, it never reaches the writers.
        graph.values[IDS[1]] = "after1@x.example"
        await fill(s.queue, work(0), work(1))
        try:
            await reads.run()
        finally:
            images.close()
        handed = await to_write.get()
        assert to_write.ready_count() == 0
    assert graph.patches == {}  # reads only
    assert graph.reads == 1  # both rows in one `$batch`
    assert handed is not None and handed.seq == 0
    assert handed.before == {"userPrincipalName": "old@x.example"}
    assert ledger.before_image(2) == {"userPrincipalName": "old@x.example"}
    assert ledger.before_image(3) is None
    line = json.loads((tmp_path / "before.jsonl").read_text(encoding="utf-8"))
    assert (line["row"], line["before"]) == (2, {"userPrincipalName": "old@x.example"})
    assert s.finished()[IDS[1]].outcome is Outcome.UNCHANGED
    ledger.close()


# --- the stop control ----------------------------------------------------------------------------


async def test_the_stop_control_gives_requests_in_flight_their_grace_then_cancels_them() -> None:
    clock = FakeClock()
    stop = StopControl(clock, grace=10.0)
    cancelled_at: float | None = None
    senders, own = anyio.CancelScope(), anyio.CancelScope()

    async def in_flight() -> None:
        nonlocal cancelled_at
        with senders:
            await anyio.sleep_forever()  # a request Graph never answers
        cancelled_at = clock.now()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop.enforce_grace, senders, own)
        tg.start_soon(in_flight)
        await clock.sleep(1.0)
        await stop.stop(Interrupted("SIGINT received"))
        await stop.stop(RunAborted("later reasons do not replace the first"))
    assert cancelled_at == pytest.approx(11.0)
    assert isinstance(stop.reason, Interrupted)


async def test_a_stop_ends_waits_for_budget_and_retries_and_the_queues() -> None:
    clock = FakeClock()
    queue = WorkQueue[Work](8, clock)
    stop = StopControl(clock, [queue])
    limiter = Limiter(write=Rate(1, 60), clock=clock)
    assert await limiter.acquire_writes(1) == 1  # the budget is spent for a minute
    got: list[int] = []

    async def sender() -> None:
        got.append(await stop.acquire(limiter.acquire_writes, 1))
        await stop.sleep(30.0)  # a retry's backoff: cut short too

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await clock.sleep(1.0)
        await stop.stop(Interrupted("SIGTERM received"))
    assert got == [0] and clock.now() < 5.0
    assert await queue.get() is None
    assert await stop.acquire(limiter.acquire_writes, 1) == 0  # nothing new after a stop


# --- the reporter --------------------------------------------------------------------------------


async def test_the_reporter_writes_exactly_one_result_per_row_in_input_order(
    tmp_path: Path,
) -> None:
    stream, stats = ResultStream(), RunStats()
    reporter = Reporter(
        results=ResultsWriter(tmp_path / "results.csv"),
        failures=FailuresWriter(tmp_path / "failures.csv", ["id"]),
        changes=ChangesWriter(tmp_path / "changes.csv"),
        stats=stats,
        ledger=None,
        progress=make_progress(quiet=True),
        dry_run=False,
    )
    finished = [
        (2, Outcome.UPDATED),
        (0, Outcome.FAILED),
        (3, Outcome.UNCHANGED),
        (1, Outcome.UPDATED),
    ]

    async def stages() -> None:
        async with stream.send:
            for seq, outcome in finished:
                raw = RawRow(seq + 2, {"id": IDS[seq]})
                await stream.emit(seq, raw, RowResult(seq + 2, IDS[seq], outcome))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.run, stream)
        tg.start_soon(stages)
    for writer in (reporter.results, reporter.failures, reporter.changes):
        writer.close()
    rows = read_csv(tmp_path / "results.csv")
    assert [r["row"] for r in rows] == ["2", "3", "4", "5"]
    assert [r["outcome"] for r in rows] == ["failed", "updated", "updated", "unchanged"]
    assert [r["id"] for r in read_csv(tmp_path / "failures.csv")] == [IDS[0]]
    assert stats.counts == {"updated": 2, "failed": 1, "unchanged": 1}


async def test_the_result_stream_holds_the_producer_to_the_reorder_window() -> None:
    stream = ResultStream(window=2)
    reached: list[int] = []

    async def producer() -> None:
        for seq in range(5):
            await stream.wait_room(seq)
            reached.append(seq)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        assert reached == [0, 1]  # rows 0 and 1 fit; row 2 waits for row 0 to be written
        await stream.written_up_to(1)
        await anyio.wait_all_tasks_blocked()
        assert reached == [0, 1, 2, 3]
        await stream.written_up_to(4)
    stream.send.close()
    stream.receive.close()


# --- outcomes (pure) -----------------------------------------------------------------------------


def test_a_batch_answer_is_read_once_for_both_batch_paths() -> None:
    works = {str(n): work(n) for n in range(4)}
    envelope = GraphResponse(200, None, {}, "envelope-id", "client-id")
    body = {"error": {"code": "X", "message": "x"}}
    responses = {
        "0": BatchItemResponse("0", 204, {"request-id": "r0"}, None),
        "1": BatchItemResponse("1", 429, {"Retry-After": "3"}, body),
        "2": BatchItemResponse("2", 504, {}, body),
        "3": BatchItemResponse("3", 404, {}, body),
    }
    answers = BatchAnswers.read(works, envelope, responses, lambda w: 1)
    kinds = [(a.ok, a.answer) for a in answers.items]
    assert kinds[0] == (True, None)
    assert kinds[1] == (False, Throttled(3.0))
    assert isinstance(kinds[2][1], Retry) and kinds[2][1].lost
    assert kinds[3][1] is not None and type(kinds[3][1]).__name__ == "Final"
    assert answers.items[0].request_id == "r0" and answers.items[3].request_id == "envelope-id"
    assert answers.throttled_rows == [3] and answers.retry_after == 3.0
    assert answers.denied is None


# --- read-back ----------------------------------------------------------------------------------


async def test_a_429_item_of_a_read_back_closes_the_gate_and_is_counted() -> None:
    """A read-back's 429 item is Graph's word that the budget is spent, like any other's."""
    clock = FakeClock()

    def handle(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["requests"]
        answers = [
            {"id": r["id"], "status": 429, "headers": {"Retry-After": "9"}, "body": {}}
            if n == 0
            else {"id": r["id"], "status": 200, "body": {"userPrincipalName": "after1@x.example"}}
            for n, r in enumerate(sent)
        ]
        return httpx.Response(200, json={"responses": answers})

    limiter = Limiter(write=Rate(100, 20), clock=clock)
    stats = RunStats()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GraphClient(GRAPH, StaticTokenProvider("t"), http=http) as client,
    ):
        back = ReadBack(
            client=client,
            limiter=limiter,
            stats=stats,
            stop=StopControl(clock, []),
            throttle=Throttle(limiter, clock, hold=21.0),
        )
        landed = await back.landed([work(0), work(1)])
    assert landed == {1: True}  # the throttled row is unknown, not "did not land"
    assert stats.throttled == 1
    assert limiter.stats["pauses"] == 1


def test_429s_of_reads_outside_the_stages_reach_the_timeline_too() -> None:
    heard: list[int] = []
    stats = RunStats(on_throttled=heard.append)
    walk = types.SimpleNamespace(throttled=2, retries=3, retry_reasons=Counter({"429": 2}))
    stats.add_reads(5, walk, answers=5)
    assert (stats.throttled, stats.retries, heard) == (2, 3, [2])
    stats.add_reads(1, types.SimpleNamespace(throttled=0, retries=0, retry_reasons=Counter()))
    assert heard == [2]
