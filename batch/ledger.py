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
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from batch.errors import ResumeError
from batch.limiter import Carried, Limiter, Sent
from batch.model import JSON, Outcome, RowResult

__all__ = ["FINAL_SUCCESS", "Ledger"]

log = logging.getLogger("batch.ledger")

# Rows in these states are never sent again by `--resume`.
FINAL_SUCCESS: Final = frozenset({Outcome.UPDATED.value, Outcome.UNCHANGED.value})

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
    client_request_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS before (
    number INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sends (  -- the last window of limiter grants (keep_window)
    at REAL NOT NULL,               -- Unix time the slots were granted
    writes INTEGER NOT NULL,        -- write items (each also counts as a request)
    reads INTEGER NOT NULL          -- read items
);
"""


class Ledger:
    """One run's durable state. Not thread-safe: one event loop thread owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we open and commit transactions ourselves, in small batches.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a process kill (not necessarily a power cut) and is fast.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._in_tx = False
        # The limiter whose grants this ledger journals, and its journal (keep_window).
        self._kept: tuple[Limiter, _WindowJournal] | None = None

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
            f" attempts, request_id, client_request_id FROM rows WHERE state IN ({placeholders})",
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
            " changed_fields, attempts, request_id, client_request_id)"
            " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(number) DO UPDATE SET"
            " event_id=excluded.event_id, state=excluded.state, status=excluded.status,"
            " error_code=excluded.error_code, error_message=excluded.error_message,"
            " changed_fields=excluded.changed_fields, attempts=excluded.attempts,"
            " request_id=excluded.request_id, client_request_id=excluded.client_request_id",
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
                )
                for r in results
            ],
        )

    # --- before-images and caches -------------------------------------------------------------

    def save_before(self, number: int, event_id: str, body: Mapping[str, JSON]) -> None:
        """Keep a row's before-image (committed with the next commit)."""
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO before(number, event_id, body) VALUES(?, ?, ?)",
            (number, event_id, json.dumps(body, ensure_ascii=False)),
        )

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
        self._ledger.commit()

    def throttled(self, paused_for: float, write_limit: int) -> None:
        gate = {"pause_until": self._wall() + paused_for, "write_limit": write_limit}
        self._ledger.set_meta(**{_GATE_KEY: json.dumps(gate)})


class _Tx:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __enter__(self) -> None:
        self._ledger._begin()

    def __exit__(self, *exc: object) -> None:
        self._ledger.commit()


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
    )
