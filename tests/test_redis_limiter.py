"""RedisLimiter against a real redis-server (started by a fixture on 127.0.0.1 or a unix
socket, stopped by PID), with real processes (multiprocessing, spawn).

The server's clock is real, so these tests run on real time. They are kept short (a
period of 1 s instead of a minute), and every bound comes from the budget:
- starts are checked with the *server's* stamps (`Permit.stamp`, taken in the script),
  so "no window holds more than the budget" is exact, with no tolerance at all;
- where a client-side duration is measured, the bound is the lease or the pause plus
  the poll interval, stated beside it.
Without redis-server (or the redis package) the tests skip, except under CI=true,
where they fail.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import random
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from evalexec._redis_scripts import ACQUIRE, EPOCH
from evalexec.limits import (
    Limiter,
    LimiterStopped,
    LimiterUnavailable,
    Permit,
    RedisLimiter,
)
from tests.redis_server import (
    RedisServer,
    hold_all,
    report_pause,
    require_redis,
    share_until_told,
    start_server,
)

SPAWN = multiprocessing.get_context("spawn")
CHILD_SECONDS = 60.0  # generous bound on a child's start-up on a busy 2-core machine


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return require_redis()


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    server = start_server(redis_binary)
    yield server
    server.close()


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A server of this test's own (on a unix socket), free to be stopped and restarted."""
    server = start_server(redis_binary, unix=True)
    yield server
    server.close()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., RedisLimiter]]:
    """Build limiters that are closed at the end of the test, even when it fails."""
    made: list[RedisLimiter] = []

    def make(*args: Any, **kwargs: Any) -> RedisLimiter:
        limiter = RedisLimiter(*args, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    yield client
    client.close()


def busiest_window(stamps: list[float], period: float) -> int:
    ordered = sorted(stamps)
    best = 0
    first = 0
    for last, stamp in enumerate(ordered):
        while ordered[first] <= stamp - period:
            first += 1
        best = max(best, last - first + 1)
    return best


def server_now(client: Any) -> float:
    """The server's clock, in the scripts' seconds (since 2025-01-01)."""
    seconds, micros = client.time()
    return float(seconds - EPOCH) + micros / 1_000_000


def jain(counts: list[int]) -> float:
    return sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))


def test_a_redis_limiter_is_a_limiter(redis_binary: str) -> None:
    assert isinstance(RedisLimiter("redis://127.0.0.1:1/0", "k"), Limiter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": "a{b}"}, "key must be a non-empty string without braces, got 'a{b}'"),
        ({"key": ""}, "key must be a non-empty string without braces, got ''"),
        ({"fallback": "open"}, "fallback must be 'wait' or 'local', got 'open'"),
        ({"fallback_share": 1.5}, "fallback_share must be in (0, 1], got 1.5"),
        ({"lease_seconds": 0}, "lease_seconds must be a finite number > 0, got 0"),
        ({"rpm": -1}, "rpm must be a positive integer or None, got -1"),
    ],
)
def test_bad_settings_are_refused_with_a_message_naming_them(
    redis_binary: str, kwargs: dict[str, Any], message: str
) -> None:
    settings = {"url": "redis://127.0.0.1:1/0", "key": "k", **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RedisLimiter(**settings)


async def test_the_limiter_pickles_as_a_spec_without_its_connection(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, key: str
) -> None:
    limiter = make(redis_server.url, key, rpm=100, max_inflight=3, lease_seconds=2)
    limiter.release(await limiter.acquire())
    copy = pickle.loads(pickle.dumps(limiter))
    assert copy._link_ is None
    assert (copy.url, copy.key, copy.budgets, copy.lease_seconds) == (
        limiter.url,
        limiter.key,
        limiter.budgets,
        2.0,
    )
    copy.release(await copy.acquire())
    await copy.aclose()
    await limiter.aclose()


def test_the_repr_hides_a_password(redis_binary: str) -> None:
    limiter = RedisLimiter("redis://user:secret@10.0.0.1:6379/0", "k")
    assert "secret" not in repr(limiter)
    assert "redis://user:***@10.0.0.1:6379/0" in repr(limiter)


def test_processes_sharing_a_budget_never_exceed_it_in_any_window_and_share_it_fairly(
    redis_server: RedisServer, key: str
) -> None:
    """Three processes, two callers each, take 40 starts per 1-s period for about 2 s.
    Exact: no window of 1 s (server stamps) holds more than 40. Paced at 40/s from one
    reservation queue, the starts also fill the budget (at least 80 % of 40/s over the
    span, the rest allowed for a loaded machine) and each process gets a fair share
    (Jain's index >= 0.95)."""
    limiter = RedisLimiter(redis_server.url, key, rpm=40, period_seconds=1.0, burst=0.1)
    ready, out = SPAWN.Queue(), SPAWN.Queue()
    go, stop = SPAWN.Event(), SPAWN.Event()
    children = [
        SPAWN.Process(target=share_until_told, args=(limiter, 2, ready, go, stop, out))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=CHILD_SECONDS)
        go.set()
        time.sleep(2.0)  # the length of the shared run
        stop.set()
        results: list[list[float]] = [out.get(timeout=CHILD_SECONDS) for _ in children]
    finally:
        stop.set()
        for child in children:
            child.join(timeout=CHILD_SECONDS)
    stamps = [s for result in results for s in result]
    assert busiest_window(stamps, 1.0) <= 40
    span = max(stamps) - min(stamps)
    assert span > 1.5
    assert len(stamps) >= 0.8 * 40 * span
    assert jain([len(result) for result in results]) >= 0.95


async def test_the_slots_of_a_killed_process_come_back_within_one_lease(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, key: str
) -> None:
    """A child takes both slots and is SIGKILLed. Its heartbeat kept them past their
    0.3-s lease (the parent could not get in), and after the kill they come back
    within the lease plus the 50-ms poll."""
    lease = 0.3
    limiter = make(redis_server.url, key, max_inflight=2, lease_seconds=lease)
    held = SPAWN.Queue()
    child = SPAWN.Process(target=hold_all, args=(limiter, 2, held))
    child.start()
    try:
        pid = await asyncio.to_thread(held.get, timeout=CHILD_SECONDS)
        await asyncio.sleep(lease * 1.5)  # longer than a lease: only renewals keep them
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(limiter.acquire(), 0.1)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        permit = await asyncio.wait_for(limiter.acquire(), 5.0)
        back = time.monotonic() - killed
    finally:
        child.kill()
        child.join(timeout=CHILD_SECONDS)
    assert back <= lease + 0.05
    limiter.release(permit)
    await limiter.aclose()


async def test_a_pause_set_by_one_process_holds_another_and_a_shorter_hint_cannot_shorten_it(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    """A child reports a 1-s pause, then a 0.1-s one. The pause left is still well over
    0.1 s (200 ms allows for the hand-over), and the parent, which never saw a rate
    limit itself, starts nothing before the pause ends on the server's clock."""
    limiter = make(redis_server.url, key, rpm=1000, period_seconds=1.0)
    done = SPAWN.Queue()
    child = SPAWN.Process(target=report_pause, args=(limiter, [1.0, 0.1], done))
    child.start()
    try:
        await asyncio.to_thread(done.get, timeout=CHILD_SECONDS)
    finally:
        child.join(timeout=CHILD_SECONDS)
    with raw.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.pttl(limiter.keys["pause"])
        (seconds, micros), left_ms = pipe.execute()
    assert left_ms > 200
    pause_ends = float(seconds - EPOCH) + micros / 1_000_000 + left_ms / 1000
    permit = await limiter.acquire()
    assert permit.stamp >= pause_ends - 0.001  # PTTL counts whole milliseconds
    await limiter.aclose()


async def test_a_waiter_learns_the_shared_pause_for_its_status_line(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, key: str
) -> None:
    first = make(redis_server.url, key)
    second = make(redis_server.url, key)
    first.report_rate_limit(1.0)
    await first.flush()
    waiter = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.1)
    assert second.pause_remaining() > 0.5
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await first.aclose()
    await second.aclose()


async def test_an_exhausted_quota_stops_every_user_of_the_key_until_cleared(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, key: str
) -> None:
    """Two limiters on one key share nothing but Redis, as two processes would."""
    first = make(redis_server.url, key)
    second = make(redis_server.url, key)
    first.report_quota_exhausted("insufficient_quota")
    first.report_quota_exhausted("a later reason")
    await first.flush()
    with pytest.raises(LimiterStopped) as caught:
        await second.acquire()
    assert caught.value.reason == "insufficient_quota"
    assert second.stopped
    assert second.stop_reason == "insufficient_quota"
    await second.clear_stop()
    second.release(await second.acquire())
    await first.aclose()
    await second.aclose()


@pytest.mark.parametrize("used", [100, 700])
async def test_the_tokens_used_refund_or_surcharge_the_budget_by_the_difference(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str, used: int
) -> None:
    """tpm=1000 per 1 s: a token is 1000 us of the schedule. A 400-token estimate that
    used `used` tokens moves the token schedule by (used - 400) x 1000 us and counts
    `used` tokens in the window."""
    limiter = make(redis_server.url, key, tpm=1000, period_seconds=1.0, burst=0)
    permit = await limiter.acquire(400)
    before = float(raw.get(limiter.keys["ttat"]))
    limiter.release(permit, used_tokens=used)
    await limiter.flush()
    after = float(raw.get(limiter.keys["ttat"]))
    assert after - before == pytest.approx((used - 400) * 1000, abs=0.01)
    assert int(raw.get(limiter.keys["sum"])) == used
    assert raw.zrange(limiter.keys["log"], 0, -1) == [f"{permit.id}:{used}"]
    await limiter.aclose()


async def test_scripts_come_back_after_a_script_flush_mid_run(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    limiter = make(redis_server.url, key, rpm=1000, max_inflight=5, period_seconds=1.0)
    for _ in range(3):
        limiter.release(await limiter.acquire())
    raw.script_flush()
    assert raw.script_exists(limiter._link().scripts["acquire"].sha) == [False]
    for _ in range(3):
        limiter.release(await limiter.acquire())
    await limiter.flush()
    assert raw.script_exists(raw.register_script(ACQUIRE).sha) == [True]
    assert raw.zcard(limiter.keys["lease"]) == 0
    assert raw.zcard(limiter.keys["log"]) == 6


async def test_the_limiter_carries_on_after_a_redis_restart(
    make: Callable[..., RedisLimiter], own_server: RedisServer
) -> None:
    limiter = make(own_server.url, "restart", rpm=1000, max_inflight=2)
    limiter.release(await limiter.acquire())
    await limiter.flush()
    own_server.stop()
    own_server.start()  # empty, without our scripts
    permit = await asyncio.wait_for(limiter.acquire(), 5.0)
    limiter.release(permit)
    await limiter.aclose()


async def test_while_redis_is_down_nothing_starts_and_it_resumes_when_redis_is_back(
    make: Callable[..., RedisLimiter], own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    limiter = make(own_server.url, "outage", max_inflight=2)
    limiter.release(await limiter.acquire())
    await limiter.flush()
    own_server.stop()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.3)
    assert not waiter.done()
    assert "is unreachable" in caplog.text
    assert "starting nothing new" in caplog.text
    own_server.start()
    permit = await asyncio.wait_for(waiter, 5.0)  # backoff is at most 2 s between tries
    assert "answers again" in caplog.text
    limiter.release(permit)
    await limiter.aclose()


async def test_give_up_after_ends_the_wait_for_an_unreachable_redis(
    make: Callable[..., RedisLimiter],
    own_server: RedisServer,
) -> None:
    own_server.stop()
    limiter = make(own_server.url, "gone", give_up_after=0.3)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable) as caught:
        await asyncio.wait_for(limiter.acquire(), 5.0)
    assert time.monotonic() - started >= 0.3
    assert str(caught.value).startswith(
        f"Redis at {own_server.url} was unreachable for 0.3 s (give_up_after); "
        "no attempt was started. Last error: "
    )
    await limiter.aclose()


async def test_the_local_fallback_warns_and_still_enforces_the_budgets_in_process(
    make: Callable[..., RedisLimiter], own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="evalexec")
    own_server.stop()
    limiter = make(own_server.url, "fallback", max_inflight=1, fallback="local")
    permit = await asyncio.wait_for(limiter.acquire(), 5.0)
    assert "falling back to a LocalLimiter" in caplog.text
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire(), 0.1)
    limiter.release(permit)
    limiter.release(await asyncio.wait_for(limiter.acquire(), 1.0))
    await limiter.aclose()


async def test_a_cancelled_waiter_leaves_no_lease_behind(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    limiter = make(redis_server.url, key, max_inflight=1)
    held = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    limiter.release(held)
    await limiter.flush()
    assert raw.zcard(limiter.keys["lease"]) == 0


async def test_a_reservation_cancelled_before_its_start_gives_its_place_back(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    """rpm=2 per 1 s, no burst: the second start is reserved 0.5 s ahead. Cancelled
    while it sleeps, it is taken off the log and the schedule, so the next caller gets
    that slot (0.5 s after the first) instead of the one after it (1.0 s)."""
    limiter = make(redis_server.url, key, rpm=2, period_seconds=1.0, burst=0)
    first = await limiter.acquire()
    reserved = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.1)
    reserved.cancel()
    await asyncio.gather(reserved, return_exceptions=True)
    await limiter.flush()
    assert raw.zcard(limiter.keys["log"]) == 1
    third = await limiter.acquire()
    assert third.stamp - first.stamp < 0.9
    await limiter.aclose()


async def test_acquires_cancelled_at_any_point_leak_nothing(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    """Forty acquires cancelled after a random delay (before, during or after their
    round trip): once the released ones are back, no lease is left and the log holds
    exactly the starts that were granted."""
    limiter = make(redis_server.url, key, rpm=10_000, max_inflight=100)
    rng = random.Random(7)
    granted = 0
    for _ in range(40):
        task = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(rng.choice([0, 0, 0.0002, 0.0005, 0.001, 0.002]))
        task.cancel()
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(result, Permit):
            granted += 1
            limiter.release(result)
    await limiter.flush()
    assert raw.zcard(limiter.keys["lease"]) == 0
    assert raw.zcard(limiter.keys["log"]) == granted


async def test_an_attempt_cancelled_mid_call_still_releases_its_lease(
    make: Callable[..., RedisLimiter], redis_server: RedisServer, raw: Any, key: str
) -> None:
    limiter = make(redis_server.url, key, max_inflight=1)

    async def attempt() -> None:
        permit = await limiter.acquire()
        try:
            await asyncio.sleep(100)
        finally:
            limiter.release(permit)  # synchronous: it schedules the I/O, nothing skips it

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0.05)
    assert raw.zcard(limiter.keys["lease"]) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await limiter.flush()
    assert raw.zcard(limiter.keys["lease"]) == 0
    assert server_now(raw) > 0
