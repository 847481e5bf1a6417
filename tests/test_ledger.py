"""The ledger: the last window of sends (kept as the limiter grants, carried into a resumed
process), the timeline, and its own API for written bodies, with the migration of old files."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from batch.errors import ResumeError, UsageError
from batch.ledger import VERSION, Ledger, Written, WrittenRow, written_rows
from batch.limiter import Limiter
from batch.model import JSON, Rate
from batch.testing import FakeClock
from tests.test_limiter import max_in_any_window

pytestmark = pytest.mark.anyio

WRITE = Rate(100, 20.0)
WINDOW = 20.0 * 1.03
EPOCH = 1_800_000_000.0  # a Unix time; the two "processes" below see the same wall clock


def _wall_of(clock: FakeClock, wall_at_start: float) -> Callable[[], float]:
    """A wall clock that moves with `clock` (which started at its own origin)."""
    origin = clock.now()
    return lambda: wall_at_start + (clock.now() - origin)


def _sends(path: Path) -> list[tuple[float, int, int]]:
    """The committed rows, read as another process would read them."""
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute("SELECT at, writes, reads FROM sends ORDER BY at")]
    finally:
        db.close()


async def _full_speed(limiter: Limiter, clock: FakeClock, until: float, want: int) -> list[float]:
    """Four senders taking `want` slots each until the clock reaches `until`; grant times."""
    grants: list[float] = []

    async def sender() -> None:
        while clock.now() < until:
            n = await limiter.acquire_writes(want)
            grants.extend([clock.now()] * n)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(sender)
    return grants


async def test_a_grant_is_committed_before_the_request_can_leave(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state.sqlite")
    limiter = Limiter(write=WRITE, clock=FakeClock())
    ledger.keep_window(limiter, resume=False, wall=lambda: EPOCH)
    ledger.mark_in_flight([(2, "a")])  # an open transaction of the senders' (not committed)
    assert await limiter.acquire_writes(20) == 20
    # Another connection (a resumed process after kill -9) already sees it.
    assert _sends(tmp_path / "state.sqlite") == [(EPOCH, 20, 0)]
    limiter.refund_writes(5)  # the batch found 15 rows: the row is amended at once
    await limiter.acquire_reads(7)
    assert _sends(tmp_path / "state.sqlite") == [(EPOCH, 15, 0), (EPOCH, 0, 7)]
    ledger.close()


async def test_a_resumed_process_never_overruns_the_window_the_interrupted_one_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite"
    # The interrupted process: 45 s at full speed in batches of 20, then SIGINT.
    clock_a = FakeClock(start=12.0)
    wall_a = _wall_of(clock_a, EPOCH)
    ledger = Ledger(path)
    limiter = Limiter(write=WRITE, clock=clock_a)
    ledger.keep_window(limiter, resume=False, wall=wall_a)
    sent = [wall_a() - clock_a.now() + t for t in await _full_speed(limiter, clock_a, 45.0, 20)]
    ledger.close()
    interrupted_at = wall_a()

    # The resumed process starts 0.8 s later; its monotonic clock has another origin.
    clock_b = FakeClock(start=73_000.0)
    wall_b = _wall_of(clock_b, interrupted_at + 0.8)
    ledger = Ledger(path)
    limiter = Limiter(write=WRITE, clock=clock_b)
    with caplog.at_level(logging.INFO, logger="batch.ledger"):
        carried = ledger.keep_window(limiter, resume=True, wall=wall_b)
    assert carried is not None
    in_window = sum(s.writes for s in carried.sends if s.ago < WINDOW)
    assert in_window == sum(1 for t in sent if t > interrupted_at + 0.8 - WINDOW) > 0
    assert f"resumed: {in_window} writes of the last 20 s window carried over" in caplog.text
    offset = wall_b() - clock_b.now()
    sent += [offset + t for t in await _full_speed(limiter, clock_b, 73_060.0, 7)]
    ledger.close()

    assert max_in_any_window([(t, 1) for t in sent], WRITE.seconds) <= WRITE.count
    # Only about one window of rows is kept, however long the run.
    assert len(_sends(path)) <= 2 * WRITE.count


async def test_a_pause_and_a_lowered_rate_carry_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite"
    clock_a = FakeClock()
    ledger = Ledger(path)
    limiter = Limiter(write=WRITE, clock=clock_a)
    ledger.keep_window(limiter, resume=False, wall=_wall_of(clock_a, EPOCH))
    await limiter.acquire_writes(60)
    limiter.throttled(2.0)
    clock_a.advance(3.0)
    limiter.throttled(30.0)  # 429s keep coming: the rate steps down, a long pause begins
    assert limiter.effective_write_limit == 59
    ledger.close()

    clock_b = FakeClock(start=500.0)
    ledger = Ledger(path)
    resumed = Limiter(write=WRITE, clock=clock_b)
    with caplog.at_level(logging.INFO, logger="batch.ledger"):
        ledger.keep_window(resumed, resume=True, wall=_wall_of(clock_b, EPOCH + 13.0))
    assert resumed.paused_for == pytest.approx(20.0)
    assert resumed.effective_write_limit == 59
    assert "its 429 pause goes on 20.0 s" in caplog.text
    ledger.close()


async def test_a_new_run_starts_empty_and_an_old_window_carries_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    clock = FakeClock()
    ledger = Ledger(path)
    limiter = Limiter(write=WRITE, clock=clock)
    assert ledger.keep_window(limiter, resume=False, wall=lambda: EPOCH) is None
    await limiter.acquire_writes(100)
    ledger.close()

    ledger = Ledger(path)
    later = Limiter(write=WRITE, clock=FakeClock())
    carried = ledger.keep_window(later, resume=True, wall=lambda: EPOCH + WINDOW + 1)
    assert carried is not None and not carried.sends and carried.pause_ends_in is None
    assert await later.acquire_writes(100) == 100
    ledger.close()


async def test_the_next_file_of_a_job_run_keeps_what_the_shared_limiter_already_sent(
    tmp_path: Path,
) -> None:
    """One limiter, two run folders: the second ledger holds the first run's window too."""
    clock = FakeClock()
    wall = _wall_of(clock, EPOCH)
    limiter = Limiter(write=WRITE, clock=clock)
    first = Ledger(tmp_path / "a.sqlite")
    first.keep_window(limiter, resume=False, wall=wall)
    await limiter.acquire_writes(100)
    first.close()
    await limiter.acquire_reads(3)  # between the runs: no ledger hears it, none fails
    clock.advance(1.0)

    second = Ledger(tmp_path / "b.sqlite")
    second.keep_window(limiter, resume=False, wall=wall)
    second.close()  # interrupted at once, before it sent anything itself
    assert _sends(tmp_path / "b.sqlite") == [(EPOCH, 100, 3)]

    resumed = Limiter(write=WRITE, clock=FakeClock())
    again = Ledger(tmp_path / "b.sqlite")
    again.keep_window(resumed, resume=True, wall=lambda: EPOCH + 2.0)
    assert resumed.window().sends == ((2.0, 100, 3),)
    again.close()


# --- the whole run's timeline (report.html) -----------------------------------------------------


async def test_the_timeline_keeps_every_second_of_every_part(tmp_path: Path) -> None:
    """Per second: writes granted (refunds taken back), reads, 429s; parts; pauses as intervals."""
    from batch.ledger import SecondRecord, read_timeline

    path = tmp_path / "state.sqlite"
    clock = FakeClock()
    wall = _wall_of(clock, EPOCH)
    ledger = Ledger(path)
    limiter = Limiter(write=WRITE, clock=clock)
    ledger.keep_window(limiter, resume=False, wall=wall)
    ledger.start_part(resumed=False, write_limit="100/20")
    assert await limiter.acquire_writes(20) == 20
    limiter.refund_writes(5)  # a $batch that found 15 rows
    assert await limiter.acquire_reads(7) == 7
    clock.advance(2.5)
    ledger.note_throttled(3)
    limiter.throttled(4.0)  # a pause: 4 s from EPOCH + 2.5
    clock.advance(1.0)
    limiter.throttled(6.0)  # the same episode, extended
    ledger.commit()
    ledger.end_part(1)
    ledger.close()

    # A resumed process: its own part, its seconds after the gap.
    later = FakeClock()
    again = Ledger(path)
    limiter2 = Limiter(write=WRITE, clock=later)
    again.keep_window(limiter2, resume=True, wall=_wall_of(later, EPOCH + 3600))
    again.start_part(resumed=True, write_limit="100/20")
    assert await limiter2.acquire_writes(10) == 10
    # Killed: no end_part; the connection just goes away.
    again.commit()
    again.close()

    timeline = read_timeline(path)
    assert timeline.seconds == [
        SecondRecord(int(EPOCH), 15, 7, 0),
        SecondRecord(int(EPOCH) + 2, 0, 0, 3),
        SecondRecord(int(EPOCH) + 3600, 10, 0, 0),
    ]
    assert [(p.number, p.resumed, p.exit_code) for p in timeline.parts] == [
        (1, False, 1),
        (2, True, None),
    ]
    assert timeline.parts[0].ended is not None and timeline.parts[1].ended is None
    assert timeline.pauses == [(EPOCH + 2.5, EPOCH + 3.5 + 6.0)]  # one pause, extended


async def test_a_run_that_ended_is_marked_finished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state.sqlite")
    ledger.start_part(resumed=False, write_limit="100/20")
    assert ledger.finished_run() is None
    ledger.end_part(3)  # aborted: resumable, not finished
    assert ledger.finished_run() is None
    ledger.start_part(resumed=True, write_limit="100/20")
    ledger.end_part(1)
    finished = ledger.finished_run()
    assert finished is not None and finished["exit_code"] == 1
    ledger.close()


async def test_a_ledger_of_an_older_version_gets_last_error(tmp_path: Path) -> None:
    """A run started before `last_error` existed can still be resumed (the column is added)."""
    from batch.ledger import read_timeline
    from batch.model import Outcome, RowResult

    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE rows (number INTEGER PRIMARY KEY, event_id TEXT NOT NULL, state TEXT NOT"
        " NULL, status INTEGER, error_code TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL"
        " DEFAULT '', changed_fields TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT"
        " 0, request_id TEXT NOT NULL DEFAULT '', client_request_id TEXT NOT NULL DEFAULT '');"
        "INSERT INTO rows(number, event_id, state) VALUES (2, 'a', 'updated');"
    )
    db.close()
    assert read_timeline(path).parts == []  # no timeline tables yet: an empty timeline
    ledger = Ledger(path)
    assert ledger.finished()[2].last_error == ""
    ledger.record([RowResult(3, "b", Outcome.UPDATED, attempts=2, last_error="503 X: busy")])
    ledger.commit()
    assert ledger.finished()[3].last_error == "503 X: busy"
    ledger.close()
    assert read_timeline(tmp_path / "missing.sqlite").seconds == []


# --- the ledger's own API: written bodies, versions, migration ----------------------------------

# The file as releases before issue 14 wrote it (ledger version 0): the written body and the
# conflicts as `cache` rows keyed `written:N` / `conflicts:N`, `before` without columns for them.
_VERSION_0 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rows (
    number INTEGER PRIMARY KEY, event_id TEXT NOT NULL, state TEXT NOT NULL, status INTEGER,
    error_code TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL DEFAULT '',
    changed_fields TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT NOT NULL DEFAULT '', client_request_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE before (number INTEGER PRIMARY KEY, event_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('input_sha256', 'abc'), ('cloud', 'global');
INSERT INTO rows(number, event_id, state, changed_fields) VALUES
    (2, 'e2', 'updated', 'osVersion'),
    (3, 'e3', 'conflict', 'enrollmentState'),
    (4, 'e4', 'in_flight', ''),
    (5, 'e5', 'unchanged', '');
INSERT INTO before VALUES
    (2, 'e2', '{"osVersion": "10"}'),
    (3, 'e3', '{"enrollmentState": "failed", "userId": "u"}'),
    (4, 'e4', '{"osVersion": "9"}');
INSERT INTO cache VALUES
    ('written:2', '{"osVersion": "11"}'),
    ('written:3', '{"enrollmentState": "enrolled"}'),
    ('conflicts:3', '[{"name": "userId", "expected": "v", "found": "w", "known": true}]'),
    ('written:4', '{"osVersion": "12"}'),
    ('written:9', '{"osVersion": "orphan"}'),
    ('keys:deviceSerialNumber', '{"version": 1}');
"""


def _version_0_ledger(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_VERSION_0)
    return path


def _user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _cache_keys(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {str(r[0]) for r in db.execute("SELECT key FROM cache")}


def test_save_before_keeps_the_body_sent_and_the_conflicts_with_the_image(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    ledger = Ledger(path)
    conflicts: list[JSON] = [{"name": "userId", "expected": "a", "found": "b"}]
    ledger.save_before(2, "e2", {"osVersion": "10"}, written={"osVersion": "11"})
    ledger.save_before(3, "e3", {"userId": "a"}, written={"osVersion": "1"}, conflicts=conflicts)
    ledger.save_before(4, "e4", {"osVersion": "9"})  # an image without a recorded body
    ledger.commit()
    ledger.close()
    reopened = Ledger(path)
    assert reopened.written(2) == Written({"osVersion": "11"}, [])
    assert reopened.written(3) == Written({"osVersion": "1"}, conflicts)
    assert reopened.written(4) is None and reopened.written(5) is None
    assert reopened.before_image(4) == {"osVersion": "9"}
    reopened.close()
    assert _user_version(path) == VERSION and _cache_keys(path) == set()


def test_a_version_0_ledger_is_migrated_when_opened(tmp_path: Path) -> None:
    path = _version_0_ledger(tmp_path / "state.sqlite")
    assert _user_version(path) == 0
    ledger = Ledger(path)
    assert ledger.written(2) == Written({"osVersion": "11"}, [])
    assert ledger.written(3) == Written(
        {"enrollmentState": "enrolled"},
        [{"name": "userId", "expected": "v", "found": "w", "known": True}],
    )
    assert ledger.written(4) == Written({"osVersion": "12"}, [])
    # The rows' column added since (last_error) is there too: finished rows read back.
    assert sorted(ledger.finished()) == [2, 5] and ledger.finished()[2].last_error == ""
    assert ledger.get_cache("keys:deviceSerialNumber") == {"version": 1}  # other caches stay
    ledger.close()
    assert _user_version(path) == VERSION
    assert _cache_keys(path) == {"keys:deviceSerialNumber"}
    again = Ledger(path)  # opening a migrated ledger changes nothing
    assert again.written(2) == Written({"osVersion": "11"}, [])
    again.close()


@pytest.mark.parametrize("migrated", [False, True], ids=["version-0", "current"])
def test_written_rows_reads_either_version_without_changing_the_file(
    tmp_path: Path, migrated: bool
) -> None:
    path = _version_0_ledger(tmp_path / "state.sqlite")
    if migrated:
        Ledger(path).close()
    before = path.read_bytes()
    rows = list(written_rows(path))
    assert rows == [
        WrittenRow(2, "e2", ("osVersion",), {"osVersion": "10"}, {"osVersion": "11"}),
        WrittenRow(
            3,
            "e3",
            ("enrollmentState",),
            {"enrollmentState": "failed", "userId": "u"},
            {"enrollmentState": "enrolled"},
        ),
    ]
    assert path.read_bytes() == before
    assert _user_version(path) == (VERSION if migrated else 0)


def test_written_rows_of_a_file_that_is_no_ledger(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_text("not a database")
    with pytest.raises(UsageError, match="cannot read the run's ledger"):
        list(written_rows(path))


def test_a_ledger_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(ResumeError, match="newer autopilot-batch"):
        Ledger(path)
