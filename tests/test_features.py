"""The features beyond Phoenix's API: stream(), deadline=, the status line and summary,
log volume, rate-limit pauses, and the demo. On virtual loop time (looptime)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from evalexec.exceptions import RateLimitError
from evalexec.executors import (
    AsyncExecutor,
    ExecutionDetails,
    ExecutionStatus,
)
from tests.fakes import FakeGenerate, output_for

pytestmark = pytest.mark.looptime

S = ExecutionStatus
BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}"


def now() -> float:
    return asyncio.get_running_loop().time()


def summary_of(details: list[ExecutionDetails]) -> list[tuple[Any, ...]]:
    """What a test compares of each input's details: status, exception types, seconds."""
    return [(d.status, [type(e) for e in d.exceptions], d.execution_seconds) for d in details]


def other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


@dataclass
class Drawn:
    """A generator of inputs ``0..count-1`` that records how far it has been drawn."""

    count: int
    drawn: int = 0

    def __iter__(self) -> Iterator[int]:
        for item in range(self.count):
            self.drawn += 1
            yield item


@dataclass
class Hinting:
    """A `FakeGenerate` whose rate limits carry a retry hint; records when calls end."""

    fake: FakeGenerate
    hint: float
    ended: list[tuple[Any, float]] = field(default_factory=list)
    cancelled: list[Any] = field(default_factory=list)

    async def __call__(self, item: Any) -> Any:
        try:
            return await self.fake(item)
        except RateLimitError as exc:
            raise RateLimitError(str(exc), retry_after=self.hint) from None
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.ended.append((item, now()))


# -- rate-limit hints pause all dispatch ----------------------------------------------------


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


# -- the demo -----------------------------------------------------------------------------


DEMO_ARGS = ("demo", "--inputs", "50", "--rpm", "6000", "--latency", "0.02")


def test_the_demo_runs_and_prints_its_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evalexec", *DEMO_ARGS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "demo: 50/50 rows judged" in result.stdout
    summary = re.compile(
        r"^evalexec: \d+ completed, \d+ completed with retries, 0 failed, 0 did not run; "
        r"\d+ retries; \d+\.\d s$",
        re.MULTILINE,
    )
    assert summary.search(result.stderr), result.stderr
