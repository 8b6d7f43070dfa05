"""Executors that run a generation function over many inputs: the drop-in replacement
for ``phoenix.evals.executors``.

``AsyncExecutor`` runs a coroutine function with bounded, adaptive concurrency;
``SyncExecutor`` runs a plain function, one call at a time or on worker threads;
``get_executor_on_sync_context`` picks one for the calling context. Both return
``(outputs, details)``: two lists as long as the inputs, ``outputs[i]`` belonging to
``inputs[i]``. The machinery is private: the engine (`_engine`), the dispatch gate
(`_gate`), the retry policy (`_retry`), the adaptive controller (`_controller`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

from evalexec._checkpoint import Checkpoint
from evalexec._checks import (
    check_callable,
    check_int,
    check_limits,
    deadline_seconds,
    sized_len,
    stream_len,
    timeout_seconds,
)
from evalexec._controller import ConcurrencyController, ControllerLike, adaptive_controller
from evalexec._details import ExecutionDetails, ExecutionStatus, Unset
from evalexec._details import _unset as _unset
from evalexec._engine import (
    WINDOW_PER_WORKER,
    GatePerLoop,
    Run,
    RunConfig,
    RunSnapshot,
    drive,
    raise_for,
)
from evalexec._loops import (
    refuse_nested_loop,
    results_kept,
    run_on_new_loop,
    running_loop_exists,
)
from evalexec._retry import Backoff
from evalexec._sequential import Sequential, refuse_awaitable
from evalexec._signals import termination_handler
from evalexec._threads import RunHandle, drive_on_thread, stream_on_thread
from evalexec.limits import Limiter

__all__ = [
    "AsyncExecutor",
    "ConcurrencyController",
    "ExecutionDetails",
    "ExecutionStatus",
    "Executor",
    "SyncExecutor",
    "Unset",
    "get_executor_on_sync_context",
]

logger = logging.getLogger("evalexec")

_DEFAULT_BACKOFF = Backoff()


class Executor(Protocol):
    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]: ...


def _controller_for(
    enabled: bool,
    concurrency: int,
    initial_target: int | None,
    window_seconds: float,
    increase_step: float,
    decrease_ratio: float,
    inactive_check_interval: float,
) -> ControllerLike | None:
    if not enabled:
        return None
    initial = concurrency
    if initial_target is not None:
        initial = check_int("dynamic_initial_target", initial_target, 1)
    return adaptive_controller(
        concurrency,
        initial,
        window_seconds,
        increase_step,
        decrease_ratio,
        inactive_check_interval,
    )


# --------------------------------------------------------------------------------------
# Control from code, the same for both executors


class _Steerable(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def cancel(self) -> None: ...
    def set_concurrency(self, ceiling: int) -> None: ...
    def snapshot(self) -> RunSnapshot: ...


class _LiveRuns:
    """The runs of one executor in progress (several threads may each run one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[_Steerable] = []

    @contextmanager
    def tracking(self, run: _Steerable) -> Iterator[None]:
        with self._lock:
            self._runs.append(run)
        try:
            yield
        finally:
            with self._lock:
                self._runs.remove(run)

    def each(self, action: Callable[[_Steerable], None]) -> int:
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            with contextlib.suppress(RuntimeError):  # not started yet, or already over
                action(run)
        return len(runs)

    def newest(self) -> _Steerable:
        with self._lock:
            if not self._runs:
                raise RuntimeError(
                    "no run of this executor is in progress: snapshot() describes a run "
                    "while run(), execute() or stream() goes on (call it from another "
                    "thread, or from a task beside execute())"
                )
            return self._runs[-1]


class _ExecutorBase:
    """What both executors share: their settings as a run's frozen config, and the
    controls that steer their runs while they go on, from any thread.

    Each method acts on every run of this executor in progress and returns how many it
    reached; with none in progress it does nothing and returns 0.
    """

    _live: _LiveRuns
    _gates: GatePerLoop
    _concurrency_controller: Any
    generate: Callable[[Any], Any]
    concurrency: int
    max_retries: int
    exit_on_error: bool
    fallback_return_value: Any
    timeout: float
    backoff: Backoff | None
    deadline: float | None
    termination_signal: signal.Signals | None
    tqdm_bar_format: str | None
    checkpoint: Checkpoint | None
    limiter: Limiter | None
    cost: Callable[[Any], int] | None
    usage: Callable[[Any], int | None] | None

    def _take_settings(
        self,
        generation_fn: Callable[[Any], Any],
        concurrency: int,
        tqdm_bar_format: str | None,
        max_retries: int,
        exit_on_error: bool,
        fallback_return_value: Any,
        termination_signal: signal.Signals | None,
        timeout: float | None,
        backoff: Backoff | None,
        deadline: float | None,
        checkpoint: str | os.PathLike[str] | Checkpoint | None,
        limiter: Limiter | None,
        cost: Callable[[Any], int] | None,
        usage: Callable[[Any], int | None] | None,
    ) -> None:
        """Check and keep the settings both executors take (clear errors, early)."""
        check_callable(generation_fn)
        self.generate = generation_fn
        self.checkpoint = None if checkpoint is None else Checkpoint.coerce(checkpoint)
        self.concurrency = check_int("concurrency", concurrency, 1)
        self.tqdm_bar_format = tqdm_bar_format
        self.max_retries = check_int("max_retries", max_retries, 0)
        self.exit_on_error = exit_on_error
        self.fallback_return_value = fallback_return_value
        self.termination_signal = termination_signal
        self.timeout = timeout_seconds(timeout)
        self.backoff = backoff
        self.deadline = deadline_seconds(deadline)
        self.limiter, self.cost, self.usage = check_limits(limiter, cost, usage)
        self._gates = GatePerLoop()
        self._live = _LiveRuns()

    def _config(self) -> RunConfig:
        """The executor's settings, frozen for one run."""
        return RunConfig(
            call=self.generate,
            function=self.generate,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            exit_on_error=self.exit_on_error,
            fallback=self.fallback_return_value,
            timeout=self.timeout,
            backoff=self.backoff,
            deadline=self.deadline,
            termination_signal=self.termination_signal,
            bar_format=self.tqdm_bar_format,
            checkpoint=self.checkpoint,
            controller=self._concurrency_controller,
            gates=self._gates,
            limiter=self.limiter,
            cost=self.cost,
            usage=self.usage,
        )

    def pause(self) -> int:
        """Start no new call until `resume()`; calls already in flight go on."""
        return self._live.each(lambda run: run.pause())

    def resume(self) -> int:
        """Undo `pause()`."""
        return self._live.each(lambda run: run.resume())

    def cancel(self) -> int:
        """Stop as a first Ctrl-C does: nothing new starts, finished outputs are kept and
        returned, the rest are DID NOT RUN."""
        return self._live.each(lambda run: run.cancel())

    def set_concurrency(self, concurrency: int) -> int:
        """A new ceiling on calls in flight, from 1 to the executor's `concurrency`
        (the adaptive controller stays below it). Not for a sequential SyncExecutor."""
        check_int("concurrency", concurrency, 1)
        if concurrency > self.concurrency:
            raise ValueError(
                f"set_concurrency({concurrency}) is above this executor's concurrency "
                f"({self.concurrency}), the number of its workers; create it with a larger "
                "concurrency to allow more"
            )
        return self._live.each(lambda run: run.set_concurrency(concurrency))

    def snapshot(self) -> RunSnapshot:
        """The newest run in progress, now: target, in flight, counts per status, retries,
        rate limits, cooldown left, elapsed, ETA. RuntimeError when no run is in progress."""
        return self._live.newest().snapshot()


# --------------------------------------------------------------------------------------
# AsyncExecutor


class AsyncExecutor(_ExecutorBase):
    """Run a coroutine function over many inputs, concurrently, with retries.

    Args:
        generation_fn: called with one input; must return an awaitable.
        concurrency: the number of workers, i.e. the most calls in flight at once.
        tqdm_bar_format: a `tqdm` bar format; no bar is shown when None.
        max_retries: how often an input is retried after an error (and, separately,
            after a timeout) before it is FAILED.
        exit_on_error: stop the whole run at the first FAILED input.
        fallback_return_value: the output of inputs that did not complete.
        termination_signal: the signal that stops the run gracefully (main thread only;
            None installs no handler).
        timeout: seconds per attempt; None means 60, `math.inf` means no limit.
        enable_dynamic_concurrency: adapt the number of active workers (AIMD) to rate
            limits; the remaining ``dynamic_*`` arguments configure the controller.
        backoff: delays before retrying rate-limit and transient errors (None: retry at
            once, still honouring the provider's retry hints).
        deadline: seconds after which the run stops as if interrupted.
        checkpoint: a file (a path, or an `evalexec.Checkpoint`) in which each finished
            input is stored as it finishes; a rerun with the same inputs and file only
            calls the function for the inputs that did not complete.
        limiter: an `evalexec.limits.Limiter` (a `LocalLimiter`, or a `RedisLimiter`
            shared by many processes) that paces requests and tokens and caps calls in
            flight; `cost` (input -> estimated tokens) and `usage` (output -> tokens
            used, or None) feed its token budget.

    `concurrency` bounds the executor: several `execute()` calls awaited at once on one
    executor share it. When the provider says the quota is exhausted, nothing new starts
    but the calls already in flight finish and keep their results (they were admitted,
    and will be billed); on any other stop, calls in flight are cancelled.
    """

    def __init__(
        self,
        generation_fn: Callable[[Any], Awaitable[Any]],
        concurrency: int = 3,
        tqdm_bar_format: str | None = None,
        max_retries: int = 10,
        exit_on_error: bool = True,
        fallback_return_value: Unset | Any = _unset,
        termination_signal: signal.Signals | None = signal.SIGINT,
        timeout: float | None = None,
        *,
        enable_dynamic_concurrency: bool = True,
        dynamic_initial_target: int | None = None,
        dynamic_window_seconds: float = 5.0,
        dynamic_increase_step: int = 1,
        dynamic_decrease_ratio: float = 0.5,
        dynamic_inactive_check_interval: float = 1.0,
        backoff: Backoff | None = _DEFAULT_BACKOFF,
        deadline: float | None = None,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
        limiter: Limiter | None = None,
        cost: Callable[[Any], int] | None = None,
        usage: Callable[[Any], int | None] | None = None,
    ) -> None:
        self._take_settings(
            generation_fn,
            concurrency,
            tqdm_bar_format,
            max_retries,
            exit_on_error,
            fallback_return_value,
            termination_signal,
            timeout,
            backoff,
            deadline,
            checkpoint,
            limiter,
            cost,
            usage,
        )
        self._concurrency_controller: Any = _controller_for(
            enable_dynamic_concurrency,
            self.concurrency,
            dynamic_initial_target,
            dynamic_window_seconds,
            dynamic_increase_step,
            dynamic_decrease_ratio,
            dynamic_inactive_check_interval,
        )

    # -- public API ---------------------------------------------------------------------
    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Run every input to a final status and return ``(outputs, details)``."""
        sized_len(inputs)
        refuse_nested_loop(f"{type(self).__name__}.run()", "await executor.execute(inputs)")
        return run_on_new_loop(self.execute(inputs), self.termination_signal)

    async def execute(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Like `run`, from a coroutine: ``outputs, details = await executor.execute(inputs)``."""
        total = sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]

        def keep(index: int, output: Any, _details: ExecutionDetails) -> None:
            outputs[index] = output

        handle = RunHandle()
        with self._live.tracking(handle):
            run = await drive(self._config(), inputs, total, details, keep, started=handle.attach)
        raise_for(run, outputs, details)
        return outputs, details

    async def stream(
        self, inputs: Iterable[Any]
    ) -> AsyncGenerator[tuple[int, Any, ExecutionDetails], None]:
        """Yield ``(index, output, details)`` for each input as soon as it is final.

        Inputs may be of unknown length (a generator); only a bounded window of them is
        held at once (4 x concurrency inputs drawn and not yet read), so a reader that
        stops reading stops the run from drawing more. Inputs that never ran are not
        yielded. Leaving the loop early stops the run; ``await`` the iterator's
        ``aclose()`` (or use ``contextlib.aclosing``) to wait for the in-flight calls to
        be cancelled.
        """
        total = stream_len(inputs)
        results: asyncio.Queue[tuple[int, Any, ExecutionDetails] | None] = asyncio.Queue()
        # A slow reader holds the window: results not yet taken count as in play.
        room = asyncio.Semaphore(WINDOW_PER_WORKER * self.concurrency)
        ended: list[Run] = []

        def emit(index: int, output: Any, details: ExecutionDetails) -> None:
            results.put_nowait((index, output, details))

        remote = RunHandle()

        async def drive_stream() -> None:
            try:
                run = await drive(
                    self._config(),
                    inputs,
                    total,
                    None,
                    emit,
                    room=room,
                    install_handler=False,
                    started=remote.attach,
                )
                ended.append(run)
            finally:
                results.put_nowait(None)

        driver = asyncio.get_running_loop().create_task(drive_stream())
        with self._live.tracking(remote):
            try:
                while True:
                    # The handler is ours only while we wait for the next result: a stream
                    # left open, or dropped unclosed, never keeps it installed.
                    with termination_handler(self.termination_signal, remote.on_signal):
                        result = await results.get()
                    if result is None:
                        break
                    yield result
                    room.release()
                await driver
                if ended and ended[0].error is not None:
                    raise ended[0].error
            finally:
                if not driver.done():
                    driver.cancel()
                    await asyncio.gather(driver, return_exceptions=True)

    # -- roles (kept from Phoenix's executor: the run's two kinds of task) ----------------
    async def producer(self, run: Run, inputs: Iterable[Any]) -> None:
        """Draw inputs lazily and queue them, keeping at most a window of them in play."""
        await run.produce(inputs)

    async def consumer(self, run: Run, worker_index: int) -> None:
        """Take queued inputs while the gate lets this worker in, and attempt them."""
        await run.work()


# --------------------------------------------------------------------------------------
# SyncExecutor


class SyncExecutor(_ExecutorBase):
    """Run a plain function over many inputs, with retries: one call at a time in the
    calling thread, or `concurrency` calls at once on worker threads.

    With ``concurrency=1`` (the default, as in Phoenix), calls run one after another in
    the calling thread, and a Ctrl-C interrupts the call in progress. With
    ``concurrency > 1`` (or a `timeout`), up to that many calls run at once on worker
    threads, on the same engine as `AsyncExecutor`: outputs aligned with inputs, the
    same statuses, retry budgets, backoff, shared pause on a provider's retry hint,
    adaptive concurrency, `checkpoint`, `deadline`, `stream` and status line. It works
    from any thread and inside a running event loop (a notebook), since the engine
    runs on an event loop of its own thread. A thread cannot be killed: an attempt
    that overruns its `timeout`, or that is in flight when the run stops, is
    abandoned — its thread finishes the call, and the late result is dropped, never
    attached to an input.

    Rate-limit and transient errors are retried after a backoff that honours the
    provider's retry hints; a `PhoenixException` (that is not a rate limit) fails at
    once. The first termination signal stops the run and returns what has finished;
    the second raises `KeyboardInterrupt`.
    """

    def __init__(
        self,
        generation_fn: Callable[[Any], Any],
        tqdm_bar_format: str | None = None,
        max_retries: int = 10,
        exit_on_error: bool = True,
        fallback_return_value: Unset | Any = _unset,
        termination_signal: signal.Signals | None = signal.SIGINT,
        *,
        concurrency: int = 1,
        timeout: float | None = None,
        enable_dynamic_concurrency: bool = True,
        dynamic_initial_target: int | None = None,
        backoff: Backoff | None = _DEFAULT_BACKOFF,
        deadline: float | None = None,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
        limiter: Limiter | None = None,
        cost: Callable[[Any], int] | None = None,
        usage: Callable[[Any], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._take_settings(
            generation_fn,
            concurrency,
            tqdm_bar_format,
            max_retries,
            exit_on_error,
            fallback_return_value,
            termination_signal,
            timeout,
            backoff,
            deadline,
            checkpoint,
            limiter,
            cost,
            usage,
        )
        # Threads: for concurrency, for a budget, or to abandon a call that overruns its
        # timeout (a call in the calling thread cannot be abandoned).
        self.threaded = self.concurrency > 1 or timeout is not None or limiter is not None
        self._clock = clock
        self._sleep = sleep
        self._concurrency_controller: Any = _controller_for(
            enable_dynamic_concurrency and self.threaded,
            self.concurrency,
            dynamic_initial_target,
            5.0,
            1,
            0.5,
            1.0,
        )

    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Run every input to a final status and return ``(outputs, details)``."""
        total = sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]
        with results_kept(self.termination_signal):
            if self.threaded:

                def keep(index: int, output: Any, _details: ExecutionDetails) -> None:
                    outputs[index] = output

                handle = RunHandle()
                with self._live.tracking(handle):
                    run = drive_on_thread(self._config(), inputs, total, details, keep, handle)
                raise_for(run, outputs, details)
            else:
                sequential = Sequential(self._config(), self._clock, self._sleep)
                with self._live.tracking(sequential):
                    for _ in sequential.steps(inputs, total, details, outputs, stream=False):
                        pass
            return outputs, details

    def stream(
        self, inputs: Iterable[Any]
    ) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
        """Yield ``(index, output, details)`` for each input as soon as it is final."""
        total = stream_len(inputs)
        if self.threaded:
            handle = RunHandle()
            with self._live.tracking(handle):
                yield from stream_on_thread(self._config(), inputs, total, handle)
        else:
            sequential = Sequential(self._config(), self._clock, self._sleep)
            with self._live.tracking(sequential):
                yield from sequential.steps(inputs, total, None, None, stream=True)

    def _config(self) -> RunConfig:
        # `call` is replaced by the run's ThreadCalls (threads) or unused (sequential).
        return dataclasses.replace(
            super()._config(),
            check_output=partial(refuse_awaitable, self.generate),
            kind="threads",
        )


# --------------------------------------------------------------------------------------
# Choosing an executor


def get_executor_on_sync_context(
    sync_fn: Callable[[Any], Any],
    async_fn: Callable[[Any], Awaitable[Any]],
    run_sync: bool = False,
    concurrency: int = 3,
    tqdm_bar_format: str | None = None,
    max_retries: int = 10,
    exit_on_error: bool = True,
    fallback_return_value: Unset | Any = _unset,
    timeout: float | None = None,
) -> Executor:
    """Pick the executor that works where it is called from.

    An `AsyncExecutor` on the main thread with no running event loop (or one that
    nest_asyncio has patched). Where an event loop cannot be used — off the main
    thread, or inside a running loop without nest_asyncio (a notebook) — a
    `SyncExecutor` that runs `concurrency` calls at once on worker threads. With
    `run_sync=True`, a sequential `SyncExecutor`, as in Phoenix.
    """
    common: dict[str, Any] = {
        "tqdm_bar_format": tqdm_bar_format,
        "max_retries": max_retries,
        "exit_on_error": exit_on_error,
        "fallback_return_value": fallback_return_value,
    }
    threaded: dict[str, Any] = {"concurrency": concurrency, "timeout": timeout, **common}
    if threading.current_thread() is not threading.main_thread():
        if run_sync:
            return SyncExecutor(sync_fn, termination_signal=None, **common)
        logger.warning(
            "evalexec: not on the main thread, so the async function cannot run here; "
            "running the sync function on %d worker threads instead (pass run_sync=True "
            "for one call at a time in this thread)",
            concurrency,
        )
        return SyncExecutor(sync_fn, termination_signal=None, **threaded)
    if run_sync:
        return SyncExecutor(sync_fn, **common)
    if running_loop_exists() and not getattr(asyncio, "_nest_patched", False):
        logger.warning(
            "evalexec: an event loop is already running (a notebook?), so the async "
            "function cannot run here; running the sync function on %d worker threads "
            "instead (to use the async function, apply nest_asyncio first: "
            "`import nest_asyncio; nest_asyncio.apply()`)",
            concurrency,
        )
        return SyncExecutor(sync_fn, **threaded)
    return AsyncExecutor(async_fn, concurrency=concurrency, timeout=timeout, **common)
