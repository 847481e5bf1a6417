"""`--verify` as a stage: the senders and the verifier on a `FakeClock` against a scripted Graph.

A write Graph answers 204 but does not carry out (microsoft-graph-docs#11620) is sent once more
after the read-back, and fails as "accepted but not applied" when the second write does not take
either; a row whose write took gets the result its write earned.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from batch.engine.readback import ReadBack
from batch.engine.verify import Verifier
from batch.engine.work import Work
from batch.model import Outcome, RawRow, Update
from batch.testing import FakeClock
from batch.workqueue import WorkQueue
from tests.test_engine_senders import FakeGraph
from tests.test_engine_stages import stage

pytestmark = pytest.mark.anyio

IDS = [str(uuid.UUID(int=n + 1)) for n in range(3)]


@dataclass
class ForgetfulGraph(FakeGraph):
    """`unapplied[id]`: how many of that event's next successful PATCHes are not carried out."""

    unapplied: dict[str, int] = field(default_factory=dict)

    def _patch(self, event_id: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        before = self.values.get(event_id)
        answer = super()._patch(event_id, body)
        if answer[0] == 204 and self.unapplied.get(event_id, 0) > 0:
            self.unapplied[event_id] -= 1
            if before is None:
                self.values.pop(event_id, None)
            else:
                self.values[event_id] = before
        return answer


def work(n: int) -> Work:
    body = {"userPrincipalName": f"after{n}@x.example"}
    return Work(n, RawRow(n + 2, {}), Update(n + 2, IDS[n], body))


@pytest.mark.parametrize("mode", ["single", "batch"])
async def test_a_write_not_applied_is_sent_once_more_then_fails(mode: str) -> None:
    graph = ForgetfulGraph(FakeClock(), unapplied={IDS[1]: 1, IDS[2]: 2})
    async with stage(graph) as s:
        checks = WorkQueue[Work](64, s.clock)
        verifier = Verifier(
            read_back=ReadBack(
                client=s.client, limiter=s.limiter, stats=s.stats, stop=s.stop, throttle=s.throttle
            ),
            queue=checks,
            writes=s.queue,
            results=s.results,
            stop=s.stop,
            throttle=s.throttle,
            max_retries=8,
        )
        senders = s.senders()
        senders.on_accepted = verifier.check
        for n in range(3):
            assert await s.queue.put(work(n))
        await s.queue.close_input()

        async def send() -> None:
            await (senders.single if mode == "single" else senders.batch)()
            await checks.close_input()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(verifier.run)
    results = s.finished()
    assert results[IDS[0]].outcome is Outcome.UPDATED
    assert results[IDS[1]].outcome is Outcome.UPDATED  # took on the second call
    assert results[IDS[1]].last_error == "accepted but not applied"
    assert results[IDS[2]].outcome is Outcome.FAILED
    assert results[IDS[2]].error_code == "NotApplied"
    assert results[IDS[2]].error_message.startswith("accepted but not applied")
    assert graph.patches == {IDS[0]: 1, IDS[1]: 2, IDS[2]: 2}
    assert (verifier.verified, verifier.resent, verifier.not_applied) == (2, 2, 1)
    assert s.stats.retries == 0  # a resend is not a retry of an error


async def test_rows_that_cannot_be_read_back_keep_their_result() -> None:
    # Every read-back `$batch` fails (503): after --max-retries reads the row keeps `updated`.
    graph = ForgetfulGraph(FakeClock(), read_faults=dict.fromkeys(range(1, 10), "503"))
    async with stage(graph) as s:
        checks = WorkQueue[Work](64, s.clock)
        verifier = Verifier(
            read_back=ReadBack(
                client=s.client, limiter=s.limiter, stats=s.stats, stop=s.stop, throttle=s.throttle
            ),
            queue=checks,
            writes=s.queue,
            results=s.results,
            stop=s.stop,
            throttle=s.throttle,
            max_retries=2,
        )
        senders = s.senders()
        senders.on_accepted = verifier.check
        assert await s.queue.put(work(0))
        await s.queue.close_input()

        async def send() -> None:
            await senders.batch()
            await checks.close_input()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(verifier.run)
    assert s.finished()[IDS[0]].outcome is Outcome.UPDATED
    assert verifier.unverified == 1 and graph.reads == 3
