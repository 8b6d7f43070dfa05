"""Ctrl-C as a user presses it: a real SIGINT sent to a subprocess mid-run (SPEC
"Termination", §3, §5), plus the handler being put back on every path.

The subprocess (tests/scripts/interrupt.py) creates a marker file once a call that
only a signal can end is in flight; the test polls for it, then sends SIGINT. No
test waits on a fixed delay, and none asserts on wall-clock time: a hang shows up as
the subprocess not ending within `HANG_SECONDS`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from evalexec import IncompleteRunError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor
from tests.fakes import previous_sigint_handler

SCRIPT = Path(__file__).parent / "scripts" / "interrupt.py"
HANG_SECONDS = 60.0
POLL_SECONDS = 0.005

FINISHED = [f"out:{i}" for i in range(4)]


class Child:
    """The interrupt script, running; `markers` is where it signals its progress."""

    def __init__(self, markers: Path, *args: str) -> None:
        self.markers = markers
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args, str(markers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_for(self, marker: str) -> None:
        """Poll for a marker file; fail if the child exits or takes too long."""
        path = self.markers / marker
        deadline = time.monotonic() + HANG_SECONDS
        while not path.exists():
            if self.process.poll() is not None:
                _, stderr = self.process.communicate()
                pytest.fail(f"the child exited before {marker!r}:\n{stderr}")
            if time.monotonic() > deadline:
                self.process.kill()
                stdout, stderr = self.process.communicate()
                pytest.fail(f"the child never reached {marker!r}:\n{stdout}\n{stderr}")
            time.sleep(POLL_SECONDS)

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self) -> tuple[dict[str, Any], str]:
        """The child's JSON report and its stderr; fail if it hangs or crashes."""
        try:
            stdout, stderr = self.process.communicate(timeout=HANG_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            pytest.fail(f"the child hung after SIGINT:\n{stderr}")
        assert self.process.returncode == 0, stderr
        return json.loads(stdout.strip().splitlines()[-1]), stderr


@pytest.mark.parametrize("previous", ["default", "custom"])
@pytest.mark.parametrize("mode", ["async", "sync", "threads"])
def test_first_ctrl_c_returns_finished_outputs_and_the_rest_did_not_run(
    tmp_path: Path, mode: str, previous: str
) -> None:
    child = Child(tmp_path, mode, "once", previous)
    child.wait_for("ready")
    child.interrupt()
    report, stderr = child.finish()
    assert report["raised"] is None
    assert report["outputs"] == FINISHED + ["fallback"] * 6
    assert report["statuses"] == ["COMPLETED"] * 4 + ["DID_NOT_RUN"] * 6
    assert "interrupted; returning the outputs finished so far" in stderr
    assert report["handler_restored"] is True
    assert "the handler of before the run was called" not in stderr


@pytest.mark.parametrize("previous", ["default", "custom"])
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_second_ctrl_c_during_a_slow_stop_raises_keyboard_interrupt(
    tmp_path: Path, mode: str, previous: str
) -> None:
    child = Child(tmp_path, mode, "twice", previous)
    child.wait_for("ready")
    child.interrupt()
    child.wait_for("stopping")
    child.interrupt()
    report, stderr = child.finish()
    assert report["raised"] == "KeyboardInterrupt"
    assert report["handler_restored"] is True
    assert "the handler of before the run was called" not in stderr


@pytest.mark.parametrize("mode", ["async", "sync", "threads"])
def test_ctrl_c_while_waiting_to_retry_a_rate_limit_returns_at_once(
    tmp_path: Path, mode: str
) -> None:
    """The provider asked for an hour's wait; Ctrl-C ends the run now, not in an hour."""
    child = Child(tmp_path, mode, "backoff", "default")
    child.wait_for("ready")
    child.interrupt()
    report, stderr = child.finish()
    assert report["raised"] is None
    assert report["outputs"] == FINISHED + ["fallback"] * 6
    assert report["statuses"] == ["COMPLETED"] * 4 + ["DID_NOT_RUN"] * 6
    assert "interrupted; returning the outputs finished so far" in stderr
    assert report["handler_restored"] is True


def test_a_sync_executor_interrupted_once_runs_normally_next_time(tmp_path: Path) -> None:
    child = Child(tmp_path, "sync", "once", "default")
    child.wait_for("ready")
    child.interrupt()
    report, _ = child.finish()
    assert report["statuses"] == ["COMPLETED"] * 4 + ["DID_NOT_RUN"] * 6
    assert report["again"] == {
        "outputs": [f"out:{i}" for i in range(10)],
        "statuses": ["COMPLETED"] * 10,
    }


# -- the handler of before the run is back, in-process -------------------------------------


async def _async_identity(item: int) -> int:
    return item


def _sync_identity(item: int) -> int:
    return item


class BrokenInputs:
    """Sized inputs whose iteration fails after two items."""

    def __len__(self) -> int:
        return 5

    def __iter__(self) -> Iterator[int]:
        yield 0
        yield 1
        raise LookupError("the input source broke")


@pytest.mark.parametrize("handler", ["python default", "custom"])
def test_async_run_restores_the_handler_after_a_normal_return(handler: str) -> None:
    original = signal.getsignal(signal.SIGINT)
    if handler == "custom":
        signal.signal(signal.SIGINT, previous_sigint_handler)
    before = signal.getsignal(signal.SIGINT)
    try:
        outputs, _ = AsyncExecutor(_async_identity).run([1, 2])
        assert outputs == [1, 2]
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, original)


def test_sync_run_restores_the_handler_after_a_normal_return(previous_handler: Any) -> None:
    outputs, _ = SyncExecutor(_sync_identity).run([1, 2])
    assert outputs == [1, 2]
    assert signal.getsignal(signal.SIGINT) is previous_handler


def test_async_run_restores_the_handler_after_an_error_inside_the_executor(
    previous_handler: Any,
) -> None:
    with pytest.raises(IncompleteRunError, match="the input source broke") as caught:
        AsyncExecutor(_async_identity).run(BrokenInputs())
    assert isinstance(caught.value.__cause__, LookupError)
    assert signal.getsignal(signal.SIGINT) is previous_handler


def test_sync_run_restores_the_handler_after_an_error_inside_the_executor(
    previous_handler: Any,
) -> None:
    with pytest.raises(IncompleteRunError, match="the input source broke") as caught:
        SyncExecutor(_sync_identity).run(BrokenInputs())
    assert isinstance(caught.value.__cause__, LookupError)
    assert caught.value.outputs[:2] == [0, 1]  # what finished before the inputs broke
    assert signal.getsignal(signal.SIGINT) is previous_handler


def test_the_handler_is_not_put_back_over_one_installed_during_the_run() -> None:
    """A function that installs its own SIGINT handler keeps it: only ours is removed."""
    original = signal.getsignal(signal.SIGINT)

    def theirs(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("not to be called")

    def installs(item: int) -> int:
        signal.signal(signal.SIGINT, theirs)
        return item

    try:
        outputs, details = SyncExecutor(installs).run([1])
        assert outputs == [1]
        assert details[0].status is ExecutionStatus.COMPLETED
        assert signal.getsignal(signal.SIGINT) is theirs
    finally:
        signal.signal(signal.SIGINT, original)
