"""A rate-limit retry hint pauses all dispatch while the calls in flight finish, with
or without the adaptive controller. On virtual loop time (looptime)."""

from __future__ import annotations

import pytest

from evalexec.executors import AsyncExecutor, ExecutionStatus
from tests.fakes import FakeGenerate, Hinting, output_for
from tests.vtime import now

pytestmark = pytest.mark.looptime

S = ExecutionStatus


async def test_a_rate_limit_hint_pauses_every_worker_while_calls_in_flight_finish() -> None:
    fake = FakeGenerate(
        {0: [("ok", 4.0)], 1: [("ok", 6.0)], 2: [("rate_limit", 1.0), ("ok", 1.0)]},
        default=("ok", 1.0),
    )
    hinting = Hinting(fake, hint=30.0)
    executor = AsyncExecutor(hinting, concurrency=4, enable_dynamic_concurrency=False)
    start = now()
    outputs, details = await executor.execute(list(range(10)))
    assert outputs == [output_for(i) for i in range(10)]
    t0 = start + 1.0  # when input 2 was rate limited
    starts = [c.started for c in fake.calls]
    assert [s for s in starts if t0 < s < t0 + 30.0] == []
    assert min(s for s in starts if s > t0) == t0 + 30.0
    # the calls in flight at t0 finished normally during the pause
    ended = dict(hinting.ended)
    assert (ended[0] - start, ended[1] - start) == (4.0, 6.0)
    assert (details[0].status, details[1].status) == (S.COMPLETED, S.COMPLETED)
    assert hinting.cancelled == []


async def test_the_builtin_controller_also_waits_out_the_hint() -> None:
    fake = FakeGenerate({2: [("rate_limit", 1.0), ("ok", 1.0)]}, default=("ok", 1.0))
    executor = AsyncExecutor(Hinting(fake, hint=12.0), concurrency=4)
    start = now()
    await executor.execute(list(range(10)))
    starts = [c.started - start for c in fake.calls]
    assert [s for s in starts if 1.0 < s < 13.0] == []
    assert min(s for s in starts if s > 1.0) == 13.0
