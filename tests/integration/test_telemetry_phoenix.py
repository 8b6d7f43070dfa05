"""A run's spans sent over OTLP/HTTP to a real Phoenix server, and read back through its
REST API: the tree (run, attempts, the function's own spans), kinds and attributes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from evalexec import _telemetry
from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionStatus

pytestmark = pytest.mark.integration

READ_BACK_SECONDS = 30.0  # Phoenix inserts spans in batches; they are there well before


def _spans_of(base_url: str, project: str) -> list[dict[str, Any]]:
    """Every span of `project`, or [] while Phoenix has not created the project yet."""
    url = f"{base_url}/v1/projects/{urllib.parse.quote(project)}/spans?limit=1000"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body: dict[str, Any] = json.load(reply)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    data: list[dict[str, Any]] = body["data"]
    return data


def test_a_runs_spans_reach_phoenix_as_one_tree_with_the_functions_spans_inside(
    phoenix_server: Any,
    need: Callable[[str, str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sdk = need("opentelemetry.sdk.trace", "opentelemetry-sdk")
    export = need("opentelemetry.sdk.trace.export", "opentelemetry-sdk")
    resources = need("opentelemetry.sdk.resources", "opentelemetry-sdk")
    otlp = need(
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    )
    project = f"evalexec-telemetry-{uuid.uuid4().hex[:8]}"
    provider = sdk.TracerProvider(
        resource=resources.Resource.create({"openinference.project.name": project})
    )
    exporter = otlp.OTLPSpanExporter(endpoint=f"{phoenix_server.base_url}/v1/traces")
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_telemetry, "tracer_provider", provider)
    user = provider.get_tracer("user code")
    calls = {"a": 0, "b": 0}

    async def judge(item: str) -> str:
        calls[item] += 1
        with user.start_as_current_span(f"llm {item} {calls[item]}"):
            if item == "a" and calls[item] == 1:
                raise RateLimitError("slow down", retry_after=0.05)
            return f"label:{item}"

    try:
        outputs, details = AsyncExecutor(judge, concurrency=2).run(["a", "b"])
    finally:
        provider.shutdown()  # flushes: every span has been sent when this returns
    assert outputs == ["label:a", "label:b"]
    assert [d.status for d in details] == [
        ExecutionStatus.COMPLETED_WITH_RETRIES,
        ExecutionStatus.COMPLETED,
    ]

    deadline = time.monotonic() + READ_BACK_SECONDS
    spans = _spans_of(phoenix_server.base_url, project)
    while len(spans) < 7 and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = _spans_of(phoenix_server.base_url, project)
    assert sorted(s["name"] for s in spans) == [
        "evalexec.attempt",
        "evalexec.attempt",
        "evalexec.attempt",
        "evalexec.run",
        "llm a 1",
        "llm a 2",
        "llm b 1",
    ]
    by_name = {span["name"]: span for span in spans}

    run = by_name["evalexec.run"]
    assert run["span_kind"] == "CHAIN"
    assert run["parent_id"] is None
    assert run["status_code"] == "OK"
    assert run["attributes"]["evalexec.executor"] == "async"
    assert run["attributes"]["evalexec.run.inputs"] == 2
    assert run["attributes"]["evalexec.run.stop_reason"] == "completed"
    assert run["attributes"]["evalexec.status.completed_with_retries"] == 1
    cooldowns = [e for e in run["events"] if e["name"] == "evalexec.cooldown"]
    assert [e["attributes"]["evalexec.cooldown.seconds"] for e in cooldowns] == [0.05]

    attempts = {
        (s["attributes"]["evalexec.input.index"], s["attributes"]["evalexec.attempt.number"]): s
        for s in spans
        if s["name"] == "evalexec.attempt"
    }
    assert sorted(attempts) == [(0, 1), (0, 2), (1, 1)]
    assert {s["span_kind"] for s in attempts.values()} == {"CHAIN"}
    assert {s["parent_id"] for s in attempts.values()} == {run["context"]["span_id"]}
    assert {s["context"]["trace_id"] for s in spans} == {run["context"]["trace_id"]}
    assert attempts[0, 1]["attributes"]["evalexec.attempt.outcome"] == "rate_limit"
    assert attempts[0, 1]["status_code"] == "ERROR"
    assert attempts[0, 2]["attributes"]["evalexec.attempt.outcome"] == "ok"
    for name, attempt in (("llm a 1", (0, 1)), ("llm a 2", (0, 2)), ("llm b 1", (1, 1))):
        assert by_name[name]["parent_id"] == attempts[attempt]["context"]["span_id"], name
