"""phoenix.evals' evaluate_dataframe / async_evaluate_dataframe, before and after
evalexec.phoenix.install(): an LLM classifier through the real openai SDK against a local
OpenAI-compatible server, and the measured speed-ups.

Figures are wall-clock by nature (real sockets, real threads); each threshold compares a
run with its ideal or with Phoenix's own run on the same machine. Set
``EVALEXEC_PHOENIX_BEFORE=1`` to measure Phoenix's own executors too where that takes long.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import evalexec
import evalexec.phoenix
from tests.integration.servers import LLMServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_phoenix")]

LABELS = {"good": 1.0, "bad": 0.0}
TEMPLATE = "Classify the tone: {text}"


def measure_before() -> bool:
    return os.environ.get("EVALEXEC_PHOENIX_BEFORE") == "1"


def rows(pandas: ModuleType, n: int) -> Any:
    return pandas.DataFrame({"text": [f"row number {i}" for i in range(n)]})


def expected_labels(n: int) -> list[str]:
    """What the local server answers for row i (see openai_server.py)."""
    labels = list(LABELS)
    return [
        labels[zlib.crc32(TEMPLATE.format(text=f"row number {i}").encode()) % len(labels)]
        for i in range(n)
    ]


class Judge:
    """A Phoenix classifier on an openai LLM against the local server, with HTTP clients
    of our own so that every socket is closed when a run ends (Phoenix's LLM never
    closes its SDK clients)."""

    def __init__(self, evals: ModuleType, server: LLMServer) -> None:
        import httpx

        self.evals = evals
        self.sync_http = httpx.Client()
        self.async_http = httpx.AsyncClient()
        llm = evals.LLM(
            provider="openai",
            model="gpt-4o-mini",
            base_url=server.base_url,
            api_key="test",
            sync_client_kwargs={"http_client": self.sync_http},
            async_client_kwargs={"http_client": self.async_http},
        )
        self.evaluator = evals.create_classifier(
            name="tone", prompt_template=TEMPLATE, llm=llm, choices=LABELS
        )

    def evaluate(self, frame: Any) -> Any:
        try:
            return self.evals.evaluate_dataframe(
                dataframe=frame, evaluators=[self.evaluator], hide_tqdm_bar=True
            )
        finally:
            self.sync_http.close()
            asyncio.run(self.async_http.aclose())

    def async_evaluate(self, frame: Any, concurrency: int) -> tuple[Any, float]:
        """The result and the seconds async_evaluate_dataframe took."""

        async def main() -> tuple[Any, float]:
            try:
                started = time.perf_counter()
                result = await self.evals.async_evaluate_dataframe(
                    dataframe=frame,
                    evaluators=[self.evaluator],
                    concurrency=concurrency,
                    hide_tqdm_bar=True,
                )
                return result, time.perf_counter() - started
            finally:
                await self.async_http.aclose()

        try:
            return asyncio.run(main())
        finally:
            self.sync_http.close()


def labels_and_statuses(result: Any) -> tuple[list[str | None], list[str]]:
    labels = [None if score is None else score["label"] for score in result["tone_score"]]
    statuses = [details["status"] for details in result["tone_execution_details"]]
    return labels, statuses


@pytest.fixture
def evals(phoenix_evals: ModuleType, need: Callable[[str, str], ModuleType]) -> ModuleType:
    need("openai", "openai")
    need("httpx", "httpx")
    return phoenix_evals


@pytest.fixture
def pandas(need: Callable[[str, str], ModuleType]) -> ModuleType:
    return need("pandas", "pandas")


def test_evaluate_dataframe_scores_the_same_with_phoenix_executors_and_after_install(
    evals: ModuleType, pandas: ModuleType, llm_server: Callable[..., LLMServer]
) -> None:
    server = llm_server(latency=0.01)
    frame = rows(pandas, 12)

    def run() -> tuple[list[str | None], list[str]]:
        return labels_and_statuses(Judge(evals, server).evaluate(frame))

    phoenix = run()
    evalexec.phoenix.install()
    ours = run()
    assert ours == phoenix == (expected_labels(12), ["COMPLETED"] * 12)
    assert server.stats()["ok"] == 24


def test_async_evaluate_dataframe_scores_the_same_with_phoenix_executors_and_after_install(
    evals: ModuleType, pandas: ModuleType, llm_server: Callable[..., LLMServer]
) -> None:
    server = llm_server(latency=0.01)
    frame = rows(pandas, 12)

    def run() -> tuple[list[str | None], list[str]]:
        return labels_and_statuses(Judge(evals, server).async_evaluate(frame, 4)[0])

    phoenix = run()
    evalexec.phoenix.install()
    ours = run()
    assert ours == phoenix == (expected_labels(12), ["COMPLETED"] * 12)


def test_async_evaluate_dataframe_through_openai_runs_near_the_ideal_after_install(
    evals: ModuleType,
    pandas: ModuleType,
    llm_server: Callable[..., LLMServer],
    figure: Callable[[str], None],
) -> None:
    """300 rows, 400 ms a call, concurrency 20: ideal N x latency / concurrency = 6.0 s.

    (The latency is long enough that the SDK's and server's few milliseconds of work per
    call, on a loaded 2-core machine, stay small beside it.)"""
    n, latency, concurrency = 300, 0.4, 20
    ideal = n * latency / concurrency
    server = llm_server(latency=latency)
    frame = rows(pandas, n)
    if measure_before():
        _, phoenix = Judge(evals, server).async_evaluate(frame, concurrency)
        figure(
            f"async_evaluate_dataframe, Phoenix 3.9.4: {phoenix:.2f} s = "
            f"{ideal / phoenix:.2f} of ideal"
        )
        with evalexec.phoenix.installed(replace_rate_limiters=False):
            _, swapped = Judge(evals, server).async_evaluate(frame, concurrency)
        figure(
            f"async_evaluate_dataframe, evalexec executors behind Phoenix's RateLimiter: "
            f"{swapped:.2f} s = {ideal / swapped:.2f} of ideal"
        )
    evalexec.phoenix.install()
    result, elapsed = Judge(evals, server).async_evaluate(frame, concurrency)
    figure(
        f"async_evaluate_dataframe {n} rows x {latency * 1000:.0f} ms at concurrency "
        f"{concurrency}, after install(): {elapsed:.2f} s = {ideal / elapsed:.2f} of ideal "
        f"({ideal:.1f} s)"
    )
    assert labels_and_statuses(result) == (expected_labels(n), ["COMPLETED"] * n)
    assert ideal / elapsed >= 0.85


def test_async_evaluate_dataframe_keeps_up_with_a_server_rate_limit_after_install(
    evals: ModuleType,
    pandas: ModuleType,
    llm_server: Callable[..., LLMServer],
    figure: Callable[[str], None],
) -> None:
    """The server admits 1800 requests a minute (30/s, one second's worth held), answering
    429s with OpenAI's headers; 300 ms a call, concurrency 20 (room for 66 calls a second).
    The ideal is one second's burst, then 30 a second: 6.0 s for 200 rows."""
    n, latency, concurrency, rpm = 200, 0.3, 20, 1800
    rate = rpm / 60
    ideal = max(n * latency / concurrency, (n - rate) / rate + latency)
    server = llm_server(latency=latency, rpm=rpm)
    frame = rows(pandas, n)
    evalexec.phoenix.install()
    result, elapsed = Judge(evals, server).async_evaluate(frame, concurrency)
    stats = server.stats()
    figure(
        f"async_evaluate_dataframe {n} rows x {latency * 1000:.0f} ms at concurrency "
        f"{concurrency}, server limit {rpm} rpm, after install(): {elapsed:.2f} s = "
        f"{ideal / elapsed:.2f} of ideal ({ideal:.1f} s); {stats['limited']} calls got 429"
    )
    assert labels_and_statuses(result)[0] == expected_labels(n)
    assert stats["ok"] == n
    assert stats["limited"] > 0, "the limit never bit: the test measured nothing"
    assert ideal / elapsed >= 0.9


def sync_concurrency_supported() -> bool:
    return "concurrency" in inspect.signature(evalexec.SyncExecutor).parameters


@pytest.mark.skipif(
    not sync_concurrency_supported(),
    reason="evalexec.SyncExecutor has no concurrency= keyword yet (threaded SyncExecutor)",
)
def test_evaluate_dataframe_runs_at_least_three_times_faster_after_install(
    evals: ModuleType, pandas: ModuleType, figure: Callable[[str], None]
) -> None:
    """40 rows through a 50 ms evaluator: Phoenix runs them one by one; install() runs
    them sync_concurrency (8) at once."""
    n = 40

    @evals.create_evaluator(name="slow_length")
    def slow_length(text: str) -> int:
        time.sleep(0.05)
        return len(text)

    frame = rows(pandas, n)

    def run() -> tuple[list[Any], float]:
        started = time.perf_counter()
        result = evals.evaluate_dataframe(
            dataframe=frame, evaluators=[slow_length], hide_tqdm_bar=True
        )
        elapsed = time.perf_counter() - started
        return [score["score"] for score in result["slow_length_score"]], elapsed

    phoenix_scores, phoenix = run()
    evalexec.phoenix.install()
    our_scores, ours = run()
    figure(
        f"evaluate_dataframe {n} rows x 50 ms: Phoenix {phoenix:.2f} s, after install() "
        f"{ours:.2f} s ({phoenix / ours:.1f}x)"
    )
    assert our_scores == phoenix_scores == [len(f"row number {i}") for i in range(n)]
    assert phoenix / ours >= 3
