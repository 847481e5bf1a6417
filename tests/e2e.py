"""Helpers for end-to-end tests: input files for seeded emulator events, and the real CLI."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from batch.model import JSON
from batch.schema import PROPERTIES, coerce_text

# Columns a migration typically rewrites, with cell texts in the spellings admins paste.
UPDATE_COLUMNS = (
    "id",
    "Device Serial Number",
    "enrollmentState",
    "deploymentDuration",
    "eventDateTime",
    "userPrincipalName",
)


def update_rows(ids: Iterable[str], seed: int = 7) -> list[dict[str, str]]:
    """One update row per id: serial with leading zeros, odd-case enum, TimeSpan, offset date."""
    rng = random.Random(seed)
    rows = []
    for i, event_id in enumerate(ids):
        rows.append(
            {
                "id": event_id,
                "Device Serial Number": f"00{rng.randrange(10**8):08d}",
                "enrollmentState": rng.choice(["ENROLLED", "failed", "PendingReset", "blocked"]),
                "deploymentDuration": f"00:{rng.randrange(60):02d}:{rng.randrange(60):02d}.25",
                "eventDateTime": f"2026-0{1 + i % 9}-1{i % 10}T08:{i % 60:02d}:00+01:00",
                "userPrincipalName": f"user{i}@contoso.com",
            }
        )
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, str]], columns: Sequence[str] = ()) -> Path:
    """Write rows as a UTF-8 CSV with the given (or the first row's) columns."""
    columns = list(columns or rows[0].keys())
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a report CSV (UTF-8 with BOM)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


_HEADER_TO_PROPERTY = {"Device Serial Number": "deviceSerialNumber"}


def expected_body(row: Mapping[str, str]) -> dict[str, JSON]:
    """The wire values a row should leave in the tenant."""
    body: dict[str, JSON] = {}
    for header, text in row.items():
        name = _HEADER_TO_PROPERTY.get(header, header)
        if name == "id" or not text or name.startswith("_"):
            continue
        body[name] = coerce_text(PROPERTIES[name], text)
    return body


def cli(
    *args: str | Path,
    token: str | None = "test-token",
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m batch ARGS` as a real subprocess and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "batch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(token, env),
        cwd=cwd,
        check=False,
    )


def cli_env(token: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no stray Azure credentials, the given token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "GRAPH_"))}
    if token is not None:
        env["GRAPH_ACCESS_TOKEN"] = token
    env.update(extra or {})
    return env
