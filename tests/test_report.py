"""The report package's pure parts (timeline, chart, page, console, commands); the progress bar."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from batch.ledger import PartRecord, SecondRecord, TimelineRecord
from batch.mapper import InputOptions
from batch.model import Outcome, Rate, RowResult
from batch.options import Judging, RunOptions, Sending, Source, Target
from batch.progress import MAX_WIDTH, _Bar
from batch.report.commands import resume_command, revert_command
from batch.report.console import summary_lines
from batch.report.html import render_report
from batch.report.problems import ProblemRow, first_problems
from batch.report.tally import Tally
from batch.report.timeline import parts_summary, rate_series, split_parts
from batch.whoami import expiry_text

T0 = 1_800_000_000


def _part(number: int, started: float, ended: float | None, limit: str = "100/20") -> PartRecord:
    return PartRecord(number, started, ended, number > 1, None if ended is None else 0, limit)


# --- timeline ---------------------------------------------------------------------------------


def test_seconds_go_to_the_part_they_happened_in_and_a_killed_part_ends_at_its_last_send() -> None:
    record = TimelineRecord(
        parts=[_part(1, T0 + 0.4, None), _part(2, T0 + 100.2, T0 + 130.0)],
        seconds=[
            SecondRecord(T0, 20, 0, 0),
            SecondRecord(T0 + 7, 20, 0, 2),
            SecondRecord(T0 + 101, 5, 0, 0),
        ],
        pauses=[(T0 + 7.5, T0 + 9.5), (T0 + 120.0, T0 + 140.0)],
    )
    first, second = split_parts(record)
    assert [s.second for s in first.seconds] == [T0, T0 + 7]
    assert first.killed and first.ended == T0 + 8  # after its last busy second
    assert (first.writes, first.throttled) == (40, 2)
    assert [s.second for s in second.seconds] == [T0 + 101]
    assert second.pauses == [(T0 + 120.0, T0 + 130.0)]  # clipped to the part
    summary = parts_summary([first, second])
    assert [p["ended"] for p in summary] == [None, "2027-01-15T08:02:10.000+00:00"]
    assert summary[0]["writes"] == 40 and summary[0]["throttled_429"] == 2


def test_the_rate_is_writes_in_the_last_window_per_second() -> None:
    # A $batch of 20 every 4 s for 20 s at a 100/20 limit: 5 writes per second once warm.
    seconds = [SecondRecord(T0 + t, 20, 0, 0) for t in range(0, 40, 4)]
    (part,) = split_parts(TimelineRecord([_part(1, T0, T0 + 40)], seconds, []))
    series = rate_series(part, 20.0)
    assert (series.first, series.start, series.step, series.average) == (T0, 0, 1, 20)
    assert len(series.rates) == 40
    assert series.rates[0] == 1.0  # 20 writes in the window so far, over 20 s
    assert series.rates[19] == 5.0 and max(series.rates) == 5.0  # never above 100/20
    assert series.rates[39] == 5.0


def test_a_long_part_is_sampled_and_every_write_still_counts() -> None:
    seconds = [SecondRecord(T0 + t, 1, 0, 0) for t in range(0, 12_000, 3)]
    (part,) = split_parts(TimelineRecord([_part(1, T0, T0 + 12_000)], seconds, []))
    series = rate_series(part, 20.0, max_points=600)
    assert series.step == 20 and series.average == 20 and len(series.rates) == 600
    # Windows side by side: the points add up to every write.
    assert round(sum(series.rates) * series.average) == len(seconds)


# --- the chart and the page ---------------------------------------------------------------------


def _summary(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tool_version": "9.9",
        "input": "updates.csv",
        "input_sha256": "ab" * 32,
        "out_dir": "runs/x",
        "rows": 4,
        "counts": {o.value: 0 for o in Outcome} | {"updated": 3, "failed": 1},
        "started": "2027-01-15T08:00:00+00:00",
        "ended": "2027-01-15T08:00:40+00:00",
        "elapsed_seconds": 40.0,
        "rows_per_second": 0.1,
        "requests_sent": 2,
        "writes_sent": 4,
        "reads_sent": 4,
        "throttled_429": 0,
        "retries": 0,
        "values_trimmed": 0,
        "exit_code": 1,
        "mode": "batch",
        "write_limit": "100/20",
        "fields_changed": {"osVersion": 3},
        "error_codes": {"ResourceNotFound": 1},
        "retry_reasons": {"429": 0},
        "commands": {"resume": "autopilot-batch run updates.csv --out runs/x --resume"},
        "parts": [],
    }
    return data | changes


def test_the_page_escapes_everything_it_did_not_write_itself() -> None:
    hostile = '<script>alert("x")</script>'
    summary = _summary(
        input=f"{hostile}.csv", tenant=hostile, fields_changed={hostile: 1}, stopped_because=hostile
    )
    problems = [ProblemRow(2, hostile, "", "", "failed", f"400 Bad: <img src=x onerror={hostile}>")]
    page = render_report(summary, problems, [])
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_the_chart_draws_the_limit_the_pauses_and_the_429s() -> None:
    seconds = [SecondRecord(T0 + t, 20, 0, 3 if t == 8 else 0) for t in range(0, 40, 4)]
    record = TimelineRecord([_part(1, T0, T0 + 40)], seconds, [(T0 + 8.2, T0 + 10.2)])
    page = render_report(_summary(), [], split_parts(record))
    assert 'class="limit"' in page and 'data-rate="5.0000"' in page
    assert re.search(r'<rect class="pause" [^>]*data-seconds="2.000"', page)
    assert f'data-second="{T0 + 8}" data-count="3"' in page
    rates = re.search(r'data-rates="([^"]+)"', page)
    assert rates is not None and len(rates[1].split()) == 40


# --- console, tally, commands ------------------------------------------------------------------


def test_the_console_prints_problems_and_where_they_are(tmp_path: Path) -> None:
    rows = ["row,id,outcome,status,error_code,error_message,changed_fields,attempts,"
            "request_id,client_request_id,last_error,deviceSerialNumber"]  # fmt: skip
    rows += [f"{n},id-{n},failed,404,ResourceNotFound,gone,,1,r,c,,00{n}" for n in range(2, 16)]
    rows.append("16,id-16,updated,204,,,osVersion,1,r,c,,0016")
    (tmp_path / "results.csv").write_text("\ufeff" + "\r\n".join(rows) + "\r\n", "utf-8")
    counts = {"updated": 1, "failed": 14}
    lines = summary_lines(_summary(rows=15, counts=counts), tmp_path)
    assert lines[0] == "15 rows: updated 1, failed 14"
    assert lines[2] == "row 2, serial 002: failed: 404 ResourceNotFound: gone"
    assert lines[11] == "row 11, serial 0011: failed: 404 ResourceNotFound: gone"
    assert lines[12] == "… 4 more in failures.csv"
    assert lines[13] == f"failed, invalid and conflict rows: {tmp_path / 'failures.csv'}"
    assert first_problems(tmp_path / "results.csv", 50)[-1].row == 15


def test_the_tally_counts_fields_and_error_codes() -> None:
    tally = Tally()
    tally.add(RowResult(2, "a", Outcome.UPDATED, changed_fields=("b", "a")))
    tally.add(RowResult(3, "b", Outcome.UPDATED, changed_fields=("a",)))
    tally.add(RowResult(4, "c", Outcome.FAILED, error_code="ResourceNotFound"))
    tally.add(RowResult(5, "d", Outcome.INVALID, error_code="InvalidRow"))
    assert tally.to_json() == {
        "fields_changed": {"a": 2, "b": 1},
        "error_codes": {"InvalidRow": 1, "ResourceNotFound": 1},
    }


def test_the_resume_command_repeats_every_option_that_is_not_a_default() -> None:
    options = RunOptions(
        source=Source(
            file=Path("my updates.xlsx"),
            reading=InputOptions(sheet="Week 2", key="deviceSerialNumber"),
            pick="latest",
        ),
        sending=Sending(mode="single", write_limit=Rate(50, 20)),
        target=Target(graph_root="http://127.0.0.1:8765"),
        judging=Judging(only_changed=True),
    )
    assert resume_command(options, Path("runs/m"), reverting=False) == (
        "autopilot-batch run 'my updates.xlsx' --out runs/m --resume --mode single "
        "--write-limit 50/20 --graph-url http://127.0.0.1:8765 --sheet 'Week 2' "
        "--key deviceSerialNumber --pick latest --only-changed"
    )
    assert resume_command(
        RunOptions(source=Source(file=Path("a.csv"))), Path("r"), reverting=False
    ) == ("autopilot-batch run a.csv --out r --resume")
    assert (
        resume_command(
            RunOptions(source=Source(file=Path("a.csv")), dry_run=True), Path("r"), reverting=False
        )
        is None
    )
    assert revert_command(Path("runs/m"), wrote=False) is None


def test_an_expired_token_says_how_long_ago() -> None:
    now = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC)
    assert expiry_text(now - dt.timedelta(minutes=11), now).endswith("(expired 11 minutes ago)")
    assert expiry_text(now - dt.timedelta(hours=5), now).endswith("(expired 5 hours ago)")
    assert expiry_text(now + dt.timedelta(minutes=49, seconds=30), now).endswith("(in 49 min)")
    assert expiry_text(None, now) == "unknown"


# --- the progress bar ---------------------------------------------------------------------------


@pytest.mark.parametrize("total", [300, 1_000_000])
def test_the_progress_bar_fits_80_columns_and_says_what_it_waits_for(total: int) -> None:
    out = io.StringIO()
    bar = _Bar(Console(file=out, width=MAX_WIDTH, force_terminal=True, color_system=None))
    bar.start(total, "a-long-input-file-name-that-would-not-fit.xlsx: sending (batch mode)")
    for _ in range(3):
        bar.advance(Outcome.UPDATED, throttled=12)
    bar._progress.refresh()
    bar.watch(lambda: "waiting for the write window")
    bar._last = time.monotonic() - 5  # no row finished for a while
    bar._progress.refresh()
    bar.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [line for chunk in text.split("\r") for line in chunk.splitlines() if line.strip()]
    assert lines and all(len(line) <= MAX_WIDTH for line in lines), lines
    assert any("rows/s" in line and "429s 12" in line for line in lines)
    assert any("waiting for the write window" in line for line in lines)


def test_summary_json_keys_used_by_the_page_are_plain_json() -> None:
    json.dumps(_summary())  # the page reads only what summary.json can hold


@pytest.mark.parametrize(
    ("key_name", "label"),
    [
        ("deviceSerialNumber", "row 7, serial 0012"),
        ("serialNumber", "row 7, serial 0012"),  # a device identity's serial is a serial too
        ("managedDeviceName", "row 7, device 0012"),
    ],
)
def test_a_problem_row_names_its_key_by_what_it_is(key_name: str, label: str) -> None:
    row = ProblemRow(7, "id-7", "0012", key_name, "failed", "gone")
    assert row.label == label
