"""What a run tells a person (issue 15), end to end: the real CLI against the emulator on 127.0.0.1.

One run with failures and retries (invalid rows, unknown ids, 429s, faults) is shared by the
tests that read its console, changes.csv, summary.json, run.log and report.html; the report is
also opened in the system's Chromium (headless) and its chart checked against the ledger.
Emulators use the realistic defaults (PATCH 204, the current schema, pages of 50) unless a test
says otherwise.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import Rate
from tests.e2e import TOKEN, cli, cli_here, read_csv, update_rows, write_csv

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
UNKNOWN_IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(3)]
# The tool believes in twice the emulator's write limit, so Graph answers 429 and it backs off.
GRAPH_LIMIT = Rate(40, 1)
TOOL_LIMIT = "80/1"


@dataclass
class Run:
    """The shared run with trouble: its folder, console, input rows and emulator."""

    out: Path
    stdout: str
    stderr: str
    exit_code: int
    rows: list[dict[str, str]]
    server: EmulatorServer

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "summary.json").read_text("utf-8"))
        return data


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """103 rows: 12 invalid (a misspelt enum), 3 unknown ids (404), 429s and faults on the way."""
    store = EventStore()
    ids = store.seed(100, seed=5)
    server = EmulatorServer(
        EmulatorConfig(
            token=TOKEN,
            write_limit=GRAPH_LIMIT,
            tenant_write_limit=Rate(400, 1),
            read_limit=Rate(1000, 1),
            tenant_read_limit=Rate(2000, 1),
            fault_rate=0.05,
            seed=3,
        ),
        store=store,
    ).start()
    try:
        tmp = tmp_path_factory.mktemp("troubled")
        rows = update_rows([*ids, *UNKNOWN_IDS])
        for i in range(0, 24, 2):
            rows[i]["enrollmentState"] = "Enroled"
        src = write_csv(tmp / "updates.csv", rows)
        out = tmp / "run"
        done = cli_here(
            "run", src, "--graph-url", server.url, "--write-limit", TOOL_LIMIT, "--out", out
        )
        yield Run(out, done.stdout, done.stderr, done.returncode, rows, server)
    finally:
        server.stop()


# --- the console --------------------------------------------------------------------------


def test_the_console_lists_reasons_and_points_to_failures_csv(troubled: Run) -> None:
    assert troubled.exit_code == 1, troubled.stderr
    lines = troubled.stdout.splitlines()
    assert lines[0] == "103 rows: updated 88, invalid 12, failed 3"
    problems = [line for line in lines if line.startswith("row ")]
    assert len(problems) == 10  # at most ten, in input order
    # Row number, the serial (the input has one), and why.
    assert problems[0] == (
        f"row 2, serial {troubled.rows[0]['Device Serial Number']}: invalid: enrollmentState: "
        "must be one of unknown, enrolled, pendingReset, failed, notContacted, blocked "
        "(got 'Enroled')"
    )
    assert [int(p.split(",")[0].removeprefix("row ")) for p in problems] == list(range(2, 22, 2))
    assert "… 5 more in failures.csv" in lines
    assert f"failed, invalid and conflict rows: {troubled.out / 'failures.csv'}" in lines
    assert f"report: {troubled.out / 'report.html'}" in lines


# --- changes.csv, results.csv, summary.json agree -----------------------------------------------


def test_changes_csv_spells_out_results_changed_fields(troubled: Run) -> None:
    results = read_csv(troubled.out / "results.csv")
    changes = read_csv(troubled.out / "changes.csv")
    before = {
        json.loads(line)["row"]: json.loads(line)["before"]
        for line in (troubled.out / "before.jsonl").read_text("utf-8").splitlines()
    }
    expected = [
        (r["row"], r["id"], f) for r in results for f in r["changed_fields"].split(";") if f
    ]
    assert [(c["row"], c["id"], c["field"]) for c in changes] == expected
    inputs = {str(i + 2): row for i, row in enumerate(troubled.rows)}
    for c in changes:
        assert c["outcome"] == "updated"
        assert c["key"] == inputs[c["row"]]["Device Serial Number"]  # the serial, not the GUID
        old = before[int(c["row"])][c["field"]]
        assert c["old"] == (old if isinstance(old, str) else json.dumps(old))
    serials = [c for c in changes if c["field"] == "deviceSerialNumber"]
    assert all(c["new"] == inputs[c["row"]]["Device Serial Number"] for c in serials)
    # results.csv ends with the input's key column, so a row can be found without its GUID.
    assert list(results[0])[-2:] == ["last_error", "deviceSerialNumber"]


def test_summary_counts_agree_with_results_csv(troubled: Run) -> None:
    summary = troubled.summary
    results = read_csv(troubled.out / "results.csv")
    fields = Counter(f for r in results for f in r["changed_fields"].split(";") if f)
    assert summary["fields_changed"] == dict(fields)
    codes = Counter(r["error_code"] for r in results if r["outcome"] in ("failed", "invalid"))
    assert summary["error_codes"] == {"InvalidRow": 12, "ResourceNotFound": 3} == dict(codes)
    assert summary["counts"] == {**summary["counts"], **Counter(r["outcome"] for r in results)}
    # Retries: every one has a reason, and the run did meet 429s and faults.
    reasons = summary["retry_reasons"]
    assert set(reasons) >= {"429", "503", "504", "connection"}
    assert sum(reasons.values()) == summary["retries"] > 0
    assert reasons["429"] > 0 and summary["throttled_429"] > 0
    # A row that needed retries says why in last_error; one that did not, does not.
    retried = [r for r in results if int(r["attempts"]) > 1]
    assert retried and all(r["last_error"] for r in retried)
    assert all(not r["last_error"] for r in results if r["outcome"] == "invalid")
    commands = summary["commands"]
    assert commands["resume"].startswith(f"autopilot-batch run {troubled.out.parent}")
    assert f"--out {troubled.out} --resume" in commands["resume"]
    assert "--write-limit 80/1" in commands["resume"]
    assert commands["revert"] == f"autopilot-batch revert {troubled.out}"


def test_run_log_has_every_429_retry_and_pause_with_the_same_field_names(troubled: Run) -> None:
    lines = [json.loads(x) for x in (troubled.out / "run.log").read_text("utf-8").splitlines()]
    events = [line for line in lines if "event" in line]
    throttled = [e for e in events if e["event"] == "throttled"]
    assert sum(e["items"] for e in throttled) == troubled.summary["throttled_429"]
    assert all("retry_after" in e and e["status"] == 429 and e["rows"] for e in throttled)
    retries = [e for e in events if e["event"] == "retry"]
    assert sum(len(e["rows"]) for e in retries) == troubled.summary["retries"]
    assert {e["reason"] for e in retries} <= {"429", "503", "504", "connection"}
    assert any(e["event"] == "pause" for e in events)
    assert any(e["event"] == "transient" for e in events)
    final = events[-1]
    assert final["event"] == "run_finished" and final["counts"]["failed"] == 3
    assert final["retry_reasons"] == troubled.summary["retry_reasons"]
    # One vocabulary: a field means the same in every line that has it.
    for e in events:
        if "rows" in e:
            assert all(isinstance(n, int) for n in e["rows"])
        if "kind" in e:
            assert e["kind"] in ("write", "read", "list")


# --- report.html ------------------------------------------------------------------------------


class _Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(page: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(page)
    return parser.found


def _value(summary: dict[str, Any], key: str) -> Any:
    value: Any = summary
    for part in key.split("."):
        value = value[part]
    return value


def test_report_html_figures_equal_summary_json(troubled: Run) -> None:
    page = (troubled.out / "report.html").read_text("utf-8")
    summary = troubled.summary
    keyed = [a for _, a in elements(page) if "data-key" in a]
    keys = {a["data-key"] for a in keyed}
    assert {"rows", "writes_sent", "throttled_429", "retries", "exit_code"} <= keys
    assert {"counts.updated", "counts.invalid", "counts.failed"} <= keys
    for attrs in keyed:
        assert json.loads(attrs["data-value"]) == _value(summary, attrs["data-key"]), attrs
    bar = {
        a["data-outcome"]: int(a["data-count"])
        for tag, a in elements(page)
        if tag == "rect" and "data-outcome" in a
    }
    assert bar == {k: v for k, v in summary["counts"].items() if v}
    fields = {a["data-field"]: int(a["data-count"]) for _, a in elements(page) if "data-field" in a}
    assert fields == summary["fields_changed"]
    assert len([a for _, a in elements(page) if "data-row" in a]) == 15  # all fifteen problems
    assert "404 ResourceNotFound" in page


def test_report_html_refers_to_no_other_host(troubled: Run) -> None:
    page = (troubled.out / "report.html").read_text("utf-8")
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"\b(src|srcset|action|xlink:href)\s*=", page, re.I)
    assert not re.search(r"@import|url\(", page, re.I)
    assert "default-src 'none'" in page
    for _, attrs in elements(page):
        if "href" in attrs:
            assert "/" not in attrs["href"] and ":" not in attrs["href"], attrs
            assert (troubled.out / attrs["href"]).exists()


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 4 if colour == 6 else 3
    raw = zlib.decompress(chunks)
    stride = width * size
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up = previous[i]
            corner = previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(
            bytes(line) if size == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3)
        )
        previous = line
    return width, height, rows


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _expected_rates(ledger: Path, window: float, max_points: int = 600) -> list[float]:
    """The chart's points, recomputed from the ledger's own rows (the definition, restated)."""
    with sqlite3.connect(ledger) as db:
        ((started, ended),) = db.execute("SELECT started, ended FROM parts").fetchall()
        seconds = dict(db.execute("SELECT second, writes FROM timeline").fetchall())
    first = math.floor(started)
    length = max(1, math.ceil(ended) - first)
    step = max(1, math.ceil(length / max_points))
    average = max(1, math.floor(window), step)
    counts = [seconds.get(first + i, 0) for i in range(length)]
    return [
        round(sum(counts[max(0, i + 1 - average) : i + 1]) / average, 4)
        for i in range((length - 1) % step, length, step)
    ]


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium (Debian package chromium; .ci/run installs it)",
)
def test_report_html_in_a_real_browser(troubled: Run, tmp_path: Path) -> None:
    """Chromium draws a picture that is not blank; its chart holds the ledger's timeline."""
    url = (troubled.out / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    done = _chromium(
        f"--screenshot={shot}", "--window-size=1000,1400", url, profile=tmp_path / "profile"
    )
    assert shot.exists(), done.stderr[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 1400)
    pixels = Counter(row[i : i + 3] for row in rows[::4] for i in range(0, len(row), 12))
    white = pixels[b"\xff\xff\xff"]
    assert white < 0.97 * sum(pixels.values())  # something is drawn
    assert len(pixels) > 20  # text, bars and the chart: many colours, not a flat page
    # The outcome bar's green (updated) is on screen.
    assert any(abs(p[0] - 0x2E) + abs(p[1] - 0x7D) + abs(p[2] - 0x32) < 30 for p in pixels)

    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = elements(dom.stdout)
    charts = [a for tag, a in found if tag == "svg" and a.get("class") == "timeline"]
    lines = [a for tag, a in found if tag == "polyline" and a.get("class") == "rate"]
    assert len(charts) == len(lines) == 1  # one part: never interrupted
    line = lines[0]
    rates = [float(r) for r in line["data-rates"].split()]
    points = [tuple(map(float, p.split(","))) for p in line["points"].split()]
    expected = _expected_rates(troubled.out / "state.sqlite", Rate.parse(TOOL_LIMIT).seconds)
    assert rates == expected
    assert len(points) == len(rates) > 1
    # Drawn where the values say: x grows with time, y falls as the rate rises.
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    for (_, y1), (_, y2), r1, r2 in zip(points, points[1:], rates, rates[1:], strict=False):
        assert (r1 > r2) == (y1 < y2) or r1 == r2
    # The timeline holds every write the run sent, and the 429s it met.
    summary = troubled.summary
    assert int(line["data-writes"]) == summary["writes_sent"] == summary["parts"][0]["writes"]
    marks = [a for tag, a in found if tag == "path" and a.get("class") == "throttled"]
    assert sum(int(a["data-count"]) for a in marks) == summary["throttled_429"]
    assert [a for tag, a in found if tag == "rect" and a.get("class") == "pause"]
    limit = next(a for tag, a in found if tag == "line" and a.get("class") == "limit")
    assert float(limit["data-rate"]) == Rate.parse(TOOL_LIMIT).per_second


# --- a resumed run, the report command, --resume without --out ---------------------------------


def test_a_resumed_run_shows_both_parts_and_a_finished_run_is_not_resumed(
    emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 1 stops (the app lacks the write permission), part 2 finishes, part 3 has nothing."""
    monkeypatch.chdir(tmp_path)
    store = EventStore()
    ids = store.seed(30, seed=9)
    fast = {"write_limit": Rate(200, 1), "tenant_write_limit": Rate(400, 1)}
    denying = emulator_factory(EmulatorConfig(deny_permission="writes", **fast), store=store)
    src = write_csv(tmp_path / "updates.csv", update_rows(ids))
    first = cli_here("run", src, "--graph-url", denying.url, "--out", "runs/migration")
    assert first.returncode == 3, first.stdout + first.stderr
    # Granted: the same tenant answers again; --resume finds the run by the file's digest.
    granting = emulator_factory(EmulatorConfig(**fast), store=store)
    second = cli_here("run", src, "--graph-url", granting.url, "--resume", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["out_dir"] == "runs/migration" and summary["counts"]["updated"] == 30
    parts = summary["parts"]
    assert [(p["part"], p["resumed"], p["exit_code"]) for p in parts] == [
        (1, False, 3),
        (2, True, 0),
    ]
    page = (tmp_path / "runs/migration/report.html").read_text("utf-8")
    charts = [a for tag, a in elements(page) if tag == "svg" and a.get("class") == "timeline"]
    assert [a["data-part"] for a in charts] == ["1", "2"]
    assert "resumed" in page and "Part 2" in page

    requests = granting.stats()["requests"]
    again = cli_here("run", src, "--graph-url", granting.url, "--resume")
    assert again.returncode == 0
    assert "nothing to resume" in again.stderr and "nothing was sent" in again.stderr
    assert granting.stats()["requests"] == requests

    # `report` writes the page again from the folder alone.
    (tmp_path / "runs/migration/report.html").unlink()
    rewritten = cli_here("report", "runs/migration")
    assert rewritten.returncode == 0 and rewritten.stdout.startswith("wrote runs/migration/")
    assert (tmp_path / "runs/migration/report.html").read_text("utf-8").count("<svg") == 3
    missing = cli_here("report", "runs/none")
    assert missing.returncode == 2 and "no such run folder" in missing.stderr


# --- a conflict, a diff, --key reads -----------------------------------------------------------


def test_the_console_lists_a_revert_conflict_with_both_values(
    emulator_factory: Any, tmp_path: Path
) -> None:
    store = EventStore()
    ids = store.seed(4, seed=13)
    server = emulator_factory(EmulatorConfig(token=TOKEN), store=store)
    rows = [{"id": i, "userPrincipalName": f"new{n}@contoso.com"} for n, i in enumerate(ids)]
    src = write_csv(tmp_path / "upn.csv", rows)
    run = cli_here("run", src, "--graph-url", server.url, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    store.patch(ids[2], {"userPrincipalName": "someone.else@contoso.com"})
    undo = cli_here("revert", tmp_path / "run", "--graph-url", server.url, "--out", tmp_path / "r")
    assert undo.returncode == 1
    problem = next(line for line in undo.stdout.splitlines() if line.startswith("row 4,"))
    assert problem.startswith(f"row 4, id {ids[2]}: conflict: ")
    assert "is someone.else@contoso.com (the run wrote new2@contoso.com" in problem
    assert f"failed, invalid and conflict rows: {tmp_path / 'r' / 'failures.csv'}" in undo.stdout


def test_a_diff_prints_rows_in_input_order_and_totals_per_field(
    emulator_factory: Any, tmp_path: Path
) -> None:
    store = EventStore()
    ids = store.seed(60, seed=17)
    server = emulator_factory(EmulatorConfig(token=TOKEN), store=store)
    rows = []
    for n, event_id in enumerate(ids):
        current = store.get(event_id)
        assert current is not None
        upn = f"moved{n}@contoso.com" if n % 3 == 0 else str(current["userPrincipalName"])
        state = "blocked" if n % 4 == 0 else str(current["enrollmentState"])
        rows.append({"id": event_id, "userPrincipalName": upn, "enrollmentState": state})
    src = write_csv(tmp_path / "diff.csv", rows)
    done = cli_here("run", src, "--graph-url", server.url, "--only-changed", "--dry-run")
    assert done.returncode == 0, done.stderr
    shown = [int(m) for m in re.findall(r"^row (\d+) \(", done.stderr, re.M)]
    assert shown == sorted(shown) and len(shown) >= 20  # input order, not answer order
    lines = done.stdout.splitlines()
    folder = next(x for x in lines if x.startswith("run folder: ")).removeprefix("run folder: ")
    fields = json.loads((Path(folder) / "summary.json").read_text("utf-8"))["fields_changed"]
    assert fields["userPrincipalName"] == 20
    at = lines.index("fields to change:")
    totals = {}
    for line in lines[at + 1 : at + 1 + len(fields)]:
        found = re.fullmatch(r"  (\w+): +(\d+) rows?", line)
        assert found, line
        totals[found[1]] = int(found[2])
    assert totals == fields


def test_key_reads_count_in_the_summary(emulator_factory: Any, tmp_path: Path) -> None:
    store = EventStore()
    ids = store.seed(120, seed=19)  # three pages of 50
    server = emulator_factory(EmulatorConfig(token=TOKEN), store=store)
    rows = []
    for event_id in ids[:5]:
        event = store.get(event_id)
        assert event is not None
        rows.append({"deviceSerialNumber": str(event["deviceSerialNumber"]), "osVersion": "10.0.1"})
    src = write_csv(tmp_path / "serials.csv", rows)
    done = cli_here(
        "run", src, "--graph-url", server.url, "--key", "deviceSerialNumber", "--dry-run", "--json"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests_sent"] == summary["reads_sent"] == server.stats()["requests"] == 3


# --- --json on errors -------------------------------------------------------------------------


def test_json_error_objects_for_exit_2_and_3(tmp_path: Path) -> None:
    missing = cli_here("run", tmp_path / "missing.csv", "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout) == {
        "ok": False,
        "error": f"{tmp_path / 'missing.csv'}: no such file",
        "exit_code": 2,
    }
    # Nobody listens on port 9 of 127.0.0.1: Graph cannot be read (exit 3), nothing written.
    unreachable = cli_here(
        "export",
        tmp_path / "out.csv",
        "--graph-url",
        "http://127.0.0.1:9",
        "--max-retries",
        "0",
        "--json",
    )
    assert unreachable.returncode == 3
    data = json.loads(unreachable.stdout)
    assert data["ok"] is False and data["exit_code"] == 3 and data["error"]
    # A bad option is click's error: as a process, stdout still gets one object.
    usage = cli("run", "x.csv", "--json", "--bogus")
    assert usage.returncode == 2
    assert json.loads(usage.stdout) == {
        "ok": False,
        "error": "No such option: --bogus (Possible options: --out)",
        "exit_code": 2,
    }
    bad_file = tmp_path / "bad.csv"
    bad_file.write_text("id,enrollmentState\nx,enrolled\n", encoding="utf-8")
    good = cli_here("validate", bad_file, "--json")
    assert json.loads(good.stdout)["exit_code"] == 0


def test_a_run_refused_by_graph_is_one_json_object_with_its_error(
    emulator_factory: Any, tmp_path: Path
) -> None:
    server = emulator_factory(EmulatorConfig(token="the-right-token"), events=3)
    src = write_csv(tmp_path / "u.csv", [{"id": "x", "userPrincipalName": "a@b.example"}])
    done = cli_here("run", src, "--graph-url", server.url, "--json", token="a-wrong-token")
    assert done.returncode == 3
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["exit_code"] == 3 and "token" in data["error"]


def test_csv_files_of_a_clean_run_are_consistent(emulator_factory: Any, tmp_path: Path) -> None:
    """A dry run without reads: changes.csv has the planned values, no old ones."""
    src = write_csv(tmp_path / "plan.csv", update_rows([f"id-{n}" for n in range(5)]))
    done = cli_here("run", src, "--dry-run", "--out", tmp_path / "plan")
    assert done.returncode == 0
    with (tmp_path / "plan" / "changes.csv").open(encoding="utf-8-sig", newline="") as f:
        changes = list(csv.DictReader(f))
    assert len(changes) == 25 and {c["outcome"] for c in changes} == {"planned"}
    assert {c["old"] for c in changes} == {""}
    assert (tmp_path / "plan" / "report.html").exists()
    assert "A dry run sends no writes" in (tmp_path / "plan" / "report.html").read_text("utf-8")
    shutil.rmtree(tmp_path / "plan")
