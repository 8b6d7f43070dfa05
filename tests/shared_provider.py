"""A rate-limited provider that several processes call, and the processes that call it.

Run as a program (``python -m tests.shared_provider --limit 5 --window 1 --retry-after 2``)
it is an HTTP server of the standard library on a free port of 127.0.0.1, which prints
its port on the first line of its output:

- ``GET /call?x=<input>&by=<caller>`` answers ``{"x": "<input>"}`` after ``--latency``
  seconds, unless ``--limit`` calls were already accepted in the last ``--window``
  seconds: then a 429 at once, with ``Retry-After: <--retry-after>``;
- ``GET /log`` returns every call so far, in arrival order, as JSON: the arrival time
  on the server's monotonic clock, the input, the caller and the status;
- ``GET /ping`` answers 200 and is not logged.

`ProviderServer` starts it in a subprocess and stops it by its PID. `call_through_limiter`
runs in a ``multiprocessing`` child (spawn): an `AsyncExecutor` whose function calls the
provider with httpx, admitted by a `RedisLimiter`. Both live here, in an importable
helper module, because spawned children cannot import a test module's functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 30.0  # a generous bound on the server's start-up on a busy machine


class _Limits:
    """The provider's rule and its log; shared by the server's request threads."""

    def __init__(self, limit: int, window: float, retry_after: int) -> None:
        self.limit = limit
        self.window = window
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.accepted: deque[float] = deque()  # arrival times of accepted calls, in the window
        self.log: list[dict[str, Any]] = []

    def admit(self, x: str, by: str) -> int:
        with self.lock:
            now = time.monotonic()
            while self.accepted and self.accepted[0] <= now - self.window:
                self.accepted.popleft()
            status = 429 if len(self.accepted) >= self.limit else 200
            if status == 200:
                self.accepted.append(now)
            self.log.append({"t": now, "x": x, "by": by, "status": status})
            return status


def _handler(limits: _Limits, latency: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per client

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            if parts.path == "/ping":
                self._send(200, {"ok": True})
            elif parts.path == "/log":
                with limits.lock:
                    log = list(limits.log)
                self._send(200, log)
            elif parts.path == "/call":
                x = query.get("x", "")
                if limits.admit(x, query.get("by", "")) == 429:
                    self._send(
                        429,
                        {"error": {"message": "too many requests", "type": "requests"}},
                        {"Retry-After": str(limits.retry_after)},
                    )
                else:
                    time.sleep(latency)
                    self._send(200, {"x": x})
            else:
                self._send(404, {"error": {"message": f"no such path: {parts.path}"}})

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the calls are in the log, not on stderr."""

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, required=True, help="calls accepted per window")
    parser.add_argument("--window", type=float, required=True, help="seconds")
    parser.add_argument("--retry-after", type=int, required=True, help="seconds, on a 429")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call")
    args = parser.parse_args(argv)
    limits = _Limits(args.limit, args.window, args.retry_after)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(limits, args.latency))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class ProviderServer:
    """The provider in a subprocess of its own, stopped by its PID."""

    def __init__(self, *, limit: int, window: float, retry_after: int, latency: float) -> None:
        self.retry_after = retry_after
        command = [sys.executable, "-m", "tests.shared_provider"]
        command += ["--limit", str(limit), "--window", str(window)]
        command += ["--retry-after", str(retry_after), "--latency", str(latency)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the port, or "" if the server died
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the provider did not start (said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/log", timeout=READY_SECONDS) as response:
            log: list[dict[str, Any]] = json.load(response)
        return log

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- children (multiprocessing, spawn) --------------------------------------------------


def call_through_limiter(
    limiter: Any, provider: str, name: str, inputs: list[str], ready: Any, go: Any, out: Any
) -> None:
    """Connect to the provider and to Redis, say `name` on `ready`, wait for `go`, then
    run `inputs` through ``AsyncExecutor(call, limiter=limiter)`` and put
    ``(name, outputs, statuses)`` on `out`."""
    import httpx

    from evalexec.executors import AsyncExecutor
    from evalexec.limits import RedisLimiter

    async def main() -> tuple[str, list[str | None], list[str]]:
        async with httpx.AsyncClient(base_url=provider, timeout=READY_SECONDS) as client:
            await client.get("/ping")
            # Load the scripts and warm the imports on a key of its own: no budget is used.
            warm = RedisLimiter(limiter.url, f"{limiter.key}-warm")
            warm.release(await warm.acquire())
            await warm.aclose()
            ready.put(name)
            await asyncio.get_running_loop().run_in_executor(None, go.wait, READY_SECONDS)

            async def call(x: str) -> str:
                response = await client.get("/call", params={"x": x, "by": name})
                response.raise_for_status()  # a 429 is an httpx.HTTPStatusError
                answer: str = response.json()["x"]
                return answer

            executor = AsyncExecutor(call, concurrency=len(inputs), limiter=limiter)
            outputs, details = await executor.execute(inputs)
            await limiter.aclose()
        answers = [o if isinstance(o, str) else None for o in outputs]  # no sentinel objects
        return name, answers, [str(d.status.value) for d in details]

    out.put(asyncio.run(main()))


if __name__ == "__main__":
    main()
