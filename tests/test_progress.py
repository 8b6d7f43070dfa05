"""The progress bar's status line and the summary line written when a run ends (the
bar is a `RecordingBar`, through the `bars` fixture). On virtual loop time (looptime)."""

from __future__ import annotations

from typing import Any

import pytest

from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import FakeGenerate, FakeTime, Hinting, RecordingBar
from tests.vtime import now

pytestmark = pytest.mark.looptime

S = ExecutionStatus

BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}"


async def test_the_status_line_shows_retries_rate_limits_failures_and_the_cooldown(
    bars: type[RecordingBar],
) -> None:
    fake = FakeGenerate(
        {
            "f": [("phoenix", 0.25)],
            "e": [("error", 0.25), ("ok", 1.0)],
            "r": [("rate_limit", 1.0), ("ok", 0.0)],
            "x": [("ok", 5.0)],
        }
    )
    executor = AsyncExecutor(
        Hinting(fake, hint=30.0),
        concurrency=3,
        tqdm_bar_format=BAR,
        exit_on_error=False,
        enable_dynamic_concurrency=False,
    )
    start = now()
    outputs, _ = await executor.execute(["f", "e", "r", "x"])
    assert now() - start == 31.0
    assert outputs == [_unset, "out:e", "out:r", "out:x"]
    [bar] = bars.opened
    shown = dict(bar.postfixes)
    # at 1.0 "r" is rate limited with a 30 s hint: "e" (retried) and "x" are in flight
    assert shown[start + 1.0] == (
        "target=3 inflight=2 retries=1 rate_limited=1 failed=1 cooldown=30s"
    )
    # at 5.25 "x" finishes while the cooldown still runs
    assert shown[start + 5.25] == (
        "target=3 inflight=0 retries=2 rate_limited=1 failed=1 cooldown=26s"
    )
    assert bar.postfixes[-1] == (
        start + 31.0,
        "target=3 inflight=0 retries=2 rate_limited=1 failed=1",
    )
    assert bar.close_calls >= 1
    assert bars.lines == [
        "evalexec: 1 completed, 2 completed with retries, 1 failed, 0 did not run; "
        "2 retries; 31.0 s"
    ]


def test_the_summary_line_counts_every_status(bars: type[RecordingBar]) -> None:
    fake = FakeGenerate(
        {
            1: [("error", 0.0), ("ok", 0.0)],
            2: [("error", 0.0), ("error", 0.0), ("ok", 0.0)],
            3: [("phoenix", 0.0)],
        }
    )
    fake_time = FakeTime()

    def generate(item: int) -> Any:
        fake_time.now += 1.0
        return fake.sync(item)

    executor = SyncExecutor(
        generate, tqdm_bar_format=BAR, clock=fake_time.clock, sleep=fake_time.sleep
    )
    _, details = executor.run([0, 1, 2, 3, 4])
    assert [d.status for d in details] == [
        S.COMPLETED,
        S.COMPLETED_WITH_RETRIES,
        S.COMPLETED_WITH_RETRIES,
        S.FAILED,
        S.DID_NOT_RUN,
    ]
    [bar] = bars.opened
    assert bar.close_calls >= 1
    assert bars.lines == [
        "evalexec: 1 completed, 2 completed with retries, 1 failed, 1 did not run; 3 retries; 7.0 s"
    ]


async def test_no_bar_and_no_summary_without_a_bar_format(bars: type[RecordingBar]) -> None:
    await AsyncExecutor(FakeGenerate()).execute([1, 2])
    assert bars.opened == []
    assert bars.lines == []
