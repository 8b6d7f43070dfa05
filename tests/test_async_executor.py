"""AsyncExecutor against the contract of SPEC §2, on virtual loop time (looptime)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from evalexec.executors import (
    AsyncExecutor,
    ExecutionStatus,
    _unset,
)
from tests.fakes import (
    FakeError,
    FakeGenerate,
    RecordingController,
    SizedOnly,
    in_thread,
    output_for,
)

pytestmark = pytest.mark.looptime

S = ExecutionStatus


def statuses(details: list[Any]) -> list[ExecutionStatus]:
    return [d.status for d in details]


async def test_outputs_stay_aligned_when_later_inputs_finish_first() -> None:
    items = list(range(10))
    fake = FakeGenerate({i: [("ok", 10 - i)] for i in items})
    outputs, details = await AsyncExecutor(fake, concurrency=10).execute(items)
    assert outputs == [output_for(i) for i in items]
    assert statuses(details) == [S.COMPLETED] * 10


async def test_a_run_takes_latency_times_inputs_over_concurrency() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    await AsyncExecutor(fake, concurrency=4).execute(list(range(12)))
    assert loop.time() - start == 3.0


async def test_error_then_success_is_completed_with_retries() -> None:
    fake = FakeGenerate({"a": [("error", 0.0), ("ok", 0.0)]})
    outputs, details = await AsyncExecutor(fake).execute(["a", "b"])
    assert outputs == ["out:a", "out:b"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES, S.COMPLETED]
    assert [type(e) for e in details[0].exceptions] == [FakeError]
    assert details[1].exceptions == []


async def test_retries_exhausted_fail_with_the_fallback_and_go_on_without_exit_on_error() -> None:
    fake = FakeGenerate({"a": [("error", 0.0)]})
    executor = AsyncExecutor(fake, max_retries=3, exit_on_error=False, fallback_return_value="fb")
    outputs, details = await executor.execute(["a", "b"])
    assert outputs == ["fb", "out:b"]
    assert statuses(details) == [S.FAILED, S.COMPLETED]
    assert fake.attempts["a"] == 4
    assert len(details[0].exceptions) == 4


async def test_default_fallback_is_the_unset_sentinel() -> None:
    fake = FakeGenerate({"a": [("phoenix", 0.0)]})
    outputs, _ = await AsyncExecutor(fake).execute(["a"])
    assert outputs[0] is _unset


async def test_exit_on_error_stops_the_run_and_cancels_calls_in_flight() -> None:
    fake = FakeGenerate({0: [("phoenix", 1.0)], 2: [("ok", 0.5)]}, default=("ok", 5.0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    outputs, details = await AsyncExecutor(fake, concurrency=3).execute([0, 1, 2, 3, 4])
    assert loop.time() - start == 1.0
    assert statuses(details) == [S.FAILED, S.DID_NOT_RUN, S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    assert outputs == [_unset, _unset, "out:2", _unset, _unset]
    # input 3 started at 0.5 s (when 2 finished); input 4 never started
    assert sorted({c.item for c in fake.calls}) == [0, 1, 2, 3]
    assert fake.inflight == 0


async def test_phoenix_exception_fails_at_once_without_retry() -> None:
    fake = FakeGenerate({"a": [("phoenix", 0.0)]})
    _, details = await AsyncExecutor(fake, exit_on_error=False).execute(["a", "b"])
    assert statuses(details) == [S.FAILED, S.COMPLETED]
    assert fake.attempts["a"] == 1


async def test_rate_limit_errors_are_retried_and_reported_to_the_controller() -> None:
    fake = FakeGenerate({"a": [("rate_limit", 0.0), ("rate_limit", 0.0), ("ok", 0.0)]})
    executor = AsyncExecutor(fake)
    controller = RecordingController(3)
    executor._concurrency_controller = controller
    outputs, details = await executor.execute(["a"])
    assert outputs == ["out:a"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES]
    assert controller.events == ["error", "error", "success"]


async def test_plain_errors_are_not_reported_to_the_controller() -> None:
    fake = FakeGenerate({"a": [("error", 0.0), ("ok", 0.0)]})
    executor = AsyncExecutor(fake)
    controller = RecordingController(3)
    executor._concurrency_controller = controller
    await executor.execute(["a"])
    assert controller.events == ["success"]


async def test_retries_run_before_fresh_inputs() -> None:
    fake = FakeGenerate({0: [("error", 1.0), ("error", 1.0), ("ok", 1.0)]})
    await AsyncExecutor(fake, concurrency=1).execute([0, 1, 2])
    assert [c.item for c in fake.calls] == [0, 0, 0, 1, 2]


async def test_timeout_cancels_the_attempt_logs_it_and_retries_it() -> None:
    fake = FakeGenerate({"a": [("hang", 0.0), ("ok", 1.0)]})
    executor = AsyncExecutor(fake, timeout=2.5)
    controller = RecordingController(3)
    executor._concurrency_controller = controller
    loop = asyncio.get_running_loop()
    start = loop.time()
    outputs, details = await executor.execute(["a"])
    assert loop.time() - start == 3.5
    assert outputs == ["out:a"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES]
    assert [type(e) for e in details[0].exceptions] == [TimeoutError]
    assert controller.events == ["timeout", "success"]
    assert [c.started - start for c in fake.calls] == [0.0, 2.5]
    assert details[0].execution_seconds == 3.5


async def test_an_input_that_only_times_out_makes_one_plus_max_retries_attempts() -> None:
    fake = FakeGenerate({"a": [("hang", 0.0)]})
    executor = AsyncExecutor(fake, timeout=1, max_retries=3, exit_on_error=False)
    _, details = await executor.execute(["a", "b"])
    assert fake.attempts["a"] == 4
    assert statuses(details) == [S.FAILED, S.COMPLETED]
    assert all(isinstance(e, TimeoutError) for e in details[0].exceptions)


async def test_timeouts_do_not_use_up_the_error_retry_budget() -> None:
    steps = [("error", 0.0), ("hang", 0.0), ("error", 0.0), ("hang", 0.0), ("ok", 0.0)]
    fake = FakeGenerate({"a": steps})
    outputs, details = await AsyncExecutor(fake, timeout=1, max_retries=2).execute(["a"])
    assert outputs == ["out:a"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES]


async def test_timeout_none_means_sixty_seconds() -> None:
    fake = FakeGenerate({"a": [("hang", 0.0), ("ok", 0.0)]})
    executor = AsyncExecutor(fake, timeout=None)
    assert executor.timeout == 60
    loop = asyncio.get_running_loop()
    start = loop.time()
    await executor.execute(["a"])
    assert [c.started - start for c in fake.calls] == [0.0, 60.0]


async def test_infinite_timeout_lets_a_long_call_finish() -> None:
    fake = FakeGenerate({"a": [("ok", 10_000.0)]})
    outputs, details = await AsyncExecutor(fake, timeout=math.inf).execute(["a"])
    assert outputs == ["out:a"]
    assert statuses(details) == [S.COMPLETED]


async def test_fractional_timeout_is_accepted() -> None:
    fake = FakeGenerate({"a": [("hang", 0.0), ("ok", 0.0)]})
    loop = asyncio.get_running_loop()
    start = loop.time()
    await AsyncExecutor(fake, timeout=0.25).execute(["a"])
    assert [c.started - start for c in fake.calls] == [0.0, 0.25]


async def test_only_the_first_target_workers_take_work() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=5)
    executor._concurrency_controller = RecordingController(2)
    await executor.execute(list(range(10)))
    assert fake.max_inflight == 2


async def test_a_target_raised_from_outside_wakes_gated_workers() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=4)
    controller = RecordingController(1)
    executor._concurrency_controller = controller
    loop = asyncio.get_running_loop()
    loop.call_later(2.5, setattr, controller, "target_concurrency", 4)
    start = loop.time()
    await executor.execute(list(range(10)))
    assert fake.max_inflight == 4
    # 3 calls alone (0..3 s), then the poll notices the raise at 3 s: 7 calls on 4 workers
    assert loop.time() - start == 5.0


async def test_queued_retries_are_taken_even_when_the_target_drops() -> None:
    fake = FakeGenerate({i: [("error", 1.0), ("ok", 1.0)] for i in range(6)})
    executor = AsyncExecutor(fake, concurrency=6)
    controller = RecordingController(6)
    executor._concurrency_controller = controller
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, setattr, controller, "target_concurrency", 0)
    outputs, details = await executor.execute(list(range(6)))
    assert outputs == [output_for(i) for i in range(6)]
    assert set(statuses(details)) == {S.COMPLETED_WITH_RETRIES}


async def test_the_builtin_controller_never_lets_in_flight_exceed_its_target() -> None:
    fake = FakeGenerate({i: [("rate_limit", 0.5), ("ok", 1.0)] for i in range(0, 40, 3)})
    fake.default = ("ok", 1.0)
    executor = AsyncExecutor(fake, concurrency=8)
    controller = executor._concurrency_controller
    seen: list[tuple[int, int]] = []
    original = fake.__call__

    async def watching(item: Any) -> Any:
        # Dispatch is fractional: a float target of 3.6 lets a 4th call in part of the time.
        seen.append((fake.inflight + 1, math.ceil(controller.dispatch_limit)))
        return await original(item)

    executor.generate = watching
    await executor.execute(list(range(40)))
    assert all(inflight <= target for inflight, target in seen)


def test_run_returns_outputs_and_details() -> None:
    fake = FakeGenerate()
    outputs, details = AsyncExecutor(fake).run([1, 2, 3])
    assert outputs == ["out:1", "out:2", "out:3"]
    assert statuses(details) == [S.COMPLETED] * 3


@pytest.mark.parametrize("inputs", [[], [7]])
def test_zero_and_one_inputs(inputs: list[int]) -> None:
    outputs, details = AsyncExecutor(FakeGenerate()).run(inputs)
    assert outputs == [output_for(i) for i in inputs]
    assert len(details) == len(inputs)


async def test_any_sized_iterable_is_accepted_and_iterated_once() -> None:
    inputs = SizedOnly(["x", "y"])
    outputs, _ = await AsyncExecutor(FakeGenerate()).execute(inputs)
    assert outputs == ["out:x", "out:y"]
    assert inputs.iterated == 1


async def test_tuples_are_accepted() -> None:
    outputs, _ = await AsyncExecutor(FakeGenerate()).execute(("x", "y"))
    assert outputs == ["out:x", "out:y"]


def test_inputs_are_drawn_after_the_termination_handler_is_installed() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGUSR1)

    class Watching(SizedOnly):
        def __iter__(self) -> Iterator[Any]:
            seen.append(signal.getsignal(signal.SIGUSR1))
            return super().__iter__()

    AsyncExecutor(FakeGenerate(), termination_signal=signal.SIGUSR1).run(Watching([1]))
    assert len(seen) == 1
    assert seen[0] is not before
    assert signal.getsignal(signal.SIGUSR1) is before


def test_first_signal_stops_the_run_and_keeps_finished_outputs() -> None:
    before = signal.getsignal(signal.SIGUSR1)

    async def gen(item: int) -> int:
        if item == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(3600)
        await asyncio.sleep(0.001 * item)
        return item * 10

    executor = AsyncExecutor(gen, concurrency=1, termination_signal=signal.SIGUSR1)
    outputs, details = executor.run(list(range(6)))
    assert outputs[:3] == [0, 10, 20]
    assert outputs[3:] == [_unset] * 3
    assert statuses(details) == [S.COMPLETED] * 3 + [S.DID_NOT_RUN] * 3
    assert signal.getsignal(signal.SIGUSR1) is before


async def test_no_handler_is_installed_when_termination_signal_is_none() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGINT)

    async def gen(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return item

    await AsyncExecutor(gen, termination_signal=None).execute([1])
    assert seen == [before]


def test_no_handler_is_installed_off_the_main_thread() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGINT)

    async def gen(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return item

    outputs, _ = in_thread(lambda: AsyncExecutor(gen).run([1]))
    assert outputs == [1]
    assert seen == [before]


def test_the_previous_handler_is_restored_when_the_run_raises() -> None:
    before = signal.getsignal(signal.SIGINT)

    def not_async(item: int) -> int:
        return item

    with pytest.raises(TypeError, match="returns an awaitable"):
        AsyncExecutor(not_async).run([1, 2])
    assert signal.getsignal(signal.SIGINT) is before


def test_a_function_that_is_not_async_is_reported_once() -> None:
    calls: list[int] = []

    def not_async(item: int) -> int:
        calls.append(item)
        return item

    with pytest.raises(TypeError, match=r"not_async returned int; pass an `async def` function"):
        AsyncExecutor(not_async, concurrency=1).run([1, 2, 3])
    assert calls == [1]


async def test_run_inside_a_running_loop_says_to_await_execute() -> None:
    with pytest.raises(RuntimeError, match=r"await executor.execute\(inputs\)"):
        AsyncExecutor(FakeGenerate()).run([1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be >= 1, got 0"),
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0, got -1"),
        ({"timeout": 0}, ValueError, "timeout must be > 0 seconds, got 0"),
        ({"timeout": -2.5}, ValueError, "timeout must be > 0 seconds, got -2.5"),
        ({"concurrency": 2.5}, TypeError, "concurrency must be an int, got float"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        AsyncExecutor(FakeGenerate(), **kwargs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "got None"),
        ("abc", "got a str; to run a single input, wrap it in a list"),
        (42, "got int, which is not iterable"),
        ((i for i in range(3)), "got generator; for a generator, use the executor's stream"),
    ],
)
def test_bad_inputs_are_refused_before_anything_runs(inputs: Any, message: str) -> None:
    fake = FakeGenerate()
    with pytest.raises(TypeError, match=message):
        AsyncExecutor(fake).run(inputs)
    assert fake.calls == []


@pytest.mark.parametrize("delays", [(1.0, 2.0), (2.0, 1.0)])
async def test_runs_awaited_side_by_side_restore_the_original_handler(
    delays: tuple[float, float],
) -> None:
    """Whichever run ends first, the handler left afterwards is the one from before."""
    before = signal.getsignal(signal.SIGUSR1)
    first = AsyncExecutor(
        FakeGenerate(default=("ok", delays[0])), termination_signal=signal.SIGUSR1
    )
    second = AsyncExecutor(
        FakeGenerate(default=("ok", delays[1])), termination_signal=signal.SIGUSR1
    )
    await asyncio.gather(first.execute([1]), second.execute([2]))
    assert signal.getsignal(signal.SIGUSR1) is before
