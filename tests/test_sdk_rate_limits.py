"""The real openai and anthropic SDKs, over real sockets, against a rate-limited provider
on 127.0.0.1 (tests/provider_server.py) that sends their exact rate-limit headers.

Times here are real (the SDKs sleep for real), so nothing asserts a wall-clock
threshold: the assertions are on who was sent when relative to what the provider
announced, and on counts bounded by the provider's budget.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

import evalexec.httpx
from evalexec.executors import AsyncExecutor, SyncExecutor
from tests.provider_server import ProviderServer

pytestmark = pytest.mark.timeout(90)


def sdk(name: str) -> ModuleType:
    """The SDK, or a skip on a developer machine (a failure when CI=true)."""
    try:
        return __import__(name)
    except ImportError:
        message = f"the {name} SDK is not installed; pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


@dataclass
class Wire:
    """What the client sent and received, seen by a hook of ours placed after evalexec's:
    ``sends`` = (time, SDK retry number), ``refusals`` = (time received, retry-after in
    seconds, when the refused request was sent, its SDK retry number)."""

    sends: list[tuple[float, int]] = field(default_factory=list)
    refusals: list[tuple[float, float, float, int]] = field(default_factory=list)

    def hooks(self) -> dict[str, list[Callable[[Any], Any]]]:
        def on_request(request: Any) -> Any:
            retry = int(request.headers.get("x-stainless-retry-count", "0"))
            request.extensions["test.sent"] = (time.monotonic(), retry)
            self.sends.append((time.monotonic(), retry))
            return _done()

        def on_response(response: Any) -> Any:
            if response.status_code == 429:
                sent, retry = response.request.extensions["test.sent"]
                if "retry-after-ms" in response.headers:
                    wait = int(response.headers["retry-after-ms"]) / 1000.0
                else:
                    wait = float(response.headers["retry-after"])
                self.refusals.append((time.monotonic(), wait, sent, retry))
            return _done()

        return {"request": [on_request], "response": [on_response]}

    def first_tries_inside_windows(self) -> list[float]:
        """Sends of a call's first try while an announced retry-after had not passed."""
        return [
            at
            for at, retry in self.sends
            if retry == 0 and any(got < at < got + wait for got, wait, _, _ in self.refusals)
        ]


def _done() -> Any:
    """An awaitable that httpx.AsyncClient may await and httpx.Client may drop."""
    return evalexec.httpx._DONE


def test_the_sdks_own_retried_429s_pause_the_runs_other_calls(
    provider_server: Callable[..., ProviderServer],
) -> None:
    """Default SDK settings (two retries of its own): with evalexec's hooks, no call of
    the run starts while a refusal's retry-after runs; without them, calls do."""
    openai = sdk("openai")
    server = provider_server(latency=0.2, rpm=120, quiet_successes=True)  # 2 a second

    def run(hooked: bool) -> Wire:
        wire = Wire()
        hooks = wire.hooks()
        if hooked:
            http = evalexec.httpx.async_client(library="httpx", event_hooks=hooks)
        else:
            import httpx

            http = httpx.AsyncClient(event_hooks=hooks)
        client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="k", http_client=http)

        async def ask(i: int) -> str:
            reply = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"row {i}"}]
            )
            return str(reply.choices[0].message.content)

        async def main() -> list[Any]:
            async with http:
                outputs, _ = await AsyncExecutor(ask, concurrency=6, max_retries=20).execute(
                    range(8)
                )
            return outputs

        assert asyncio.run(main()) == [f"echo: row {i}" for i in range(8)]
        return wire

    with_hooks = run(hooked=True)
    assert any(retry > 0 for *_, retry in with_hooks.refusals)  # the SDK retried 429s
    assert with_hooks.first_tries_inside_windows() == []
    without = run(hooked=False)
    assert without.first_tries_inside_windows() != []


def _openai_run(
    openai: ModuleType, server: ProviderServer, inputs: int, concurrency: int, wire: Wire
) -> list[Any]:
    http = evalexec.httpx.async_client(event_hooks=wire.hooks())
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="k", http_client=http)

    async def ask(i: int) -> str:
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"row {i}"}]
        )
        return str(reply.choices[0].message.content)

    async def main() -> list[Any]:
        executor = AsyncExecutor(
            ask, concurrency=concurrency, max_retries=20, tqdm_bar_format="{n} {postfix}"
        )
        async with http:
            outputs, _ = await executor.execute(range(inputs))
        return outputs

    return asyncio.run(main())


def test_the_first_429_teaches_the_budget_and_the_run_sends_no_call_into_a_refusal_after_it(
    provider_server: Callable[..., ProviderServer], bars: Any
) -> None:
    """Successes carry no rate-limit headers here: the first 429's headers set the budget.
    From then on every refused request is one the SDK retries on its own (sent for a
    refusal that came before); no call of the run's own is refused."""
    openai = sdk("openai")
    server = provider_server(latency=0.2, rpm=120, quiet_successes=True)
    wire = Wire()
    outputs = _openai_run(openai, server, inputs=10, concurrency=6, wire=wire)
    assert outputs == [f"echo: row {i}" for i in range(10)]
    learned_at = min(got for got, *_ in wire.refusals)
    after = [(sent, retry) for _, _, sent, retry in wire.refusals if sent > learned_at]
    assert all(retry > 0 for _, retry in after), after
    assert any("rpm<=120" in text for _, text in bars.opened[0].postfixes)
    assert bars.lines[-1].endswith("; budget learned from the provider: rpm<=120 tpm<=1000000")


def test_a_budget_learned_from_remaining_headers_runs_near_the_providers_rate_unrefused(
    provider_server: Callable[..., ProviderServer], bars: Any
) -> None:
    """The e2e figure: 200 inputs through ``AsyncOpenAI(http_client=async_client())``,
    concurrency 8, against 2400 rpm (40 a second, one second's worth held) at 0.1 s a
    call, i.e. about 4 calls in flight. The goal is >= 0.97 of the ideal with <= 2 % of
    calls refused; asserted: the refusals are at most 5 % of the inputs, and the sends
    kept to at least 80 % of the budget's rate after its first second."""
    openai = sdk("openai")
    inputs, rpm, latency = 200, 2400, 0.1
    server = provider_server(latency=latency, rpm=rpm)
    wire = Wire()
    started = time.monotonic()
    outputs = _openai_run(openai, server, inputs=inputs, concurrency=8, wire=wire)
    elapsed = time.monotonic() - started
    assert outputs == [f"echo: row {i}" for i in range(inputs)]
    refused = len(wire.refusals)
    rate = rpm / 60.0
    held = rate  # the provider holds one second's worth
    ideal = (inputs - held) / rate + latency
    sends = sorted(at for at, _ in wire.sends)
    span = sends[-1] - sends[0]
    print(
        f"e2e figure: {inputs} inputs, {rpm} rpm, {latency} s a call: {elapsed:.2f} s "
        f"(ideal {ideal:.2f} s, {ideal / elapsed:.3f} of it), sends over {span:.2f} s "
        f"(ideal {(inputs - held) / rate:.2f} s), {refused} refused ({refused / inputs:.1%})"
    )
    assert refused <= 0.05 * inputs
    assert (len(sends) - held) / span >= 0.8 * rate
    assert bars.lines[-1].endswith("; budget learned from the provider: rpm<=2400 tpm<=1000000")


def test_a_threaded_sync_run_with_anthropics_client_pauses_for_its_refusals_and_learns(
    provider_server: Callable[..., ProviderServer], bars: Any
) -> None:
    """``anthropic.Anthropic(http_client=evalexec.httpx.client())`` on the SyncExecutor's
    worker threads: the hooks post to the run's loop; Anthropic's whole-second
    ``retry-after`` pauses the run, and its ``anthropic-ratelimit-*`` headers teach it."""
    anthropic = sdk("anthropic")
    server = provider_server(latency=0.2, rpm=120)
    wire = Wire()
    http = evalexec.httpx.client(event_hooks=wire.hooks())
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", http_client=http)

    def ask(i: int) -> str:
        reply = client.messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": f"row {i}"}]
        )
        return str(reply.content[0].text)

    executor = SyncExecutor(ask, concurrency=4, max_retries=20, tqdm_bar_format="{postfix}")
    with http:
        outputs, _ = executor.run(list(range(6)))
    assert outputs == [f"echo: row {i}" for i in range(6)]
    assert wire.first_tries_inside_windows() == []
    assert bars.lines[-1].endswith("; budget learned from the provider: rpm<=120 tpm<=1000000")
