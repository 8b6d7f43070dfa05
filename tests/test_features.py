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
    ExecutionDetails,
    ExecutionStatus,
)
from tests.fakes import FakeGenerate

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
