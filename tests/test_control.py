"""Steering a run from code: pause, resume, cancel, set_concurrency and snapshot.

Async cases run on virtual time, steered from loop timers; the cases that steer from
another thread use events and barriers to know where the run is, never sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from evalexec import RunSnapshot
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import FakeGenerate, output_for

S = ExecutionStatus
WAIT = 30.0


def statuses(details: list[Any]) -> list[ExecutionStatus]:
    return [d.status for d in details]


def wait_until(condition: Any) -> None:
    """Poll a condition the run reaches by itself (bounded; the test fails if never)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.001)


@pytest.mark.looptime
async def test_pause_starts_no_call_until_resume_while_calls_in_flight_finish() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    loop.call_later(1.5, executor.pause)
    loop.call_later(10.0, executor.resume)
    outputs, _ = await executor.execute(list(range(6)))
    assert outputs == [output_for(i) for i in range(6)]
    starts = [call.started - start for call in fake.calls]
    assert starts == [0.0, 0.0, 1.0, 1.0, 10.0, 10.0]  # the two started at 1.0 finish at 2.0


@pytest.mark.looptime
async def test_cancel_keeps_what_finished_and_the_rest_did_not_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=2)
    asyncio.get_running_loop().call_later(2.5, executor.cancel)
    outputs, details = await executor.execute(list(range(6)))
    assert outputs == [output_for(i) for i in range(4)] + [_unset] * 2
    assert statuses(details) == [S.COMPLETED] * 4 + [S.DID_NOT_RUN] * 2
    assert "evalexec: cancelled; returning the outputs finished so far" in capsys.readouterr().err


@pytest.mark.looptime
async def test_set_concurrency_lowers_the_ceiling_of_the_running_run() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=4, enable_dynamic_concurrency=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    loop.call_later(0.5, executor.set_concurrency, 1)
    await executor.execute(list(range(8)))
    starts = [call.started - start for call in fake.calls]
    assert starts == [0.0] * 4 + [1.0, 2.0, 3.0, 4.0]


@pytest.mark.looptime
async def test_snapshot_describes_the_run_now() -> None:
    fake = FakeGenerate({0: [("error", 0.5), ("ok", 1.0)]}, default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=2, backoff=None)
    seen: list[RunSnapshot] = []
    asyncio.get_running_loop().call_later(1.75, lambda: seen.append(executor.snapshot()))
    await executor.execute(list(range(4)))
    [snap] = seen
    # t=1.75: 0 failed at 0.5 and was retried at once (ends 1.5); 1 ended at 1.0;
    # 2 started at 1.0, 3 at 1.5: both in flight.
    assert snap.inflight == 2
    assert snap.total == 4
    assert snap.counts["COMPLETED"] == 1
    assert snap.counts["COMPLETED WITH RETRIES"] == 1
    assert snap.counts["DID NOT RUN"] == 2
    assert snap.retries == 1
    assert snap.elapsed_seconds == 1.75
    assert snap.eta_seconds == 1.75  # 2 of 4 in 1.75 s
    assert snap.stop is None
    assert not snap.paused


def test_snapshot_without_a_run_in_progress_says_so() -> None:
    with pytest.raises(RuntimeError, match="no run of this executor is in progress"):
        SyncExecutor(lambda x: x).snapshot()
    assert AsyncExecutor(FakeGenerate()).pause() == 0  # a no-op, and says it reached none


def test_set_concurrency_is_refused_above_the_workers_and_for_a_sequential_run() -> None:
    with pytest.raises(ValueError, match=r"set_concurrency\(5\) is above this executor's"):
        AsyncExecutor(FakeGenerate(), concurrency=4).set_concurrency(5)
    go = threading.Event()
    started = threading.Event()

    def gen(item: int) -> int:
        started.set()
        assert go.wait(WAIT)
        return item

    executor = SyncExecutor(gen)
    thread = threading.Thread(target=executor.run, args=([1],))
    thread.start()
    assert started.wait(WAIT)
    try:
        with pytest.raises(ValueError, match="a sequential SyncExecutor makes one call"):
            executor.set_concurrency(1)
    finally:
        go.set()
        thread.join(WAIT)


def test_a_threaded_run_is_steered_and_read_from_another_thread() -> None:
    blocked = threading.Barrier(3, timeout=WAIT)  # two calls and this test
    release = threading.Event()

    def gen(item: int) -> str:
        if item >= 2:
            blocked.wait()
            assert release.wait(WAIT)
        return output_for(item)

    executor = SyncExecutor(gen, concurrency=2)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(result=executor.run(list(range(8)))))
    thread.start()
    blocked.wait()  # inputs 2 and 3 are in flight, 0 and 1 are final
    snap = executor.snapshot()
    assert (snap.inflight, snap.counts["COMPLETED"], snap.total) == (2, 2, 8)
    assert executor.cancel() == 1
    thread.join(WAIT)
    release.set()
    outputs, details = box["result"]
    assert outputs[:2] == [output_for(0), output_for(1)]
    assert statuses(details) == [S.COMPLETED] * 2 + [S.DID_NOT_RUN] * 6


def test_a_sequential_run_pauses_between_inputs_and_resumes() -> None:
    calls: list[int] = []
    first_started = threading.Event()
    go = threading.Event()

    def gen(item: int) -> int:
        calls.append(item)
        if item == 0:
            first_started.set()
            assert go.wait(WAIT)
        return item

    executor = SyncExecutor(gen)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(result=executor.run([0, 1, 2])))
    thread.start()
    assert first_started.wait(WAIT)
    assert executor.pause() == 1
    go.set()
    wait_until(lambda: executor.snapshot().counts["COMPLETED"] == 1)
    assert executor.snapshot().paused
    assert calls == [0]  # paused between inputs
    executor.resume()
    thread.join(WAIT)
    assert box["result"][0] == [0, 1, 2]
    assert calls == [0, 1, 2]


def test_an_async_run_is_paused_and_cancelled_from_another_thread() -> None:
    entered = threading.Event()

    async def gen(item: int) -> int:
        if item == 1:
            entered.set()
        await asyncio.sleep(0.001)
        return item

    executor = AsyncExecutor(gen, concurrency=1)
    box: dict[str, Any] = {}

    def steer() -> None:
        assert entered.wait(WAIT)
        executor.pause()
        wait_until(lambda: executor.snapshot().paused and executor.snapshot().inflight == 0)
        box["paused"] = executor.snapshot()
        executor.cancel()

    steering = threading.Thread(target=steer)
    steering.start()
    outputs, details = executor.run(list(range(100)))
    steering.join(WAIT)
    done = box["paused"].counts["COMPLETED"]
    assert done >= 1
    assert statuses(details) == [S.COMPLETED] * done + [S.DID_NOT_RUN] * (100 - done)
    assert outputs[:done] == list(range(done))


@pytest.mark.looptime
async def test_a_pause_never_outlives_the_runs_it_held() -> None:
    """Paused, then cancelled: the executor's next run is not born paused."""
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=2)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, executor.pause)
    loop.call_later(0.6, executor.cancel)
    await executor.execute(list(range(6)))
    start = loop.time()
    outputs, _ = await executor.execute(["a", "b"])
    assert outputs == [output_for("a"), output_for("b")]
    assert loop.time() - start == 1.0
