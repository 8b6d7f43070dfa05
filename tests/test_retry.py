"""The retry policy (`Backoff`, `decide`, `Verdict`): how long an input waits, whether it
is retried at all, and why -- in words an executor can print."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evalexec import exceptions as ee
from evalexec._retry import DEFAULT_MAX_HINT, Backoff, Verdict, decide
from evalexec.exceptions import ErrorKind, ErrorReport, NestedRunError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor
from tests.fakes import FakeTime

S = ExecutionStatus
NO_JITTER = Backoff(jitter=0.0)
WRONG_LOOP = (
    "the async client was created or first used on another event loop; create it inside "
    "the running loop (in the function or per run), or use the sync function with "
    "SyncExecutor"
)
NESTED_RUN = (
    "a blocking run (executor.run() or asyncio.run()) was called inside a running event "
    "loop; await executor.execute(inputs) there instead, or apply nest_asyncio"
)


class StatusError(Exception):
    """Shaped like the SDKs' `APIStatusError`: a status code and an httpx-like response."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.response = type("Response", (), {"headers": dict(headers or {})})()


def never() -> float:
    return 0.0


def always() -> float:
    return 1.0


def half() -> float:
    return 0.5


# -- Backoff ------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_without_jitter() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, rng=never) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


def test_jitter_shortens_the_wait_by_up_to_the_jitter_fraction() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, rng=always) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert [backoff.delay(n, rng=half) for n in (1, 2, 3)] == [0.75, 1.5, 3.0]


def test_backoff_is_capped_at_the_maximum() -> None:
    backoff = Backoff()
    assert backoff.delay(7, rng=never) == 60.0
    assert backoff.delay(7, rng=half) == 45.0
    assert backoff.delay(10_000, rng=never) == 60.0


def test_a_custom_backoff() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, multiplier=3.0, jitter=0.0)
    assert [backoff.delay(n, rng=always) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


def test_retry_zero_waits_like_the_first_retry() -> None:
    assert Backoff().delay(0, rng=never) == 1.0


def test_the_longest_hint_waited_out_is_ten_minutes_unless_set() -> None:
    assert Backoff().max_hint == DEFAULT_MAX_HINT == 600.0
    assert Backoff(max_hint=7200).max_hint == 7200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1.0}, "Backoff.initial must be a finite number >= 0, got -1.0"),
        ({"maximum": float("inf")}, "Backoff.maximum must be a finite number >= 0, got inf"),
        ({"multiplier": 0.5}, "Backoff.multiplier must be >= 1, got 0.5"),
        ({"jitter": 1.5}, "Backoff.jitter must be in [0, 1], got 1.5"),
        ({"jitter": -0.1}, "Backoff.jitter must be in [0, 1], got -0.1"),
        ({"max_hint": -1}, "Backoff.max_hint must be a finite number >= 0, got -1"),
        ({"max_hint": math.inf}, "Backoff.max_hint must be a finite number >= 0, got inf"),
        ({"max_hint": math.nan}, "Backoff.max_hint must be a finite number >= 0, got nan"),
        ({"max_hint": "600"}, "Backoff.max_hint must be a finite number >= 0, got '600'"),
    ],
)
def test_bad_backoff_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Backoff(**kwargs)


# -- decide: retries ----------------------------------------------------------------------


def test_other_errors_are_retried_at_once() -> None:
    verdict = decide(ValueError("x"), 3, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.OTHER), retry=True, delay=0.0, reason="error; retrying at once"
    )


def test_rate_limits_are_retried_after_a_backoff() -> None:
    verdict = decide(ee.RateLimitError("x"), 2, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT),
        retry=True,
        delay=4.0,
        reason="rate limited; retrying in 4 s",
    )


def test_rate_limit_hints_set_the_delay_and_a_cooldown() -> None:
    verdict = decide(ee.RateLimitError("x", retry_after=7.0), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT, None, 7.0),
        retry=True,
        delay=7.0,
        cooldown=7.0,
        reason="rate limited; retrying in 7 s, as the provider asks",
    )


def test_a_hint_replaces_the_backoff_whether_shorter_or_longer() -> None:
    """The provider's hint is the wait: 15 ms when it says 15 ms, 120 s past the maximum."""
    for hint in (0.015, 3.0, 120.0):
        verdict = decide(ee.RateLimitError("x", retry_after=hint), 4, 10, Backoff())
        assert verdict.delay == hint


def test_transient_errors_are_retried_after_a_backoff_without_a_cooldown() -> None:
    verdict = decide(ConnectionResetError("x"), 1, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.TRANSIENT),
        retry=True,
        delay=2.0,
        reason="transient error; retrying in 2 s",
    )


def test_transient_hints_set_the_delay_but_no_cooldown() -> None:
    verdict = decide(StatusError(503, {"retry-after": "9"}), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.TRANSIENT, 503, 9.0),
        retry=True,
        delay=9.0,
        reason="transient error; retrying in 9 s, as the provider asks",
    )


def test_the_rng_reaches_the_backoff() -> None:
    verdict = decide(ee.RateLimitError("x"), 0, 10, Backoff(), rng=half)
    assert verdict.delay == 0.75
    assert verdict.reason == "rate limited; retrying in 750 ms"


def test_without_backoff_only_the_hint_delays_a_retry() -> None:
    assert decide(ee.RateLimitError("x"), 0, 10, None).delay == 0.0
    assert decide(ee.RateLimitError("x", retry_after=7.0), 0, 10, None).delay == 7.0
    assert decide(ConnectionResetError("x"), 4, 10, None).delay == 0.0


def test_no_retry_once_max_retries_are_used_up() -> None:
    assert decide(ValueError("x"), 10, 10, NO_JITTER) == Verdict(
        ErrorReport(ErrorKind.OTHER), retry=False, reason="error; no retries left (max_retries=10)"
    )
    assert decide(ValueError("x"), 9, 10, NO_JITTER).retry is True
    assert decide(ValueError("x"), 0, 0, NO_JITTER).retry is False


def test_a_rate_limit_out_of_retries_still_reports_its_cooldown() -> None:
    verdict = decide(ee.RateLimitError("x", retry_after=5.0), 3, 3, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT, None, 5.0),
        retry=False,
        cooldown=5.0,
        reason="rate limited; no retries left (max_retries=3)",
    )


# -- decide: no retry ---------------------------------------------------------------------


def test_fatal_errors_are_not_retried_and_do_not_stop_the_run() -> None:
    verdict = decide(StatusError(401), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.FATAL, 401),
        retry=False,
        reason="HTTP 401 is a client error; retrying cannot help",
    )


def test_a_phoenix_exception_is_not_retried_and_says_so() -> None:
    verdict = decide(ee.PhoenixException("x"), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.FATAL),
        retry=False,
        reason="a PhoenixException is final; it is not retried",
    )


def test_an_exhausted_quota_is_not_retried_and_stops_the_run() -> None:
    exc = StatusError(429)
    exc.body = {"error": {"code": "insufficient_quota"}}  # type: ignore[attr-defined]
    verdict = decide(exc, 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.QUOTA_EXHAUSTED, 429),
        retry=False,
        stop_run=True,
        reason="the provider says the quota is exhausted; retrying cannot help",
    )


@pytest.mark.parametrize(
    "message",
    [
        "<asyncio.locks.Lock object at 0x7f90 [locked]> is bound to a different event loop",
        "Task <Task pending name='Task-2'> got Future <Future pending> attached to a "
        "different loop",
        "Event loop is closed",
    ],
)
def test_an_object_of_another_event_loop_stops_the_run_and_says_how_to_fix_it(
    message: str,
) -> None:
    verdict = decide(RuntimeError(message), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.MISUSE, advice=WRONG_LOOP),
        retry=False,
        stop_run=True,
        reason=WRONG_LOOP,
    )


def test_a_nested_run_is_never_retried_and_stops_the_run() -> None:
    verdict = decide(NestedRunError("run() was called inside a running loop"), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.MISUSE, advice=NESTED_RUN),
        retry=False,
        stop_run=True,
        reason=NESTED_RUN,
    )


# -- decide: hints longer than max_hint ---------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ({"retry-after": "1e10"}, "1.16e+05 days"),
        ({"retry-after": "1e308"}, "1.16e+303 days"),
        ({"retry-after": "601"}, "10 min 1 s"),
        ({"retry-after": "3723.4"}, "1 h 2 min 3 s"),
        ({"retry-after": "7200"}, "2 h"),
        ({"x-ratelimit-reset-tokens": "2h0m0s"}, "2 h"),
    ],
)
def test_a_hint_longer_than_max_hint_stops_the_run_and_says_what_was_asked(
    headers: dict[str, str], asked: str
) -> None:
    verdict = decide(StatusError(429, headers), 0, 10, NO_JITTER)
    assert (verdict.retry, verdict.delay, verdict.cooldown, verdict.stop_run) == (
        False,
        0.0,
        None,
        True,
    )
    assert verdict.reason == (
        f"the provider asks to wait {asked}, more than max_hint (10 min); "
        "rerun later, or raise Backoff(max_hint=...)"
    )


def test_an_http_date_centuries_ahead_stops_the_run() -> None:
    exc = StatusError(429, {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})
    verdict = decide(exc, 0, 10, NO_JITTER)
    assert (verdict.retry, verdict.stop_run) == (False, True)
    assert verdict.reason.startswith("the provider asks to wait 2.")
    assert "days, more than max_hint (10 min)" in verdict.reason


def test_a_hint_of_exactly_max_hint_is_waited_out() -> None:
    verdict = decide(StatusError(429, {"retry-after": "600"}), 0, 10, NO_JITTER)
    assert (verdict.retry, verdict.delay, verdict.cooldown) == (True, 600.0, 600.0)


def test_max_hint_is_the_backoffs_own() -> None:
    exc = StatusError(429, {"retry-after": "7200"})
    assert decide(exc, 0, 10, Backoff(max_hint=7200)).delay == 7200.0
    stopped = decide(exc, 0, 10, Backoff(max_hint=60))
    assert stopped.stop_run is True
    assert "more than max_hint (1 min)" in stopped.reason


def test_without_backoff_hints_are_still_capped_at_the_default() -> None:
    assert decide(StatusError(429, {"retry-after": "601"}), 0, 10, None).stop_run is True
    assert decide(StatusError(429, {"retry-after": "599"}), 0, 10, None).delay == 599.0


def test_a_long_transient_hint_stops_the_run_too() -> None:
    verdict = decide(StatusError(503, {"retry-after": "3600"}), 0, 10, NO_JITTER)
    assert (verdict.retry, verdict.stop_run) == (False, True)


def test_a_long_hint_out_of_retries_stops_the_run_instead_of_cooling_down() -> None:
    verdict = decide(StatusError(429, {"retry-after": "7200"}), 10, 10, NO_JITTER)
    assert (verdict.retry, verdict.cooldown, verdict.stop_run) == (False, None, True)


@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "-5", "1e400", "soon", "", "0x10", "Mon, 99 Foo 2015"]
)
def test_an_absurd_retry_after_is_ignored_and_the_backoff_applies(value: str) -> None:
    verdict = decide(StatusError(429, {"retry-after": value}), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT, 429),
        retry=True,
        delay=1.0,
        reason="rate limited; retrying in 1 s",
    )


def test_an_http_date_in_the_past_retries_at_once() -> None:
    exc = StatusError(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    verdict = decide(exc, 0, 10, NO_JITTER)
    assert (verdict.retry, verdict.delay, verdict.cooldown) == (True, 0.0, 0.0)


hint_texts = st.one_of(
    st.text(max_size=30),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1e10", "1e308", "inf", "nan", "6m0s", "2h0m0s", "2025-08-21T12:40:59Z"]),
    st.sampled_from(["Fri, 31 Dec 9999 23:59:59 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"]),
)


@given(
    status=st.sampled_from([429, 500, 503, 529]),
    headers=st.dictionaries(
        st.sampled_from(
            ["retry-after", "retry-after-ms", "x-ratelimit-reset-tokens", "x-ratelimit-reset"]
        ),
        hint_texts,
        max_size=4,
    ),
    retries_so_far=st.integers(min_value=0, max_value=12),
    backoff=st.sampled_from([None, Backoff(), Backoff(max_hint=0.0), Backoff(max_hint=7200.0)]),
)
def test_no_hint_makes_decide_raise_or_wait_past_max_hint(
    status: int, headers: dict[str, str], retries_so_far: int, backoff: Backoff | None
) -> None:
    verdict = decide(StatusError(status, headers), retries_so_far, 10, backoff)
    max_hint = DEFAULT_MAX_HINT if backoff is None else backoff.max_hint
    longest = max(max_hint, 0.0 if backoff is None else backoff.maximum)
    assert 0.0 <= verdict.delay <= longest
    assert verdict.cooldown is None or 0.0 <= verdict.cooldown <= max_hint
    assert verdict.reason
    hint = verdict.report.retry_after
    assert verdict.stop_run is (hint is not None and hint > max_hint)


# -- the executors never sleep past max_hint ----------------------------------------------


def test_a_sync_run_told_to_wait_1e10_seconds_stops_without_sleeping() -> None:
    """Today's code handed 1e10 to `time.sleep`, which raises OverflowError."""

    def generate(item: str) -> str:
        if item == "b":
            raise StatusError(429, {"retry-after": "1e10"})
        return item

    time = FakeTime()
    executor = SyncExecutor(generate, clock=time.clock, sleep=time.sleep, exit_on_error=False)
    outputs, details = executor.run(["a", "b", "c"])
    assert time.sleeps == []
    assert outputs[0] == "a"
    assert [d.status for d in details] == [S.COMPLETED, S.FAILED, S.DID_NOT_RUN]


@pytest.mark.looptime
async def test_an_async_run_whose_tokens_reset_in_two_hours_stops_instead_of_pausing() -> None:
    async def generate(item: str) -> str:
        await asyncio.sleep(1.0)
        if item == "a":
            raise StatusError(429, {"x-ratelimit-reset-tokens": "2h0m0s"})
        return item

    loop = asyncio.get_running_loop()
    started = loop.time()
    executor = AsyncExecutor(
        generate, concurrency=1, exit_on_error=False, enable_dynamic_concurrency=False
    )
    _, details = await executor.execute(["a", "b"])
    assert loop.time() - started < DEFAULT_MAX_HINT
    assert [d.status for d in details] == [S.FAILED, S.DID_NOT_RUN]
