"""`deadline=`: a run stops when it passes, keeping what finished and cutting calls in
flight and backoff waits. On virtual loop time (looptime) or a `FakeTime`."""

from __future__ import annotations

import logging

import pytest

from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import FakeGenerate, FakeTime, Hinting, other_tasks, output_for, summary_of
from tests.vtime import now

pytestmark = pytest.mark.looptime

S = ExecutionStatus


async def test_a_deadline_cancels_calls_in_flight_and_keeps_finished_outputs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGenerate(default=("ok", 4.0))
    hinting = Hinting(fake, hint=0.0)
    executor = AsyncExecutor(hinting, concurrency=2, deadline=10.0)
    start = now()
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        outputs, details = await executor.execute(list(range(8)))
    assert now() - start == 10.0
    assert outputs == [output_for(i) for i in range(4)] + [_unset] * 4
    assert [d.status for d in details] == [S.COMPLETED] * 4 + [S.DID_NOT_RUN] * 4
    assert sorted(hinting.cancelled) == [4, 5]  # started at 8.0, cut at 10.0
    assert [c.started - start for c in fake.calls] == [0.0, 0.0, 4.0, 4.0, 8.0, 8.0]
    assert [d.execution_seconds for d in details[4:]] == [2.0, 2.0, 0.0, 0.0]
    assert other_tasks() == []
    assert [r.getMessage() for r in caplog.records] == [
        "evalexec: the deadline of 10.0 s passed; the run was stopped"
    ]


async def test_a_deadline_ends_a_run_whose_retry_is_waiting_out_a_backoff() -> None:
    fake = FakeGenerate({"a": [("rate_limit", 1.0), ("ok", 0.0)]}, default=("ok", 0.5))
    executor = AsyncExecutor(Hinting(fake, hint=60.0), deadline=5.0)
    start = now()
    outputs, details = await executor.execute(["a", "b"])
    assert now() - start == 5.0
    assert outputs == [_unset, "out:b"]
    assert summary_of(details) == [
        (S.DID_NOT_RUN, [RateLimitError], 1.0),
        (S.COMPLETED, [], 0.5),
    ]
    assert fake.attempts["a"] == 1
    assert other_tasks() == []


def test_a_sync_deadline_cuts_a_backoff_sleep_short_and_starts_nothing_after_it() -> None:
    calls: list[tuple[str, float]] = []
    fake_time = FakeTime()

    def generate(item: str) -> str:
        calls.append((item, fake_time.now))
        fake_time.now += 1.0
        if item == "b":
            raise RateLimitError("slow down", retry_after=30.0)
        return output_for(item)

    executor = SyncExecutor(generate, clock=fake_time.clock, sleep=fake_time.sleep, deadline=10.0)
    outputs, details = executor.run(["a", "b", "c"])
    assert calls == [("a", 0.0), ("b", 1.0)]
    assert fake_time.sleeps == [8.0]  # until the deadline, not the 30 s hint
    assert fake_time.now == 10.0
    assert outputs == ["out:a", _unset, _unset]
    assert [d.status for d in details] == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]
