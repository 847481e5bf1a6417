"""Running the emulator: in a background thread for tests and the demo, or in the foreground.

`EmulatorServer` binds its socket itself (port 0 picks a free port, known before the first
request), runs uvicorn on its own event loop in a daemon thread, and stops cleanly. Calls from
the test's thread that touch the state (`stats`, `reset`, app registration) run on the server's
loop, so they never race a request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

import uvicorn

from batch.emulator.app import ConnectionDropped, build_app
from batch.emulator.config import EmulatorConfig
from batch.emulator.devices import DeviceStore
from batch.emulator.oauth import DEFAULT_TENANT, WRITE_PERMISSION
from batch.emulator.state import EmulatorState
from batch.emulator.store import EventStore
from batch.emulator.tls import make_tls_files
from batch.errors import ConfigError
from batch.model import JSON

__all__ = ["EmulatorServer", "serve"]

T = TypeVar("T")
_START_TIMEOUT = 15.0


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging our deliberate dropped connections as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


class _Server(uvicorn.Server):
    """uvicorn's server, noticing `should_exit` within 10 ms instead of 100 ms (fast tests)."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


class EmulatorServer:
    """A Graph emulator on 127.0.0.1 in a background thread; use it as a context manager.

    >>> with EmulatorServer(EmulatorConfig(token="t")) as server:  # doctest: +SKIP
    ...     httpx.get(f"{server.url}/beta/deviceManagement/autopilotEvents",
    ...               headers={"Authorization": "Bearer t"})
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        store: EventStore | None = None,
        devices: DeviceStore | None = None,
    ):
        self.config = config or EmulatorConfig()
        self.store = store if store is not None else EventStore()
        self.devices = devices if devices is not None else DeviceStore()
        self.state = EmulatorState(self.config, self.store, devices=self.devices)
        self.url = ""
        self.ca_path: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._failure: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, start serving, and return once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        _install_log_filter()
        self.state.mark_initial()
        sock = _bind(self.config.host, self.config.port)
        try:
            ssl: dict[str, Any] = {}
            if self.config.tls:
                self._tmp = tempfile.TemporaryDirectory(prefix="autopilot-emulator-")
                files = make_tls_files(Path(self._tmp.name), self.config.ca_file)
                ssl = {"ssl_certfile": str(files.certfile), "ssl_keyfile": str(files.keyfile)}
                self.ca_path = files.ca_path
            config = uvicorn.Config(
                build_app(self.state),
                http="h11",
                ws="none",
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=3,
                **ssl,
            )
            self._server = _Server(config)
            port = sock.getsockname()[1]
            host = self.config.host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            elif ":" in host:
                host = f"[{host}]"
            self.url = f"{'https' if self.config.tls else 'http'}://{host}:{port}"
            self._thread = threading.Thread(
                target=self._run, args=(sock,), name=f"graph-emulator-{port}", daemon=True
            )
            self._thread.start()
        except BaseException:
            sock.close()
            self._cleanup()
            raise
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the emulator did not start: {self._failure or 'timeout'}")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by start(); the thread must not die loudly
            self._failure = error
        finally:
            sock.close()
            self._loop = None

    def stop(self) -> None:
        """Stop serving, wait for the thread, remove temporary files (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None
        self._server = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # --- state, safely from another thread ------------------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or not self.running:
            return fn()
        done: Future[T] = Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as error:
                done.set_exception(error)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=30)

    def add_events(self, events: Iterable[Mapping[str, JSON]]) -> int:
        """Add events while serving, without racing requests (`store.add` is for idle times)."""
        batch = list(events)
        return self._on_loop(lambda: sum(1 for event in batch if self.store.add(event)))

    def add_devices(self, devices: Iterable[Mapping[str, JSON]]) -> int:
        """Add device identities while serving, without racing requests."""
        batch = list(devices)
        return self._on_loop(lambda: sum(1 for device in batch if self.devices.add(device)))

    def skip_writes(self, entity_id: str, times: int = 1, *, resource: str = "devices") -> None:
        """Answer the next `times` successful writes of one entity (a device, or with
        `resource="events"` an event) as usual but leave them unapplied: the `--verify` hook
        for chosen entities (`EmulatorConfig.unapplied_writes` does it for every entity)."""
        if resource not in ("events", "devices"):
            raise ValueError(f"resource must be events or devices, not {resource!r}")
        self._on_loop(lambda: self.state.skip_writes(resource, entity_id, times))

    def stats(self) -> dict[str, JSON]:
        """The counters of `GET /_emulator/stats`."""
        return self._on_loop(self.state.stats_dict)

    def background_writes(self, app: str, writes: int = 1) -> None:
        """Another app of the default tenant writes `writes` times now, and always gets through.

        Load for a shared-budget test: the writes use `app`'s and the tenant's budgets and count
        in `stats()["apps"][app]`, but they are no requests (no latency, no faults, never
        refused), so the app takes exactly its share and the client under test gets what is left.
        """

        def consume() -> None:
            for _ in range(writes):
                self.state.throttle.consume(app, DEFAULT_TENANT, write=True)
            self.state.stats.app(app).writes += writes

        self._on_loop(consume)

    def reset(self, *, store: bool = False) -> None:
        """Clear counters and throttle state; with `store`, restore the events at start."""
        self._on_loop(lambda: self.state.reset(store=store))

    def register_app(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        certificate_pem: str | bytes | None = None,
        tenant: str | None = None,
        roles: Sequence[str] = (WRITE_PERMISSION,),
    ) -> None:
        """Register an OAuth client (secret and/or certificate); see `IdentityProvider`."""
        self._on_loop(
            lambda: self.state.identity.register_app(
                client_id,
                secret=secret,
                certificate_pem=certificate_pem,
                tenant=tenant,
                roles=roles,
            )
        )

    def disable_app(self, client_id: str) -> None:
        """Refuse new and existing tokens of this app (401), like a disabled app registration."""
        self._on_loop(lambda: self.state.identity.disable_app(client_id))

    def enable_app(self, client_id: str) -> None:
        """Undo `disable_app`."""
        self._on_loop(lambda: self.state.identity.enable_app(client_id))


def serve(
    config: EmulatorConfig,
    *,
    store: EventStore | None = None,
    devices: DeviceStore | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM, printing where to connect."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmulatorServer(config, store=store, devices=devices) as server:
            _describe(server, echo)
            while not stop.wait(0.5):
                if not server.running:
                    raise ConfigError("the emulator stopped unexpectedly")
        echo("Graph emulator stopped.")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe(server: EmulatorServer, echo: Callable[[str], None]) -> None:
    config = server.config
    count = len(server.store)
    tenant = f"{count} event{'' if count == 1 else 's'}"
    if len(server.devices):
        tenant += f", {len(server.devices)} device{'' if len(server.devices) == 1 else 's'}"
    echo(f"Graph emulator listening on {server.url}  ({tenant})")
    echo(f"Graph root: {server.url}   (autopilot-batch ... --graph-url {server.url})")
    if server.ca_path is not None:
        echo(f"CA certificate: {server.ca_path}")
        echo(
            f"Authority host: {server.url}   (token endpoint {server.url}/TENANT/oauth2/v2.0/token)"
        )
    if config.token:
        echo("Auth: the static token given with --token (GRAPH_ACCESS_TOKEN)")
    elif config.apps:
        apps = ", ".join(client_id for client_id, _ in config.apps)
        echo(f"Auth: OAuth client credentials for app(s) {apps}")
    else:
        echo("Auth: any bearer token is accepted (each distinct token is a separate app)")
    echo(
        f"Limits: writes {config.write_limit} per app, {config.tenant_write_limit} per tenant; "
        f"requests {config.read_limit} per app, {config.tenant_read_limit} per tenant"
    )
    if len(server.devices):
        echo(
            f"Device writes: {config.device_write_limit} per app, "
            f"{config.device_tenant_write_limit} per tenant (Intune enrollment service)"
        )
    echo(f"Answers: {_wire_summary(config)}")
    echo("Stats: GET /_emulator/stats    Press Ctrl-C to stop.")


def _wire_summary(config: EmulatorConfig) -> str:
    """One line naming the profile and how each wire detail is set (what a rehearsal meets)."""
    top = f"pages of {config.page_size}" + (" ($top capped)" if config.cap_top else "")
    details = [
        f"PATCH {config.patch_status}",
        f"{config.schema} schema",
        f"{config.error_style} errors",
        top,
        f"{config.batch_refusal}-batch refusals",
        f"Retry-After {config.retry_after_format}",
        "split write/read throttles" if config.split_throttles else "one throttle per app",
    ]
    if config.deny_permission != "none":
        details.append(f"401 for missing rights on {config.deny_permission}")
    return f"{config.profile or 'custom'} profile: " + ", ".join(details)
