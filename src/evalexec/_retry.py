"""Retry policy: how long a failed attempt waits, and whether it is retried at all.

`decide` is the one place that turns an exception into what happens next; both
executors call it. It is pure: randomness comes in through ``rng``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from evalexec.exceptions import ErrorKind, ErrorReport, classify_error

__all__ = ["DEFAULT_MAX_HINT", "Backoff", "Verdict", "decide"]

DEFAULT_MAX_HINT = 600.0
"""Ten minutes: the longest provider hint a run waits out (see `Backoff.max_hint`)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter for rate-limit and transient errors.

    The n-th retry of an input waits ``initial * multiplier ** (n - 1)`` seconds,
    capped at ``maximum`` and shortened at random by up to ``jitter`` (a fraction).
    When the provider says how long to wait (a retry hint), that is the wait instead.
    Other errors are retried at once, as Phoenix does. The wait happens off the
    worker: other inputs keep flowing.

    ``max_hint`` (seconds) is the longest hint the run waits out. A provider that asks
    for more -- ``Retry-After: 7200``, or rate-limit headers saying the budget is back
    in two hours -- is saying that this run's budget is spent for a long while: the
    input is not retried and the run stops, as for an exhausted quota, with a reason
    that says how long the provider asked for. Finished outputs are kept, so the run
    can be started again later. The default of 600 s is ten times the one-minute
    windows that OpenAI's and Anthropic's request and token limits refill over (their
    resets are seconds away), and short enough that an unattended job does not sit
    silent for hours; raise it to wait out longer windows.
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_hint: float = DEFAULT_MAX_HINT

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "max_hint"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"Backoff.{name} must be a finite number >= 0, got {value!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff.jitter must be in [0, 1], got {self.jitter!r}")

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        exponent = min(max(retry - 1, 0), 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1.0 - self.jitter * rng())


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens after a failed attempt."""

    report: ErrorReport
    retry: bool
    delay: float = 0.0
    """Seconds before the retry may start (at most the backoff's maximum or max_hint)."""
    cooldown: float | None = None
    """Seconds during which no new call may start (a provider's rate-limit hint)."""
    stop_run: bool = False
    """True when nothing else can succeed either: the quota is exhausted, the provider
    asks for a wait longer than ``max_hint``, or the program misuses asyncio."""
    reason: str = ""
    """Why, in one line for people: what was decided and, when the run stops or the
    input fails, what to do about it. Executors print it as it is."""


def decide(
    exc: BaseException,
    retries_so_far: int,
    max_retries: int,
    backoff: Backoff | None,
    rng: Callable[[], float] = random.random,
) -> Verdict:
    """Decide whether the input whose attempt raised `exc` is retried, and when.

    ``backoff=None`` retries without exponential waits; provider hints are still
    honoured, up to `DEFAULT_MAX_HINT`. Never raises for any exception `exc`.
    """
    report = classify_error(exc)
    kind = report.kind
    if kind is ErrorKind.MISUSE:
        return Verdict(report, retry=False, stop_run=True, reason=report.advice or "misuse")
    if kind is ErrorKind.QUOTA_EXHAUSTED:
        reason = "the provider says the quota is exhausted; retrying cannot help"
        return Verdict(report, retry=False, stop_run=True, reason=reason)
    if kind is ErrorKind.FATAL:
        return Verdict(report, retry=False, reason=_fatal_reason(report))
    hint = report.retry_after
    max_hint = DEFAULT_MAX_HINT if backoff is None else backoff.max_hint
    if hint is not None and hint > max_hint:
        reason = (
            f"the provider asks to wait {_span(hint)}, more than max_hint ({_span(max_hint)}); "
            "rerun later, or raise Backoff(max_hint=...)"
        )
        return Verdict(report, retry=False, stop_run=True, reason=reason)
    cooldown = hint if kind is ErrorKind.RATE_LIMIT else None
    if retries_so_far >= max_retries:
        reason = f"{_label(kind)}; no retries left (max_retries={max_retries})"
        return Verdict(report, retry=False, cooldown=cooldown, reason=reason)
    if hint is not None:
        delay = hint  # the provider said how long: believe it
        when = f"in {_span(delay)}, as the provider asks"
    elif kind is ErrorKind.OTHER or backoff is None:
        delay = 0.0
        when = "at once"
    else:
        delay = backoff.delay(retries_so_far + 1, rng)
        when = f"in {_span(delay)}"
    reason = f"{_label(kind)}; retrying {when}"
    return Verdict(report, retry=True, delay=delay, cooldown=cooldown, reason=reason)


def _label(kind: ErrorKind) -> str:
    return {
        ErrorKind.RATE_LIMIT: "rate limited",
        ErrorKind.TRANSIENT: "transient error",
    }.get(kind, "error")


def _fatal_reason(report: ErrorReport) -> str:
    if report.status_code is not None:
        return f"HTTP {report.status_code} is a client error; retrying cannot help"
    return "a PhoenixException is final; it is not retried"


def _span(seconds: float) -> str:
    """A duration for people: ``250 ms``, ``7.5 s``, ``10 min 1 s``, ``2 h``, ``3.5 days``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} days"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(hours, "h"), (minutes, "min"), (secs, "s")]
    while parts[0][0] == 0:
        parts.pop(0)
    while parts[-1][0] == 0:
        parts.pop()
    return " ".join(f"{n} {unit}" for n, unit in parts)
