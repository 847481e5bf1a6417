"""How one emulator instance behaves: limits, faults, auth, wire details (keyword-only, frozen)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from batch.errors import ConfigError
from batch.model import Rate

__all__ = [
    "GRAPH_READ_LIMIT",
    "GRAPH_TENANT_READ_LIMIT",
    "GRAPH_TENANT_WRITE_LIMIT",
    "GRAPH_WRITE_LIMIT",
    "RETRY_AFTER_FORMATS",
    "SCHEMAS",
    "EmulatorConfig",
]

RETRY_AFTER_FORMATS: Final = ("int", "decimal", "none")
SCHEMAS: Final = ("legacy", "current")

# Intune's documented service limits (GRAPH.md, "Throttling").
GRAPH_WRITE_LIMIT: Final = Rate(100, 20)
GRAPH_TENANT_WRITE_LIMIT: Final = Rate(200, 20)
GRAPH_READ_LIMIT: Final = Rate(1000, 20)
GRAPH_TENANT_READ_LIMIT: Final = Rate(2000, 20)


@dataclass(frozen=True, kw_only=True, slots=True)
class EmulatorConfig:
    """Everything that makes one emulator differ from another.

    The limits are Intune's documented service limits (GRAPH.md, "Throttling"): writes
    (PATCH/POST/PUT/DELETE, every `$batch` item counted, the envelope not) per app and per tenant,
    and any request (reads and writes) per app and per tenant. Scale the window down
    (`Rate(100, 2)`) to make tests fast without changing the shape of the behaviour.

    `token`: a static bearer token that is accepted (app "static"). Without it, and with no OAuth
    app registered, any non-empty bearer is accepted and its text names the app, so a test can
    play two writers with two tokens. `apps`: (client id, secret) pairs registered at start.

    `retry_after_grace`: a request that arrives less than this long after the 429 that started a
    Retry-After period was already in flight when the 429 was sent; it is answered 429 but not
    counted as "sent during Retry-After" in the stats.

    `schema`: "legacy" accepts the three properties of the older docs page besides the current
    ones; "current" treats them as unknown (400), as today's Graph may.
    """

    host: str = "127.0.0.1"
    port: int = 0
    write_limit: Rate = GRAPH_WRITE_LIMIT
    tenant_write_limit: Rate = GRAPH_TENANT_WRITE_LIMIT
    read_limit: Rate = GRAPH_READ_LIMIT
    tenant_read_limit: Rate = GRAPH_TENANT_READ_LIMIT
    latency_ms: int = 0
    fault_rate: float = 0.0
    seed: int | None = None
    token: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    token_ttl: float = 3600.0
    patch_status: Literal[200, 204] = 200
    retry_after_format: Literal["int", "decimal", "none"] = "int"
    schema: Literal["legacy", "current"] = "legacy"
    retry_after_grace: float = 0.2
    page_size: int = 100
    apps: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("write_limit", "tenant_write_limit", "read_limit", "tenant_read_limit"):
            if not isinstance(getattr(self, name), Rate):
                raise ConfigError(f"{name} must be a Rate such as Rate(100, 20)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not between 0 and 65535")
        if self.latency_ms < 0:
            raise ConfigError("the latency cannot be negative")
        if not (math.isfinite(self.fault_rate) and 0.0 <= self.fault_rate <= 1.0):
            raise ConfigError(f"fault rate {self.fault_rate} is not between 0 and 1")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the static token cannot be empty")
        if not (math.isfinite(self.token_ttl) and self.token_ttl > 0):
            raise ConfigError("the token lifetime must be a positive number of seconds")
        if self.patch_status not in (200, 204):
            raise ConfigError(f"patch_status must be 200 or 204, not {self.patch_status}")
        if self.retry_after_format not in RETRY_AFTER_FORMATS:
            raise ConfigError(
                f"retry_after_format must be one of {', '.join(RETRY_AFTER_FORMATS)}, "
                f"not {self.retry_after_format!r}"
            )
        if self.schema not in SCHEMAS:
            raise ConfigError(f"schema must be legacy or current, not {self.schema!r}")
        if not (math.isfinite(self.retry_after_grace) and self.retry_after_grace >= 0):
            raise ConfigError("retry_after_grace cannot be negative")
        if not 1 <= self.page_size <= 999:
            raise ConfigError(f"page_size {self.page_size} is not between 1 and 999")
        for client_id, secret in self.apps:
            if not client_id or not secret:
                raise ConfigError("an app needs a client id and a secret (CLIENT_ID=SECRET)")
