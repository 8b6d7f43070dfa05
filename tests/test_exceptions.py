"""Error classification, retry hints and the retry policy, with exceptions shaped like
the ones real SDKs raise (openai, anthropic, httpx) but defined here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from evalexec import exceptions as ee
from evalexec._retry import Backoff, Verdict, decide
from evalexec.exceptions import ErrorKind, ErrorReport, classify_error, retry_hint_seconds

# 2015-10-21T07:28:00Z as a Unix timestamp
MOMENT = 1445412480.0
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def at(seconds_before_moment: float) -> Any:
    """A wall clock that reads `seconds_before_moment` seconds before MOMENT."""
    return lambda: MOMENT - seconds_before_moment


class FakeResponse:
    """An httpx-like response: a status code and headers."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = dict(headers or {})


class APIStatusError(Exception):
    """Shaped like the SDKs' `APIStatusError`: `status_code`, `response` and `body`."""

    def __init__(
        self,
        message: str = "api error",
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
            self.response = FakeResponse(status_code, headers)
        self.body = body


class RateLimitError(APIStatusError):
    """A class named like openai's and anthropic's 429 error; not evalexec's."""


class ProviderRateLimit(RateLimitError):
    """A subclass whose own name says nothing: a base class is named `RateLimitError`."""


class APIConnectionError(Exception):
    """Shaped like the SDKs' connection error: no status code."""


class OnlyResponse(Exception):
    """An httpx-style `HTTPStatusError`: the status lives on `response` only."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = FakeResponse(status_code, headers)


class WithStatus(Exception):
    """aiohttp-style: the status is in a `status` attribute."""

    def __init__(self, status: object) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class WithHeaders(Exception):
    """Headers on the exception itself, or on a response without a status."""

    def __init__(self, headers: object, *, on_response: bool = True) -> None:
        super().__init__("limited")
        if on_response:
            self.response = type("Response", (), {"headers": headers})()
        else:
            self.headers = headers


class WithRetryAfter(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("limited")
        self.retry_after = retry_after


# -- classify_error -----------------------------------------------------------------------


def test_evalexec_rate_limit_error_is_a_rate_limit() -> None:
    assert classify_error(ee.RateLimitError("x")) == ErrorReport(ErrorKind.RATE_LIMIT)


def test_evalexec_rate_limit_error_carries_its_retry_after_hint() -> None:
    report = classify_error(ee.RateLimitError("x", retry_after=7.0))
    assert report == ErrorReport(ErrorKind.RATE_LIMIT, None, 7.0)


def test_evalexec_phoenix_exception_is_fatal() -> None:
    assert classify_error(ee.PhoenixException("x")) == ErrorReport(ErrorKind.FATAL)


def test_a_foreign_class_named_rate_limit_error_is_a_rate_limit() -> None:
    assert classify_error(RateLimitError("slow down")).kind is ErrorKind.RATE_LIMIT


def test_a_subclass_of_a_class_named_rate_limit_error_is_a_rate_limit() -> None:
    assert classify_error(ProviderRateLimit("slow down")).kind is ErrorKind.RATE_LIMIT


def test_a_status_code_of_429_is_a_rate_limit() -> None:
    assert classify_error(APIStatusError(status_code=429)) == ErrorReport(ErrorKind.RATE_LIMIT, 429)


def test_a_response_with_429_and_headers_is_a_rate_limit_with_a_hint() -> None:
    exc = OnlyResponse(429, {"retry-after": "7"})
    assert classify_error(exc) == ErrorReport(ErrorKind.RATE_LIMIT, 429, 7.0)


def test_an_aiohttp_style_status_of_429_is_a_rate_limit() -> None:
    assert classify_error(WithStatus(429)) == ErrorReport(ErrorKind.RATE_LIMIT, 429)


@pytest.mark.parametrize("status", [True, "429", 42, 1000])
def test_a_status_that_is_not_an_http_status_is_ignored(status: object) -> None:
    assert classify_error(WithStatus(status)) == ErrorReport(ErrorKind.OTHER)


def test_insufficient_quota_in_the_body_means_the_quota_is_exhausted() -> None:
    exc = RateLimitError(
        "You exceeded your current quota",
        status_code=429,
        body={"error": {"code": "insufficient_quota", "type": "insufficient_quota"}},
    )
    assert classify_error(exc) == ErrorReport(ErrorKind.QUOTA_EXHAUSTED, 429)


def test_insufficient_quota_as_a_code_attribute_means_the_quota_is_exhausted() -> None:
    exc = APIStatusError("limited", status_code=429)
    exc.code = "insufficient_quota"  # type: ignore[attr-defined]
    assert classify_error(exc).kind is ErrorKind.QUOTA_EXHAUSTED


def test_a_429_with_another_code_is_a_plain_rate_limit() -> None:
    exc = RateLimitError(
        "Rate limit reached", status_code=429, body={"error": {"code": "rate_limit_exceeded"}}
    )
    assert classify_error(exc).kind is ErrorKind.RATE_LIMIT


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_server_errors_and_overload_are_transient(status: int) -> None:
    assert classify_error(APIStatusError(status_code=status)) == ErrorReport(
        ErrorKind.TRANSIENT, status
    )


@pytest.mark.parametrize("status", [500, 503, 529])
def test_server_errors_on_the_response_only_are_transient(status: int) -> None:
    assert classify_error(OnlyResponse(status)).kind is ErrorKind.TRANSIENT


def test_a_503_with_retry_after_carries_the_hint() -> None:
    exc = APIStatusError(status_code=503, headers={"Retry-After": "3"})
    assert classify_error(exc) == ErrorReport(ErrorKind.TRANSIENT, 503, 3.0)


def test_a_class_named_api_connection_error_is_transient() -> None:
    assert classify_error(APIConnectionError("reset")) == ErrorReport(ErrorKind.TRANSIENT)


@pytest.mark.parametrize(
    "exc", [ConnectionError("x"), ConnectionResetError("x"), ConnectionRefusedError("x")]
)
def test_builtin_connection_errors_are_transient(exc: BaseException) -> None:
    assert classify_error(exc) == ErrorReport(ErrorKind.TRANSIENT)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_fatal(status: int) -> None:
    assert classify_error(APIStatusError(status_code=status)) == ErrorReport(
        ErrorKind.FATAL, status
    )


def test_a_plain_value_error_is_other() -> None:
    assert classify_error(ValueError("bad json")) == ErrorReport(ErrorKind.OTHER)


def test_phoenix_own_exceptions_are_fatal_and_rate_limits() -> None:
    px_exceptions = pytest.importorskip(
        "phoenix.evals.exceptions", reason="arize-phoenix-evals is not installed"
    )
    px_rate_limiters = pytest.importorskip(
        "phoenix.evals.rate_limiters", reason="arize-phoenix-evals is not installed"
    )
    assert classify_error(px_exceptions.PhoenixException("x")).kind is ErrorKind.FATAL
    assert classify_error(px_rate_limiters.RateLimitError("x")).kind is ErrorKind.RATE_LIMIT


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        (ErrorKind.RATE_LIMIT, True),
        (ErrorKind.QUOTA_EXHAUSTED, False),
        (ErrorKind.TRANSIENT, True),
        (ErrorKind.FATAL, False),
        (ErrorKind.OTHER, True),
    ],
)
def test_only_fatal_errors_and_exhausted_quota_are_not_retryable(
    kind: ErrorKind, retryable: bool
) -> None:
    assert kind.retryable is retryable


# -- retry_hint_seconds -------------------------------------------------------------------


def test_a_retry_after_attribute_is_the_hint() -> None:
    assert retry_hint_seconds(WithRetryAfter(7.0)) == 7.0
    assert retry_hint_seconds(WithRetryAfter(3)) == 3.0


@pytest.mark.parametrize("value", [None, -1.0, float("inf"), float("nan"), "7", True])
def test_a_retry_after_attribute_that_is_not_a_duration_is_ignored(value: object) -> None:
    assert retry_hint_seconds(WithRetryAfter(value)) is None


def test_retry_after_ms_is_read_in_milliseconds() -> None:
    assert retry_hint_seconds(WithHeaders({"retry-after-ms": "1500"})) == 1.5


def test_retry_after_is_read_in_seconds() -> None:
    assert retry_hint_seconds(WithHeaders({"retry-after": "7"})) == 7.0


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after": "7", "retry-after-ms": "250"}
    assert retry_hint_seconds(WithHeaders(headers)) == 0.25


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    exc = WithHeaders({"Retry-After": HTTP_DATE})
    assert retry_hint_seconds(exc, at(30.0)) == 30.0


def test_retry_after_as_a_past_http_date_is_zero() -> None:
    exc = WithHeaders({"Retry-After": HTTP_DATE})
    assert retry_hint_seconds(exc, at(-5.0)) == 0.0


def test_the_http_date_hint_is_read_by_classify_error_with_its_wall_clock() -> None:
    exc = APIStatusError(status_code=429, headers={"Retry-After": HTTP_DATE})
    assert classify_error(exc, wall_clock=at(12.0)) == ErrorReport(ErrorKind.RATE_LIMIT, 429, 12.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("6m0s", 360.0), ("20ms", 0.02), ("1s", 1.0), ("1h2m3s", 3723.0), ("2.5", 2.5)],
)
def test_openai_reset_durations_are_parsed(value: str, seconds: float) -> None:
    exc = WithHeaders({"x-ratelimit-reset-requests": value})
    assert retry_hint_seconds(exc) == seconds


def test_the_longest_of_several_resets_wins() -> None:
    headers = {
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert retry_hint_seconds(WithHeaders(headers)) == 360.0


def test_retry_after_wins_over_reset_headers() -> None:
    headers = {"x-ratelimit-reset-tokens": "6m0s", "retry-after": "2"}
    assert retry_hint_seconds(WithHeaders(headers)) == 2.0


def test_a_garbage_retry_after_falls_back_to_the_reset_headers() -> None:
    headers = {"retry-after": "soon", "x-ratelimit-reset-requests": "2s"}
    assert retry_hint_seconds(WithHeaders(headers)) == 2.0


def test_fatal_errors_carry_no_hint() -> None:
    exc = APIStatusError(status_code=400, headers={"retry-after": "5"})
    assert classify_error(exc) == ErrorReport(ErrorKind.FATAL, 400)


def test_anthropic_reset_timestamps_are_the_time_until_then() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": "2015-10-21T07:28:00Z",
        "anthropic-ratelimit-tokens-reset": "2015-10-21T07:27:30Z",
        "anthropic-ratelimit-requests-remaining": "0",
    }
    assert retry_hint_seconds(WithHeaders(headers), at(45.0)) == 45.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after-ms": "abc"},
        {"retry-after": "soon"},
        {"retry-after": "-3"},
        {"x-ratelimit-reset-requests": "later"},
        {"x-ratelimit-reset-requests": "6 minutes"},
        {"anthropic-ratelimit-requests-reset": "2015-13-45T99:00:00Z"},
        {"anthropic-ratelimit-requests-reset": "2015-10-21T07:28:00"},
        {"x-ratelimit-remaining-requests": "0"},
        {},
    ],
)
def test_garbage_or_missing_headers_give_no_hint(headers: dict[str, str]) -> None:
    assert retry_hint_seconds(WithHeaders(headers), at(10.0)) is None


def test_header_names_are_matched_whatever_their_case() -> None:
    assert retry_hint_seconds(WithHeaders({"Retry-After-Ms": "1500"})) == 1.5
    assert retry_hint_seconds(WithHeaders({"X-RateLimit-Reset-Tokens": "6m0s"})) == 360.0


def test_headers_on_the_exception_itself_are_read() -> None:
    assert retry_hint_seconds(WithHeaders({"retry-after": "4"}, on_response=False)) == 4.0


def test_the_attribute_wins_over_headers() -> None:
    exc = WithHeaders({"retry-after": "4"})
    exc.retry_after = 1.0  # type: ignore[attr-defined]
    assert retry_hint_seconds(exc) == 1.0


@pytest.mark.parametrize("headers", [None, 42, ["retry-after", "4"]])
def test_headers_that_are_not_a_mapping_give_no_hint(headers: object) -> None:
    assert retry_hint_seconds(WithHeaders(headers)) is None


def test_an_exception_without_hints_gives_none() -> None:
    assert retry_hint_seconds(ValueError("x")) is None


# -- Backoff ------------------------------------------------------------------------------


def never() -> float:
    return 0.0


def always() -> float:
    return 1.0


def half() -> float:
    return 0.5


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


def test_a_hint_replaces_the_backoff_whether_shorter_or_longer() -> None:
    """The provider's hint is the wait: 15 ms when it says 15 ms, 120 s past the maximum."""
    for hint in (0.015, 3.0, 120.0):
        verdict = decide(ee.RateLimitError("x", retry_after=hint), 4, 10, Backoff())
        assert verdict.delay == hint


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1.0}, "Backoff.initial must be a finite number >= 0, got -1.0"),
        ({"maximum": float("inf")}, "Backoff.maximum must be a finite number >= 0, got inf"),
        ({"multiplier": 0.5}, "Backoff.multiplier must be >= 1, got 0.5"),
        ({"jitter": 1.5}, "Backoff.jitter must be in [0, 1], got 1.5"),
        ({"jitter": -0.1}, "Backoff.jitter must be in [0, 1], got -0.1"),
    ],
)
def test_bad_backoff_arguments_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Backoff(**kwargs)


# -- decide -------------------------------------------------------------------------------

NO_JITTER = Backoff(jitter=0.0)


def test_other_errors_are_retried_at_once() -> None:
    verdict = decide(ValueError("x"), 3, 10, NO_JITTER)
    assert verdict == Verdict(ErrorReport(ErrorKind.OTHER), retry=True, delay=0.0)


def test_rate_limits_are_retried_after_a_backoff() -> None:
    verdict = decide(ee.RateLimitError("x"), 2, 10, NO_JITTER)
    assert verdict == Verdict(ErrorReport(ErrorKind.RATE_LIMIT), retry=True, delay=4.0)


def test_rate_limit_hints_set_the_delay_and_a_cooldown() -> None:
    verdict = decide(ee.RateLimitError("x", retry_after=7.0), 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT, None, 7.0), retry=True, delay=7.0, cooldown=7.0
    )


def test_transient_errors_are_retried_after_a_backoff_without_a_cooldown() -> None:
    verdict = decide(ConnectionResetError("x"), 1, 10, NO_JITTER)
    assert verdict == Verdict(ErrorReport(ErrorKind.TRANSIENT), retry=True, delay=2.0)


def test_transient_hints_set_the_delay_but_no_cooldown() -> None:
    exc = APIStatusError(status_code=503, headers={"retry-after": "9"})
    verdict = decide(exc, 0, 10, NO_JITTER)
    assert verdict == Verdict(ErrorReport(ErrorKind.TRANSIENT, 503, 9.0), retry=True, delay=9.0)


def test_the_rng_reaches_the_backoff() -> None:
    verdict = decide(ee.RateLimitError("x"), 0, 10, Backoff(), rng=half)
    assert verdict.delay == 0.75


def test_without_backoff_only_the_hint_delays_a_retry() -> None:
    assert decide(ee.RateLimitError("x"), 0, 10, None).delay == 0.0
    assert decide(ee.RateLimitError("x", retry_after=7.0), 0, 10, None).delay == 7.0
    assert decide(ConnectionResetError("x"), 4, 10, None).delay == 0.0


def test_no_retry_once_max_retries_are_used_up() -> None:
    assert decide(ValueError("x"), 10, 10, NO_JITTER) == Verdict(
        ErrorReport(ErrorKind.OTHER), retry=False
    )
    assert decide(ValueError("x"), 9, 10, NO_JITTER).retry is True
    assert decide(ValueError("x"), 0, 0, NO_JITTER).retry is False


def test_a_rate_limit_out_of_retries_still_reports_its_cooldown() -> None:
    verdict = decide(ee.RateLimitError("x", retry_after=5.0), 3, 3, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.RATE_LIMIT, None, 5.0), retry=False, cooldown=5.0
    )


def test_fatal_errors_are_not_retried_and_do_not_stop_the_run() -> None:
    verdict = decide(APIStatusError(status_code=401), 0, 10, NO_JITTER)
    assert verdict == Verdict(ErrorReport(ErrorKind.FATAL, 401), retry=False)


def test_an_exhausted_quota_is_not_retried_and_stops_the_run() -> None:
    exc = RateLimitError(status_code=429, body={"error": {"code": "insufficient_quota"}})
    verdict = decide(exc, 0, 10, NO_JITTER)
    assert verdict == Verdict(
        ErrorReport(ErrorKind.QUOTA_EXHAUSTED, 429), retry=False, stop_run=True
    )
