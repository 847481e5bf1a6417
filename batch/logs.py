"""Logging: human lines on stderr, JSON lines in the run folder's `run.log`.

The console leaves out the info records of `batch.events` (429s, retries, pauses: see
`batch.runlog`); they are for `run.log`, and the progress line already shows what they add up to.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Final

__all__ = ["JsonLinesHandler", "setup_console"]

_EVENTS: Final = "batch.events"

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged too.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = repr(record.exc_info[1])
        return json.dumps(line, ensure_ascii=False, default=str)


class JsonLinesHandler(logging.FileHandler):
    """Appends one JSON object per record to a file (flushed per record by FileHandler)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.setFormatter(_JsonFormatter())


def _not_file_only(record: logging.LogRecord) -> bool:
    """Keep `batch.events` info records (run.log's events) off the console."""
    return record.levelno >= logging.WARNING or not record.name.startswith(_EVENTS)


def setup_console(*, quiet: bool) -> None:
    """Send the `batch` loggers to stderr: info and up, or only errors with `--quiet`."""
    root = logging.getLogger("batch")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for handler in list(root.handlers):
        if getattr(handler, "_batch_console", False):
            root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(_not_file_only)
    console._batch_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
