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
import copy
import dataclasses
import inspect
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Sized,
)
from functools import partial
from typing import Any, NoReturn, Protocol, TypeVar

from evalexec import _messages as say
from evalexec._checkpoint import Checkpoint, CheckpointError, CheckpointStore
from evalexec._controller import ConcurrencyController, ControllerLike, adaptive_controller
from evalexec._details import ExecutionDetails, ExecutionStatus, Unset
from evalexec._details import _unset as _unset
from evalexec._engine import WINDOW_PER_WORKER, IncompleteRunError, OnFinal, Run, RunConfig, drive
from evalexec._messages import StopReason
from evalexec._progress import Progress
from evalexec._retry import Backoff, decide
from evalexec._signals import handler_restored, termination_handler
from evalexec._threads import ThreadCalls
from evalexec.exceptions import NestedRunError

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

_T = TypeVar("_T")
_DEFAULT_TIMEOUT_SECONDS = 60  # Phoenix's default per-attempt timeout
_DEFAULT_BACKOFF = Backoff()
_ABORT_GRACE_SECONDS = 0.2  # on a second Ctrl-C, how long tasks get to end before we go


class Executor(Protocol):
    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]: ...


# --------------------------------------------------------------------------------------
# Argument checks shared by both executors


def _check_callable(generation_fn: object) -> None:
    if not callable(generation_fn):
        raise TypeError(f"generation_fn must be callable, got {type(generation_fn).__name__}")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: object, *, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return float(value)


def _sized_len(inputs: object) -> int:
    """The number of inputs, or a TypeError that says what inputs must be."""
    _refuse_dataframe(inputs)
    if inputs is None or isinstance(inputs, str | bytes | bytearray):
        what = "None" if inputs is None else f"a {type(inputs).__name__}"
        raise TypeError(
            f"inputs must be a sequence of inputs (a list, a tuple, or any sized iterable), "
            f"got {what}; to run a single input, wrap it in a list: [input]"
        )
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"inputs must be a sequence or sized iterable, got {type(inputs).__name__}, "
            "which is not iterable"
        )
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"inputs must have a length (a list, a tuple, or any sized iterable), got "
            f"{type(inputs).__name__}; for a generator, use the executor's stream() method "
            "or pass list(inputs)"
        ) from None


def _stream_len(inputs: object) -> int | None:
    """The number of inputs of a stream, or None for an iterable of unknown length."""
    _refuse_dataframe(inputs)
    if isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | bytearray):
        return len(inputs) if isinstance(inputs, Sized) else None
    return _sized_len(inputs)  # raises the same clear error as execute()


def _refuse_dataframe(inputs: object) -> None:
    """A DataFrame iterates over its column names, which is never what was meant."""
    cls = type(inputs)
    if cls.__module__.partition(".")[0] == "pandas" and cls.__name__ == "DataFrame":
        raise TypeError(
            "inputs is a pandas DataFrame, whose iteration yields its column names, not "
            'its rows; pass `df.to_dict("records")` (one dict per row), or use '
            "Phoenix's own evaluate_dataframe (with `evalexec.phoenix.install()`)"
        )


def _refuse_nested_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if not getattr(asyncio, "_nest_patched", False):
        raise NestedRunError(
            f"{what} cannot be called from inside a running event loop; use "
            f"`{instead}` there, or apply nest_asyncio first "
            "(`import nest_asyncio; nest_asyncio.apply()`)"
        )


def _timeout_seconds(timeout: object) -> float:
    if timeout is None:
        return _DEFAULT_TIMEOUT_SECONDS
    return _check_seconds("timeout", timeout, allow_inf=True)


def _deadline_seconds(deadline: object) -> float | None:
    return None if deadline is None else _check_seconds("deadline", deadline, allow_inf=False)


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
        initial = _check_int("dynamic_initial_target", initial_target, 1)
    return adaptive_controller(
        concurrency,
        initial,
        window_seconds,
        increase_step,
        decrease_ratio,
        inactive_check_interval,
    )


def _run_on_new_loop(main: Coroutine[Any, Any, _T], signum: signal.Signals | None) -> _T:
    """Run `main` on a new event loop in this thread, like `asyncio.run`, except:

    - A termination signal that lands after the run's own handler is gone (its results
      are safe) but before this returns is swallowed: finished work is never lost.
    - On a second Ctrl-C, the tasks still running get a moment to end and are then
      abandoned: the abort never waits for a cleanup that will not finish.
    """
    loop = asyncio.new_event_loop()
    try:
        with handler_restored(signum), termination_handler(signum, _results_are_safe):
            task = loop.create_task(main)
            try:
                result = loop.run_until_complete(task)
            except BaseException:
                _cancel_all(loop, grace=_ABORT_GRACE_SECONDS)
                raise
            _cancel_all(loop, grace=None)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            return result
    finally:
        loop.close()


def _results_are_safe(announce: bool) -> bool:
    return False  # the run has its results; a first Ctrl-C now changes nothing


def _cancel_all(loop: asyncio.AbstractEventLoop, grace: float | None) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=grace))
    for task in tasks:
        if not task.done():
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
        elif not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" later


# --------------------------------------------------------------------------------------
# AsyncExecutor


class AsyncExecutor:
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
        checkpoint: a file in which each finished input is stored as it finishes; a
            rerun with the same inputs and file only calls the function for the inputs
            that did not complete.

    When the provider says the quota is exhausted, nothing new starts but the calls
    already in flight finish and keep their results (they were admitted, and will be
    billed); on any other stop, calls in flight are cancelled.
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
    ) -> None:
        _check_callable(generation_fn)
        self.generate = generation_fn
        self.checkpoint = None if checkpoint is None else Checkpoint.coerce(checkpoint)
        self.concurrency = _check_int("concurrency", concurrency, 1)
        self.tqdm_bar_format = tqdm_bar_format
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.exit_on_error = exit_on_error
        self.fallback_return_value = fallback_return_value
        self.termination_signal = termination_signal
        self.timeout: float = _timeout_seconds(timeout)
        self.backoff = backoff
        self.deadline = _deadline_seconds(deadline)
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
        _sized_len(inputs)
        _refuse_nested_loop(f"{type(self).__name__}.run()", "await executor.execute(inputs)")
        return _run_on_new_loop(self.execute(inputs), self.termination_signal)

    async def execute(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Like `run`, from a coroutine: ``outputs, details = await executor.execute(inputs)``."""
        total = _sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]

        def keep(index: int, output: Any, _details: ExecutionDetails) -> None:
            outputs[index] = output

        run = await drive(self._config(), inputs, total, details, keep)
        _raise_for(run, outputs, details)
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
        total = _stream_len(inputs)
        results: asyncio.Queue[tuple[int, Any, ExecutionDetails] | None] = asyncio.Queue()
        # A slow reader holds the window: results not yet taken count as in play.
        room = asyncio.Semaphore(WINDOW_PER_WORKER * self.concurrency)
        ended: list[Run] = []

        def emit(index: int, output: Any, details: ExecutionDetails) -> None:
            results.put_nowait((index, output, details))

        remote = _Remote()

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

    def _config(self) -> RunConfig:
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
        )


def _raise_for(run: Run, outputs: list[Any], details: list[ExecutionDetails]) -> None:
    """Raise what stopped `run`, if it was an error; with the outputs when they matter."""
    error = run.error
    if error is None:
        return
    if run.error_is_partial:
        raise IncompleteRunError(error, outputs, details) from error
    raise error


# --------------------------------------------------------------------------------------
# SyncExecutor


class _Interrupted(BaseException):
    """Raised inside an in-flight call by the first termination signal of a sync run."""


class SyncExecutor:
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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_callable(generation_fn)
        self.generate = generation_fn
        self.checkpoint = None if checkpoint is None else Checkpoint.coerce(checkpoint)
        self.concurrency = _check_int("concurrency", concurrency, 1)
        self.tqdm_bar_format = tqdm_bar_format
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.exit_on_error = exit_on_error
        self.fallback_return_value = fallback_return_value
        self.termination_signal = termination_signal
        # Threads: for concurrency, or to abandon a call that overruns its timeout
        # (a call in the calling thread cannot be abandoned).
        self.threaded = self.concurrency > 1 or timeout is not None
        self.timeout: float = _timeout_seconds(timeout)
        self.backoff = backoff
        self.deadline = _deadline_seconds(deadline)
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
        total = _sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]
        if self.threaded:

            def keep(index: int, output: Any, _details: ExecutionDetails) -> None:
                outputs[index] = output

            run = _drive_on_thread(self, inputs, total, details, keep, None)
            _raise_for(run, outputs, details)
        else:
            for _ in _Sequential(self).steps(inputs, total, details, outputs, stream=False):
                pass
        return outputs, details

    def stream(
        self, inputs: Iterable[Any]
    ) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
        """Yield ``(index, output, details)`` for each input as soon as it is final."""
        total = _stream_len(inputs)
        if self.threaded:
            yield from _stream_on_thread(self, inputs, total)
        else:
            yield from _Sequential(self).steps(inputs, total, None, None, stream=True)

    def _config(self) -> RunConfig:
        return RunConfig(
            call=self.generate,  # replaced by the run's ThreadCalls
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
            check_output=partial(_refuse_awaitable, self.generate),
        )


class _Remote:
    """The calling thread's handle on a run driven on a thread of its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run: Run | None = None
        self.pending: bool | None = None  # a signal that came before the run started

    def attach(self, run: Run) -> None:
        with self.lock:
            self.run = run
            pending = self.pending
        if pending is not None:
            run.interrupt(pending)

    def on_signal(self, announce: bool) -> bool:
        with self.lock:
            run = self.run
            if run is None:
                self.pending = announce
                return False
        run.loop.call_soon_threadsafe(run.interrupt, announce)
        return False

    def abort(self) -> None:
        """The caller gave up (a second Ctrl-C): stop the run without waiting for it."""
        self.on_signal(False)


def _drive_on_thread(
    executor: SyncExecutor,
    inputs: Iterable[Any],
    total: int | None,
    details: list[ExecutionDetails] | None,
    on_final: OnFinal,
    room: asyncio.Semaphore | None,
    remote: _Remote | None = None,
) -> Run:
    """Drive a threaded run on a new event loop in a thread of its own, and wait for it.

    The calling thread holds the termination handler (if it is the main thread) and
    forwards the signal to the run's loop.
    """
    remote = _Remote() if remote is None else remote
    box: dict[str, Any] = {}

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        calls = ThreadCalls(executor.generate, loop)
        config = dataclasses.replace(executor._config(), call=calls)
        try:
            return await drive(
                config,
                inputs,
                total,
                details,
                on_final,
                room=room,
                install_handler=False,
                started=remote.attach,
            )
        finally:
            calls.close()

    def target() -> None:
        try:
            box["run"] = _run_on_new_loop(main(), None)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="evalexec-run", daemon=True)
    with termination_handler(executor.termination_signal, remote.on_signal):
        thread.start()
        try:
            thread.join()
        except BaseException:
            remote.abort()  # a second Ctrl-C: do not wait for the run to wind down
            raise
    if "error" in box:
        raise box["error"]
    run: Run = box["run"]
    return run


def _stream_on_thread(
    executor: SyncExecutor, inputs: Iterable[Any], total: int | None
) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
    """A threaded run's results as a plain iterator, each as soon as it is final."""
    results: queue.SimpleQueue[tuple[int, Any, ExecutionDetails] | None] = queue.SimpleQueue()
    room = asyncio.Semaphore(WINDOW_PER_WORKER * executor.concurrency)
    remote = _Remote()
    box: dict[str, Any] = {}

    def emit(index: int, output: Any, details: ExecutionDetails) -> None:
        results.put((index, output, details))

    def target() -> None:
        try:
            box["run"] = _drive_on_thread_quiet(executor, inputs, total, emit, room, remote)
        except BaseException as exc:
            box["error"] = exc
        finally:
            results.put(None)

    thread = threading.Thread(target=target, name="evalexec-stream", daemon=True)
    thread.start()
    try:
        while True:
            # The handler is ours only while we wait for the next result: a stream left
            # open, or read on another thread, never keeps it installed.
            with termination_handler(executor.termination_signal, remote.on_signal):
                result = results.get()
            if result is None:
                break
            yield result
            run = remote.run
            if run is not None:
                _call_soon(run, room.release)
        thread.join()
        if "error" in box:
            raise box["error"]
        run = box.get("run")
        if run is not None and run.error is not None:
            raise run.error
    finally:
        if thread.is_alive():
            remote.abort()


def _drive_on_thread_quiet(
    executor: SyncExecutor,
    inputs: Iterable[Any],
    total: int | None,
    on_final: OnFinal,
    room: asyncio.Semaphore,
    remote: _Remote,
) -> Run:
    """`_drive_on_thread` for a stream: the reader, not this thread, holds the handler."""
    quiet = copy.copy(executor)
    quiet.termination_signal = None
    return _drive_on_thread(quiet, inputs, total, None, on_final, room, remote)


def _call_soon(run: Run, callback: Callable[[], Any]) -> None:
    with contextlib.suppress(RuntimeError):  # the run's loop has closed
        run.loop.call_soon_threadsafe(callback)


class _Sequential:
    """One sequential run of a `SyncExecutor`: calls one by one in the calling thread.

    Its state is its own, so one executor can run in several threads at once.
    """

    def __init__(self, executor: SyncExecutor) -> None:
        self.executor = executor
        self.stop: StopReason | None = None
        self.in_call = False  # a call (or a backoff sleep) is on the stack right now

    def on_signal(self, announce: bool) -> bool:
        if self.stop is None and announce:
            say.interrupted(self.write)
        self.stop = "interrupted"
        return self.in_call  # raise _Interrupted into the call on the stack

    def write(self, message: str) -> None:
        print(message, file=sys.stderr)

    def steps(
        self,
        inputs: Iterable[Any],
        total: int | None,
        details: list[ExecutionDetails] | None,
        outputs: list[Any] | None,
        *,
        stream: bool,
    ) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
        """Run the inputs one by one; when `stream`, yield each as it becomes final.

        The first attempt of an input is inlined: a run of cheap calls spends its time
        in the function, not in bookkeeping. Retries go through `retry`.
        """
        executor = self.executor
        clock = executor._clock
        generate = executor.generate
        started = clock()
        stop_at = math.inf if executor.deadline is None else started + executor.deadline
        retries = 0
        drawn = 0
        completed = ExecutionStatus.COMPLETED
        unchecked = True  # the first output tells whether the function is async by mistake
        checkpoint: CheckpointStore | None = None
        progress = Progress(total, executor.tqdm_bar_format, lambda: f"retries={retries}", clock)
        self.write = progress.write  # type: ignore[method-assign]
        try:
            with termination_handler(executor.termination_signal, self.on_signal, _Interrupted):
                try:
                    if executor.checkpoint is not None:
                        checkpoint = executor.checkpoint.open(executor.generate)
                    try:
                        iterator = iter(inputs)
                    except Exception as exc:
                        _stopped_by(exc, outputs, details)
                    index = -1
                    while True:
                        try:
                            item = next(iterator)
                        except StopIteration:
                            if total is not None and drawn < total and self.stop is None:
                                say.inputs_fewer_than_len(drawn, total)
                            break
                        except Exception as exc:
                            _stopped_by(exc, outputs, details)
                        index += 1
                        if total is not None and index >= total:
                            say.inputs_more_than_len(total)
                            break
                        if self.stop is not None:
                            break
                        drawn += 1
                        # The fingerprint is taken before the function can change the input.
                        key, stored = "", None
                        if checkpoint is not None:
                            try:
                                key = checkpoint.fingerprint(item)
                                stored = checkpoint.restore(index, key)
                            except CheckpointError as exc:
                                _stopped_by(exc, outputs, details)
                        if stored is not None:
                            output, record = stored.output, stored.details()
                            if details is not None:
                                details[index] = record
                        else:
                            record = ExecutionDetails() if details is None else details[index]
                            if stop_at != math.inf and clock() >= stop_at:
                                self.stop = "deadline"
                                break
                            try:
                                output, error = self.call(item, record)
                            except _Interrupted:
                                break
                            if self.stop is not None:
                                break  # stopped during the call: its result is not trusted
                            if unchecked and error is None:
                                unchecked = False
                                _refuse_awaitable(generate, output)
                            if error is None:
                                record.status = completed
                            else:
                                finished, output, tries = self.retry(
                                    index, item, record, stop_at, error
                                )
                                retries += tries
                                if not finished:
                                    break
                            if checkpoint is not None:
                                try:
                                    checkpoint.record(index, key, output, record)
                                except CheckpointError as exc:
                                    _stopped_by(exc, outputs, details)
                        if outputs is not None:
                            outputs[index] = output
                        progress.advance(record.status)
                        if stream:
                            yield index, output, record
                        if record.status is ExecutionStatus.FAILED and (
                            executor.exit_on_error or self.stop is not None
                        ):
                            break
                finally:
                    try:
                        if checkpoint is not None:
                            checkpoint.close()
                    finally:
                        inputs_seen = drawn if total is None else total
                        progress.close(inputs_seen, retries, clock() - started)
        finally:
            self.in_call = False
            if self.stop == "deadline":
                say.deadline_passed(executor.deadline)

    def retry(
        self, index: int, item: Any, details: ExecutionDetails, stop_at: float, error: Exception
    ) -> tuple[bool, Any, int]:
        """Handle a failed attempt and retry until the input is final.

        Returns ``(finished, output, retries)``; not finished when the run was stopped.
        """
        executor = self.executor
        errors = 0
        while True:
            details.log_exception(error)
            verdict = decide(error, errors, executor.max_retries, executor.backoff)
            if not verdict.retry:
                details.fail()
                cause = say.describe(error)
                say.failed(index, errors + 1, cause)
                if verdict.stop_run:
                    self.stop = "quota"
                    say.stopped_early(self.write, verdict.reason, cause)
                return True, executor.fallback_return_value, errors
            errors += 1
            wait = max(verdict.delay, verdict.cooldown or 0.0)
            say.retrying(index, errors, say.describe(error), wait)
            if wait > 0 and not self.pause(min(wait, stop_at - executor._clock())):
                return False, None, errors
            if executor._clock() >= stop_at:
                self.stop = "deadline"
            if self.stop is not None:
                return False, None, errors
            try:
                output, failure = self.call(item, details)
            except _Interrupted:
                return False, None, errors
            if self.stop is not None:
                return False, None, errors  # stopped during the call: not trusted
            if failure is not None:
                error = failure
                continue
            details.complete()
            return True, output, errors

    def call(self, item: Any, details: ExecutionDetails) -> tuple[Any, Exception | None]:
        """One attempt: ``(output, None)`` or ``(None, error)``; its seconds are added to
        `details`. The first termination signal raises `_Interrupted` out of it."""
        clock = self.executor._clock
        start = clock()
        self.in_call = True
        try:
            return self.executor.generate(item), None
        except Exception as exc:
            return None, exc
        finally:
            self.in_call = False
            details.execution_seconds += clock() - start

    def pause(self, seconds: float) -> bool:
        """Sleep between attempts; False if the run was asked to stop, before or during it."""
        if self.stop is not None:
            return False
        if seconds <= 0:
            return True
        try:
            self.in_call = True
            try:
                self.executor._sleep(min(seconds, threading.TIMEOUT_MAX))
            finally:
                self.in_call = False
        except _Interrupted:
            return False
        return True


def _stopped_by(
    error: Exception, outputs: list[Any] | None, details: list[ExecutionDetails] | None
) -> NoReturn:
    """The inputs or the checkpoint raised: out of `run` with what finished; a stream
    has yielded what finished, and raises the error itself."""
    if outputs is not None and details is not None:
        raise IncompleteRunError(error, outputs, details) from error
    raise error


def _refuse_awaitable(fn: Callable[..., Any], result: object) -> None:
    """SyncExecutor's mirror of the async check: an `async def` function returns coroutines."""
    if not inspect.isawaitable(result):
        return
    close = getattr(result, "close", None)
    if callable(close):
        close()  # no "coroutine was never awaited" warning later
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    raise TypeError(
        f"SyncExecutor needs a plain function, but {name} returned {type(result).__name__}; "
        "use AsyncExecutor for an `async def` function"
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
    if _running_event_loop_exists() and not getattr(asyncio, "_nest_patched", False):
        logger.warning(
            "evalexec: an event loop is already running (a notebook?), so the async "
            "function cannot run here; running the sync function on %d worker threads "
            "instead (to use the async function, apply nest_asyncio first: "
            "`import nest_asyncio; nest_asyncio.apply()`)",
            concurrency,
        )
        return SyncExecutor(sync_fn, **threaded)
    return AsyncExecutor(async_fn, concurrency=concurrency, timeout=timeout, **common)


def _running_event_loop_exists() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
