"""Where evalexec is called from (SPEC get_executor_on_sync_context, "Termination",
§3): a real Jupyter kernel, a non-main thread, a thread with its own running loop, and
a coroutine of a web server calling the sync API.

The notebook runs in a real IPython kernel (nbclient + ipykernel); nest_asyncio is
applied only in its last cells, and in a subprocess elsewhere, since it patches
asyncio for the whole process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from evalexec.executors import (
    AsyncExecutor,
    ExecutionStatus,
    SyncExecutor,
    get_executor_on_sync_context,
)
from tests.fakes import in_thread

SCRIPTS = Path(__file__).parent / "scripts"
DONE = [2, 4, 6]
NOT_AWAITED = "await executor.execute(inputs)"


async def double_async(item: int) -> int:
    await asyncio.sleep(0)
    return 2 * item


def double(item: int) -> int:
    return 2 * item


# -- a real Jupyter kernel -----------------------------------------------------------------

SETUP = """
import asyncio, json, logging, signal
from evalexec.executors import AsyncExecutor, get_executor_on_sync_context

async def double_async(item):
    await asyncio.sleep(0)
    return 2 * item

def double(item):
    return 2 * item

def report(name, executor=None, outputs=None, details=None, **extra):
    print(json.dumps({
        "cell": name,
        "executor": type(executor).__name__ if executor is not None else None,
        "outputs": outputs,
        "statuses": [d.status.name for d in details] if details is not None else None,
        "handler_restored": signal.getsignal(signal.SIGINT) is before,
        **extra,
    }))

BAR = "{l_bar}{bar}{r_bar}"
"""

WITHOUT_NEST_ASYNCIO = """
import threading
before = signal.getsignal(signal.SIGINT)  # the kernel may set its own for this cell
barrier = threading.Barrier(3, timeout=30)  # opens only with 3 calls in flight at once

def meet(item):
    barrier.wait()
    return 2 * item

executor = get_executor_on_sync_context(meet, double_async, concurrency=3, tqdm_bar_format=BAR)
outputs, details = executor.run([1, 2, 3])
report("without nest_asyncio", executor, outputs, details, concurrency=executor.concurrency)
"""

RUN_REFUSED = """
before = signal.getsignal(signal.SIGINT)  # the kernel may set its own for this cell
try:
    AsyncExecutor(double_async).run([1, 2, 3])
except RuntimeError as exc:
    report("run refused", error=str(exc))
"""

TOP_LEVEL_AWAIT = """
before = signal.getsignal(signal.SIGINT)  # the kernel may set its own for this cell
executor = AsyncExecutor(double_async, concurrency=2, tqdm_bar_format=BAR)
outputs, details = await executor.execute([1, 2, 3])
report("top-level await", executor, outputs, details)
"""

WITH_NEST_ASYNCIO = """
import nest_asyncio
nest_asyncio.apply()
before = signal.getsignal(signal.SIGINT)
executor = get_executor_on_sync_context(double, double_async, tqdm_bar_format=BAR)
outputs, details = executor.run([1, 2, 3])
report("with nest_asyncio", executor, outputs, details)
"""


def reports(cell: Any) -> list[dict[str, Any]]:
    texts = [o["text"] for o in cell.outputs if o.get("name") == "stdout"]
    return [json.loads(line) for line in "".join(texts).splitlines() if line.startswith("{")]


def stderr_of(cell: Any) -> str:
    return "".join(o["text"] for o in cell.outputs if o.get("name") == "stderr")


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run the notebook once in a fresh kernel; the tests read its cells' outputs."""
    cells = [SETUP, WITHOUT_NEST_ASYNCIO, RUN_REFUSED, TOP_LEVEL_AWAIT, WITH_NEST_ASYNCIO]
    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    workdir = tmp_path_factory.mktemp("notebook")
    client = nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    nbformat.validate(nb)
    return nb


@pytest.mark.timeout(180)
def test_notebook_without_nest_asyncio_runs_the_sync_function_on_threads_with_a_warning(
    notebook: Any,
) -> None:
    """The barrier in the cell opens only if the 3 calls run at once."""
    cell = notebook.cells[1]
    assert reports(cell) == [
        {
            "cell": "without nest_asyncio",
            "executor": "SyncExecutor",
            "outputs": DONE,
            "statuses": ["COMPLETED"] * 3,
            "handler_restored": True,
            "concurrency": 3,
        }
    ]
    warning = stderr_of(cell)
    assert "an event loop is already running" in warning
    assert "running the sync function on 3 worker threads" in warning
    assert "nest_asyncio.apply()" in warning


@pytest.mark.timeout(180)
def test_notebook_run_of_an_async_executor_says_to_await_execute(notebook: Any) -> None:
    (report,) = reports(notebook.cells[2])
    assert NOT_AWAITED in report["error"]
    assert "nest_asyncio" in report["error"]
    assert report["handler_restored"] is True


@pytest.mark.timeout(180)
def test_notebook_top_level_await_of_execute(notebook: Any) -> None:
    assert reports(notebook.cells[3]) == [
        {
            "cell": "top-level await",
            "executor": "AsyncExecutor",
            "outputs": DONE,
            "statuses": ["COMPLETED"] * 3,
            "handler_restored": True,
        }
    ]


@pytest.mark.timeout(180)
def test_notebook_with_nest_asyncio_runs_async(notebook: Any) -> None:
    assert reports(notebook.cells[4]) == [
        {
            "cell": "with nest_asyncio",
            "executor": "AsyncExecutor",
            "outputs": DONE,
            "statuses": ["COMPLETED"] * 3,
            "handler_restored": True,
        }
    ]


# -- threads -------------------------------------------------------------------------------


def test_off_the_main_thread_the_factory_picks_threaded_sync_without_a_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def watching(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return double(item)

    def body() -> tuple[Any, Any]:
        executor = get_executor_on_sync_context(watching, double_async)
        return executor, executor.run([1, 2, 3])

    with caplog.at_level(logging.WARNING, logger="evalexec"):
        executor, (outputs, details) = in_thread(body)
    assert isinstance(executor, SyncExecutor)
    assert executor.termination_signal is None
    assert executor.concurrency == 3  # the factory's default concurrency, on threads
    assert outputs == DONE
    assert [d.status for d in details] == [ExecutionStatus.COMPLETED] * 3
    assert seen == [before] * 3
    assert "running the sync function on 3 worker threads" in caplog.text


def test_off_the_main_thread_run_sync_silences_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        executor = in_thread(lambda: get_executor_on_sync_context(double, double_async, True))
    assert isinstance(executor, SyncExecutor)
    assert caplog.text == ""


def test_an_async_executor_runs_off_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGINT)
    outputs, details = in_thread(lambda: AsyncExecutor(double_async, concurrency=2).run([1, 2, 3]))
    assert outputs == DONE
    assert [d.status for d in details] == [ExecutionStatus.COMPLETED] * 3
    assert signal.getsignal(signal.SIGINT) is before


def test_a_thread_with_its_own_running_loop_awaits_execute() -> None:
    async def serve() -> tuple[list[Any], Any]:
        outputs, details = await AsyncExecutor(double_async, concurrency=2).execute([1, 2, 3])
        return outputs, [d.status for d in details]

    outputs, statuses = in_thread(lambda: asyncio.run(serve()))
    assert outputs == DONE
    assert statuses == [ExecutionStatus.COMPLETED] * 3


def test_run_in_a_thread_with_its_own_running_loop_says_to_await_execute() -> None:
    async def serve() -> Any:
        return AsyncExecutor(double_async).run([1])

    with pytest.raises(RuntimeError, match=r"await executor\.execute\(inputs\)"):
        in_thread(lambda: asyncio.run(serve()))


# -- a coroutine calling the sync API (a web server's request handler) ---------------------


async def test_run_from_a_coroutine_says_to_await_execute_or_apply_nest_asyncio() -> None:
    with pytest.raises(RuntimeError) as raised:
        AsyncExecutor(double_async).run([1, 2, 3])
    message = str(raised.value)
    assert NOT_AWAITED in message
    assert "nest_asyncio.apply()" in message


async def test_the_factory_in_a_coroutine_picks_threaded_sync_and_says_how_to_apply_nest_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    barrier = threading.Barrier(3, timeout=30)  # opens only with 3 calls in flight at once

    def meet(item: int) -> int:
        barrier.wait()
        return double(item)

    with caplog.at_level(logging.WARNING, logger="evalexec"):
        executor = get_executor_on_sync_context(meet, double_async, concurrency=3)
    assert isinstance(executor, SyncExecutor)
    assert executor.concurrency == 3
    assert "nest_asyncio.apply()" in caplog.text
    outputs, _ = executor.run([1, 2, 3])
    assert outputs == DONE


async def test_awaiting_execute_from_a_coroutine_works() -> None:
    outputs, _ = await AsyncExecutor(double_async).execute([1, 2, 3])
    assert outputs == DONE


def test_with_nest_asyncio_run_from_a_coroutine_works() -> None:
    """In a subprocess, because nest_asyncio patches asyncio for the whole process."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / "nested_run.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {
        "factory": "AsyncExecutor",
        "outputs": DONE,
        "statuses": ["COMPLETED"] * 3,
        "handler_restored": True,
    }
