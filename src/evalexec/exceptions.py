"""Exceptions, and the one place that decides what kind of failure an exception is.

`PhoenixException` and `RateLimitError` mirror the names users know from
``phoenix.evals``. `classify_error` recognises the errors raised by real provider
SDKs (openai, anthropic, httpx-based clients, Phoenix itself) by their shape -- a
class name, an HTTP status, a response's headers -- without importing any of them.

Classification never raises: an exception is user code, and reading it (its ``str()``,
its properties, its response's headers) may fail. What cannot be read counts as absent.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from evalexec._headers import (
    header_lookup,
    header_table,
    number_seconds,
    reset_seconds,
    seconds_until_http_date,
    seconds_until_timestamp,
)

__all__ = [
    "ErrorKind",
    "ErrorReport",
    "NestedRunError",
    "PhoenixException",
    "RateLimitError",
    "classify_error",
    "describe_error",
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


class NestedRunError(RuntimeError):
    """A blocking ``run()`` was called where an event loop is already running.

    The executors raise it instead of starting a second loop inside the first; the fix
    is to ``await executor.execute(inputs)`` there, or to apply ``nest_asyncio``. Raised
    inside a generation function, it is never retried: every input would hit it again.
    """


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
    MISUSE = "misuse"
    """The program misuses asyncio: an async client bound to another event loop, or a
    blocking run nested in a running loop. Every input would fail alike: not retried,
    and the run stops. ``ErrorReport.advice`` says what to change."""
    OTHER = "other"
    """Anything else: retried at once, as Phoenix does."""

    @property
    def retryable(self) -> bool:
        return self not in (ErrorKind.FATAL, ErrorKind.QUOTA_EXHAUSTED, ErrorKind.MISUSE)


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """The classification of one exception."""

    kind: ErrorKind
    status_code: int | None = None
    retry_after: float | None = None
    """Seconds the provider asked us to wait, when it said so (finite, >= 0, unbounded)."""
    advice: str | None = None
    """What the user should change, when the cause is known (set for ``MISUSE``)."""


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

_WRONG_LOOP_MARKERS = (
    "is bound to a different event loop",  # asyncio.Lock, Queue, Event... (3.10+)
    "attached to a different loop",  # a Future awaited from a Task of another loop
    "event loop is closed",  # a client still holding a loop that asyncio.run() closed
)
_WRONG_LOOP_ADVICE = (
    "the async client was created or first used on another event loop; create it inside "
    "the running loop (in the function or per run), or use the sync function with "
    "SyncExecutor"
)
_NESTED_RUN_MARKERS = (
    "cannot be called from a running event loop",  # asyncio.run()
    "this event loop is already running",  # loop.run_until_complete()
)
_NESTED_RUN_ADVICE = (
    "a blocking run (executor.run() or asyncio.run()) was called inside a running event "
    "loop; await executor.execute(inputs) there instead, or apply nest_asyncio"
)
_CHAIN_DEPTH = 8
"""How many causes and contexts are searched for a misuse (SDKs wrap the real error)."""
_TEXT_READ = 10_000
"""Characters of an exception's message searched for markers; the rest is ignored."""


def classify_error(
    exc: BaseException, *, wall_clock: Callable[[], float] = time.time
) -> ErrorReport:
    """Decide whether `exc` is a rate limit, exhausted quota, transient, fatal, misuse or other.

    ``wall_clock`` is only used to turn an HTTP-date ``Retry-After`` into seconds. Never
    raises (an attribute of `exc` that raises when read counts as absent).
    """
    status = _status_code(exc)
    advice = _misuse_advice(exc)
    if advice is not None:
        return ErrorReport(ErrorKind.MISUSE, status, advice=advice)
    names = _class_names(exc)
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
    if not names.isdisjoint(_TRANSIENT_NAMES) or issubclass(type(exc), ConnectionError):
        return ErrorReport(ErrorKind.TRANSIENT, status)
    return ErrorReport(ErrorKind.OTHER, status)


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """``repr(exc)`` for a log line: never raises, and at most `limit` characters of it.

    An exception whose ``repr()`` fails is shown as ``<TypeName whose repr() failed>``.
    A longer text is cut to its first `limit` characters followed by
    ``... [N characters cut]``, so a 10 MB message is not logged whole.
    """
    if type(limit) is not int or limit < 0:
        raise ValueError(f"describe_error: limit must be an int >= 0, got {limit!r}")
    text = _repr(exc)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} characters cut]"


# -- reading an exception without trusting it --------------------------------------------


def _attribute(holder: object, name: str) -> object:
    """``holder.name``, or None when it is missing or raises when read."""
    try:
        return getattr(holder, name, None)
    except Exception:
        return None


def _repr(exc: BaseException) -> str:
    try:
        return str.__str__(repr(exc))
    except Exception:
        try:
            name = str.__str__(type(exc).__name__)
        except Exception:
            name = "exception"
        return f"<{name} whose repr() failed>"


def _message(exc: BaseException) -> str:
    """The start of ``str(exc)``; the plain ``BaseException`` text when ``__str__`` fails."""
    for render in (str, BaseException.__str__):
        try:
            return str.__str__(render(exc))[:_TEXT_READ]
        except Exception:
            continue
    return ""


def _text(value: object) -> str:
    """The start of ``str(value)``, or "" when it fails."""
    try:
        return str.__str__(str(value))[:_TEXT_READ]
    except Exception:
        return ""


def _class_names(exc: BaseException) -> frozenset[str]:
    names = set()
    try:
        for cls in type(exc).__mro__:
            name = _attribute(cls, "__name__")
            if type(name) is str:
                names.add(name)
    except Exception:
        pass
    return frozenset(names)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions a traceback would show under it, nearest first: the
    ``__cause__`` when set, else the ``__context__`` unless suppressed (``from None``)."""
    seen: set[int] = set()
    error: object = exc
    for _ in range(_CHAIN_DEPTH):
        if not issubclass(type(error), BaseException) or id(error) in seen:
            return
        seen.add(id(error))
        yield error  # type: ignore[misc]
        cause = _attribute(error, "__cause__")
        if cause is None and _attribute(error, "__suppress_context__") is not True:
            cause = _attribute(error, "__context__")
        error = cause


def _misuse_advice(exc: BaseException) -> str | None:
    for error in _chain(exc):
        if issubclass(type(error), NestedRunError):
            return _NESTED_RUN_ADVICE
        if issubclass(type(error), RuntimeError):
            message = _message(error).lower()
            if any(marker in message for marker in _WRONG_LOOP_MARKERS):
                return _WRONG_LOOP_ADVICE
            if any(marker in message for marker in _NESTED_RUN_MARKERS):
                return _NESTED_RUN_ADVICE
    return None


def _status_code(exc: BaseException) -> int | None:
    for holder in (exc, _attribute(exc, "response")):
        if holder is None:
            continue
        for attribute in ("status_code", "status"):
            value = _attribute(holder, attribute)
            kind = type(value)
            if issubclass(kind, int) and not issubclass(kind, bool):
                number = int.__int__(value)  # type: ignore[arg-type]
                if 100 <= number <= 599:
                    return number
    return None


def _says_quota_exhausted(exc: BaseException) -> bool:
    candidates: list[object] = [_attribute(exc, "code"), _attribute(exc, "type")]
    body = _attribute(exc, "body")
    candidates.extend(_codes(body))
    candidates.extend(_codes(_entry(body, "error")))
    texts = [_text(c) for c in candidates if c is not None]
    texts.append(_message(exc))
    text = " ".join(texts).lower()
    return any(marker in text for marker in _QUOTA_MARKERS)


def _entry(mapping: object, key: str) -> object:
    """``mapping.get(key)`` for a real mapping; None otherwise or when it raises."""
    if not issubclass(type(mapping), Mapping):
        return None
    try:
        return mapping.get(key)  # type: ignore[attr-defined]
    except Exception:
        return None


def _codes(mapping: object) -> tuple[object, object]:
    return _entry(mapping, "code"), _entry(mapping, "type")


# -- retry hints ----------------------------------------------------------------------------


def retry_hint_seconds(
    exc: BaseException, wall_clock: Callable[[], float] = time.time
) -> float | None:
    """Seconds the provider asked us to wait before retrying, or None if it did not say.

    Reads, in this order: a ``retry_after`` attribute; the ``retry-after-ms``,
    ``retry-after`` (seconds or an HTTP date) and ``x-ratelimit-reset-*`` headers of
    ``exc.response.headers`` (OpenAI durations such as ``6m0s`` or ``20ms``, or an
    RFC 3339 timestamp as Anthropic sends). The longest reset wins. A reset given as a
    bare number of 10**9 or more is a Unix timestamp (milliseconds from 10**12 on).

    The result is finite and >= 0 but not bounded: how long is too long is the retry
    policy's call (``Backoff.max_hint``). Never raises; unreadable values are ignored.
    """
    attribute = _non_negative(_attribute(exc, "retry_after"))
    if attribute is not None:
        return attribute
    headers = _hint_headers(exc)
    if not headers:
        return None
    milliseconds = number_seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    now = _Now(wall_clock)
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        seconds = number_seconds(retry_after)
        if seconds is None:
            seconds = seconds_until_http_date(retry_after, now())
        if seconds is not None:
            return seconds
    resets = [
        seconds
        for name, value in headers.items()
        if _is_reset_header(name) and (seconds := _parse_reset(value, now)) is not None
    ]
    return max(resets) if resets else None


class _Now:
    """The wall clock, read once and only if a value needs it."""

    __slots__ = ("_clock", "_value")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._value: float | None = None

    def __call__(self) -> float:
        if self._value is None:
            self._value = self._clock()
        return self._value


_KNOWN_RESET_HEADERS = (
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    *(
        f"anthropic-ratelimit-{budget}-reset"
        for budget in ("requests", "tokens", "input-tokens", "output-tokens")
    ),
)


def _is_reset_header(name: str) -> bool:
    return name.startswith("x-ratelimit-reset") or (
        name.startswith("anthropic-ratelimit-") and name.endswith("-reset")
    )


def _hint_headers(exc: BaseException) -> dict[str, str]:
    """The lowercased headers of ``exc.response.headers`` (or ``exc.headers``) that matter."""
    raw = _attribute(_attribute(exc, "response"), "headers")
    if raw is None:
        raw = _attribute(exc, "headers")
    if raw is None:
        return {}
    table = header_table(raw)
    if table is not None:
        return table
    lookup = header_lookup(raw)  # no items(): ask for each name a hint can come from
    if lookup is None:
        return {}
    names = ("retry-after-ms", "retry-after", *_KNOWN_RESET_HEADERS)
    return {name: value for name in names if (value := lookup(name)) is not None}


def _non_negative(value: object) -> float | None:
    """A finite number >= 0 given as an ``int`` or ``float`` (not a bool, not a string)."""
    kind = type(value)
    try:
        if issubclass(kind, bool):
            return None
        if issubclass(kind, int):
            number = int.__float__(value)  # type: ignore[arg-type]
        elif issubclass(kind, float):
            number = float.__float__(value)  # type: ignore[arg-type]
        else:
            return None
    except Exception:  # an int too large for a float, or a subclass that misbehaves
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _parse_reset(value: str, now: _Now) -> float | None:
    """A reset header: ``6m0s``, ``20ms``, ``1.5`` (seconds), a Unix timestamp, an RFC 3339
    timestamp or an HTTP date, in seconds from now."""
    seconds = reset_seconds(value, now())
    if seconds is None:
        seconds = seconds_until_timestamp(value, now())
    if seconds is None:
        seconds = seconds_until_http_date(value, now())
    return seconds
