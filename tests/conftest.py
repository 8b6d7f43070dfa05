from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

import evalexec._progress
from tests.fakes import RecordingBar, previous_sigint_handler
from tests.integration.servers import stop as stop_server
from tests.provider_server import ProviderServer


@pytest.fixture(autouse=True)
def _no_implicit_event_loop(request: pytest.FixtureRequest) -> None:
    """Around every test, looptime asks the event loop policy for a loop; in a sync test
    run before any loop was set, that creates a loop nobody closes, whose ResourceWarning
    then fails a later test. Setting "no loop" for sync tests prevents it."""
    if not inspect.iscoroutinefunction(request.function):
        asyncio.set_event_loop(None)


@pytest.fixture(autouse=True)
def _quiet_evalexec_logger() -> Iterator[None]:
    """Keep per-retry log lines out of the test output (tests that read logs use caplog)."""
    logger = logging.getLogger("evalexec")
    before = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(before)


@pytest.fixture
def previous_handler() -> Iterator[Any]:
    """A SIGINT handler of the caller's own, in place for the test (yielded)."""
    original = signal.signal(signal.SIGINT, previous_sigint_handler)
    yield previous_sigint_handler
    signal.signal(signal.SIGINT, original)


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> type[RecordingBar]:
    """Every progress bar a run makes is a `RecordingBar`, made through the
    `evalexec._progress.tqdm` seam; the class keeps them (`opened`) and the lines
    written (`lines`)."""
    RecordingBar.forget()
    monkeypatch.setattr(evalexec._progress, "tqdm", RecordingBar)
    return RecordingBar


# Hypothesis profiles: `ci` by default; `pytest --hypothesis-profile=long` for a soak run.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile("ci")


@pytest.fixture
def provider_server() -> Iterator[Callable[..., ProviderServer]]:
    """Start tests/provider_server.py (OpenAI's and Anthropic's APIs, rate-limited) with
    ``(latency=..., rpm=..., tpm=..., quiet_successes=...)`` on a free port of 127.0.0.1;
    every one started is stopped by PID at the end of the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        *, latency: float = 0.0, rpm: int = 0, tpm: int = 0, quiet_successes: bool = False
    ) -> ProviderServer:
        command = [sys.executable, "-m", "tests.provider_server", "--latency", str(latency)]
        command += ["--rpm", str(rpm), "--tpm", str(tpm)]
        if quiet_successes:
            command.append("--quiet-successes")
        root = Path(__file__).resolve().parent.parent
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root)
        processes.append(process)
        assert process.stdout is not None
        first = process.stdout.readline()  # the server prints its port once it listens
        if not first.startswith("PORT "):
            pytest.fail(f"the local provider server did not start: {first!r}")
        port = int(first.split()[1])
        return ProviderServer(f"http://127.0.0.1:{port}", latency, rpm, process.pid)

    yield start
    for process in processes:
        stop_server(process)
