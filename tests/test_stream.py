"""`stream()` of both executors: each input yielded the moment it is final, generators
drawn only a window ahead, and leaving early cancels what is in flight. On virtual
loop time (looptime)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from evalexec.executors import AsyncExecutor, ExecutionDetails, ExecutionStatus, SyncExecutor
from tests.fakes import (
    FakeError,
    FakeGenerate,
    FakeTime,
    Hinting,
    other_tasks,
    output_for,
    summary_of,
)
from tests.vtime import now

pytestmark = pytest.mark.looptime

S = ExecutionStatus


@dataclass
class Drawn:
    """A generator of inputs ``0..count-1`` that records how far it has been drawn."""

    count: int
    drawn: int = 0

    def __iter__(self) -> Iterator[int]:
        for item in range(self.count):
            self.drawn += 1
            yield item


# -- AsyncExecutor.stream -----------------------------------------------------------------

STREAM_TABLE: dict[Any, list[tuple[str, float]]] = {
    0: [("ok", 3.0)],
    1: [("ok", 1.0)],
    2: [("error", 0.5), ("ok", 1.0)],
    3: [("ok", 2.0)],
}


async def test_stream_yields_in_completion_order_at_the_moment_each_input_finishes() -> None:
    fake = FakeGenerate(STREAM_TABLE)
    executor = AsyncExecutor(fake, concurrency=2, enable_dynamic_concurrency=False)
    start = now()
    seen = []
    async for index, output, details in executor.stream([0, 1, 2, 3]):
        seen.append((index, output, details.status, now() - start))
    # 0 and 1 start at 0; 2 takes 1's worker at 1.0, fails at 1.5 and is retried at
    # once; 3 starts when 2 is done at 2.5
    assert seen == [
        (1, "out:1", S.COMPLETED, 1.0),
        (2, "out:2", S.COMPLETED_WITH_RETRIES, 2.5),
        (0, "out:0", S.COMPLETED, 3.0),
        (3, "out:3", S.COMPLETED, 4.5),
    ]
    assert [(c.item, c.started - start) for c in fake.calls] == [
        (0, 0.0),
        (1, 0.0),
        (2, 1.0),
        (2, 1.5),
        (3, 2.5),
    ]


async def test_stream_ends_with_the_same_details_as_execute() -> None:
    executor = AsyncExecutor(FakeGenerate(STREAM_TABLE), concurrency=2)
    outputs, details = await executor.execute([0, 1, 2, 3])

    executor = AsyncExecutor(FakeGenerate(STREAM_TABLE), concurrency=2)
    streamed: dict[int, tuple[Any, ExecutionDetails]] = {}
    async for index, output, detail in executor.stream([0, 1, 2, 3]):
        streamed[index] = (output, detail)

    assert [streamed[i][0] for i in range(4)] == outputs
    assert summary_of([streamed[i][1] for i in range(4)]) == summary_of(details)
    assert summary_of(details) == [
        (S.COMPLETED, [], 3.0),
        (S.COMPLETED, [], 1.0),
        (S.COMPLETED_WITH_RETRIES, [FakeError], 1.5),
        (S.COMPLETED, [], 2.0),
    ]


async def test_stream_draws_a_generator_of_unknown_length_only_a_window_ahead() -> None:
    concurrency = 3
    inputs = Drawn(1000)
    finished = 0
    ahead: list[int] = []

    async def generate(item: int) -> int:
        nonlocal finished
        ahead.append(inputs.drawn - finished)
        await asyncio.sleep(1.0)
        finished += 1
        return item

    executor = AsyncExecutor(generate, concurrency=concurrency)
    start = now()
    indices = [index async for index, _, _ in executor.stream(iter(inputs))]
    assert sorted(indices) == list(range(1000))
    assert inputs.drawn == 1000
    assert max(ahead) == 4 * concurrency
    assert now() - start == 334.0  # ceil(1000 / 3) rounds of one second


async def test_breaking_out_of_stream_early_cancels_the_calls_in_flight() -> None:
    before = signal.getsignal(signal.SIGINT)
    fake = FakeGenerate({0: [("ok", 1.0)]}, default=("ok", 10.0))
    hinting = Hinting(fake, hint=0.0)
    inputs = Drawn(10**9)
    executor = AsyncExecutor(hinting, concurrency=3)
    start = now()
    stream = executor.stream(iter(inputs))
    assert isinstance(stream, AsyncGenerator)  # it can be closed, as its docstring says
    async with contextlib.aclosing(stream) as results:
        async for index, output, _ in results:
            assert (index, output, now() - start) == (0, "out:0", 1.0)
            break
    assert now() - start == 1.0  # nothing waited for the calls in flight
    assert other_tasks() == []
    assert sorted(hinting.cancelled) == [1, 2, 3]
    assert fake.inflight == 0
    assert inputs.drawn <= 4 * 3 + 1
    assert signal.getsignal(signal.SIGINT) is before
    drawn, calls = inputs.drawn, len(fake.calls)
    await asyncio.sleep(100.0)
    assert (inputs.drawn, len(fake.calls)) == (drawn, calls) == (drawn, 4)


async def test_an_error_that_ends_a_stream_run_is_raised_by_the_iterator() -> None:
    def not_async(item: int) -> int:
        return item

    executor = AsyncExecutor(not_async)  # type: ignore[arg-type]
    results: AsyncIterator[Any] = executor.stream(iter(range(5)))
    with pytest.raises(TypeError, match="returns an awaitable"):
        async for _ in results:
            pass
    assert other_tasks() == []


# -- SyncExecutor.stream ------------------------------------------------------------------


def test_sync_stream_draws_a_generator_lazily_and_yields_each_input_when_final() -> None:
    inputs = Drawn(5)
    calls: list[int] = []

    def generate(item: int) -> str:
        calls.append(item)
        if item == 1 and calls.count(1) == 1:
            raise FakeError("once")
        return output_for(item)

    fake_time = FakeTime()
    executor = SyncExecutor(generate, clock=fake_time.clock, sleep=fake_time.sleep)
    seen = [
        (index, output, details.status, inputs.drawn)
        for index, output, details in executor.stream(iter(inputs))
    ]
    assert seen == [
        (0, "out:0", S.COMPLETED, 1),
        (1, "out:1", S.COMPLETED_WITH_RETRIES, 2),
        (2, "out:2", S.COMPLETED, 3),
        (3, "out:3", S.COMPLETED, 4),
        (4, "out:4", S.COMPLETED, 5),
    ]
    assert calls == [0, 1, 1, 2, 3, 4]


def test_closing_a_sync_stream_early_stops_the_run_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen_handlers: list[object] = []
    calls: list[int] = []

    def generate(item: int) -> int:
        calls.append(item)
        seen_handlers.append(signal.getsignal(signal.SIGINT))
        return item

    fake_time = FakeTime()
    executor = SyncExecutor(generate, clock=fake_time.clock, sleep=fake_time.sleep)
    inputs = Drawn(10**9)
    stream = executor.stream(iter(inputs))
    assert isinstance(stream, Generator)
    with contextlib.closing(stream) as results:
        for index, _, _ in results:
            if index == 2:
                break
    assert calls == [0, 1, 2]
    assert inputs.drawn == 3
    assert seen_handlers[0] is not before  # installed while running...
    assert signal.getsignal(signal.SIGINT) is before  # ...and put back when closed
