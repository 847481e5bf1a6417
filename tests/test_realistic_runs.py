"""Issue 13: the engine against the emulator as Intune really answers (its default profile).

Runs go in-process through `execute` with the emulator's ASGI app as the transport, so a test can
alter one request on its way (an item URL made absolute, as a bug would) and watch the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx

from batch.auth import StaticTokenProvider
from batch.emulator import EmulatorConfig, EventStore
from batch.emulator.app import build_app
from batch.emulator.state import EmulatorState
from batch.engine import RunOptions, execute
from batch.model import Rate
from tests.e2e import read_csv, write_csv

TOKEN = "t"
GRAPH = "http://graph.test"


def _state(events: int, **config: object) -> tuple[EmulatorState, list[str]]:
    store = EventStore()
    ids = store.seed(events, seed=11)
    return EmulatorState(EmulatorConfig(token=TOKEN, seed=3, **config), store), ids  # type: ignore[arg-type]


class _BreakFirstBatch(httpx.AsyncBaseTransport):
    """Makes one item URL of the first write `$batch` absolute: Intune refuses the whole batch."""

    def __init__(self, state: EmulatorState) -> None:
        self.inner = httpx.ASGITransport(app=build_app(state))
        self.broken = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("$batch") and not self.broken:
            body = json.loads(request.content)
            writes = [i for i in body["requests"] if i["method"] == "PATCH"]
            if writes:
                self.broken += 1
                writes[0]["url"] = "https://graph.microsoft.com/beta" + writes[0]["url"]
                request = httpx.Request(
                    request.method, request.url, headers=request.headers, json=body
                )
        return await self.inner.handle_async_request(request)


def _run(state: EmulatorState, transport: httpx.AsyncBaseTransport, options: RunOptions):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=transport) as http:
            return await execute(options, tokens=StaticTokenProvider(TOKEN), http=http)

    return anyio.run(main)


def test_a_whole_batch_refusal_sends_its_rows_one_by_one(tmp_path: Path) -> None:
    state, ids = _state(30)
    rows = [{"id": i, "osVersion": f"10.0.{n}"} for n, i in enumerate(ids)]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "run"
    transport = _BreakFirstBatch(state)
    summary = _run(
        state,
        transport,
        RunOptions.from_flat(
            input=src, out=out, graph_root=GRAPH, batch_size=10, write_limit=Rate(100, 1)
        ),
    )
    assert transport.broken == 1
    assert summary.exit_code == 0
    results = read_csv(out / "results.csv")
    assert [r["outcome"] for r in results] == ["updated"] * 30
    # The ten rows of the refused batch were answered one request each (PATCH 204).
    assert state.stats.patches == dict.fromkeys(ids, 1)
    log = [json.loads(line) for line in (out / "run.log").read_text().splitlines()]
    refused = [e for e in log if e.get("event") == "batch_refused"]
    assert len(refused) == 1 and len(refused[0]["rows"]) == 10
    assert "Invalid batch payload format." in refused[0]["msg"]


def test_a_batch_refused_for_rights_stops_the_run_naming_the_permission(tmp_path: Path) -> None:
    state, ids = _state(5, deny_permission="writes")
    src = write_csv(tmp_path / "in.csv", [{"id": i, "osVersion": "1"} for i in ids])
    out = tmp_path / "run"
    summary = _run(
        state,
        httpx.ASGITransport(app=build_app(state)),
        RunOptions.from_flat(input=src, out=out, graph_root=GRAPH, backup=False),
    )
    assert summary.exit_code == 3
    assert "DeviceManagementManagedDevices.ReadWrite.All" in summary.data["stopped_because"]
    assert "not a token problem" in summary.data["stopped_because"]
    outcomes = {r["outcome"] for r in read_csv(out / "results.csv")}
    assert outcomes == {"not_attempted"}  # resumable once the permission is granted
    assert state.stats.patches == {}


def test_intune_error_text_reaches_results_without_the_json_document(tmp_path: Path) -> None:
    state, ids = _state(2)
    missing = "00000000-0000-4000-8000-000000000404"
    src = write_csv(
        tmp_path / "in.csv", [{"id": ids[0], "osVersion": "1"}, {"id": missing, "osVersion": "1"}]
    )
    out = tmp_path / "run"
    summary = _run(
        state,
        httpx.ASGITransport(app=build_app(state)),
        RunOptions.from_flat(input=src, out=out, graph_root=GRAPH, backup=False),
    )
    assert summary.exit_code == 1
    failed = read_csv(out / "results.csv")[1]
    assert failed["outcome"] == "failed" and failed["status"] == "404"
    assert failed["error_code"] == "ResourceNotFound"
    assert (
        "_version" not in failed["error_message"]
        and "Operation ID" not in (failed["error_message"])
    )
    assert failed["error_message"]
