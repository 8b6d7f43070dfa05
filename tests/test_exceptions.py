"""Error classification, retry hints and `describe_error`, with exceptions shaped like the
ones real SDKs raise (openai, anthropic, httpx) but defined here, and hostile ones whose
attributes raise when read. The retry policy's own tests are in test_retry.py."""

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
from evalexec.exceptions import (
    ErrorKind,
    ErrorReport,
    classify_error,
    describe_error,
    retry_hint_seconds,
)

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
        (ErrorKind.MISUSE, False),
        (ErrorKind.OTHER, True),
    ],
)
def test_only_fatal_errors_misuse_and_exhausted_quota_are_not_retryable(
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


def test_a_retry_after_attribute_too_large_for_a_float_is_ignored() -> None:
    assert retry_hint_seconds(WithRetryAfter(10**400)) is None


def test_a_huge_but_finite_hint_is_reported_as_it_is() -> None:
    """How long is too long is the retry policy's call (`Backoff.max_hint`), not this one's."""
    assert retry_hint_seconds(WithRetryAfter(1e308)) == 1e308
    assert retry_hint_seconds(WithHeaders({"retry-after": "1e10"})) == 1e10


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400", "1" * 500, "Infinity"])
def test_a_retry_after_that_is_not_finite_is_ignored(value: str) -> None:
    assert retry_hint_seconds(WithHeaders({"retry-after": value})) is None


def test_an_http_date_far_ahead_is_the_time_until_then() -> None:
    exc = WithHeaders({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert retry_hint_seconds(exc, at(0.0)) == 253402300799.0 - MOMENT


@pytest.mark.parametrize(
    "value", ["Wed, 21 Oct 99999 07:28:00 GMT", "Wed, 21 Oct 2015 99:28:00 GMT", "Wed, 21"]
)
def test_an_http_date_that_does_not_exist_is_ignored(value: str) -> None:
    assert retry_hint_seconds(WithHeaders({"retry-after": value}), at(0.0)) is None


@pytest.mark.parametrize(
    ("value", "seconds"), [("1445412510", 30.0), ("1445412510000", 30.0), ("1445412470", 0.0)]
)
def test_a_reset_given_as_a_unix_timestamp_is_the_time_until_then(
    value: str, seconds: float
) -> None:
    """A reset of 10**9 s (31 years) or more is a timestamp, as OpenRouter-style servers
    send; in milliseconds from 10**12 on."""
    exc = WithHeaders({"x-ratelimit-reset": value})
    assert retry_hint_seconds(exc, at(0.0)) == seconds


def test_headers_read_through_get_alone_give_hints() -> None:
    class GetOnly:
        def get(self, name: str) -> str | None:
            return {"retry-after": "4"}.get(name)

    assert retry_hint_seconds(WithHeaders(GetOnly())) == 4.0


def test_bytes_header_values_are_read() -> None:
    assert retry_hint_seconds(WithHeaders({b"retry-after": b"4"})) == 4.0


# -- NestedRunError and misuse of event loops ---------------------------------------------

WRONG_LOOP = (
    "the async client was created or first used on another event loop; create it inside "
    "the running loop (in the function or per run), or use the sync function with "
    "SyncExecutor"
)
NESTED_RUN = (
    "a blocking run (executor.run() or asyncio.run()) was called inside a running event "
    "loop; await executor.execute(inputs) there instead, or apply nest_asyncio"
)


def test_nested_run_error_is_a_runtime_error_exported_from_exceptions() -> None:
    assert issubclass(ee.NestedRunError, RuntimeError)
    assert not issubclass(ee.NestedRunError, ee.PhoenixException)
    assert "NestedRunError" in ee.__all__


def test_a_nested_run_error_is_misuse() -> None:
    report = classify_error(ee.NestedRunError("run() inside a running loop"))
    assert report == ErrorReport(ErrorKind.MISUSE, advice=NESTED_RUN)


def test_asyncio_run_inside_a_running_loop_is_misuse() -> None:
    async def nested() -> None:
        coroutine = asyncio.sleep(0)
        try:
            asyncio.run(coroutine)
        finally:
            coroutine.close()

    with pytest.raises(RuntimeError) as caught:
        asyncio.run(nested())
    assert classify_error(caught.value) == ErrorReport(ErrorKind.MISUSE, advice=NESTED_RUN)


def test_a_lock_used_on_a_second_event_loop_is_misuse() -> None:
    lock = asyncio.Lock()

    async def contend() -> None:
        async def hold() -> None:
            async with lock:
                await asyncio.sleep(0)

        await asyncio.gather(hold(), hold())

    asyncio.run(contend())
    with pytest.raises(RuntimeError, match="is bound to a different event loop") as caught:
        asyncio.run(contend())
    assert classify_error(caught.value) == ErrorReport(ErrorKind.MISUSE, advice=WRONG_LOOP)


def test_a_closed_event_loop_is_misuse() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed") as caught:
        loop.call_soon(print)
    assert classify_error(caught.value) == ErrorReport(ErrorKind.MISUSE, advice=WRONG_LOOP)


def test_a_future_of_another_loop_is_misuse() -> None:
    other = asyncio.new_event_loop()
    try:
        foreign = other.create_future()

        async def wait_for_it() -> None:
            await foreign

        with pytest.raises(RuntimeError, match="attached to a different loop") as caught:
            asyncio.run(wait_for_it())
    finally:
        other.close()
    assert classify_error(caught.value).kind is ErrorKind.MISUSE


def test_a_loop_error_wrapped_by_an_sdk_connection_error_is_misuse() -> None:
    """openai and anthropic raise `APIConnectionError(...) from err` around what httpx
    raised: the loop error is the cause, and retrying the wrapper cannot help."""
    try:
        try:
            raise RuntimeError("Event loop is closed")
        except RuntimeError as err:
            raise APIConnectionError("Connection error.") from err
    except APIConnectionError as exc:
        wrapped = exc
    assert classify_error(wrapped) == ErrorReport(ErrorKind.MISUSE, advice=WRONG_LOOP)


def test_a_loop_error_raised_while_handling_another_is_misuse() -> None:
    """Some wrappers raise their own error inside `except` without `from`: the loop
    error is then the context, shown under it in the traceback."""

    def fail() -> None:
        try:
            raise RuntimeError("Event loop is closed")
        except RuntimeError:
            raise APIConnectionError("Connection error.")  # noqa: B904

    with pytest.raises(APIConnectionError) as caught:
        fail()
    assert classify_error(caught.value).kind is ErrorKind.MISUSE


def test_a_loop_error_hidden_with_from_none_is_not_misuse() -> None:
    def fail() -> None:
        try:
            raise RuntimeError("Event loop is closed")
        except RuntimeError:
            raise ValueError("bad json") from None

    with pytest.raises(ValueError, match="bad json") as caught:
        fail()
    assert classify_error(caught.value) == ErrorReport(ErrorKind.OTHER)


def test_a_cycle_of_causes_is_walked_once() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert classify_error(first) == ErrorReport(ErrorKind.OTHER)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("boom"),
        RuntimeError(),
        ValueError("Event loop is closed"),  # the words, but not asyncio's RuntimeError
    ],
)
def test_other_runtime_errors_and_lookalikes_are_not_misuse(exc: BaseException) -> None:
    assert classify_error(exc) == ErrorReport(ErrorKind.OTHER)


# -- classification never raises ----------------------------------------------------------


class Broken(Exception):
    """Raised by the hostile attributes below; never an AttributeError."""


def explode(*_: object) -> Any:
    raise Broken("read me if you can")


def raising_property() -> Any:
    """An attribute that raises when read; setting it (as `__init__` may) is ignored."""
    return property(explode, lambda self, value: None)


class BrokenStrRateLimit(RateLimitError):
    __str__ = explode


class BrokenReprRateLimit(RateLimitError):
    __repr__ = explode


def sdk_error(cls: type[Exception] = RateLimitError, **attributes: object) -> Exception:
    """An SDK-shaped 429 of class `cls` whose listed attributes raise when read."""
    hostile = type(cls.__name__, (cls,), {name: raising_property() for name in attributes})
    return hostile("limited", status_code=429, headers={"retry-after": "3"})  # type: ignore[call-arg]


def test_a_rate_limit_whose_str_raises_is_still_a_rate_limit() -> None:
    exc = BrokenStrRateLimit("x", status_code=429, headers={"retry-after": "3"})
    assert classify_error(exc) == ErrorReport(ErrorKind.RATE_LIMIT, 429, 3.0)


def test_a_broken_str_does_not_hide_an_exhausted_quota_in_the_body() -> None:
    exc = BrokenStrRateLimit("x", status_code=429, body={"error": {"code": "insufficient_quota"}})
    assert classify_error(exc) == ErrorReport(ErrorKind.QUOTA_EXHAUSTED, 429)


@pytest.mark.parametrize("name", ["code", "type", "body", "retry_after"])
def test_an_attribute_that_raises_counts_as_absent(name: str) -> None:
    assert classify_error(sdk_error(**{name: None})) == ErrorReport(ErrorKind.RATE_LIMIT, 429, 3.0)


def test_a_status_code_that_raises_leaves_the_response_status() -> None:
    assert classify_error(sdk_error(status_code=None)) == ErrorReport(
        ErrorKind.RATE_LIMIT, 429, 3.0
    )


def test_a_response_that_raises_when_read_leaves_the_class_name() -> None:
    """httpx's `HTTPError.request` raises RuntimeError when unset; SDK look-alikes may too."""
    exc = sdk_error(response=None, status_code=None)
    assert classify_error(exc) == ErrorReport(ErrorKind.RATE_LIMIT)


class ResponseWith:
    def __init__(self, status_code: object = 429, **hostile: object) -> None:
        self.status_code = status_code
        for name, value in hostile.items():
            setattr(self, name, value)


class BrokenHeadersResponse:
    status_code = 429
    headers = raising_property()


class ItemsRaise(dict[str, str]):
    def items(self) -> Any:
        raise Broken("no items")

    def get(self, *_: object) -> Any:
        raise Broken("no get")


class HostileValue:
    __str__ = __repr__ = __eq__ = __hash__ = __float__ = __int__ = explode  # type: ignore[assignment]


class Pairs:
    """Headers whose `items()` returns whatever it was given."""

    def __init__(self, items: object) -> None:
        self._items = items

    def items(self) -> object:
        return self._items


def with_response(response: object) -> Exception:
    exc = RateLimitError("limited")
    exc.response = response  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    "response",
    [
        BrokenHeadersResponse(),
        ResponseWith(headers=ItemsRaise()),
        ResponseWith(headers={"retry-after": HostileValue()}),
        ResponseWith(headers=Pairs([(HostileValue(), "3")])),
        ResponseWith(headers=Pairs([("retry-after",), 1, explode])),
        ResponseWith(headers=Pairs(HostileValue())),
    ],
)
def test_headers_that_raise_or_misbehave_give_no_hint(response: object) -> None:
    assert classify_error(with_response(response)) == ErrorReport(ErrorKind.RATE_LIMIT, 429)


def test_a_status_of_a_hostile_int_subclass_is_read_as_its_value() -> None:
    class Status(int):
        __eq__ = __hash__ = __le__ = __ge__ = __lt__ = __gt__ = __repr__ = explode  # type: ignore[assignment]

    exc = Exception("limited")
    exc.status = Status(429)  # type: ignore[attr-defined]
    assert classify_error(exc) == ErrorReport(ErrorKind.RATE_LIMIT, 429)


def test_an_exception_whose_class_attribute_raises_is_classified() -> None:
    class Masked(ConnectionError):
        __class__ = raising_property()  # type: ignore[assignment]

    assert classify_error(Masked("reset")) == ErrorReport(ErrorKind.TRANSIENT)


def test_an_exception_whose_every_attribute_raises_is_other() -> None:
    class Hostile(Exception):
        def __getattribute__(self, name: str) -> Any:
            raise Broken(name)

    assert classify_error(Hostile("x")) == ErrorReport(ErrorKind.OTHER)


# -- describe_error -----------------------------------------------------------------------


def test_describe_error_is_the_repr() -> None:
    assert describe_error(ValueError("bad json")) == "ValueError('bad json')"


def test_an_exception_whose_repr_raises_is_described_by_its_type() -> None:
    assert describe_error(BrokenReprRateLimit("x")) == "<BrokenReprRateLimit whose repr() failed>"


def test_a_repr_that_is_not_a_string_is_described_by_its_type() -> None:
    class NotText(Exception):
        def __repr__(self) -> Any:
            return 42

    assert describe_error(NotText()) == "<NotText whose repr() failed>"


def test_a_long_repr_is_cut_and_says_how_much_was_cut() -> None:
    exc = ValueError("x" * 10_000_000)
    text = describe_error(exc)
    assert text == "ValueError('" + "x" * 488 + "... [9999514 characters cut]"


def test_the_limit_is_the_number_of_characters_kept() -> None:
    assert describe_error(ValueError("abcdef"), limit=5) == "Value... [15 characters cut]"
    assert describe_error(ValueError("abcdef"), limit=0) == "... [20 characters cut]"
    assert describe_error(ValueError("abcdef"), limit=17) == "ValueError('abcdef')"[:17] + (
        "... [3 characters cut]"
    )
    assert describe_error(ValueError("abcdef"), limit=20) == "ValueError('abcdef')"


@pytest.mark.parametrize("limit", [-1, 2.5, True, "500"])
def test_a_bad_limit_is_refused(limit: Any) -> None:
    message = f"describe_error: limit must be an int >= 0, got {limit!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        describe_error(ValueError("x"), limit=limit)


# -- never raises, whatever the exception carries -----------------------------------------

ATTRIBUTES = (
    "status_code",
    "status",
    "response",
    "headers",
    "body",
    "code",
    "type",
    "retry_after",
    "__cause__",
    "__context__",
)
hostile_values = st.deferred(
    lambda: st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from(
            ["429", "1e10", "inf", "nan", "-5", "6m0s", "insufficient_quota", HTTP_DATE]
        ),
        st.binary(max_size=10),
        st.builds(HostileValue),
        st.builds(ValueError, st.text(max_size=10)),
        st.builds(RuntimeError, st.sampled_from(["Event loop is closed", "boom"])),
        st.dictionaries(
            st.sampled_from(["error", "code", "type", "retry-after", "x-ratelimit-reset-tokens"]),
            hostile_values,
            max_size=3,
        ),
        st.builds(ResponseWith, hostile_values, headers=hostile_values),
        st.builds(BrokenHeadersResponse),
        st.builds(ItemsRaise, st.just({"retry-after": "3"})),
    )
)
specs = st.dictionaries(
    st.sampled_from(ATTRIBUTES),
    st.one_of(st.just("raise"), st.tuples(st.just("value"), hostile_values)),
    max_size=6,
)
bases = st.sampled_from(
    [Exception, RuntimeError, ConnectionError, ee.RateLimitError, ee.PhoenixException]
)
methods = st.sets(st.sampled_from(["__str__", "__repr__", "__getattr__", "__class__"]))


def build_hostile(
    base: type[Exception], named: str, spec: dict[str, Any], broken: set[str]
) -> Exception:
    namespace: dict[str, Any] = {name: explode for name in broken if name != "__class__"}
    if "__class__" in broken:
        namespace["__class__"] = raising_property()
    for name, how in spec.items():
        if how == "raise":
            namespace[name] = raising_property()
        elif not name.startswith("__"):
            namespace[name] = how[1]
    exc = type(named, (base,), namespace)("x")
    for name, how in spec.items():
        if how != "raise" and name.startswith("__") and issubclass(type(how[1]), BaseException):
            setattr(exc, name, how[1])
    return exc


@given(
    base=bases,
    named=st.sampled_from(["RateLimitError", "APIConnectionError", "Hostile"]),
    spec=specs,
    broken=methods,
    limit=st.integers(min_value=0, max_value=600),
)
def test_classify_and_describe_never_raise_for_hostile_exceptions(
    base: type[Exception], named: str, spec: dict[str, Any], broken: set[str], limit: int
) -> None:
    exc = build_hostile(base, named, spec, broken)
    report = classify_error(exc, wall_clock=at(0.0))
    assert type(report) is ErrorReport
    assert report.retry_after is None or (
        math.isfinite(report.retry_after) and report.retry_after >= 0
    )
    text = describe_error(exc, limit)
    assert type(text) is str
    assert len(text) <= limit or text[:limit] + "... [" in text
