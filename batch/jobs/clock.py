"""Timestamps the job writes (lock records, state, reports)."""

import datetime as dt


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
