"""Nothing lost, nothing misleading: stops a function swallows, nested and side-by-side runs,
a quota stop's calls in flight, and inputs that are not what they seem.

Async cases run on virtual time (looptime); signals are sent to this process with
`os.kill` and handled by the executor's own handler (SIGUSR1, so a stray one cannot
end the test session).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from evalexec import Checkpoint, IncompleteRunError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import output_for

S = ExecutionStatus
SIG = signal.SIGUSR1


class QuotaExhausted(Exception):
    """Shaped like openai's 429 ``insufficient_quota``."""

    status_code = 429
    body: ClassVar[dict[str, Any]] = {
        "error": {"code": "insufficient_quota", "type": "insufficient_quota"}
    }


def statuses(details: list[Any]) -> list[ExecutionStatus]:
    return [d.status for d in details]


# -- a stop the function swallows is not a success ------------------------------------------


@pytest.mark.looptime
async def test_a_timeout_the_function_swallows_is_retried_not_completed() -> None:
    attempts: list[int] = []

    async def swallowing(item: str) -> str:
        attempts.append(len(attempts))
        try:
            if len(attempts) == 1:
                await asyncio.sleep(100)
            return "answer"
        except BaseException:
            return "ERROR"  # the careless user's bare except

    outputs, details = await AsyncExecutor(swallowing, timeout=1.0).execute(["a"])
    assert outputs == ["answer"]
    assert details[0].status is S.COMPLETED_WITH_RETRIES
    assert [type(e) for e in details[0].exceptions] == [TimeoutError]


@pytest.mark.looptime
async def test_a_deadline_the_function_swallows_saves_nothing(tmp_path: Path) -> None:
    calls: list[int] = []
    slow = [True]

    async def swallowing(item: int) -> str:
        calls.append(item)
        try:
            await asyncio.sleep(100 if item and slow[0] else 0)
            return output_for(item)
        except BaseException:
            return "ERROR"

    path = tmp_path / "run.db"
    executor = AsyncExecutor(swallowing, concurrency=2, deadline=5.0, checkpoint=path)
    outputs, details = await executor.execute([0, 1, 2])
    assert outputs == [output_for(0), _unset, _unset]
    assert statuses(details) == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    calls.clear()
    slow[0] = False
    outputs, _ = await executor.execute([0, 1, 2])
    assert calls == [1, 2]  # "ERROR" was never stored: they run again
    assert outputs == [output_for(i) for i in range(3)]


def test_a_ctrl_c_the_async_function_swallows_leaves_the_input_did_not_run() -> None:
    async def swallowing(item: int) -> str:
        if item == 1:
            os.kill(os.getpid(), SIG)
            try:
                await asyncio.sleep(100)
            except BaseException:
                return "ERROR"
        return output_for(item)

    executor = AsyncExecutor(swallowing, concurrency=1, termination_signal=SIG)
    outputs, details = executor.run([0, 1, 2])
    assert outputs == [output_for(0), _unset, _unset]
    assert statuses(details) == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]


def test_a_ctrl_c_the_sync_function_swallows_leaves_the_input_did_not_run() -> None:
    def swallowing(item: int) -> str:
        if item == 1:
            try:
                os.kill(os.getpid(), SIG)
                threading.Event().wait(100)  # the signal interrupts this wait
            except BaseException:
                return "ERROR"
        return output_for(item)

    outputs, details = SyncExecutor(swallowing, termination_signal=SIG).run([0, 1, 2])
    assert outputs == [output_for(0), _unset, _unset]
    assert statuses(details) == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]


# -- nested and side-by-side runs ---------------------------------------------------------


def test_one_ctrl_c_stops_a_nest_of_runs_and_the_outer_input_is_not_completed() -> None:
    async def leaf(item: int) -> int:
        if item == 2:
            os.kill(os.getpid(), SIG)
            await asyncio.sleep(100)
        return item

    async def outer(row: int) -> list[Any]:
        inner = AsyncExecutor(leaf, concurrency=1, termination_signal=SIG)
        outputs, _ = await inner.execute([0, 1, 2, 3])
        return outputs

    executor = AsyncExecutor(outer, concurrency=1, termination_signal=SIG)
    outputs, details = executor.run(["row"])
    assert outputs == [_unset]  # not the inner run's truncated [0, 1, <unset>, <unset>]
    assert statuses(details) == [S.DID_NOT_RUN]
    assert signal.getsignal(SIG) is signal.SIG_DFL


def test_one_ctrl_c_stops_two_runs_side_by_side_and_is_announced_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def slow(item: int) -> int:
        if item == 1:
            os.kill(os.getpid(), SIG)
        await asyncio.sleep(100 if item else 0)
        return item

    async def both() -> list[Any]:
        first = AsyncExecutor(slow, concurrency=1, termination_signal=SIG)
        second = AsyncExecutor(slow, concurrency=1, termination_signal=SIG)
        return list(await asyncio.gather(first.execute([0, 1]), second.execute([0, 5])))

    (first, _), (second, _) = asyncio.run(both())
    assert first == [0, _unset]
    assert second == [0, _unset]
    assert capsys.readouterr().err.count("Press Ctrl-C again to abort at once") == 1


# -- a quota stop keeps the calls the provider already admitted -----------------------------


@pytest.mark.looptime
async def test_a_quota_stop_lets_calls_in_flight_finish_and_keeps_their_outputs() -> None:
    async def gen(item: int) -> str:
        if item == 0:
            await asyncio.sleep(1)
            raise QuotaExhausted("You exceeded your current quota")
        await asyncio.sleep(3)
        return output_for(item)

    executor = AsyncExecutor(gen, concurrency=3, exit_on_error=False)
    outputs, details = await executor.execute(list(range(6)))
    assert outputs[:3] == [_unset, output_for(1), output_for(2)]
    assert statuses(details) == [S.FAILED, S.COMPLETED, S.COMPLETED] + [S.DID_NOT_RUN] * 3


def test_a_threaded_quota_stop_keeps_the_calls_in_flight() -> None:
    in_flight = threading.Barrier(3, timeout=30)
    refused = threading.Event()

    def gen(item: int) -> str:
        if item < 3:
            in_flight.wait()  # three calls admitted at once
        if item == 0:
            refused.set()
            raise QuotaExhausted("You exceeded your current quota")
        if item < 3:
            assert refused.wait(30)
        return output_for(item)

    executor = SyncExecutor(gen, concurrency=3, exit_on_error=False)
    outputs, details = executor.run(list(range(6)))
    assert outputs[1:3] == [output_for(1), output_for(2)]
    assert statuses(details)[:3] == [S.FAILED, S.COMPLETED, S.COMPLETED]
    assert statuses(details)[3:] == [S.DID_NOT_RUN] * 3


# -- one executor, several threads -----------------------------------------------------------


def test_two_threads_sharing_a_sync_executor_do_not_stop_each_other() -> None:
    started = threading.Barrier(2, timeout=30)

    def gen(item: str) -> str:
        if item == "first":
            started.wait()
            raise QuotaExhausted("You exceeded your current quota")
        if item == "second":
            started.wait()
        return output_for(item)

    executor = SyncExecutor(gen)
    results: dict[str, Any] = {}

    def run(name: str, rows: list[str]) -> None:
        results[name] = executor.run(rows)

    threads = [
        threading.Thread(target=run, args=("a", ["first", "a1", "a2"])),
        threading.Thread(target=run, args=("b", ["second", "b1", "b2"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses(results["a"][1]) == [S.FAILED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    assert results["b"][0] == [output_for("second"), output_for("b1"), output_for("b2")]


# -- inputs that are not what they seem ------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "threads"])
def test_a_dataframe_as_inputs_is_refused_with_what_to_pass(kind: str) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"a": [1, 2], "b": [3, 4]})

    async def agen(item: Any) -> Any:
        return item

    executor: Any = {
        "async": AsyncExecutor(agen),
        "sync": SyncExecutor(lambda x: x),
        "threads": SyncExecutor(lambda x: x, concurrency=2),
    }[kind]
    with pytest.raises(TypeError, match=r'df\.to_dict\("records"\)'):
        executor.run(frame)


class ShortInputs:
    """Says it has 4 inputs, yields 2."""

    def __len__(self) -> int:
        return 4

    def __iter__(self) -> Any:
        return iter([1, 2])


@pytest.mark.parametrize("kind", ["async", "sync", "threads"])
def test_inputs_shorter_than_their_len_are_reported_by_every_executor(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def agen(item: int) -> int:
        return item

    executor: Any = {
        "async": AsyncExecutor(agen),
        "sync": SyncExecutor(lambda x: x),
        "threads": SyncExecutor(lambda x: x, concurrency=2),
    }[kind]
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        outputs, details = executor.run(ShortInputs())
    assert outputs == [1, 2, _unset, _unset]
    assert statuses(details)[2:] == [S.DID_NOT_RUN] * 2
    assert caplog.messages == [
        "inputs yielded 2 items but len() reported 4; the missing ones are DID NOT RUN"
    ]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_input_that_cannot_be_fingerprinted_stops_the_run_naming_its_type(
    kind: str, tmp_path: Path
) -> None:
    class Opaque:
        pass

    async def agen(item: Any) -> Any:
        return 1

    path = tmp_path / "run.db"
    executor: Any = (
        AsyncExecutor(agen, checkpoint=path)
        if kind == "async"
        else SyncExecutor(lambda x: 1, checkpoint=Checkpoint(path))
    )
    with pytest.raises(IncompleteRunError, match="Opaque"):
        executor.run([1, Opaque()])


# -- a Ctrl-C in the last moments of a run loses nothing ------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "threads"])
def test_a_ctrl_c_while_the_checkpoint_closes_keeps_every_output(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evalexec._checkpoint import CheckpointStore

    close = CheckpointStore.close

    def close_under_ctrl_c(self: CheckpointStore) -> None:
        os.kill(os.getpid(), SIG)
        close(self)

    monkeypatch.setattr(CheckpointStore, "close", close_under_ctrl_c)

    async def agen(item: int) -> int:
        return item

    path = tmp_path / "run.db"
    executor: Any = {
        "async": AsyncExecutor(agen, termination_signal=SIG, checkpoint=path),
        "sync": SyncExecutor(lambda x: x, termination_signal=SIG, checkpoint=path),
        "threads": SyncExecutor(
            lambda x: x, concurrency=2, termination_signal=SIG, checkpoint=path
        ),
    }[kind]
    outputs, details = executor.run([1, 2, 3])
    assert outputs == [1, 2, 3]
    assert statuses(details) == [S.COMPLETED] * 3
    assert signal.getsignal(SIG) is signal.SIG_DFL


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_ctrl_c_after_the_run_ended_but_before_run_returns_keeps_every_output(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between the run's own handler going and `run()` returning."""
    from evalexec import _progress

    close = _progress.Progress.close

    def close_then_ctrl_c(self: Any, *args: Any) -> None:
        close(self, *args)
        os.kill(os.getpid(), SIG)

    monkeypatch.setattr(_progress.Progress, "close", close_then_ctrl_c)

    async def agen(item: int) -> int:
        return item

    executor: Any = (
        AsyncExecutor(agen, termination_signal=SIG)
        if kind == "async"
        else SyncExecutor(lambda x: x, termination_signal=SIG)
    )
    outputs, details = executor.run([1, 2])
    assert outputs == [1, 2]
    assert statuses(details) == [S.COMPLETED] * 2
