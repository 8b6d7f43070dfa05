"""Budgets learned from rate-limit headers, and `Run.observe_response` as evalexec.httpx's
hooks call it, on virtual time (the hooks are given httpx objects built by hand)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import evalexec.httpx
from evalexec.executors import AsyncExecutor

HOOKS = evalexec.httpx.event_hooks()


async def respond(status: int, headers: dict[str, str]) -> httpx.Response:
    """Pass one request and its response through evalexec's hooks, as a client would."""
    request = httpx.Request("POST", "http://provider/v1/chat/completions")
    await HOOKS["request"][0](request)
    response = httpx.Response(status, headers=headers, request=request)
    await HOOKS["response"][0](response)
    return response


OPENAI_OK = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149984",
}


@pytest.mark.looptime
async def test_a_refusal_the_sdk_retries_itself_pauses_every_other_start_for_its_hint() -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def call(i: int) -> int:
        starts.append(loop.time())
        if i == 0:
            await respond(429, {"retry-after-ms": "2500"})  # the SDK would retry: not raised
        await asyncio.sleep(1)
        return i

    executor = AsyncExecutor(call, concurrency=1, enable_dynamic_concurrency=False)
    outputs, _ = await executor.execute([0, 1])
    assert outputs == [0, 1]
    assert starts == [0.0, 2.5]


@pytest.mark.looptime
async def test_remaining_headers_on_a_success_teach_a_budget_that_holds_what_is_left(
    bars: Any,
) -> None:
    """60 rpm with nothing left: the learned limiter lets the next call start one step
    (1 s) after the request that said so was sent, not at once."""
    starts: list[float] = []
    snaps: list[tuple[str, bool]] = []
    loop = asyncio.get_running_loop()

    async def call(i: int) -> int:
        starts.append(loop.time())
        snap = executor.snapshot()
        snaps.append((snap.budget, snap.budget_learned))
        if i == 0:
            await respond(200, OPENAI_OK)
        return i

    executor = AsyncExecutor(call, concurrency=1, tqdm_bar_format="{postfix}")
    outputs, _ = await executor.execute([0, 1, 2])
    assert outputs == [0, 1, 2]
    assert starts == [0.0, 1.0, 2.0]
    assert snaps == [("", False)] + [("rpm<=60 tpm<=150000", True)] * 2
    assert any("rpm<=60 tpm<=150000" in text for _, text in bars.opened[0].postfixes)
    assert bars.lines[-1].endswith("; budget learned from the provider: rpm<=60 tpm<=150000")


class SDKRateLimitError(Exception):
    """Shaped like the SDKs' error: a 429 with the httpx response it came with."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__("429")
        self.status_code = 429
        self.response = response


@pytest.mark.looptime
async def test_a_refusal_the_hook_reported_counts_once_when_the_sdk_raises_it(
    bars: Any,
) -> None:
    seen: list[bool] = []

    async def call(i: int) -> int:
        if i == 0 and not seen:
            seen.append(True)
            raise SDKRateLimitError(await respond(429, {"retry-after": "1"}))
        return i

    executor = AsyncExecutor(call, concurrency=1, tqdm_bar_format="{postfix}")
    outputs, details = await executor.execute([0, 1])
    assert outputs == [0, 1]
    assert len(details[0].exceptions) == 1
    last = bars.opened[0].postfixes[-1][1]
    assert "rate_limited=1" in last.split()


@pytest.mark.looptime
async def test_a_raised_429_with_limit_headers_teaches_the_budget_without_the_hook(
    bars: Any,
) -> None:
    request = httpx.Request("POST", "http://provider/v1/messages")
    headers = {
        "retry-after": "1",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
    }
    failed: list[int] = []

    async def call(i: int) -> int:
        if i == 0 and not failed:
            failed.append(i)
            raise SDKRateLimitError(httpx.Response(429, headers=headers, request=request))
        return i

    executor = AsyncExecutor(call, concurrency=2, tqdm_bar_format="{postfix}")
    outputs, _ = await executor.execute([0, 1, 2])
    assert outputs == [0, 1, 2]
    assert bars.lines[-1].endswith("; budget learned from the provider: rpm<=50")


@pytest.mark.looptime
async def test_a_given_limiter_is_the_budget_and_nothing_is_learned(bars: Any) -> None:
    from evalexec.limits import LocalLimiter

    snaps: list[tuple[str, bool]] = []

    async def call(i: int) -> int:
        await respond(200, OPENAI_OK)
        snap = executor.snapshot()
        snaps.append((snap.budget, snap.budget_learned))
        return i

    limiter = LocalLimiter(rpm=6000, max_inflight=4, period_seconds=10)
    executor = AsyncExecutor(call, concurrency=1, tqdm_bar_format="{postfix}", limiter=limiter)
    await executor.execute([0, 1])
    assert "learned" not in bars.lines[-1]
    assert snaps == [("requests<=6000/10s inflight<=4", False)] * 2


async def test_the_hooks_do_nothing_outside_a_run() -> None:
    response = await respond(429, {"retry-after": "1"})
    assert "evalexec.heard" not in response.extensions
