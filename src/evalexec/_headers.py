"""Reading providers' rate-limit headers: pure functions that never raise.

Two header families are understood, as the providers document them:

- OpenAI ("Rate limits" guide, section "Rate limits in headers"): the
  ``x-ratelimit-{limit,remaining}-{requests,tokens}`` counts and
  ``x-ratelimit-reset-{requests,tokens}``, the time until that budget is back to its
  initial state, written as a Go-style duration -- the guide's samples are ``1s`` and
  ``6m0s``; real responses also carry ``12ms``-style values. OpenAI-compatible servers
  (Groq, Together, vLLM...) reuse the names and sometimes send plain seconds.
- Anthropic ("Rate limits" page, section "Response headers"):
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``,
  where ``-reset`` is the moment the budget is fully replenished, as an RFC 3339
  timestamp (``2025-08-21T12:40:59Z``); ``tokens`` is input and output combined.

Header names are matched whatever their case. Values that do not parse are ignored.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

__all__ = ["RateLimitInfo", "parse_rate_limit_headers"]

HeaderLookup = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response's headers say about the account's budgets.

    Counts are ``int`` (requests or tokens); ``reset_*_seconds`` are seconds from the
    moment of parsing until that budget is fully replenished (never negative). A field
    is None when its header is missing or unreadable.
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_seconds: float | None = None
    reset_tokens_seconds: float | None = None
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_seconds: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_seconds: float | None = None


def parse_rate_limit_headers(headers: Any, *, now: float | None = None) -> RateLimitInfo | None:
    """Read the OpenAI- or Anthropic-style rate-limit headers in `headers`.

    `headers` may be a mapping (a ``dict``, ``httpx.Headers``, ``email.message.Message``)
    or any object with a ``get(name)`` method. ``now`` is the wall-clock time
    (``time.time()`` when None) used to turn Anthropic's timestamps into seconds.
    Returns None when no rate-limit header could be read. Where both families are
    present, the OpenAI-style value of a shared field wins.
    """
    lookup = header_lookup(headers)
    if lookup is None:
        return None
    moment = time.time() if now is None else now
    fields: dict[str, Any] = {}
    for budget in ("requests", "tokens"):
        _put(fields, f"limit_{budget}", _count(lookup(f"x-ratelimit-limit-{budget}")))
        _put(fields, f"remaining_{budget}", _count(lookup(f"x-ratelimit-remaining-{budget}")))
        reset = reset_seconds(lookup(f"x-ratelimit-reset-{budget}"), moment)
        _put(fields, f"reset_{budget}_seconds", reset)
    for budget in ("requests", "tokens", "input-tokens", "output-tokens"):
        field = budget.replace("-", "_")
        prefix = f"anthropic-ratelimit-{budget}"
        _put(fields, f"limit_{field}", _count(lookup(f"{prefix}-limit")))
        _put(fields, f"remaining_{field}", _count(lookup(f"{prefix}-remaining")))
        reset = seconds_until_timestamp(lookup(f"{prefix}-reset"), moment)
        _put(fields, f"reset_{field}_seconds", reset)
    if not fields:
        return None
    return RateLimitInfo(**fields)


def _put(fields: dict[str, Any], name: str, value: float | None) -> None:
    if value is not None and name not in fields:
        fields[name] = value


# -- header access --------------------------------------------------------------------------


def header_lookup(headers: Any) -> HeaderLookup | None:
    """A case-insensitive ``name -> value`` reader over `headers`, or None if unreadable.

    Lowercased names are collected from ``items()`` when it works; otherwise each name
    is asked of ``headers.get`` (``httpx.Headers`` and the like match case-insensitively).
    Nothing that `headers` does -- raise, return odd types -- escapes.
    """
    if headers is None:
        return None
    table = header_table(headers)
    if table is not None:
        return table.get
    try:
        getter = headers.get
    except Exception:
        return None
    if not callable(getter):
        return None

    def ask(name: str) -> str | None:
        try:
            return _text(getter(name))
        except Exception:
            return None

    return ask


def header_table(headers: Any) -> dict[str, str] | None:
    """``{lowercased name: value}`` from ``headers.items()``, or None if it has none."""
    try:
        items = iter(headers.items())
    except Exception:
        return None
    table: dict[str, str] = {}
    for _ in range(_MOST_HEADERS):
        try:
            item = next(items)
        except StopIteration:
            break
        except Exception:
            return table if table else None
        pair = item if type(item) is tuple and len(item) == 2 else (None, None)
        name, text = _text(pair[0]), _text(pair[1])
        if name is not None and text is not None:
            table.setdefault(name.lower(), text)
    return table


_MOST_HEADERS = 1000
"""Headers read from one response at most: a real one has a few dozen."""


def _text(value: object) -> str | None:
    """A header name or value as ``str``: bytes are decoded, anything else is refused."""
    kind = type(value)
    try:
        if issubclass(kind, str):  # a subclass gives its plain characters, whatever it overrides
            return str.__str__(cast(str, value))
        if issubclass(kind, bytes):
            return bytes.decode(cast(bytes, value), "latin-1")
    except Exception:
        return None
    return None


# -- values -------------------------------------------------------------------------------

_COUNT = re.compile(r"\d{1,30}")
_DURATION_PART = re.compile(r"(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(h|ms|us|µs|μs|ns|m|s)")
_DURATION = re.compile(r"(?:(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(?:h|ms|us|µs|μs|ns|m|s)){1,8}")
_UNIT_SCALE = {  # (multiplier, divisor): dividing keeps 9 ms exactly 0.009 s
    "h": (3600.0, 1.0),
    "m": (60.0, 1.0),
    "s": (1.0, 1.0),
    "ms": (1.0, 1e3),
    "us": (1.0, 1e6),
    "µs": (1.0, 1e6),  # MICRO SIGN, as Go writes it
    "μs": (1.0, 1e6),  # GREEK SMALL LETTER MU, which Go also accepts
    "ns": (1.0, 1e9),
}
_EPOCH_SECONDS = 1e9
"""Bare numbers this large in a reset header are Unix timestamps, not durations (31 years)."""
_EPOCH_MILLISECONDS = 1e12


def _count(value: str | None) -> int | None:
    """A non-negative whole count such as ``150000``; None for anything else (Azure's -1)."""
    if value is None:
        return None
    text = value.strip()
    return int(text) if _COUNT.fullmatch(text) else None


def number_seconds(value: str | None) -> float | None:
    """A plain non-negative decimal such as ``7`` or ``2.5`` (also ``1e10``); None otherwise."""
    if value is None:
        return None
    text = value.strip()
    if len(text) > 64:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def duration_seconds(value: str | None) -> float | None:
    """A Go duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) in seconds, else None."""
    if value is None:
        return None
    text = value.strip()
    if not _DURATION.fullmatch(text):
        return None
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        multiplier, divisor = _UNIT_SCALE[unit]
        total += float(number) * multiplier / divisor
    return total


def reset_seconds(value: str | None, now: float) -> float | None:
    """An OpenAI-style reset in seconds: a Go duration, or a bare number of seconds.

    A bare number of 10**9 or more cannot be a wait (that is 31 years): it is read as a
    Unix timestamp, in milliseconds from 10**12 on, as some compatible servers send.
    """
    seconds = duration_seconds(value)
    if seconds is not None:
        return seconds
    number = number_seconds(value)
    if number is None or number < _EPOCH_SECONDS:
        return number
    if number >= _EPOCH_MILLISECONDS:
        number /= 1000.0
    return max(0.0, number - now)


def seconds_until_timestamp(value: str | None, now: float) -> float | None:
    """Seconds from `now` until an RFC 3339 timestamp with a zone (0 if past), else None."""
    if value is None:
        return None
    text = value.strip().upper()  # RFC 3339 allows a lowercase "t" and "z"
    if len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            return None
        return max(0.0, moment.timestamp() - now)
    except (ValueError, OverflowError, OSError):
        return None


def seconds_until_http_date(value: str | None, now: float) -> float | None:
    """Seconds from `now` until an HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``), 0 if past."""
    if value is None or len(value) > 64:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
        if moment.tzinfo is None:
            return None
        return max(0.0, moment.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
