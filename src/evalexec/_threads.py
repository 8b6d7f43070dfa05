"""Plain functions on worker threads, and an event loop on a thread of its own.

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
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadCalls"]

_Job = tuple["asyncio.Future[Any]", contextvars.Context, Any]


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
            threading.Thread(target=self._serve, name="evalexec-call", daemon=True).start()
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
