"""The dispatch gate (`evalexec._gate.Gate`): a resizable limit with a pause, on virtual time."""

from __future__ import annotations

import asyncio

import pytest

from evalexec._gate import Gate

pytestmark = pytest.mark.looptime


async def settle() -> None:
    """Let every woken waiter run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_cut_below_the_borrowed_count_lets_no_one_in_until_enough_return() -> None:
    gate = Gate(3)
    for _ in range(3):
        await gate.acquire()
    gate.limit = 1
    assert gate.over_limit()
    waiter = asyncio.ensure_future(gate.acquire())
    await settle()
    gate.release()
    gate.release()
    await settle()
    assert not waiter.done()  # 1 borrowed, limit 1: still full
    gate.release()
    await settle()
    assert waiter.done()
    assert gate.borrowed == 1


async def test_raising_the_limit_lets_waiters_in_at_once_in_arrival_order() -> None:
    gate = Gate(1)
    await gate.acquire()
    order: list[int] = []

    async def borrow(name: int) -> None:
        await gate.acquire()
        order.append(name)

    tasks = [asyncio.ensure_future(borrow(i)) for i in range(3)]
    await settle()
    assert order == []
    gate.limit = 3
    await settle()
    assert order == [0, 1]  # two permits were free; the third waiter still waits
    assert not tasks[2].done()
    gate.release()
    await settle()
    assert order == [0, 1, 2]


async def test_a_pause_holds_new_borrowers_until_it_ends_and_only_ever_grows() -> None:
    loop = asyncio.get_running_loop()
    gate = Gate(2)
    start = loop.time()
    gate.pause_for(5.0)
    gate.pause_for(2.0)  # a shorter hint does not shorten the pause
    assert gate.pause_remaining() == 5.0
    await gate.acquire()
    assert loop.time() - start == 5.0
    assert gate.pause_remaining() == 0.0


async def test_a_cancelled_waiter_leaves_no_trace_and_takes_no_permit() -> None:
    gate = Gate(1)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await settle()
    waiter.cancel()
    await settle()
    assert gate.waiting == 0
    gate.release()
    assert gate.borrowed == 0


async def test_a_waiter_cancelled_after_being_woken_hands_its_permit_on() -> None:
    gate = Gate(1)
    await gate.acquire()
    first = asyncio.ensure_future(gate.acquire())
    second = asyncio.ensure_future(gate.acquire())
    await settle()
    gate.release()  # wakes `first` with the permit...
    first.cancel()  # ...which is cancelled before it runs
    await settle()
    assert second.done()
    assert not second.cancelled()
    assert gate.borrowed == 1


async def test_releasing_more_than_acquired_is_an_error() -> None:
    gate = Gate(1)
    with pytest.raises(RuntimeError, match=r"release\(\) called more often than acquire\(\)"):
        gate.release()


async def test_the_limit_is_at_least_one() -> None:
    gate = Gate(2)
    gate.limit = 0
    assert gate.limit == 1
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        Gate(0)


async def test_a_fractional_level_lets_the_last_permit_out_only_its_share_of_the_time() -> None:
    """Level 1.5: one permit always, a second one at most half the time."""
    loop = asyncio.get_running_loop()
    gate = Gate(2)
    gate.level = 1.5
    assert (gate.limit, gate.level) == (2, 1.5)
    await gate.acquire()
    await gate.acquire()  # no debt yet: the part-time permit is free
    await asyncio.sleep(1.0)
    gate.release()  # it was out 1 s: a debt of 1 - 0.5 = 0.5 permit-seconds
    start = loop.time()
    await gate.acquire()  # paid at 0.5 per second
    assert loop.time() - start == 1.0
    assert gate.borrowed == 2


async def test_a_whole_level_has_no_part_time_permit() -> None:
    gate = Gate(3)
    gate.level = 2.0
    await gate.acquire()
    await gate.acquire()
    assert not gate.may_start()
    gate.level = 2.25
    assert gate.may_start()
