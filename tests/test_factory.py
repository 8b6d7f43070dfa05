"""get_executor_on_sync_context: every row of the choice table of SPEC §2."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from evalexec.executors import (
    AsyncExecutor,
    Executor,
    SyncExecutor,
    _unset,
    get_executor_on_sync_context,
)
from tests.fakes import in_thread

ROOT = Path(__file__).resolve().parent.parent


def sync_fn(item: Any) -> str:
    return f"sync:{item}"


async def async_fn(item: Any) -> str:
    return f"async:{item}"


PASSED_THROUGH: dict[str, Any] = {
    "tqdm_bar_format": "{l_bar}{bar}",
    "max_retries": 4,
    "exit_on_error": False,
    "fallback_return_value": "fb",
}


def assert_passed_through(executor: Any) -> None:
    for name, value in PASSED_THROUGH.items():
        assert getattr(executor, name) == value, name


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "evalexec" and record.levelno == logging.WARNING
    ]


@pytest.fixture
def no_nest_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(asyncio, "_nest_patched", raising=False)


@pytest.fixture
def nest_asyncio_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend nest_asyncio was applied: it marks asyncio with `_nest_patched`."""
    monkeypatch.setattr(asyncio, "_nest_patched", True, raising=False)


# -- not on the main thread ---------------------------------------------------------------


def test_off_the_main_thread_a_sync_executor_without_a_signal_handler_is_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = in_thread(lambda: get_executor_on_sync_context(sync_fn, async_fn, **PASSED_THROUGH))
    assert type(executor) is SyncExecutor
    assert executor.termination_signal is None
    assert executor.generate is sync_fn
    assert_passed_through(executor)
    [message] = warnings_of(caplog)
    assert "main thread" in message
    assert "run_sync=True" in message


def test_off_the_main_thread_run_sync_silences_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = in_thread(lambda: get_executor_on_sync_context(sync_fn, async_fn, run_sync=True))
    assert type(executor) is SyncExecutor
    assert executor.termination_signal is None
    assert warnings_of(caplog) == []


def test_off_the_main_thread_the_chosen_executor_runs_there() -> None:
    def choose_and_run() -> tuple[list[Any], list[Any]]:
        return get_executor_on_sync_context(sync_fn, async_fn).run([1, 2])

    outputs, _ = in_thread(choose_and_run)
    assert outputs == ["sync:1", "sync:2"]


async def test_off_the_main_thread_a_running_loop_elsewhere_does_not_matter(
    caplog: pytest.LogCaptureFixture, nest_asyncio_applied: None
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = in_thread(lambda: get_executor_on_sync_context(sync_fn, async_fn))
    assert type(executor) is SyncExecutor
    assert executor.termination_signal is None
    assert len(warnings_of(caplog)) == 1


# -- run_sync=True ------------------------------------------------------------------------


def test_run_sync_chooses_a_sync_executor_with_the_default_signal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = get_executor_on_sync_context(sync_fn, async_fn, run_sync=True, **PASSED_THROUGH)
    assert type(executor) is SyncExecutor
    assert executor.termination_signal is signal.SIGINT
    assert executor.generate is sync_fn
    assert_passed_through(executor)
    assert warnings_of(caplog) == []


async def test_run_sync_wins_over_a_patched_running_loop(nest_asyncio_applied: None) -> None:
    executor = get_executor_on_sync_context(sync_fn, async_fn, run_sync=True)
    assert type(executor) is SyncExecutor


# -- a running event loop -----------------------------------------------------------------


async def test_a_running_loop_patched_by_nest_asyncio_gets_an_async_executor(
    caplog: pytest.LogCaptureFixture, nest_asyncio_applied: None
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = get_executor_on_sync_context(
        sync_fn, async_fn, concurrency=7, timeout=12.5, **PASSED_THROUGH
    )
    assert type(executor) is AsyncExecutor
    assert executor.generate is async_fn
    assert executor.concurrency == 7
    assert executor.timeout == 12.5
    assert executor.termination_signal is signal.SIGINT
    assert_passed_through(executor)
    assert warnings_of(caplog) == []


async def test_a_running_loop_without_nest_asyncio_falls_back_to_sync_with_a_warning(
    caplog: pytest.LogCaptureFixture, no_nest_asyncio: None
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = get_executor_on_sync_context(sync_fn, async_fn, concurrency=7, **PASSED_THROUGH)
    assert type(executor) is SyncExecutor
    assert executor.generate is sync_fn
    assert executor.termination_signal is signal.SIGINT
    assert_passed_through(executor)
    [message] = warnings_of(caplog)
    assert "nest_asyncio.apply()" in message
    assert "import nest_asyncio" in message


async def test_the_sync_fallback_in_a_running_loop_runs(no_nest_asyncio: None) -> None:
    outputs, _ = get_executor_on_sync_context(sync_fn, async_fn).run(["a"])
    assert outputs == ["sync:a"]


def test_nest_asyncio_applied_in_a_running_loop_lets_the_async_executor_run() -> None:
    """A real nest_asyncio, in a subprocess: it patches asyncio for the whole process."""
    pytest.importorskip("nest_asyncio", reason="nest_asyncio is an optional extra")
    script = textwrap.dedent(
        """
        import asyncio

        import nest_asyncio

        from evalexec.executors import AsyncExecutor, get_executor_on_sync_context


        def sync_fn(item):
            raise AssertionError("the sync function must not be chosen")


        async def async_fn(item):
            await asyncio.sleep(0)
            return item * 2


        async def main():
            nest_asyncio.apply()
            executor = get_executor_on_sync_context(sync_fn, async_fn, concurrency=2)
            assert type(executor) is AsyncExecutor, type(executor)
            outputs, details = executor.run([1, 2, 3])
            print(outputs, [d.status.name for d in details])


        asyncio.run(main())
        """
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[2, 4, 6] ['COMPLETED', 'COMPLETED', 'COMPLETED']"


# -- no running event loop ----------------------------------------------------------------


def test_without_a_running_loop_an_async_executor_is_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    executor = get_executor_on_sync_context(
        sync_fn, async_fn, concurrency=7, timeout=12.5, **PASSED_THROUGH
    )
    assert type(executor) is AsyncExecutor
    assert executor.generate is async_fn
    assert executor.concurrency == 7
    assert executor.timeout == 12.5
    assert executor.termination_signal is signal.SIGINT
    assert_passed_through(executor)
    assert warnings_of(caplog) == []


def test_the_defaults_reach_the_async_executor() -> None:
    executor = get_executor_on_sync_context(sync_fn, async_fn)
    assert type(executor) is AsyncExecutor
    assert executor.concurrency == 3
    assert executor.timeout == 60
    assert executor.max_retries == 10
    assert executor.exit_on_error is True
    assert executor.fallback_return_value is _unset
    assert executor.tqdm_bar_format is None


def test_the_chosen_async_executor_runs() -> None:
    executor: Executor = get_executor_on_sync_context(sync_fn, async_fn)
    outputs, _ = executor.run(["a", "b"])
    assert outputs == ["async:a", "async:b"]


def test_bad_arguments_reach_the_executor_checks() -> None:
    with pytest.raises(ValueError, match=r"^concurrency must be >= 1, got 0$"):
        get_executor_on_sync_context(sync_fn, async_fn, concurrency=0)
    with pytest.raises(ValueError, match=r"^max_retries must be >= 0, got -1$"):
        get_executor_on_sync_context(sync_fn, async_fn, run_sync=True, max_retries=-1)
