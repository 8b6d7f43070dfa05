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

__all__ = ["Backoff", "Verdict", "decide"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter for rate-limit and transient errors.

    The n-th retry of an input waits ``initial * multiplier ** (n - 1)`` seconds,
    capped at ``maximum`` and shortened at random by up to ``jitter`` (a fraction).
    When the provider says how long to wait (a retry hint), that is the wait instead.
    Other errors are retried at once, as Phoenix does. The wait happens off the
    worker: other inputs keep flowing.
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
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
    """Seconds before the retry may start."""
    cooldown: float | None = None
    """Seconds during which no new call may start (a provider's rate-limit hint)."""
    stop_run: bool = False
    """True when nothing else can succeed either (the quota is exhausted)."""


def decide(
    exc: BaseException,
    retries_so_far: int,
    max_retries: int,
    backoff: Backoff | None,
    rng: Callable[[], float] = random.random,
) -> Verdict:
    """Decide whether the input whose attempt raised `exc` is retried, and when."""
    report = classify_error(exc)
    kind = report.kind
    cooldown = report.retry_after if kind is ErrorKind.RATE_LIMIT else None
    if not kind.retryable:
        return Verdict(report, retry=False, stop_run=kind is ErrorKind.QUOTA_EXHAUSTED)
    if retries_so_far >= max_retries:
        return Verdict(report, retry=False, cooldown=cooldown)
    if report.retry_after is not None:
        delay = report.retry_after  # the provider said how long: believe it
    elif kind is ErrorKind.OTHER or backoff is None:
        delay = 0.0
    else:
        delay = backoff.delay(retries_so_far + 1, rng)
    return Verdict(report, retry=True, delay=delay, cooldown=cooldown)
