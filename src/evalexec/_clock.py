"""The one clock of evalexec: the running event loop's time, else `time.monotonic`.

Inside asyncio, sleeps, timeouts and `call_at` all run on ``loop.time()``; reading
the same clock everywhere keeps measured latencies consistent with them and lets
tests swap in virtual time (a loop whose clock jumps) without patching anything.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["now"]


def now() -> float:
    """Seconds on a monotonic clock: the running loop's, if there is one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.monotonic()
    return loop.time()
