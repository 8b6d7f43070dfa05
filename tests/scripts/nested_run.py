"""A web-server-style coroutine that calls the sync API after nest_asyncio.apply().

Driven by tests/test_contexts.py; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import nest_asyncio

from evalexec.executors import get_executor_on_sync_context


async def double_async(item: int) -> int:
    await asyncio.sleep(0)
    return 2 * item


def double(item: int) -> int:
    return 2 * item


async def handle_request() -> dict[str, Any]:
    before = signal.getsignal(signal.SIGINT)
    executor = get_executor_on_sync_context(double, double_async)
    outputs, details = executor.run([1, 2, 3])
    return {
        "factory": type(executor).__name__,
        "outputs": outputs,
        "statuses": [d.status.name for d in details],
        "handler_restored": signal.getsignal(signal.SIGINT) is before,
    }


if __name__ == "__main__":
    nest_asyncio.apply()
    print(json.dumps(asyncio.run(handle_request())))
