"""The dispatch gate: who may start a call now.

A `Gate` is a resizable limit on calls in flight, in the shape of trio's
`CapacityLimiter`: borrowers take a permit before they start a call and give it back
when the call ends; when every permit is out, the others wait, first come first
served. The limit can be moved at any time (the adaptive controller does so after
each event); a cut below the number already borrowed takes nothing back, it only
keeps the next borrowers waiting until enough permits have returned. On top of the
limit, a pause (a provider's retry hint) holds every new borrower until it ends,
while calls already in flight go on.

The gate decides in plain methods; waiting is one future per waiter, woken by
`release`, a raised limit or the pause's end. Nothing polls.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["Gate"]


class Gate:
    """At most `limit` permits out at once, and none handed out during a pause.

    Invariants: ``0 <= borrowed``; ``borrowed <= limit`` whenever a permit is handed
    out (it may exceed a limit cut afterwards); a waiter is woken only when a permit
    is free for it, so waking never makes ``borrowed`` pass ``limit``.
    """

    __slots__ = (
        "_borrowed",
        "_held",
        "_limit",
        "_loop",
        "_paused_until",
        "_timer",
        "_waiters",
        "users",
    )

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._borrowed = 0  # permits handed out and not yet released
        self._waiters: deque[asyncio.Future[None]] = deque()  # in arrival order
        self._paused_until = -math.inf  # loop time before which no permit is handed out
        self._timer: asyncio.TimerHandle | None = None  # wakes waiters when a pause ends
        self._held = False  # paused from code (`hold`) until `resume`, however long
        self.users = 0  # runs using this gate now (an executor's runs on one loop share it)

    # -- the limit ----------------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        """Move the limit (at least 1); a raise lets waiters in at once."""
        value = max(1, value)
        raised = value > self._limit
        self._limit = value
        if raised:
            self._wake()

    @property
    def borrowed(self) -> int:
        return self._borrowed

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def over_limit(self) -> bool:
        """More permits are out than the limit allows now (the limit was cut)."""
        return self._borrowed > self._limit

    # -- the pause ----------------------------------------------------------------------
    def pause_for(self, seconds: float) -> None:
        """Hand out no permit for `seconds` from now; a pause only ever grows."""
        until = self._loop.time() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(until, self._pause_ended)

    def pause_remaining(self) -> float:
        """Seconds left of the pause (0 when there is none)."""
        return max(0.0, self._paused_until - self._loop.time())

    def paused(self) -> bool:
        return self._held or self._paused_until > self._loop.time()

    def hold(self) -> None:
        """Hand out no permit until `resume` (a pause asked for from code)."""
        self._held = True

    def resume(self) -> None:
        self._held = False
        self._wake()

    @property
    def held(self) -> bool:
        return self._held

    def _pause_ended(self) -> None:
        self._timer = None
        self._wake()

    # -- permits ------------------------------------------------------------------------
    def may_start(self) -> bool:
        """A call may start now: no pause, and a permit within the limit."""
        return self._borrowed < self._limit and not self.paused()

    async def acquire(self) -> None:
        """Take a permit, waiting (cancellably) for one to be free and the pause to end."""
        if not self._waiters and self.may_start():
            self._borrowed += 1
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken with a permit, then cancelled: hand it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self._borrowed <= 0:
            raise RuntimeError("Gate.release() called more often than acquire()")
        self._borrowed -= 1
        self._wake()

    def close(self) -> None:
        """Cancel the pause's timer (the run is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.may_start():
            waiter = waiters.popleft()
            if not waiter.done():
                self._borrowed += 1  # the permit is the waiter's from now on
                waiter.set_result(None)
