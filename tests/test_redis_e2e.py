"""End to end: three processes share one `RedisLimiter` in front of one rate-limited
provider, and one process's 429 pauses all three.

Real parts only: a redis-server and the provider (`tests.shared_provider`, an HTTP
server) each in a subprocess on 127.0.0.1, stopped by PID; three processes
(multiprocessing, spawn), each running ``AsyncExecutor(call, limiter=RedisLimiter(...))``
where ``call`` is an httpx request to the provider. Without redis-server (or the redis
package) the test skips, except under CI=true, where it fails.

The setting. The provider accepts 5 calls in any 1-s window and refuses the next with
``Retry-After: 2``. The limiter is set a little above that: 6 starts per 1.2 s
(``rpm=6, period_seconds=1.2``, a whole period of burst), so its bursts of 6 overrun
the provider by one. With 15 inputs waiting, each burst's six calls start together;
the sixth to arrive is refused. That process reports the hint, the limiter shares it
through Redis, and the next burst waits for the pause to end, everywhere.

Why the check is exact (no tolerance). The refused call is the last start its burst
could have: the limiter allows the next one no sooner than 1.2 s after the burst
began, long after the pause reached Redis. So every call the provider sees after a
429 arrives after the 2-s cooldown -- unless the pause failed to hold some process.
Without the shared pause the other two processes would start again 1.2 s after the
burst, inside the cooldown; the test would see them.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from evalexec.limits import RedisLimiter
from tests.redis_server import RedisServer, require_redis, start_server
from tests.shared_provider import ProviderServer, call_through_limiter

SPAWN = multiprocessing.get_context("spawn")
CHILD_SECONDS = 60.0  # generous bound on a child's start-up and run on a busy machine
PROCESSES = ("p0", "p1", "p2")
INPUTS_EACH = 5
LIMIT, WINDOW, RETRY_AFTER = 5, 1.0, 2  # the provider's rule and its hint
FINISHED = {"COMPLETED", "COMPLETED WITH RETRIES"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_server(require_redis())
    yield server
    server.close()


@pytest.fixture
def provider() -> Iterator[ProviderServer]:
    server = ProviderServer(limit=LIMIT, window=WINDOW, retry_after=RETRY_AFTER, latency=0.05)
    yield server
    server.stop()


def run_three(limiter: RedisLimiter, provider: ProviderServer) -> dict[str, Any]:
    """Start the three processes, let them go together, collect what each returns."""
    ready, out, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    children = []
    for name in PROCESSES:
        inputs = [f"{name}-{i}" for i in range(INPUTS_EACH)]
        args = (limiter, provider.url, name, inputs, ready, go, out)
        children.append(SPAWN.Process(target=call_through_limiter, args=args))
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=CHILD_SECONDS)
        go.set()
        results = [out.get(timeout=CHILD_SECONDS) for _ in children]
    finally:
        go.set()
        for child in children:
            child.join(timeout=CHILD_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
    return {name: (outputs, statuses) for name, outputs, statuses in results}


@pytest.mark.parametrize(
    "max_wait",
    [0.0, 5.0],
    ids=["no-reservations", "reservations"],
)
def test_one_processs_429_pauses_all_three_and_every_input_finishes(
    redis_server: RedisServer, provider: ProviderServer, max_wait: float
) -> None:
    key = f"e2e-{uuid.uuid4().hex[:12]}"
    limiter = RedisLimiter(
        redis_server.url, key, rpm=6, period_seconds=1.2, burst=1.2, max_wait=max_wait
    )
    results = run_three(limiter, provider)
    log = provider.log()

    for name, (outputs, statuses) in results.items():
        assert outputs == [f"{name}-{i}" for i in range(INPUTS_EACH)]
        assert set(statuses) <= FINISHED
    accepted = [call for call in log if call["status"] == 200]
    assert sorted(call["x"] for call in accepted) == sorted(
        f"{name}-{i}" for name in PROCESSES for i in range(INPUTS_EACH)
    )
    refusals = [call for call in log if call["status"] == 429]
    assert refusals, "the provider never refused a call: the scenario did not happen"
    for refusal in refusals:
        cooldown = (refusal["t"], refusal["t"] + RETRY_AFTER)
        during = [call for call in log if cooldown[0] < call["t"] < cooldown[1]]
        assert during == [], f"calls during the cooldown after {refusal}"
    # The pause was shared: after the first refusal, a process other than the refused one
    # still had inputs (at most 6 of the 15 had started), and it waited out the cooldown.
    first = refusals[0]
    later = {call["by"] for call in log if call["t"] > first["t"]}
    assert later - {first["by"]}
