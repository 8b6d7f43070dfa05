from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

import evalexec._progress
from tests.fakes import RecordingBar, previous_sigint_handler


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
