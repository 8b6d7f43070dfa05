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

from evalexec._watchdog import SAMPLE_EVERY
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
    await executor.execute([0])
    await executor.execute([1])
    assert len(held_warnings(warnings_logged)) == 2


@pytest.mark.looptime
async def test_a_later_call_that_blocks_is_noticed_too(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    """The calls of a sample of the inputs are timed (one in SAMPLE_EVERY, the first
    among them), so a function that blocks only now and then is still found."""

    async def blocks_once(item: int) -> int:
        if item == SAMPLE_EVERY:  # the first input sampled after the first
            time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251  # the mistake, now and then
        await asyncio.sleep(1.0)
        return item

    blocks_once.__qualname__ = "block_then_return"  # the name the message pattern expects
    inputs = list(range(SAMPLE_EVERY + 1))
    await AsyncExecutor(blocks_once, concurrency=1).execute(inputs)
    [record] = held_warnings(warnings_logged)
    assert WARNING.fullmatch(record.getMessage())


@pytest.mark.looptime
async def test_calls_that_await_for_long_on_the_loop_clock_are_not_reported(
    warnings_logged: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGenerate(default=("ok", 30.0))  # 30 s per call on the loop's clock
    inputs = list(range(3 * SAMPLE_EVERY))
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
        "reentrant": {"outputs": [16], "warnings": 0},
        "nested_run": {"outputs": [22], "warnings": 1},
        "blocking": {"outputs": [10], "warnings": 1},
    }
