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
import io
import itertools
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar
from unittest import mock

import looptime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tqdm.std import tqdm as std_tqdm

import evalexec._progress
from evalexec import Backoff, PhoenixException, RateLimitError
from evalexec.executors import (
    AsyncExecutor,
    ExecutionDetails,
    ExecutionStatus,
    SyncExecutor,
    _unset,
)

S = ExecutionStatus
FINAL = (S.COMPLETED, S.COMPLETED_WITH_RETRIES, S.FAILED)

# -- the schedule --------------------------------------------------------------------------

OK = "ok"
ERROR = "error"
TRANSIENT = "transient"
RATE_LIMIT = "rate_limit"
HINTED = "hinted_rate_limit"
PHOENIX = "phoenix"
SLOW = "slow"

RETRIED_AS_ERRORS = (ERROR, TRANSIENT, RATE_LIMIT, HINTED)
HINT_SECONDS = 0.75
# Delays of steps that end by themselves: all shorter than the shortest timeout drawn.
DELAYS = (0.0, 0.1, 0.5, 0.75)
TIMEOUTS = (1.0, 2.5, None)
HANG_GUARD_SECONDS = 10.0**7
FALLBACK = object()


class FakeError(Exception):
    """A plain error: retried at once."""


class FakeTransientError(ConnectionResetError):
    """A connection error: retried after a backoff delay."""


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Item:
    """An input; its index tells the provider which schedule row to follow."""

    index: int


def output_for(index: int) -> str:
    return f"out:{index}"


def make_exception(kind: str, index: int, attempt: int) -> Exception:
    message = f"{kind} on input {index}, attempt {attempt}"
    if kind == ERROR:
        return FakeError(message)
    if kind == TRANSIENT:
        return FakeTransientError(message)
    if kind == RATE_LIMIT:
        return RateLimitError(message)
    if kind == HINTED:
        return RateLimitError(message, retry_after=HINT_SECONDS)
    if kind == PHOENIX:
        return PhoenixException(message)
    raise AssertionError(f"no exception for {kind!r}")


EXCEPTION_TYPES: dict[str, type[BaseException]] = {
    ERROR: FakeError,
    TRANSIENT: FakeTransientError,
    RATE_LIMIT: RateLimitError,
    HINTED: RateLimitError,
    PHOENIX: PhoenixException,
    SLOW: TimeoutError,
}


@dataclass(frozen=True, slots=True)
class Plan:
    """The provider's behaviour: a schedule row per faulty input, `default` elsewhere.

    Attempts past the end of a row take `default`, which is always a success.
    """

    rows: dict[int, tuple[Step, ...]]
    default: Step

    def step(self, index: int, attempt: int) -> Step:
        row = self.rows.get(index, ())
        return row[attempt] if attempt < len(row) else self.default


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


def steps(*, timeouts: bool) -> st.SearchStrategy[Step]:
    kinds = [OK, ERROR, TRANSIENT, RATE_LIMIT, HINTED, PHOENIX] + ([SLOW] if timeouts else [])
    return st.builds(Step, st.sampled_from(kinds), st.sampled_from(DELAYS))


@st.composite
def plans(draw: st.DrawFn, *, timeouts: bool) -> tuple[int, Plan]:
    size = draw(st.one_of(st.integers(0, 12), st.integers(0, 300)))
    rows: dict[int, tuple[Step, ...]] = {}
    if size:
        rows = draw(
            st.dictionaries(
                st.integers(0, size - 1),
                st.lists(steps(timeouts=timeouts), min_size=1, max_size=8).map(tuple),
                max_size=min(size, 24),
            )
        )
    default = Step(OK, draw(st.sampled_from(DELAYS)))
    return size, Plan(rows, default)


backoffs = st.sampled_from((None, Backoff(), Backoff(initial=0.25, multiplier=3.0, jitter=0.0)))
fallbacks = st.sampled_from((_unset, FALLBACK, None))
bar_formats = st.sampled_from((None, "{l_bar}{bar}{r_bar}"))


# -- what a run must leave behind ----------------------------------------------------------


class RecordingBar(std_tqdm):  # type: ignore[type-arg]
    """A real tqdm bar that draws into a buffer and remembers whether it was closed."""

    monitor_interval = 0
    opened: ClassVar[list[RecordingBar]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.close_calls = 0
        kwargs.setdefault("file", io.StringIO())
        super().__init__(*args, **kwargs)
        RecordingBar.opened.append(self)

    def close(self) -> None:
        self.close_calls += 1
        super().close()


@dataclass
class Leftovers:
    """What the run must put back: the previous SIGINT handler, and every bar closed."""

    handler: Any
    bars: list[RecordingBar] = field(default_factory=list)


def _previous_handler(signum: int, frame: FrameType | None) -> None:
    raise AssertionError("the handler in place before the run was called")


@contextmanager
def watched_run() -> Iterator[Leftovers]:
    """Install a known SIGINT handler and a recording bar; put everything back after."""
    original = signal.signal(signal.SIGINT, _previous_handler)
    RecordingBar.opened = []
    leftovers = Leftovers(_previous_handler)
    leftovers.bars = RecordingBar.opened
    try:
        with mock.patch.object(evalexec._progress, "tqdm", RecordingBar):
            yield leftovers
    finally:
        signal.signal(signal.SIGINT, original)


def assert_cleaned_up(leftovers: Leftovers, bar_format: str | None) -> None:
    assert signal.getsignal(signal.SIGINT) is leftovers.handler
    assert len(leftovers.bars) == (0 if bar_format is None else 1)
    assert all(bar.close_calls >= 1 and bar.disable for bar in leftovers.bars)


# -- the fake provider ---------------------------------------------------------------------


@dataclass
class Call:
    index: int
    attempt: int
    step: Step
    started: float
    started_seq: int
    ended: float | None = None
    ended_seq: int | None = None
    outcome: str | None = None
    """"returned", "raised" or "cancelled"; None while in flight."""
    exception: BaseException | None = None


@dataclass
class Provider:
    """The async generation function: follows `plan`, records every call in order."""

    plan: Plan
    slow_seconds: float
    calls: dict[int, list[Call]] = field(default_factory=dict)
    seq: Iterator[int] = field(default_factory=itertools.count)
    inflight: int = 0
    max_inflight: int = 0

    def _begin(self, item: Item, now: float) -> Call:
        row = self.calls.setdefault(item.index, [])
        attempt = len(row)
        call = Call(item.index, attempt, self.plan.step(item.index, attempt), now, next(self.seq))
        row.append(call)
        return call

    def _end(self, call: Call, outcome: str, now: float) -> None:
        call.outcome = outcome
        call.ended = now
        call.ended_seq = next(self.seq)

    async def __call__(self, item: Item) -> str:
        loop = asyncio.get_running_loop()
        call = self._begin(item, loop.time())
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            kind = call.step.kind
            await asyncio.sleep(self.slow_seconds if kind == SLOW else call.step.delay)
            if kind in (OK, SLOW):
                # A slow attempt that is not cut off returns a value that gives it away.
                output = output_for(item.index) if kind == OK else f"late:{item.index}"
                self._end(call, "returned", loop.time())
                return output
            call.exception = make_exception(kind, item.index, call.attempt)
            self._end(call, "raised", loop.time())
            raise call.exception
        except asyncio.CancelledError:
            self._end(call, "cancelled", loop.time())
            raise
        finally:
            self.inflight -= 1

    def all_calls(self) -> list[Call]:
        return [call for row in self.calls.values() for call in row]


# -- checks shared by both executors -------------------------------------------------------


def check_logged(details: ExecutionDetails, calls: list[Call]) -> None:
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
    calls: list[Call],
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


STEPS_PER_SECOND = 1_000_000
_LoopTimeSelectorLoop: type[Any] = looptime.make_event_loop_class(asyncio.SelectorEventLoop)


class _VirtualTimeLoop(_LoopTimeSelectorLoop):
    """looptime's loop with every timer moved up to the next microsecond.

    looptime's clock moves in whole microseconds. A timer due a float residue after a
    step (``t + 0.75`` computed as ``t + 0.7500000000000001``) would be run at the
    step before it, and code that waits "until loop.time() >= deadline" would sleep
    for the residue again and again while the clock never moves. On a real clock,
    time moves on by itself; here each timer lands on the step at or after it.
    """

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        on_step = math.ceil(when * STEPS_PER_SECOND) / STEPS_PER_SECOND
        handle: asyncio.TimerHandle = super().call_at(on_step, callback, *args, context=context)
        return handle


def virtual_time_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop on virtual time, starting at 0."""
    loop: asyncio.AbstractEventLoop = _VirtualTimeLoop(start=0.0, resolution=1 / STEPS_PER_SECOND)
    return loop


@dataclass
class AsyncResult:
    outputs: list[Any]
    details: list[ExecutionDetails | None]
    """None for an input a stream did not yield (it never reached a final status)."""
    returned_at: float
    pending: list[asyncio.Task[Any]]
    late_calls: int


def run_async_example(config: AsyncSettings, size: int, plan: Plan) -> tuple[AsyncResult, Provider]:
    timeout = 60.0 if config.timeout is None else config.timeout
    provider = Provider(plan, slow_seconds=3 * timeout)
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
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
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
    config: AsyncSettings, size: int, plan: Plan, result: AsyncResult, provider: Provider
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


@dataclass
class FakeTime:
    """The sync executor's clock and sleep: sleeping moves the clock, nothing waits."""

    now: float = 0.0
    sleeps: list[tuple[int, float]] = field(default_factory=list)
    current: int = -1

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append((self.current, seconds))
        self.now += seconds


@dataclass
class SyncProvider:
    """The plain generation function: follows `plan`, spends its delays on `time`."""

    plan: Plan
    time: FakeTime
    calls: dict[int, list[Call]] = field(default_factory=dict)
    seq: Iterator[int] = field(default_factory=itertools.count)

    def __call__(self, item: Item) -> str:
        row = self.calls.setdefault(item.index, [])
        step = self.plan.step(item.index, len(row))
        call = Call(item.index, len(row), step, self.time.now, next(self.seq))
        row.append(call)
        self.time.current = item.index
        self.time.now += step.delay
        call.ended = self.time.now
        call.ended_seq = next(self.seq)
        if step.kind == OK:
            call.outcome = "returned"
            return output_for(item.index)
        call.outcome = "raised"
        call.exception = make_exception(step.kind, item.index, call.attempt)
        raise call.exception


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
    fake_time = FakeTime()
    provider = SyncProvider(plan, fake_time)
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
        sleeps = [seconds for owner, seconds in fake_time.sleeps if owner == index]
        bounds = expected_sleeps(plan, index, expected, config.backoff)
        assert len(sleeps) == len(bounds)
        assert all(low <= s <= high for s, (low, high) in zip(sleeps, bounds, strict=True))
        if config.exit_on_error and expected.status is S.FAILED:
            stop = index
