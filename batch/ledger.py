"""The run ledger (`state.sqlite`): the input digest, the options, and every row's state.

It is what `--resume` continues from. SQLite in WAL mode; every answer from Graph is committed in a
small transaction, so a `kill -9` loses at most the answers to requests still in flight. Those rows
are still `pending`/`in_flight` on resume and are sent again (PATCH is idempotent).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from batch.errors import ResumeError
from batch.model import JSON, Outcome, RowResult

__all__ = ["FINAL_SUCCESS", "Ledger"]

# Rows in these states are never sent again by `--resume`.
FINAL_SUCCESS: Final = frozenset({Outcome.UPDATED.value, Outcome.UNCHANGED.value})

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
        """Commit and close."""
        self.commit()
        self._db.close()


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
