"""The threaded `SyncExecutor`: plain functions on worker threads, driven by the engine
on an event loop of a thread of its own.

`ThreadCalls` runs the user's function on daemon threads and hands each result back
to the engine's loop as an `asyncio.Future`, so the threaded `SyncExecutor` is the
same engine as `AsyncExecutor` with a different attempt. A thread cannot be killed:
when an attempt is abandoned (its timeout, a stop), its thread runs the call to the
end and the result is dropped, never attached to anything. The threads are daemons,
so a call that never returns cannot keep the interpreter from exiting; one is started
whenever no idle thread is free, so abandoned calls never starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from functools import partial
from typing import Any

from evalexec._details import ExecutionDetails
from evalexec._engine import WINDOW_PER_WORKER, OnFinal, Run, RunConfig, RunSnapshot, drive
from evalexec._loops import run_on_new_loop
from evalexec._signals import termination_handler

__all__ = ["RunHandle", "ThreadCalls", "drive_on_thread", "stream_on_thread"]

_Job = tuple["asyncio.Future[Any]", contextvars.Context, Any]
_thread_numbers = itertools.count(1)  # names threads apart in logs, tracebacks and traces


class ThreadCalls:
    """``calls(item)`` returns a future of ``fn(item)`` run on a worker thread.

    Call it on the loop's thread; `close` when the run ends (idle threads exit; busy
    ones exit when their call returns).
    """

    def __init__(self, fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop) -> None:
        self._fn = fn
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that no submitted job has claimed
        self._threads = 0  # threads alive
        self._closed = False

    def __call__(self, item: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
        # The context of the call's caller (the attempt) goes with it: context
        # variables, and so tracing spans, reach the function on its thread.
        self._jobs.put((future, contextvars.copy_context(), item))
        if spawn:
            name = f"evalexec-call-{next(_thread_numbers)}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _serve(self) -> None:
        jobs = self._jobs
        try:
            while (job := jobs.get()) is not None:
                future, context, item = job
                del job
                try:
                    outcome: tuple[bool, Any] = (True, context.run(self._fn, item))
                except BaseException as exc:  # delivered to the attempt, which decides
                    outcome = (False, exc)
                self._deliver(future, outcome)
                del future, context, item, outcome
                with self._lock:
                    if self._closed:
                        return
                    self._idle += 1
        finally:
            with self._lock:
                self._threads -= 1

    def _deliver(self, future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
        # A closed loop means the run is over and nobody waits for this result.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return  # abandoned (timed out or stopped): the late result is dropped
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# -- a threaded run, driven on an event loop of its own thread ----------------------------


class RunHandle:
    """The calling thread's handle on a run driven on another thread's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run: Run | None = None
        self._pending: bool | None = None  # a signal that came before the run started

    def attach(self, run: Run) -> None:
        with self._lock:
            self.run = run
            pending = self._pending
        if pending is not None:
            run.interrupt(pending)

    def on_signal(self, announce: bool) -> bool:
        """The termination signal, as the calling thread's handler receives it."""
        with self._lock:
            run = self.run
            if run is None:
                self._pending = announce
                return False
        call_soon(run, partial(run.interrupt, announce))
        return False

    def abort(self) -> None:
        """The caller gave up (a second Ctrl-C, a closed stream): stop, without waiting."""
        self.on_signal(False)

    # -- control from code: the run's own, once it has started --------------------------
    def _started(self) -> Run:
        run = self.run
        if run is None:
            raise RuntimeError("the run has not started yet")
        return run

    def pause(self) -> None:
        self._started().pause()

    def resume(self) -> None:
        self._started().resume()

    def cancel(self) -> None:
        self._started().cancel()

    def set_concurrency(self, ceiling: int) -> None:
        self._started().set_concurrency(ceiling)

    def snapshot(self) -> RunSnapshot:
        return self._started().snapshot()


def call_soon(run: Run, callback: Callable[[], Any]) -> None:
    with contextlib.suppress(RuntimeError):  # the run's loop has closed: nothing to do
        run.loop.call_soon_threadsafe(callback)


def _drive_here(
    config: RunConfig,
    inputs: Iterable[Any],
    total: int | None,
    details: list[ExecutionDetails] | None,
    on_final: OnFinal,
    room: asyncio.Semaphore | None,
    handle: RunHandle,
) -> Run:
    """Drive a threaded run on a new event loop in this (non-main) thread."""

    async def main() -> Run:
        calls = ThreadCalls(config.function, asyncio.get_running_loop())
        try:
            return await drive(
                dataclasses.replace(config, call=calls),
                inputs,
                total,
                details,
                on_final,
                room=room,
                install_handler=False,
                started=handle.attach,
            )
        finally:
            calls.close()

    return run_on_new_loop(main(), None)


def drive_on_thread(
    config: RunConfig,
    inputs: Iterable[Any],
    total: int | None,
    details: list[ExecutionDetails] | None,
    on_final: OnFinal,
    handle: RunHandle,
) -> Run:
    """Drive a threaded run on a thread of its own and wait for it.

    The calling thread (any thread, with or without a running loop) holds the
    termination handler, if it is the main thread, and forwards the signal.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["run"] = _drive_here(config, inputs, total, details, on_final, None, handle)
        except BaseException as exc:
            box["error"] = exc

    # The caller's context (its current tracing span, say) goes with the run.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name="evalexec-run", daemon=True)
    with termination_handler(config.termination_signal, handle.on_signal):
        thread.start()
        try:
            thread.join()
        except BaseException:
            handle.abort()  # a second Ctrl-C: do not wait for the run to wind down
            raise
    if "error" in box:
        raise box["error"]
    run: Run = box["run"]
    return run


def stream_on_thread(
    config: RunConfig, inputs: Iterable[Any], total: int | None, handle: RunHandle
) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
    """A threaded run's results as a plain iterator, each as soon as it is final.

    At most a window of inputs is drawn and not yet read, so a reader that stops
    reading stops the run from drawing more; closing the iterator stops the run.
    """
    results: queue.SimpleQueue[tuple[int, Any, ExecutionDetails] | None] = queue.SimpleQueue()
    room = asyncio.Semaphore(WINDOW_PER_WORKER * config.concurrency)
    box: dict[str, Any] = {}

    def emit(index: int, output: Any, details: ExecutionDetails) -> None:
        results.put((index, output, details))

    def target() -> None:
        try:
            box["run"] = _drive_here(config, inputs, total, None, emit, room, handle)
        except BaseException as exc:
            box["error"] = exc
        finally:
            results.put(None)

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(target,), name="evalexec-stream", daemon=True
    )
    thread.start()
    try:
        while True:
            # The handler is ours only while we wait for the next result: a stream left
            # open, or read on another thread, never keeps it installed.
            with termination_handler(config.termination_signal, handle.on_signal):
                result = results.get()
            if result is None:
                break
            yield result
            if handle.run is not None:
                call_soon(handle.run, room.release)
        thread.join()
        if "error" in box:
            raise box["error"]
        run = box.get("run")
        if run is not None and run.error is not None:
            raise run.error
    finally:
        if thread.is_alive():
            handle.abort()
