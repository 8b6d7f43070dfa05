"""OpenTelemetry spans of a run (`evalexec._telemetry`), read back from the SDK's
in-memory exporter.

Each test points the engine at a tracer provider of its own (the module's
``tracer_provider`` seam), so no global OpenTelemetry state is touched; one subprocess
test goes through the global provider, as users configure it. AsyncExecutor tests run
on virtual time; the threaded SyncExecutor tests use barriers, not sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode
except ImportError:  # pragma: no cover - the test extra installs the SDK
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("pip install 'evalexec[test]' (opentelemetry-sdk)", allow_module_level=True)

from evalexec import _telemetry
from evalexec._retry import Backoff
from evalexec._telemetry import NO_TELEMETRY, start_run
from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionStatus, SyncExecutor
from tests.fakes import FakeGenerate, output_for

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0  # a barrier not reached by then means the test failed


class Spans:
    """The spans a test's runs sent, finished ones only."""

    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
        self.exporter = exporter
        self.user = provider.get_tracer("user code")  # what the user's function traces with

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def run(self) -> ReadableSpan:
        (run,) = self.named("evalexec.run")
        return run

    def attempts(self) -> list[ReadableSpan]:
        """Attempt spans in (input index, attempt number) order."""
        return sorted(
            self.named("evalexec.attempt"),
            key=lambda s: (attr(s, "evalexec.input.index"), attr(s, "evalexec.attempt.number")),
        )


def attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(name)


def outcomes(spans: list[ReadableSpan]) -> list[tuple[Any, Any, Any]]:
    return [
        (
            attr(s, "evalexec.input.index"),
            attr(s, "evalexec.attempt.number"),
            attr(s, "evalexec.attempt.outcome"),
        )
        for s in spans
    ]


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_telemetry, "tracer_provider", provider)
    yield Spans(exporter, provider)
    provider.shutdown()


class Transient(Exception):
    """A 503: retried after the backoff's delay."""

    status_code = 503


class SteppingController:
    """A controller stand-in: an error cuts the target to 1, a success raises it by one."""

    def __init__(self, target: int, most: int) -> None:
        self.target_concurrency = target
        self.most = most
        self.inactive_check_interval = 1000.0

    def record_success(self, latency_seconds: float) -> None:
        self.target_concurrency = min(self.most, self.target_concurrency + 1)

    def record_timeout(self) -> None:
        self.target_concurrency = 1

    def record_error(self) -> None:
        self.target_concurrency = 1


# -- the run span and its attempts ---------------------------------------------------------


@pytest.mark.looptime
async def test_a_run_sends_one_span_and_one_child_span_per_attempt(spans: Spans) -> None:
    outputs, _ = await AsyncExecutor(FakeGenerate(), concurrency=2).execute(["a", "b", "c"])
    assert outputs == [output_for(x) for x in "abc"]
    run = spans.run()
    assert run.parent is None
    assert dict(run.attributes or {}) == {
        "openinference.span.kind": "CHAIN",
        "evalexec.executor": "async",
        "evalexec.function": "FakeGenerate",
        "evalexec.run.concurrency": 2,
        "evalexec.run.inputs": 3,
        "evalexec.run.max_retries": 10,
        "evalexec.run.timeout_seconds": 60.0,
        "evalexec.run.stop_reason": "completed",
        "evalexec.run.attempts": 3,
        "evalexec.status.completed": 3,
        "evalexec.status.completed_with_retries": 0,
        "evalexec.status.failed": 0,
        "evalexec.status.did_not_run": 0,
    }
    assert run.status.status_code is StatusCode.OK
    attempts = spans.attempts()
    assert outcomes(attempts) == [(0, 1, "ok"), (1, 1, "ok"), (2, 1, "ok")]
    assert {parent_id(a) for a in attempts} == {span_id(run)}
    assert {a.context.trace_id for a in attempts if a.context} == {run.context.trace_id}
    assert all(attr(a, "openinference.span.kind") == "CHAIN" for a in attempts)
    assert all(a.status.status_code is StatusCode.OK for a in attempts)


@pytest.mark.looptime
async def test_the_run_span_is_a_child_of_the_span_current_when_the_run_starts(
    spans: Spans,
) -> None:
    with spans.user.start_as_current_span("experiment") as outer:
        await AsyncExecutor(FakeGenerate()).execute(["a"])
    assert parent_id(spans.run()) == outer.get_span_context().span_id


@pytest.mark.looptime
async def test_a_retried_error_ends_its_attempt_as_an_error_with_the_backoff_delay(
    spans: Spans,
) -> None:
    calls = {"a": 0}

    async def flaky(item: str) -> str:
        calls[item] += 1
        if calls[item] == 1:
            raise Transient("service unavailable")
        return output_for(item)

    executor = AsyncExecutor(flaky, backoff=Backoff(initial=2.0, jitter=0.0))
    _, details = await executor.execute(["a"])
    assert details[0].status is ExecutionStatus.COMPLETED_WITH_RETRIES
    first, second = spans.attempts()
    assert outcomes([first, second]) == [(0, 1, "error"), (0, 2, "ok")]
    assert attr(first, "evalexec.attempt.will_retry") is True
    assert attr(first, "evalexec.retry.delay_seconds") == 2.0
    assert attr(first, "evalexec.retry.cooldown_seconds") is None
    assert attr(first, "evalexec.error.kind") == "transient"
    assert attr(first, "error.type") == f"{__name__}.Transient"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "Transient('service unavailable')"
    assert events(first) == [
        (
            "exception",
            {
                "exception.type": f"{__name__}.Transient",
                "exception.message": "Transient('service unavailable')",
            },
        )
    ]
    run = spans.run()
    assert attr(run, "evalexec.status.completed_with_retries") == 1
    assert attr(run, "evalexec.run.attempts") == 2


@pytest.mark.looptime
async def test_a_timed_out_attempt_is_a_timeout_and_the_next_one_is_attempt_two(
    spans: Spans,
) -> None:
    fake = FakeGenerate({"a": [("hang", 0.0), ("ok", 1.0)]})
    _, details = await AsyncExecutor(fake, timeout=2.5).execute(["a"])
    assert details[0].status is ExecutionStatus.COMPLETED_WITH_RETRIES
    first, second = spans.attempts()
    assert outcomes([first, second]) == [(0, 1, "timeout"), (0, 2, "ok")]
    assert attr(first, "evalexec.attempt.will_retry") is True
    assert attr(first, "error.type") == "TimeoutError"
    assert first.status.status_code is StatusCode.ERROR
    assert attr(spans.run(), "evalexec.run.timeout_seconds") == 2.5


@pytest.mark.looptime
async def test_the_last_allowed_timeout_says_it_will_not_be_retried(spans: Spans) -> None:
    fake = FakeGenerate({"a": [("hang", 0.0)]})
    _, details = await AsyncExecutor(fake, timeout=1.0, max_retries=1).execute(["a"])
    assert details[0].status is ExecutionStatus.FAILED
    attempts = spans.attempts()
    assert outcomes(attempts) == [(0, 1, "timeout"), (0, 2, "timeout")]
    assert [attr(a, "evalexec.attempt.will_retry") for a in attempts] == [True, False]
    assert attr(spans.run(), "evalexec.status.failed") == 1


@pytest.mark.looptime
async def test_a_budget_learned_from_the_headers_is_an_event_on_the_run_span(
    spans: Spans,
) -> None:
    import httpx

    import evalexec.httpx

    hooks = evalexec.httpx.event_hooks()

    async def call(item: str) -> str:
        request = httpx.Request("POST", "http://provider/v1/chat/completions")
        await hooks["request"][0](request)
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"}
        await hooks["response"][0](httpx.Response(200, headers=headers, request=request))
        return output_for(item)

    outputs, _ = await AsyncExecutor(call, concurrency=1).execute(["a", "b"])
    assert outputs == [output_for("a"), output_for("b")]
    learned = [e for e in events(spans.run()) if e[0] == "evalexec.budget_learned"]
    assert learned == [("evalexec.budget_learned", {"evalexec.budget": "rpm<=600"})]


@pytest.mark.looptime
async def test_a_rate_limit_with_a_hint_is_a_cooldown_event_on_the_run_span(
    spans: Spans,
) -> None:
    calls = {"a": 0, "b": 0}

    async def limited(item: str) -> str:
        calls[item] += 1
        if item == "a" and calls[item] == 1:
            raise RateLimitError("slow down", retry_after=3.0)
        return output_for(item)

    loop = asyncio.get_running_loop()
    start = loop.time()
    outputs, _ = await AsyncExecutor(limited, concurrency=1).execute(["a", "b"])
    assert outputs == [output_for("a"), output_for("b")]
    assert loop.time() - start == 3.0  # every call waited out the hint
    attempts = spans.attempts()
    assert outcomes(attempts) == [(0, 1, "rate_limit"), (0, 2, "ok"), (1, 1, "ok")]
    assert attr(attempts[0], "evalexec.retry.cooldown_seconds") == 3.0
    assert attr(attempts[0], "evalexec.retry.delay_seconds") == 3.0
    assert attr(attempts[0], "evalexec.error.kind") == "rate limit"
    assert attr(attempts[0], "error.type") == "evalexec.exceptions.RateLimitError"
    assert ("evalexec.cooldown", {"evalexec.cooldown.seconds": 3.0}) in events(spans.run())


@pytest.mark.looptime
async def test_each_move_of_the_target_is_an_event_with_the_old_and_new_values(
    spans: Spans,
) -> None:
    fake = FakeGenerate({"a": [("rate_limit", 0.0), ("ok", 1.0)], "b": [("ok", 2.0)]})
    executor = AsyncExecutor(fake, concurrency=3, backoff=None)
    executor._concurrency_controller = SteppingController(target=2, most=3)
    await executor.execute(["a", "b"])
    moves = [
        (e["evalexec.target.old"], e["evalexec.target.new"])
        for name, e in events(spans.run())
        if name == "evalexec.target_changed"
    ]
    # the gate starts at the concurrency (3); the controller's 2; the rate limit cuts it
    # to 1; the two successes raise it by one each
    assert moves == [(3, 2), (2, 1), (1, 2), (2, 3)]


@pytest.mark.looptime
async def test_a_failed_input_ends_the_run_span_as_an_error_with_its_counts(
    spans: Spans,
) -> None:
    fake = FakeGenerate({"b": [("phoenix", 1.0)], "c": [("hang", 0.0)]})
    _, details = await AsyncExecutor(fake, concurrency=2).execute(["a", "b", "c", "d"])
    assert [d.status for d in details] == [
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.DID_NOT_RUN,
        ExecutionStatus.DID_NOT_RUN,
    ]
    attempts = spans.attempts()
    # "c" was in flight when "b" failed: its attempt was cancelled with the run
    assert outcomes(attempts) == [(0, 1, "ok"), (1, 1, "error"), (2, 1, "cancelled")]
    failed = attempts[1]
    assert attr(failed, "evalexec.attempt.will_retry") is False
    assert attr(failed, "evalexec.error.kind") == "fatal"
    assert attr(failed, "evalexec.retry.delay_seconds") is None
    assert attempts[2].status.status_code is StatusCode.UNSET
    assert attr(attempts[2], "evalexec.attempt.will_retry") is None
    run = spans.run()
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "the run stopped: failed"
    assert attr(run, "evalexec.run.stop_reason") == "failed"
    counts = {k: v for k, v in (run.attributes or {}).items() if k.startswith("evalexec.status.")}
    assert counts == {
        "evalexec.status.completed": 1,
        "evalexec.status.completed_with_retries": 0,
        "evalexec.status.failed": 1,
        "evalexec.status.did_not_run": 2,
    }


@pytest.mark.looptime
async def test_retries_used_up_leave_the_last_attempt_not_retried(spans: Spans) -> None:
    fake = FakeGenerate({"a": [("error", 0.0)]})
    await AsyncExecutor(fake, max_retries=2, exit_on_error=False).execute(["a", "b"])
    attempts = spans.attempts()
    assert outcomes(attempts) == [(0, 1, "error"), (0, 2, "error"), (0, 3, "error"), (1, 1, "ok")]
    assert [attr(a, "evalexec.attempt.will_retry") for a in attempts[:3]] == [True, True, False]
    run = spans.run()
    assert attr(run, "evalexec.run.stop_reason") == "completed"
    assert attr(run, "evalexec.status.failed") == 1


@pytest.mark.looptime
async def test_a_stream_of_unknown_length_counts_the_inputs_it_saw(spans: Spans) -> None:
    seen = [i async for i, _, _ in AsyncExecutor(FakeGenerate()).stream(iter(range(4)))]
    assert sorted(seen) == [0, 1, 2, 3]
    run = spans.run()
    assert attr(run, "evalexec.run.inputs") is None
    assert attr(run, "evalexec.status.completed") == 4
    assert attr(run, "evalexec.status.did_not_run") == 0


# -- the user's spans nest under the attempt that made them ------------------------------


@pytest.mark.looptime
async def test_a_span_made_inside_an_async_function_is_a_child_of_its_attempt(
    spans: Spans,
) -> None:
    async def traced(item: str) -> str:
        with spans.user.start_as_current_span(f"llm {item}"):
            await asyncio.sleep(1.0)
            return output_for(item)

    await AsyncExecutor(traced, concurrency=2).execute(["a", "b"])
    attempt_of = {attr(a, "evalexec.input.index"): span_id(a) for a in spans.attempts()}
    (llm_a,) = spans.named("llm a")
    (llm_b,) = spans.named("llm b")
    assert parent_id(llm_a) == attempt_of[0]
    assert parent_id(llm_b) == attempt_of[1]


def test_a_span_made_inside_a_function_on_a_worker_thread_is_a_child_of_its_attempt(
    spans: Spans,
) -> None:
    barrier = threading.Barrier(2, timeout=WAIT)

    def traced(item: str) -> str:
        with spans.user.start_as_current_span(f"llm {item}"):
            barrier.wait()  # opens only when both calls are in flight on their threads
            return output_for(item)

    outputs, _ = SyncExecutor(traced, concurrency=2).run(["a", "b"])
    assert outputs == [output_for("a"), output_for("b")]
    run = spans.run()
    assert attr(run, "evalexec.executor") == "threads"
    attempts = spans.attempts()
    assert {parent_id(a) for a in attempts} == {span_id(run)}
    attempt_of = {attr(a, "evalexec.input.index"): span_id(a) for a in attempts}
    (llm_a,) = spans.named("llm a")
    (llm_b,) = spans.named("llm b")
    assert parent_id(llm_a) == attempt_of[0]
    assert parent_id(llm_b) == attempt_of[1]


@pytest.mark.parametrize("form", ["run", "stream"])
def test_a_threaded_run_span_is_a_child_of_the_span_current_when_it_starts(
    spans: Spans, form: str
) -> None:
    executor = SyncExecutor(output_for, concurrency=2)
    with spans.user.start_as_current_span("experiment") as outer:
        if form == "run":
            executor.run(["a"])
        else:
            list(executor.stream(["a"]))
    assert parent_id(spans.run()) == outer.get_span_context().span_id


# -- staying out of the way ----------------------------------------------------------------


def test_a_tracer_provider_that_records_nothing_gets_the_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_telemetry, "tracer_provider", trace.NoOpTracerProvider())
    telemetry = start_run(
        executor="async", function=len, total=1, concurrency=1, max_retries=0, timeout=1.0
    )
    assert telemetry is NO_TELEMETRY


class BrokenProcessor(SpanProcessor):
    """A span processor with a bug: it raises when the second span ends."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1
        if self.ended == 2:
            raise RuntimeError("processor bug")


@pytest.mark.looptime
async def test_a_tracer_that_raises_is_logged_once_and_the_run_goes_on_untraced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    provider = TracerProvider()
    processor = BrokenProcessor()
    provider.add_span_processor(processor)
    monkeypatch.setattr(_telemetry, "tracer_provider", provider)
    fake = FakeGenerate({"a": [("error", 1.0), ("ok", 1.0)]})
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        outputs, details = await AsyncExecutor(fake, concurrency=1).execute(["a", "b", "c"])
    assert outputs == [output_for(x) for x in "abc"]
    assert [d.status for d in details] == [
        ExecutionStatus.COMPLETED_WITH_RETRIES,
        ExecutionStatus.COMPLETED,
        ExecutionStatus.COMPLETED,
    ]
    failures = [r for r in caplog.records if "tracing this run failed" in r.getMessage()]
    assert len(failures) == 1
    assert processor.ended == 2  # nothing more was traced after the failure


def _python(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


_RUN_BOTH = """
async def double(x):
    return 2 * x
def triple(x):
    return 3 * x
print(AsyncExecutor(double, concurrency=2).run([1, 2])[0],
      SyncExecutor(triple, concurrency=2).run([1, 2])[0])
print(sorted(m for m, module in sys.modules.items() if m.startswith('opentelemetry') and module))
"""


def test_without_opentelemetry_runs_work_and_import_nothing_of_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "from evalexec.executors import AsyncExecutor, SyncExecutor\n" + _RUN_BOTH
    )
    assert _python(code).splitlines() == ["[2, 4] [3, 6]", "[]"]


def test_importing_evalexec_imports_no_opentelemetry_until_a_run_starts() -> None:
    code = (
        "import sys, evalexec, evalexec.executors\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    assert _python(code) == "[]"


def test_runs_are_traced_through_the_global_tracer_provider() -> None:
    code = (
        "import sys\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "from evalexec.executors import AsyncExecutor, SyncExecutor\n"
        + _RUN_BOTH
        + "spans = exporter.get_finished_spans()\n"
        "print(sorted((s.name, s.attributes.get('evalexec.executor')) for s in spans))\n"
    )
    lines = _python(code).splitlines()
    assert lines[0] == "[2, 4] [3, 6]"
    assert lines[2] == str(
        sorted(
            [("evalexec.attempt", None)] * 4
            + [("evalexec.run", "async"), ("evalexec.run", "threads")]
        )
    )


def test_the_otel_extra_brings_the_opentelemetry_api_alone() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["otel"] == ["opentelemetry-api>=1.20"]


def test_a_sequential_sync_run_sends_a_run_span_and_a_span_per_attempt(spans: Spans) -> None:
    """Phoenix's default sync path (one call at a time in the calling thread) is traced too,
    with a user's span inside the function nested under its attempt."""
    fake = FakeGenerate({"b": [("error", 0), ("ok", 0)]})

    def gen(item: str) -> str:
        with spans.user.start_as_current_span(f"llm {item}"):
            return fake.sync(item)

    outputs, _ = SyncExecutor(gen, backoff=None).run(["a", "b"])
    assert outputs == [output_for("a"), output_for("b")]
    run = spans.run()
    assert attr(run, "evalexec.executor") == "sync"
    assert attr(run, "evalexec.run.stop_reason") == "completed"
    assert attr(run, "evalexec.status.completed") == 1
    assert attr(run, "evalexec.status.completed_with_retries") == 1
    attempts = spans.attempts()
    assert outcomes(attempts) == [(0, 1, "ok"), (1, 1, "error"), (1, 2, "ok")]
    assert {parent_id(a) for a in attempts} == {span_id(run)}
    (llm_a,) = spans.named("llm a")
    assert parent_id(llm_a) == span_id(attempts[0])
