"""autopilot-batch: bulk-update Windows Autopilot events in Intune through Microsoft Graph.

The names a library user or a job script needs, from one place (as httpx's `__init__` does)::

    from pathlib import Path

    import anyio
    import batch

    token = os.environ["GRAPH_ACCESS_TOKEN"]
    options = batch.RunOptions(
        source=batch.Source(file=Path("events.csv")),
        sending=batch.Sending(mode="single", write_limit=batch.Rate(100, 20)),
    )
    summary = anyio.run(lambda: batch.execute(options, tokens=batch.StaticTokenProvider(token)))

Everything else lives in its module (`batch.limiter`, `batch.graph`, `batch.jobs`, ...), each
with its own `__all__`; test doubles are in `batch.testing`. A test (`tests/
test_exported_members.py`) keeps this list honest: every name resolves, to the object its home
module exports.

Decision: the names load on first use (PEP 562 `__getattr__`), not at `import batch`: the CLI
imports this package for `__version__`, and `--help` must not pay for pandas, httpx and MSAL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batch.auth import StaticTokenProvider, TokenProvider, build_token_provider
    from batch.clouds import Endpoints, resolve_endpoints
    from batch.emulator import EmulatorConfig, EmulatorServer
    from batch.engine import RunSummary, default_out_dir, execute
    from batch.errors import (
        AuthError,
        BatchError,
        ConfigError,
        GraphError,
        InputFileError,
        Interrupted,
        LockHeld,
        PermissionDenied,
        ResumeError,
        RunAborted,
        UsageError,
    )
    from batch.export import ExportOptions, ExportResult, export_events
    from batch.graph import GraphClient
    from batch.jobs import check_job, load_job, run_job
    from batch.limiter import Clock, Limiter, SystemClock
    from batch.mapper import InputOptions, Prepared, prepare
    from batch.model import Invalid, Outcome, Problem, Rate, RawRow, RowResult, Skipped, Update
    from batch.options import Judging, RunOptions, Sending, Source, Target
    from batch.planner import batch_requests
    from batch.revert import RevertPlan

#: Each exported name → the module that defines (and exports) it.
_HOMES: Final = {
    "StaticTokenProvider": "batch.auth",
    "TokenProvider": "batch.auth",
    "build_token_provider": "batch.auth",
    "Endpoints": "batch.clouds",
    "resolve_endpoints": "batch.clouds",
    "EmulatorConfig": "batch.emulator",
    "EmulatorServer": "batch.emulator",
    "RunSummary": "batch.engine",
    "default_out_dir": "batch.engine",
    "execute": "batch.engine",
    "AuthError": "batch.errors",
    "BatchError": "batch.errors",
    "ConfigError": "batch.errors",
    "GraphError": "batch.errors",
    "InputFileError": "batch.errors",
    "Interrupted": "batch.errors",
    "LockHeld": "batch.errors",
    "PermissionDenied": "batch.errors",
    "ResumeError": "batch.errors",
    "RunAborted": "batch.errors",
    "UsageError": "batch.errors",
    "ExportOptions": "batch.export",
    "ExportResult": "batch.export",
    "export_events": "batch.export",
    "GraphClient": "batch.graph",
    "check_job": "batch.jobs",
    "load_job": "batch.jobs",
    "run_job": "batch.jobs",
    "Clock": "batch.limiter",
    "Limiter": "batch.limiter",
    "SystemClock": "batch.limiter",
    "InputOptions": "batch.mapper",
    "Prepared": "batch.mapper",
    "prepare": "batch.mapper",
    "Invalid": "batch.model",
    "Outcome": "batch.model",
    "Problem": "batch.model",
    "Rate": "batch.model",
    "RawRow": "batch.model",
    "RowResult": "batch.model",
    "Skipped": "batch.model",
    "Update": "batch.model",
    "Judging": "batch.options",
    "RunOptions": "batch.options",
    "Sending": "batch.options",
    "Source": "batch.options",
    "Target": "batch.options",
    "batch_requests": "batch.planner",
    "RevertPlan": "batch.revert",
}

__all__ = [
    "AuthError",
    "BatchError",
    "Clock",
    "ConfigError",
    "EmulatorConfig",
    "EmulatorServer",
    "Endpoints",
    "ExportOptions",
    "ExportResult",
    "GraphClient",
    "GraphError",
    "InputFileError",
    "InputOptions",
    "Interrupted",
    "Invalid",
    "Judging",
    "Limiter",
    "LockHeld",
    "Outcome",
    "PermissionDenied",
    "Prepared",
    "Problem",
    "Rate",
    "RawRow",
    "ResumeError",
    "RevertPlan",
    "RowResult",
    "RunAborted",
    "RunOptions",
    "RunSummary",
    "Sending",
    "Skipped",
    "Source",
    "StaticTokenProvider",
    "SystemClock",
    "Target",
    "TokenProvider",
    "Update",
    "UsageError",
    "__version__",
    "batch_requests",
    "build_token_provider",
    "check_job",
    "default_out_dir",
    "execute",
    "export_events",
    "load_job",
    "prepare",
    "resolve_endpoints",
    "run_job",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once loaded, later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
