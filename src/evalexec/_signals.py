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

__all__ = ["termination_handler"]


@contextmanager
def termination_handler(signum: int | None, on_first_signal: Callable[[], None]) -> Iterator[bool]:
    """Call `on_first_signal` on the first `signum`; raise KeyboardInterrupt on the next.

    Yields whether a handler was installed (never off the main thread, never when
    `signum` is None).
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

    previous = signal.signal(signum, handler)
    try:
        yield True
    finally:
        if signal.getsignal(signum) is handler:
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
