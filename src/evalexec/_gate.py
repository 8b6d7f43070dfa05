"""The dispatch gate: who may start a call now.

A `Gate` is a resizable limit on calls in flight, in the shape of trio's
`CapacityLimiter`: borrowers take a permit before they start a call and give it back
when the call ends; when every permit is out, the others wait, first come first
served. The limit can be moved at any time (the adaptive controller does so after
each event); a cut below the number already borrowed takes nothing back, it only
keeps the next borrowers waiting until enough permits have returned. On top of the
limit, a pause (a provider's retry hint) holds every new borrower until it ends,
while calls already in flight go on.

The limit may be fractional (`level`): with a level of 3.6, three permits are always
there and a fourth is out at most 60 % of the time. A provider that sustains 3.6 calls
in flight is then used at 3.6, where a whole limit would leave it at 3 (a quarter
less) or push it to 4 (and be refused).

The gate decides in plain methods; waiting is one future per waiter, woken by
`release`, a raised limit, the pause's end or (for the fractional permit) the moment
its share of time is earned back. Nothing polls.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["Gate"]

# A debt this small (permit-seconds) counts as paid: the timer that waits for the debt
# to reach 0 must not wake to a rounding error and wait again.
_PAID = 1e-9


class Gate:
    """At most `limit` permits out at once, and none handed out during a pause.

    Invariants: ``0 <= borrowed``; ``borrowed <= limit`` whenever a permit is handed
    out (it may exceed a limit cut afterwards); a waiter is woken only when a permit
    is free for it, so waking never makes ``borrowed`` pass ``limit``.

    With a fractional `level` ``whole + share`` (``0 < share < 1``), ``limit`` is
    ``whole + 1`` and the last permit is a part-time one. The gate keeps a debt in
    permit-seconds: it grows by one per second while more than ``whole`` permits are
    out and shrinks by ``share`` per second all the time (never below 0); the
    part-time permit is handed out only when the debt is 0. Over any stretch in which
    it is wanted, it is then out a ``share`` of the time, so the calls in flight
    average ``level``. A whole level has no part-time permit and no debt.
    """

    __slots__ = (
        "_borrowed",
        "_debt",
        "_debt_at",
        "_debt_timer",
        "_held",
        "_limit",
        "_loop",
        "_paused_until",
        "_share",
        "_timer",
        "_waiters",
        "_whole",
        "users",
    )

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._loop = asyncio.get_running_loop()
        self._limit = limit  # the most permits out at once: whole, +1 when share > 0
        self._whole = limit  # permits that are always there
        self._share = 0.0  # the part of the time the part-time permit may be out
        self._debt = 0.0  # permit-seconds the part-time permit owes, as of `_debt_at`
        self._debt_at = self._loop.time()
        self._debt_timer: asyncio.TimerHandle | None = None  # wakes waiters when it is paid
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
        """Move the limit to a whole number (at least 1); a raise lets waiters in at once."""
        self.level = value

    @property
    def level(self) -> float:
        """The limit as a number of calls that may be in flight on average."""
        return self._whole + self._share

    @level.setter
    def level(self, value: float) -> None:
        """Move the limit (at least 1, fractional or not); a raise lets waiters in at once."""
        value = max(1.0, float(value))
        old = self._whole + self._share
        if value == old:
            return
        self._settle()
        whole = math.floor(value)
        was_whole = not self._share
        self._whole = whole
        self._share = value - whole
        self._limit = whole + 1 if self._share > 0 else whole
        if not self._share:
            self._debt = 0.0
        elif was_whole:
            self._debt_at = self._loop.time()  # the debt is kept from now on
        if value > old:
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
        if self._held:
            return True
        # No clock read while no pause was ever set (the common case).
        return self._paused_until != -math.inf and self._paused_until > self._loop.time()

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
        """A call may start now: no pause, and a permit within the limit (the part-time
        permit only when its debt is paid)."""
        if self.paused():
            return False
        if self._borrowed < self._whole:
            return True
        if self._borrowed > self._whole or not self._share:
            return False
        self._settle()
        return self._debt <= _PAID

    def _settle(self) -> None:
        """Bring the debt up to now (call before `borrowed` or the level changes)."""
        if not self._share:
            return  # a whole level keeps no debt
        now = self._loop.time()
        elapsed = now - self._debt_at
        self._debt_at = now
        if self._share and elapsed > 0:
            owing = 1.0 if self._borrowed > self._whole else 0.0
            self._debt = max(0.0, self._debt + (owing - self._share) * elapsed)

    def _take(self) -> None:
        self._settle()
        self._borrowed += 1

    def try_acquire(self) -> bool:
        """Take a permit if one is free now, without waiting (the fast path of `acquire`)."""
        if self._waiters:
            return False
        if self._borrowed < self._whole and not self.paused():
            self._borrowed += 1  # a whole permit: no debt to settle
            return True
        if self.may_start():
            self._take()
            return True
        return False

    async def acquire(self) -> None:
        """Take a permit, waiting (cancellably) for one to be free and the pause to end."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._await_payment()
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
        self._settle()
        self._borrowed -= 1
        if self._waiters or self._debt_timer is not None:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.may_start():
            waiter = waiters.popleft()
            if not waiter.done():
                self._take()  # the permit is the waiter's from now on
                waiter.set_result(None)
        self._await_payment()

    def _await_payment(self) -> None:
        """If only the debt keeps a waiter out, wake the waiters when it is paid (a permit
        that returns first wakes them through `release`)."""
        if self._debt_timer is not None:
            self._debt_timer.cancel()
            self._debt_timer = None
        if self._waiters and self._share and self._borrowed == self._whole and not self.paused():
            self._settle()
            self._debt_timer = self._loop.call_later(self._debt / self._share, self._paid)

    def _paid(self) -> None:
        self._debt_timer = None
        self._wake()
