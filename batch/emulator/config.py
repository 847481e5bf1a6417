"""How one emulator instance behaves: limits, faults, auth, wire details (keyword-only, frozen).

Two profiles (issue 13):

* **friendly** (`EmulatorConfig.friendly()`, `--profile friendly`): PATCH answers 200 with the
  object, the legacy schema, Graph's plain error bodies, pages of 100 with `$top` up to 999, a
  bad `$batch` item fails alone, every 429 carries a whole-second Retry-After, one Retry-After
  period holds every request of the app, `client-request-id` is echoed only when sent.
* **realistic** (the field defaults; `EmulatorConfig.realistic()`, `--profile realistic`): what
  Intune does, as
  GRAPH.md ("How Intune really answers") records it — 204, the current schema, Intune's error
  envelope, pages of at most 50 (`$top` capped, not refused), whole-batch 400s, a seeded mix of
  Retry-After forms (some absent), separate write and read throttles, `client-request-id`
  always answered.

Decision: the profile is not a field. It is a named set of field values (`PROFILES`) applied by
`for_profile`, and every field can still be set on its own afterwards (the softening flags), so a
test says exactly which friendliness it needs. The field defaults are `REALISTIC`'s values (a
test in tests/test_emulator_realistic.py keeps them equal); `friendly()` applies `FRIENDLY`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Self

from batch.emulator.faults import DEFAULT_FAULT_MIX, Fault
from batch.errors import ConfigError
from batch.model import Rate

__all__ = [
    "GRAPH_READ_LIMIT",
    "GRAPH_TENANT_READ_LIMIT",
    "GRAPH_TENANT_WRITE_LIMIT",
    "GRAPH_WRITE_LIMIT",
    "PROFILES",
    "RETRY_AFTER_FORMATS",
    "SCHEMAS",
    "EmulatorConfig",
]

RETRY_AFTER_FORMATS: Final = ("int", "decimal", "list", "none", "mixed")
SCHEMAS: Final = ("legacy", "current")
ERROR_STYLES: Final = ("graph", "intune")
BATCH_REFUSALS: Final = ("item", "whole")
DENY_PERMISSION: Final = ("none", "writes", "all")

RetryAfterFormat = Literal["int", "decimal", "list", "none", "mixed"]

# The field values of each profile; the field defaults are REALISTIC's.
FRIENDLY: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "patch_status": 200,
        "schema": "legacy",
        "error_style": "graph",
        "page_size": 100,
        "cap_top": False,
        "batch_refusal": "item",
        "retry_after_format": "int",
        "split_throttles": False,
        "always_client_request_id": False,
        "device_select_fails": False,
    }
)
REALISTIC: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "patch_status": 204,
        "schema": "current",
        "error_style": "intune",
        "page_size": 50,
        "cap_top": True,
        "batch_refusal": "whole",
        "retry_after_format": "mixed",
        "split_throttles": True,
        "always_client_request_id": True,
        "device_select_fails": True,
    }
)
PROFILES: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {"friendly": FRIENDLY, "realistic": REALISTIC}
)

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
    ones; "current" treats them as unknown (400), as today's Graph does.

    Wire details (see the module docstring for the two profiles they make up):

    * `patch_status`: 200 with the updated object, or 204 No Content (Intune).
    * `error_style`: "graph" (plain `error.message`) or "intune" (the JSON document Intune puts
      in `error.message`, `ModelValidationFailure` for body problems; see `wire`).
    * `page_size`: events (or devices) per list page without `$top`; with `cap_top` it is also
      the most a page holds (a larger `$top` is served as `page_size`), else `$top` may go to 999.
    * `batch_refusal`: "item" fails only a `$batch` item with an absolute URL or a write without
      a body; "whole" refuses the whole batch with 400 "Invalid batch payload format.".
    * `retry_after_format`: "int", "decimal" (`2.128`), "list" (`30,120`), "none", or "mixed":
      a seeded draw per 429 (`throttle.MIXED_SHARES`: some without the header).
    * `split_throttles`: a write 429 holds only the app's writes (reads go on), as Graph
      documents; without it, one Retry-After period holds every request of the app.
    * `always_client_request_id`: answer `client-request-id` (equal to `request-id`) even when
      the client sent none.
    * `deny_permission`: "writes" or "all" answers those requests with Intune's 401 for a
      missing permission (`wire.permission_denied_body`); "none" (default) never does.

    Faults (`faults`): `fault_rate` of Graph requests meet one, of a kind drawn by the weights
    of `fault_mix` (("503", 2), ("504", 1), ("drop", 1) by default; `(("503", 1),)` gives 503s
    only). `fault_retry_after`: the Retry-After of a 503 in seconds (None: 1 s at Graph's 20 s
    window, scaled down with a shorter `write_limit` window). `drop_applied`: the share of
    dropped connections whose request was carried out (write applied, budget used) before the
    connection broke; the others break before anything happened.

    Autopilot device identities (issue 16; `devices`): `device_write_limit` and
    `device_tenant_write_limit` are the Intune enrollment service's write budgets (documented
    100 and 200 per 20 s, `batch.resources`), kept apart from the events' (another service);
    reads use `read_limit`/`tenant_read_limit`'s figures in the enrollment service's own logs.
    `device_select_fails`: `$select` on the device list or a device answers 500, as the real
    service does (realistic); off, it is served like the events' `$select` (friendly).

    `unapplied_writes` (a test hook for `--verify`, both resources): the first N successful
    writes of every entity are answered as usual (204, or 200 with the unchanged object) but
    not applied — microsoft-graph-docs#11620, a 204 that took effect only on the second call,
    is N = 1. `EmulatorServer.skip_writes` does the same for chosen entities only.
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
    # The wire details default to the realistic profile (REALISTIC): a rehearsal meets what
    # Intune answers. `friendly()` or a single field softens them for a test that needs it.
    patch_status: Literal[200, 204] = 204
    retry_after_format: RetryAfterFormat = "mixed"
    schema: Literal["legacy", "current"] = "current"
    retry_after_grace: float = 0.2
    page_size: int = 50
    apps: tuple[tuple[str, str], ...] = ()
    error_style: Literal["graph", "intune"] = "intune"
    cap_top: bool = True
    batch_refusal: Literal["item", "whole"] = "whole"
    split_throttles: bool = True
    always_client_request_id: bool = True
    deny_permission: Literal["none", "writes", "all"] = "none"
    fault_mix: tuple[tuple[str, float], ...] = DEFAULT_FAULT_MIX
    fault_retry_after: float | None = None
    drop_applied: float = 0.0
    device_write_limit: Rate = GRAPH_WRITE_LIMIT
    device_tenant_write_limit: Rate = GRAPH_TENANT_WRITE_LIMIT
    device_select_fails: bool = True
    unapplied_writes: int = 0

    @classmethod
    def for_profile(cls, profile: str, **fields: Any) -> Self:
        """A config with `profile`'s values ("friendly" or "realistic"), then `fields` on top."""
        values = PROFILES.get(profile)
        if values is None:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        return cls(**{**values, **fields})

    @classmethod
    def realistic(cls, **fields: Any) -> Self:
        """Intune as it really answers (GRAPH.md, "How Intune really answers"), plus `fields`."""
        return cls.for_profile("realistic", **fields)

    @classmethod
    def friendly(cls, **fields: Any) -> Self:
        """The forgiving emulator (200 PATCH, legacy schema, plain errors, ...), plus `fields`."""
        return cls.for_profile("friendly", **fields)

    def with_profile(self, profile: str) -> Self:
        """This config with `profile`'s wire values, every other field (limits, auth) kept."""
        values = PROFILES.get(profile)
        if values is None:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        return dataclasses.replace(self, **values)

    @property
    def profile(self) -> str | None:
        """The profile whose wire values this config has exactly, or None for a mix."""
        for name, values in PROFILES.items():
            if all(getattr(self, field) == value for field, value in values.items()):
                return name
        return None

    def __post_init__(self) -> None:
        for name in (
            "write_limit",
            "tenant_write_limit",
            "read_limit",
            "tenant_read_limit",
            "device_write_limit",
            "device_tenant_write_limit",
        ):
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
        for name, allowed in (
            ("error_style", ERROR_STYLES),
            ("batch_refusal", BATCH_REFUSALS),
            ("deny_permission", DENY_PERMISSION),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        kinds = {fault.value for fault in Fault}
        for kind, weight in self.fault_mix:
            if kind not in kinds:
                raise ConfigError(
                    f"fault kind must be one of {', '.join(sorted(kinds))}, not {kind!r}"
                )
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"the weight of fault {kind} must be a number ≥ 0")
        if self.fault_rate > 0 and not any(weight > 0 for _, weight in self.fault_mix):
            raise ConfigError("a fault rate needs at least one fault kind with a weight > 0")
        if self.fault_retry_after is not None and not (
            math.isfinite(self.fault_retry_after) and self.fault_retry_after >= 0
        ):
            raise ConfigError("fault_retry_after must be a number of seconds ≥ 0")
        if self.unapplied_writes < 0:
            raise ConfigError("unapplied_writes cannot be negative")
        if not (math.isfinite(self.drop_applied) and 0.0 <= self.drop_applied <= 1.0):
            raise ConfigError(f"drop_applied {self.drop_applied} is not between 0 and 1")
        for client_id, secret in self.apps:
            if not client_id or not secret:
                raise ConfigError("an app needs a client id and a secret (CLIENT_ID=SECRET)")
