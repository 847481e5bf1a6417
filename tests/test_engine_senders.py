"""The engine's write paths on a fake clock, against a scripted Graph (`httpx.MockTransport`).

Issue 14: a 503/504/lost connection delays only its own request, frees its sender and gives its
budget back; a lost answer is read back before the write goes again; a 429 holds every sender.
Every request is stamped with the fake clock's time, so the tests read *when* things were sent.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import pytest

from batch.auth import StaticTokenProvider
from batch.engine import RunSummary, execute
from batch.limiter import Limiter
from batch.model import Rate
from batch.options import Judging, RunOptions, Sending, Source, Target
from batch.testing import FakeClock
from tests.e2e import read_csv, write_csv

GRAPH = "http://graph.test"
Fault = Literal["503", "504", "429", "drop", "drop-applied"]


@dataclass
class Sent:
    """One request (or `$batch` item) as the fake Graph saw it."""

    t: float
    method: str
    event_id: str
    answer: str


@dataclass
class FakeGraph:
    """Autopilot events in a dict; `faults[(event id, n)]` spoils the n-th PATCH of an event
    (1-based), `read_faults[n]` the n-th `$batch` of reads as a whole."""

    clock: FakeClock
    faults: dict[tuple[str, int], Fault] = field(default_factory=dict)
    read_faults: dict[int, Fault] = field(default_factory=dict)
    retry_after: str = "10"
    values: dict[str, str] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    patches: dict[str, int] = field(default_factory=dict)
    reads: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            event_id = unquote(request.url.path.rsplit("/", 1)[-1])
            status, body, headers = self._patch(event_id, json.loads(request.content))
            return httpx.Response(status, json=body, headers=headers)
        assert request.method == "POST" and request.url.path.endswith("$batch")
        items = json.loads(request.content)["requests"]
        if all(i["method"] == "GET" for i in items):
            self.reads += 1
            fault = self.read_faults.get(self.reads)
            if fault is not None:
                return self._envelope_fault(fault)
        responses = []
        for item in items:
            path = urlsplit(item["url"]).path
            event_id = unquote(path.rsplit("/", 1)[-1])
            if item["method"] == "GET":
                self.sent.append(Sent(self.clock.now(), "GET", event_id, "200"))
                status, body, headers = 200, self._event(event_id), {}
            else:
                status, body, headers = self._patch(event_id, item["body"])
            responses.append({"id": item["id"], "status": status, "headers": headers, "body": body})
        return httpx.Response(200, json={"responses": responses})

    def _event(self, event_id: str) -> dict[str, Any]:
        return {"id": event_id, "userPrincipalName": self.values.get(event_id, "before@x.example")}

    def _patch(self, event_id: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        n = self.patches[event_id] = self.patches.get(event_id, 0) + 1
        fault = self.faults.get((event_id, n))
        self.sent.append(Sent(self.clock.now(), "PATCH", event_id, fault or "204"))
        if fault == "drop-applied":
            self.values[event_id] = body["userPrincipalName"]
        if fault in ("drop", "drop-applied"):
            raise httpx.RemoteProtocolError("peer closed connection without a complete answer")
        if fault is not None:
            return _fault_answer(fault, self.retry_after)
        self.values[event_id] = body["userPrincipalName"]
        return 204, None, {}

    def _envelope_fault(self, fault: Fault) -> httpx.Response:
        if fault in ("drop", "drop-applied"):
            raise httpx.RemoteProtocolError("peer closed connection without a complete answer")
        status, body, headers = _fault_answer(fault, self.retry_after)
        return httpx.Response(status, json=body, headers=headers)

    def patch_times(self, event_id: str) -> list[float]:
        return [s.t for s in self.sent if s.method == "PATCH" and s.event_id == event_id]


def _fault_answer(fault: Fault, retry_after: str) -> tuple[int, Any, dict[str, str]]:
    status = int(fault)
    code = {429: "TooManyRequests", 503: "ServiceUnavailable", 504: "GatewayTimeout"}[status]
    headers = {"Retry-After": retry_after} if status in (429, 503) else {}
    return status, {"error": {"code": code, "message": code}}, headers


@pytest.fixture
def ids() -> list[str]:
    return [str(uuid.UUID(int=n + 1)) for n in range(6)]


def run(
    tmp_path: Path,
    graph: FakeGraph,
    ids: list[str],
    *,
    mode: Literal["single", "batch"],
    concurrency: int = 1,
    write_limit: Rate = Rate(100, 20),
    batch_size: int = 20,
    backup: bool = False,
    limiter: Limiter | None = None,
) -> tuple[RunSummary, dict[str, dict[str, str]]]:
    """One run of `ids` (each row sets userPrincipalName) through `execute` on the fake clock."""
    rows = [{"id": i, "userPrincipalName": f"after{n}@x.example"} for n, i in enumerate(ids)]
    src = write_csv(tmp_path / "in.csv", rows)
    options = RunOptions(
        source=Source(file=src),
        sending=Sending(
            mode=mode, concurrency=concurrency, write_limit=write_limit, batch_size=batch_size
        ),
        target=Target(graph_root=GRAPH),
        judging=Judging(backup=backup),
        out=tmp_path / "run",
    )

    async def main() -> RunSummary:
        transport = httpx.MockTransport(graph.handle)
        async with httpx.AsyncClient(transport=transport) as http:
            return await execute(
                options,
                tokens=StaticTokenProvider("t"),
                http=http,
                clock=graph.clock,
                limiter=limiter,
            )

    summary = anyio.run(main)
    results = {r["id"]: r for r in read_csv(tmp_path / "run" / "results.csv")}
    return summary, results


def _limiter(graph: FakeGraph, write: Rate = Rate(100, 20)) -> Limiter:
    return Limiter(write=write, clock=graph.clock)


# --- a 503 delays only its own request ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_503_delays_only_its_own_row_and_frees_its_sender(
    tmp_path: Path, ids: list[str], mode: Literal["single", "batch"]
) -> None:
    """One sender: the rows after a 503'd one go at once; the 503'd one after its Retry-After."""
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "503"})
    summary, results = run(tmp_path, graph, ids[:3], mode=mode, batch_size=1)
    assert summary.exit_code == 0
    assert graph.patch_times(ids[1]) == graph.patch_times(ids[2]) == [0.0]
    first, again = graph.patch_times(ids[0])
    assert first == 0.0 and again == pytest.approx(10.0)
    assert results[ids[0]]["attempts"] == "2" and results[ids[0]]["outcome"] == "updated"


def test_a_retried_row_holds_no_concurrency_slot_while_it_waits(
    tmp_path: Path, ids: list[str]
) -> None:
    """Two senders, two rows waiting out a Retry-After: the other four go meanwhile."""
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "503", (ids[1], 1): "503"})
    summary, _ = run(tmp_path, graph, ids, mode="single", concurrency=2)
    assert summary.exit_code == 0
    assert all(graph.patch_times(i) == [0.0] for i in ids[2:])
    assert [t for s in graph.sent if (t := s.t) > 0] == [pytest.approx(10.0)] * 2


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_503_gives_its_write_slot_back(
    tmp_path: Path, ids: list[str], mode: Literal["single", "batch"]
) -> None:
    """Two writes a minute: the 503'd row goes again after its Retry-After, not a minute later."""
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "503"}, retry_after="1")
    limiter = _limiter(graph, Rate(2, 60))
    summary, _ = run(
        tmp_path, graph, ids[:2], mode=mode, batch_size=1, write_limit=Rate(2, 60), limiter=limiter
    )
    assert summary.exit_code == 0
    assert graph.patch_times(ids[0]) == [0.0, pytest.approx(1.0)]
    assert graph.patch_times(ids[1]) == [0.0]
    assert limiter.effective_write_limit == 2  # a 503 says nothing about the budget


def test_503s_and_504s_never_lower_the_write_rate(tmp_path: Path, ids: list[str]) -> None:
    faults: dict[tuple[str, int], Fault] = {(i, 1): "503" for i in ids[:3]}
    faults.update({(i, 1): "504" for i in ids[3:]})
    graph = FakeGraph(FakeClock(), faults=faults, retry_after="1")
    limiter = _limiter(graph)
    summary, _ = run(tmp_path, graph, ids, mode="single", concurrency=3, limiter=limiter)
    assert summary.exit_code == 0
    assert limiter.stats["decreases"] == 0 and limiter.stats["pauses"] == 0
    assert limiter.effective_write_limit == 100


# --- a lost answer is read back ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_lost_answer_whose_write_landed_is_read_back_not_sent_again(
    tmp_path: Path, ids: list[str], mode: Literal["single", "batch"]
) -> None:
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "drop-applied"})
    summary, results = run(tmp_path, graph, ids[:2], mode=mode, batch_size=1)
    assert summary.exit_code == 0
    assert graph.patches == {ids[0]: 1, ids[1]: 1}  # no second PATCH
    row = results[ids[0]]
    assert (row["outcome"], row["status"], row["attempts"]) == ("updated", "", "1")
    assert "ConnectionError" in row["last_error"]
    assert [s.method for s in graph.sent if s.event_id == ids[0]] == ["PATCH", "GET"]


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_lost_write_that_did_not_land_goes_again_with_its_slot_back(
    tmp_path: Path, ids: list[str], mode: Literal["single", "batch"]
) -> None:
    """One write a minute: the read shows the write did not land, so its slot was not used."""
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "drop"})
    summary, results = run(
        tmp_path, graph, ids[:1], mode=mode, batch_size=1, write_limit=Rate(1, 60)
    )
    assert summary.exit_code == 0
    first, again = graph.patch_times(ids[0])
    assert 0 < again - first <= 1.0  # a short backoff, not the rest of the minute
    assert results[ids[0]]["attempts"] == "2"


def test_a_read_back_that_fails_is_tried_again_before_the_write(
    tmp_path: Path, ids: list[str]
) -> None:
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "drop-applied"}, read_faults={1: "503"})
    summary, results = run(tmp_path, graph, ids[:1], mode="single", write_limit=Rate(1, 60))
    assert summary.exit_code == 0
    assert graph.patches == {ids[0]: 1}
    assert graph.reads == 2
    assert results[ids[0]]["outcome"] == "updated"


def test_a_whole_lost_batch_is_read_back_in_one_request(tmp_path: Path, ids: list[str]) -> None:
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "drop-applied"})
    # The first item is carried out, then the connection breaks: the other three never were.
    # (Before-images on: the readers hand the four rows over together, so they form one batch.)
    summary, results = run(tmp_path, graph, ids[:4], mode="batch", batch_size=4, backup=True)
    assert summary.exit_code == 0
    assert graph.reads == 2  # the before-images, then all four read back at once
    assert graph.patches == dict.fromkeys(ids[:4], 1)  # the first not again, the others now
    assert results[ids[0]]["attempts"] == "1" and results[ids[1]]["attempts"] == "2"
    assert all(r["outcome"] == "updated" for r in results.values())


# --- a 429 holds every sender ------------------------------------------------------------------


def test_a_429_holds_every_sender_until_its_retry_after(tmp_path: Path, ids: list[str]) -> None:
    graph = FakeGraph(FakeClock(), faults={(ids[0], 1): "429"}, retry_after="5")
    limiter = _limiter(graph)
    summary, _ = run(tmp_path, graph, ids, mode="single", concurrency=2, limiter=limiter)
    assert summary.exit_code == 0
    throttled_at = next(s.t for s in graph.sent if s.answer == "429")
    later = [s.t for s in graph.sent if s.t > throttled_at]
    # Nothing left while the Retry-After ran (a request already on its way might have).
    assert later and min(later) >= throttled_at + 5.0
    assert len(graph.sent) == len(ids) + 1
    assert limiter.stats["pauses"] == 1
