"""Run an executor until a real SIGINT arrives; driven by tests/test_signals.py.

usage: python interrupt.py {async,sync} {once,twice,backoff} {default,custom} MARKER_DIR

Inputs 0-3 finish at once; inputs from 4 on block until the run is interrupted.
The script creates MARKER_DIR/ready when such a call is in flight. With ``twice``,
the blocked call reacts to the first interruption with a slow cleanup (an hour) and
creates MARKER_DIR/stopping when it starts it: only a second SIGINT ends that.
With ``backoff``, those inputs raise a rate limit that asks to wait an hour instead,
and MARKER_DIR/ready is created just before: the signal comes while the executor
waits to retry. ``custom`` installs a SIGINT handler of its own before the run, ``default`` keeps
Python's. It prints one JSON object: the outputs and statuses, what the run raised,
whether the SIGINT handler of before the run is back, and for a sync executor that
was interrupted once, the result of running it again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionDetails, SyncExecutor

FINISHED_AT_ONCE = 4
HOUR = 3600.0


def custom_handler(signum: int, frame: FrameType | None) -> None:
    print("the handler of before the run was called", file=sys.stderr)


def main() -> None:
    mode, times, previous, marker_dir = sys.argv[1:5]
    markers = Path(marker_dir)
    if previous == "custom":
        signal.signal(signal.SIGINT, custom_handler)
    before = signal.getsignal(signal.SIGINT)
    blocking = True

    async def generate_async(item: int) -> str:
        if item >= FINISHED_AT_ONCE and blocking:
            if times == "backoff":
                (markers / "ready").touch()
                raise RateLimitError(retry_after=HOUR)
            try:
                (markers / "ready").touch()
                await asyncio.sleep(HOUR)
            except asyncio.CancelledError:
                if times == "twice":
                    (markers / "stopping").touch()
                    await asyncio.sleep(HOUR)
                raise
        return f"out:{item}"

    def generate_sync(item: int) -> str:
        if item >= FINISHED_AT_ONCE and blocking:
            if times == "backoff":
                (markers / "ready").touch()
                raise RateLimitError(retry_after=HOUR)
            try:
                # The signal may come as soon as the marker exists: inside the `try`.
                (markers / "ready").touch()
                time.sleep(HOUR)
            except BaseException:
                if times == "twice":
                    (markers / "stopping").touch()
                    time.sleep(HOUR)
                raise
        return f"out:{item}"

    executor: Any
    if mode == "async":
        executor = AsyncExecutor(generate_async, concurrency=2, fallback_return_value="fallback")
    else:
        executor = SyncExecutor(generate_sync, fallback_return_value="fallback")

    inputs = list(range(10))
    report: dict[str, Any] = {"raised": None}
    try:
        outputs, details = executor.run(inputs)
        report.update(outputs=outputs, statuses=statuses(details))
    except KeyboardInterrupt:
        report["raised"] = "KeyboardInterrupt"
    report["handler_restored"] = signal.getsignal(signal.SIGINT) is before
    if mode == "sync" and times == "once":
        blocking = False
        outputs, details = executor.run(inputs)
        report["again"] = {"outputs": outputs, "statuses": statuses(details)}
    print(json.dumps(report), flush=True)


def statuses(details: list[ExecutionDetails]) -> list[str]:
    return [d.status.name for d in details]


if __name__ == "__main__":
    main()
