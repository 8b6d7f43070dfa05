"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for integration tests.

usage: python openai_server.py [--latency SECONDS] [--rpm REQUESTS_PER_MINUTE]

It binds a free port and prints ``PORT <n>`` on its first line. ``POST
/v1/chat/completions`` answers after ``--latency`` seconds. The answer is a classification
read off the request's JSON schema (structured output) or tool (tool calling): the label is
``labels[crc32(text of the user messages) % len(labels)]`` -- deterministic, so tests can
predict it -- plus an explanation when the schema has one.

With ``--rpm``, requests pass a token bucket refilled at rpm / 60 per second that holds
one second's worth; a request finding it empty gets an immediate HTTP 429 shaped like
OpenAI's (``retry-after``, ``retry-after-ms``, ``x-ratelimit-*`` headers, an error body
with code ``rate_limit_exceeded``). ``GET /stats`` returns ``{"ok": n, "limited": n,
"max_in_flight": n}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``capacity`` held."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is there."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.limited = 0
        self.in_flight = 0
        self.max_in_flight = 0


def user_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "\n".join(parts)


def classification(schema: dict[str, Any], text: str) -> dict[str, Any]:
    properties = schema.get("properties", {})
    labels = properties.get("label", {}).get("enum") or ["unknown"]
    answer: dict[str, Any] = {"label": labels[zlib.crc32(text.encode()) % len(labels)]}
    if "explanation" in properties:
        answer["explanation"] = f"{len(text)} characters read"
    return answer


def completion(request: dict[str, Any]) -> dict[str, Any]:
    text = user_text(request.get("messages", []))
    message: dict[str, Any] = {"role": "assistant", "content": None}
    finish = "stop"
    response_format = request.get("response_format") or {}
    tools = request.get("tools") or []
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema", {})
        message["content"] = json.dumps(classification(schema, text))
    elif tools:
        function = tools[0]["function"]
        arguments = json.dumps(classification(function.get("parameters", {}), text))
        message["tool_calls"] = [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        ]
        finish = "tool_calls"
    else:
        message["content"] = f"echo: {text}"
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "local"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": len(text), "completion_tokens": 1, "total_tokens": len(text)},
    }


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler that answers in JSON (the test servers' common part)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body
    # would wait for the client's delayed ACK (~40 ms a response).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: object, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def serve(handler: type[BaseHTTPRequestHandler]) -> None:
    """Serve on a free loopback port, printed as ``PORT <n>`` for the fixture, until
    it is stopped (a SIGINT ends it cleanly)."""
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


def make_handler(latency: float, bucket: Bucket | None, rpm: int, stats: Stats) -> type:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path != "/stats":
                self.send_json(404, {"error": {"message": "not found"}}, {})
                return
            with stats.lock:
                body = {"ok": stats.ok, "limited": stats.limited}
                body["max_in_flight"] = stats.max_in_flight
            self.send_json(200, body, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self.send_json(404, {"error": {"message": "not found"}}, {})
                return
            wait = bucket.take() if bucket is not None else 0.0
            if wait > 0.0:
                with stats.lock:
                    stats.limited += 1
                error = {
                    "message": f"Rate limit reached for requests: limit {rpm} per minute.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
                headers = {
                    "retry-after": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                    "x-ratelimit-limit-requests": str(rpm),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{max(1, math.ceil(wait * 1000))}ms",
                }
                self.send_json(429, {"error": error}, headers)
                return
            with stats.lock:
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                time.sleep(latency)
                body = completion(request)
            finally:
                with stats.lock:
                    stats.in_flight -= 1
                    stats.ok += 1
            self.send_json(200, body, {})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=0)
    args = parser.parse_args()
    bucket = Bucket(args.rpm / 60.0) if args.rpm > 0 else None
    handler = make_handler(args.latency, bucket, args.rpm, Stats())
    serve(handler)


if __name__ == "__main__":
    main()
