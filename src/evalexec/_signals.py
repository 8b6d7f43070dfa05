"""Termination-signal handling, modelled on `asyncio.Runner`.

Installed only on the main thread, for the duration of a run: the first signal asks
the run to stop gracefully, the second raises `KeyboardInterrupt` at once. The
previous handler is put back on every path, if the handler is still ours.

Runs that are live at the same time in one process (nested, or awaited side by side)
share one handler: a Ctrl-C stops all of them, the user is told once, and the next
Ctrl-C aborts. The handler that was there before the first of them comes back when
the last one ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["OnSignal", "handler_restored", "termination_handler"]

OnSignal = Callable[[bool], bool]
"""Called on the first signal with ``announce`` (True for the one run that tells the
user); returns True to raise `_Interrupted`-style control flow in the signalled frame
(a sequential sync run whose call is on the stack), which the caller supplies."""


class _Shared:
    """The one handler of a signal while evalexec runs are live, and those runs."""

    __slots__ = ("handler", "interrupt", "previous", "received", "runs")

    def __init__(self, previous: object) -> None:
        self.previous = previous  # the handler found before the first run installed ours
        self.runs: list[OnSignal] = []  # live runs, oldest first
        self.received = False  # the first signal came: the next one aborts
        self.interrupt: type[BaseException] | None = None
        self.handler: Callable[[int, FrameType | None], None] = self._handle

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        raise_in_frame = False
        # The newest run (the innermost of a nest) tells the user; every run stops.
        for position, on_signal in enumerate(reversed(list(self.runs))):
            raise_in_frame |= on_signal(position == 0)
        if raise_in_frame and self.interrupt is not None:
            raise self.interrupt


_installed: dict[int, _Shared] = {}
_lock = threading.Lock()


@contextmanager
def termination_handler(
    signum: int | None,
    on_first_signal: OnSignal,
    interrupt: type[BaseException] | None = None,
) -> Iterator[bool]:
    """Call `on_first_signal` on the first `signum`; raise KeyboardInterrupt on the next.

    Yields whether a handler was installed (never off the main thread, never when
    `signum` is None). When `on_first_signal` returns True, `interrupt` is raised in
    the frame the signal landed in.
    """
    if signum is None or threading.current_thread() is not threading.main_thread():
        yield False
        return
    with _lock:
        shared = _installed.get(signum)
        if shared is None or signal.getsignal(signum) is not shared.handler:
            shared = _Shared(signal.getsignal(signum))
            _installed[signum] = shared
            signal.signal(signum, shared.handler)
        if interrupt is not None:
            shared.interrupt = interrupt
        shared.runs.append(on_first_signal)
    try:
        yield True
    finally:
        with _lock:
            shared.runs.remove(on_first_signal)
            if not shared.runs:
                if _installed.get(signum) is shared:
                    del _installed[signum]
                if signal.getsignal(signum) is shared.handler:
                    previous = shared.previous
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
