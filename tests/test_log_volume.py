"""Log volume: a retry is one INFO line, a failed input one WARNING, nothing more.
On virtual loop time (looptime) or a `FakeTime`."""

from __future__ import annotations

import logging

import pytest

from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor
from tests.fakes import FakeGenerate, FakeTime

pytestmark = pytest.mark.looptime

S = ExecutionStatus


async def test_retries_are_logged_at_info_and_never_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = range(0, 1000, 20)  # 5 % of the inputs fail once, then succeed
    fake = FakeGenerate({i: [("error", 0.5), ("ok", 0.5)] for i in flaky}, default=("ok", 0.5))
    with caplog.at_level(logging.INFO, logger="evalexec"):
        _, details = await AsyncExecutor(fake, concurrency=20).execute(list(range(1000)))
    assert {d.status for i, d in enumerate(details) if i in flaky} == {S.COMPLETED_WITH_RETRIES}
    records = [r for r in caplog.records if r.name == "evalexec"]
    assert [r for r in records if r.levelno >= logging.WARNING] == []
    retried = [r for r in records if "retrying" in r.getMessage()]
    assert len(retried) == 50
    assert {r.levelno for r in retried} == {logging.INFO}
    assert {int(r.getMessage().split()[1]) for r in retried} == set(flaky)


async def test_each_failed_input_logs_exactly_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = {7, 301, 999}
    table = {i: [("error", 0.5)] for i in failing}
    table.update({i: [("error", 0.5), ("ok", 0.5)] for i in range(0, 1000, 20)})
    fake = FakeGenerate(table, default=("ok", 0.5))
    executor = AsyncExecutor(fake, concurrency=20, max_retries=2, exit_on_error=False)
    with caplog.at_level(logging.INFO, logger="evalexec"):
        _, details = await executor.execute(list(range(1000)))
    assert {i for i, d in enumerate(details) if d.status is S.FAILED} == failing
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(r.getMessage() for r in warnings) == sorted(
        f"input {i} FAILED after 3 attempts: FakeError('error on {i} attempt 2')" for i in failing
    )
    assert {r.levelno for r in warnings} == {logging.WARNING}


def test_sync_retries_are_info_and_each_failed_input_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = {i: [("error", 0.0), ("ok", 0.0)] for i in range(0, 200, 20)}
    table.update({5: [("error", 0.0)], 50: [("error", 0.0)]})
    fake = FakeGenerate(table)
    fake_time = FakeTime()
    executor = SyncExecutor(
        fake.sync,
        max_retries=1,
        exit_on_error=False,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    with caplog.at_level(logging.INFO, logger="evalexec"):
        _, details = executor.run(list(range(200)))
    assert [i for i, d in enumerate(details) if d.status is S.FAILED] == [5, 50]
    levels = [r.levelno for r in caplog.records]
    assert levels.count(logging.INFO) == 10 + 2
    assert levels.count(logging.WARNING) == 2
    assert len(levels) == 12 + 2
