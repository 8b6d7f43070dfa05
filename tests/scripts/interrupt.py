"""Run an executor until a real SIGINT arrives; driven by tests/test_signals.py.

usage: python interrupt.py {async,sync,threads} {once,twice,backoff} {default,custom} MARKER_DIR

Inputs 0-3 finish at once; inputs from 4 on block until the run is interrupted.
The script creates MARKER_DIR/ready when such a call is in flight. With ``twice``,
the blocked call reacts to the first interruption with a slow cleanup (an hour) and
creates MARKER_DIR/stopping when it starts it: only a second SIGINT ends that.
With ``backoff``, those inputs raise a rate limit that asks to wait an hour instead,
and MARKER_DIR/ready is created just before: the signal comes while the executor
waits to retry. ``custom`` installs a SIGINT handler of its own before the run, ``default`` keeps
Python's. It prints one JSON object: the outputs and statuses, what the run raised,
whether the SIGINT handler of before the run is back, and for a sync executor that
was interrupted once, the result of running it again. ``threads`` is a SyncExecutor with
``concurrency=2``: MARKER_DIR/ready is created once both of its calls are blocked (so
inputs 0-3 are final), and a call on a worker thread never sees the signal.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from evalexec import Backoff
from evalexec.exceptions import RateLimitError
from evalexec.executors import AsyncExecutor, ExecutionDetails, SyncExecutor

FINISHED_AT_ONCE = 4
HOUR = 3600.0
TICK = 0.05


# A signal that lands between Python's check for pending signals and the start of a
# long blocking wait (time.sleep, or the event loop's select) is only handled when the
# wait ends: any Python program has this race. The script waits in short steps, and
# keeps the event loop waking up, so a test sees how the executor reacts instead.


def sleep_in_ticks(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(TICK)


def keep_waking(loop: asyncio.AbstractEventLoop) -> None:
    """Wake `loop` every tick until it is closed (run in a daemon thread)."""
    while not loop.is_closed():
        try:
            loop.call_soon_threadsafe(lambda: None)
        except RuntimeError:  # closed meanwhile
            return
        time.sleep(TICK)


def custom_handler(signum: int, frame: FrameType | None) -> None:
    print("the handler of before the run was called", file=sys.stderr)


def main() -> None:
    mode, times, previous, marker_dir = sys.argv[1:5]
    markers = Path(marker_dir)
    if previous == "custom":
        signal.signal(signal.SIGINT, custom_handler)
    before = signal.getsignal(signal.SIGINT)
    blocking = True
    waker: list[threading.Thread] = []

    async def generate_async(item: int) -> str:
        if not waker:
            loop = asyncio.get_running_loop()
            waker.append(threading.Thread(target=keep_waking, args=(loop,), daemon=True))
            waker[0].start()
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

    blocked: list[int] = []
    lock = threading.Lock()

    def mark_ready() -> None:
        if mode != "threads":
            (markers / "ready").touch()
            return
        with lock:
            blocked.append(1)
            if len(blocked) == 2:
                (markers / "ready").touch()

    def generate_sync(item: int) -> str:
        if item >= FINISHED_AT_ONCE and blocking:
            if times == "backoff":
                mark_ready()
                raise RateLimitError(retry_after=HOUR)
            try:
                # The signal may come as soon as the marker exists: inside the `try`.
                mark_ready()
                sleep_in_ticks(HOUR)
            except BaseException:
                if times == "twice":
                    (markers / "stopping").touch()
                    sleep_in_ticks(HOUR)
                raise
        return f"out:{item}"

    # The hour-long hint of ``backoff`` must be waited out, not refused as too long.
    backoff = Backoff(max_hint=2 * HOUR)
    executor: Any
    if mode == "async":
        executor = AsyncExecutor(
            generate_async, concurrency=2, fallback_return_value="fallback", backoff=backoff
        )
    elif mode == "threads":
        executor = SyncExecutor(
            generate_sync, concurrency=2, fallback_return_value="fallback", backoff=backoff
        )
    else:
        executor = SyncExecutor(
            generate_sync, fallback_return_value="fallback", sleep=sleep_in_ticks, backoff=backoff
        )

    inputs = list(range(10))
    report: dict[str, Any] = {"raised": None}
    try:
        outputs, details = executor.run(inputs)
        report.update(outputs=outputs, statuses=statuses(details))
    except KeyboardInterrupt:
        report["raised"] = "KeyboardInterrupt"
    report["handler_restored"] = signal.getsignal(signal.SIGINT) is before
    if mode in ("sync", "threads") and times == "once":
        blocking = False
        outputs, details = executor.run(inputs)
        report["again"] = {"outputs": outputs, "statuses": statuses(details)}
    print(json.dumps(report), flush=True)


def statuses(details: list[ExecutionDetails]) -> list[str]:
    return [d.status.name for d in details]


if __name__ == "__main__":
    main()
