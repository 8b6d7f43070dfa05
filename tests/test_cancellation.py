"""Cancellation from outside (SPEC §5): `asyncio.wait_for`, `asyncio.timeout` and
`task.cancel()` around `execute()` propagate, cancel every attempt in flight, and
leave no pending task, no installed handler and no open progress bar. On virtual
loop time (looptime).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalexec import Backoff, RateLimitError
from evalexec.executors import AsyncExecutor
from tests.fakes import (
    DELAYS,
    OK,
    Item,
    Leftovers,
    Plan,
    ScheduledProvider,
    Step,
    assert_cleaned_up,
    other_tasks,
    plans,
    watched_run,
)
from tests.vtime import virtual_time_loop

BAR = "{l_bar}{bar}{r_bar}"


def slow_provider(seconds: float) -> ScheduledProvider:
    return ScheduledProvider(Plan({}, Step(OK, seconds)), slow_seconds=10 * seconds)


def in_flight(provider: ScheduledProvider) -> list[int]:
    return [call.index for call in provider.all_calls() if call.outcome is None]


def cancelled(provider: ScheduledProvider) -> list[int]:
    return sorted(call.index for call in provider.all_calls() if call.outcome == "cancelled")


@contextmanager
def cleanly_left() -> Iterator[Leftovers]:
    """Like `watched_run`, and checks on the way out that the run left nothing behind."""
    with watched_run() as leftovers:
        yield leftovers
        assert other_tasks() == []
        assert_cleaned_up(leftovers, BAR)


@pytest.mark.looptime
async def test_wait_for_times_out_and_cancels_every_attempt_in_flight() -> None:
    provider = slow_provider(10.0)
    executor = AsyncExecutor(provider, concurrency=3, tqdm_bar_format=BAR)
    loop = asyncio.get_running_loop()
    with cleanly_left():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(executor.execute([Item(i) for i in range(7)]), 25.0)
        assert loop.time() == 25.0
        # 0-2 ran 0-10 s, 3-5 ran 10-20 s, 6 was cut at 25 s
        assert cancelled(provider) == [6]
        assert in_flight(provider) == []
    await asyncio.sleep(1000.0)
    assert len(provider.all_calls()) == 7


@pytest.mark.looptime
async def test_asyncio_timeout_around_execute_cancels_every_attempt_in_flight() -> None:
    provider = slow_provider(10.0)
    executor = AsyncExecutor(provider, concurrency=4, tqdm_bar_format=BAR)
    with cleanly_left():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5.0):
                await executor.execute([Item(i) for i in range(10)])
        assert cancelled(provider) == [0, 1, 2, 3]
        assert in_flight(provider) == []


@pytest.mark.looptime
async def test_task_cancel_propagates_cancelled_error() -> None:
    provider = slow_provider(10.0)
    executor = AsyncExecutor(provider, concurrency=2, tqdm_bar_format=BAR)
    with cleanly_left():
        task = asyncio.create_task(executor.execute([Item(i) for i in range(5)]))
        await asyncio.sleep(15.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert cancelled(provider) == [2, 3]
        assert in_flight(provider) == []


@pytest.mark.looptime
async def test_cancel_before_the_run_starts_calls_nothing() -> None:
    provider = slow_provider(1.0)
    executor = AsyncExecutor(provider, tqdm_bar_format=BAR)
    with watched_run() as leftovers:
        task = asyncio.create_task(executor.execute([Item(0)]))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert other_tasks() == []
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
        assert all(bar.disable for bar in leftovers.bars)
    assert provider.all_calls() == []


@pytest.mark.looptime
async def test_cancel_while_retries_wait_for_their_backoff_starts_no_retry_later() -> None:
    plan = Plan({i: (Step("rate_limit"),) for i in range(3)}, Step(OK))
    provider = ScheduledProvider(plan, slow_seconds=100.0)
    backoff = Backoff(initial=30.0, jitter=0.0)
    executor = AsyncExecutor(provider, concurrency=3, backoff=backoff, tqdm_bar_format=BAR)
    with cleanly_left():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(executor.execute([Item(i) for i in range(3)]), 10.0)
        assert in_flight(provider) == []
    await asyncio.sleep(100.0)
    assert [call.attempt for call in provider.all_calls()] == [0, 0, 0]


@pytest.mark.looptime
async def test_cancel_during_a_rate_limit_cooldown() -> None:
    async def hinted(item: Item) -> str:
        if item.index == 0:
            raise RateLimitError("slow down", retry_after=60.0)
        await asyncio.sleep(1.0)
        return f"out:{item.index}"

    executor = AsyncExecutor(hinted, concurrency=2, tqdm_bar_format=BAR)
    with cleanly_left():
        task = asyncio.create_task(executor.execute([Item(i) for i in range(4)]))
        await asyncio.sleep(30.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.looptime
async def test_a_function_slow_to_honour_cancellation_is_awaited_not_leaked() -> None:
    """A call that cleans up for a while when cancelled delays the cancellation; the
    executor waits for it rather than returning with the call still running."""
    cleaned_up: list[float] = []
    loop = asyncio.get_running_loop()

    async def slow_cleanup(item: int) -> int:
        try:
            await asyncio.sleep(100.0)
        except asyncio.CancelledError:
            await asyncio.sleep(3.0)
            cleaned_up.append(loop.time())
            raise
        return item

    executor = AsyncExecutor(slow_cleanup, concurrency=2, tqdm_bar_format=BAR)
    with cleanly_left():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(executor.execute([1, 2, 3]), 5.0)
        assert cleaned_up == [8.0, 8.0]
        assert loop.time() == 8.0


@pytest.mark.looptime
async def test_cancelled_twice_while_calls_clean_up_still_leaves_nothing_behind() -> None:
    cleaned_up: list[int] = []

    async def slow_cleanup(item: int) -> int:
        try:
            await asyncio.sleep(100.0)
        except asyncio.CancelledError:
            try:
                await asyncio.sleep(3.0)
            finally:
                cleaned_up.append(item)
            raise
        return item

    executor = AsyncExecutor(slow_cleanup, concurrency=2, tqdm_bar_format=BAR)
    with cleanly_left():
        task = asyncio.create_task(executor.execute([1, 2, 3]))
        await asyncio.sleep(5.0)
        task.cancel()
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(cleaned_up) == [1, 2]


@pytest.mark.looptime
async def test_leaving_a_stream_early_cancels_the_calls_in_flight() -> None:
    provider = ScheduledProvider(Plan({0: (Step(OK, 1.0),)}, Step(OK, 50.0)), slow_seconds=500.0)
    executor = AsyncExecutor(provider, concurrency=3, tqdm_bar_format=BAR)
    with cleanly_left():
        stream = executor.stream([Item(i) for i in range(6)])
        async with contextlib.aclosing(stream):
            async for index, output, _ in stream:
                assert (index, output) == (0, "out:0")
                break
        assert cancelled(provider) == [1, 2, 3]
        assert in_flight(provider) == []


# -- a property: cancel at any moment of any run -------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    sized_plan=plans(timeouts=True),
    concurrency=st.integers(1, 6),
    cancel_after=st.sampled_from((0.0, *DELAYS, 1.0, 2.0, 3.3, 10.0)),
    how=st.sampled_from(("wait_for", "cancel")),
    dynamic=st.booleans(),
    backoff=st.sampled_from((None, Backoff())),
)
def test_cancelling_at_any_moment_leaves_nothing_behind(
    sized_plan: tuple[int, Plan],
    concurrency: int,
    cancel_after: float,
    how: str,
    dynamic: bool,
    backoff: Backoff | None,
) -> None:
    size, plan = sized_plan
    provider = ScheduledProvider(plan, slow_seconds=6.0)
    executor = AsyncExecutor(
        provider,
        concurrency=concurrency,
        tqdm_bar_format=BAR,
        max_retries=2,
        exit_on_error=False,
        timeout=2.0,
        enable_dynamic_concurrency=dynamic,
        backoff=backoff,
    )
    inputs = [Item(i) for i in range(size)]

    async def main() -> str:
        run = executor.execute(inputs)
        try:
            if how == "wait_for":
                await asyncio.wait_for(run, cancel_after)
            else:
                task = asyncio.create_task(run)
                await asyncio.sleep(cancel_after)
                task.cancel()
                await task
        except (TimeoutError, asyncio.CancelledError) as exc:
            outcome = type(exc).__name__
        else:
            outcome = "finished"
        assert other_tasks() == []
        assert in_flight(provider) == []
        calls = len(provider.all_calls())
        await asyncio.sleep(1000.0)
        assert len(provider.all_calls()) == calls
        return outcome

    with watched_run() as leftovers:
        loop = virtual_time_loop()
        try:
            outcome = loop.run_until_complete(main())
        finally:
            loop.close()
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
        # A run cancelled before its first step never opened a bar.
        assert len(leftovers.bars) <= 1
        if provider.all_calls():
            assert len(leftovers.bars) == 1
        assert all(bar.close_calls >= 1 and bar.disable for bar in leftovers.bars)
    expected = "TimeoutError" if how == "wait_for" else "CancelledError"
    assert outcome in (expected, "finished")
