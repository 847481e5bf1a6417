"""Shared fixtures. The Graph emulator: `emulator_factory` (any config) and `emulator` (default)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batch.emulator import EmulatorConfig, EmulatorServer, EventStore

EMULATOR_TOKEN = "test-token"
EMULATOR_EVENTS = 50
EMULATOR_SEED = 2026

EmulatorFactory = Callable[..., EmulatorServer]


@pytest.fixture
def emulator_factory() -> Iterator[EmulatorFactory]:
    """Start emulators on free 127.0.0.1 ports; every one is stopped after the test.

    Call it as `emulator_factory(config)` or `emulator_factory(token="t", write_limit=...)`
    (fields of `EmulatorConfig`), with `store=` an `EventStore` or `events=N` seeded events.
    """
    servers: list[EmulatorServer] = []

    def start(
        config: EmulatorConfig | None = None,
        *,
        store: EventStore | None = None,
        events: int = 0,
        **fields: Any,
    ) -> EmulatorServer:
        if config is None:
            config = EmulatorConfig(**fields)
        elif fields:
            raise TypeError("pass either an EmulatorConfig or its fields, not both")
        if store is None:
            store = EventStore()
            store.seed(events, seed=EMULATOR_SEED)
        server = EmulatorServer(config, store=store)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(emulator_factory: EmulatorFactory) -> EmulatorServer:
    """An emulator with the default limits, static token "test-token" and 50 seeded events."""
    return emulator_factory(
        EmulatorConfig(token=EMULATOR_TOKEN, seed=EMULATOR_SEED), events=EMULATOR_EVENTS
    )
