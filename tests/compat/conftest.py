from __future__ import annotations

import asyncio
import inspect

import pytest


@pytest.fixture(autouse=True)
def _no_implicit_event_loop(request: pytest.FixtureRequest) -> None:
    """Around every test, looptime asks the event loop policy for a loop; in a sync test
    run before any loop was set, that creates a loop nobody closes, whose ResourceWarning
    then fails a later test. Setting "no loop" for sync tests prevents it."""
    if not inspect.iscoroutinefunction(request.function):
        asyncio.set_event_loop(None)
