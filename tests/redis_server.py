"""A private redis-server for the Redis tests, and the child processes they spawn.

`RedisServer` starts ``redis-server`` on 127.0.0.1 (a free TCP port) or on a unix
socket in a temporary folder, with no persistence, and stops it by its PID. The
functions at the end run in ``multiprocessing`` children (spawn), so they live in this
importable helper module rather than in a test module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from evalexec.limits import RedisLimiter

READY_SECONDS = 5.0


def require_redis() -> str:
    """The redis-server binary; skip without it on a developer machine, fail in CI."""
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        message = "redis-server and the redis package are needed (pip install 'evalexec[redis]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `stop` and `start` again keep its address."""

    def __init__(self, binary: str, *, unix: bool = False) -> None:
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="evx-redis-"))
        self.socket = self.folder / "redis.sock" if unix else None
        self.port = 0 if unix else _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        if self.socket is not None:
            command += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert self.process is not None
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
                raise RuntimeError(f"redis-server did not answer within {READY_SECONDS} s")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


def start_server(binary: str, *, unix: bool = False) -> RedisServer:
    """A started server; a TCP port taken by someone else in the meantime is retried."""
    for _ in range(3):
        server = RedisServer(binary, unix=unix)
        try:
            server.start()
        except RuntimeError:
            server.close()
            continue
        return server
    raise RuntimeError("could not start redis-server")


# -- children (multiprocessing, spawn) --------------------------------------------------


def share_until_told(
    limiter: RedisLimiter, workers: int, ready: Any, go: Event, stop: Event, out: Any
) -> None:
    """Acquire and release at once, with `workers` coroutines, from `go` until `stop`;
    put the server stamps of every admission on `out`."""

    async def main() -> list[float]:
        limiter.release(await limiter.acquire())  # connect and load the scripts first
        stamps: list[float] = []
        ready.put(os.getpid())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)

        async def worker() -> None:
            while not stop.is_set():
                permit = await limiter.acquire()
                stamps.append(permit.stamp)
                limiter.release(permit)

        await asyncio.gather(*(worker() for _ in range(workers)))
        await limiter.aclose()
        return stamps

    out.put(asyncio.run(main()))


def hold_all(limiter: RedisLimiter, count: int, held: Any) -> None:
    """Take `count` permits, say so, and keep them (renewing the leases) until killed."""

    async def main() -> None:
        for _ in range(count):
            await limiter.acquire()
        held.put(os.getpid())
        await asyncio.sleep(60)

    asyncio.run(main())


def report_pause(limiter: RedisLimiter, hints: list[float], done: Any) -> None:
    """Report rate limits with these hints, in order, and wait until Redis has them."""

    async def main() -> None:
        for hint in hints:
            limiter.report_rate_limit(hint)
            await limiter.flush()
        await limiter.aclose()

    asyncio.run(main())
    done.put(os.getpid())
