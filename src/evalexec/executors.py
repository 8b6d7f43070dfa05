"""Executors that run a generation function over many inputs: the drop-in replacement
for ``phoenix.evals.executors``.

``AsyncExecutor`` runs a coroutine function with bounded, adaptive concurrency;
``SyncExecutor`` runs a plain function in a loop; ``get_executor_on_sync_context``
picks one for the calling context. Both return ``(outputs, details)``: two lists as
long as the inputs, ``outputs[i]`` belonging to ``inputs[i]``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import signal
import threading
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sized,
)
from typing import Any, Protocol

from evalexec._checkpoint import Checkpoint, CheckpointError
from evalexec._controller import ConcurrencyController
from evalexec._details import ExecutionDetails, ExecutionStatus, Unset
from evalexec._details import _unset as _unset
from evalexec._progress import Progress
from evalexec._retry import Backoff, Verdict, decide
from evalexec._signals import handler_restored, termination_handler
from evalexec.exceptions import ErrorKind

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

_DEFAULT_TIMEOUT_SECONDS = 60
_DEFAULT_BACKOFF = Backoff()


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
    if isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | bytearray):
        return len(inputs) if isinstance(inputs, Sized) else None
    return _sized_len(inputs)  # raises the same clear error as execute()


# --------------------------------------------------------------------------------------
# AsyncExecutor


class _Work:
    """One input in play: its index, its value, and its attempt counts so far."""

    __slots__ = ("details", "errors", "index", "input", "timeouts")

    def __init__(self, index: int, input: Any, details: ExecutionDetails) -> None:
        self.index = index
        self.input = input
        self.details = details
        self.errors = 0
        self.timeouts = 0


_Entry = tuple[int, int, _Work]  # (priority, index, work): retries sort before fresh inputs
_OnFinal = Callable[[int, Any, ExecutionDetails], None]


class _Run:
    """The state of one execution. `AsyncExecutor._drive` owns its life."""

    def __init__(
        self,
        executor: AsyncExecutor,
        total: int | None,
        details: list[ExecutionDetails] | None,
        on_final: _OnFinal,
        window: int,
        checkpoint: Checkpoint | None,
        room: asyncio.Semaphore | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.executor = executor
        self.total = total
        self.details = details
        self.on_final = on_final
        self.checkpoint = checkpoint
        self.started_at = loop.time()
        self.queue: asyncio.PriorityQueue[_Entry] = asyncio.PriorityQueue()
        # At most `window` inputs are drawn and not yet final (or, for a stream that
        # passes its own `room`, not yet taken by its reader).
        self.room = asyncio.Semaphore(window) if room is None else room
        self.release_room = room is None
        self.stopped = asyncio.Event()
        self.ending = False
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self.producing = True
        self.produced = 0
        self.finished = 0
        self.inflight = 0
        self.retries = 0
        self.rate_limits = 0
        self.failures = 0
        self.paused_until = -math.inf
        self.delayed: dict[int, asyncio.TimerHandle] = {}
        controller = executor._concurrency_controller
        self.controller = controller
        self.observe_inflight: Callable[[int], None] | None = getattr(
            controller, "observe_inflight", None
        )
        # Our own controller changes its target only when told of an event, and we
        # look after every event; any other object may change from outside, so
        # gated workers look again every `inactive_check_interval` seconds.
        self.target_poll: float | None = None
        self.own_controller = isinstance(controller, ConcurrencyController)
        if controller is not None and not self.own_controller:
            self.target_poll = float(getattr(controller, "inactive_check_interval", 1.0))
        self.last_target = self._read_target()
        self.target_raised = asyncio.Event()
        self.room_freed = asyncio.Event()
        self.room_waiters = 0
        self.progress = Progress(total, executor.tqdm_bar_format, self.status_text, loop.time)

    # -- gating -------------------------------------------------------------------------
    def _read_target(self) -> int:
        controller = self.controller
        if controller is None:
            return self.executor.concurrency
        return max(1, int(controller.target_concurrency))

    def target(self) -> int:
        # Our controller changes only when told of an event, after which we look.
        return self.last_target if self.own_controller else self._read_target()

    def may_dispatch(self, worker_index: int) -> bool:
        target = self.target()
        return (
            worker_index < target
            and self.inflight < target
            and (self.paused_until == -math.inf or self.loop.time() >= self.paused_until)
        )

    def look_at_target(self) -> None:
        """Wake gated workers if the target rose."""
        target = self._read_target()
        if target > self.last_target:
            self.target_raised.set()
            self.target_raised = asyncio.Event()
        self.last_target = target

    def attempt_started(self) -> None:
        self.inflight += 1
        if self.observe_inflight is not None:
            self.observe_inflight(self.inflight)

    def attempt_ended(self) -> None:
        self.inflight -= 1
        if self.room_waiters:
            self.room_freed.set()
            self.room_freed = asyncio.Event()

    async def wait_for_turn(self, worker_index: int) -> None:
        """Wait until this worker may start a call: no cooldown running, the worker
        within the target, and fewer calls in flight than the target (after a cut, the
        calls started before it must end first)."""
        while True:
            wait = self.paused_until - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.paused_until = -math.inf
            target = self.target()
            if worker_index >= target:
                await self._wait_for_raise(worker_index == target)
            elif self.inflight >= target:
                self.room_waiters += 1
                try:
                    await self.room_freed.wait()
                finally:
                    self.room_waiters -= 1
            else:
                return

    async def _wait_for_raise(self, poll: bool) -> None:
        raised = self.target_raised
        if poll and self.target_poll is not None:
            try:
                async with asyncio.timeout(self.target_poll):
                    await raised.wait()
            except TimeoutError:
                self.look_at_target()
        else:
            await raised.wait()

    def pause_for(self, seconds: float) -> None:
        """Start no call for `seconds` (a provider's retry hint); calls in flight go on."""
        self.paused_until = max(self.paused_until, self.loop.time() + seconds)
        self.progress.refresh(force=True)

    # -- feedback -----------------------------------------------------------------------
    def record_success(self, latency: float) -> None:
        if self.controller is not None:
            self.controller.record_success(latency)
            self.look_at_target()

    def record_timeout(self) -> None:
        if self.controller is not None:
            self.controller.record_timeout()
            self.look_at_target()

    def record_error(self, started_at: float) -> None:
        if self.observe_inflight is not None:
            self.observe_inflight(self.inflight)  # what was in flight when it was refused
        if self.own_controller:
            self.controller.record_error(started_at=started_at)
        elif self.controller is not None:
            self.controller.record_error()
        else:
            return
        self.look_at_target()

    # -- the life of an input -----------------------------------------------------------
    def admit(self, index: int, item: Any) -> None:
        details = ExecutionDetails() if self.details is None else self.details[index]
        self.produced += 1
        self.enqueue(_Work(index, item, details))

    def enqueue(self, work: _Work) -> None:
        """Queue `work`: each logged error lowers its priority number by one, so retries
        run before fresh inputs; timeouts keep it."""
        self.queue.put_nowait((-work.errors, work.index, work))

    def requeue(self, work: _Work, delay: float) -> None:
        if delay > 0:
            self.delayed[work.index] = self.loop.call_later(delay, self._requeue_now, work)
        else:
            self.enqueue(work)

    def _requeue_now(self, work: _Work) -> None:
        del self.delayed[work.index]
        self.enqueue(work)

    def restored(self, index: int, output: Any, details: ExecutionDetails) -> None:
        """Input `index` finished in an earlier run: take its result from the checkpoint."""
        if self.details is not None:
            self.details[index] = details
        self.produced += 1
        self._final(index, output, details)

    def finish(self, work: _Work, output: Any) -> None:
        """`work` reached its final status (COMPLETED, COMPLETED_WITH_RETRIES or FAILED)."""
        if self.checkpoint is not None:
            try:
                self.checkpoint.record(work.index, work.input, output, work.details)
            except CheckpointError as exc:
                self.crash(exc)
        self._final(work.index, output, work.details)
        self.end_if_done()

    def _final(self, index: int, output: Any, details: ExecutionDetails) -> None:
        self.finished += 1
        if self.release_room:
            self.room.release()
        self.on_final(index, output, details)
        self.progress.advance(details.status)

    def end_if_done(self) -> None:
        if not self.producing and self.finished == self.produced:
            self.end("completed")

    def end(self, reason: str) -> None:
        """Start nothing new; `_drive` cancels what is in flight and returns."""
        if not self.ending:
            self.ending = True
            self.stop_reason = reason
            self.stopped.set()

    def crash(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.end("error")

    def interrupt(self) -> None:
        if not self.ending:
            self.progress.write(
                "evalexec: interrupted; returning the outputs finished so far "
                "(the rest are DID NOT RUN). Press Ctrl-C again to abort at once."
            )
        self.end("interrupted")

    def status_text(self) -> str:
        parts = [f"target={self.target()}", f"inflight={self.inflight}"]
        if self.retries:
            parts.append(f"retries={self.retries}")
        if self.rate_limits:
            parts.append(f"rate_limited={self.rate_limits}")
        if self.failures:
            parts.append(f"failed={self.failures}")
        cooldown = self.paused_until - self.loop.time()
        if cooldown >= 0.5:
            parts.append(f"cooldown={cooldown:.0f}s")
        return " ".join(parts)


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
            that did not complete. The file runs `pickle` when read: only use your own.
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
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_callable(generation_fn)
        self.generate = generation_fn
        self.checkpoint = checkpoint
        self.concurrency = _check_int("concurrency", concurrency, 1)
        self.tqdm_bar_format = tqdm_bar_format
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.exit_on_error = exit_on_error
        self.fallback_return_value = fallback_return_value
        self.termination_signal = termination_signal
        if timeout is None:
            self.timeout: float = _DEFAULT_TIMEOUT_SECONDS
        else:
            self.timeout = _check_seconds("timeout", timeout, allow_inf=True)
        self.backoff = backoff
        self.deadline = (
            None if deadline is None else _check_seconds("deadline", deadline, allow_inf=False)
        )
        self._concurrency_controller: Any = None
        if enable_dynamic_concurrency:
            initial = self.concurrency
            if dynamic_initial_target is not None:
                initial = _check_int("dynamic_initial_target", dynamic_initial_target, 1)
            self._concurrency_controller = ConcurrencyController(
                max_concurrency=self.concurrency,
                initial_target=initial,
                window_seconds=dynamic_window_seconds,
                increase_step=dynamic_increase_step,
                decrease_ratio=dynamic_decrease_ratio,
                inactive_check_interval=dynamic_inactive_check_interval,
                collapse_error_threshold=0,
                episode_seconds=dynamic_window_seconds,
                saturation=0.8,
                goodput_floor=0.9,
                slow_start=True,
                timeouts_cut=False,
            )

    # -- public API ---------------------------------------------------------------------
    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Run every input to a final status and return ``(outputs, details)``."""
        _sized_len(inputs)
        _refuse_nested_loop(f"{type(self).__name__}.run()", "await executor.execute(inputs)")
        with handler_restored(self.termination_signal):
            return asyncio.run(self.execute(inputs))

    async def execute(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Like `run`, from a coroutine: ``outputs, details = await executor.execute(inputs)``."""
        total = _sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]

        def keep(index: int, output: Any, _details: ExecutionDetails) -> None:
            outputs[index] = output

        await self._drive(inputs, total, details, keep)
        return outputs, details

    async def stream(
        self, inputs: Iterable[Any]
    ) -> AsyncGenerator[tuple[int, Any, ExecutionDetails], None]:
        """Yield ``(index, output, details)`` for each input as soon as it is final.

        Inputs may be of unknown length (a generator); only a bounded window of them is
        held at once. Inputs that never ran are not yielded. Leaving the loop early
        stops the run; ``await`` the iterator's ``aclose()`` (or use
        ``contextlib.aclosing``) to wait for the in-flight calls to be cancelled.
        """
        total = _stream_len(inputs)
        results: asyncio.Queue[tuple[int, Any, ExecutionDetails] | None] = asyncio.Queue()
        # A slow reader holds the window: results not yet taken count as in play.
        room = asyncio.Semaphore(4 * self.concurrency)

        def emit(index: int, output: Any, details: ExecutionDetails) -> None:
            results.put_nowait((index, output, details))

        async def drive() -> None:
            try:
                await self._drive(inputs, total, None, emit, room)
            finally:
                results.put_nowait(None)

        driver = asyncio.get_running_loop().create_task(drive())
        try:
            while (result := await results.get()) is not None:
                yield result
                room.release()
            await driver  # re-raise what ended the run, if it was an error
        finally:
            if not driver.done():
                driver.cancel()
                await asyncio.gather(driver, return_exceptions=True)

    # -- roles ----------------------------------------------------------------------------
    async def producer(self, run: _Run, inputs: Iterable[Any]) -> None:
        """Draw inputs lazily and queue them, keeping at most a window of them in play."""
        try:
            iterator = iter(inputs)
            index = 0
            while True:
                await run.room.acquire()
                if run.ending:
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                if run.total is not None and index >= run.total:
                    logger.warning(
                        "inputs yielded more items than len() reported (%d); the extra "
                        "items were not run",
                        run.total,
                    )
                    break
                stored = None if run.checkpoint is None else run.checkpoint.restore(index, item)
                if stored is None:
                    run.admit(index, item)
                else:
                    run.restored(index, *stored)
                index += 1
            if run.total is not None and index < run.total:
                logger.warning(
                    "inputs yielded %d items but len() reported %d; the missing ones are "
                    "DID NOT RUN",
                    index,
                    run.total,
                )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # from the user's iterable (or the checkpoint)
            run.crash(exc)
        finally:
            run.producing = False
            run.end_if_done()

    async def consumer(self, run: _Run, worker_index: int) -> None:
        """Take queued inputs while this worker is within the target, and attempt them."""
        queue = run.queue
        try:
            while not run.ending:
                if not run.may_dispatch(worker_index):
                    await run.wait_for_turn(worker_index)
                    continue
                entry = await queue.get()
                if run.ending:
                    return
                if not run.may_dispatch(worker_index):
                    queue.put_nowait(entry)
                    continue
                await self._attempt(run, entry[2])
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, any abort of the function's
            run.crash(exc)  # the run stops in order, then execute() raises it

    # -- one attempt, and what happens next -------------------------------------------------
    async def _attempt(self, run: _Run, work: _Work) -> None:
        """Make one attempt on `work`, then settle what happens next."""
        loop = run.loop
        run.attempt_started()
        start = loop.time()
        scope = asyncio.timeout(None if math.isinf(self.timeout) else self.timeout)
        error: BaseException | None = None
        try:
            async with scope:
                awaitable = self.generate(work.input)
                if not inspect.isawaitable(awaitable):
                    run.crash(_not_awaitable(self.generate, awaitable))
                    return
                output = await awaitable
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            error = exc  # raised by the function itself, not by us
        except Exception as exc:
            error = exc
        finally:
            elapsed = loop.time() - start
            work.details.execution_seconds += elapsed
            run.attempt_ended()
        if error is None:
            work.details.complete()
            run.record_success(elapsed)
            run.finish(work, output)
        elif isinstance(error, TimeoutError) and scope.expired():
            self._timed_out(run, work)
        else:
            self._errored(run, work, error, start)

    def _timed_out(self, run: _Run, work: _Work) -> None:
        work.details.log_exception(TimeoutError(f"attempt timed out after {self.timeout} s"))
        work.timeouts += 1
        run.record_timeout()
        if work.timeouts > self.max_retries:
            self._fail(run, work, f"timed out {work.timeouts} times")
            return
        run.retries += 1
        logger.info("input %d timed out (attempt %d); retrying", work.index, _attempts(work))
        run.requeue(work, 0.0)

    def _errored(self, run: _Run, work: _Work, exc: BaseException, started_at: float) -> None:
        work.details.log_exception(exc)
        verdict = decide(exc, work.errors, self.max_retries, self.backoff)
        if verdict.report.kind is ErrorKind.RATE_LIMIT:
            run.rate_limits += 1
            run.record_error(started_at)
            if verdict.cooldown:
                run.pause_for(verdict.cooldown)
        if not verdict.retry:
            self._fail(run, work, _describe(exc), verdict)
            return
        work.errors += 1
        run.retries += 1
        logger.info(
            "input %d raised %s (attempt %d); retrying in %.2f s",
            work.index,
            _describe(exc),
            _attempts(work) - 1,
            verdict.delay,
        )
        run.requeue(work, verdict.delay)

    def _fail(self, run: _Run, work: _Work, cause: str, verdict: Verdict | None = None) -> None:
        work.details.fail()
        run.failures += 1
        logger.warning("input %d FAILED after %d attempts: %s", work.index, _attempts(work), cause)
        run.finish(work, self.fallback_return_value)
        if verdict is not None and verdict.stop_run:
            if not run.ending:
                run.progress.write(
                    f"evalexec: stopping the run: the provider says the quota is exhausted "
                    f"({cause}); retrying cannot help. Finished outputs are kept."
                )
            run.end("quota exhausted")
        elif self.exit_on_error:
            run.end("failed")

    # -- the run ---------------------------------------------------------------------------
    async def _drive(
        self,
        inputs: Iterable[Any],
        total: int | None,
        details: list[ExecutionDetails] | None,
        on_final: _OnFinal,
        room: asyncio.Semaphore | None = None,
    ) -> None:
        checkpoint = None if self.checkpoint is None else Checkpoint(self.checkpoint)
        try:
            await self._drive_with(inputs, total, details, on_final, checkpoint, room)
        finally:
            if checkpoint is not None:
                checkpoint.close()

    async def _drive_with(
        self,
        inputs: Iterable[Any],
        total: int | None,
        details: list[ExecutionDetails] | None,
        on_final: _OnFinal,
        checkpoint: Checkpoint | None,
        room: asyncio.Semaphore | None,
    ) -> None:
        run = _Run(self, total, details, on_final, 4 * self.concurrency, checkpoint, room)
        loop = run.loop

        def on_signal() -> None:
            loop.call_soon_threadsafe(run.interrupt)

        deadline = None
        if self.deadline is not None:
            deadline = loop.call_later(self.deadline, run.end, "deadline")
        try:
            with termination_handler(self.termination_signal, on_signal):
                tasks = [loop.create_task(self.producer(run, inputs))]
                tasks += [
                    loop.create_task(self.consumer(run, index)) for index in range(self.concurrency)
                ]
                try:
                    await run.stopped.wait()
                finally:
                    run.end("cancelled")
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if deadline is not None:
                deadline.cancel()
            for handle in run.delayed.values():
                handle.cancel()
            inputs_seen = run.produced if run.total is None else run.total
            seconds = loop.time() - run.started_at
            run.progress.close(inputs_seen, run.retries, seconds)
        if run.stop_reason == "deadline":
            logger.warning(
                "evalexec: the deadline of %s s passed; the run was stopped", self.deadline
            )
        if run.error is not None:
            raise run.error


def _describe(exc: BaseException) -> str:
    """`repr(exc)`, or a stand-in when the exception cannot even describe itself."""
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__qualname__} whose repr() failed>"


def _attempts(work: _Work) -> int:
    return work.errors + work.timeouts + 1


def _not_awaitable(fn: Callable[..., Any], result: object) -> TypeError:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return TypeError(
        f"AsyncExecutor needs a function that returns an awaitable, but {name} returned "
        f"{type(result).__name__}; pass an `async def` function, or use SyncExecutor for a "
        "plain function"
    )


def _refuse_awaitable(fn: Callable[..., Any], result: object) -> None:
    """SyncExecutor's mirror of `_not_awaitable`: an `async def` function returns coroutines."""
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


def _refuse_nested_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if not getattr(asyncio, "_nest_patched", False):
        raise RuntimeError(
            f"{what} cannot be called from inside a running event loop; use "
            f"`{instead}` there, or apply nest_asyncio first "
            "(`import nest_asyncio; nest_asyncio.apply()`)"
        )


# --------------------------------------------------------------------------------------
# SyncExecutor


class _Interrupted(BaseException):
    """Raised inside an in-flight call by the first termination signal of a sync run."""


class SyncExecutor:
    """Run a plain function over many inputs, one after another, with retries.

    Rate-limit and transient errors are retried after a backoff sleep that honours the
    provider's retry hints; a `PhoenixException` (that is not a rate limit) fails at once.
    The first termination signal interrupts the call in flight and returns what has
    finished; the second raises `KeyboardInterrupt`.
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
        backoff: Backoff | None = _DEFAULT_BACKOFF,
        deadline: float | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_callable(generation_fn)
        self.generate = generation_fn
        self.checkpoint = checkpoint
        self.tqdm_bar_format = tqdm_bar_format
        self.max_retries = _check_int("max_retries", max_retries, 0)
        self.exit_on_error = exit_on_error
        self.fallback_return_value = fallback_return_value
        self.termination_signal = termination_signal
        self.backoff = backoff
        self.deadline = (
            None if deadline is None else _check_seconds("deadline", deadline, allow_inf=False)
        )
        self._clock = clock
        self._sleep = sleep
        self._stop_reason: str | None = None
        self._in_call = False

    def run(self, inputs: Any) -> tuple[list[Any], list[ExecutionDetails]]:
        """Run every input to a final status and return ``(outputs, details)``."""
        total = _sized_len(inputs)
        outputs = [self.fallback_return_value] * total
        details = [ExecutionDetails() for _ in range(total)]
        for _ in self._steps(inputs, total, details, outputs, stream=False):
            pass
        return outputs, details

    def stream(
        self, inputs: Iterable[Any]
    ) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
        """Yield ``(index, output, details)`` for each input as soon as it is final."""
        total = _stream_len(inputs)
        yield from self._steps(inputs, total, None, None, stream=True)

    def _steps(
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
        in the function, not in bookkeeping. Retries go through `_run_one`.
        """
        self._stop_reason = None
        self._in_call = False
        clock = self._clock
        generate = self.generate
        started = clock()
        stop_at = math.inf if self.deadline is None else started + self.deadline
        retries = 0
        drawn = 0
        completed = ExecutionStatus.COMPLETED
        unchecked = True  # the first output tells whether the function is async by mistake
        checkpoint = None if self.checkpoint is None else Checkpoint(self.checkpoint)
        progress = Progress(total, self.tqdm_bar_format, lambda: f"retries={retries}", clock)
        try:
            with termination_handler(self.termination_signal, self._on_signal):
                for index, item in enumerate(inputs):
                    if total is not None and index >= total:
                        logger.warning(
                            "inputs yielded more items than len() reported (%d); the extra "
                            "items were not run",
                            total,
                        )
                        break
                    if self._stop_reason is not None:
                        break
                    drawn += 1
                    stored = None if checkpoint is None else checkpoint.restore(index, item)
                    if stored is not None:
                        output, record = stored
                        if details is not None:
                            details[index] = record
                    else:
                        record = ExecutionDetails() if details is None else details[index]
                        if stop_at != math.inf and clock() >= stop_at:
                            self._stop_reason = "deadline"
                            break
                        try:
                            output, error = self._call(item, record)
                        except _Interrupted:
                            break
                        if unchecked and error is None:
                            unchecked = False
                            _refuse_awaitable(generate, output)
                        if error is None:
                            record.status = completed
                        else:
                            finished, output, tries = self._retry(
                                index, item, record, stop_at, error
                            )
                            retries += tries
                            if not finished:
                                break
                        if checkpoint is not None:
                            checkpoint.record(index, item, output, record)
                    if outputs is not None:
                        outputs[index] = output
                    progress.advance(record.status)
                    if stream:
                        yield index, output, record
                    if record.status is ExecutionStatus.FAILED and (
                        self.exit_on_error or self._stop_reason is not None
                    ):
                        break
        finally:
            self._in_call = False
            if checkpoint is not None:
                checkpoint.close()
            if self._stop_reason == "interrupted":
                progress.write(
                    "evalexec: interrupted; returning the outputs finished so far "
                    "(the rest are DID NOT RUN)."
                )
            elif self._stop_reason == "deadline":
                logger.warning(
                    "evalexec: the deadline of %s s passed; the run was stopped", self.deadline
                )
            inputs_seen = drawn if total is None else total
            progress.close(inputs_seen, retries, clock() - started)

    def _retry(
        self, index: int, item: Any, details: ExecutionDetails, stop_at: float, error: Exception
    ) -> tuple[bool, Any, int]:
        """Handle a failed attempt and retry until the input is final.

        Returns ``(finished, output, retries)``; not finished when the run was stopped.
        """
        errors = 0
        while True:
            details.log_exception(error)
            verdict = decide(error, errors, self.max_retries, self.backoff)
            if not verdict.retry:
                details.fail()
                logger.warning(
                    "input %d FAILED after %d attempts: %s", index, errors + 1, _describe(error)
                )
                if verdict.stop_run:
                    self._stop_reason = "quota exhausted"
                    logger.error(
                        "evalexec: stopping the run: the provider says the quota is "
                        "exhausted (%s); retrying cannot help",
                        _describe(error),
                    )
                return True, self.fallback_return_value, errors
            errors += 1
            wait = max(verdict.delay, verdict.cooldown or 0.0)
            logger.info("attempt %d raised %s; retrying in %.2f s", errors, _describe(error), wait)
            if wait > 0 and not self._pause(min(wait, stop_at - self._clock())):
                return False, None, errors
            if self._clock() >= stop_at:
                self._stop_reason = "deadline"
            if self._stop_reason is not None:
                return False, None, errors
            try:
                output, failure = self._call(item, details)
            except _Interrupted:
                return False, None, errors
            if failure is not None:
                error = failure
                continue
            details.complete()
            return True, output, errors

    def _call(self, item: Any, details: ExecutionDetails) -> tuple[Any, Exception | None]:
        """One attempt: ``(output, None)`` or ``(None, error)``; its seconds are added to
        `details`. The first termination signal raises `_Interrupted` out of it."""
        clock = self._clock
        start = clock()
        self._in_call = True
        try:
            return self.generate(item), None
        except Exception as exc:
            return None, exc
        finally:
            self._in_call = False
            details.execution_seconds += clock() - start

    def _pause(self, seconds: float) -> bool:
        """Sleep between attempts; False if the run was asked to stop, before or during it."""
        if self._stop_reason is not None:
            return False
        if seconds <= 0:
            return True
        try:
            self._in_call = True
            try:
                self._sleep(seconds)
            finally:
                self._in_call = False
        except _Interrupted:
            return False
        return True

    def _on_signal(self) -> None:
        self._stop_reason = "interrupted"
        if self._in_call:
            raise _Interrupted


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

    A `SyncExecutor` off the main thread (with no signal handler), when `run_sync` is
    True, or inside a running event loop that nest_asyncio has not patched; an
    `AsyncExecutor` otherwise.
    """
    common: dict[str, Any] = {
        "tqdm_bar_format": tqdm_bar_format,
        "max_retries": max_retries,
        "exit_on_error": exit_on_error,
        "fallback_return_value": fallback_return_value,
    }
    if threading.current_thread() is not threading.main_thread():
        if not run_sync:
            logger.warning(
                "evalexec: async execution needs the main thread; running synchronously "
                "in this thread instead (pass run_sync=True to silence this warning)"
            )
        return SyncExecutor(sync_fn, termination_signal=None, **common)
    if run_sync:
        return SyncExecutor(sync_fn, **common)
    if _running_event_loop_exists() and not getattr(asyncio, "_nest_patched", False):
        logger.warning(
            "evalexec: an event loop is already running (a notebook?), so the evals run "
            "synchronously, which is much slower. To run them concurrently, apply "
            "nest_asyncio first: `import nest_asyncio; nest_asyncio.apply()` "
            "(pip install 'evalexec[notebook]')"
        )
        return SyncExecutor(sync_fn, **common)
    return AsyncExecutor(async_fn, concurrency=concurrency, timeout=timeout, **common)


def _running_event_loop_exists() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
