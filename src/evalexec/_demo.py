"""A simulated LLM provider and the demo run behind ``python -m evalexec demo``."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from evalexec.executors import AsyncExecutor, ExecutionStatus

__all__ = ["SimulatedProvider", "run_demo"]


class SimulatedRateLimitError(Exception):
    """Shaped like an SDK's 429 error: a status code and a response with headers."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("429 Too Many Requests: rate limit reached for requests")
        self.status_code = 429
        self.response = _Response(429, {"retry-after": f"{retry_after:.3f}"})


class SimulatedServerError(Exception):
    def __init__(self) -> None:
        super().__init__("503 Service Unavailable: the model is overloaded")
        self.status_code = 503
        self.response = _Response(503, {})


@dataclass(frozen=True)
class _Response:
    status_code: int
    headers: dict[str, str]


@dataclass
class SimulatedProvider:
    """An LLM endpoint with a request-rate limit, latency and occasional server errors.

    The rate limit is a token bucket refilled at ``requests_per_minute``; a call that
    finds it empty fails at once with a 429 that carries a ``retry-after`` hint.
    """

    requests_per_minute: float = 1500.0
    burst: int = 10
    latency_seconds: float = 0.25
    error_rate: float = 0.03
    seed: int = 0
    calls: int = 0
    rate_limited: int = 0
    _tokens: float = field(default=0.0, init=False)
    _refilled_at: float | None = field(default=None, init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._tokens = float(self.burst)

    def _take_token(self, now: float) -> float | None:
        """Take a token; if none is left, return the seconds until one is."""
        rate = self.requests_per_minute / 60.0
        if self._refilled_at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / rate

    async def complete(self, prompt: str) -> str:
        self.calls += 1
        wait = self._take_token(asyncio.get_running_loop().time())
        if wait is not None:
            self.rate_limited += 1
            raise SimulatedRateLimitError(wait)
        latency = self.latency_seconds * self._rng.lognormvariate(0, 0.3)
        await asyncio.sleep(latency)
        if self._rng.random() < self.error_rate:
            raise SimulatedServerError()
        return f"judgement of {prompt!r}: {'relevant' if len(prompt) % 3 else 'irrelevant'}"


def run_demo(inputs: int, concurrency: int, requests_per_minute: float, latency: float) -> int:
    provider = SimulatedProvider(requests_per_minute=requests_per_minute, latency_seconds=latency)
    executor = AsyncExecutor(
        provider.complete,
        concurrency=concurrency,
        tqdm_bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        exit_on_error=False,
        timeout=30,
    )
    prompts = [f"row {i}: is the answer grounded in the context?" for i in range(inputs)]
    outputs, details = executor.run(prompts)
    completed = sum(
        d.status in (ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED_WITH_RETRIES)
        for d in details
    )
    print(
        f"demo: {completed}/{inputs} rows judged; the simulated provider took "
        f"{provider.calls} calls, {provider.rate_limited} answered 429 (rate limited)"
    )
    print(f"first output: {outputs[0]!r}" if inputs else "no inputs")
    return 0 if completed == inputs else 1
