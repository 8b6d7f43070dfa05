"""Notice a call that holds the event loop, and say once per run how to fix it.

A blocking call inside ``async def`` (``time.sleep``, a sync HTTP client) runs on the
event loop's thread: while it blocks, no other call makes progress and a Ctrl-C is only
seen when it returns. Nothing fails, so the user never learns why the run is slow.

How it is noticed: an attempt's coroutine is wrapped in `_Timed`, which times each step
of it (each ``send``/``throw`` the task makes) on the real clock (`time.perf_counter`:
under virtual time the loop's clock is fake, a blocked thread is not). A step is the
function's own code between two awaits, so a long one is the function's doing, never
the machine's load: a healthy step takes microseconds, and a loaded machine would have
to pause the process for 100 ms inside one of them to be mistaken for a blocking call.
(A heartbeat timer on the loop, the other way, reads every pause of a loaded machine
between two beats as a stall, and wakes the loop all run long.)

One held step is not enough: a first call that loads something once (a lazy import, a
tokenizer) holds the loop once, and the fix the warning names would not apply to it. A
blocking call holds it on every call, so the run warns at its second held step.

Cost: only the attempts of `SAMPLE_SIZE` inputs in every `SAMPLE_PERIOD` are timed
(inputs 0, 1, 32, 33, ...: the engine tests the index), and none once the run has
warned. Timing every attempt would add about 8% to the engine's cost per call (bench
``overhead``); a function that blocks does so on most of its calls, so the sample finds
it at once.

A step may also run the loop itself: after ``nest_asyncio.apply()``, an ``asyncio.run``
inside the function runs the same loop, and other calls go on meanwhile. On such a
patched loop a timed step leaves a callback on the loop as it starts; if it ran before
the step ended, the loop turned, and the step held nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from time import perf_counter
from types import CoroutineType
from typing import Any

__all__ = ["HELD_SECONDS", "SAMPLE_PERIOD", "SAMPLE_SIZE", "Watchdog"]

logger = logging.getLogger("evalexec")

# A step of the function that runs longer than this on the real clock held the loop.
# Far above any step of a coroutine that only awaits (microseconds).
HELD_SECONDS = 0.1
# The inputs whose attempts are timed: those whose index modulo SAMPLE_PERIOD is below
# SAMPLE_SIZE (two in a row, so that even a run of two inputs can confirm a first held
# step; one in sixteen in all).
SAMPLE_PERIOD = 32
SAMPLE_SIZE = 2


class Watchdog:
    """One run's watch over its attempts: warns the second time a step holds the loop."""

    __slots__ = ("_function", "_held", "_loop", "_reentrant", "armed")

    def __init__(self, function: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> None:
        self._function = function  # named in the warning
        self._loop = loop
        # Only a loop patched by nest_asyncio can run inside one of its own steps.
        self._reentrant = bool(getattr(loop, "_nest_patched", False))
        self._held = 0  # steps of the run that held the loop (timed ones)
        self.armed = True  # False once the run has warned

    def watch(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        """`awaitable`, timed step by step if it is a coroutine and the run has not
        warned yet."""
        if self.armed and type(awaitable) is CoroutineType:
            return _Timed(awaitable, self)
        return awaitable

    def step_begins(self) -> list[bool] | None:
        """On a re-entrant loop, a flag the loop sets as soon as it turns."""
        if not self._reentrant:
            return None
        turned = [False]
        self._loop.call_soon(turned.__setitem__, 0, True)
        return turned

    def step_ended(self, seconds: float, turned: list[bool] | None) -> None:
        """A step took `seconds`: if that held the loop a second time, warn (once per run)."""
        if seconds <= HELD_SECONDS or not self.armed or (turned is not None and turned[0]):
            return
        self._held += 1
        if self._held < 2:
            return
        self.armed = False
        fn = self._function
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        logger.warning(
            "evalexec: a call to %s held the event loop for %.2f s without awaiting "
            "(a blocking call inside `async def`, such as time.sleep or a sync client); "
            "meanwhile no other call ran and Ctrl-C had to wait. Use an async client "
            "(e.g. openai.AsyncOpenAI) and await it, or pass the plain function to "
            "SyncExecutor(fn, concurrency=N), which runs it on threads.",
            name,
            seconds,
        )


class _Timed:
    """A coroutine, awaited through this object so that each of its steps is timed.

    ``await`` delegates to it as to any iterator: the task's ``send(None)`` arrives as
    `__next__`, a cancellation as `throw`, a close as `close`.
    """

    __slots__ = ("_coro", "_watchdog")

    def __init__(self, coro: Coroutine[Any, Any, Any], watchdog: Watchdog) -> None:
        self._coro = coro
        self._watchdog = watchdog

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]  # an iterator with send/throw/close

    def __next__(self) -> Any:
        return self._step(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self._coro.throw, *args)

    def close(self) -> None:
        self._coro.close()

    def _step(self, step: Callable[..., Any], *args: Any) -> Any:
        watchdog = self._watchdog
        turned = watchdog.step_begins()
        start = perf_counter()
        try:
            return step(*args)
        finally:
            watchdog.step_ended(perf_counter() - start, turned)
