"""A rate-limited LLM provider on 127.0.0.1 that speaks OpenAI's and Anthropic's HTTP APIs,
for tests that drive the real openai and anthropic SDKs over real sockets.

usage: python -m tests.provider_server [--latency S] [--rpm N] [--tpm N] [--quiet-successes]

It binds a free port and prints ``PORT <n>`` on its first line. ``POST
/v1/chat/completions`` answers as OpenAI's Chat Completions (the body of
tests/integration/openai_server.py), ``POST /v1/messages`` as Anthropic's Messages API,
after ``--latency`` seconds.

With ``--rpm``, requests pass a token bucket refilled at rpm / 60 a second that holds one
second's worth (OpenAI's guide: a per-minute limit "may be enforced over shorter
periods", 60,000 rpm as 1,000 a second). A request that finds it empty gets an immediate
429 carrying the provider's exact header set:

- OpenAI: ``retry-after`` (whole seconds), ``retry-after-ms``,
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (limits per minute, resets as
  Go durations such as ``250ms``), and an error body with code ``rate_limit_exceeded``.
- Anthropic: ``retry-after`` (whole seconds),
  ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (resets as RFC 3339
  timestamps), and a ``rate_limit_error`` body.

Successes carry the same rate-limit headers (not ``retry-after``) unless
``--quiet-successes``. ``--tpm`` adds a token bucket of the same shape, charged with
each request's prompt length; without it the token headers say 1,000,000.

``GET /log`` returns one entry per request, in arrival order: ``{"at": arrival time on
this machine's monotonic clock (the clock of a client's event loop), "status": 200 or
429, "wait": the retry-after the 429 announced in seconds (0 for a 200), "retry": the
SDK's own retry number (its ``x-stainless-retry-count`` header; 0 for a first try)}``.

`ProviderServer` is what a test is handed (tests/conftest.py `provider_server`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.integration.openai_server import JsonHandler, completion, serve, user_text

UNLIMITED_TOKENS = 1_000_000


@dataclass(frozen=True)
class ProviderServer:
    base_url: str  # http://127.0.0.1:<port> (OpenAI's SDK wants base_url + "/v1")
    latency: float
    rpm: int
    pid: int

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.base_url + "/log") as reply:
            entries: list[dict[str, Any]] = json.load(reply)
        return entries


class Bucket:
    """``per_minute / 60`` tokens a second, at most one second's worth held."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, cost: float) -> float:
        """Seconds until `cost` tokens are there (0.0 when they are)."""
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def full_in(self) -> float:
        return (self.capacity - self.level) / self.rate


class Provider:
    def __init__(self, rpm: int, tpm: int) -> None:
        self.lock = threading.Lock()
        self.requests = Bucket(rpm) if rpm > 0 else None
        self.tokens = Bucket(tpm) if tpm > 0 else None
        self.log: list[dict[str, Any]] = []

    def admit(self, cost: int, retry: int) -> tuple[float, dict[str, Any]]:
        """(0.0, state) when admitted, else (seconds until it would be, state)."""
        with self.lock:
            now = time.monotonic()
            wait = 0.0
            for bucket, need in ((self.requests, 1.0), (self.tokens, float(cost))):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.wait(need))
            if wait == 0.0:
                if self.requests is not None:
                    self.requests.level -= 1.0
                if self.tokens is not None:
                    self.tokens.level = max(0.0, self.tokens.level - cost)
            entry = {"at": now, "status": 429 if wait else 200, "wait": wait, "retry": retry}
            self.log.append(entry)
            return wait, self.state()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                limit = UNLIMITED_TOKENS if name == "tokens" else 0
                state[name] = (limit, limit, 0.0)
            else:
                state[name] = (bucket.per_minute, math.floor(bucket.level), bucket.full_in())
        return state


def go_duration(seconds: float) -> str:
    """``250ms``, ``1.5s``, ``6m0s``: how OpenAI writes a reset."""
    if seconds < 1.0:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


def openai_headers(state: dict[str, Any], wait: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if wait:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    for name in ("requests", "tokens"):
        limit, remaining, full_in = state[name]
        if limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
            headers[f"x-ratelimit-reset-{name}"] = go_duration(full_in)
    return headers


def anthropic_headers(state: dict[str, Any], wait: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if wait:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
    wall = datetime.datetime.now(datetime.UTC)
    for name in ("requests", "tokens"):
        limit, remaining, full_in = state[name]
        if limit:
            reset = wall + datetime.timedelta(seconds=math.ceil(full_in))
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    return headers


def message(request: dict[str, Any]) -> dict[str, Any]:
    text = user_text(request.get("messages", []))
    return {
        "id": "msg_local",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "local"),
        "content": [{"type": "text", "text": f"echo: {text}"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": len(text), "output_tokens": 1},
    }


def make_handler(latency: float, provider: Provider, quiet_successes: bool) -> type:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path != "/log":
                self.send_json(404, {"error": {"message": "not found"}}, {})
                return
            with provider.lock:
                entries = list(provider.log)
            self.send_json(200, entries, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            anthropic = self.path.endswith("/v1/messages")
            if not anthropic and not self.path.endswith("/chat/completions"):
                self.send_json(404, {"error": {"message": "not found"}}, {})
                return
            headers_for = anthropic_headers if anthropic else openai_headers
            cost = len(user_text(request.get("messages", [])))
            retry = self.headers.get("x-stainless-retry-count") or "0"
            wait, state = provider.admit(cost, int(retry) if retry.isdigit() else 0)
            if wait:
                if anthropic:
                    error = {"type": "rate_limit_error", "message": "Number of requests has "
                             "exceeded your rate limit."}  # fmt: skip
                    body: dict[str, Any] = {"type": "error", "error": error}
                else:
                    body = {
                        "error": {
                            "message": "Rate limit reached for requests",
                            "type": "requests",
                            "param": None,
                            "code": "rate_limit_exceeded",
                        }
                    }
                self.send_json(429, body, headers_for(state, wait))
                return
            time.sleep(latency)
            answer = message(request) if anthropic else completion(request)
            self.send_json(200, answer, {} if quiet_successes else headers_for(state, 0.0))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=0)
    parser.add_argument("--tpm", type=int, default=0)
    parser.add_argument("--quiet-successes", action="store_true")
    args = parser.parse_args()
    handler = make_handler(args.latency, Provider(args.rpm, args.tpm), args.quiet_successes)
    serve(handler)


if __name__ == "__main__":
    main()
