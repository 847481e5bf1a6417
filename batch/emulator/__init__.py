"""A local Microsoft Graph emulator for Autopilot (`autopilot-batch emulator`).

It speaks the wire format of GRAPH.md: GET (one and list with paging), PATCH, `$batch`, Graph's
error body and request ids, 429 with Retry-After from per-app and per-tenant sliding windows,
faults (503, 504, dropped connections), schema checks, and an OAuth token endpoint that MSAL can
use over TLS. Tests, the demo and the benchmarks run against it.

Two profiles (`EmulatorConfig.friendly()` / `EmulatorConfig.realistic()`, `--profile`): the
realistic one answers as Intune really does (204 PATCH, current schema, Intune's error envelope,
pages of 50, whole-batch 400s, 429s without Retry-After or with decimal and list forms, separate
write and read throttles, `client-request-id` always); see `config`. The field defaults are still
the friendly profile's.

It also serves Autopilot device identities (issue 16; `devices`, `DeviceStore`): list, get, the
`updateDeviceProperties` action, Intune's refusal of a PATCH, their own throttling budgets.

Modules: `config` (EmulatorConfig), `store` (events), `devices` (device identities),
`throttle` (sliding logs), `faults`, `oauth` (identity platform and bearer checks), `wire`
(Graph conventions), `graph_api` (the operations), `app` (ASGI), `tls` (test CA), `server`
(EmulatorServer, serve).
"""

from batch.emulator.config import EmulatorConfig
from batch.emulator.devices import DeviceStore, demo_devices, generate_device
from batch.emulator.server import EmulatorServer, serve
from batch.emulator.store import EventStore, generate_event

__all__ = [
    "DeviceStore",
    "EmulatorConfig",
    "EmulatorServer",
    "EventStore",
    "demo_devices",
    "generate_device",
    "generate_event",
    "serve",
]
