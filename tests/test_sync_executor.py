"""SyncExecutor against the contract of SPEC §2, on an injected clock and sleep.

No test sleeps for real: `FakeTime` is both the executor's `clock=` and its `sleep=`,
and each attempt of the fake generation function advances it by the step's delay.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import pytest

from evalexec import IncompleteRunError
from evalexec._retry import Backoff
from evalexec.exceptions import PhoenixException, RateLimitError
from evalexec.executors import ExecutionDetails, ExecutionStatus, SyncExecutor, _unset
from tests.fakes import (
    FakeError,
    FakeGenerate,
    FakeTime,
    RecordingBar,
    SizedOnly,
    in_thread,
    output_for,
)

S = ExecutionStatus
NO_JITTER = Backoff(initial=1.0, maximum=60.0, multiplier=2.0, jitter=0.0)


class TimedFake:
    """`FakeGenerate.sync` whose attempts take the step's delay on a `FakeTime`."""

    def __init__(
        self,
        time: FakeTime,
        table: Mapping[Any, Sequence[tuple[str, float]]] | None = None,
        default: tuple[str, float] = ("ok", 0.0),
    ) -> None:
        self.time = time
        self.fake = FakeGenerate(dict(table or {}), default=default)

    @property
    def attempts(self) -> dict[Any, int]:
        return self.fake.attempts

    @property
    def items_called(self) -> list[Any]:
        return [call.item for call in self.fake.calls]

    def __call__(self, item: Any) -> Any:
        _, delay = self.fake.step(item, self.fake.attempts[item])
        self.time.now += delay
        return self.fake.sync(item)


def executor(fn: Callable[[Any], Any], time: FakeTime, **kwargs: Any) -> SyncExecutor:
    return SyncExecutor(fn, clock=time.clock, sleep=time.sleep, **kwargs)


def statuses(details: list[ExecutionDetails]) -> list[ExecutionStatus]:
    return [d.status for d in details]


class Raising(Exception):
    """An exception carrying attributes that `classify_error` reads."""

    def __init__(self, message: str, **attributes: Any) -> None:
        super().__init__(message)
        for name, value in attributes.items():
            setattr(self, name, value)


# -- outputs and statuses -----------------------------------------------------------------


def test_outputs_are_aligned_with_inputs_and_completed() -> None:
    time = FakeTime()
    fake = TimedFake(time)
    outputs, details = executor(fake, time).run(["a", "b", "c"])
    assert outputs == ["out:a", "out:b", "out:c"]
    assert statuses(details) == [S.COMPLETED] * 3
    assert [d.exceptions for d in details] == [[], [], []]
    assert fake.items_called == ["a", "b", "c"]


def test_an_empty_input_returns_two_empty_lists() -> None:
    time = FakeTime()
    fake = TimedFake(time)
    assert executor(fake, time).run([]) == ([], [])
    assert fake.items_called == []


def test_error_then_success_is_completed_with_retries() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("error", 0.0), ("error", 0.0), ("ok", 0.0)]})
    outputs, details = executor(fake, time).run(["a", "b"])
    assert outputs == ["out:a", "out:b"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES, S.COMPLETED]
    assert [type(e) for e in details[0].exceptions] == [FakeError, FakeError]
    assert fake.items_called == ["a", "a", "a", "b"]


def test_plain_errors_are_retried_without_sleeping() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("error", 0.0)] * 4 + [("ok", 0.0)]})
    outputs, _ = executor(fake, time, backoff=NO_JITTER).run(["a"])
    assert outputs == ["out:a"]
    assert time.sleeps == []


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_an_input_is_called_exactly_one_plus_max_retries_times(max_retries: int) -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("error", 0.0)]})
    outputs, details = executor(fake, time, max_retries=max_retries).run(["a"])
    assert fake.attempts["a"] == 1 + max_retries
    assert outputs == [_unset]
    assert statuses(details) == [S.FAILED]
    assert len(details[0].exceptions) == 1 + max_retries


def test_failed_inputs_get_the_fallback_and_the_run_goes_on_without_exit_on_error() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"b": [("error", 0.0)]})
    sync = executor(fake, time, max_retries=2, exit_on_error=False, fallback_return_value="fb")
    outputs, details = sync.run(["a", "b", "c"])
    assert outputs == ["out:a", "fb", "out:c"]
    assert statuses(details) == [S.COMPLETED, S.FAILED, S.COMPLETED]
    assert fake.items_called == ["a", "b", "b", "b", "c"]


def test_exit_on_error_stops_at_the_first_failure_and_leaves_the_rest_not_run() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"b": [("error", 0.0)]})
    outputs, details = executor(fake, time, max_retries=1, fallback_return_value=None).run(
        ["a", "b", "c", "d"]
    )
    assert outputs == ["out:a", None, None, None]
    assert statuses(details) == [S.COMPLETED, S.FAILED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    assert fake.items_called == ["a", "b", "b"]


def test_a_phoenix_exception_fails_at_once() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("phoenix", 0.0), ("ok", 0.0)]})
    outputs, details = executor(fake, time, exit_on_error=False, backoff=NO_JITTER).run(["a", "b"])
    assert fake.attempts["a"] == 1
    assert outputs == [_unset, "out:b"]
    assert statuses(details) == [S.FAILED, S.COMPLETED]
    assert [type(e) for e in details[0].exceptions] == [PhoenixException]
    assert time.sleeps == []


def test_the_default_fallback_is_the_unset_sentinel() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("phoenix", 0.0)]})
    outputs, _ = executor(fake, time).run(["a", "b"])
    assert outputs[0] is _unset
    assert outputs[1] is _unset


def test_execution_seconds_add_up_the_attempts_but_not_the_waits_between_them() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("rate_limit", 2.0), ("rate_limit", 3.0), ("ok", 4.0)]})
    _, details = executor(fake, time, backoff=NO_JITTER).run(["a"])
    assert time.sleeps == [1.0, 2.0]
    assert time.now == 12.0
    assert details[0].execution_seconds == 9.0


# -- rate limits and backoff --------------------------------------------------------------


def test_rate_limit_errors_are_retried_with_exponential_backoff_sleeps() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("rate_limit", 0.0)] * 3 + [("ok", 0.0)]})
    outputs, details = executor(fake, time, backoff=NO_JITTER).run(["a"])
    assert outputs == ["out:a"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES]
    assert [type(e) for e in details[0].exceptions] == [RateLimitError] * 3
    assert time.sleeps == [1.0, 2.0, 4.0]


def test_backoff_sleeps_are_capped_at_the_maximum() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("rate_limit", 0.0)] * 4 + [("ok", 0.0)]})
    backoff = Backoff(initial=1.0, maximum=3.0, multiplier=2.0, jitter=0.0)
    executor(fake, time, backoff=backoff).run(["a"])
    assert time.sleeps == [1.0, 2.0, 3.0, 3.0]


def test_no_sleep_follows_the_last_failed_attempt() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"a": [("rate_limit", 0.0)]})
    _, details = executor(fake, time, max_retries=2, backoff=NO_JITTER).run(["a"])
    assert fake.attempts["a"] == 3
    assert statuses(details) == [S.FAILED]
    assert time.sleeps == [1.0, 2.0]


def test_a_retry_after_hint_is_the_sleep() -> None:
    calls: list[str] = []

    def gen(item: str) -> str:
        calls.append(item)
        if len(calls) == 1:
            raise RateLimitError("x", retry_after=7.0)
        return item

    time = FakeTime()
    outputs, _ = executor(gen, time).run(["a"])
    assert outputs == ["a"]
    assert time.sleeps == [7.0]


def test_a_retry_after_hint_is_honoured_without_backoff() -> None:
    calls: list[str] = []

    def gen(item: str) -> str:
        calls.append(item)
        if len(calls) == 1:
            raise RateLimitError("x", retry_after=7.0)
        return item

    time = FakeTime()
    executor(gen, time, backoff=None).run(["a"])
    assert time.sleeps == [7.0]


def test_without_backoff_no_error_sleeps_unless_hinted() -> None:
    time = FakeTime()
    table = {"a": [("rate_limit", 0.0), ("error", 0.0), ("ok", 0.0)]}
    fake = TimedFake(time, table)
    outputs, _ = executor(fake, time, backoff=None).run(["a"])
    assert outputs == ["out:a"]
    assert time.sleeps == []


def test_transient_errors_back_off_like_rate_limits() -> None:
    raised: list[BaseException] = [
        ConnectionResetError("reset"),
        Raising("overloaded", status_code=529),
    ]

    def gen(item: str) -> str:
        if raised:
            raise raised.pop(0)
        return item

    time = FakeTime()
    outputs, details = executor(gen, time, backoff=NO_JITTER).run(["a"])
    assert outputs == ["a"]
    assert statuses(details) == [S.COMPLETED_WITH_RETRIES]
    assert time.sleeps == [1.0, 2.0]


def test_client_errors_are_not_retried() -> None:
    calls: list[str] = []

    def gen(item: str) -> str:
        calls.append(item)
        raise Raising("bad request", status_code=400)

    time = FakeTime()
    _, details = executor(gen, time, exit_on_error=False).run(["a", "b"])
    assert calls == ["a", "b"]
    assert statuses(details) == [S.FAILED, S.FAILED]


def test_an_exhausted_quota_stops_the_run_even_without_exit_on_error() -> None:
    calls: list[str] = []

    def gen(item: str) -> str:
        calls.append(item)
        if item == "b":
            raise Raising("quota", status_code=429, body={"error": {"code": "insufficient_quota"}})
        return item

    time = FakeTime()
    outputs, details = executor(gen, time, exit_on_error=False).run(["a", "b", "c"])
    assert calls == ["a", "b"]
    assert outputs == ["a", _unset, _unset]
    assert statuses(details) == [S.COMPLETED, S.FAILED, S.DID_NOT_RUN]
    assert time.sleeps == []


def test_a_deadline_stops_the_run_before_the_next_attempt() -> None:
    time = FakeTime()
    fake = TimedFake(time, default=("ok", 4.0))
    outputs, details = executor(fake, time, deadline=10.0).run([1, 2, 3, 4, 5])
    assert outputs == ["out:1", "out:2", "out:3", _unset, _unset]
    assert statuses(details) == [S.COMPLETED] * 3 + [S.DID_NOT_RUN] * 2
    assert time.now == 12.0


def test_a_deadline_shortens_a_long_backoff_sleep_and_stops_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")

    def gen(item: str) -> str:
        raise RateLimitError("x", retry_after=120.0)

    time = FakeTime()
    time.now = 100.0
    outputs, details = executor(gen, time, deadline=10.0).run(["a", "b"])
    assert time.sleeps == [10.0]
    assert outputs == [_unset, _unset]
    assert statuses(details) == [S.DID_NOT_RUN, S.DID_NOT_RUN]
    assert "the deadline of 10.0 s passed; the run was stopped" in [
        r.getMessage().removeprefix("evalexec: ") for r in caplog.records
    ]


# -- inputs -------------------------------------------------------------------------------


def test_a_sized_iterable_without_getitem_is_accepted_and_iterated_once() -> None:
    time = FakeTime()
    inputs = SizedOnly(["x", "y", "z"])
    outputs, details = executor(TimedFake(time), time).run(inputs)
    assert outputs == ["out:x", "out:y", "out:z"]
    assert statuses(details) == [S.COMPLETED] * 3
    assert inputs.iterated == 1


def test_a_tuple_is_accepted() -> None:
    time = FakeTime()
    outputs, _ = executor(TimedFake(time), time).run(("x", "y"))
    assert outputs == ["out:x", "out:y"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "got None"),
        ("abc", "got a str; to run a single input, wrap it in a list: [input]"),
        (42, "got int, which is not iterable"),
        ((i for i in range(3)), "got generator; for a generator, use the executor's stream"),
    ],
)
def test_bad_inputs_are_refused_before_anything_runs(inputs: Any, message: str) -> None:
    time = FakeTime()
    fake = TimedFake(time)
    with pytest.raises(TypeError, match=re.escape(message)):
        executor(fake, time).run(inputs)
    assert fake.items_called == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0, got -1"),
        ({"max_retries": 1.5}, TypeError, "max_retries must be an int, got float"),
        ({"max_retries": True}, TypeError, "max_retries must be an int, got bool"),
        ({"deadline": 0}, ValueError, "deadline must be > 0 seconds, got 0"),
        ({"deadline": -1.5}, ValueError, "deadline must be > 0 seconds, got -1.5"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        SyncExecutor(output_for, **kwargs)


def test_a_generation_function_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^generation_fn must be callable, got int$"):
        SyncExecutor(42)  # type: ignore[arg-type]


def test_stream_yields_each_input_as_it_finishes() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"b": [("error", 0.0), ("ok", 0.0)]})
    seen: list[tuple[int, Any, ExecutionStatus, list[str]]] = []
    for index, output, details in executor(fake, time).stream(["a", "b"]):
        seen.append((index, output, details.status, list(fake.items_called)))
    assert seen == [
        (0, "out:a", S.COMPLETED, ["a"]),
        (1, "out:b", S.COMPLETED_WITH_RETRIES, ["a", "b", "b"]),
    ]


# -- termination signal -------------------------------------------------------------------


def kill_self(signum: signal.Signals) -> None:
    os.kill(os.getpid(), signum)


def test_the_first_signal_interrupts_the_call_in_flight_and_keeps_finished_outputs() -> None:
    calls: list[int] = []
    finished_calls: list[int] = []

    def gen(item: int) -> int:
        calls.append(item)
        if item == 2:
            kill_self(signal.SIGUSR1)
        finished_calls.append(item)
        return item * 10

    time = FakeTime()
    sync = executor(gen, time, termination_signal=signal.SIGUSR1)
    outputs, details = sync.run([0, 1, 2, 3, 4])
    assert calls == [0, 1, 2]
    assert finished_calls == [0, 1]
    assert outputs == [0, 10, _unset, _unset, _unset]
    assert statuses(details) == [S.COMPLETED] * 2 + [S.DID_NOT_RUN] * 3


def test_a_signal_while_inputs_are_drawn_stops_the_run_before_the_next_call() -> None:
    class Signalling(SizedOnly):
        def __iter__(self) -> Iterator[Any]:
            for item in self.items:
                if item == "c":
                    kill_self(signal.SIGUSR1)
                yield item

    time = FakeTime()
    fake = TimedFake(time)
    sync = executor(fake, time, termination_signal=signal.SIGUSR1)
    outputs, details = sync.run(Signalling(["a", "b", "c", "d"]))
    assert fake.items_called == ["a", "b"]
    assert outputs == ["out:a", "out:b", _unset, _unset]
    assert statuses(details) == [S.COMPLETED] * 2 + [S.DID_NOT_RUN] * 2


def test_a_signal_during_a_backoff_sleep_stops_the_run() -> None:
    time = FakeTime()
    fake = TimedFake(time, {"b": [("rate_limit", 0.0), ("ok", 0.0)]})

    def sleep(seconds: float) -> None:
        time.sleeps.append(seconds)
        kill_self(signal.SIGUSR1)

    sync = SyncExecutor(
        fake, clock=time.clock, sleep=sleep, backoff=NO_JITTER, termination_signal=signal.SIGUSR1
    )
    outputs, details = sync.run(["a", "b", "c"])
    assert time.sleeps == [1.0]
    assert fake.items_called == ["a", "b"]
    assert outputs == ["out:a", _unset, _unset]
    assert statuses(details) == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]


def test_the_same_executor_runs_again_after_an_interrupted_run() -> None:
    interrupt = [True]

    def gen(item: int) -> int:
        if item == 1 and interrupt[0]:
            interrupt[0] = False
            kill_self(signal.SIGUSR1)
        return item * 10

    time = FakeTime()
    sync = executor(gen, time, termination_signal=signal.SIGUSR1)
    first, first_details = sync.run([0, 1, 2])
    assert first == [0, _unset, _unset]
    assert statuses(first_details) == [S.COMPLETED, S.DID_NOT_RUN, S.DID_NOT_RUN]
    second, second_details = sync.run([0, 1, 2])
    assert second == [0, 10, 20]
    assert statuses(second_details) == [S.COMPLETED] * 3


def test_a_second_signal_raises_keyboard_interrupt() -> None:
    """A function that swallows the first interruption is aborted by the second signal."""
    swallowed: list[str] = []

    def gen(item: int) -> int:
        try:
            kill_self(signal.SIGUSR1)
        except BaseException as exc:
            swallowed.append(type(exc).__name__)
        kill_self(signal.SIGUSR1)
        return item

    before = signal.getsignal(signal.SIGUSR1)
    time = FakeTime()
    with pytest.raises(KeyboardInterrupt):
        executor(gen, time, termination_signal=signal.SIGUSR1).run([0, 1])
    assert len(swallowed) == 1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_the_handler_is_installed_during_the_run_and_restored_after_it() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGUSR1)

    def gen(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGUSR1))
        return item

    time = FakeTime()
    executor(gen, time, termination_signal=signal.SIGUSR1).run([1, 2])
    assert len(seen) == 2
    assert seen[0] is not before
    assert callable(seen[0])
    assert signal.getsignal(signal.SIGUSR1) is before


def test_inputs_are_drawn_after_the_handler_is_installed() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGUSR1)

    class Watching(SizedOnly):
        def __iter__(self) -> Iterator[Any]:
            seen.append(signal.getsignal(signal.SIGUSR1))
            return super().__iter__()

    time = FakeTime()
    executor(TimedFake(time), time, termination_signal=signal.SIGUSR1).run(Watching([1]))
    assert len(seen) == 1
    assert seen[0] is not before


def test_the_previous_handler_is_restored_when_the_run_raises() -> None:
    class Boom(Exception):
        pass

    class Failing(SizedOnly):
        def __iter__(self) -> Iterator[Any]:
            yield "a"
            raise Boom

    before = signal.getsignal(signal.SIGUSR1)
    time = FakeTime()
    with pytest.raises(IncompleteRunError) as caught:
        executor(TimedFake(time), time, termination_signal=signal.SIGUSR1).run(Failing(["a"]))
    assert isinstance(caught.value.__cause__, Boom)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_keyboard_interrupt_from_the_function_propagates_and_restores_the_handler() -> None:
    def gen(item: int) -> int:
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    time = FakeTime()
    with pytest.raises(KeyboardInterrupt):
        executor(gen, time).run([1])
    assert signal.getsignal(signal.SIGINT) is before


def test_a_custom_previous_handler_is_put_back() -> None:
    def previous(signum: int, frame: FrameType | None) -> None:
        pass

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        time = FakeTime()
        executor(TimedFake(time), time, termination_signal=signal.SIGUSR1).run([1])
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_no_handler_is_installed_when_termination_signal_is_none() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGINT)

    def gen(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return item

    time = FakeTime()
    executor(gen, time, termination_signal=None).run([1])
    assert seen == [before]


def test_no_handler_is_installed_off_the_main_thread() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGINT)

    def gen(item: int) -> int:
        seen.append(signal.getsignal(signal.SIGINT))
        return item

    outputs, _ = in_thread(lambda: executor(gen, FakeTime()).run([1, 2]))
    assert outputs == [1, 2]
    assert seen == [before, before]


def test_the_interruption_is_reported_to_the_user(capsys: pytest.CaptureFixture[str]) -> None:
    def gen(item: int) -> int:
        kill_self(signal.SIGUSR1)
        return item

    time = FakeTime()
    executor(gen, time, termination_signal=signal.SIGUSR1).run([1])
    assert "interrupted; returning the outputs finished so far" in capsys.readouterr().err


def test_a_failure_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    time = FakeTime()
    fake = TimedFake(time, {"a": [("error", 0.0)]})
    executor(fake, time, max_retries=1).run(["a"])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["input 0 FAILED after 2 attempts: FakeError(\"error on 'a' attempt 1\")"]


# -- progress -----------------------------------------------------------------------------


def test_the_bar_counts_every_input_and_is_closed_with_a_summary(bars: type[RecordingBar]) -> None:
    time = FakeTime()
    fake = TimedFake(time, {"b": [("error", 1.0), ("ok", 1.0)]}, default=("ok", 1.5))
    executor(fake, time, tqdm_bar_format="{bar}").run(["a", "b", "c"])
    [bar] = bars.opened
    assert (bar.total, bar.bar_format, bar.n, bar.close_calls) == (3, "{bar}", 3, 1)
    assert bar.postfix == "retries=1"
    assert bars.lines == [
        "evalexec: 2 completed, 1 completed with retries, 0 failed, 0 did not run; 1 retries; 5.0 s"
    ]


def test_no_bar_is_made_without_a_bar_format(bars: type[RecordingBar]) -> None:
    time = FakeTime()
    executor(TimedFake(time), time).run(["a"])
    assert bars.opened == []
    assert bars.lines == []


def test_the_bar_is_closed_when_the_run_raises(bars: type[RecordingBar]) -> None:
    def gen(item: int) -> int:
        raise KeyboardInterrupt

    time = FakeTime()
    with pytest.raises(KeyboardInterrupt):
        executor(gen, time, tqdm_bar_format="{bar}").run([1, 2])
    [bar] = bars.opened
    assert (bar.n, bar.close_calls) == (0, 1)


def test_a_stream_holds_the_handler_only_while_it_runs_not_while_the_reader_does() -> None:
    """A stream left open (or dropped unclosed) must not keep evalexec's handler."""
    before = signal.getsignal(signal.SIGUSR1)
    seen: list[object] = []

    def gen(item: str) -> str:
        seen.append(signal.getsignal(signal.SIGUSR1))
        return item

    stream = SyncExecutor(gen, termination_signal=signal.SIGUSR1).stream(["a", "b", "c"])
    for index, _, _ in stream:
        assert signal.getsignal(signal.SIGUSR1) is before  # the reader's code runs now
        assert index == 0
        break
    assert seen[0] is not before  # the call ran under evalexec's handler
    assert signal.getsignal(signal.SIGUSR1) is before


class SignalsWhileClassified(Exception):
    """A 429 whose classification is where the signal lands: after the attempt, before
    the backoff sleep."""

    @property
    def status_code(self) -> int:
        os.kill(os.getpid(), signal.SIGUSR1)
        return 429


def test_a_signal_between_a_failed_attempt_and_its_backoff_skips_the_sleep() -> None:
    sleeps: list[float] = []

    def gen(item: str) -> str:
        raise SignalsWhileClassified("429")

    sync = SyncExecutor(
        gen, termination_signal=signal.SIGUSR1, sleep=sleeps.append, backoff=Backoff(jitter=0.0)
    )
    _, details = sync.run(["a", "b"])
    assert [d.status for d in details] == [ExecutionStatus.DID_NOT_RUN] * 2
    assert sleeps == []


def test_an_async_function_is_refused_at_the_first_call() -> None:
    """The mirror of AsyncExecutor's check: coroutines are not outputs."""
    calls: list[int] = []

    async def judge(item: int) -> int:
        calls.append(item)
        return item

    with pytest.raises(TypeError, match=r"judge returned coroutine; use AsyncExecutor"):
        SyncExecutor(judge).run([1, 2, 3])
    assert calls == []  # the coroutine was closed unawaited: its body never ran
