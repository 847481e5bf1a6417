"""Everything one emulator remembers: the store, the throttle, identities, faults, counters."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from batch.emulator.config import EmulatorConfig
from batch.emulator.devices import DeviceStore
from batch.emulator.faults import Fault, FaultPlan
from batch.emulator.oauth import IdentityProvider
from batch.emulator.store import EventStore
from batch.emulator.throttle import Throttle
from batch.model import JSON

__all__ = ["AppStats", "EmulatorState", "Stats"]


@dataclass(slots=True)
class AppStats:
    """One app's share of the throttle's counters (see `Stats`): two apps of one tenant, one
    of them the client under test, are told apart by these."""

    reads: int = 0
    writes: int = 0
    throttled: int = 0
    during_retry_after: int = 0

    def as_dict(self) -> dict[str, JSON]:
        """A JSON-ready copy."""
        return {
            "reads": self.reads,
            "writes": self.writes,
            "throttled": self.throttled,
            "during_retry_after": self.during_retry_after,
        }


@dataclass(slots=True)
class Stats:
    """Counters served at `GET /_emulator/stats`.

    `requests` counts HTTP requests to Graph routes (a `$batch` envelope once); `reads` and
    `writes` count operations the throttle admitted (single requests and batch items, whatever
    their answer); `throttled` counts 429 answers (items included); `during_retry_after` counts
    requests that arrived while their app's Retry-After was running (after the in-flight grace);
    `patches` counts successful PATCHes per event id; `denied` counts answers of Intune's 401
    for a missing permission (`deny_permission`); `faults` counts injected faults by kind, and
    `faults_applied` the dropped connections whose request was carried out before the drop.
    `apps` splits reads, writes, throttled and during_retry_after by app (in open mode every
    bearer token names an app, so a test can play a second app sharing the tenant).
    `device_writes` counts successful updateDeviceProperties POSTs per device id (applied or
    not); `unapplied` counts writes answered as success but not applied (`unapplied_writes`,
    `skip_writes`).
    """

    requests: int = 0
    reads: int = 0
    writes: int = 0
    throttled: int = 0
    during_retry_after: int = 0
    batches: int = 0
    batch_items: int = 0
    denied: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    faults_applied: int = 0
    apps: dict[str, AppStats] = field(default_factory=dict)
    patches: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    device_writes: Counter[str] = field(default_factory=Counter)
    unapplied: int = 0

    def as_dict(self) -> dict[str, JSON]:
        """A JSON-ready copy."""
        return {
            "requests": self.requests,
            "reads": self.reads,
            "writes": self.writes,
            "throttled": self.throttled,
            "during_retry_after": self.during_retry_after,
            "batches": self.batches,
            "batch_items": self.batch_items,
            "denied": self.denied,
            "faults": {kind.value: self.faults[kind.value] for kind in Fault},
            "faults_applied": self.faults_applied,
            "apps": {app: counts.as_dict() for app, counts in sorted(self.apps.items())},
            "patches": dict(self.patches),
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "device_writes": dict(self.device_writes),
            "unapplied": self.unapplied,
        }

    def app(self, app: str) -> AppStats:
        """The counters of `app` (created at its first request)."""
        counts = self.apps.get(app)
        if counts is None:
            counts = self.apps[app] = AppStats()
        return counts


class EmulatorState:
    """The mutable heart of one emulator; only the server's event loop touches it."""

    def __init__(
        self,
        config: EmulatorConfig,
        store: EventStore,
        *,
        devices: DeviceStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.devices = devices if devices is not None else DeviceStore()
        self.throttle = Throttle(
            write_limit=config.write_limit,
            tenant_write_limit=config.tenant_write_limit,
            read_limit=config.read_limit,
            tenant_read_limit=config.tenant_read_limit,
            retry_after_format=config.retry_after_format,
            retry_after_grace=config.retry_after_grace,
            split=config.split_throttles,
            seed=config.seed,
            clock=clock,
            services={
                "devices": (
                    config.device_write_limit,
                    config.device_tenant_write_limit,
                    config.read_limit,
                    config.tenant_read_limit,
                )
            },
        )
        self.identity = IdentityProvider(token_ttl=config.token_ttl, static_token=config.token)
        for client_id, secret in config.apps:
            self.identity.register_app(client_id, secret=secret)
        self.faults = FaultPlan(
            config.fault_rate,
            config.seed,
            mix=config.fault_mix,
            drop_applied=config.drop_applied,
        )
        self.shuffle = self._shuffle_rng()
        self.stats = Stats()
        self._initial = store.snapshot()
        self._initial_devices = self.devices.snapshot()
        # Successful writes per entity ("devices:<folded id>") and writes still to leave
        # unapplied per entity (`skip_writes`): the `unapplied_writes` hook.
        self._written: Counter[str] = Counter()
        self._skips: Counter[str] = Counter()

    def _shuffle_rng(self) -> random.Random:
        seed = self.config.seed
        return random.Random(None if seed is None else f"shuffle:{seed}")

    def mark_initial(self) -> None:
        """Remember the stores as they are now, as the state `reset(store=True)` returns to."""
        self._initial = self.store.snapshot()
        self._initial_devices = self.devices.snapshot()

    def skip_writes(self, resource: str, entity_id: str, times: int = 1) -> None:
        """Answer the next `times` successful writes of this entity without applying them."""
        self._skips[f"{resource}:{entity_id.casefold()}"] += times

    def applies(self, resource: str, entity_id: str) -> bool:
        """Whether this successful write is applied (False: the `--verify` test hooks).

        Called once per accepted write; the first `unapplied_writes` of every entity, and
        those asked for with `skip_writes`, are not applied.
        """
        key = f"{resource}:{entity_id.casefold()}"
        seen = self._written[key]
        self._written[key] += 1
        if self._skips[key] > 0:
            self._skips[key] -= 1
        elif seen >= self.config.unapplied_writes:
            return True
        self.stats.unapplied += 1
        return False

    def reset(self, *, store: bool = False) -> None:
        """Clear counters and throttle state; restart the seeded sequences (faults, shuffle,
        Retry-After forms).

        With `store`, the events and devices return to what they were when the server started
        (and the `unapplied_writes` counts start again); app registrations and disabled apps
        are kept.
        """
        self.stats = Stats()
        self.throttle.reset()
        self.faults.reset()
        self.shuffle = self._shuffle_rng()
        if store:
            self.store.restore(self._initial)
            self.devices.restore(self._initial_devices)
            self._written.clear()
            self._skips.clear()

    def stats_dict(self) -> dict[str, JSON]:
        """The counters plus the store's size and digest."""
        out = self.stats.as_dict()
        out["events"] = len(self.store)
        out["digest"] = self.store.digest()
        out["devices"] = len(self.devices)
        out["devices_digest"] = self.devices.digest()
        return out
