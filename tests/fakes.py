"""Fake generation functions driven by a table of per-attempt outcomes.

``FakeGenerate({"a": [("error", 0.5), ("ok", 1.0)]})`` makes the first attempt on
input ``"a"`` raise after 0.5 s of (virtual) loop time and the second return after
1.0 s. Every call is recorded with its input, attempt number and start time.
Inputs missing from the table succeed at once. Outputs are ``f"out:{input}"``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalexec.exceptions import PhoenixException, RateLimitError

Step = tuple[str, float]


class FakeError(Exception):
    """A plain, retryable error raised by the fakes."""


def output_for(item: Any) -> str:
    return f"out:{item}"


def make_exception(kind: str, item: Any, attempt: int) -> BaseException:
    if kind == "error":
        return FakeError(f"error on {item!r} attempt {attempt}")
    if kind == "rate_limit":
        return RateLimitError(f"rate limited on {item!r}")
    if kind == "phoenix":
        return PhoenixException(f"fatal on {item!r}")
    raise ValueError(f"unknown outcome {kind!r}")


@dataclass
class Call:
    item: Any
    attempt: int
    started: float


@dataclass
class FakeGenerate:
    """An async generation function whose outcome per (input, attempt) comes from a table.

    Outcomes: ``"ok"`` (return ``output_for(item)``), ``"error"`` (``FakeError``),
    ``"rate_limit"``, ``"phoenix"`` (a non-retryable ``PhoenixException``) and
    ``"hang"`` (sleep a very long time: only a timeout ends it). Each step has a
    delay in seconds before its outcome. Attempts past the end of a row repeat the
    row's last step.
    """

    table: Mapping[Any, Sequence[Step]] = field(default_factory=dict)
    default: Step = ("ok", 0.0)
    clock: Callable[[], float] | None = None
    calls: list[Call] = field(default_factory=list)
    attempts: dict[Any, int] = field(default_factory=lambda: defaultdict(int))
    inflight: int = 0
    max_inflight: int = 0

    def step(self, item: Any, attempt: int) -> Step:
        row = self.table.get(item)
        if not row:
            return self.default
        return row[min(attempt, len(row) - 1)]

    def _start(self, item: Any) -> tuple[int, Step]:
        attempt = self.attempts[item]
        self.attempts[item] += 1
        now = self.clock() if self.clock else asyncio.get_running_loop().time()
        self.calls.append(Call(item, attempt, now))
        return attempt, self.step(item, attempt)

    async def __call__(self, item: Any) -> Any:
        attempt, (kind, delay) = self._start(item)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if kind == "hang":
                await asyncio.sleep(10**6)
            elif delay:
                await asyncio.sleep(delay)
        finally:
            self.inflight -= 1
        if kind == "ok":
            return output_for(item)
        raise make_exception(kind, item, attempt)

    def sync(self, item: Any) -> Any:
        """The same table, as a plain function (delays are ignored)."""
        attempt = self.attempts[item]
        self.attempts[item] += 1
        self.calls.append(Call(item, attempt, 0.0))
        kind, _ = self.step(item, attempt)
        if kind == "ok":
            return output_for(item)
        raise make_exception(kind, item, attempt)


class FakeTime:
    """A clock and a sleep (for SyncExecutor's seams) that only move when told to; every
    sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class SizedOnly:
    """Inputs with `__len__` and `__iter__` but no `__getitem__`; counts its iterations."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.iterated = 0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        self.iterated += 1
        return iter(self.items)
