"""Virtual time for benchmarks: an asyncio loop whose clock jumps over idle waits.

`VirtualEventLoop` is a `SelectorEventLoop` whose `time()` reads a `VirtualClock`.
Whenever the loop would block in `select()` waiting for the next timer, and no I/O is
ready, the clock jumps forward by exactly that wait instead. Scenarios with seconds-long
calls and minutes of provider time therefore finish in the real time it takes to run
their Python code. Waits with no timer at all (only I/O, threads or signals can wake the
loop) are real waits.

`patched_clocks()` makes modules that read `time.time()` / `time.monotonic()` directly
(Phoenix's executors module does) see the same virtual clock while a benchmark runs.
"""

from __future__ import annotations

import asyncio
import selectors
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

T = TypeVar("T")

#: Module name prefixes whose `time` readings follow the virtual clock when patched.
DEFAULT_PATCHED_PREFIXES: tuple[str, ...] = ("phoenix.evals", "evalexec")


class VirtualClock:
    """A monotonic clock that only moves when told to."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


class _JumpingSelector(selectors.BaseSelector):
    """Delegates to a real selector, but turns timed idle waits into clock jumps."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._real = selectors.DefaultSelector()

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing is scheduled: only I/O (self-pipe, signals, threads) can wake us.
            return self._real.select(None)
        self._clock.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring)."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        super().__init__(selector=_JumpingSelector(self.clock))

    def time(self) -> float:
        return self.clock.now()


def _clock_module(clock: VirtualClock) -> types.ModuleType:
    """A stand-in for the `time` module whose clocks read `clock`; the rest is real."""
    fake = types.ModuleType("time")
    fake.__dict__.update(time.__dict__)
    fake.time = clock.now  # type: ignore[attr-defined]
    fake.monotonic = clock.now  # type: ignore[attr-defined]
    fake.perf_counter = clock.now  # type: ignore[attr-defined]
    return fake


@contextmanager
def patched_clocks(
    clock: VirtualClock, prefixes: tuple[str, ...] = DEFAULT_PATCHED_PREFIXES
) -> Iterator[list[str]]:
    """Point `time` readings of already-imported modules under `prefixes` at `clock`.

    Handles both `import time` (the module attribute is swapped for a stand-in) and
    `from time import monotonic` (the function attribute is swapped). Yields the list of
    patched `module.attribute` names; everything is restored on exit.
    """
    real_clocks = {time.time, time.monotonic, time.perf_counter}
    fake = _clock_module(clock)
    undo: list[tuple[types.ModuleType, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        for attr, value in list(vars(module).items()):
            if value is time:
                undo.append((module, attr, value))
                setattr(module, attr, fake)
            elif callable(value) and any(value is c for c in real_clocks):
                undo.append((module, attr, value))
                setattr(module, attr, clock.now)
    try:
        yield [f"{m.__name__}.{a}" for m, a, _ in undo]
    finally:
        for module, attr, value in reversed(undo):
            setattr(module, attr, value)


def run_virtual(
    main: Callable[[], Awaitable[T]],
    *,
    prefixes: tuple[str, ...] = DEFAULT_PATCHED_PREFIXES,
) -> tuple[T, float]:
    """Run `main()` on a fresh virtual loop; return its result and the virtual seconds used.

    Tasks still pending when `main` returns are cancelled before the loop is closed.
    """
    clock = VirtualClock()
    loop = VirtualEventLoop(clock)
    try:
        asyncio.set_event_loop(loop)
        with patched_clocks(clock, prefixes):
            start = clock.now()
            result = loop.run_until_complete(_as_coroutine(main))
            elapsed = clock.now() - start
            _cancel_leftovers(loop)
        return result, elapsed
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def _as_coroutine(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
