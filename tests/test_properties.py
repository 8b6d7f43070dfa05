"""Property tests: random fault schedules against an oracle (SPEC §2 and §5).

A fake provider takes, for each (input, attempt), one step from a schedule that
hypothesis draws: a success (at once or after a delay), a plain error, a transient
error, a rate limit (with or without a retry hint), a non-retryable
`PhoenixException`, or an attempt slower than the timeout. From the schedule alone,
`expect` computes each input's final status, its number of attempts and the
exceptions it must log. Every example checks the run against it: outputs aligned
with inputs, statuses, attempts, the stop at the first FAILED, and what the run
leaves behind (tasks, signal handler, progress bar).

AsyncExecutor runs on a fresh looptime loop per example (virtual time: a run of
thousands of simulated seconds takes milliseconds), through `execute()` or through
`stream()` read at once or slowly; SyncExecutor on an injected clock and sleep.
Profiles: ``ci`` (the default) and ``--hypothesis-profile=long``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalexec import Backoff
from evalexec.executors import (
    AsyncExecutor,
    ExecutionDetails,
    ExecutionStatus,
    SyncExecutor,
    _unset,
)
from tests.fakes import (
    ERROR,
    EXCEPTION_TYPES,
    HINT_SECONDS,
    HINTED,
    OK,
    PHOENIX,
    RETRIED_AS_ERRORS,
    SLOW,
    Item,
    Plan,
    ScheduledCall,
    ScheduledProvider,
    ScheduledSyncProvider,
    TaggedTime,
    assert_cleaned_up,
    other_tasks,
    output_for,
    plans,
    watched_run,
)
from tests.vtime import virtual_time_loop

S = ExecutionStatus
FINAL = (S.COMPLETED, S.COMPLETED_WITH_RETRIES, S.FAILED)

TIMEOUTS = (1.0, 2.5, None)
HANG_GUARD_SECONDS = 10.0**7
FALLBACK = object()


# -- the oracle ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    status: ExecutionStatus
    attempts: int
    logged: int
    """How many exceptions the input logs (one per attempt that did not end it well,
    plus the one that failed it)."""


def expect(plan: Plan, index: int, max_retries: int, *, timeouts: bool) -> Expected:
    """The final status, attempts and logged exceptions of one input, from its row.

    Errors (plain, transient, rate limit) are retried while fewer than `max_retries`
    were retried before; a `PhoenixException` fails at once; timeouts have their own
    budget and fail the input when there have been more than `max_retries` of them.
    """
    errors = 0
    slow = 0
    for attempt in itertools.count():
        kind = plan.step(index, attempt).kind
        logged = attempt + 1
        if kind == OK:
            status = S.COMPLETED_WITH_RETRIES if attempt else S.COMPLETED
            return Expected(status, attempt + 1, attempt)
        if kind == PHOENIX:
            return Expected(S.FAILED, attempt + 1, logged)
        if kind == SLOW:
            assert timeouts, "the sync executor has no timeouts"
            slow += 1
            if slow > max_retries:
                return Expected(S.FAILED, attempt + 1, logged)
            continue
        assert kind in RETRIED_AS_ERRORS
        if errors >= max_retries:
            return Expected(S.FAILED, attempt + 1, logged)
        errors += 1
    raise AssertionError("unreachable")


# -- strategies ----------------------------------------------------------------------------


backoffs = st.sampled_from((None, Backoff(), Backoff(initial=0.25, multiplier=3.0, jitter=0.0)))
fallbacks = st.sampled_from((_unset, FALLBACK, None))
bar_formats = st.sampled_from((None, "{l_bar}{bar}{r_bar}"))


# -- checks shared by both executors -------------------------------------------------------


def check_logged(details: ExecutionDetails, calls: list[ScheduledCall]) -> None:
    """Each logged exception belongs, in order, to one call of this input."""
    assert len(details.exceptions) <= len(calls)
    for exc, call in zip(details.exceptions, calls, strict=False):
        kind = call.step.kind
        assert isinstance(exc, EXCEPTION_TYPES[kind]), (exc, call)
        if kind == SLOW:
            assert call.outcome == "cancelled", call
        else:
            assert call.outcome == "raised", call
            assert exc is call.exception


def check_input(
    index: int,
    output: Any,
    details: ExecutionDetails,
    calls: list[ScheduledCall],
    expected: Expected,
    fallback: Any,
    *,
    may_stop_early: bool,
) -> None:
    check_logged(details, calls)
    logged = len(details.exceptions)
    status = details.status
    if status in FINAL:
        assert status == expected.status
        assert len(calls) == expected.attempts
        assert logged == expected.logged
        if status is S.FAILED:
            assert output is fallback
        else:
            assert output == output_for(index)
            assert calls[-1].outcome == "returned"
            # COMPLETED_WITH_RETRIES iff exceptions were logged before the success
            assert (status is S.COMPLETED_WITH_RETRIES) == (logged > 0)
        return
    assert status is S.DID_NOT_RUN
    assert may_stop_early, "an input did not run although nothing stopped the run"
    assert output is fallback
    # Never a finished attempt whose result was dropped: at most the last attempt,
    # cancelled by the stop, went unlogged.
    assert len(calls) in (logged, logged + 1)
    if len(calls) == logged + 1:
        assert calls[-1].outcome == "cancelled"
    assert logged < expected.logged or (logged == expected.logged and expected.status != S.FAILED)


# -- AsyncExecutor -------------------------------------------------------------------------


@dataclass(frozen=True)
class AsyncSettings:
    concurrency: int
    max_retries: int
    exit_on_error: bool
    dynamic: bool
    timeout: float | None
    backoff: Backoff | None
    fallback: Any
    bar_format: str | None
    initial_target: int | None
    entry: str
    """How the run is driven: `execute`, or `stream` read at once or slowly."""


STREAM_READ_DELAY = 0.3

async_settings = st.builds(
    AsyncSettings,
    concurrency=st.integers(1, 8),
    max_retries=st.integers(0, 5),
    exit_on_error=st.booleans(),
    dynamic=st.booleans(),
    timeout=st.sampled_from(TIMEOUTS),
    backoff=backoffs,
    fallback=fallbacks,
    bar_format=bar_formats,
    initial_target=st.none() | st.integers(1, 8),
    entry=st.sampled_from(("execute", "execute", "stream", "slowly read stream")),
)


@dataclass
class AsyncResult:
    outputs: list[Any]
    details: list[ExecutionDetails | None]
    """None for an input a stream did not yield (it never reached a final status)."""
    returned_at: float
    pending: list[asyncio.Task[Any]]
    late_calls: int


def run_async_example(
    config: AsyncSettings, size: int, plan: Plan
) -> tuple[AsyncResult, ScheduledProvider]:
    timeout = 60.0 if config.timeout is None else config.timeout
    provider = ScheduledProvider(plan, slow_seconds=3 * timeout)
    executor = AsyncExecutor(
        provider,
        concurrency=config.concurrency,
        tqdm_bar_format=config.bar_format,
        max_retries=config.max_retries,
        exit_on_error=config.exit_on_error,
        fallback_return_value=config.fallback,
        timeout=config.timeout,
        enable_dynamic_concurrency=config.dynamic,
        dynamic_initial_target=(
            None
            if config.initial_target is None
            else min(config.initial_target, config.concurrency)
        ),
        backoff=config.backoff,
    )
    inputs = [Item(i) for i in range(size)]

    async def read_stream() -> tuple[list[Any], list[ExecutionDetails | None]]:
        outputs: list[Any] = [config.fallback] * size
        details: list[ExecutionDetails | None] = [None] * size
        async for index, output, record in executor.stream(inputs):
            assert details[index] is None, f"input {index} was yielded twice"
            outputs[index], details[index] = output, record
            if config.entry == "slowly read stream":
                await asyncio.sleep(STREAM_READ_DELAY)
        return outputs, details

    async def main() -> AsyncResult:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HANG_GUARD_SECONDS):
                if config.entry == "execute":
                    outputs, details = await executor.execute(inputs)
                else:
                    outputs, details = await read_stream()
        except TimeoutError:
            raise AssertionError(f"the run hung ({HANG_GUARD_SECONDS} virtual seconds)") from None
        returned_at = loop.time()
        pending = other_tasks()
        calls_at_return = len(provider.all_calls())
        await asyncio.sleep(1000.0)  # nothing may wake up after the run returned
        late = len(provider.all_calls()) - calls_at_return
        return AsyncResult(list(outputs), list(details), returned_at, pending, late)

    loop = virtual_time_loop()
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return result, provider


def check_async_run(
    config: AsyncSettings, size: int, plan: Plan, result: AsyncResult, provider: ScheduledProvider
) -> None:
    outputs, details = result.outputs, result.details
    assert len(outputs) == len(details) == size
    assert result.pending == []
    assert result.late_calls == 0
    assert provider.inflight == 0
    assert provider.max_inflight <= config.concurrency
    calls = provider.all_calls()
    assert all(call.outcome is not None for call in calls)

    failed = [i for i, d in enumerate(details) if d is not None and d.status is S.FAILED]
    stopped_early = config.exit_on_error and bool(failed)
    for index, record in enumerate(details):
        row = provider.calls.get(index, [])
        expected = expect(plan, index, config.max_retries, timeouts=True)
        if record is None:
            # Not yielded by the stream: it did not reach a final status.
            assert stopped_early, f"the stream never yielded input {index}"
            assert outputs[index] is config.fallback
            assert all(call.outcome != "returned" for call in row)
            assert len(row) <= expected.attempts
            if len(row) == expected.attempts:
                assert row[-1].outcome == "cancelled"
            continue
        check_input(
            index,
            outputs[index],
            record,
            row,
            expected,
            config.fallback,
            may_stop_early=stopped_early,
        )
        spent = sum(call.ended - call.started for call in row if call.ended is not None)
        assert math.isclose(record.execution_seconds, spent, abs_tol=1e-6)
    # A reader that takes its time may finish after the last call ended.
    slow_reader = config.entry == "slowly read stream"

    if not stopped_early:
        # Everything ran to its end; only attempts slower than the timeout were cut.
        assert all(call.outcome != "cancelled" or call.step.kind == SLOW for call in calls)
        last_end = max((call.ended for call in calls if call.ended is not None), default=0.0)
        assert result.returned_at >= last_end if slow_reader else result.returned_at == last_end
        return

    # exit_on_error: the first FAILED stopped the run. No attempt started after it,
    # the attempts in flight were cancelled at once, and the run returned right then.
    first_failure = min((provider.calls[i][-1] for i in failed), key=lambda c: c.ended_seq or 0)
    assert first_failure.ended_seq is not None
    assert all(call.started_seq < first_failure.ended_seq for call in calls)
    for call in calls:
        if call.outcome == "cancelled" and call.step.kind != SLOW:
            assert call.ended == first_failure.ended
    if slow_reader:
        assert result.returned_at >= first_failure.ended
    else:
        assert result.returned_at == first_failure.ended


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(config=async_settings, sized_plan=plans(timeouts=True))
def test_async_executor_matches_the_oracle_for_any_fault_schedule(
    config: AsyncSettings, sized_plan: tuple[int, Plan]
) -> None:
    size, plan = sized_plan
    with watched_run() as leftovers:
        result, provider = run_async_example(config, size, plan)
        assert_cleaned_up(leftovers, config.bar_format)
    check_async_run(config, size, plan, result, provider)


# -- SyncExecutor --------------------------------------------------------------------------


def expected_sleeps(
    plan: Plan, index: int, expected: Expected, backoff: Backoff | None
) -> list[tuple[float, float]]:
    """The (shortest, longest) wait before each retry of one input, in order.

    Plain errors are retried at once; a retry hint is the wait; other transient
    errors and rate limits wait the backoff (jittered down by up to `jitter`).
    """
    bounds: list[tuple[float, float]] = []
    for errors_before in range(expected.attempts - 1):
        kind = plan.step(index, errors_before).kind
        hint = HINT_SECONDS if kind == HINTED else None
        if kind == ERROR:
            continue
        if hint is not None:
            low = high = hint
        elif backoff is None:
            low = high = 0.0
        else:
            base = min(backoff.maximum, backoff.initial * backoff.multiplier**errors_before)
            low, high = base * (1 - backoff.jitter), base
        if high > 0:
            bounds.append((low, high))
    return bounds


@dataclass(frozen=True)
class SyncSettings:
    max_retries: int
    exit_on_error: bool
    backoff: Backoff | None
    fallback: Any
    bar_format: str | None


sync_settings = st.builds(
    SyncSettings,
    max_retries=st.integers(0, 5),
    exit_on_error=st.booleans(),
    backoff=backoffs,
    fallback=fallbacks,
    bar_format=bar_formats,
)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(config=sync_settings, sized_plan=plans(timeouts=False))
def test_sync_executor_matches_the_oracle_for_any_fault_schedule(
    config: SyncSettings, sized_plan: tuple[int, Plan]
) -> None:
    size, plan = sized_plan
    fake_time = TaggedTime()
    provider = ScheduledSyncProvider(plan, fake_time)
    executor = SyncExecutor(
        provider,
        tqdm_bar_format=config.bar_format,
        max_retries=config.max_retries,
        exit_on_error=config.exit_on_error,
        fallback_return_value=config.fallback,
        backoff=config.backoff,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    with watched_run() as leftovers:
        outputs, details = executor.run([Item(i) for i in range(size)])
        assert_cleaned_up(leftovers, config.bar_format)
    assert len(outputs) == len(details) == size

    # One input after another: the oracle is exact, including where the run stops.
    stop = size
    for index in range(size):
        row = provider.calls.get(index, [])
        if index > stop:
            assert details[index].status is S.DID_NOT_RUN
            assert outputs[index] is config.fallback
            assert row == []
            assert details[index].exceptions == []
            continue
        expected = expect(plan, index, config.max_retries, timeouts=False)
        check_input(
            index,
            outputs[index],
            details[index],
            row,
            expected,
            config.fallback,
            may_stop_early=False,
        )
        spent = sum(call.step.delay for call in row)
        assert math.isclose(details[index].execution_seconds, spent, abs_tol=1e-9)
        sleeps = [seconds for owner, seconds in fake_time.tagged if owner == index]
        bounds = expected_sleeps(plan, index, expected, config.backoff)
        assert len(sleeps) == len(bounds)
        assert all(low <= s <= high for s, (low, high) in zip(sleeps, bounds, strict=True))
        if config.exit_on_error and expected.status is S.FAILED:
            stop = index
