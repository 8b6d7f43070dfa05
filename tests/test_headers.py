"""Reading OpenAI's and Anthropic's rate-limit headers into a `RateLimitInfo`, from the
header sets the providers document and send; garbage is ignored, nothing raises."""

from __future__ import annotations

import email.message
import os
import time
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evalexec._headers import RateLimitInfo, duration_seconds, parse_rate_limit_headers


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# The sample table of OpenAI's "Rate limits" guide, section "Rate limits in headers".
OPENAI_GUIDE = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}

# A chat-completions response's headers as a user posted them on the OpenAI forum (2025).
OPENAI_RESPONSE = {
    "date": "Mon, 26 May 2025 05:00:04 GMT",
    "content-type": "application/json",
    "transfer-encoding": "chunked",
    "connection": "keep-alive",
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "160000",
    "x-ratelimit-limit-tokens_usage_based": "160000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "159976",
    "x-ratelimit-remaining-tokens_usage_based": "159976",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "9ms",
    "x-ratelimit-reset-tokens_usage_based": "9ms",
}

# A Messages API response's headers (Anthropic, August 2025), as recorded in a client's tests.
ANTHROPIC_RESPONSE = {
    "date": "Thu, 21 Aug 2025 12:41:00 GMT",
    "content-type": "application/json",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "80000",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "16000",
    "anthropic-ratelimit-output-tokens-remaining": "16000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "96000",
    "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
    "via": "1.1 google",
    "server": "cloudflare",
}
ANTHROPIC_SENT_AT = moment("2025-08-21T12:41:00+00:00")

OPENAI_GUIDE_INFO = RateLimitInfo(
    limit_requests=60,
    limit_tokens=150000,
    remaining_requests=59,
    remaining_tokens=149984,
    reset_requests_seconds=1.0,
    reset_tokens_seconds=360.0,
)


def test_the_openai_guides_sample_headers() -> None:
    assert parse_rate_limit_headers(OPENAI_GUIDE, now=0.0) == OPENAI_GUIDE_INFO


def test_a_real_openai_response() -> None:
    assert parse_rate_limit_headers(OPENAI_RESPONSE, now=0.0) == RateLimitInfo(
        limit_requests=5000,
        limit_tokens=160000,
        remaining_requests=4999,
        remaining_tokens=159976,
        reset_requests_seconds=0.012,
        reset_tokens_seconds=0.009,
    )


def test_a_real_anthropic_response_read_half_a_minute_before_it_was_sent() -> None:
    assert parse_rate_limit_headers(
        ANTHROPIC_RESPONSE, now=ANTHROPIC_SENT_AT - 30.0
    ) == RateLimitInfo(
        limit_requests=1000,
        limit_tokens=96000,
        remaining_requests=999,
        remaining_tokens=96000,
        reset_requests_seconds=29.0,
        reset_tokens_seconds=29.0,
        limit_input_tokens=80000,
        remaining_input_tokens=80000,
        reset_input_tokens_seconds=29.0,
        limit_output_tokens=16000,
        remaining_output_tokens=16000,
        reset_output_tokens_seconds=30.0,
    )


def test_anthropic_resets_already_past_are_zero() -> None:
    info = parse_rate_limit_headers(ANTHROPIC_RESPONSE, now=ANTHROPIC_SENT_AT)
    assert info is not None
    assert (info.reset_requests_seconds, info.reset_output_tokens_seconds) == (0.0, 0.0)


def test_anthropic_timestamps_with_fractions_offsets_and_lowercase_letters() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": "2025-08-21T12:41:30.250Z",
        "anthropic-ratelimit-tokens-reset": "2025-08-21T14:41:30+02:00",
        "anthropic-ratelimit-input-tokens-reset": "2025-08-21t12:41:30z",
    }
    assert parse_rate_limit_headers(headers, now=ANTHROPIC_SENT_AT) == RateLimitInfo(
        reset_requests_seconds=30.25, reset_tokens_seconds=30.0, reset_input_tokens_seconds=30.0
    )


def test_azure_openais_minus_one_counts_are_ignored() -> None:
    headers = {
        "x-ratelimit-limit-tokens": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-tokens": "0",
    }
    assert parse_rate_limit_headers(headers, now=0.0) == RateLimitInfo(reset_tokens_seconds=0.0)


def test_openai_style_names_win_where_both_families_say_the_same_thing() -> None:
    headers = {"x-ratelimit-limit-requests": "60", "anthropic-ratelimit-requests-limit": "1000"}
    assert parse_rate_limit_headers(headers, now=0.0) == RateLimitInfo(limit_requests=60)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2m59.56s", 179.56),
        ("1.5us", 1.5e-6),
        ("2µs", 2e-6),
        ("500ns", 5e-7),
        (" 7s ", 7.0),
    ],
)
def test_go_durations_are_read_in_seconds(value: str, seconds: float) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "s", "6 minutes", "-1s", "1h-2m", "1d", "5", "1e3s"])
def test_what_is_not_a_go_duration_is_none(value: str) -> None:
    assert duration_seconds(value) is None


def test_bare_seconds_are_read_as_openai_compatible_servers_send_them() -> None:
    info = parse_rate_limit_headers({"x-ratelimit-reset-requests": "2.5"}, now=0.0)
    assert info == RateLimitInfo(reset_requests_seconds=2.5)


def test_a_bare_reset_as_large_as_a_timestamp_is_a_timestamp() -> None:
    info = parse_rate_limit_headers({"x-ratelimit-reset-requests": "1755780090"}, now=1755780060.0)
    assert info == RateLimitInfo(reset_requests_seconds=30.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-ratelimit-limit-requests", "sixty"),
        ("x-ratelimit-limit-requests", "60.5"),
        ("x-ratelimit-limit-requests", "1e3"),
        ("x-ratelimit-limit-requests", ""),
        ("x-ratelimit-remaining-tokens", "-3"),
        ("x-ratelimit-remaining-tokens", "9" * 40),
        ("x-ratelimit-reset-tokens", "soon"),
        ("x-ratelimit-reset-tokens", "6 minutes"),
        ("x-ratelimit-reset-tokens", "inf"),
        ("x-ratelimit-reset-tokens", "nan"),
        ("x-ratelimit-reset-tokens", "-1s"),
        ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59"),  # no zone
        ("anthropic-ratelimit-requests-reset", "2025-13-45T99:00:00Z"),
        ("anthropic-ratelimit-requests-reset", "30"),
        ("anthropic-ratelimit-requests-reset", "Thu, 21 Aug 2025 12:41:00 GMT"),
        ("anthropic-ratelimit-tokens-limit", "ninety thousand"),
    ],
)
def test_a_garbage_value_is_ignored(name: str, value: str) -> None:
    assert parse_rate_limit_headers({name: value}, now=0.0) is None
    assert parse_rate_limit_headers({**OPENAI_GUIDE, name: value}, now=0.0) is not None


def test_headers_without_rate_limits_give_none() -> None:
    assert parse_rate_limit_headers({"date": "Mon, 26 May 2025 05:00:04 GMT"}, now=0.0) is None
    assert parse_rate_limit_headers({}, now=0.0) is None


@pytest.mark.parametrize("headers", [None, 42, "x-ratelimit-limit-requests: 60", [("a", "b")]])
def test_what_is_not_headers_gives_none(headers: object) -> None:
    assert parse_rate_limit_headers(headers, now=0.0) is None


# -- the shapes headers come in -----------------------------------------------------------


def test_names_are_matched_whatever_their_case() -> None:
    titled = {name.title(): value for name, value in OPENAI_GUIDE.items()}
    assert parse_rate_limit_headers(titled, now=0.0) == OPENAI_GUIDE_INFO


def test_an_email_message_as_the_standard_library_parses_http_headers() -> None:
    message = email.message.Message()
    for name, value in OPENAI_GUIDE.items():
        message[name.upper()] = value
    assert parse_rate_limit_headers(message, now=0.0) == OPENAI_GUIDE_INFO


def test_an_object_with_only_a_case_insensitive_get() -> None:
    class GetOnly:
        def get(self, name: str) -> str | None:
            return {k.upper(): v for k, v in OPENAI_GUIDE.items()}.get(name.upper())

    assert parse_rate_limit_headers(GetOnly(), now=0.0) == OPENAI_GUIDE_INFO


def test_items_that_raise_fall_back_to_get() -> None:
    class Stubborn(dict[str, str]):
        def items(self) -> Any:
            raise RuntimeError("no")

    assert parse_rate_limit_headers(Stubborn(OPENAI_GUIDE), now=0.0) == OPENAI_GUIDE_INFO


def test_raw_byte_pairs_are_decoded() -> None:
    raw = {name.encode(): value.encode() for name, value in OPENAI_GUIDE.items()}
    assert parse_rate_limit_headers(raw, now=0.0) == OPENAI_GUIDE_INFO


def test_httpx_headers() -> None:
    """The SDKs hand over `httpx.Headers`: a multi-dict with case-insensitive names."""
    try:
        import httpx
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("httpx must be installed in CI (it is in the test extra)")
        pytest.skip("httpx is not installed")
    headers = httpx.Headers([(name.upper(), value) for name, value in ANTHROPIC_RESPONSE.items()])
    info = parse_rate_limit_headers(headers, now=ANTHROPIC_SENT_AT - 30.0)
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_output_tokens_seconds) == (
        1000,
        999,
        30.0,
    )


def test_the_wall_clock_is_read_when_no_now_is_given() -> None:
    target = moment("9999-12-31T00:00:00+00:00")
    before = time.time()
    info = parse_rate_limit_headers({"anthropic-ratelimit-requests-reset": "9999-12-31T00:00:00Z"})
    after = time.time()
    assert info is not None
    assert info.reset_requests_seconds is not None
    assert target - after <= info.reset_requests_seconds <= target - before


# -- never raises -------------------------------------------------------------------------

NAMES = [
    *OPENAI_GUIDE,
    *(name for name in ANTHROPIC_RESPONSE if name.startswith("anthropic-")),
    "retry-after",
]
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["6m0s", "1h2m3.5s", "-1", "2025-08-21T12:40:59Z", "9" * 400, "1e400"]),
    st.binary(max_size=20),
    st.integers(),
    st.none(),
)


@given(
    headers=st.dictionaries(
        st.one_of(st.sampled_from(NAMES), st.text(max_size=20)), values, max_size=12
    ),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_parsing_never_raises_and_reads_only_sane_numbers(
    headers: dict[str, Any], now: float
) -> None:
    info = parse_rate_limit_headers(headers, now=now)
    if info is None:
        return
    for field in RateLimitInfo.__slots__:
        value = getattr(info, field)
        assert value is None or value >= 0
        if field.startswith("reset_") and value is not None:
            assert type(value) is float
        elif value is not None:
            assert type(value) is int
