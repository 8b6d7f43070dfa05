"""The servers integration tests start, as values the tests receive (see conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMServer:
    base_url: str
    latency: float
    rpm: int
    pid: int

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats") as reply:
            stats: dict[str, int] = json.load(reply)
        return stats


@dataclass(frozen=True)
class PhoenixServer:
    base_url: str
    pid: int
    started_in: float


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM by PID, SIGKILL if it lingers; then close our end of its pipes."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
