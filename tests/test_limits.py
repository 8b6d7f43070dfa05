"""evalexec.limits: the Limiter protocol and LocalLimiter, on virtual loop time (looptime).

Every schedule below is exact: starts are stamped with the loop's virtual time, and
the expected stamps follow from the budgets (derivations in the docstrings).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from collections.abc import Sequence

import pytest

import evalexec.limits
from evalexec.limits import (
    CostExceedsBudget,
    Limiter,
    LimiterStopped,
    LocalLimiter,
    Permit,
    RedisLimiter,
)


def busiest_window(stamps: Sequence[float], weights: Sequence[int], period: float) -> int:
    """The largest total weight of starts in any half-open window [s, s + period)."""
    best = 0
    for start in stamps:
        total = sum(w for t, w in zip(stamps, weights, strict=True) if start <= t < start + period)
        best = max(best, total)
    return best


async def run_workers(
    limiter: LocalLimiter, costs: Sequence[int], until: float, workers: int = 3
) -> list[Permit]:
    """`workers` tasks take permits (cycling through `costs`) and give them straight back,
    until virtual time `until`."""
    loop = asyncio.get_running_loop()
    granted: list[Permit] = []

    async def worker(offset: int) -> None:
        n = offset
        while True:
            permit = await limiter.acquire(costs[n % len(costs)])
            if permit.stamp >= until:
                limiter.release(permit)
                return
            granted.append(permit)
            limiter.release(permit)
            n += workers

    await asyncio.gather(*(worker(i) for i in range(workers)))
    assert loop.time() >= until
    return granted


def test_the_module_exports_exactly_its_public_names() -> None:
    assert sorted(evalexec.limits.__all__) == [
        "Cost",
        "CostExceedsBudget",
        "Limiter",
        "LimiterStopped",
        "LimiterUnavailable",
        "LocalLimiter",
        "Permit",
        "RedisLimiter",
    ]


def test_a_local_limiter_is_a_limiter() -> None:
    assert isinstance(LocalLimiter(), Limiter)


@pytest.mark.looptime
async def test_a_burst_then_a_steady_pace_never_puts_more_than_rpm_starts_in_any_minute() -> None:
    """rpm=60 with a 10-s burst: 10 starts at 0, then one a second (the GCRA pace) until
    the minute holds 60 (at 50 s); the log then holds everything until the burst leaves
    the window at 60 s, where the pattern repeats. Exactly 60 starts in every minute."""
    limiter = LocalLimiter(rpm=60, burst=10)
    granted = await run_workers(limiter, [0], until=300.0)
    stamps = [p.stamp for p in granted]
    expected: Counter[float] = Counter()
    for minute in range(5):
        expected[60.0 * minute] = 10
        expected.update(60.0 * minute + second for second in range(1, 51))
    assert Counter(stamps) == expected
    assert busiest_window(stamps, [1] * len(stamps), 60.0) == 60
    assert len(stamps) == 300


@pytest.mark.looptime
async def test_without_a_burst_starts_are_evenly_paced_at_the_full_rate() -> None:
    limiter = LocalLimiter(rpm=120, burst=0)
    granted = await run_workers(limiter, [0], until=60.0)
    assert [p.stamp for p in granted] == [0.5 * i for i in range(120)]


@pytest.mark.looptime
async def test_tokens_never_exceed_tpm_in_any_window_even_for_costs_above_the_burst() -> None:
    """tpm=1000 with a 6-s burst (a bucket of 100 tokens) and costs up to 700: the big
    ones start once the bucket is full and are paid back before anything else starts,
    and none shares a window with more than the rest of the budget. A start only waits
    for the pace (tpm a minute) or for a window holding more than tpm - 700, so every
    minute admits at least 300 tokens: ten minutes at least 3000."""
    costs = [50, 400, 10, 700, 90]
    limiter = LocalLimiter(tpm=1000, burst=6)
    granted = await run_workers(limiter, costs, until=600.0)
    stamps = [p.stamp for p in granted]
    tokens = [p.tokens for p in granted]
    assert busiest_window(stamps, tokens, 60.0) <= 1000
    assert sum(tokens) >= 3000
    assert sorted(set(tokens)) == sorted(costs)


@pytest.mark.looptime
async def test_requests_and_tokens_together_each_stay_within_their_budget() -> None:
    limiter = LocalLimiter(rpm=30, tpm=2000, burst=5)
    granted = await run_workers(limiter, [10, 300, 40], until=300.0, workers=4)
    stamps = [p.stamp for p in granted]
    assert busiest_window(stamps, [1] * len(stamps), 60.0) <= 30
    assert busiest_window(stamps, [p.tokens for p in granted], 60.0) <= 2000


async def test_a_cost_above_the_whole_budget_fails_at_once_naming_the_cost_and_the_budget() -> None:
    limiter = LocalLimiter(tpm=4000)
    with pytest.raises(CostExceedsBudget) as caught:
        await limiter.acquire(5000)
    assert str(caught.value) == (
        "an attempt's estimated cost of 5000 tokens exceeds the whole budget of "
        "tpm=4000 tokens per 60 s: it could never start"
    )
    assert isinstance(caught.value, ValueError)
    assert limiter.inflight == 0
    permit = await limiter.acquire(4000)  # the whole budget still fits
    assert permit.tokens == 4000


async def test_without_a_token_budget_any_cost_is_admitted() -> None:
    limiter = LocalLimiter(rpm=10)
    permit = await limiter.acquire(10**9)
    assert permit.tokens == 10**9


@pytest.mark.parametrize("cost", [-1, 1.5, True, "3"])
async def test_a_cost_that_is_not_a_token_count_is_refused(cost: object) -> None:
    with pytest.raises(ValueError, match=r"^cost must be an int >= 0 \(tokens\), got "):
        await LocalLimiter().acquire(cost)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rpm": 0}, "rpm must be a positive integer or None, got 0"),
        ({"tpm": 2.5}, "tpm must be a positive integer or None, got 2.5"),
        ({"max_inflight": True}, "max_inflight must be a positive integer or None, got True"),
        ({"burst": -1}, "burst must be a finite number >= 0, got -1"),
        ({"burst": float("inf")}, "burst must be a finite number >= 0, got inf"),
        ({"period_seconds": 0}, "period_seconds must be a finite number > 0, got 0"),
    ],
)
def test_bad_budgets_are_refused_with_a_message_naming_them(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LocalLimiter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_the_in_flight_cap_admits_waiters_first_come_first_served_as_permits_return() -> None:
    loop = asyncio.get_running_loop()
    limiter = LocalLimiter(max_inflight=2)
    held = [await limiter.acquire(), await limiter.acquire()]
    order: list[tuple[str, float]] = []

    async def wait(name: str) -> Permit:
        permit = await limiter.acquire()
        order.append((name, loop.time()))
        return permit

    waiters = [asyncio.create_task(wait(name)) for name in "abc"]
    await asyncio.sleep(5)
    assert order == []
    limiter.release(held[0])
    await asyncio.sleep(2)
    limiter.release(held[1])
    await asyncio.sleep(1)
    assert order == [("a", 5.0), ("b", 7.0)]
    assert limiter.inflight == 2
    limiter.release(await waiters[0])
    await waiters[2]
    assert order[-1] == ("c", 8.0)
    assert limiter.inflight == 2


@pytest.mark.looptime
async def test_one_limiter_shared_by_two_runs_caps_them_together() -> None:
    """Two concurrent "runs" of five 1-s calls each, through one limiter of three slots:
    never more than three calls at once, so the ten calls take ceil(10 / 3) = 4 s."""
    loop = asyncio.get_running_loop()
    limiter = LocalLimiter(max_inflight=3)
    inflight = peak = 0

    async def call() -> None:
        nonlocal inflight, peak
        permit = await limiter.acquire()
        try:
            inflight += 1
            peak = max(peak, inflight)
            await asyncio.sleep(1)
        finally:
            inflight -= 1
            limiter.release(permit)

    async def run() -> None:
        await asyncio.gather(*(call() for _ in range(5)))

    await asyncio.gather(run(), run())
    assert peak == 3
    assert loop.time() == 4.0


@pytest.mark.looptime
async def test_a_reported_pause_holds_every_start_and_a_shorter_hint_cannot_shorten_it() -> None:
    loop = asyncio.get_running_loop()
    limiter = LocalLimiter()
    limiter.report_rate_limit(10.0)
    await asyncio.sleep(1)
    limiter.report_rate_limit(2.0)
    limiter.report_rate_limit(None)  # a rate limit without a hint pauses nothing
    assert limiter.pause_remaining() == 9.0
    permit = await limiter.acquire()
    assert permit.stamp == 10.0
    assert limiter.pause_remaining() == 0.0
    limiter.report_rate_limit(3.0)
    limiter.report_rate_limit(5.0)  # a longer one extends it
    assert (await limiter.acquire()).stamp == 15.0
    assert loop.time() == 15.0


def test_a_hint_that_is_not_a_finite_number_of_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^hint_seconds must be a finite number >= 0, got nan$"):
        LocalLimiter().report_rate_limit(float("nan"))


@pytest.mark.looptime
async def test_an_exhausted_quota_stops_waiting_and_later_acquires() -> None:
    limiter = LocalLimiter(max_inflight=1)
    await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(1)
    limiter.report_quota_exhausted("insufficient_quota")
    limiter.report_quota_exhausted("a later reason")
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [LimiterStopped] * 3
    assert all(r.reason == "insufficient_quota" for r in results)  # type: ignore[union-attr]
    assert str(results[0]) == "the limiter is stopped: insufficient_quota"
    assert limiter.stopped
    assert limiter.stop_reason == "insufficient_quota"
    with pytest.raises(LimiterStopped):
        await limiter.acquire()


@pytest.mark.looptime
@pytest.mark.parametrize(("used", "second_start"), [(40, 4.0), (160, 16.0), (None, 10.0)])
async def test_releasing_with_the_tokens_used_refunds_or_surcharges_the_difference(
    used: int | None, second_start: float
) -> None:
    """tpm=600 paced without a burst: each token is 0.1 s of the schedule. The first
    permit (100 tokens, at 0) pushes the next start to 10 s; released at 1 s with 40
    tokens used, 60 x 0.1 = 6 s come back (start at 4 s); with 160, 6 s more (16 s)."""
    limiter = LocalLimiter(tpm=600, burst=0)
    first = await limiter.acquire(100)
    second = asyncio.create_task(limiter.acquire(100))
    await asyncio.sleep(1)
    limiter.release(first, used_tokens=used)
    assert (await second).stamp == second_start


@pytest.mark.looptime
async def test_a_refund_also_frees_room_in_the_window() -> None:
    """tpm=300 with a whole-minute burst: two 200-token starts cannot share a minute, so
    the second waits for the first to leave the window at 60 s; once the first reports
    50 tokens used (at 5 s), 50 + 200 fits and the second starts then."""
    limiter = LocalLimiter(tpm=300, burst=60)
    first = await limiter.acquire(200)
    second = asyncio.create_task(limiter.acquire(200))
    await asyncio.sleep(5)
    assert not second.done()
    limiter.release(first, used_tokens=50)
    assert (await second).stamp == 5.0


@pytest.mark.looptime
async def test_a_cancelled_acquire_leaks_nothing_and_keeps_the_queue_moving() -> None:
    loop = asyncio.get_running_loop()
    limiter = LocalLimiter(max_inflight=1)
    held = await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(1)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(1)
    limiter.release(held)
    permit = await second
    assert permit.stamp == 2.0
    assert limiter.inflight == 1
    limiter.release(permit)
    assert limiter.inflight == 0
    assert loop.time() == 2.0


@pytest.mark.looptime
async def test_cancelling_the_head_waiter_hands_its_turn_to_the_next_at_the_same_time() -> None:
    limiter = LocalLimiter(rpm=1, burst=0)
    await limiter.acquire()  # the next start is due at 60 s
    head = asyncio.create_task(limiter.acquire())
    behind = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(1)
    head.cancel()
    await asyncio.gather(head, return_exceptions=True)
    assert (await behind).stamp == 60.0


@pytest.mark.looptime
async def test_an_attempt_cancelled_mid_call_still_gives_its_permit_back() -> None:
    limiter = LocalLimiter(max_inflight=1)

    async def attempt() -> None:
        permit = await limiter.acquire()
        try:
            await asyncio.sleep(100)
        finally:
            limiter.release(permit)  # synchronous: a cancellation cannot skip it

    task = asyncio.create_task(attempt())
    await asyncio.sleep(1)
    assert limiter.inflight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert limiter.inflight == 0
    assert (await limiter.acquire()).stamp == 1.0


async def test_releasing_twice_or_a_foreign_permit_changes_nothing() -> None:
    limiter = LocalLimiter(max_inflight=2, tpm=100)
    permit = await limiter.acquire(10)
    limiter.release(permit)
    limiter.release(permit, used_tokens=90)
    limiter.release(Permit("not-ours", 5, 0.0))
    assert limiter.inflight == 0
    assert limiter._schedule.total == 10  # the second release did not charge 80 more


async def test_a_bad_used_token_count_is_refused_after_the_slot_is_freed() -> None:
    limiter = LocalLimiter(max_inflight=1)
    permit = await limiter.acquire()
    with pytest.raises(ValueError, match=r"^used_tokens must be an int >= 0 \(tokens\), got -3$"):
        limiter.release(permit, used_tokens=-3)
    assert limiter.inflight == 0


def test_a_redis_limiter_without_the_redis_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError) as caught:
        RedisLimiter("redis://127.0.0.1:1/0", key="k", rpm=10)
    assert str(caught.value) == (
        "RedisLimiter needs the redis package: pip install 'evalexec[redis]'"
    )
