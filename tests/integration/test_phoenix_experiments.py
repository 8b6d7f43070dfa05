"""phoenix.client's run_experiment / evaluate_experiment (sync and async) against a real
local Phoenix server, with Phoenix's executors and after evalexec.phoenix.install()."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import evalexec
import evalexec.phoenix
from tests.integration.servers import PhoenixServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_phoenix")]

N = 12
_names = itertools.count()


def answer(question: str) -> dict[str, str]:
    """The task's answer: right for two questions in three."""
    number = int(question.removeprefix("q"))
    return {"answer": f"a{number}" if number % 3 else "wrong"}


def task(input: dict[str, Any]) -> dict[str, str]:
    time.sleep(0.02)
    return answer(input["question"])


async def async_task(input: dict[str, Any]) -> dict[str, str]:
    await asyncio.sleep(0.02)
    return answer(input["question"])


def exact(output: dict[str, Any], expected: dict[str, Any]) -> bool:
    return output == expected


def length(output: dict[str, Any]) -> float:
    return float(len(output["answer"]))


def expected_results() -> dict[str, tuple[dict[str, str], float]]:
    """question -> (the task's output, the `exact` score)."""
    return {
        f"q{i}": (answer(f"q{i}"), 1.0 if answer(f"q{i}") == {"answer": f"a{i}"} else 0.0)
        for i in range(N)
    }


def results(ran: Any, questions: dict[str, str], evaluator: str) -> dict[str, Any]:
    """question -> (output, score of `evaluator`) of a RanExperiment."""
    by_run = {run["id"]: run for run in ran["task_runs"]}
    scores: dict[str, float | None] = {}
    for evaluation in ran["evaluation_runs"]:
        if evaluation.name == evaluator:
            run = by_run[evaluation.experiment_run_id]
            result = evaluation.result
            scores[run["dataset_example_id"]] = None if result is None else result.get("score")
    return {
        questions[run["dataset_example_id"]]: (run["output"], scores.get(run["dataset_example_id"]))
        for run in ran["task_runs"]
    }


@pytest.fixture
def client_package(phoenix_client: ModuleType, need: Any) -> ModuleType:
    need("httpx", "httpx")
    return phoenix_client


@pytest.fixture
def client(client_package: ModuleType, phoenix_server: PhoenixServer) -> Iterator[Any]:
    import httpx

    http = httpx.Client(base_url=phoenix_server.base_url, timeout=30)
    yield client_package.Client(http_client=http)
    http.close()


@pytest.fixture
def dataset(client: Any) -> tuple[Any, dict[str, str]]:
    """A dataset of N questions; and example id -> question."""
    created = client.datasets.create_dataset(
        name=f"evalexec-{next(_names)}-{time.time_ns()}",
        inputs=[{"question": f"q{i}"} for i in range(N)],
        outputs=[{"answer": f"a{i}"} for i in range(N)],
    )
    questions = {example["id"]: example["input"]["question"] for example in created.examples}
    return created, questions


def test_run_experiment_gives_the_same_results_with_phoenix_executors_and_after_install(
    client: Any, dataset: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, questions = dataset
    threads: list[str] = []

    def watched_task(input: dict[str, Any]) -> dict[str, str]:
        threads.append(threading.current_thread().name)
        return task(input)

    def run() -> dict[str, Any]:
        ran = client.experiments.run_experiment(
            dataset=ds, task=watched_task, evaluators={"exact": exact}, print_summary=False
        )
        return results(ran, questions, "exact")

    phoenix = run()
    assert set(threads) == {threading.main_thread().name}
    threads.clear()
    calls: list[int] = []
    original_run = evalexec.executors.SyncExecutor.run

    def counted(self: evalexec.SyncExecutor, inputs: Any) -> Any:
        calls.append(len(inputs))
        return original_run(self, inputs)

    monkeypatch.setattr(evalexec.executors.SyncExecutor, "run", counted)
    evalexec.phoenix.install(sync_concurrency=4)
    ours = run()
    assert calls == [N, N]  # the task runs, then the evaluations, on evalexec
    assert ours == phoenix == expected_results()
    if "concurrency" in inspect.signature(evalexec.SyncExecutor).parameters:
        assert len(set(threads)) > 1  # sync_concurrency=4: worker threads
    assert len(threads) == N


def test_a_task_rate_limit_reaches_evalexec_through_the_client_rate_limiter_after_install(
    client: Any, dataset: tuple[Any, dict[str, str]]
) -> None:
    """With ``rate_limit_errors=`` Phoenix's client throttles and, on a rate limit, sleeps
    5 s and raises its own error; installed, the task's error reaches evalexec, which
    waits the 50 ms the error asks for and retries."""
    ds, questions = dataset

    class RateLimitError(Exception):
        retry_after = 0.05

    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def limited_task(input: dict[str, Any]) -> dict[str, str]:
        with lock:
            attempts[input["question"]] = attempts.get(input["question"], 0) + 1
            first = attempts[input["question"]] == 1
        if first:
            raise RateLimitError("429 Too Many Requests")
        return answer(input["question"])

    evalexec.phoenix.install(sync_concurrency=4)
    started = time.monotonic()
    ran = client.experiments.run_experiment(
        dataset=ds,
        task=limited_task,
        evaluators={"exact": exact},
        rate_limit_errors=RateLimitError,
        print_summary=False,
    )
    elapsed = time.monotonic() - started
    assert results(ran, questions, "exact") == expected_results()
    assert attempts == {f"q{i}": 2 for i in range(N)}
    assert elapsed < 5.0  # Phoenix's limiter alone sleeps 5 s on the first rate limit


def test_evaluate_experiment_after_install_adds_the_evaluations(
    client: Any, dataset: tuple[Any, dict[str, str]]
) -> None:
    ds, questions = dataset
    evalexec.phoenix.install(sync_concurrency=4)
    ran = client.experiments.run_experiment(dataset=ds, task=task, print_summary=False)
    evaluated = client.experiments.evaluate_experiment(
        experiment=ran, evaluators={"length": length}, print_summary=False
    )
    got = results(evaluated, questions, "length")
    assert got == {
        question: (output, float(len(output["answer"])))
        for question, (output, _) in expected_results().items()
    }


def test_async_run_and_evaluate_experiment_give_the_same_results_before_and_after_install(
    client_package: ModuleType,
    phoenix_server: PhoenixServer,
    dataset: tuple[Any, dict[str, str]],
) -> None:
    import httpx

    ds, questions = dataset

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=phoenix_server.base_url, timeout=30) as http:
            experiments = client_package.AsyncClient(http_client=http).experiments
            ran = await experiments.run_experiment(
                dataset=ds,
                task=async_task,
                evaluators={"exact": exact},
                concurrency=4,
                print_summary=False,
            )
            evaluated = await experiments.evaluate_experiment(
                experiment=ran, evaluators={"length": length}, concurrency=4, print_summary=False
            )
            return results(ran, questions, "exact"), results(evaluated, questions, "length")

    phoenix = asyncio.run(run())
    evalexec.phoenix.install()
    ours = asyncio.run(run())
    assert ours == phoenix
    assert ours[0] == expected_results()
    assert ours[1] == {
        question: (output, float(len(output["answer"])))
        for question, (output, _) in expected_results().items()
    }
