"""Property tests: random fault schedules against an oracle (SPEC §2 and §5).

A fake provider takes, for each (input, attempt), one step from a schedule that
hypothesis draws: a success (at once or after a delay), a plain error, a transient
error, a rate limit (with or without a retry hint), a non-retryable
`PhoenixException`, or an attempt slower than the timeout. From the schedule alone,
`expect` computes each input's final status, its number of attempts and the
exceptions it must log. Every example checks the run against it: outputs aligned
with inputs, statuses, attempts, the stop at the first FAILED, and what the run
leaves behind (tasks, signal handler, progress bar).

The functions are also the ones careless users write: they change their input
(``row["prompt"] = ...``), catch BaseException — the executor's own cancellation on a
timeout, a deadline, ``exit_on_error`` or ``cancel()`` included — and return
``"ERROR"``, run an executor of their own (nested runs), or share one executor
between two runs (two ``execute()`` on one loop, or two threads). None of it may turn
a stop into a success, attach an output to the wrong input, or store a swallowed
stop in a checkpoint.

AsyncExecutor runs on a fresh looptime loop per example (virtual time: a run of
thousands of simulated seconds takes milliseconds), through `execute()` or through
`stream()` read at once or slowly; the sequential SyncExecutor on an injected clock and
sleep; the threaded SyncExecutor on real threads, with calls that end at once (so only
outcomes are checked, never timing). Profiles: ``ci`` (the default) and
``--hypothesis-profile=long``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
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
    DELAYS,
    ERROR,
    EXCEPTION_TYPES,
    HINT_SECONDS,
    HINTED,
    OK,
    PHOENIX,
    RATE_LIMIT,
    RETRIED_AS_ERRORS,
    SLOW,
    SWALLOWED,
    TRANSIENT,
    CarelessProvider,
    Item,
    Key,
    Leftovers,
    Plan,
    ScheduledCall,
    ScheduledSyncProvider,
    Step,
    TaggedTime,
    ThreadSafeProvider,
    other_tasks,
    output_for,
    plans,
    small_plans,
    watched_run,
)
from tests.vtime import virtual_time_loop

S = ExecutionStatus
FINAL = (S.COMPLETED, S.COMPLETED_WITH_RETRIES, S.FAILED)
COMPLETED = (S.COMPLETED, S.COMPLETED_WITH_RETRIES)

ALL_KINDS = (OK, ERROR, TRANSIENT, RATE_LIMIT, HINTED, PHOENIX, SLOW)
SYNC_KINDS = (OK, ERROR, TRANSIENT, RATE_LIMIT, HINTED, PHOENIX)
TIMEOUTS = (1.0, 2.5, None)
HANG_GUARD_SECONDS = 10.0**7
FALLBACK = object()
# Moments of a stop from outside (a deadline, `cancel()`): exact in binary, so that the
# loop's microsecond steps land on them, and apart from the ends of calls (sums of the
# delays, timeouts and hints drawn), so that which came first is never a tie.
STOP_TIMES = (0.015625, 0.703125, 1.421875, 3.140625, 7.390625)
# Input indices of a second run that shares the executor (its rows of the plan).
SECOND_RUN = 10_000


def light(share: float = 1.0) -> settings:
    """The settings of these tests: examples can be large and slow to draw; `share` of
    the profile's examples (200 in ``ci``) for the costlier ones."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    profile = settings.default
    assert profile is not None  # conftest loads one
    examples = max(1, round(profile.max_examples * share))
    return settings(suppress_health_check=checks, max_examples=examples)


# Threads are real: their examples are fewer (each starts threads and a loop): 30 in ci.
THREADED = 0.15


def assert_cleaned_up(leftovers: Leftovers, bar_format: str | None, *, runs: int = 1) -> None:
    """`fakes.assert_cleaned_up` for `runs` runs in one watched example."""
    assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert len(leftovers.bars) == (0 if bar_format is None else runs)
    assert all(bar.close_calls >= 1 and bar.disable for bar in leftovers.bars)


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
    abandoned: tuple[str, ...] = ("cancelled",),
) -> None:
    """One input against the oracle. `abandoned`: the outcomes an attempt cut by a stop
    may have had at the provider (a task is cancelled; a thread runs to its end)."""
    check_logged(details, calls)
    logged = len(details.exceptions)
    status = details.status
    assert output != SWALLOWED, "a stop the function swallowed came out as its output"
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
    # cut by the stop, went unlogged.
    assert len(calls) in (logged, logged + 1)
    if len(calls) == logged + 1:
        assert calls[-1].outcome in abandoned
    assert logged < expected.logged or (logged == expected.logged and expected.status != S.FAILED)


def shifted(plan: Plan, other: Plan, offset: int) -> Plan:
    """One plan for two runs: `other`'s rows moved to inputs ``offset + i``."""
    rows = dict(plan.rows)
    rows.update({offset + index: row for index, row in other.rows.items()})
    return Plan(rows, plan.default)


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
    swallow: bool
    """The function catches BaseException (our cancellation too) and returns "ERROR"."""
    deadline: float | None
    cancel_at: float | None
    """When `executor.cancel()` is called (loop time), or never."""

    @property
    def stop_time(self) -> float | None:
        """The first stop from outside the run, if any (both runs start at 0)."""
        times = [t for t in (self.deadline, self.cancel_at) if t is not None]
        return min(times, default=None)


STREAM_READ_DELAY = 0.3

stop_times = st.one_of(st.none(), st.none(), st.sampled_from(STOP_TIMES))

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
    swallow=st.booleans(),
    deadline=stop_times,
    cancel_at=stop_times,
)


def async_executor(
    config: AsyncSettings, function: Callable[[Any], Any], checkpoint: Path | None = None
) -> AsyncExecutor:
    return AsyncExecutor(
        function,
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
        deadline=config.deadline,
        checkpoint=checkpoint,
    )


def careless_provider(
    config: AsyncSettings, plan: Plan, *, mutate: bool = False
) -> CarelessProvider:
    timeout = 60.0 if config.timeout is None else config.timeout
    return CarelessProvider(plan, slow_seconds=3 * timeout, swallow=config.swallow, mutate=mutate)


@dataclass
class RunResult:
    outputs: list[Any]
    details: list[ExecutionDetails | None]
    """None for an input a stream did not yield (it never reached a final status)."""
    returned_at: float


@dataclass
class AsyncExample:
    runs: list[RunResult]
    """One per list of inputs, run side by side on the one executor."""
    pending: list[asyncio.Task[Any]]
    late_calls: int


def run_async_example(
    config: AsyncSettings,
    executor: AsyncExecutor,
    provider: CarelessProvider | Nest,
    input_lists: Sequence[Sequence[Any]],
) -> AsyncExample:
    """Run each list of inputs on `executor`, side by side, on a fresh virtual loop."""

    async def read_stream(inputs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        outputs: list[Any] = [config.fallback] * len(inputs)
        details: list[ExecutionDetails | None] = [None] * len(inputs)
        async for index, output, record in executor.stream(inputs):
            assert details[index] is None, f"input {index} was yielded twice"
            outputs[index], details[index] = output, record
            if config.entry == "slowly read stream":
                await asyncio.sleep(STREAM_READ_DELAY)
        return outputs, details

    async def one_run(inputs: Sequence[Any]) -> RunResult:
        if config.entry == "execute":
            outputs, details = await executor.execute(inputs)
        else:
            outputs, details = await read_stream(inputs)
        return RunResult(list(outputs), list(details), asyncio.get_running_loop().time())

    async def main() -> AsyncExample:
        loop = asyncio.get_running_loop()
        cancel = None
        if config.cancel_at is not None:
            cancel = loop.call_at(config.cancel_at, executor.cancel)
        try:
            async with asyncio.timeout(HANG_GUARD_SECONDS):
                runs = await asyncio.gather(*(one_run(inputs) for inputs in input_lists))
        except TimeoutError:
            raise AssertionError(f"the run hung ({HANG_GUARD_SECONDS} virtual seconds)") from None
        if cancel is not None:
            cancel.cancel()
        pending = other_tasks()
        calls_at_return = len(provider.all_calls())
        await asyncio.sleep(1000.0)  # nothing may wake up after the run returned
        late = len(provider.all_calls()) - calls_at_return
        return AsyncExample(list(runs), pending, late)

    loop = virtual_time_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def check_async_run(
    config: AsyncSettings,
    plan: Plan,
    indices: Sequence[int],
    run: RunResult,
    calls: dict[int, list[ScheduledCall]],
) -> None:
    """One run against the oracle; `indices` are the plan rows of its inputs, in order."""
    outputs, details = run.outputs, run.details
    assert len(outputs) == len(details) == len(indices)
    rows = [calls.get(index, []) for index in indices]
    run_calls = [call for row in rows for call in row]
    assert all(call.outcome is not None for call in run_calls)

    failed = [pos for pos, d in enumerate(details) if d is not None and d.status is S.FAILED]
    first_failure = None
    exit_at = math.inf
    if config.exit_on_error and failed:
        first_failure = min((rows[pos][-1] for pos in failed), key=lambda c: c.ended_seq or 0)
        assert first_failure.ended is not None
        exit_at = first_failure.ended
    # A stop from outside happened if the run was still going when it came.
    stop_time = config.stop_time
    time_at = math.inf if stop_time is None or run.returned_at < stop_time else stop_time
    stop_at = min(exit_at, time_at)
    stopped_early = stop_at < math.inf
    event(
        "stopped by "
        + (
            "nothing"
            if not stopped_early
            else "a failure"
            if exit_at < time_at
            else "deadline or cancel()"
        )
    )
    if config.swallow and any(call.outcome == "cancelled" for call in run_calls):
        event("the function swallowed a cancellation")

    for pos, record in enumerate(details):
        index, row = indices[pos], rows[pos]
        expected = expect(plan, index, config.max_retries, timeouts=True)
        if record is None:
            # Not yielded by the stream: it did not reach a final status.
            assert stopped_early, f"the stream never yielded input {index}"
            assert outputs[pos] is config.fallback
            assert all(call.outcome != "returned" for call in row)
            assert len(row) <= expected.attempts
            if len(row) == expected.attempts:
                assert row[-1].outcome == "cancelled"
            continue
        check_input(
            index,
            outputs[pos],
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
        assert all(call.outcome != "cancelled" or call.step.kind == SLOW for call in run_calls)
        last_end = max((call.ended for call in run_calls if call.ended is not None), default=0.0)
        assert run.returned_at >= last_end if slow_reader else run.returned_at == last_end
        return

    # The first FAILED (exit_on_error), a deadline or cancel() stopped the run: no
    # attempt started after it, the attempts in flight were cancelled at once, and the
    # run returned right then.
    if first_failure is not None and exit_at < time_at:
        assert first_failure.ended_seq is not None
        assert all(call.started_seq < first_failure.ended_seq for call in run_calls)
    assert all(call.started <= stop_at for call in run_calls)
    for call in run_calls:
        if call.outcome == "cancelled" and call.step.kind != SLOW:
            assert call.ended == stop_at
    if slow_reader:
        assert run.returned_at >= stop_at
    else:
        assert run.returned_at == stop_at


def check_example(config: AsyncSettings, example: AsyncExample, provider: CarelessProvider) -> None:
    assert example.pending == []
    assert example.late_calls == 0
    assert provider.inflight == 0
    assert provider.max_inflight <= config.concurrency


@light()
@given(config=async_settings, sized_plan=plans(timeouts=True))
def test_async_executor_matches_the_oracle_for_any_fault_schedule(
    config: AsyncSettings, sized_plan: tuple[int, Plan]
) -> None:
    """Whether or not the function swallows our cancellation, and whatever stops the run."""
    size, plan = sized_plan
    provider = careless_provider(config, plan)
    with watched_run() as leftovers:
        example = run_async_example(
            config, async_executor(config, provider), provider, [[Item(i) for i in range(size)]]
        )
        assert_cleaned_up(leftovers, config.bar_format)
    check_example(config, example, provider)
    check_async_run(config, plan, range(size), example.runs[0], provider.calls)


@light(0.5)
@given(
    config=async_settings,
    first=plans(timeouts=True),
    second=plans(timeouts=True),
)
def test_two_runs_sharing_an_async_executor_each_match_the_oracle_within_one_gate(
    config: AsyncSettings, first: tuple[int, Plan], second: tuple[int, Plan]
) -> None:
    """Two `execute()` of one executor on one loop share its gate: together they never
    have more than `concurrency` calls in flight, and each run's results are its own
    schedule's — the other's stop (its first FAILED) takes nothing from it."""
    (size_a, plan_a), (size_b, plan_b) = first, second
    plan = shifted(plan_a, plan_b, SECOND_RUN)
    provider = careless_provider(config, plan)
    indices_a = list(range(size_a))
    indices_b = [SECOND_RUN + i for i in range(size_b)]
    with watched_run() as leftovers:
        example = run_async_example(
            config,
            async_executor(config, provider),
            provider,
            [[Item(i) for i in indices_a], [Item(i) for i in indices_b]],
        )
        assert_cleaned_up(leftovers, config.bar_format, runs=2)
    check_example(config, example, provider)
    check_async_run(config, plan, indices_a, example.runs[0], provider.calls)
    check_async_run(config, plan, indices_b, example.runs[1], provider.calls)


# -- nested runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NestedSettings:
    outer: AsyncSettings
    """The outer executor (driven through `execute`, no stop from outside)."""
    inner: AsyncSettings
    """The executor each outer attempt runs its inner inputs on."""
    shared_inner: bool
    """One inner executor for every outer attempt, or a new one for each."""
    swallow: bool
    """The outer function catches BaseException around its inner run, returning "ERROR"."""


def nested_settings(
    timeouts: Sequence[float | None], *, stops: bool
) -> st.SearchStrategy[AsyncSettings]:
    return st.builds(
        AsyncSettings,
        concurrency=st.integers(1, 4),
        max_retries=st.integers(0, 3),
        exit_on_error=st.booleans(),
        dynamic=st.booleans(),
        timeout=st.sampled_from(tuple(timeouts)),
        backoff=st.sampled_from((None, Backoff(initial=0.25, multiplier=3.0, jitter=0.0))),
        fallback=fallbacks,
        bar_format=st.none(),
        initial_target=st.none(),
        entry=st.just("execute"),
        swallow=st.booleans(),
        deadline=stop_times if stops else st.none(),
        cancel_at=stop_times if stops else st.none(),
    )


@dataclass
class InnerRun:
    """One outer attempt: its inner run's provider, and what the inner run gave back."""

    provider: CarelessProvider
    returned: tuple[list[Any], list[ExecutionDetails]] | None = None
    raised: BaseException | None = None


@dataclass
class Nest:
    """The outer function: each attempt runs the outer input's inner plan on an inner
    executor, and returns the inner run's outputs."""

    config: NestedSettings
    inner_plans: dict[int, tuple[int, Plan]]
    runs: dict[int, list[InnerRun]] = field(default_factory=dict)
    providers: dict[int, CarelessProvider] = field(default_factory=dict)
    shared: AsyncExecutor | None = None

    def __post_init__(self) -> None:
        if self.config.shared_inner:
            self.shared = async_executor(self.config.inner, self.leaf)

    def all_calls(self) -> list[ScheduledCall]:
        return [call for provider in self.providers.values() for call in provider.all_calls()]

    async def leaf(self, key: Key) -> str:
        return await self.providers[key.run](Item(key.index))

    async def __call__(self, item: Item) -> list[Any] | str:
        size, plan = self.inner_plans[item.index]
        run_id = len(self.providers)
        provider = self.providers[run_id] = careless_provider(self.config.inner, plan)
        record = InnerRun(provider)
        self.runs.setdefault(item.index, []).append(record)
        executor = self.shared or async_executor(self.config.inner, self.leaf)
        try:
            outputs, details = await executor.execute([Key(run_id, j) for j in range(size)])
        except BaseException as exc:
            record.raised = exc
            if self.config.swallow:
                return SWALLOWED
            raise
        record.returned = (outputs, details)
        return outputs


def check_inner_run(config: AsyncSettings, plan: Plan, run: InnerRun) -> None:
    """An inner run that returned: every input per the inner oracle, stopped only by
    its own first FAILED."""
    assert run.returned is not None
    outputs, details = run.returned
    calls = run.provider.calls
    stopped_early = config.exit_on_error and any(d.status is S.FAILED for d in details)
    for index, (output, record) in enumerate(zip(outputs, details, strict=True)):
        expected = expect(plan, index, config.max_retries, timeouts=True)
        check_input(
            index,
            output,
            record,
            calls.get(index, []),
            expected,
            config.fallback,
            may_stop_early=stopped_early,
        )
    assert run.provider.inflight == 0


@light(0.5)
@given(
    config=st.builds(
        NestedSettings,
        outer=nested_settings((1.5, 2.5, None), stops=True),
        inner=nested_settings(TIMEOUTS, stops=False),
        shared_inner=st.booleans(),
        swallow=st.booleans(),
    ),
    inner_plans=st.lists(small_plans(kinds=ALL_KINDS, max_size=6), min_size=1, max_size=5),
)
def test_an_outer_input_completes_with_its_inner_results_only_when_its_inner_run_completed(
    config: NestedSettings, inner_plans: list[tuple[int, Plan]]
) -> None:
    """AsyncExecutor inside AsyncExecutor's function: an outer attempt cut by its
    timeout or by the outer run's stop cancels its inner run (whose functions may
    swallow that too), and is a timeout or DID NOT RUN, never a COMPLETED with the
    inner run's partial (or "ERROR") results."""
    outer = config.outer
    nest = Nest(config, dict(enumerate(inner_plans)))
    size = len(inner_plans)
    with watched_run() as leftovers:
        example = run_async_example(
            outer, async_executor(outer, nest), nest, [[Item(i) for i in range(size)]]
        )
        assert_cleaned_up(leftovers, None)
    assert example.pending == []
    assert example.late_calls == 0
    outer_run = example.runs[0]
    outputs = outer_run.outputs
    details = [d for d in outer_run.details if d is not None]  # execute() gives every input's
    assert len(details) == size

    stop_time = outer.stop_time
    stopped_early = (outer.exit_on_error and any(d.status is S.FAILED for d in details)) or (
        stop_time is not None and outer_run.returned_at >= stop_time
    )
    event(f"outer statuses: {sorted({d.status.value for d in details})}")
    if any(run.returned is None for runs in nest.runs.values() for run in runs):
        event("an inner run was cut from outside")
    for index, (output, record) in enumerate(zip(outputs, details, strict=True)):
        runs = nest.runs.get(index, [])
        inner_plan = inner_plans[index][1]
        for run in runs:
            if run.returned is None:
                # Cut from outside: the inner run did not return partial results.
                assert isinstance(run.raised, asyncio.CancelledError), run.raised
                assert run.provider.inflight == 0
            else:
                check_inner_run(config.inner, inner_plan, run)
        # The outer function's only failures are timeouts (of itself or of the nest).
        assert all(isinstance(exc, TimeoutError) for exc in record.exceptions)
        if record.status in COMPLETED:
            last = runs[-1]
            assert last.returned is not None, "COMPLETED without its inner run completing"
            assert output is last.returned[0]
            assert len(record.exceptions) == len(runs) - 1
            assert (record.status is S.COMPLETED_WITH_RETRIES) == (len(runs) > 1)
        elif record.status is S.FAILED:
            assert output is outer.fallback
            assert len(runs) == len(record.exceptions) == outer.max_retries + 1
        else:
            assert record.status is S.DID_NOT_RUN
            assert stopped_early, "an outer input did not run although nothing stopped it"
            assert output is outer.fallback
            assert len(runs) - len(record.exceptions) in (0, 1)


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


# -- SyncExecutor on threads ---------------------------------------------------------------

# Threads are real: no retry hint (its pause would be a real one), no backoff, calls that
# end at once. Timing is not checked, only outcomes.
THREAD_KINDS = (OK, ERROR, TRANSIENT, RATE_LIMIT, PHOENIX)


@dataclass(frozen=True)
class ThreadedSettings:
    concurrency: int
    max_retries: int
    exit_on_error: bool
    dynamic: bool
    fallback: Any
    bar_format: str | None


threaded_settings = st.builds(
    ThreadedSettings,
    concurrency=st.integers(2, 4),
    max_retries=st.integers(0, 5),
    exit_on_error=st.booleans(),
    dynamic=st.booleans(),
    fallback=fallbacks,
    bar_format=bar_formats,
)
threaded_plans = small_plans(kinds=THREAD_KINDS, max_size=40, delays=(0.0,))


def threaded_executor(
    config: ThreadedSettings, function: Callable[[Any], Any], checkpoint: Path | None = None
) -> SyncExecutor:
    return SyncExecutor(
        function,
        tqdm_bar_format=config.bar_format,
        max_retries=config.max_retries,
        exit_on_error=config.exit_on_error,
        fallback_return_value=config.fallback,
        concurrency=config.concurrency,
        enable_dynamic_concurrency=config.dynamic,
        backoff=None,
        checkpoint=checkpoint,
    )


def check_threaded_run(
    config: ThreadedSettings,
    plan: Plan,
    indices: Sequence[int],
    outputs: list[Any],
    details: list[ExecutionDetails],
    provider: ThreadSafeProvider,
) -> None:
    """One threaded run against the oracle. An attempt in flight when the run stopped
    was abandoned on its thread, which ran it to its end: whatever it gave is dropped."""
    assert provider.wait_idle(), "an abandoned call never ended"
    assert len(outputs) == len(details) == len(indices)
    stopped_early = config.exit_on_error and any(d.status is S.FAILED for d in details)
    event(f"threads, stopped early: {stopped_early}")
    for pos, index in enumerate(indices):
        check_input(
            index,
            outputs[pos],
            details[pos],
            provider.calls.get(index, []),
            expect(plan, index, config.max_retries, timeouts=False),
            config.fallback,
            may_stop_early=stopped_early,
            abandoned=("returned", "raised"),
        )
    group = indices[0] // provider.group if indices else 0
    assert provider.max_inflight[group] <= config.concurrency


@light(THREADED)
@given(config=threaded_settings, sized_plan=threaded_plans)
def test_threaded_sync_executor_matches_the_oracle_for_any_fault_schedule(
    config: ThreadedSettings, sized_plan: tuple[int, Plan]
) -> None:
    size, plan = sized_plan
    provider = ThreadSafeProvider(plan)
    with watched_run() as leftovers:
        outputs, details = threaded_executor(config, provider).run([Item(i) for i in range(size)])
        assert_cleaned_up(leftovers, config.bar_format)
    check_threaded_run(config, plan, range(size), outputs, details, provider)


def check_sequential_run(
    config: SyncSettings,
    plan: Plan,
    indices: Sequence[int],
    outputs: list[Any],
    details: list[ExecutionDetails],
    calls: dict[int, list[ScheduledCall]],
) -> None:
    """One sequential run against the oracle: one input after another, so the oracle is
    exact, including where the run stops."""
    assert len(outputs) == len(details) == len(indices)
    stop = len(indices)
    for pos, index in enumerate(indices):
        row = calls.get(index, [])
        if pos > stop:
            assert details[pos].status is S.DID_NOT_RUN
            assert outputs[pos] is config.fallback
            assert row == []
            assert details[pos].exceptions == []
            continue
        expected = expect(plan, index, config.max_retries, timeouts=False)
        check_input(
            index, outputs[pos], details[pos], row, expected, config.fallback, may_stop_early=False
        )
        if config.exit_on_error and expected.status is S.FAILED:
            stop = pos


def in_two_threads(
    run: Callable[[list[Item]], tuple[list[Any], list[ExecutionDetails]]],
    first: list[Item],
    second: list[Item],
) -> list[tuple[list[Any], list[ExecutionDetails]]]:
    """`run` each list of inputs on a thread of its own, at once; both results."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def body(slot: int, inputs: list[Item]) -> None:
        try:
            start.wait()
            results[slot] = run(inputs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=pair) for pair in ((0, first), (1, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a run sharing the executor hung"
    if errors:
        raise errors[0]
    return [results[0], results[1]]


@light(THREADED)
@given(
    concurrency=st.sampled_from((1, 2)),
    config=st.builds(
        SyncSettings,
        max_retries=st.integers(0, 5),
        exit_on_error=st.booleans(),
        backoff=st.none(),
        fallback=fallbacks,
        bar_format=st.none(),
    ),
    first=threaded_plans,
    second=threaded_plans,
)
def test_two_threads_sharing_a_sync_executor_each_match_the_oracle(
    concurrency: int, config: SyncSettings, first: tuple[int, Plan], second: tuple[int, Plan]
) -> None:
    """One SyncExecutor, sequential or on threads, run from two threads at once: each
    run's results are its own schedule's, and one run's stop leaves the other alone."""
    (size_a, plan_a), (size_b, plan_b) = first, second
    plan = shifted(plan_a, plan_b, SECOND_RUN)
    provider = ThreadSafeProvider(plan, group=SECOND_RUN)
    executor = SyncExecutor(
        provider,
        max_retries=config.max_retries,
        exit_on_error=config.exit_on_error,
        fallback_return_value=config.fallback,
        concurrency=concurrency,
        backoff=None,
        clock=lambda: 0.0,
        sleep=lambda seconds: None,
    )
    indices = [list(range(size_a)), [SECOND_RUN + i for i in range(size_b)]]
    results = in_two_threads(executor.run, *([Item(i) for i in run] for run in indices))
    assert provider.wait_idle(), "an abandoned call never ended"
    for run_indices, (outputs, details) in zip(indices, results, strict=True):
        if concurrency == 1:
            check_sequential_run(config, plan, run_indices, outputs, details, provider.calls)
            group = run_indices[0] // SECOND_RUN if run_indices else 0
            assert provider.max_inflight[group] <= 1
        else:
            threaded = ThreadedSettings(
                concurrency, config.max_retries, config.exit_on_error, True, config.fallback, None
            )
            check_threaded_run(threaded, plan, run_indices, outputs, details, provider)


# -- a rerun with a checkpoint, of a function that changes its inputs ----------------------


def rows_of(size: int) -> list[dict[str, Any]]:
    """The inputs as a user reads them from a file: a fresh list of new rows each time."""
    return [{"index": i, "prompt": f"row {i}"} for i in range(size)]


@dataclass(frozen=True)
class Rerun:
    """How the second run's inputs differ from the first's."""

    edited: frozenset[int]
    """Rows whose prompt changed in the file since."""
    swaps: tuple[tuple[int, int], ...]
    """Rows that changed places."""
    delay: float
    """How long each call of the rerun takes (all succeed)."""

    def rows(self, size: int) -> list[dict[str, Any]]:
        rows = rows_of(size)
        for index in self.edited:
            if index < size:
                rows[index]["prompt"] += " (edited)"
        for a, b in self.swaps:
            if a < size and b < size:
                rows[a], rows[b] = rows[b], rows[a]
        return rows


reruns = st.builds(
    Rerun,
    edited=st.frozensets(st.integers(0, 9), max_size=3),
    swaps=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=2).map(tuple),
    delay=st.sampled_from(DELAYS),
)


def first_run(
    kind: str, data: st.DataObject, path: Path
) -> tuple[int, Plan, list[Any], list[ExecutionDetails], Any]:
    """The first run, of a function that changes each row it is given (and, async, may
    swallow our cancellation), stopped by anything drawn; its outputs and details."""
    if kind == "async":
        config = data.draw(async_settings)
        size, plan = data.draw(small_plans(kinds=ALL_KINDS, max_size=10))
        provider = careless_provider(config, plan, mutate=True)
        executor = async_executor(config, provider, path)
        with watched_run() as leftovers:
            example = run_async_example(config, executor, provider, [rows_of(size)])
            assert_cleaned_up(leftovers, config.bar_format)
        run = example.runs[0]
        check_example(config, example, provider)
        check_async_run(config, plan, range(size), run, provider.calls)
        details = [ExecutionDetails() if d is None else d for d in run.details]
        return size, plan, run.outputs, details, config.fallback
    if kind == "sync":
        sync = data.draw(sync_settings)
        size, plan = data.draw(small_plans(kinds=SYNC_KINDS, max_size=10))
        sync_provider = ThreadSafeProvider(plan, mutate=True)
        outputs, details = SyncExecutor(
            sync_provider,
            max_retries=sync.max_retries,
            exit_on_error=sync.exit_on_error,
            fallback_return_value=sync.fallback,
            backoff=sync.backoff,
            checkpoint=path,
            clock=lambda: 0.0,
            sleep=lambda seconds: None,
        ).run(rows_of(size))
        check_sequential_run(sync, plan, range(size), outputs, details, sync_provider.calls)
        return size, plan, outputs, details, sync.fallback
    threaded = data.draw(threaded_settings)
    size, plan = data.draw(small_plans(kinds=THREAD_KINDS, max_size=10, delays=(0.0,)))
    thread_provider = ThreadSafeProvider(plan, mutate=True)
    outputs, details = threaded_executor(threaded, thread_provider, path).run(rows_of(size))
    check_threaded_run(threaded, plan, range(size), outputs, details, thread_provider)
    return size, plan, outputs, details, threaded.fallback


@pytest.mark.parametrize("kind", ["async", "sync", "threads"])
@light(0.2)
@given(data=st.data(), rerun=reruns)
def test_a_rerun_with_a_checkpoint_calls_the_function_only_for_what_did_not_complete(
    kind: str, data: st.DataObject, rerun: Rerun
) -> None:
    """The function changes each row it is given (``row["prompt"] = ...``): the
    checkpoint keeps the fingerprint of the row as it was drawn, so a rerun over the
    same rows (read again) calls the function for none that completed, restores their
    outputs to the same rows, and calls it once for each of the others — those that
    failed, did not run, or came back "ERROR" from a swallowed stop (never stored), and
    rows edited or moved since."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.db"
        size, _, outputs, details, fallback = first_run(kind, data, path)
        rows = rerun.rows(size)
        plan = Plan({}, Step(OK, rerun.delay))
        provider: CarelessProvider | ThreadSafeProvider
        if kind == "async":
            provider = CarelessProvider(plan, slow_seconds=0.0)
            loop = virtual_time_loop()
            try:
                executor = AsyncExecutor(provider, concurrency=3, checkpoint=path)
                outputs_again, details_again = loop.run_until_complete(executor.execute(rows))
            finally:
                loop.close()
        else:
            provider = ThreadSafeProvider(plan)
            concurrency = 1 if kind == "sync" else 3
            again = SyncExecutor(provider, concurrency=concurrency, checkpoint=path)
            outputs_again, details_again = again.run(rows)

    original = rows_of(size)
    for position, row in enumerate(rows):
        completed = details[position].status in COMPLETED
        assert outputs[position] == (output_for(position) if completed else fallback)
        restored = completed and row == original[position]
        event(f"restored: {restored}")
        calls = provider.calls.get(row["index"], [])
        assert outputs_again[position] == output_for(row["index"])
        if restored:
            assert calls == [], f"row {position} completed before and was called again"
            assert details_again[position].status is details[position].status
            assert len(details_again[position].exceptions) == len(details[position].exceptions)
        else:
            assert len(calls) == 1
            assert details_again[position].status is S.COMPLETED
