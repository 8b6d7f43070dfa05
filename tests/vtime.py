"""Virtual time for tests: the running loop's clock, and a fresh looptime loop for code
that drives a loop of its own (hypothesis examples cannot use the `looptime` marker).

Tests marked `@pytest.mark.looptime` already run on virtual loop time; `now()` reads
it. `virtual_time_loop()` is for a test that must run many loops, one per example.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import looptime

__all__ = ["STEPS_PER_SECOND", "loop_time_or", "now", "virtual_time_loop"]

STEPS_PER_SECOND = 1_000_000


def now() -> float:
    """The running loop's time (virtual under looptime)."""
    return asyncio.get_running_loop().time()


def loop_time_or(default: float) -> float:
    """The running loop's time, or `default` outside any loop (a sync run)."""
    try:
        return now()
    except RuntimeError:
        return default


_LoopTimeSelectorLoop: type[Any] = looptime.make_event_loop_class(asyncio.SelectorEventLoop)


class _VirtualTimeLoop(_LoopTimeSelectorLoop):
    """looptime's loop with every timer moved up to the next microsecond.

    looptime's clock moves in whole microseconds. A timer due a float residue after a
    step (``t + 0.75`` computed as ``t + 0.7500000000000001``) would be run at the
    step before it, and code that waits "until loop.time() >= deadline" would sleep
    for the residue again and again while the clock never moves. On a real clock,
    time moves on by itself; here each timer lands on the step at or after it.
    """

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        on_step = math.ceil(when * STEPS_PER_SECOND) / STEPS_PER_SECOND
        handle: asyncio.TimerHandle = super().call_at(on_step, callback, *args, context=context)
        return handle


def virtual_time_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop on virtual time, starting at 0."""
    loop: asyncio.AbstractEventLoop = _VirtualTimeLoop(start=0.0, resolution=1 / STEPS_PER_SECOND)
    return loop
