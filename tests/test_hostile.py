"""Bad input and hostile generation functions (SPEC "run() / execute()", §3, §5): each
gets a clear error or a correct run, and nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import RecordingBar, other_tasks, previous_sigint_handler, watched_run

S = ExecutionStatus


async def double_async(item: int) -> int:
    await asyncio.sleep(0)
    return 2 * item


def double(item: int) -> int:
    return 2 * item


@pytest.fixture(params=["python default", "custom"])
def handler_before(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The SIGINT handler in place before the run: Python's own (over which asyncio.run
    installs one of its own), or one of the caller's."""
    original = signal.signal(
        signal.SIGINT,
        signal.default_int_handler
        if request.param == "python default"
        else previous_sigint_handler,
    )
    yield signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, original)


# -- functions that do not return an awaitable ---------------------------------------------


class NotAsync:
    def __call__(self, item: int) -> int:
        return item


class Methods:
    def plain(self, item: int) -> int:
        return item

    async def coroutine(self, item: int) -> int:
        await asyncio.sleep(0)
        return 3 * item


async def _agen(item: int) -> AsyncIterator[int]:
    yield item


NOT_AWAITABLE: dict[str, Callable[[Any], Any]] = {
    "a plain function": double,
    "a partial of a plain function": functools.partial(pow, exp=2),
    "a callable object": NotAsync(),
    "a bound method": Methods().plain,
    "an async generator function": _agen,
    "a lambda returning None": lambda item: None,
}


@pytest.mark.looptime
@pytest.mark.parametrize("fn", NOT_AWAITABLE.values(), ids=NOT_AWAITABLE.keys())
async def test_execute_with_a_function_that_returns_no_awaitable_raises_type_error_once(
    fn: Callable[[Any], Any],
) -> None:
    calls: list[int] = []

    def counting(item: int) -> Any:
        calls.append(item)
        return fn(item)

    with watched_run() as leftovers:
        with pytest.raises(TypeError, match=r"returned \w+; pass an `async def` function"):
            await AsyncExecutor(counting, concurrency=4).execute(list(range(8)))
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert calls == [0]
    assert other_tasks() == []


def test_run_with_a_function_that_returns_no_awaitable_raises_type_error_once(
    previous_handler: Any,
) -> None:
    calls: list[int] = []

    def sometimes(item: int) -> Any:
        calls.append(item)
        return double_async(item) if item < 3 else item

    with pytest.raises(TypeError, match=r"sometimes returned int"):
        AsyncExecutor(sometimes, concurrency=1).run(list(range(8)))
    assert calls == [0, 1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is previous_handler


# -- callables of every shape --------------------------------------------------------------


class AsyncCallable:
    async def __call__(self, item: int) -> int:
        await asyncio.sleep(0)
        return 5 * item


async def _scaled(item: int, factor: int) -> int:
    await asyncio.sleep(0)
    return factor * item


def _returns_a_task(item: int) -> asyncio.Task[int]:
    return asyncio.get_running_loop().create_task(_scaled(item, 7))


ASYNC_CALLABLES: dict[str, tuple[Callable[[Any], Any], int]] = {
    "functools.partial": (functools.partial(_scaled, factor=4), 4),
    "a callable object": (AsyncCallable(), 5),
    "a bound method": (Methods().coroutine, 3),
    "a lambda returning a coroutine": (lambda item: _scaled(item, 6), 6),
    "a function returning a task": (_returns_a_task, 7),
}


@pytest.mark.looptime
@pytest.mark.parametrize(("fn", "factor"), ASYNC_CALLABLES.values(), ids=ASYNC_CALLABLES.keys())
async def test_async_executor_takes_any_callable_that_returns_an_awaitable(
    fn: Callable[[Any], Any], factor: int
) -> None:
    outputs, details = await AsyncExecutor(fn, concurrency=3).execute(list(range(10)))
    assert outputs == [factor * i for i in range(10)]
    assert {d.status for d in details} == {S.COMPLETED}
    assert other_tasks() == []


class SyncCallable:
    def __call__(self, item: int) -> int:
        return 5 * item


SYNC_CALLABLES: dict[str, tuple[Callable[[Any], Any], int]] = {
    "functools.partial": (functools.partial(pow, exp=1), 1),
    "a callable object": (SyncCallable(), 5),
    "a bound method": (Methods().plain, 1),
    "a lambda": (lambda item: 6 * item, 6),
}


@pytest.mark.parametrize(("fn", "factor"), SYNC_CALLABLES.values(), ids=SYNC_CALLABLES.keys())
def test_sync_executor_takes_any_callable(fn: Callable[[Any], Any], factor: int) -> None:
    outputs, details = SyncExecutor(fn).run(list(range(10)))
    assert outputs == [factor * i for i in range(10)]
    assert {d.status for d in details} == {S.COMPLETED}


# -- BaseException from the function -------------------------------------------------------


class Abort(BaseException):
    """A BaseException of a library's own (as gevent's GreenletExit, or pytest.fail())."""


BASE_EXCEPTIONS = [KeyboardInterrupt(), SystemExit(3), Abort("stop everything")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exc", BASE_EXCEPTIONS, ids=type)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_async_run_lets_base_exceptions_through(
    exc: BaseException, concurrency: int, handler_before: Any
) -> None:
    calls: list[int] = []

    async def raising(item: int) -> int:
        calls.append(item)
        await asyncio.sleep(0)
        if item == 1:
            raise exc
        return item

    with pytest.raises(type(exc)) as raised:
        AsyncExecutor(raising, concurrency=concurrency).run(list(range(6)))
    assert raised.value is exc
    assert calls.count(1) == 1  # not retried
    assert signal.getsignal(signal.SIGINT) is handler_before


@pytest.mark.timeout(30)
@pytest.mark.looptime
async def test_execute_lets_a_base_exception_of_the_function_through() -> None:
    exc = Abort("stop everything")
    calls: list[int] = []

    async def raising(item: int) -> int:
        calls.append(item)
        await asyncio.sleep(1.0 if item == 1 else 10.0)
        if item == 1:
            raise exc
        return item

    with watched_run() as leftovers:
        with pytest.raises(Abort) as raised:
            await AsyncExecutor(raising, concurrency=3).execute(list(range(6)))
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert raised.value is exc
    assert calls == [0, 1, 2]
    assert other_tasks() == []


@pytest.mark.parametrize("exc", BASE_EXCEPTIONS, ids=type)
def test_sync_run_lets_base_exceptions_through(exc: BaseException, handler_before: Any) -> None:
    calls: list[int] = []

    def raising(item: int) -> int:
        calls.append(item)
        if item == 1:
            raise exc
        return item

    with pytest.raises(type(exc)) as raised:
        SyncExecutor(raising).run(list(range(6)))
    assert raised.value is exc
    assert calls == [0, 1]
    assert signal.getsignal(signal.SIGINT) is handler_before


@pytest.mark.looptime
async def test_cancelled_error_raised_by_the_function_is_retried_like_a_plain_error() -> None:
    raised: list[asyncio.CancelledError] = []

    async def cancels_once(item: int) -> int:
        await asyncio.sleep(1.0)
        if item == 1 and not raised:
            raised.append(asyncio.CancelledError("from the function"))
            raise raised[0]
        return item

    outputs, details = await AsyncExecutor(cancels_once, concurrency=2).execute([0, 1, 2])
    assert outputs == [0, 1, 2]
    assert [d.status for d in details] == [S.COMPLETED, S.COMPLETED_WITH_RETRIES, S.COMPLETED]
    assert details[1].exceptions == raised
    assert other_tasks() == []


@pytest.mark.looptime
async def test_cancelled_error_from_the_function_fails_the_input_when_retries_run_out() -> None:
    async def always_cancels(item: int) -> int:
        await asyncio.sleep(1.0)
        if item == 1:
            raise asyncio.CancelledError("from the function")
        return item

    executor = AsyncExecutor(always_cancels, max_retries=2, exit_on_error=False)
    outputs, details = await executor.execute([0, 1, 2])
    assert outputs == [0, _unset, 2]
    assert [d.status for d in details] == [S.COMPLETED, S.FAILED, S.COMPLETED]
    assert [type(e) for e in details[1].exceptions] == [asyncio.CancelledError] * 3


# -- functions that block the loop, or return huge objects ---------------------------------


@pytest.mark.looptime
async def test_a_function_that_blocks_the_loop_still_gets_correct_results() -> None:
    """Blocking work without an await serializes the calls but loses nothing."""
    inflight = 0
    peak = 0

    async def blocking(item: int) -> int:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        total = sum(range(20_000))  # CPU-bound, never yields to the loop
        inflight -= 1
        return total + item

    outputs, details = await AsyncExecutor(blocking, concurrency=4, timeout=0.5).execute(
        list(range(20))
    )
    assert outputs == [sum(range(20_000)) + i for i in range(20)]
    assert {d.status for d in details} == {S.COMPLETED}
    assert peak == 1


@pytest.mark.looptime
async def test_huge_outputs_are_kept_as_they_are() -> None:
    blobs = {i: bytearray(16 * 1024 * 1024) for i in range(3)}

    async def huge(item: int) -> bytearray:
        await asyncio.sleep(1.0)
        return blobs[item]

    outputs, _ = await AsyncExecutor(huge, concurrency=3).execute([2, 0, 1])
    assert [id(o) for o in outputs] == [id(blobs[2]), id(blobs[0]), id(blobs[1])]


# -- bad inputs ----------------------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield from range(3)


BAD_INPUTS: list[tuple[Any, str]] = [
    (None, "got None"),
    ("abc", "got a str; to run a single input, wrap it in a list: [input]"),
    (b"abc", "got a bytes; to run a single input, wrap it in a list: [input]"),
    (bytearray(b"abc"), "got a bytearray; to run a single input, wrap it in a list"),
    (42, "got int, which is not iterable"),
]


@pytest.mark.parametrize(("inputs", "message"), BAD_INPUTS, ids=repr)
def test_bad_inputs_are_refused_by_every_entry_point(inputs: Any, message: str) -> None:
    calls: list[Any] = []

    async def recording(item: Any) -> Any:
        calls.append(item)
        return item

    def recording_sync(item: Any) -> Any:
        calls.append(item)
        return item

    async_executor = AsyncExecutor(recording)
    sync_executor = SyncExecutor(recording_sync)
    with pytest.raises(TypeError, match=re.escape(message)):
        async_executor.run(inputs)
    with pytest.raises(TypeError, match=re.escape(message)):
        asyncio.run(async_executor.execute(inputs))
    with pytest.raises(TypeError, match=re.escape(message)):
        sync_executor.run(inputs)
    with pytest.raises(TypeError, match=re.escape(message)):
        list(sync_executor.stream(inputs))

    async def drain() -> None:
        async for _ in async_executor.stream(inputs):
            pass

    with pytest.raises(TypeError, match=re.escape(message)):
        asyncio.run(drain())
    assert calls == []


def test_a_generator_is_refused_by_run_and_points_to_stream() -> None:
    message = "got generator; for a generator, use the executor's stream"
    with pytest.raises(TypeError, match=message):
        AsyncExecutor(double_async).run(_generator())
    with pytest.raises(TypeError, match=message):
        SyncExecutor(double).run(_generator())


@pytest.mark.looptime
async def test_async_stream_accepts_a_generator() -> None:
    results = [
        (index, output, details.status)
        async for index, output, details in AsyncExecutor(double_async).stream(_generator())
    ]
    assert sorted(results) == [(0, 0, S.COMPLETED), (1, 2, S.COMPLETED), (2, 4, S.COMPLETED)]


def test_sync_stream_accepts_a_generator() -> None:
    results = [(i, o, d.status) for i, o, d in SyncExecutor(double).stream(_generator())]
    assert results == [(0, 0, S.COMPLETED), (1, 2, S.COMPLETED), (2, 4, S.COMPLETED)]


@pytest.mark.parametrize("empty", [[], (), set(), range(0)], ids=repr)
def test_empty_inputs_return_empty_lists_and_leave_nothing_behind(empty: Any) -> None:
    with watched_run() as leftovers:
        async_result = AsyncExecutor(double_async, tqdm_bar_format="{bar}").run(empty)
        sync_result = SyncExecutor(double, tqdm_bar_format="{bar}").run(empty)
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert async_result == ([], [])
    assert sync_result == ([], [])
    assert len(leftovers.bars) == 2
    assert all(bar.disable for bar in leftovers.bars)


@pytest.mark.looptime
async def test_none_values_and_duplicates_among_inputs_stay_aligned() -> None:
    async def describe(item: Any) -> str:
        await asyncio.sleep(0.1 if item is None else 1.0)
        return repr(item)

    inputs = [None, 1, None, 1, "x", None]
    outputs, _ = await AsyncExecutor(describe, concurrency=4).execute(inputs)
    assert outputs == [repr(i) for i in inputs]


class LyingLength:
    """Reports `length` items but yields `count`."""

    def __init__(self, length: int, count: int) -> None:
        self.length = length
        self.count = count

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.count))


@pytest.mark.parametrize(("length", "count"), [(5, 3), (3, 5)])
def test_inputs_whose_length_lies_give_lists_of_the_reported_length(
    length: int, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    expected_outputs = [2 * i if i < count else _unset for i in range(length)]
    expected_statuses = [S.COMPLETED if i < count else S.DID_NOT_RUN for i in range(length)]
    for executor in (AsyncExecutor(double_async), SyncExecutor(double)):
        with caplog.at_level("WARNING", logger="evalexec"):
            outputs, details = executor.run(LyingLength(length, count))
        assert outputs == expected_outputs
        assert [d.status for d in details] == expected_statuses
    assert "len() reported" in caplog.text


def test_a_hundred_thousand_instant_inputs_async() -> None:
    count = 100_000
    outputs, details = AsyncExecutor(double_async, concurrency=10).run(range(count))
    assert len(outputs) == len(details) == count
    assert outputs == [2 * i for i in range(count)]
    assert all(d.status is S.COMPLETED for d in details)


def test_a_hundred_thousand_instant_inputs_sync() -> None:
    count = 100_000
    outputs, details = SyncExecutor(double).run(range(count))
    assert outputs == [2 * i for i in range(count)]
    assert all(d.status is S.COMPLETED for d in details)


def test_the_progress_bar_counts_every_input_and_is_closed() -> None:
    with watched_run() as leftovers:
        AsyncExecutor(double_async, tqdm_bar_format="{n}/{total}").run(list(range(50)))
    (bar,) = leftovers.bars
    assert isinstance(bar, RecordingBar)
    assert (bar.n, bar.total) == (50, 50)
    assert bar.close_calls >= 1


# -- functions that look like the executor's own machinery -------------------------------


@pytest.mark.looptime
async def test_a_timeout_error_raised_by_the_function_is_an_error_not_a_timeout() -> None:
    """The function's own TimeoutError is logged as raised and uses the error budget."""
    raised: list[TimeoutError] = []

    async def own_timeout(item: int) -> int:
        await asyncio.sleep(0.5)
        if item == 1:
            raised.append(TimeoutError("the function's own"))
            raise raised[-1]
        return item

    executor = AsyncExecutor(own_timeout, max_retries=2, exit_on_error=False, timeout=5.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    outputs, details = await executor.execute([0, 1, 2])
    assert outputs == [0, _unset, 2]
    assert [d.status for d in details] == [S.COMPLETED, S.FAILED, S.COMPLETED]
    assert details[1].exceptions == raised
    assert len(raised) == 3
    assert loop.time() - start == 1.5  # three attempts of 0.5 s, none cut at 5 s


@pytest.mark.looptime
async def test_a_function_that_runs_an_executor_of_its_own() -> None:
    async def inner(item: int) -> int:
        await asyncio.sleep(1.0)
        return 10 * item

    async def outer(item: int) -> list[int]:
        outputs, _ = await AsyncExecutor(inner, concurrency=2).execute([item, item + 1])
        return outputs

    with watched_run() as leftovers:
        outputs, details = await AsyncExecutor(outer, concurrency=3).execute([1, 2, 3])
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert outputs == [[10, 20], [20, 30], [30, 40]]
    assert {d.status for d in details} == {S.COMPLETED}
    assert other_tasks() == []


@pytest.mark.looptime
async def test_one_executor_awaited_twice_side_by_side() -> None:
    async def slow(item: int) -> int:
        await asyncio.sleep(float(item))
        return 10 * item

    executor = AsyncExecutor(slow, concurrency=2)
    with watched_run() as leftovers:
        first, second = await asyncio.gather(executor.execute([3, 1, 2]), executor.execute([2, 1]))
        assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert first[0] == [30, 10, 20]
    assert second[0] == [20, 10]
    assert other_tasks() == []


@pytest.mark.looptime
async def test_unhashable_inputs_are_fine() -> None:
    async def keys(item: dict[str, int]) -> list[str]:
        await asyncio.sleep(float(len(item)))
        return sorted(item)

    outputs, _ = await AsyncExecutor(keys, concurrency=2).execute([{"b": 1, "a": 2}, {"c": 3}])
    assert outputs == [["a", "b"], ["c"]]


class BrokenRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr broke")

    def __str__(self) -> str:
        raise RuntimeError("str broke")


@pytest.mark.parametrize("exit_on_error", [True, False])
def test_an_exception_whose_repr_raises_fails_only_its_input(exit_on_error: bool) -> None:
    async def raising(item: int) -> int:
        await asyncio.sleep(0.01 * item)
        if item == 1:
            raise BrokenRepr()
        return item

    def raising_sync(item: int) -> int:
        if item == 1:
            raise BrokenRepr()
        return item

    logging.getLogger("evalexec").setLevel(logging.DEBUG)  # every message is formatted
    for executor in (
        AsyncExecutor(raising, max_retries=1, exit_on_error=exit_on_error),
        SyncExecutor(raising_sync, max_retries=1, exit_on_error=exit_on_error),
    ):
        outputs, details = executor.run([0, 1, 2])
        assert outputs[:2] == [0, _unset]
        assert [d.status for d in details[:2]] == [S.COMPLETED, S.FAILED]
        assert [type(e) for e in details[1].exceptions] == [BrokenRepr, BrokenRepr]
        if not exit_on_error:
            assert outputs[2] == 2
