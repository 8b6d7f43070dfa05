"""Exceptions, and the one place that decides what kind of failure an exception is.

`PhoenixException` and `RateLimitError` mirror the names users know from
``phoenix.evals``. `classify_error` recognises the errors raised by real provider
SDKs (openai, anthropic, httpx-based clients, Phoenix itself) by their shape -- a
class name, an HTTP status, a response's headers -- without importing any of them.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "ErrorKind",
    "ErrorReport",
    "PhoenixException",
    "RateLimitError",
    "classify_error",
    "retry_hint_seconds",
]


class PhoenixException(Exception):
    """Base class of errors that evalexec treats as final: they are not retried."""


class RateLimitError(PhoenixException):
    """The provider refused the call because a rate limit was hit; it is retried.

    ``retry_after`` (seconds), when given, is honoured as a retry hint: the executor
    pauses new calls until it has passed.
    """

    def __init__(self, message: str = "rate limit exceeded", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ErrorKind(enum.Enum):
    """What an exception means for the run, as decided by `classify_error`."""

    RATE_LIMIT = "rate limit"
    """HTTP 429 or a ``RateLimitError``: retried with backoff, slows the run down."""
    QUOTA_EXHAUSTED = "quota exhausted"
    """A 429 that says the account has no quota left: retrying cannot help."""
    TRANSIENT = "transient"
    """Overload or a server/connection error (5xx, 529, connection reset): retried with backoff."""
    FATAL = "fatal"
    """Not worth retrying: a ``PhoenixException`` or a 4xx client error (bad request, auth...)."""
    OTHER = "other"
    """Anything else: retried at once, as Phoenix does."""

    @property
    def retryable(self) -> bool:
        return self not in (ErrorKind.FATAL, ErrorKind.QUOTA_EXHAUSTED)


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """The classification of one exception."""

    kind: ErrorKind
    status_code: int | None = None
    retry_after: float | None = None
    """Seconds the provider asked us to wait, when it said so."""


_RATE_LIMIT_NAMES = frozenset({"RateLimitError", "RateLimitException", "TooManyRequests"})
_TRANSIENT_NAMES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "InternalServerError",
        "OverloadedError",
        "ServiceUnavailableError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "RemoteProtocolError",
        "ServerDisconnectedError",
    }
)
_FATAL_NAMES = frozenset({"PhoenixException"})
_TRANSIENT_STATUSES = frozenset({408, 409, 500, 502, 503, 504, 520, 522, 524, 529})
_QUOTA_MARKERS = ("insufficient_quota", "quota_exceeded", "billing_hard_limit")


def classify_error(
    exc: BaseException, *, wall_clock: Callable[[], float] = time.time
) -> ErrorReport:
    """Decide whether `exc` is a rate limit, exhausted quota, transient, fatal or other.

    ``wall_clock`` is only used to turn an HTTP-date ``Retry-After`` into seconds.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = _status_code(exc)
    if status == 429 or not names.isdisjoint(_RATE_LIMIT_NAMES):
        if _says_quota_exhausted(exc):
            return ErrorReport(ErrorKind.QUOTA_EXHAUSTED, status)
        return ErrorReport(ErrorKind.RATE_LIMIT, status, retry_hint_seconds(exc, wall_clock))
    if not names.isdisjoint(_FATAL_NAMES):
        return ErrorReport(ErrorKind.FATAL, status)
    if status is not None:
        if status in _TRANSIENT_STATUSES or status >= 500:
            return ErrorReport(ErrorKind.TRANSIENT, status, retry_hint_seconds(exc, wall_clock))
        if 400 <= status < 500:
            return ErrorReport(ErrorKind.FATAL, status)
    if not names.isdisjoint(_TRANSIENT_NAMES) or isinstance(exc, ConnectionError):
        return ErrorReport(ErrorKind.TRANSIENT, status)
    return ErrorReport(ErrorKind.OTHER, status)


def _status_code(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        for attribute in ("status_code", "status"):
            value = getattr(holder, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def _says_quota_exhausted(exc: BaseException) -> bool:
    candidates: list[object] = [getattr(exc, "code", None), getattr(exc, "type", None)]
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        candidates.extend((body.get("code"), body.get("type")))
        error = body.get("error")
        if isinstance(error, Mapping):
            candidates.extend((error.get("code"), error.get("type")))
    candidates.append(str(exc))
    text = " ".join(str(c) for c in candidates if c is not None).lower()
    return any(marker in text for marker in _QUOTA_MARKERS)


def retry_hint_seconds(
    exc: BaseException, wall_clock: Callable[[], float] = time.time
) -> float | None:
    """Seconds the provider asked us to wait before retrying, or None if it did not say.

    Reads, in this order: a ``retry_after`` attribute; the ``retry-after-ms``,
    ``retry-after`` (seconds or an HTTP date) and ``x-ratelimit-reset-*`` headers of
    ``exc.response.headers`` (OpenAI durations such as ``6m0s`` or ``20ms``, or an
    RFC 3339 timestamp as Anthropic sends). The longest reset wins.
    """
    attribute = _non_negative(getattr(exc, "retry_after", None))
    if attribute is not None:
        return attribute
    headers = _headers(exc)
    if not headers:
        return None
    milliseconds = _non_negative(_parse_number(headers.get("retry-after-ms")))
    if milliseconds is not None:
        return milliseconds / 1000.0
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        seconds = _non_negative(_parse_number(retry_after))
        if seconds is None:
            seconds = _seconds_until_http_date(retry_after, wall_clock)
        if seconds is not None:
            return seconds
    resets = [
        seconds
        for name, value in headers.items()
        if _is_reset_header(name) and (seconds := _parse_reset(value, wall_clock)) is not None
    ]
    return max(resets) if resets else None


def _is_reset_header(name: str) -> bool:
    return name.startswith("x-ratelimit-reset") or (
        name.startswith("anthropic-ratelimit-") and name.endswith("-reset")
    )


def _headers(exc: BaseException) -> dict[str, str]:
    response = getattr(exc, "response", None)
    raw: Any = getattr(response, "headers", None)
    if raw is None:
        raw = getattr(exc, "headers", None)
    if raw is None:
        return {}
    try:
        items = raw.items()
        return {str(key).lower(): str(value) for key, value in items}
    except (AttributeError, TypeError):
        return {}


def _parse_number(value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _non_negative(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _seconds_until_http_date(value: str, wall_clock: Callable[[], float]) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - wall_clock())


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _parse_reset(value: str, wall_clock: Callable[[], float]) -> float | None:
    """Parse ``6m0s``, ``20ms``, ``1.5`` (seconds) or an RFC 3339 timestamp into seconds."""
    text = value.strip()
    number = _non_negative(_parse_number(text))
    if number is not None:
        return number
    if _DURATION.fullmatch(text):
        return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _seconds_until_http_date(text, wall_clock)
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - wall_clock())
