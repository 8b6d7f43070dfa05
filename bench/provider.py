"""A simulated LLM provider for the benchmarks.

`AsyncProvider` is awaited by async generation functions, `SyncProvider` is called by
sync ones. Both share one deterministic fault plan and one set of limits:

* latency: fixed, or lognormal with a median, clipped to [low, high]; drawn once per
  input from a seeded RNG, so every implementation sees the same latencies;
* a request-rate token bucket (requests/minute, small capacity): a call that finds it
  empty gets a 429 after `reject_latency` seconds;
* a max-in-flight limit: a call that arrives while `max_in_flight` accepted calls run
  gets a 429 after `reject_latency` seconds;
* transient plain errors and hangs, decided per (input, attempt number) from the seed,
  so the outcome of attempt k of input x is the same whatever order calls arrive in;
* 429s optionally carry a retry hint (`retry-after` header, seconds);
* a quota-exhausted mode: every call fails with an `insufficient_quota` 429.

Every call is recorded (input, attempt, tag, start, end, outcome, whether the provider
accepted it) on the loop's clock (`asyncio.get_running_loop().time()`, or
`time.monotonic()` for the sync variant). `report()` summarises calls and waste and
checks that the limits held.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from bench.errors import TransientProviderError, quota_error, rate_limit_error
from bench.metrics import dispatched_during_hints, max_in_window, peak_overlap

# Outcomes of a call, as recorded.
OK = "ok"
ERROR = "error"
RATE_LIMITED = "rate_limited"
QUOTA = "quota"
CANCELLED = "cancelled"
RUNNING = "running"

# Plan entries for one (input, attempt).
PLAN_OK = "ok"
PLAN_ERROR = "error"
PLAN_HANG = "hang"


@dataclass(frozen=True)
class Latency:
    """Per-input latency: fixed when `sigma == 0`, else lognormal around `median`, clipped."""

    median: float
    sigma: float = 0.0
    low: float = 0.0
    high: float = math.inf

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        return cls(median=seconds)

    def draw(self, rng: random.Random) -> float:
        if self.sigma == 0:
            return self.median
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return min(self.high, max(self.low, value))

    def compressed(self, k: float) -> Latency:
        """The same distribution with every duration divided by `k` (same shape, sigma)."""
        return Latency(self.median / k, self.sigma, self.low / k, self.high / k)


@dataclass(frozen=True)
class ProviderConfig:
    """The simulated provider's behaviour. All randomness derives from `seed`."""

    latency: Latency = field(default_factory=lambda: Latency.fixed(0.05))
    requests_per_minute: float | None = None
    bucket_capacity: float = 10.0
    max_in_flight: int | None = None
    reject_latency: float = 0.05
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_first_attempt_only: bool = True
    hang_seconds: float = 3600.0
    retry_after: float | None = None
    # Hint the exact wait until the token bucket has a token (overrides `retry_after`
    # for rate-limit rejections; in-flight rejections keep `retry_after`).
    exact_retry_after: bool = False
    quota_exhausted: bool = False
    quota_latency: float = 0.5
    seed: int = 0

    def compressed(self, k: float) -> ProviderConfig:
        """This provider with time running `k` times faster: every duration (latencies,
        reject and quota latencies, hangs, retry hints) divided by `k`, the request rate
        multiplied by `k`. Counts (bucket capacity, in-flight limit) and the fault plan's
        draws are unchanged, so input x gets the same outcome and latency / k.
        `k == 1` returns this very config."""
        if k == 1:
            return self
        rpm = self.requests_per_minute
        return replace(
            self,
            latency=self.latency.compressed(k),
            requests_per_minute=None if rpm is None else rpm * k,
            reject_latency=self.reject_latency / k,
            hang_seconds=self.hang_seconds / k,
            retry_after=None if self.retry_after is None else self.retry_after / k,
            quota_latency=self.quota_latency / k,
        )


class FaultPlan:
    """Deterministic outcome per (input, attempt) and latency per input.

    Each value comes from an RNG seeded with the config seed and the key, so it does not
    depend on the order in which an executor happens to issue calls.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self._latency: dict[Hashable, float] = {}
        self._outcome: dict[tuple[Hashable, int], str] = {}
        self._overrides: dict[tuple[Hashable, int], str] = {}

    def set_outcome(self, item: Hashable, attempt: int, outcome: str) -> None:
        """Force the outcome of one attempt (attempts count from 1)."""
        self._overrides[(item, attempt)] = outcome

    def latency(self, item: Hashable) -> float:
        if self._config.latency.sigma == 0:
            return self._config.latency.median
        value = self._latency.get(item)
        if value is None:
            rng = random.Random(f"{self._config.seed}/latency/{item!r}")
            value = self._latency[item] = self._config.latency.draw(rng)
        return value

    def outcome(self, item: Hashable, attempt: int) -> str:
        key = (item, attempt)
        forced = self._overrides.get(key)
        if forced is not None:
            return forced
        value = self._outcome.get(key)
        if value is None:
            value = self._outcome[key] = self._draw_outcome(item, attempt)
        return value

    def _draw_outcome(self, item: Hashable, attempt: int) -> str:
        cfg = self._config
        if cfg.error_rate == 0 and cfg.hang_rate == 0:
            return PLAN_OK
        roll = random.Random(f"{cfg.seed}/outcome/{item!r}/{attempt}").random()
        hang_possible = attempt == 1 or not cfg.hang_first_attempt_only
        if hang_possible and roll < cfg.hang_rate:
            return PLAN_HANG
        if roll < cfg.hang_rate + cfg.error_rate:
            return PLAN_ERROR
        return PLAN_OK

    def attempts_until_ok(self, item: Hashable, max_attempts: int) -> tuple[int, list[str]]:
        """Attempts an ideal executor makes for `item` (stops at the first ok or the cap)."""
        outcomes: list[str] = []
        for attempt in range(1, max_attempts + 1):
            outcome = self.outcome(item, attempt)
            outcomes.append(outcome)
            if outcome == PLAN_OK:
                break
        return len(outcomes), outcomes


class CallRecord:
    """One call to the provider."""

    __slots__ = ("accepted", "attempt", "end", "item", "outcome", "retry_after", "start", "tag")

    def __init__(self, item: Hashable, attempt: int, tag: str, start: float) -> None:
        self.item = item
        self.attempt = attempt
        self.tag = tag
        self.start = start
        self.end: float | None = None
        self.outcome = RUNNING
        self.accepted = False
        self.retry_after: float | None = None


@dataclass
class ProviderReport:
    """What a run did to the provider."""

    calls: int
    wasted: int
    outcomes: dict[str, int]
    peak_in_flight: int
    peak_in_flight_by_tag: dict[str, int]
    peak_accepted_in_flight: int
    max_accepted_per_minute: int
    still_running: int
    limit_violations: list[str]
    dispatched_during_hint: int
    first_start: float | None
    last_end: float | None

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.outcomes.items())]
        return " ".join(parts)


class TokenBucket:
    """Classic token bucket: `rate` tokens per second, at most `capacity`, starts full."""

    __slots__ = ("_last", "_tokens", "capacity", "rate")

    def __init__(self, rate_per_second: float, capacity: float, now: float) -> None:
        self.rate = rate_per_second
        self.capacity = capacity
        self._tokens = capacity
        self._last = now

    def try_take(self, now: float) -> bool:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until one token is available (as of the last `try_take`)."""
        return max(0.0, (1.0 - self._tokens) / self.rate)


class _ProviderBase:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.plan = FaultPlan(config)
        self.records: list[CallRecord] = []
        self._attempts: Counter[Hashable] = Counter()
        self._bucket: TokenBucket | None = None
        self._accepted_in_flight = 0

    def _begin(self, item: Hashable, tag: str, now: float) -> CallRecord:
        self._attempts[item] += 1
        record = CallRecord(item, self._attempts[item], tag, now)
        self.records.append(record)
        return record

    def _admit(self, now: float) -> tuple[bool, float | None]:
        """Apply the in-flight and rate limits at arrival: (admitted, hint if rejected)."""
        cfg = self.config
        if cfg.max_in_flight is not None and self._accepted_in_flight >= cfg.max_in_flight:
            return False, cfg.retry_after
        if cfg.requests_per_minute is not None:
            if self._bucket is None:
                self._bucket = TokenBucket(cfg.requests_per_minute / 60.0, cfg.bucket_capacity, now)
            if not self._bucket.try_take(now):
                if cfg.exact_retry_after:
                    # The caller learns of the 429 after `reject_latency`; hint from then.
                    return False, max(0.001, self._bucket.wait_time() - cfg.reject_latency)
                return False, cfg.retry_after
        return True, None

    def report(self, minute: float = 60.0) -> ProviderReport:
        """The run's report; `minute` is the window of the rate check (60 / k when the
        provider's time is compressed by k)."""
        return build_report(self.records, self.config, minute)

    def ideal_attempts(self, items: Iterable[Hashable], max_attempts: int) -> int:
        return sum(self.plan.attempts_until_ok(item, max_attempts)[0] for item in items)


class AsyncProvider(_ProviderBase):
    """The provider for async generation functions: `await provider(item)`."""

    async def __call__(self, item: Hashable) -> Any:
        return await self.call(item)

    def client(self, tag: str) -> Callable[[Hashable], Any]:
        """A generation function whose calls are recorded under `tag`."""

        async def generate(item: Hashable) -> Any:
            return await self.call(item, tag)

        return generate

    async def call(self, item: Hashable, tag: str = "") -> Any:
        cfg = self.config
        loop = asyncio.get_running_loop()
        record = self._begin(item, tag, loop.time())
        try:
            if cfg.quota_exhausted:
                await asyncio.sleep(cfg.quota_latency)
                record.outcome = QUOTA
                raise quota_error()
            admitted, hint = self._admit(record.start)
            if not admitted:
                await asyncio.sleep(cfg.reject_latency)
                record.outcome = RATE_LIMITED
                record.retry_after = hint
                raise rate_limit_error(hint, exact=cfg.exact_retry_after)
            record.accepted = True
            self._accepted_in_flight += 1
            try:
                planned = self.plan.outcome(item, record.attempt)
                if planned == PLAN_HANG:
                    await asyncio.sleep(cfg.hang_seconds)
                await asyncio.sleep(self.plan.latency(item))
            finally:
                self._accepted_in_flight -= 1
            if planned == PLAN_ERROR:
                record.outcome = ERROR
                raise TransientProviderError(f"transient failure for {item!r}")
            record.outcome = OK
            return item
        except asyncio.CancelledError:
            record.outcome = CANCELLED
            raise
        finally:
            record.end = loop.time()


class SyncProvider(_ProviderBase):
    """The provider for sync generation functions; sleeps with `time.sleep`.

    Thread-safe: a threaded executor may call it from several threads at once.
    """

    def __init__(
        self,
        config: ProviderConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(config)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def __call__(self, item: Hashable) -> Any:
        return self.call(item)

    def client(self, tag: str) -> Callable[[Hashable], Any]:
        """A generation function whose calls are recorded under `tag`."""

        def generate(item: Hashable) -> Any:
            return self.call(item, tag)

        return generate

    def call(self, item: Hashable, tag: str = "") -> Any:
        cfg = self.config
        with self._lock:  # calls may come from several threads at once
            record = self._begin(item, tag, self._clock())
            admitted, hint = (False, None) if cfg.quota_exhausted else self._admit(record.start)
            if admitted:
                record.accepted = True
                self._accepted_in_flight += 1
        try:
            if cfg.quota_exhausted:
                self._sleep(cfg.quota_latency)
                record.outcome = QUOTA
                raise quota_error()
            if not admitted:
                self._sleep(cfg.reject_latency)
                record.outcome = RATE_LIMITED
                record.retry_after = hint
                raise rate_limit_error(hint, exact=cfg.exact_retry_after)
            try:
                planned = self.plan.outcome(item, record.attempt)
                if planned == PLAN_HANG:
                    self._sleep(cfg.hang_seconds)
                self._sleep(self.plan.latency(item))
            finally:
                with self._lock:
                    self._accepted_in_flight -= 1
            if planned == PLAN_ERROR:
                record.outcome = ERROR
                raise TransientProviderError(f"transient failure for {item!r}")
            record.outcome = OK
            return item
        except BaseException:
            if record.outcome == RUNNING:
                record.outcome = CANCELLED
            raise
        finally:
            record.end = self._clock()


def build_report(
    records: list[CallRecord], config: ProviderConfig, minute: float = 60.0
) -> ProviderReport:
    """Summarise `records`. The rate check counts accepted calls in any window of
    `minute` seconds against the tokens the bucket can give in it."""
    outcomes = Counter(r.outcome for r in records)
    ends = [r.end for r in records if r.end is not None]
    horizon = max(ends) if ends else 0.0
    spans = [(r.start, r.end if r.end is not None else horizon) for r in records]
    by_tag: dict[str, list[tuple[float, float]]] = {}
    for record, span in zip(records, spans, strict=True):
        by_tag.setdefault(record.tag, []).append(span)
    accepted = [span for r, span in zip(records, spans, strict=True) if r.accepted]
    accepted_starts = [r.start for r in records if r.accepted]
    peak_accepted = peak_overlap(accepted)
    per_minute = max_in_window(accepted_starts, minute)

    violations: list[str] = []
    if config.max_in_flight is not None and peak_accepted > config.max_in_flight:
        violations.append(f"provider in-flight {peak_accepted} > {config.max_in_flight}")
    if config.requests_per_minute is not None:
        allowed = config.requests_per_minute * minute / 60.0 + config.bucket_capacity
        if per_minute > allowed:
            violations.append(f"provider rate {per_minute}/min > {allowed:g}")
    return ProviderReport(
        calls=len(records),
        wasted=sum(n for outcome, n in outcomes.items() if outcome != OK),
        outcomes=dict(outcomes),
        peak_in_flight=peak_overlap(spans),
        peak_in_flight_by_tag={tag: peak_overlap(s) for tag, s in by_tag.items()},
        peak_accepted_in_flight=peak_accepted,
        max_accepted_per_minute=per_minute,
        still_running=outcomes.get(RUNNING, 0),
        limit_violations=violations,
        dispatched_during_hint=dispatched_during_hints(records),
        first_start=min((r.start for r in records), default=None),
        last_end=horizon if ends else None,
    )
