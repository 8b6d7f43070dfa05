"""Termination-signal handling, modelled on `asyncio.Runner`.

Installed only on the main thread, for the duration of a run: the first signal asks
the run to stop gracefully, the second raises `KeyboardInterrupt` at once. The
previous handler is put back on every path, if the handler is still ours.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["handler_restored", "termination_handler"]


class _Installed:
    """One handler installed by a run; `alive` until that run ends."""

    __slots__ = ("alive", "previous")

    def __init__(self, previous: object) -> None:
        self.previous = previous
        self.alive = True


def _record(handler: object) -> _Installed | None:
    record = getattr(handler, "_evalexec_installed", None)
    return record if isinstance(record, _Installed) else None


@contextmanager
def termination_handler(signum: int | None, on_first_signal: Callable[[], None]) -> Iterator[bool]:
    """Call `on_first_signal` on the first `signum`; raise KeyboardInterrupt on the next.

    Yields whether a handler was installed (never off the main thread, never when
    `signum` is None). Runs may nest (two executors awaited side by side): each
    restores, when it ends, the nearest handler below it whose run is still going, or
    the one that was there before any of them.
    """
    if signum is None or threading.current_thread() is not threading.main_thread():
        yield False
        return

    received = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if received:
            raise KeyboardInterrupt
        received = True
        on_first_signal()

    record = _Installed(signal.getsignal(signum))
    handler._evalexec_installed = record  # type: ignore[attr-defined]
    signal.signal(signum, handler)
    try:
        yield True
    finally:
        record.alive = False
        if signal.getsignal(signum) is handler:
            previous = record.previous
            while (below := _record(previous)) is not None and not below.alive:
                previous = below.previous
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]


@contextmanager
def handler_restored(signum: int | None) -> Iterator[None]:
    """Put back, on leaving, the handler of `signum` found on entry (main thread only).

    `asyncio.run` installs its own SIGINT handler when it finds the default one, and
    leaves it behind when a KeyboardInterrupt escapes the loop while ours is on top;
    wrapping `asyncio.run` in this undoes that on every path.
    """
    if signum is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signum)
    try:
        yield
    finally:
        if before is not None and signal.getsignal(signum) is not before:
            signal.signal(signum, before)
