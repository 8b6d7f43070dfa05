"""The implementations under comparison, behind one small interface.

* `evalexec`: `evalexec.executors.AsyncExecutor` / `SyncExecutor`;
* `phoenix`: `phoenix.evals.executors.AsyncExecutor` / `SyncExecutor` (the reference);
* `floor`: the least an executor can do. Async: `asyncio.gather` over every input, an
  `asyncio.Semaphore(concurrency)`, an immediate-retry loop and `asyncio.wait_for` when
  a timeout is given (streamed: the same tasks, read with `asyncio.as_completed`). Sync:
  a bare `for` loop with the same retry loop; with threads, a bare
  `concurrent.futures.ThreadPoolExecutor(concurrency).map`.

Every runner returns `(outputs, statuses)` where statuses are the `ExecutionStatus`
values as strings ("COMPLETED", "COMPLETED WITH RETRIES", "FAILED", "DID NOT RUN").
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Protocol

COMPLETED = "COMPLETED"
COMPLETED_WITH_RETRIES = "COMPLETED WITH RETRIES"
FAILED = "FAILED"
DID_NOT_RUN = "DID NOT RUN"

IMPLS: tuple[str, ...] = ("evalexec", "phoenix", "floor")
_MODULES = {"evalexec": "evalexec.executors", "phoenix": "phoenix.evals.executors"}

AsyncFn = Callable[[Any], Awaitable[Any]]
SyncFn = Callable[[Any], Any]
Result = tuple[list[Any], list[str]]
# One streamed result: (index, output, status).
Streamed = tuple[int, Any, str]


class ImplUnavailable(Exception):
    """The implementation cannot be imported."""


class RowSkipped(Exception):
    """The implementation lacks what the scenario measures; the message says what."""


class AsyncRunner(Protocol):
    async def execute(self, inputs: Sequence[Any]) -> Result: ...

    def run(self, inputs: Sequence[Any]) -> Result: ...

    def stream(self, inputs: Sequence[Any]) -> AsyncIterator[Streamed]: ...


class SyncRunner(Protocol):
    def run(self, inputs: Sequence[Any]) -> Result: ...


def load_module(impl: str) -> ModuleType:
    try:
        return importlib.import_module(_MODULES[impl])
    except Exception as exc:
        raise ImplUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _statuses(details: Sequence[Any]) -> list[str]:
    return [str(d.status.value) for d in details]


class _WrappedAsync:
    """Adapts a Phoenix-shaped AsyncExecutor to `AsyncRunner`."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    async def execute(self, inputs: Sequence[Any]) -> Result:
        outputs, details = await self.executor.execute(inputs)
        return list(outputs), _statuses(details)

    def run(self, inputs: Sequence[Any]) -> Result:
        outputs, details = self.executor.run(inputs)
        return list(outputs), _statuses(details)

    async def stream(self, inputs: Sequence[Any]) -> AsyncIterator[Streamed]:
        stream = getattr(self.executor, "stream", None)
        if stream is None:
            raise RowSkipped(f"n/a: {type(self.executor).__qualname__} has no stream()")
        async for index, output, details in stream(inputs):
            yield index, output, str(details.status.value)


class _WrappedSync:
    """Adapts a Phoenix-shaped SyncExecutor to `SyncRunner`."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def run(self, inputs: Sequence[Any]) -> Result:
        outputs, details = self.executor.run(inputs)
        return list(outputs), _statuses(details)


class FloorAsync:
    """gather + semaphore + immediate retry (+ `asyncio.wait_for` when timeout is set)."""

    def __init__(
        self,
        fn: AsyncFn,
        *,
        concurrency: int,
        max_retries: int,
        timeout: float | None,
        exit_on_error: bool,
    ) -> None:
        self.fn = fn
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        # The floor never stops early: it has no notion of a run to abort.
        self.exit_on_error = exit_on_error

    async def _attempts(self, item: Any) -> tuple[Any, str]:
        """One input run to its end: (output, status). Only `stream` uses it: `execute`
        keeps its own inlined loop, so the floor's figures stay what they were."""
        fn = self.fn
        timeout = self.timeout
        for attempt in range(self.max_retries + 1):
            try:
                if timeout is None:
                    result = await fn(item)
                else:
                    result = await asyncio.wait_for(fn(item), timeout)
            except Exception:
                continue
            return result, COMPLETED if attempt == 0 else COMPLETED_WITH_RETRIES
        return None, FAILED

    async def execute(self, inputs: Sequence[Any]) -> Result:
        n = len(inputs)
        outputs: list[Any] = [None] * n
        statuses: list[str] = [DID_NOT_RUN] * n
        semaphore = asyncio.Semaphore(self.concurrency)
        fn = self.fn
        timeout = self.timeout
        attempts = self.max_retries + 1

        async def one(index: int, item: Any) -> None:
            async with semaphore:
                for attempt in range(attempts):
                    try:
                        if timeout is None:
                            result = await fn(item)
                        else:
                            result = await asyncio.wait_for(fn(item), timeout)
                    except Exception:
                        continue
                    outputs[index] = result
                    statuses[index] = COMPLETED if attempt == 0 else COMPLETED_WITH_RETRIES
                    return
                statuses[index] = FAILED

        await asyncio.gather(*[one(i, x) for i, x in enumerate(inputs)])
        return outputs, statuses

    def run(self, inputs: Sequence[Any]) -> Result:
        return asyncio.run(self.execute(inputs))

    async def stream(self, inputs: Sequence[Any]) -> AsyncIterator[Streamed]:
        """A task per input at once (the semaphore bounds the calls), read with
        `asyncio.as_completed`: results in the order they finish, no bounded window."""
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(index: int, item: Any) -> Streamed:
            async with semaphore:
                output, status = await self._attempts(item)
            return index, output, status

        tasks = [asyncio.ensure_future(one(i, x)) for i, x in enumerate(inputs)]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()


class FloorSync:
    """A bare for loop with an immediate-retry loop."""

    def __init__(self, fn: SyncFn, *, max_retries: int, exit_on_error: bool) -> None:
        self.fn = fn
        self.max_retries = max_retries
        self.exit_on_error = exit_on_error

    def run(self, inputs: Sequence[Any]) -> Result:
        n = len(inputs)
        outputs: list[Any] = [None] * n
        statuses: list[str] = [DID_NOT_RUN] * n
        fn = self.fn
        attempts = self.max_retries + 1
        for index, item in enumerate(inputs):
            for attempt in range(attempts):
                try:
                    outputs[index] = fn(item)
                except Exception:
                    continue
                statuses[index] = COMPLETED if attempt == 0 else COMPLETED_WITH_RETRIES
                break
            else:
                statuses[index] = FAILED
        return outputs, statuses


class FloorThreads:
    """`concurrent.futures.ThreadPoolExecutor(concurrency).map`, no retries."""

    def __init__(self, fn: SyncFn, *, concurrency: int) -> None:
        self.fn = fn
        self.concurrency = concurrency

    def run(self, inputs: Sequence[Any]) -> Result:
        with ThreadPoolExecutor(self.concurrency) as pool:
            outputs = list(pool.map(self.fn, inputs))
        return outputs, [COMPLETED] * len(outputs)


# The executors' own time constants at their defaults, in seconds.
EVALEXEC_WINDOW = 5.0  # AsyncExecutor(dynamic_window_seconds=...)
EVALEXEC_BACKOFF_INITIAL = 1.0  # Backoff(initial=...)
EVALEXEC_BACKOFF_MAXIMUM = 60.0  # Backoff(maximum=...)
PHOENIX_WINDOW = 5.0  # AsyncExecutor(dynamic_window_seconds=...); its other waits are fixed


def compressed_options(impl: str, k: float) -> dict[str, Any]:
    """Constructor arguments that run `impl`'s time constants `k` times faster.

    evalexec: the controller's window and the backoff's initial and maximum waits.
    Phoenix: the controller's window only; its producer's `sleep(1)`, its workers'
    1 s queue poll, its 30 s collapse window and its idle-worker check (1 s, floored at
    0.1 s) stay as they are. The floor has no time constants. `k == 1` gives no
    arguments at all: every implementation keeps its defaults.
    """
    if k == 1 or impl == "floor":
        return {}
    if impl == "phoenix":
        return {"dynamic_window_seconds": PHOENIX_WINDOW / k}
    try:
        backoff_cls = importlib.import_module("evalexec").Backoff
    except Exception as exc:
        raise ImplUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return {
        "dynamic_window_seconds": EVALEXEC_WINDOW / k,
        "backoff": backoff_cls(
            initial=EVALEXEC_BACKOFF_INITIAL / k, maximum=EVALEXEC_BACKOFF_MAXIMUM / k
        ),
    }


def make_async(
    impl: str,
    fn: AsyncFn,
    *,
    concurrency: int,
    max_retries: int = 10,
    timeout: float | None = None,
    exit_on_error: bool = True,
    options: Mapping[str, Any] | None = None,
) -> AsyncRunner:
    """An async runner of `impl` over `fn`. `timeout=None` keeps each impl's default;
    `options` are extra constructor arguments for the executor (the floor has none)."""
    if impl == "floor":
        return FloorAsync(
            fn,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            exit_on_error=exit_on_error,
        )
    module = load_module(impl)
    executor = module.AsyncExecutor(
        fn,
        concurrency=concurrency,
        tqdm_bar_format=None,
        max_retries=max_retries,
        exit_on_error=exit_on_error,
        timeout=timeout,
        **(options or {}),
    )
    return _WrappedAsync(executor)


def sync_concurrency_supported(impl: str) -> bool:
    """Whether `impl`'s SyncExecutor takes `concurrency=` (runs calls on threads)."""
    if impl == "floor":
        return True
    parameters = inspect.signature(load_module(impl).SyncExecutor).parameters
    return "concurrency" in parameters


def make_sync(
    impl: str,
    fn: SyncFn,
    *,
    max_retries: int = 10,
    exit_on_error: bool = True,
    concurrency: int | None = None,
) -> SyncRunner:
    """A sync runner of `impl` over `fn`. `concurrency=None` keeps each impl's default
    (one call at a time); a number is passed as `SyncExecutor(concurrency=...)`, and
    `RowSkipped` is raised when the executor has no such parameter. The floor is a bare
    loop, or a thread pool when `concurrency` is above 1."""
    if impl == "floor":
        if concurrency is not None and concurrency > 1:
            return FloorThreads(fn, concurrency=concurrency)
        return FloorSync(fn, max_retries=max_retries, exit_on_error=exit_on_error)
    module = load_module(impl)
    options: dict[str, Any] = {}
    if concurrency is not None:
        if not sync_concurrency_supported(impl):
            raise RowSkipped(f"{impl}'s SyncExecutor has no concurrency parameter (yet)")
        options["concurrency"] = concurrency
    executor = module.SyncExecutor(
        fn, tqdm_bar_format=None, max_retries=max_retries, exit_on_error=exit_on_error, **options
    )
    return _WrappedSync(executor)
