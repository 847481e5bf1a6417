"""Stop control: how a run hears Ctrl-C, SIGTERM and Ctrl-Break, on every platform.

One component owns both ways of hearing a stop request, behind one interface shaped like
`anyio.open_signal_receiver` (a context manager yielding an async iterator of signal numbers):

1. `anyio.open_signal_receiver` where the event loop supports it (POSIX).
2. Where it does not (asyncio on Windows raises `NotImplementedError`), `signal.signal` handlers
   for SIGINT (Ctrl-C, which would otherwise be a `KeyboardInterrupt` raised anywhere, even in
   the middle of a write), SIGBREAK (`CTRL_BREAK_EVENT`: Ctrl-Break, or what Task Scheduler's
   and a console's "stop" send to a process group) and SIGTERM where they exist. A handler only
   hands the number to the event loop (`call_soon_threadsafe`, which also wakes it); the run
   then stops as it does on POSIX: in-flight requests finish, reports flush, exit 130.

Members one platform lacks (SIGBREAK exists only on Windows; there SIGTERM exists but no other
process sends it) are looked up with `getattr`, so every module imports on either platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from types import FrameType
from typing import Any

import anyio

__all__ = ["open_stop_receiver", "signal_name", "signal_receiver", "stop_signals"]

_STOP_SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGBREAK")


def stop_signals() -> tuple[int, ...]:
    """The signals that ask a run to stop, of those this platform has."""
    found = (getattr(signal, name, None) for name in _STOP_SIGNAL_NAMES)
    return tuple(int(number) for number in found if number is not None)


def signal_name(signum: int) -> str:
    """`SIGINT`, `SIGTERM`, `SIGBREAK`; `signal N` for a number the platform has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def open_stop_receiver(*signals: int) -> Iterator[AsyncIterator[int]]:
    """The stop requests (`signals`, default `stop_signals()`) as an async iterator of numbers.

    Raises `ValueError`/`RuntimeError` outside the main thread (no signal can be watched there),
    as `anyio.open_signal_receiver` does; callers then watch nothing.
    """
    wanted = signals or stop_signals()
    with contextlib.ExitStack() as stack:
        try:
            received: AsyncIterator[int] = stack.enter_context(
                anyio.open_signal_receiver(*(signal.Signals(s) for s in wanted))
            )
        except NotImplementedError:
            received = stack.enter_context(_handled_signals(wanted))
        yield received


@contextlib.contextmanager
def _handled_signals(signals: tuple[int, ...]) -> Iterator[AsyncIterator[int]]:
    """The fallback: `signal.signal` handlers feeding a stream on the running asyncio loop."""
    loop = asyncio.get_running_loop()  # RuntimeError without one: the caller watches nothing
    send, receive = anyio.create_memory_object_stream[int](16)

    def deliver(signum: int) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            send.send_nowait(signum)

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: only hand the number to the loop.
        loop.call_soon_threadsafe(deliver, signum)

    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)  # ValueError off the main thread
        yield receive
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        send.close()
        receive.close()


#: Where a run takes SIGINT/SIGTERM/SIGBREAK from: the process's signals (`open_stop_receiver`),
#: or, when several runs share the process (`job run` over tenants), a hub handing each signal
#: to every run. (Also importable as `batch.engine.signal_receiver`.)
signal_receiver: ContextVar[Callable[..., Any]] = ContextVar(
    "signal_receiver", default=open_stop_receiver
)
