"""Event loops: running a run on a loop of its own, and refusing a loop where none can be.

`run_on_new_loop` is `asyncio.run` with two changes that keep finished work and a
prompt abort; `refuse_nested_loop` says what to do instead of `run()` inside a
running loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from evalexec._signals import handler_restored, termination_handler
from evalexec.exceptions import NestedRunError

__all__ = [
    "cancel_all",
    "refuse_nested_loop",
    "results_kept",
    "run_on_new_loop",
    "running_loop_exists",
]

_T = TypeVar("_T")
ABORT_GRACE_SECONDS = 0.2  # on a second Ctrl-C, how long tasks get to end before we go


def refuse_nested_loop(what: str, instead: str) -> None:
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


def running_loop_exists() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_on_new_loop(main: Coroutine[Any, Any, _T], signum: signal.Signals | None) -> _T:
    """Run `main` on a new event loop in this thread, like `asyncio.run`, except:

    - A termination signal that lands after the run's own handler is gone (its results
      are safe) but before this returns is swallowed: finished work is never lost.
    - On a second Ctrl-C, the tasks still running get a moment to end and are then
      abandoned: the abort never waits for a cleanup that will not finish.
    """
    loop = asyncio.new_event_loop()
    try:
        with handler_restored(signum), results_kept(signum):
            task = loop.create_task(main)
            try:
                result = loop.run_until_complete(task)
            except BaseException:
                cancel_all(loop, grace=ABORT_GRACE_SECONDS)
                raise
            cancel_all(loop, grace=None)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            return result
    finally:
        loop.close()


def _results_are_safe(announce: bool) -> bool:
    return False  # the run has its results; a first Ctrl-C now changes nothing


def results_kept(signum: signal.Signals | None) -> AbstractContextManager[bool]:
    """Around a whole `run()`: a first signal that lands once the run's own handler is
    gone (its results are safe) changes nothing, instead of raising KeyboardInterrupt."""
    return termination_handler(signum, _results_are_safe)


def cancel_all(loop: asyncio.AbstractEventLoop, grace: float | None) -> None:
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
