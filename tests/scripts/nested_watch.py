"""Calls that run an event loop inside an attempt, after nest_asyncio.apply().

Driven by tests/test_watchdog.py; prints one JSON object: per case, the outputs of a
two-input run and how many "held the event loop" warnings it logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nest_asyncio

from evalexec.executors import AsyncExecutor

HELD = "held the event loop"


async def awaits_three() -> int:
    total = 0
    for item in (1, 2, 3):
        await asyncio.sleep(0.05)  # real time: longer in all than a held step
        total += item
    return total


async def reentrant(item: int) -> int:
    """A sync helper that calls asyncio.run: patched, it runs the same loop, which turns."""
    return item + asyncio.run(awaits_three())


async def nested_run(item: int) -> int:
    """A sync API that runs an executor: that run has a loop of its own; ours waits."""

    async def double(x: int) -> int:
        await asyncio.sleep(0.05)
        return 2 * x

    outputs, _ = AsyncExecutor(double, concurrency=1, termination_signal=None).run([1, 2, 3])
    return item + sum(outputs)


async def blocking(item: int) -> int:
    time.sleep(0.3)  # noqa: ASYNC251  # the mistake the watchdog is for
    return item


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def main() -> dict[str, Any]:
    recorder = Recorder()
    logging.getLogger("evalexec").addHandler(recorder)
    report = {}
    for case in (reentrant, nested_run, blocking):
        recorder.messages.clear()
        executor = AsyncExecutor(case, concurrency=1, termination_signal=None)
        outputs, _ = await executor.execute([10, 11])
        report[case.__name__] = {
            "outputs": outputs,
            "warnings": sum(HELD in message for message in recorder.messages),
        }
    return report


if __name__ == "__main__":
    nest_asyncio.apply()
    print(json.dumps(asyncio.run(main())))
