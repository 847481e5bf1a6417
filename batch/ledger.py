"""The run ledger (`state.sqlite`): the input digest, the options, and every row's state.

It is what `--resume` continues from. SQLite in WAL mode; every answer from Graph is committed in a
small transaction, so a `kill -9` loses at most the answers to requests still in flight. Those rows
are still `pending`/`in_flight` on resume and are sent again (PATCH is idempotent).

It also keeps the last window of sends (`keep_window`), because Graph's throttling window outlives
the process: a run resumed right after an interruption at full speed must not spend the budget the
interrupted process already used. Decisions:

- **One row per grant, committed before the request leaves.** The limiter reports each grant (a
  `$batch` of 20 is one row) through its `Journal` hook, and the row is committed at once, so even
  after `kill -9` the resumed process knows every request that may have reached Graph. A WAL commit
  with `synchronous=NORMAL` does not wait for the disk, and at Graph's pace (100 writes per 20 s)
  this is a few commits a second at most. Committing at the reporter's commits instead would lose
  the grants of the requests in flight at a kill, up to `--concurrency` full batches.
- **Wall-clock times.** The limiter's clock is monotonic, and two processes' monotonic clocks share
  no origin; the rows hold Unix time and a resume turns them into ages. A wall clock set back
  meanwhile gives negative ages, which count as "just sent" (waiting too long is the safe error).
- **Small.** Rows older than the longest window are deleted as new ones come, so the table holds
  about one window of grants (at most the read budget's count, usually a few dozen rows).
- **The pause gate too.** A run interrupted inside a `Retry-After` pause leaves its end (and the
  adaptive write limit then in force) in `meta`; the resumed limiter waits for the same end.

It also keeps the whole run's timeline for report.html (`read_timeline`), which `sends` cannot
(it forgets everything older than a window):

- **Per second, not per grant.** `timeline` holds one row per second in which something was
  granted or answered 429: writes, reads, 429s. At Graph's pace (5 writes/s) a 50,000-row run is
  about 10,000 rows (a few hundred KB); a grant adds to its second's row in the transaction that
  commits the grant anyway, so keeping it costs no extra commit. A second is finer than any
  window a chart needs (Graph's is 20 s); report.html averages over the window.
- **Parts.** Each process that works on the run (the first, then every `--resume`) is a row of
  `parts` (start, end, exit code, write limit), so a resumed run shows all its parts and the gap
  between them. A part killed with `kill -9` has no end; its last recorded second stands in.
- **Pauses** are intervals (`pauses`): a pause extended by more 429s stays one row.
- **Finished runs** are marked in `meta` (`finished`), so `--resume` of a run that ended can say
  so instead of sending its failed rows again.

It is read through its own API only: the engine, `--resume` and `revert` (`written_rows`) never
hold SQL. What a row is about to write is one row of `before`: the before-image, the body sent
(`written`) and the fields a conflict left alone (`conflicts`), committed together before the
request leaves (`save_before`; read back by `written` and `written_rows`).

Versions: `PRAGMA user_version` says which shape the file has (`VERSION`), and opening a ledger
migrates an older one in place, in one transaction, so run folders of earlier releases still
resume and revert. Version 0 (before issue 14) kept the written body and the conflicts as
`cache` rows keyed `written:N` and `conflicts:N`, and may lack `rows.last_error`; version 1 moves
them into `before`. `written_rows` is read-only (a revert must not change the reverted run's
folder, which may be read-only or still open elsewhere), so it reads a version 0 file as it is
rather than migrating it. A file newer than `VERSION` is refused, not guessed at.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from batch.errors import ResumeError, UsageError
from batch.limiter import Carried, Limiter, Sent
from batch.model import JSON, Outcome, RowResult

__all__ = [
    "FINAL_SUCCESS",
    "VERSION",
    "Ledger",
    "PartRecord",
    "SecondRecord",
    "TimelineRecord",
    "Written",
    "WrittenRow",
    "read_meta",
    "read_timeline",
    "written_rows",
]

log = logging.getLogger("batch.ledger")

# Rows in these states are never sent again by `--resume`.
FINAL_SUCCESS: Final = frozenset({Outcome.UPDATED.value, Outcome.UNCHANGED.value})
#: The shape of the file this code writes (`PRAGMA user_version`; see the module docstring).
VERSION: Final = 1

# `meta` key of the pause gate's end (Unix time) and the write limit in force at the last 429.
_GATE_KEY: Final = "limiter_gate"
# Expired sends are deleted once per this many grants: each delete then finds a few rows.
_PRUNE_EVERY: Final = 32

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    number INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | in_flight | an Outcome value
    status INTEGER,
    error_code TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    changed_fields TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT NOT NULL DEFAULT '',
    client_request_id TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS before (  -- one per row about to be written (save_before)
    number INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,             -- the before-image (JSON)
    written TEXT,                   -- the body sent (JSON); NULL: not recorded
    conflicts TEXT                  -- the fields a conflict left alone (JSON); NULL: none
);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sends (  -- the last window of limiter grants (keep_window)
    at REAL NOT NULL,               -- Unix time the slots were granted
    writes INTEGER NOT NULL,        -- write items (each also counts as a request)
    reads INTEGER NOT NULL          -- read items
);
CREATE TABLE IF NOT EXISTS parts (  -- one per process that worked on the run
    part INTEGER PRIMARY KEY,
    started REAL NOT NULL,          -- Unix time
    ended REAL,                     -- NULL: the process died (kill -9, power cut)
    resumed INTEGER NOT NULL,
    exit_code INTEGER,
    write_limit TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS timeline (  -- the whole run, per second
    second INTEGER PRIMARY KEY,     -- Unix time, whole seconds
    writes INTEGER NOT NULL DEFAULT 0,
    reads INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0  -- 429 answers
);
CREATE TABLE IF NOT EXISTS pauses (started REAL NOT NULL, ends REAL NOT NULL);
"""
# Columns added after the first release: (table, name, declaration). Version 0 ledgers may
# lack any of them; the migration adds the missing ones.
_ADDED_COLUMNS: Final = (
    ("rows", "last_error", "TEXT NOT NULL DEFAULT ''"),
    ("before", "written", "TEXT"),
    ("before", "conflicts", "TEXT"),
)
# Version 0 kept these per row in `cache`, keyed prefix + row number.
_OLD_WRITTEN: Final = "written:"
_OLD_CONFLICTS: Final = "conflicts:"
_FINISHED_KEY: Final = "finished"
_TIMELINE_ADD: Final = (
    "INSERT INTO timeline(second, writes, reads, throttled) VALUES(?, ?, ?, ?)"
    " ON CONFLICT(second) DO UPDATE SET writes = writes + excluded.writes,"
    " reads = reads + excluded.reads, throttled = throttled + excluded.throttled"
)


class SecondRecord(NamedTuple):
    """What one second of a run held: write and read items granted, 429 answers."""

    second: int
    writes: int
    reads: int
    throttled: int


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One process's share of a run (`ended` None: it died without closing the ledger)."""

    number: int
    started: float
    ended: float | None
    resumed: bool
    exit_code: int | None
    write_limit: str


@dataclass(frozen=True, slots=True)
class TimelineRecord:
    """A run's recorded timeline: its parts, its busy seconds, its pauses (Unix times)."""

    parts: list[PartRecord] = field(default_factory=list)
    seconds: list[SecondRecord] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Written:
    """The body a row was about to send, and the fields its conflicts left alone (JSON)."""

    body: dict[str, JSON]
    conflicts: list[JSON]


@dataclass(frozen=True, slots=True)
class WrittenRow:
    """A row a run wrote (`written_rows`): what it changed, its before-image, the body sent.

    `before` is None when the run kept no before-image (`--no-backup`); `written` is None when
    the body was not recorded.
    """

    number: int
    event_id: str
    changed_fields: tuple[str, ...]
    before: dict[str, JSON] | None
    written: dict[str, JSON] | None


class Ledger:
    """One run's durable state. Not thread-safe: one event loop thread owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we open and commit transactions ourselves, in small batches.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a process kill (not necessarily a power cut) and is fast.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._in_tx = False
        self._open()
        # The limiter whose grants this ledger journals, and its journal (keep_window).
        self._kept: tuple[Limiter, _WindowJournal] | None = None
        # The wall clock of the timeline (keep_window may set a test's); the part in progress.
        self._wall: Callable[[], float] = time.time
        self._part: int | None = None

    def _open(self) -> None:
        """Create a new ledger at `VERSION`, or migrate an older one (module docstring)."""
        version = _version(self._db)
        if version > VERSION:
            self._db.close()
            raise ResumeError(
                f"{self.path}: written by a newer autopilot-batch (ledger version {version}); "
                "resume or revert it with that version"
            )
        (tables,) = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        # Tables a version 0 ledger lacks are created in today's shape. (executescript commits
        # by itself; the migration below can be repeated, so a kill in between is harmless.)
        self._db.executescript(_SCHEMA)
        if version == VERSION:
            return
        with self._tx():
            if tables:
                self._migrate()
            self._db.execute(f"PRAGMA user_version = {VERSION}")

    def _migrate(self) -> None:
        """Version 0 → 1: the added columns; the written bodies and conflicts into `before`."""
        for table, name, declaration in _ADDED_COLUMNS:
            have = {str(r[1]) for r in self._db.execute(f"PRAGMA table_info({table})")}
            if name not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        for column, prefix in (("written", _OLD_WRITTEN), ("conflicts", _OLD_CONFLICTS)):
            self._db.execute(
                f"UPDATE before SET {column} = (SELECT value FROM cache WHERE key = ? || number)"
                f" WHERE {column} IS NULL",
                (prefix,),
            )
            # Moved, or of a row without a before-image (which neither resume nor revert reads).
            self._db.execute("DELETE FROM cache WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))

    # --- run-level metadata ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """One metadata value, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, **values: str) -> None:
        """Store metadata values (committed at once)."""
        with self._tx():
            self._db.executemany(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def check_resumable(self, sha256: str) -> None:
        """Refuse to resume when the input is not the file this run started with."""
        recorded = self.get_meta("input_sha256")
        if recorded is None:
            raise ResumeError(f"{self.path.parent}: no run to resume there (empty ledger)")
        if recorded != sha256:
            raise ResumeError(
                f"the input file changed since this run started (sha256 {recorded[:12]}… then, "
                f"{sha256[:12]}… now); start a new run with another --out instead of --resume"
            )

    # --- rows -----------------------------------------------------------------------------

    def finished(self) -> dict[int, RowResult]:
        """The rows that already ended in success (never sent again on resume)."""
        placeholders = ",".join("?" for _ in FINAL_SUCCESS)
        cur = self._db.execute(
            "SELECT number, event_id, state, status, error_code, error_message, changed_fields,"
            " attempts, request_id, client_request_id, last_error"
            f" FROM rows WHERE state IN ({placeholders})",
            tuple(FINAL_SUCCESS),
        )
        return {r[0]: _row_result(r) for r in cur}

    def mark_in_flight(self, numbers: Iterable[tuple[int, str]]) -> None:
        """Record that these rows are being sent (committed with the next answer)."""
        self._begin()
        self._db.executemany(
            "INSERT INTO rows(number, event_id, state) VALUES(?, ?, 'in_flight') "
            "ON CONFLICT(number) DO UPDATE SET state = 'in_flight', event_id = excluded.event_id",
            list(numbers),
        )

    def record(self, results: Iterable[RowResult]) -> None:
        """Store final (or not-yet-final) outcomes; the caller commits."""
        self._begin()
        self._db.executemany(
            "INSERT INTO rows(number, event_id, state, status, error_code, error_message,"
            " changed_fields, attempts, request_id, client_request_id, last_error)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(number) DO UPDATE SET"
            " event_id=excluded.event_id, state=excluded.state, status=excluded.status,"
            " error_code=excluded.error_code, error_message=excluded.error_message,"
            " changed_fields=excluded.changed_fields, attempts=excluded.attempts,"
            " request_id=excluded.request_id, client_request_id=excluded.client_request_id,"
            " last_error=excluded.last_error",
            [
                (
                    r.number,
                    r.event_id,
                    r.outcome.value,
                    r.status,
                    r.error_code,
                    r.error_message,
                    ";".join(r.changed_fields),
                    r.attempts,
                    r.request_id,
                    r.client_request_id,
                    r.last_error,
                )
                for r in results
            ],
        )

    # --- before-images and caches -------------------------------------------------------------

    def save_before(
        self,
        number: int,
        event_id: str,
        body: Mapping[str, JSON],
        *,
        written: Mapping[str, JSON] | None = None,
        conflicts: Sequence[JSON] = (),
    ) -> None:
        """Keep a row's before-image, the body about to be sent, and the conflicts left alone.

        Committed with the next commit, which the caller makes before the request leaves:
        `revert` checks against `written`, and `--resume` sends it again (`written`).
        `conflicts` is JSON (`batch.changes.conflicts_to_json`).
        """
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO before(number, event_id, body, written, conflicts)"
            " VALUES(?, ?, ?, ?, ?)",
            (
                number,
                event_id,
                json.dumps(body, ensure_ascii=False),
                None if written is None else json.dumps(written, ensure_ascii=False),
                json.dumps(list(conflicts), ensure_ascii=False) if conflicts else None,
            ),
        )

    def written(self, number: int) -> Written | None:
        """What `save_before` kept of the body sent for row `number`; None if it kept none."""
        row = self._db.execute(
            "SELECT written, conflicts FROM before WHERE number = ? AND written IS NOT NULL",
            (number,),
        ).fetchone()
        if row is None:
            return None
        return Written(dict(json.loads(row[0])), [] if row[1] is None else json.loads(row[1]))

    def before_image(self, number: int) -> dict[str, JSON] | None:
        """One row's stored before-image, or None."""
        row = self._db.execute("SELECT body FROM before WHERE number = ?", (number,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def before_images(self) -> Iterator[tuple[int, str, dict[str, JSON]]]:
        """Every stored before-image, in row order."""
        for number, event_id, body in self._db.execute(
            "SELECT number, event_id, body FROM before ORDER BY number"
        ):
            yield int(number), str(event_id), json.loads(body)

    def get_cache(self, key: str) -> Any:
        """A JSON value cached in the ledger (e.g. resolved ids), or None."""
        row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_cache(self, key: str, value: Any) -> None:
        """Cache a JSON value (committed at once)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO cache(key, value) VALUES(?, ?)", (key, json.dumps(value))
            )

    # --- the run's parts and timeline ---------------------------------------------------------

    def start_part(self, *, resumed: bool, write_limit: str) -> int:
        """Record that a process starts working on the run; returns its part number."""
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO parts(started, resumed, write_limit) VALUES(?, ?, ?)",
                (self._wall(), int(resumed), write_limit),
            )
        self._part = int(cur.lastrowid or 0)
        return self._part

    def end_part(self, exit_code: int) -> None:
        """Record how this process's part ended; exit 0 or 1 also marks the run finished."""
        with self._tx():
            if self._part is not None:
                self._db.execute(
                    "UPDATE parts SET ended = ?, exit_code = ? WHERE part = ?",
                    (self._wall(), exit_code, self._part),
                )
            if exit_code in (0, 1):
                # Every row has its final outcome: --resume has nothing left to do.
                finished = {"exit_code": exit_code, "at": self._wall()}
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                    (_FINISHED_KEY, json.dumps(finished)),
                )

    def finished_run(self) -> dict[str, Any] | None:
        """How the run ended (`exit_code`, `at`: Unix time), if it ran to the end.

        Recorded at its end, and only believed while no row is left to send: a row still
        pending, in flight or not attempted means a process died after the end was recorded
        (or the ledger was mended by hand), and then the run is resumable after all.
        """
        value = self.get_meta(_FINISHED_KEY)
        if value is None:
            return None
        (open_rows,) = self._db.execute(
            "SELECT count(*) FROM rows WHERE state IN ('pending', 'in_flight', ?)",
            (Outcome.NOT_ATTEMPTED.value,),
        ).fetchone()
        return None if open_rows else dict(json.loads(value))

    def note_throttled(self, answers: int = 1) -> None:
        """Count 429 answers in this second of the timeline (committed with the next commit)."""
        self._begin()
        self._db.execute(_TIMELINE_ADD, (int(self._wall()), 0, 0, answers))

    # --- the last window of sends -------------------------------------------------------------

    def keep_window(
        self, limiter: Limiter, *, resume: bool, wall: Callable[[], float] = time.time
    ) -> Carried | None:
        """Start `limiter` from the window an interrupted run left (`resume`), then journal it.

        Returns what was carried over (None when not resuming) and logs it in `run.log`. From
        here on every grant, refund and pause of `limiter` is committed to the ledger as it
        happens, for the next resume; so is what `limiter` already holds (the previous file of a
        `job run` sharing it), since Graph counts that too. `wall` is the wall clock (Unix
        seconds), for tests.
        """
        # Taken before the carry-over: those sends are in this ledger already.
        own = limiter.window()
        carried = None
        if resume:
            carried = self.recent_window(limiter.horizon, wall())
            writes = limiter.carry_over(carried)
            reads = sum(s.reads for s in carried.sends)
            pause = max(carried.pause_ends_in or 0.0, 0.0)
            still = f"; its 429 pause goes on {pause:.1f} s" if pause else ""
            log.info(
                "resumed: %d writes of the last %g s window carried over (and %d reads)%s",
                writes,
                limiter.write_rate.seconds,
                reads,
                still,
                extra={"writes": writes, "reads": reads, "paused_seconds": round(pause, 3)},
            )
        self._wall = wall
        journal = _WindowJournal(self, limiter.horizon, wall)
        journal.record(own)
        limiter.attach(journal)
        self._kept = (limiter, journal)
        return carried

    def recent_window(self, horizon: float, now: float) -> Carried:
        """The sends of the last `horizon` seconds before `now` (Unix time), and the pause gate."""
        cur = self._db.execute(
            "SELECT at, writes, reads FROM sends WHERE at > ? ORDER BY at", (now - horizon,)
        )
        sends = tuple(Sent(now - float(at), int(writes), int(reads)) for at, writes, reads in cur)
        gate = self.get_meta(_GATE_KEY)
        if gate is None:
            return Carried(sends=sends)
        data = json.loads(gate)
        return Carried(
            sends=sends,
            pause_ends_in=float(data["pause_until"]) - now,
            write_limit=int(data["write_limit"]),
        )

    # --- transactions ---------------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Make everything recorded so far durable."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def _tx(self) -> _Tx:
        return _Tx(self)

    def close(self) -> None:
        """Commit and close (and stop journaling the limiter, which may serve another run)."""
        if self._kept is not None:
            limiter, journal = self._kept
            limiter.detach(journal)
            self._kept = None
        self.commit()
        self._db.close()


class _WindowJournal:
    """The limiter's `Journal`: each grant is a committed row before its request leaves."""

    def __init__(self, ledger: Ledger, horizon: float, wall: Callable[[], float]) -> None:
        self._ledger = ledger
        self._db = ledger._db
        self._horizon = horizon
        self._wall = wall
        self._last: int | None = None  # rowid of the latest grant (what a refund amends)
        self._last_second = 0  # its second in the timeline
        self._since_prune = 0

    def record(self, window: Carried) -> None:
        """Keep a limiter's window as it stands (ages turned into Unix times)."""
        if not window.sends and window.pause_ends_in is None:
            return
        now = self._wall()
        self._ledger._begin()
        self._db.executemany(
            "INSERT INTO sends(at, writes, reads) VALUES(?, ?, ?)",
            [(now - s.ago, s.writes, s.reads) for s in window.sends],
        )
        self._ledger.commit()
        if window.pause_ends_in is not None and window.write_limit is not None:
            self.throttled(window.pause_ends_in, window.write_limit)

    def granted(self, writes: int, reads: int) -> None:
        now = self._wall()
        # Commits whatever else is open too (rows marked in flight): harmless, they were
        # meant to be committed with the next answer anyway.
        self._ledger._begin()
        cur = self._db.execute(
            "INSERT INTO sends(at, writes, reads) VALUES(?, ?, ?)", (now, writes, reads)
        )
        self._last = cur.lastrowid
        self._last_second = int(now)
        self._db.execute(_TIMELINE_ADD, (self._last_second, writes, reads, 0))
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self._since_prune = 0
            self._db.execute("DELETE FROM sends WHERE at <= ?", (now - self._horizon,))
        self._ledger.commit()

    def refunded(self, writes: int) -> None:
        if self._last is None:
            return
        self._ledger._begin()
        self._db.execute(
            "UPDATE sends SET writes = max(writes - ?, 0) WHERE rowid = ?", (writes, self._last)
        )
        self._db.execute(
            "UPDATE timeline SET writes = max(writes - ?, 0) WHERE second = ?",
            (writes, self._last_second),
        )
        self._ledger.commit()

    def throttled(self, paused_for: float, write_limit: int) -> None:
        now = self._wall()
        gate = {"pause_until": now + paused_for, "write_limit": write_limit}
        self._ledger.set_meta(**{_GATE_KEY: json.dumps(gate)})
        if paused_for <= 0:
            return  # a pause that already ended (a shared limiter's past): not this run's
        ends = now + paused_for
        with self._ledger._tx():
            # A pause still running is extended (more 429s of one burst), not a new one.
            last = self._db.execute(
                "SELECT rowid, ends FROM pauses ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
            if last is not None and float(last[1]) >= now:
                self._db.execute(
                    "UPDATE pauses SET ends = max(ends, ?) WHERE rowid = ?", (ends, last[0])
                )
            else:
                self._db.execute("INSERT INTO pauses(started, ends) VALUES(?, ?)", (now, ends))


class _Tx:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __enter__(self) -> None:
        self._ledger._begin()

    def __exit__(self, *exc: object) -> None:
        self._ledger.commit()


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _version(db: sqlite3.Connection) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


# Every row the run wrote, with its before-image and the body it sent, in row order. A conflict
# row with changed fields had its other fields written (field-level conflicts: batch.changes).
_WRITTEN_ROWS: Final = """
SELECT r.number, r.event_id, r.changed_fields, b.body, {written}
FROM rows AS r
LEFT JOIN before AS b ON b.number = r.number
{join}
WHERE r.state = 'updated'
   OR (r.state = 'conflict' AND COALESCE(r.changed_fields, '') != '')
ORDER BY r.number
"""


def written_rows(path: Path) -> Iterator[WrittenRow]:
    """Every row the run of the ledger at `path` wrote, in row order, read-only and streamed.

    Streamed because a million-row run cannot hold its rows in memory; read-only, with a
    version 0 file read as it is (module docstring). Raises `UsageError` when the file is no
    readable ledger.
    """
    try:
        with closing(_read_only(path)) as db:
            db.execute("SELECT 1 FROM rows LIMIT 1")
            if _version(db) >= 1:
                query = _WRITTEN_ROWS.format(written="b.written", join="")
                params: tuple[str, ...] = ()
            else:
                query = _WRITTEN_ROWS.format(
                    written="c.value", join="LEFT JOIN cache AS c ON c.key = ? || r.number"
                )
                params = (_OLD_WRITTEN,)
            for number, event_id, changed, before, written in db.execute(query, params):
                yield WrittenRow(
                    int(number),
                    str(event_id),
                    tuple(n for n in str(changed).split(";") if n),
                    None if before is None else json.loads(before),
                    None if written is None else json.loads(written),
                )
    except (sqlite3.Error, ValueError) as error:
        raise UsageError(f"{path}: cannot read the run's ledger ({error})") from None


def read_meta(path: Path, key: str) -> str | None:
    """One `meta` value of the ledger at `path`, read-only (None: no such value or ledger)."""
    try:
        with closing(_read_only(path)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def read_timeline(path: Path) -> TimelineRecord:
    """The timeline the ledger at `path` recorded, read-only; empty for a ledger without one."""
    try:
        with closing(_read_only(path)) as db:
            parts = [
                PartRecord(int(n), float(s), None if e is None else float(e), bool(r), x, str(w))
                for n, s, e, r, x, w in db.execute(
                    "SELECT part, started, ended, resumed, exit_code, write_limit"
                    " FROM parts ORDER BY part"
                )
            ]
            seconds = [
                SecondRecord(*map(int, row))
                for row in db.execute(
                    "SELECT second, writes, reads, throttled FROM timeline ORDER BY second"
                )
            ]
            pauses = [
                (float(a), float(b))
                for a, b in db.execute("SELECT started, ends FROM pauses ORDER BY started")
            ]
    except sqlite3.Error:
        # No ledger (a dry run), or one written before the timeline existed.
        return TimelineRecord()
    return TimelineRecord(parts, seconds, pauses)


def _row_result(r: tuple[Any, ...]) -> RowResult:
    return RowResult(
        number=int(r[0]),
        event_id=str(r[1]),
        outcome=Outcome(r[2]),
        status=None if r[3] is None else int(r[3]),
        error_code=str(r[4]),
        error_message=str(r[5]),
        changed_fields=tuple(f for f in str(r[6]).split(";") if f),
        attempts=int(r[7]),
        request_id=str(r[8]),
        client_request_id=str(r[9]),
        last_error=str(r[10]),
    )
