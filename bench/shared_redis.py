"""`shared4` across four real processes: `shared4-redis` and `shared4-procs`.

Four processes (multiprocessing, spawn) of 500 inputs each call one provider that all
of them reach: the provider's token bucket (500 req/min, capacity 10, as in `shared4`)
is a Lua script on a private redis-server, so every process draws from the same bucket;
the latency of each accepted call is slept in the calling process, drawn from the same
fault plan as the in-process provider's. Time is compressed as in the ``-rt`` rows
(K = 34: 1.7 s latencies become 50 ms, the rate is multiplied by 34).

- ``shared4-redis``: each process's ``AsyncExecutor`` is given
  ``limiter=RedisLimiter(url, key, rpm=500, period_seconds=60/K, burst=1/K)`` on one
  key: the four share one budget through Redis.
- ``shared4-procs``: no limiter: each process's adaptive controller finds the budget
  by its 429s, alone.

Each process records its calls on ``time.monotonic()`` (one clock for every process on
Linux) and sends them back; the parent merges them into the provider's usual report.
The rows need ``redis-server`` on PATH and the ``redis`` package; without them they
are skipped. The redis-server is started on 127.0.0.1 and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench.errors import rate_limit_error
from bench.impls import RowSkipped, compressed_options, load_module
from bench.provider import OK, RATE_LIMITED, CallRecord, FaultPlan, ProviderConfig

CHILD_SECONDS = 120.0  # a generous bound on a child's start-up on a busy machine

# The shared provider's token bucket: KEYS[1] holds "tokens last_us"; ARGV: rate per
# second, capacity. Time from the server, so every process sees one bucket.
BUCKET = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('GET', KEYS[1])
local tokens, last = capacity, now
if state then
  local space = string.find(state, ' ')
  tokens = tonumber(string.sub(state, 1, space - 1))
  last = tonumber(string.sub(state, space + 1))
end
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('SET', KEYS[1], string.format('%.6f %.6f', tokens, now), 'PX', 600000)
return ok
"""


def redis_available() -> str:
    """The redis-server binary, or `RowSkipped` saying what is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RowSkipped("needs redis-server on PATH (skipped)")
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise RowSkipped("needs the redis package: pip install 'evalexec[redis]'") from exc
    return binary


class RedisProcess:
    """A private redis-server on a free port of 127.0.0.1, no persistence."""

    def __init__(self, binary: str) -> None:
        self.folder = tempfile.mkdtemp(prefix="bench-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self.folder]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + 10.0
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.exceptions.ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not answer within 10 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class ProcessSpec:
    """What one child process runs."""

    tag: str
    inputs: list[int]
    url: str
    key: str
    shared: bool  # a RedisLimiter on `key`, or no limiter (adaptive control alone)
    config: ProviderConfig  # compressed already
    k: float
    concurrency: int


Record = tuple[Any, int, str, float, float | None, str, bool]


def run_process(spec: ProcessSpec, ready: Any, go: Any, out: Any) -> None:
    """A child: warm up, say so on `ready`, wait for `go`, run, put the results on `out`."""
    out.put(asyncio.run(_child(spec, ready, go)))


async def _child(spec: ProcessSpec, ready: Any, go: Any) -> dict[str, Any]:
    import redis.asyncio

    executors = load_module("evalexec")
    limits = importlib.import_module("evalexec.limits")
    cfg = spec.config
    assert cfg.requests_per_minute is not None
    rate = cfg.requests_per_minute / 60.0
    plan = FaultPlan(cfg)
    client = redis.asyncio.from_url(spec.url)
    bucket = client.register_script(BUCKET)
    bucket_key = f"{{{spec.key}}}:provider"
    records: list[CallRecord] = []
    attempts: dict[Any, int] = {}

    async def call(item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        record = CallRecord(item, attempts[item], spec.tag, time.monotonic())
        records.append(record)
        try:
            admitted = await bucket(keys=[bucket_key], args=[rate, cfg.bucket_capacity])
            if not admitted:
                await asyncio.sleep(cfg.reject_latency)
                record.outcome = RATE_LIMITED
                raise rate_limit_error(cfg.retry_after)
            record.accepted = True
            await asyncio.sleep(plan.latency(item))
            record.outcome = OK
            return item
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        finally:
            record.end = time.monotonic()

    limiter = None
    if spec.shared:
        limiter = limits.RedisLimiter(
            spec.url, spec.key, rpm=500, period_seconds=60.0 / spec.k, burst=1.0 / spec.k
        )
        warm = limits.RedisLimiter(spec.url, f"{spec.key}-warm")  # scripts, connection
        warm.release(await warm.acquire())
        await warm.aclose()
    await client.ping()
    executor = executors.AsyncExecutor(
        call,
        concurrency=spec.concurrency,
        tqdm_bar_format=None,
        exit_on_error=False,
        limiter=limiter,
        **compressed_options("evalexec", spec.k),
    )
    ready.put(spec.tag)
    await asyncio.get_running_loop().run_in_executor(None, go.wait, CHILD_SECONDS)
    outputs, details = await executor.execute(spec.inputs)
    finished = time.monotonic()
    if limiter is not None:
        await limiter.aclose()
    await client.aclose()
    rows: list[Record] = [
        (r.item, r.attempt, r.tag, r.start, r.end, r.outcome, r.accepted) for r in records
    ]
    return {
        "tag": spec.tag,
        "outputs": [o if isinstance(o, int) else None for o in outputs],
        "statuses": [str(d.status.value) for d in details],
        "records": rows,
        "finished": finished,
    }


def run_four(specs: list[ProcessSpec]) -> tuple[list[dict[str, Any]], float]:
    """Run the children together; (their results in spec order, the monotonic time of go)."""
    spawn = multiprocessing.get_context("spawn")
    ready, out, go = spawn.Queue(), spawn.Queue(), spawn.Event()
    children = [spawn.Process(target=run_process, args=(s, ready, go, out)) for s in specs]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=CHILD_SECONDS)
        started = time.monotonic()
        go.set()
        results = {r["tag"]: r for r in (out.get(timeout=CHILD_SECONDS) for _ in children)}
    finally:
        go.set()
        for child in children:
            child.join(timeout=CHILD_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
    return [results[s.tag] for s in specs], started


def to_records(rows: list[Record]) -> list[CallRecord]:
    records = []
    for item, attempt, tag, start, end, outcome, accepted in rows:
        record = CallRecord(item, attempt, tag, start)
        record.end, record.outcome, record.accepted = end, outcome, accepted
        records.append(record)
    return records
