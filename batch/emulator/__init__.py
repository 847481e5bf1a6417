"""A local Microsoft Graph emulator for autopilot events (`autopilot-batch emulator`).

It speaks the wire format of GRAPH.md: GET (one and list with paging), PATCH, `$batch`, Graph's
error body and request ids, 429 with Retry-After from per-app and per-tenant sliding windows,
faults (503, 504, dropped connections), schema checks, and an OAuth token endpoint that MSAL can
use over TLS. Tests, the demo and the benchmarks run against it.

Modules: `config` (EmulatorConfig), `store` (events), `throttle` (sliding logs), `faults`,
`oauth` (identity platform and bearer checks), `wire` (Graph conventions), `graph_api` (the
operations), `app` (ASGI), `tls` (test CA), `server` (EmulatorServer, serve).
"""

from batch.emulator.config import EmulatorConfig
from batch.emulator.server import EmulatorServer, serve
from batch.emulator.store import EventStore, generate_event

__all__ = ["EmulatorConfig", "EmulatorServer", "EventStore", "generate_event", "serve"]
