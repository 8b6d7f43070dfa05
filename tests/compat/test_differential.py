"""Differential tests: the same deterministic scenarios through Phoenix's executors
(``phoenix.evals.executors``, arize-phoenix-evals) and evalexec's, comparing outputs,
statuses, the exceptions logged and the number of calls per input.

Phoenix's AsyncExecutor polls with real 1-s sleeps, so its scenarios are tiny and run
without dynamic concurrency (its controller only adds gated 1-s sleeps here, and can
hang when the target drops while the last retries are queued). Both are driven through
``.run()``, which calls ``asyncio.run``, from plain tests.

Where evalexec deliberately differs from Phoenix (SPEC §2-§4), these tests do not
assert equality:

* Rate-limit and transient errors are retried after an exponential backoff that honours
  the provider's retry hints; Phoenix retries at once. The async scenarios below pass
  ``backoff=None`` to evalexec (retry at once, like Phoenix) and the sync ones record the
  sleeps instead of sleeping.
* Errors are classified by shape: any exception whose class (or a base) is named
  ``RateLimitError``, or that carries HTTP status 429, is a rate limit (Phoenix: only its
  own class). 4xx client errors are not retried; a 429 that says the quota is exhausted
  is not retried and stops the run. Phoenix retries every exception that is not a
  ``PhoenixException``.
* Timeouts requeue at the same priority and have their own budget of ``max_retries``;
  in Phoenix they share one budget with errors.
* ``timeout=0`` (or any non-positive timeout), ``concurrency < 1`` and
  ``max_retries < 0`` raise ``ValueError``; Phoenix turns ``timeout=0`` into 60 s.
* ``str`` and ``None`` inputs raise ``TypeError`` (Phoenix runs a string character by
  character); a generator is refused by ``run()`` with a hint to use ``stream()``.
* ``run()`` inside a running event loop without nest_asyncio raises a ``RuntimeError``
  that says to ``await executor.execute(...)``; Phoenix fails inside ``asyncio.run`` and
  leaves an un-awaited coroutine behind.
* A generation function that does not return an awaitable raises ``TypeError`` once;
  Phoenix retries it and fails every input.
* ``SyncExecutor`` can run again after an interrupted run; Phoenix's stays terminated.
  The first termination signal interrupts the call in flight at once; Phoenix waits for
  it to end.
* Dynamic concurrency uses a different controller (slow start, one cut per episode, a
  saturation gate, no collapse to one worker), so concurrency over time differs, though
  results do not. ``ConcurrencyController`` itself keeps Phoenix's defaults but clamps
  its float target to ``[1, max_concurrency]`` (Phoenix's drifts outside and so is
  slower to feel a cut or a recovery), opens its first window at the first event, and
  refuses invalid arguments that Phoenix silently clamps.
* ``ExecutionDetails.log_runtime`` measures on the monotonic (event loop) clock; Phoenix
  uses ``time.time()``.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from evalexec import exceptions as ee
from evalexec import executors as ex
from tests.fakes import FakeError

px = pytest.importorskip(
    "phoenix.evals.executors",
    reason="arize-phoenix-evals is not installed: there is no Phoenix to compare with",
)
px_exceptions = pytest.importorskip("phoenix.evals.exceptions")
px_rate_limiters = pytest.importorskip("phoenix.evals.rate_limiters")

UNSET = "<unset>"

PHOENIX_CLASSES: dict[str, type[Exception]] = {
    "rate_limit": px_rate_limiters.RateLimitError,
    "phoenix": px_exceptions.PhoenixException,
}
EVALEXEC_CLASSES: dict[str, type[Exception]] = {
    "rate_limit": ee.RateLimitError,
    "phoenix": ee.PhoenixException,
}


@dataclass
class Scripted:
    """A generation function whose outcome per (input, attempt) comes from a table of
    ``"ok"``, ``"error"``, ``"rate_limit"`` and ``"phoenix"``; the last entry repeats."""

    table: dict[Any, list[str]]
    classes: dict[str, type[Exception]]
    calls: Counter[Any] = field(default_factory=Counter)

    def sync(self, item: Any) -> str:
        attempt = self.calls[item]
        self.calls[item] += 1
        row = self.table.get(item, ["ok"])
        outcome = row[min(attempt, len(row) - 1)]
        if outcome == "ok":
            return f"out:{item}"
        if outcome == "error":
            raise FakeError(f"{item} attempt {attempt}")
        raise self.classes[outcome](f"{outcome} on {item}")

    async def __call__(self, item: Any) -> str:
        return self.sync(item)


@dataclass(frozen=True)
class Result:
    outputs: list[Any]
    statuses: list[str]
    exceptions: list[list[str]]
    calls: dict[Any, int]


def result_of(run: tuple[list[Any], list[Any]], fake: Scripted) -> Result:
    outputs, details = run
    return Result(
        outputs=[UNSET if isinstance(o, px.Unset | ex.Unset) else o for o in outputs],
        statuses=[d.status.value for d in details],
        exceptions=[[type(e).__name__ for e in d.exceptions] for d in details],
        calls=dict(fake.calls),
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    table: dict[Any, list[str]]
    inputs: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 3


SCENARIOS = [
    Scenario("all succeed", {}, [0, 1, 2, 3, 4]),
    Scenario(
        "some fail then succeed",
        {1: ["error", "ok"], 3: ["error", "error", "ok"]},
        [0, 1, 2, 3, 4],
    ),
    Scenario(
        "retries exhausted, the run goes on",
        {1: ["error"]},
        [0, 1, 2],
        {"max_retries": 2, "exit_on_error": False},
    ),
    Scenario(
        "retries exhausted, the run stops",
        {1: ["error"]},
        [0, 1, 2, 3],
        {"max_retries": 2, "exit_on_error": True},
        concurrency=1,
    ),
    Scenario(
        "a PhoenixException fails at once",
        {1: ["phoenix", "ok"]},
        [0, 1, 2],
        {"exit_on_error": False},
    ),
    Scenario(
        "a PhoenixException stops the run",
        {1: ["phoenix", "ok"]},
        [0, 1, 2],
        concurrency=1,
    ),
    Scenario(
        "a rate limit, then success",
        {0: ["rate_limit", "rate_limit", "ok"]},
        [0, 1],
    ),
    Scenario(
        "rate limits exhaust the retries",
        {0: ["rate_limit"]},
        [0, 1],
        {"max_retries": 1, "exit_on_error": False},
    ),
    Scenario(
        "the fallback value",
        {1: ["error"]},
        [0, 1, 2],
        {"max_retries": 0, "exit_on_error": False, "fallback_return_value": "fb"},
    ),
    Scenario(
        "the fallback value of inputs that did not run",
        {0: ["phoenix"]},
        [0, 1, 2],
        {"fallback_return_value": None},
        concurrency=1,
    ),
]
IDS = [scenario.name for scenario in SCENARIOS]

FAMILIES = {
    "phoenix classes on both": (PHOENIX_CLASSES, PHOENIX_CLASSES),
    "each its own classes": (PHOENIX_CLASSES, EVALEXEC_CLASSES),
}


def uses_phoenix_exceptions(scenario: Scenario) -> bool:
    return any(o in ("rate_limit", "phoenix") for row in scenario.table.values() for o in row)


def families(scenario: Scenario) -> list[str]:
    return list(FAMILIES) if uses_phoenix_exceptions(scenario) else [next(iter(FAMILIES))]


CASE_ARGS: list[tuple[str, Scenario, str]] = [
    (f"{scenario.name} / {family}", scenario, family)
    for scenario in SCENARIOS
    for family in families(scenario)
]
CASES = [pytest.param(scenario, family, id=case_id) for case_id, scenario, family in CASE_ARGS]


def run_async_phoenix(scenario: Scenario, classes: dict[str, type[Exception]]) -> Result:
    fake = Scripted(scenario.table, classes)
    executor = px.AsyncExecutor(
        fake,
        concurrency=scenario.concurrency,
        enable_dynamic_concurrency=False,
        **scenario.kwargs,
    )
    return result_of(executor.run(scenario.inputs), fake)


def run_async_evalexec(scenario: Scenario, classes: dict[str, type[Exception]]) -> Result:
    fake = Scripted(scenario.table, classes)
    executor = ex.AsyncExecutor(
        fake, concurrency=scenario.concurrency, backoff=None, **scenario.kwargs
    )
    return result_of(executor.run(scenario.inputs), fake)


def run_sync_phoenix(scenario: Scenario, classes: dict[str, type[Exception]]) -> Result:
    fake = Scripted(scenario.table, classes)
    return result_of(px.SyncExecutor(fake.sync, **scenario.kwargs).run(scenario.inputs), fake)


def run_sync_evalexec(
    scenario: Scenario, classes: dict[str, type[Exception]], sleeps: list[float]
) -> Result:
    fake = Scripted(scenario.table, classes)
    executor = ex.SyncExecutor(fake.sync, sleep=sleeps.append, **scenario.kwargs)
    return result_of(executor.run(scenario.inputs), fake)


@pytest.fixture(scope="module")
def phoenix_async_results() -> Iterator[dict[str, Future[Result]]]:
    """Phoenix's async runs take a second or two each, mostly asleep: run them all at
    once, each in its own thread with its own event loop (and no signal handler)."""
    with ThreadPoolExecutor(max_workers=len(CASE_ARGS)) as pool:
        yield {
            case_id: pool.submit(run_async_phoenix, scenario, FAMILIES[family][0])
            for case_id, scenario, family in CASE_ARGS
        }


@pytest.mark.parametrize(("scenario", "family"), CASES)
def test_async_executors_agree(
    scenario: Scenario,
    family: str,
    phoenix_async_results: dict[str, Future[Result]],
    request: pytest.FixtureRequest,
) -> None:
    case_id = request.node.callspec.id
    phoenix = phoenix_async_results[case_id].result(timeout=60)
    assert run_async_evalexec(scenario, FAMILIES[family][1]) == phoenix


def retried_rate_limits(result: Result) -> int:
    """How many rate-limit errors were followed by another attempt."""
    retried = 0
    for status, names in zip(result.statuses, result.exceptions, strict=True):
        retried += names.count("RateLimitError")
        if status == "FAILED" and names[-1:] == ["RateLimitError"]:
            retried -= 1
    return retried


@pytest.mark.parametrize(("scenario", "family"), CASES)
def test_sync_executors_agree(scenario: Scenario, family: str) -> None:
    phoenix_classes, evalexec_classes = FAMILIES[family]
    sleeps: list[float] = []
    evalexec = run_sync_evalexec(scenario, evalexec_classes, sleeps)
    assert evalexec == run_sync_phoenix(scenario, phoenix_classes)
    # evalexec waits before retrying a rate limit; Phoenix retries at once
    assert len(sleeps) == retried_rate_limits(evalexec)


class SizedOnly:
    """Has `__len__` and `__iter__` but no `__getitem__`."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


def test_sync_executors_agree_on_a_sized_iterable() -> None:
    table = {"b": ["error", "ok"]}
    phoenix_fake = Scripted(table, PHOENIX_CLASSES)
    evalexec_fake = Scripted(table, PHOENIX_CLASSES)
    inputs = SizedOnly(["a", "b", "c"])
    phoenix = result_of(px.SyncExecutor(phoenix_fake.sync).run(inputs), phoenix_fake)
    evalexec = result_of(ex.SyncExecutor(evalexec_fake.sync).run(inputs), evalexec_fake)
    assert evalexec == phoenix
    assert evalexec.outputs == ["out:a", "out:b", "out:c"]


def test_the_execution_status_values_agree() -> None:
    assert [(s.name, s.value) for s in ex.ExecutionStatus] == [
        (s.name, s.value) for s in px.ExecutionStatus
    ]


def test_the_execution_details_agree() -> None:
    pairs = [(px.ExecutionDetails(), ex.ExecutionDetails()) for _ in range(3)]
    for phoenix, evalexec in pairs:
        assert evalexec.status.value == phoenix.status.value
        assert evalexec.exceptions == phoenix.exceptions == []
    for details in pairs[0]:
        details.complete()
    for details in pairs[1]:
        details.log_exception(ValueError("x"))
        details.complete()
    for details in pairs[2]:
        details.log_exception(ValueError("x"))
        details.fail()
    assert [e.status.value for _, e in pairs] == [p.status.value for p, _ in pairs]


# -- the public names and signatures ------------------------------------------------------


def public_names(module: Any) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        and callable(value)
    }


def test_every_public_phoenix_name_exists_in_evalexec() -> None:
    assert public_names(px) <= set(ex.__all__)
    assert isinstance(ex._unset, ex.Unset)


@pytest.mark.parametrize(
    "name",
    ["AsyncExecutor", "SyncExecutor", "get_executor_on_sync_context", "ConcurrencyController"],
)
def test_phoenix_parameters_come_first_with_the_same_kinds_and_defaults(name: str) -> None:
    theirs = list(inspect.signature(getattr(px, name)).parameters.values())
    ours = list(inspect.signature(getattr(ex, name)).parameters.values())
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    for their, our in zip(theirs, ours, strict=False):
        assert our.kind is their.kind, their.name
        if their.default is px._unset:
            assert our.default is ex._unset, their.name
        else:
            assert our.default == their.default, their.name
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(theirs) :])


# -- the controller, on the same clock ----------------------------------------------------


class FakeTimeModule:
    """Stands in for the `time` module Phoenix's controller reads `time.time()` from."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.time = clock


EVENTS = {
    "growth": [(t, "ok") for t in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)],
    "a window with an error": [
        *[(0.0, "ok"), (5.0, "ok"), (7.0, "error")],
        *[(10.0, "ok"), (15.0, "ok"), (20.0, "ok")],
    ],
    "a window with a timeout": [(0.0, "ok"), (3.0, "timeout"), (5.0, "ok"), (10.0, "ok")],
    "a collapse": [(0.0, "ok"), (1.0, "error"), (2.0, "error"), (3.0, "ok")],
    "no collapse when errors are far apart": [(0.0, "error"), (16.0, "error"), (17.0, "ok")],
    "errors spanning windows": [
        *[(0.0, "ok"), (4.0, "error"), (6.0, "ok")],
        *[(20.0, "error"), (26.0, "ok"), (31.0, "ok")],
    ],
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_the_controllers_agree_with_phoenix_defaults(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Phoenix's defaults, the same events at the same times give the same targets
    (sequences that keep the float target within [1, max], where the two agree)."""
    now = [0.0]
    monkeypatch.setattr(px, "time", FakeTimeModule(lambda: now[0]))
    phoenix = px.ConcurrencyController(max_concurrency=10, initial_target=6)
    evalexec = ex.ConcurrencyController(max_concurrency=10, initial_target=6, clock=lambda: now[0])
    targets: list[tuple[int, int]] = []
    latencies: list[tuple[float | None, float | None]] = []
    for t, event in EVENTS[name]:
        now[0] = t
        for controller in (phoenix, evalexec):
            if event == "ok":
                controller.record_success(t / 10 + 1.0)
            elif event == "error":
                controller.record_error()
            else:
                controller.record_timeout()
        targets.append((evalexec.target_concurrency, phoenix.target_concurrency))
        latencies.append((evalexec.smoothed_latency_seconds, phoenix._smoothed_latency_seconds))
    assert [ours for ours, _ in targets] == [theirs for _, theirs in targets]
    for ours, theirs in latencies:
        assert ours is None if theirs is None else math.isclose(ours or 0.0, theirs)
