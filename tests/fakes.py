"""Every fake the tests share, in one place.

- ``FakeGenerate``: a generation function driven by a table of per-attempt outcomes.
  ``FakeGenerate({"a": [("error", 0.5), ("ok", 1.0)]})`` makes the first attempt on
  input ``"a"`` raise after 0.5 s of (virtual) loop time and the second return after
  1.0 s. Every call is recorded with its input, attempt number and start time.
  Inputs missing from the table succeed at once. Outputs are ``f"out:{input}"``.
- ``FakeTime``: the SyncExecutor's ``clock=`` and ``sleep=``, moving only when told.
- ``SizedOnly``: inputs with a length but no indexing.
- ``Hinting``: a ``FakeGenerate`` whose rate limits carry a retry hint.
- ``RecordingController``: a controller whose target a test sets by hand.
- ``in_thread``: run a function on a new thread, for the off-the-main-thread tests.
- ``RecordingBar`` and ``watched_run``: what a run must put back (the SIGINT handler,
  every progress bar closed) and ``other_tasks`` for what it must not leave running.
- Fault schedules for the property tests: ``Plan`` (a row of ``Step`` per input),
  the providers that follow one (``ScheduledProvider``, ``ScheduledSyncProvider``),
  and the hypothesis strategy ``plans`` that draws them.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar
from unittest import mock

from hypothesis import strategies as st
from tqdm.std import tqdm as std_tqdm

import evalexec._progress
from evalexec.exceptions import PhoenixException, RateLimitError
from evalexec.executors import ExecutionDetails
from tests.vtime import loop_time_or, now

Outcome = tuple[str, float]
"""A row entry of `FakeGenerate`: what the attempt does, after how many seconds."""


class FakeError(Exception):
    """A plain, retryable error raised by the fakes: retried at once."""


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

    table: Mapping[Any, Sequence[Outcome]] = field(default_factory=dict)
    default: Outcome = ("ok", 0.0)
    clock: Callable[[], float] | None = None
    calls: list[Call] = field(default_factory=list)
    attempts: dict[Any, int] = field(default_factory=lambda: defaultdict(int))
    inflight: int = 0
    max_inflight: int = 0

    def step(self, item: Any, attempt: int) -> Outcome:
        row = self.table.get(item)
        if not row:
            return self.default
        return row[min(attempt, len(row) - 1)]

    def _start(self, item: Any) -> tuple[int, Outcome]:
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


class RecordingController:
    """A stand-in controller: a settable target and a log of the events it was told."""

    def __init__(self, target: int) -> None:
        self.target_concurrency = target
        self.inactive_check_interval = 1.0
        self.events: list[str] = []

    def record_success(self, latency_seconds: float) -> None:
        self.events.append("success")

    def record_timeout(self) -> None:
        self.events.append("timeout")

    def record_error(self) -> None:
        self.events.append("error")


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


def summary_of(details: Sequence[ExecutionDetails]) -> list[tuple[Any, ...]]:
    """What a test compares of each input's details: status, exception types, seconds."""
    return [(d.status, [type(e) for e in d.exceptions], d.execution_seconds) for d in details]


def in_thread(target: Callable[[], Any]) -> Any:
    """Run `target` in a new thread; return its result or raise its exception here."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            result.append(target())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# -- what a run must leave behind ----------------------------------------------------------


def other_tasks() -> list[asyncio.Task[Any]]:
    """The tasks of the running loop other than the test's own."""
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


class RecordingBar(std_tqdm):  # type: ignore[type-arg]
    """A real tqdm bar put in place of `evalexec._progress.tqdm` (by the `bars` fixture
    or `watched_run`). It draws into a buffer, keeps every postfix it was given with
    the loop time (-1.0 outside a loop), counts its closes, and keeps the lines written
    through it (`lines`) instead of printing them."""

    monitor_interval = 0
    opened: ClassVar[list[RecordingBar]] = []
    lines: ClassVar[list[str]] = []

    @classmethod
    def forget(cls) -> None:
        cls.opened = []
        cls.lines = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.close_calls = 0
        self.postfixes: list[tuple[float, str]] = []
        kwargs.setdefault("file", io.StringIO())
        super().__init__(*args, **kwargs)
        RecordingBar.opened.append(self)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfixes.append((loop_time_or(-1.0), s))
        super().set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        self.close_calls += 1
        super().close()

    @classmethod
    def write(cls, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        cls.lines.append(s)


def previous_sigint_handler(signum: int, frame: FrameType | None) -> None:
    """A SIGINT handler of the caller's own, in place before a run; never to be called."""
    raise AssertionError("the handler in place before the run was called")


@dataclass
class Leftovers:
    """What the run must put back: the previous SIGINT handler, and every bar closed."""

    handler: Any
    bars: list[RecordingBar] = field(default_factory=list)


@contextmanager
def watched_run() -> Iterator[Leftovers]:
    """Install a known SIGINT handler and a recording bar; put everything back after.

    A context manager, not a fixture, so that each hypothesis example gets its own."""
    original = signal.signal(signal.SIGINT, previous_sigint_handler)
    RecordingBar.forget()
    leftovers = Leftovers(previous_sigint_handler)
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


# -- fault schedules (the property tests) --------------------------------------------------

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


def scheduled_exception(kind: str, index: int, attempt: int) -> Exception:
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


@dataclass
class ScheduledCall:
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
class _FollowsPlan:
    """What both scheduled providers share: the plan, and every call in order."""

    plan: Plan
    calls: dict[int, list[ScheduledCall]] = field(default_factory=dict, kw_only=True)
    seq: Iterator[int] = field(default_factory=itertools.count, kw_only=True)

    def _begin(self, item: Item, now: float) -> ScheduledCall:
        row = self.calls.setdefault(item.index, [])
        attempt = len(row)
        step = self.plan.step(item.index, attempt)
        call = ScheduledCall(item.index, attempt, step, now, next(self.seq))
        row.append(call)
        return call

    def _end(self, call: ScheduledCall, outcome: str, now: float) -> None:
        call.outcome = outcome
        call.ended = now
        call.ended_seq = next(self.seq)

    def all_calls(self) -> list[ScheduledCall]:
        return [call for row in self.calls.values() for call in row]


@dataclass
class ScheduledProvider(_FollowsPlan):
    """The async generation function: follows `plan`, records every call in order."""

    slow_seconds: float
    inflight: int = 0
    max_inflight: int = 0

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
            call.exception = scheduled_exception(kind, item.index, call.attempt)
            self._end(call, "raised", loop.time())
            raise call.exception
        except asyncio.CancelledError:
            self._end(call, "cancelled", loop.time())
            raise
        finally:
            self.inflight -= 1


class TaggedTime(FakeTime):
    """A `FakeTime` that also tags every sleep with the input whose attempt came before
    it (`current`, set by the provider), and refuses a sleep of no time."""

    def __init__(self) -> None:
        super().__init__()
        self.current: Any = None
        self.tagged: list[tuple[Any, float]] = []

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.tagged.append((self.current, seconds))
        super().sleep(seconds)


@dataclass
class ScheduledSyncProvider(_FollowsPlan):
    """The plain generation function: follows `plan`, spends its delays on `time`."""

    time: TaggedTime

    def __call__(self, item: Item) -> str:
        call = self._begin(item, self.time.now)
        self.time.current = item.index
        self.time.now += call.step.delay
        if call.step.kind == OK:
            self._end(call, "returned", self.time.now)
            return output_for(item.index)
        call.exception = scheduled_exception(call.step.kind, item.index, call.attempt)
        self._end(call, "raised", self.time.now)
        raise call.exception


# -- careless, nested and shared functions (the property tests) ----------------------------

SWALLOWED = "ERROR"
"""What a function that catches BaseException returns: never an output of a COMPLETED input."""


@dataclass(frozen=True, slots=True)
class Key:
    """An input of an inner run (or of a run sharing its executor): `run` says whose
    provider follows it, `index` which row of that provider's plan."""

    run: int
    index: int


def index_of(item: Item | Key | dict[str, Any]) -> int:
    """The plan row of an input: an `Item`, a `Key`, or a row ``{"index": i, ...}``."""
    if isinstance(item, dict):
        index: int = item["index"]
        return index
    return item.index


def change(row: Any, attempt: int) -> None:
    """What a function that changes its input does to a row (nothing to other inputs)."""
    if isinstance(row, dict):
        row["prompt"] = f"formatted: {row['prompt']}"
        row["attempt"] = attempt


@dataclass
class CarelessProvider(_FollowsPlan):
    """A `ScheduledProvider` as a careless user writes it: it may change its input before
    its outcome (`mutate`: ``row["prompt"] = ...``), and may catch BaseException — the
    executor's own cancellation included — and return `SWALLOWED` (`swallow`). Its
    inputs are `Item`, `Key` or rows ``{"index": i, "prompt": ...}``."""

    slow_seconds: float
    swallow: bool = False
    mutate: bool = False
    inflight: int = 0
    max_inflight: int = 0

    async def __call__(self, item: Any) -> str:
        loop = asyncio.get_running_loop()
        index = index_of(item)
        call = self._begin(Item(index), loop.time())
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.mutate:
                change(item, call.attempt)
            kind = call.step.kind
            await asyncio.sleep(self.slow_seconds if kind == SLOW else call.step.delay)
            if kind in (OK, SLOW):
                output = output_for(index) if kind == OK else f"late:{index}"
                self._end(call, "returned", loop.time())
                return output
            call.exception = scheduled_exception(kind, index, call.attempt)
            self._end(call, "raised", loop.time())
            raise call.exception
        except asyncio.CancelledError:
            self._end(call, "cancelled", loop.time())
            if self.swallow:
                return SWALLOWED
            raise
        finally:
            self.inflight -= 1


@dataclass
class ThreadSafeProvider(_FollowsPlan):
    """The plain function for runs on threads (or several threads sharing an executor):
    follows `plan` at once (delays are not spent), keeps its books under a lock, and
    counts calls in flight per group of inputs (``index // group``: one group per run
    that shares it). `mutate` as for `CarelessProvider`."""

    group: int = 1 << 30
    mutate: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_inflight: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    idle: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.idle = threading.Condition(self.lock)

    def __call__(self, item: Any) -> str:
        index = index_of(item)
        group = index // self.group
        with self.lock:
            call = self._begin(Item(index), 0.0)
            self.inflight[group] += 1
            self.max_inflight[group] = max(self.max_inflight[group], self.inflight[group])
        try:
            if self.mutate:
                change(item, call.attempt)
            if call.step.kind == OK:
                with self.lock:
                    self._end(call, "returned", 0.0)
                return output_for(index)
            exception = scheduled_exception(call.step.kind, index, call.attempt)
            with self.lock:
                call.exception = exception
                self._end(call, "raised", 0.0)
            raise exception
        finally:
            with self.lock:
                self.inflight[group] -= 1
                self.idle.notify_all()

    def wait_idle(self, seconds: float = 30.0) -> bool:
        """Wait until no call is in flight (an abandoned one ends on its thread)."""
        with self.idle:
            return self.idle.wait_for(lambda: not any(self.inflight.values()), seconds)


@st.composite
def small_plans(
    draw: st.DrawFn, *, kinds: Sequence[str], max_size: int, delays: Sequence[float] = DELAYS
) -> tuple[int, Plan]:
    """Like `plans`, for fewer inputs, with steps of the given kinds and delays only."""
    size = draw(st.integers(0, max_size))
    rows: dict[int, tuple[Step, ...]] = {}
    step = st.builds(Step, st.sampled_from(tuple(kinds)), st.sampled_from(tuple(delays)))
    if size:
        rows = draw(
            st.dictionaries(
                st.integers(0, size - 1),
                st.lists(step, min_size=1, max_size=6).map(tuple),
                max_size=size,
            )
        )
    default = Step(OK, draw(st.sampled_from(tuple(delays))))
    return size, Plan(rows, default)
