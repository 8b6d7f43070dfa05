"""A limiter through the executors: `limiter=`, `cost=` and `usage=` on real runs.

The async tests run on virtual loop time (looptime) with a `LocalLimiter`, and every
time they assert follows from the budgets (derivations in the docstrings). The
threaded `SyncExecutor` test runs on real time, ordered by events, with no duration
in any assertion.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor
from evalexec.limits import Cost, CostExceedsBudget, LocalLimiter, Permit
from tests.fakes import FakeGenerate, output_for
from tests.vtime import now

S = ExecutionStatus
HANG_GUARD = 30.0  # seconds a real-time wait may take before the test fails as hung


def per_window(starts: list[float], period: float) -> list[int]:
    """Starts in each consecutive window [k * period, (k + 1) * period)."""
    counts = Counter(int(start // period) for start in starts)
    return [counts[k] for k in range(max(counts) + 1)]


def busiest_window(starts: list[float], period: float) -> int:
    """The most starts in any half-open window [s, s + period)."""
    return max(sum(1 for t in starts if s <= t < s + period) for s in starts)


# -- requests per minute -----------------------------------------------------------------


@pytest.mark.looptime
async def test_an_rpm_budget_paces_a_run_at_exactly_its_rate_minute_after_minute() -> None:
    """rpm=60 with the default one-second burst is one start per second: 150 inputs of
    0.5 s start at 0, 1, ..., 149 s, 60 in each whole minute and never more than 60 in
    any 60-s window; the run ends when the last call does, at 149.5 s."""
    fake = FakeGenerate(default=("ok", 0.5))
    executor = AsyncExecutor(fake, limiter=LocalLimiter(rpm=60))
    start = now()
    outputs, details = await executor.execute(list(range(150)))
    starts = [call.started - start for call in fake.calls]
    assert starts == [float(i) for i in range(150)]
    assert per_window(starts, 60.0) == [60, 60, 30]
    assert busiest_window(starts, 60.0) == 60
    assert now() - start == 149.5
    assert outputs == [output_for(i) for i in range(150)]
    assert {d.status for d in details} == {S.COMPLETED}


# -- tokens per minute: cost= and usage= --------------------------------------------------


@pytest.mark.looptime
async def test_tokens_used_refund_or_surcharge_the_budget_and_move_the_next_starts() -> None:
    """tpm=600 strictly paced (burst=0): a token is 0.1 s of the schedule, so each
    100-token estimate holds the next start 10 s back. Two workers, calls of 1 s:
    - "a" starts at 0 and reports 40 tokens at 1: 60 come back, "b" starts at 10 - 6 = 4;
    - "b" reports 160 at 5: 60 more are charged, "c" (due at 14) starts at 20;
    - "c" reports nothing (usage None): its estimate stands, "d" starts at 30."""
    fake = FakeGenerate(default=("ok", 1.0))
    used = {output_for("a"): 40, output_for("b"): 160, output_for("c"): None}
    executor = AsyncExecutor(
        fake,
        concurrency=2,
        limiter=LocalLimiter(tpm=600, burst=0),
        cost=lambda item: 100,
        usage=used.get,
    )
    start = now()
    outputs, _ = await executor.execute(["a", "b", "c", "d"])
    assert [(c.item, c.started - start) for c in fake.calls] == [
        ("a", 0.0),
        ("b", 4.0),
        ("c", 20.0),
        ("d", 30.0),
    ]
    assert outputs == [output_for(x) for x in "abcd"]


@pytest.mark.looptime
async def test_without_usage_every_estimate_stands() -> None:
    """The same run with no `usage=`: 100 tokens each, one start every 10 s."""
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(
        fake, concurrency=2, limiter=LocalLimiter(tpm=600, burst=0), cost=lambda item: 100
    )
    start = now()
    await executor.execute(["a", "b", "c", "d"])
    assert [c.started - start for c in fake.calls] == [0.0, 10.0, 20.0, 30.0]


@pytest.mark.looptime
async def test_an_input_costing_more_than_the_whole_budget_fails_at_once_with_the_reason() -> None:
    """Input 5000 cannot fit in tpm=1000, however long it waits: FAILED when it is
    drawn, at 0 s, never called; the others run (exit_on_error=False)."""
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(
        fake,
        exit_on_error=False,
        limiter=LocalLimiter(tpm=1000),
        cost=lambda item: item,
    )
    start = now()
    finals: dict[int, float] = {}
    details = {}
    async for index, _output, detail in executor.stream([10, 5000, 20]):
        finals[index] = now() - start
        details[index] = detail
    assert finals[1] == 0.0
    assert details[1].status is S.FAILED
    assert details[1].execution_seconds == 0.0
    [error] = details[1].exceptions
    assert type(error) is CostExceedsBudget
    assert str(error) == (
        "an attempt's estimated cost of 5000 tokens exceeds the whole budget of tpm=1000 "
        "tokens per 60 s: it could never start"
    )
    assert [c.item for c in fake.calls] == [10, 20]
    assert (details[0].status, details[2].status) == (S.COMPLETED, S.COMPLETED)


@pytest.mark.looptime
async def test_with_exit_on_error_an_input_that_can_never_fit_stops_the_run() -> None:
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(
        fake, concurrency=1, limiter=LocalLimiter(tpm=1000), cost=lambda item: item
    )
    start = now()
    _, details = await executor.execute([5000, 10, 20])
    assert now() - start == 0.0
    assert [d.status for d in details] == [S.FAILED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    assert fake.calls == []
    assert isinstance(details[0].exceptions[0], CostExceedsBudget)


# -- calls in flight ------------------------------------------------------------------------


def _one_executor_twice(fake: FakeGenerate, limiter: LocalLimiter) -> list[AsyncExecutor]:
    executor = AsyncExecutor(fake, concurrency=10, limiter=limiter)
    return [executor, executor]


def _two_executors(fake: FakeGenerate, limiter: LocalLimiter) -> list[AsyncExecutor]:
    return [AsyncExecutor(fake, concurrency=10, limiter=limiter) for _ in range(2)]


@pytest.mark.looptime
@pytest.mark.parametrize(
    "executors", [_one_executor_twice, _two_executors], ids=["one-executor", "two-executors"]
)
async def test_max_inflight_caps_concurrent_runs_together_though_each_allows_ten(
    executors: Callable[[FakeGenerate, LocalLimiter], list[AsyncExecutor]],
) -> None:
    """Two runs of six 1-s calls at once, each with room for ten, through one limiter
    of three slots: three calls at a time, so starts at 0, 1, 2, 3 s and the end at 4 s."""
    fake = FakeGenerate(default=("ok", 1.0))
    limiter = LocalLimiter(max_inflight=3)
    first, second = executors(fake, limiter)
    start = now()
    results = await asyncio.gather(
        first.execute([f"a{i}" for i in range(6)]), second.execute([f"b{i}" for i in range(6)])
    )
    assert fake.max_inflight == 3
    assert (
        sorted(c.started - start for c in fake.calls)
        == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    )
    assert now() - start == 4.0
    assert limiter.inflight == 0
    for prefix, (outputs, details) in zip("ab", results, strict=True):
        assert outputs == [output_for(f"{prefix}{i}") for i in range(6)]
        assert {d.status for d in details} == {S.COMPLETED}


@pytest.mark.looptime
async def test_concurrency_bounds_an_executors_calls_across_its_concurrent_runs() -> None:
    """Four runs of 20 one-second calls on one AsyncExecutor(concurrency=10): the
    executor's gate lets ten calls run at a time in all, not ten per run (40), so the
    80 calls take 8 s."""
    fake = FakeGenerate(default=("ok", 1.0))
    executor = AsyncExecutor(fake, concurrency=10)
    start = now()
    results = await asyncio.gather(
        *(executor.execute([(run, i) for i in range(20)]) for run in range(4))
    )
    assert fake.max_inflight == 10
    assert Counter(c.started - start for c in fake.calls) == {float(t): 10 for t in range(8)}
    assert now() - start == 8.0
    assert all({d.status for d in details} == {S.COMPLETED} for _, details in results)


# -- the provider's signals, shared through the limiter ---------------------------------------


def _quota_error(item: Any) -> RateLimitError:
    return RateLimitError(f"insufficient_quota: no credit left for {item!r}")


@pytest.mark.looptime
async def test_a_quota_stop_in_one_run_stops_another_run_sharing_the_limiter() -> None:
    """Runs A and B (one worker each) share rpm=60: starts alternate, one per second, A0
    at 0, B0 at 1, A1 at 2, B1 at 3, A2 at 4. A2 says the quota is exhausted at 4.5; B,
    waiting for its slot at 5, stops at 4.5 and its other inputs DID NOT RUN."""
    loop_start = now()
    calls: list[tuple[str, float]] = []

    async def call(item: str) -> str:
        calls.append((item, now() - loop_start))
        await asyncio.sleep(0.5)
        if item == "a2":
            raise _quota_error(item)
        return output_for(item)

    limiter = LocalLimiter(rpm=60)
    run_a = AsyncExecutor(call, concurrency=1, limiter=limiter)
    run_b = AsyncExecutor(call, concurrency=1, limiter=limiter)
    ended: dict[str, float] = {}

    async def timed(name: str, executor: AsyncExecutor) -> Any:
        result = await executor.execute([f"{name}{i}" for i in range(5)])
        ended[name] = now() - loop_start
        return result

    (_, details_a), (outputs_b, details_b) = await asyncio.gather(
        timed("a", run_a), timed("b", run_b)
    )
    assert calls == [("a0", 0.0), ("b0", 1.0), ("a1", 2.0), ("b1", 3.0), ("a2", 4.0)]
    assert limiter.stop_reason == "the provider says the quota is exhausted; retrying cannot help"
    assert [d.status for d in details_a] == [S.COMPLETED] * 2 + [S.FAILED] + [S.DID_NOT_RUN] * 2
    assert [d.status for d in details_b] == [S.COMPLETED] * 2 + [S.DID_NOT_RUN] * 3
    assert outputs_b[:2] == [output_for("b0"), output_for("b1")]
    assert ended == {"a": 4.5, "b": 4.5}


@pytest.mark.looptime
async def test_calls_the_other_run_already_started_finish_when_the_shared_limiter_stops() -> None:
    """rpm=60: A0 at 0, then B's three workers at 1, 2 and 3 s. A0 says the quota is
    exhausted at 2.5: B0 (1 to 6 s) and B1 (2 to 7 s) were admitted, so they finish and
    keep their outputs; B2, due at 3, never starts; B returns at 7."""
    loop_start = now()
    calls: list[tuple[str, float]] = []

    async def call(item: str) -> str:
        calls.append((item, now() - loop_start))
        if item == "a0":
            await asyncio.sleep(2.5)
            raise _quota_error(item)
        await asyncio.sleep(5.0)
        return output_for(item)

    limiter = LocalLimiter(rpm=60)
    run_a = AsyncExecutor(call, concurrency=1, limiter=limiter)
    run_b = AsyncExecutor(call, concurrency=3, limiter=limiter)
    _, (outputs_b, details_b) = await asyncio.gather(
        run_a.execute(["a0"]), run_b.execute([f"b{i}" for i in range(5)])
    )
    assert calls == [("a0", 0.0), ("b0", 1.0), ("b1", 2.0)]
    assert [d.status for d in details_b] == [S.COMPLETED] * 2 + [S.DID_NOT_RUN] * 3
    assert outputs_b[:2] == [output_for("b0"), output_for("b1")]
    assert now() - loop_start == 7.0


@pytest.mark.looptime
async def test_with_the_default_exit_on_error_a_quota_stop_still_lets_calls_in_flight_finish() -> (
    None
):
    """The executor's promise: on an exhausted quota, calls already admitted finish and
    keep their results, whatever exit_on_error says. Input 1 is refused at 1 s while
    input 0 (0 to 5 s) is in flight."""

    async def call(item: int) -> str:
        await asyncio.sleep(5.0 if item == 0 else 1.0)
        if item == 1:
            raise _quota_error(item)
        return output_for(item)

    outputs, details = await AsyncExecutor(call, concurrency=2).execute([0, 1, 2])
    assert [d.status for d in details] == [S.COMPLETED, S.FAILED, S.DID_NOT_RUN]
    assert outputs[0] == output_for(0)


@pytest.mark.looptime
async def test_a_retry_hint_in_one_run_holds_another_run_sharing_the_limiter() -> None:
    """A's first call is refused at 1 s with a 5-s hint. B, a separate executor (its own
    gate) with calls queued behind A's through one limiter, starts nothing until 6 s."""
    loop_start = now()
    calls: list[tuple[str, float]] = []

    async def call(item: str) -> str:
        calls.append((item, now() - loop_start))
        await asyncio.sleep(1.0)
        if item == "a0" and [c for c, _ in calls].count("a0") == 1:
            raise RateLimitError("slow down", retry_after=5.0)
        return output_for(item)

    limiter = LocalLimiter(max_inflight=1)
    run_a = AsyncExecutor(call, concurrency=1, limiter=limiter)
    run_b = AsyncExecutor(call, concurrency=1, limiter=limiter)
    (outputs_a, details_a), (outputs_b, _) = await asyncio.gather(
        run_a.execute(["a0"]), run_b.execute(["b0", "b1"])
    )
    assert calls == [("a0", 0.0), ("b0", 6.0), ("a0", 7.0), ("b1", 8.0)]
    assert details_a[0].status is S.COMPLETED_WITH_RETRIES
    assert (outputs_a, outputs_b) == (["out:a0"], ["out:b0", "out:b1"])


# -- threads --------------------------------------------------------------------------------


class WatchedLimiter(LocalLimiter):
    """A LocalLimiter that counts the acquires it was asked for (a test seam)."""

    def __init__(self, **budgets: Any) -> None:
        super().__init__(**budgets)
        self.asked = threading.Semaphore(0)

    async def acquire(self, cost: Cost = 0) -> Permit:
        self.asked.release()
        return await super().acquire(cost)


def test_a_threaded_sync_executor_keeps_to_the_limiters_in_flight_cap() -> None:
    """SyncExecutor(concurrency=3) through max_inflight=2, on real threads. Each call
    blocks until the test lets it go. Once three acquires were asked for while two calls
    hold both permits, the third cannot be in; the test then lets one call go at a time,
    and a new call comes in each time: never more than two at once, all six complete."""
    limiter = WatchedLimiter(max_inflight=2)
    lock = threading.Lock()
    running = peak = 0
    entered: list[int] = []
    came_in = threading.Semaphore(0)
    go = {i: threading.Event() for i in range(6)}

    def call(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            entered.append(item)
        came_in.release()
        assert go[item].wait(HANG_GUARD)
        with lock:
            running -= 1
        return item * 10

    executor = SyncExecutor(call, concurrency=3, limiter=limiter, termination_signal=None)
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(executor.run(list(range(6)))))
    runner.start()
    try:
        for _ in range(2):
            assert came_in.acquire(timeout=HANG_GUARD)
        for _ in range(3):
            assert limiter.asked.acquire(timeout=HANG_GUARD)
        with lock:
            assert (running, sorted(entered)) == (2, [0, 1])
        assert limiter.inflight == 2
        for step in range(6):
            with lock:
                oldest = entered[step]
            go[oldest].set()
            if step + 2 < 6:
                assert came_in.acquire(timeout=HANG_GUARD)
    finally:
        for event in go.values():
            event.set()
        runner.join(HANG_GUARD)
    assert not runner.is_alive()
    [(outputs, details)] = result
    assert peak == 2
    assert outputs == [i * 10 for i in range(6)]
    assert {d.status for d in details} == {S.COMPLETED}
    assert limiter.inflight == 0


# -- bad keywords ---------------------------------------------------------------------------

EXECUTORS = [AsyncExecutor, SyncExecutor]


async def _nothing(item: Any) -> Any:
    return item


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("keyword", ["cost", "usage"])
def test_cost_or_usage_without_a_limiter_is_refused(executor: type[Any], keyword: str) -> None:
    message = (
        "cost= and usage= feed a token budget: pass limiter=LocalLimiter(tpm=...) "
        "(or a RedisLimiter) with them"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        executor(_nothing, **{keyword: len})


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: e.__name__)
def test_a_limiter_that_is_not_one_is_refused_naming_what_it_lacks(executor: type[Any]) -> None:
    class HalfLimiter:
        async def acquire(self, cost: int = 0) -> None: ...

    message = (
        "limiter must be an evalexec.limits.Limiter (a LocalLimiter or RedisLimiter), "
        "got {}, which has no {}"
    )
    with pytest.raises(
        TypeError,
        match=f"^{re.escape(message.format('int', 'acquire, release, report_rate_limit'))}$",
    ):
        executor(_nothing, limiter=60)
    with pytest.raises(
        TypeError,
        match=f"^{re.escape(message.format('HalfLimiter', 'release, report_rate_limit'))}$",
    ):
        executor(_nothing, limiter=HalfLimiter())


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("keyword", ["cost", "usage"])
def test_a_cost_or_usage_that_is_not_a_function_is_refused(
    executor: type[Any], keyword: str
) -> None:
    message = f"{keyword} must be a function of one input, got int"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        executor(_nothing, limiter=LocalLimiter(tpm=100), **{keyword: 100})
