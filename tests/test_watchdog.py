"""A blocking call inside `async def` is noticed and named once per run, with the fix.

A blocking call takes real time whatever the loop's clock says, so the functions here
really block (`time.sleep`, briefly); the tests assert only whether the warning is
there, never a duration. The other calls wait on virtual time (looptime) or on a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalexec._watchdog import SAMPLE_PERIOD, SAMPLE_SIZE
from evalexec.executors import AsyncExecutor, ExecutionStatus
from tests.fakes import FakeGenerate, output_for

SCRIPTS = Path(__file__).parent / "scripts"
BLOCK_SECONDS = 0.3  # a real blocking call: well over the 0.1 s a step may take

WARNING = re.compile(
    re.escape("evalexec: a call to block_then_return held the event loop for ")
    + r"\d+\.\d\d"
    + re.escape(
        " s without awaiting (a blocking call inside `async def`, such as time.sleep or a "
        "sync client); meanwhile no other call ran and Ctrl-C had to wait. Use an async "
        "client (e.g. openai.AsyncOpenAI) and await it, or pass the plain function to "
        "SyncExecutor(fn, concurrency=N), which runs it on threads."
    )
)


async def block_then_return(item: int) -> int:
    time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  # the mistake the watchdog is for
    return item


def held_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "held the event loop" in r.getMessage()]


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="evalexec")
    return caplog


@pytest.mark.looptime
async def test_a_blocking_call_in_every_input_is_reported_once_with_the_fix(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    inputs = list(range(5))
    outputs, details = await AsyncExecutor(block_then_return, concurrency=5).execute(inputs)
    assert outputs == inputs
    assert [d.status for d in details] == [ExecutionStatus.COMPLETED] * 5
    [record] = held_warnings(warnings_logged)
    assert (record.name, record.levelno) == ("evalexec", logging.WARNING)
    assert WARNING.fullmatch(record.getMessage())


@pytest.mark.looptime
async def test_each_run_reports_its_own_blocking_call(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    executor = AsyncExecutor(block_then_return)
    await executor.execute([0, 1])
    await executor.execute([2, 3])
    assert len(held_warnings(warnings_logged)) == 2


@pytest.mark.looptime
async def test_a_first_call_that_holds_the_loop_once_to_load_something_is_not_reported(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    """A lazy import or a tokenizer loaded on first use holds the loop once; telling the
    user to switch clients would mislead. A blocking call holds it on every call."""
    loaded: list[bool] = []

    async def loads_on_first_use(item: int) -> int:
        if not loaded:
            time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  # a one-off load, on the loop
            loaded.append(True)
        await asyncio.sleep(1.0)
        return item

    inputs = list(range(5))
    outputs, _ = await AsyncExecutor(loads_on_first_use, concurrency=1).execute(inputs)
    assert outputs == inputs
    assert loaded == [True]
    assert held_warnings(warnings_logged) == []


@pytest.mark.looptime
async def test_a_function_that_blocks_only_in_later_calls_is_noticed_too(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    """The calls of a sample of the inputs are timed (SAMPLE_SIZE in a row in every
    SAMPLE_PERIOD, the first ones among them), so blocking that starts late is found."""

    async def blocks_later(item: int) -> int:
        if item >= SAMPLE_PERIOD:  # the next sample of inputs
            time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  # the mistake, late in the run
        await asyncio.sleep(1.0)
        return item

    blocks_later.__qualname__ = "block_then_return"  # the name the message pattern expects
    inputs = list(range(SAMPLE_PERIOD + SAMPLE_SIZE))
    await AsyncExecutor(blocks_later, concurrency=8).execute(inputs)
    [record] = held_warnings(warnings_logged)
    assert WARNING.fullmatch(record.getMessage())


@pytest.mark.looptime
async def test_calls_that_await_for_long_on_the_loop_clock_are_not_reported(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGenerate(default=("ok", 30.0))  # 30 s per call on the loop's clock
    inputs = list(range(3 * SAMPLE_PERIOD))
    outputs, _ = await AsyncExecutor(fake, concurrency=4).execute(inputs)
    assert outputs == [output_for(i) for i in inputs]
    assert held_warnings(warnings_logged) == []


async def test_a_call_that_waits_for_a_thread_holds_nothing_and_is_not_reported(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    """Real time passes during the attempt, but the loop is free all along."""

    async def on_a_thread(item: int) -> int:
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, BLOCK_SECONDS)
        return item

    outputs, _ = await AsyncExecutor(on_a_thread, concurrency=3).execute([0, 1, 2])
    assert outputs == [0, 1, 2]
    assert held_warnings(warnings_logged) == []


def test_after_nest_asyncio_a_call_that_runs_the_loop_itself_is_not_reported() -> None:
    """In a subprocess, because nest_asyncio patches asyncio for the whole process.

    `asyncio.run` inside the function then runs the same loop (other calls go on); an
    executor's `run()` inside it runs a loop of its own (ours waits: reported), and a
    plain blocking call is reported on a patched loop as on any other.
    """
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / "nested_watch.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {
        "reentrant": {"outputs": [16, 17], "warnings": 0},
        "nested_run": {"outputs": [22, 23], "warnings": 1},
        "blocking": {"outputs": [10, 11], "warnings": 1},
    }
