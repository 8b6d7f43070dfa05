"""The threaded SyncExecutor (`concurrency > 1`): the engine of AsyncExecutor, calls on threads.

The calls run on real threads, so nothing here runs on virtual time; instead no test
waits for a duration to pass: concurrency is proven with barriers (which only open
when that many calls are in flight at once) and order with events. The only timers
are the executor's own (a per-attempt timeout, a deadline, a retry hint), and tests
assert what they lead to, never how long they took.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from evalexec.exceptions import RateLimitError
from evalexec.executors import ExecutionStatus, SyncExecutor, _unset
from tests.fakes import FakeError, FakeGenerate, output_for

S = ExecutionStatus
WAIT = 30.0  # a barrier or event that is not reached by then means the test failed


class InFlight:
    """Counts calls in flight, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_concurrency_calls_run_at_once_on_worker_threads() -> None:
    barrier = threading.Barrier(4, timeout=WAIT)
    inflight = InFlight()
    threads: set[str] = set()

    def gen(item: int) -> str:
        with inflight:
            threads.add(threading.current_thread().name)
            barrier.wait()  # opens only when 4 calls are in flight at once
            return output_for(item)

    outputs, details = SyncExecutor(gen, concurrency=4).run(list(range(8)))
    assert outputs == [output_for(i) for i in range(8)]
    assert [d.status for d in details] == [S.COMPLETED] * 8
    assert inflight.most == 4
    assert threading.current_thread().name not in threads


def test_outputs_stay_aligned_when_later_inputs_finish_first() -> None:
    released = {i: threading.Event() for i in range(4)}

    def gen(item: int) -> str:
        if item < 3:
            assert released[item + 1].wait(WAIT)  # finish after the next input
        released[item].set()
        return output_for(item)

    outputs, _ = SyncExecutor(gen, concurrency=4).run(list(range(4)))
    assert outputs == [output_for(i) for i in range(4)]


def test_the_same_table_of_outcomes_gives_the_same_statuses_as_sequentially() -> None:
    table = {
        "retried": [("error", 0), ("ok", 0)],
        "failed": [("error", 0)],
        "fatal": [("phoenix", 0)],
        "limited": [("rate_limit", 0), ("ok", 0)],
    }
    items = ["ok", "retried", "failed", "fatal", "limited"]
    results = []
    for concurrency in (1, 3):
        fake = FakeGenerate(table)
        executor = SyncExecutor(
            fake.sync, concurrency=concurrency, max_retries=2, exit_on_error=False, backoff=None
        )
        outputs, details = executor.run(items)
        results.append((outputs, [d.status for d in details], [len(d.exceptions) for d in details]))
    assert results[0] == results[1]
    assert results[1][1] == [
        S.COMPLETED,
        S.COMPLETED_WITH_RETRIES,
        S.FAILED,
        S.FAILED,
        S.COMPLETED_WITH_RETRIES,
    ]
    assert results[1][2] == [0, 1, 3, 1, 1]


def test_exit_on_error_stops_the_run_and_the_rest_did_not_run() -> None:
    gate = threading.Event()

    def gen(item: int) -> str:
        if item == 0:
            raise FakeError("boom")
        assert gate.wait(WAIT) or True
        return output_for(item)

    executor = SyncExecutor(gen, concurrency=2, max_retries=0, fallback_return_value="x")
    outputs, details = executor.run(list(range(6)))
    gate.set()
    assert details[0].status is S.FAILED
    assert outputs[0] == "x"
    assert S.DID_NOT_RUN in {d.status for d in details[1:]}


def test_an_attempt_that_overruns_its_timeout_is_abandoned_and_its_late_result_dropped() -> None:
    release = threading.Event()
    late_returned = threading.Event()
    attempts: list[int] = []

    def gen(item: str) -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            assert release.wait(WAIT)
            late_returned.set()
            return "late"
        return "fresh"

    executor = SyncExecutor(gen, concurrency=2, timeout=0.05)
    outputs, details = executor.run(["a"])
    release.set()
    assert late_returned.wait(WAIT)
    assert outputs == ["fresh"]
    assert details[0].status is S.COMPLETED_WITH_RETRIES
    assert [type(e) for e in details[0].exceptions] == [TimeoutError]


def test_a_timeout_with_concurrency_one_runs_the_call_on_a_thread() -> None:
    seen: list[str] = []

    def gen(item: int) -> int:
        seen.append(threading.current_thread().name)
        return item

    outputs, _ = SyncExecutor(gen, timeout=5.0).run([1, 2])
    assert outputs == [1, 2]
    assert len(seen) == 2
    assert threading.current_thread().name not in seen


def test_a_retry_hint_holds_every_new_call_until_it_ends() -> None:
    starts: list[tuple[int, float]] = []
    refused_at: list[float] = []

    def gen(item: int) -> str:
        now = time.monotonic()
        starts.append((item, now))
        if item == 0 and not refused_at:
            refused_at.append(now)
            raise RateLimitError("slow down", retry_after=0.2)
        return output_for(item)

    executor = SyncExecutor(gen, concurrency=2, enable_dynamic_concurrency=False)
    outputs, _ = executor.run(list(range(6)))
    assert outputs == [output_for(i) for i in range(6)]
    retry = [t for item, t in starts if item == 0][1]
    assert retry - refused_at[0] >= 0.2  # the provider's hint is the wait


def test_a_function_that_returns_coroutines_is_refused_once_not_retried() -> None:
    calls: list[int] = []

    async def agen(item: int) -> int:
        return item

    def gen(item: int) -> Any:
        calls.append(item)
        return agen(item)

    with pytest.raises(TypeError, match="SyncExecutor needs a plain function"):
        SyncExecutor(gen, concurrency=2).run([1])
    assert calls == [1]


def test_it_runs_inside_a_running_event_loop() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        return SyncExecutor(lambda x: x * 2, concurrency=3).run([1, 2, 3])

    outputs, details = asyncio.run(main())
    assert outputs == [2, 4, 6]
    assert [d.status for d in details] == [S.COMPLETED] * 3


def test_it_runs_from_a_worker_thread() -> None:
    box: list[Any] = []
    thread = threading.Thread(
        target=lambda: box.append(SyncExecutor(lambda x: -x, concurrency=2).run([1, 2]))
    )
    thread.start()
    thread.join(WAIT)
    assert box[0][0] == [-1, -2]


def test_stream_yields_every_input_as_it_finishes() -> None:
    executor = SyncExecutor(lambda x: x + 1, concurrency=3)
    results = sorted((i, out) for i, out, _ in executor.stream(iter(range(20))))
    assert results == [(i, i + 1) for i in range(20)]


def test_leaving_a_stream_early_stops_the_run() -> None:
    calls: list[int] = []

    def gen(item: int) -> int:
        calls.append(item)
        return item

    executor = SyncExecutor(gen, concurrency=2)
    stream = executor.stream(range(10_000))
    for _ in stream:
        break
    stream.close()
    seen = len(calls)
    assert seen < 10_000  # bounded by the window of inputs in play
    assert threading.active_count() < 50


def test_a_deadline_stops_a_run_whose_calls_hang(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def gen(item: int) -> int:
        if item > 0:
            release.wait(WAIT)
        return item

    with caplog.at_level(logging.WARNING, logger="evalexec"):
        outputs, details = SyncExecutor(gen, concurrency=2, deadline=0.2).run([0, 1, 2, 3])
    release.set()
    assert outputs[0] == 0
    assert outputs[1:] == [_unset] * 3
    assert [d.status for d in details[1:]] == [S.DID_NOT_RUN] * 3
    assert "the deadline of 0.2 s passed" in caplog.text


def test_a_checkpoint_resumes_a_threaded_run(tmp_path: Any) -> None:
    path = tmp_path / "run.db"
    first = FakeGenerate({2: [("error", 0)]})
    SyncExecutor(
        first.sync, concurrency=2, checkpoint=path, max_retries=0, exit_on_error=False
    ).run([0, 1, 2])
    second = FakeGenerate()
    outputs, _ = SyncExecutor(second.sync, concurrency=2, checkpoint=path).run([0, 1, 2])
    assert outputs == [output_for(i) for i in range(3)]
    assert [c.item for c in second.calls] == [2]
