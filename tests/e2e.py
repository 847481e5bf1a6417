"""Helpers for end-to-end tests: input files for seeded emulator events, and the real CLI."""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from batch.cli import app
from batch.emulator import EmulatorConfig, EmulatorServer, EventStore
from batch.model import JSON, Rate
from batch.schema import PROPERTIES, coerce_text
from tests.conftest import EmulatorFactory

TOKEN = "test-token"

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
    token: str | None = TOKEN,
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


def cli_here(*args: str | Path, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """The CLI in this process: `cli` starts a new Python (seconds on a busy box) each time."""
    env: dict[str, str | None] = {"GRAPH_ACCESS_TOKEN": token, "AZURE_CLIENT_ID": None}
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        # The command points the `batch` loggers at the runner's stderr: undo that.
        root = logging.getLogger("batch")
        for handler in list(root.handlers):
            if getattr(handler, "_batch_console", False):
                root.removeHandler(handler)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def start_cli(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start `python -m batch ARGS` with exactly `env`, without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )


def emulator_config(seed: int, **fields: Any) -> EmulatorConfig:
    """Token "test-token" and limits roomy enough for a 200/1 tool; `fields` override them."""
    limits: dict[str, Any] = {
        "write_limit": Rate(200, 1),
        "tenant_write_limit": Rate(400, 1),
        "read_limit": Rate(2000, 1),
        "tenant_read_limit": Rate(4000, 1),
    }
    return EmulatorConfig(token=TOKEN, seed=seed, **(limits | fields))


def seeded_emulator(
    factory: EmulatorFactory, n: int, seed: int
) -> tuple[EmulatorServer, list[str]]:
    """An emulator (`emulator_config(seed)`) holding `n` seeded events, and their ids."""
    store = EventStore()
    ids = store.seed(n, seed=seed)
    return factory(emulator_config(seed), store=store), ids


def powershell_timespan(iso: str) -> str:
    """`PT53M9.7081011S` as PowerShell prints it: `00:53:09.7081011`."""
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)(?:\.(\d+))?S)?", iso)
    assert m, iso
    hours, minutes, seconds = (int(g or 0) for g in m.groups()[:3])
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}" + (f".{m[4]}" if m[4] else "")


def in_utc(stamp: str) -> str:
    """The same instant written in UTC (`Z`), ticks kept."""
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    assert m, stamp
    offset = "+00:00" if m[3] == "Z" else m[3]
    utc = dt.datetime.fromisoformat(m[1] + offset).astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}" + (f".{m[2]}" if m[2] else "") + "Z"


def make_certificate(
    common_name: str = "autopilot-batch test",
    *,
    key: rsa.RSAPrivateKey | None = None,
    issuer: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
    valid_days: int = 30,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and a certificate for it (self-signed unless `issuer` is given)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=valid_days))
        .sign(signer_key, hashes.SHA256())
    )
    return key, cert
