"""What the Ray tests send to actors: a fake provider whose state lives in files and in
Redis, so that every actor process (and a restarted one) shares it.

`Provider` is driven by a plan of row ids: rows that always fail, fail once, exhaust the
quota, or kill their actor the first time they are called. Every call is appended to a
log file (one line per call, ``O_APPEND``, so processes never interleave a line), and
"the first time" is decided by creating a marker file with ``O_EXCL``: exactly one
process, ever, creates it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Counts calls in flight and keeps the highest count seen (KEYS: now, peak).
_ENTER = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""

_clients: dict[int, Any] = {}  # per event loop, in each actor process


class FakeFailure(Exception):
    """A row the provider refuses, whatever the attempt."""


class QuotaError(Exception):
    """What an SDK raises when the account has no quota left: a 429 that says so."""

    status_code = 429

    def __init__(self) -> None:
        super().__init__("insufficient_quota: you exceeded your current quota")


@dataclass(frozen=True)
class Provider:
    """A fake LLM for one job: ``await provider(row_id)`` or ``provider.sync(row_id)``."""

    folder: str
    latency: float = 0.0  # seconds each call takes (the provider's own time)
    fail: frozenset[int] = field(default_factory=frozenset)  # raise FakeFailure every time
    flaky: frozenset[int] = field(default_factory=frozenset)  # raise FakeFailure once
    quota: frozenset[int] = field(default_factory=frozenset)  # raise QuotaError
    exit: frozenset[int] = field(default_factory=frozenset)  # kill the actor, once
    # A quota row first waits until this folder holds this many complete Parquet files
    # (Ray Data's committed checkpoints, or the output's written blocks).
    hold_quota_for: tuple[str, int] | None = None
    redis_url: str = ""  # count calls in flight in Redis under `key`
    key: str = ""

    @property
    def log(self) -> Path:
        return Path(self.folder) / "calls.log"

    def calls(self) -> list[int]:
        """Every call so far, as row ids, in the order they were logged."""
        if not self.log.exists():
            return []
        return [int(line.split()[0]) for line in self.log.read_text().splitlines()]

    def pids(self) -> set[int]:
        return {int(line.split()[1]) for line in self.log.read_text().splitlines()}

    def peak(self, raw: Any) -> int:
        return int(raw.get(f"{self.key}:peak") or 0)

    def first_time(self, row: int, what: str) -> bool:
        try:
            os.close(os.open(Path(self.folder) / f"{what}-{row}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def _record(self, row: int) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{row} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def _decide(self, row: int) -> None:
        if row in self.exit and self.first_time(row, "exit"):
            os._exit(1)  # the actor process dies mid-batch
        if row in self.fail:
            raise FakeFailure(f"row {row} is refused")
        if row in self.flaky and self.first_time(row, "flaky"):
            raise FakeFailure(f"row {row} failed once")

    async def __call__(self, row: int) -> str:
        self._record(row)
        self._decide(row)
        if row in self.quota:
            await self._hold()
            raise QuotaError
        client = await self._enter()
        try:
            await asyncio.sleep(self.latency)
        finally:
            if client is not None:
                await client.decr(f"{self.key}:now")
        return f"answer {row}"

    def sync(self, row: int) -> str:
        self._record(row)
        self._decide(row)
        if row in self.quota:
            raise QuotaError
        time.sleep(self.latency)
        return f"answer {row}"

    async def _enter(self) -> Any:
        if not self.redis_url:
            return None
        import redis.asyncio

        loop = id(asyncio.get_running_loop())
        client = _clients.get(loop)
        if client is None:
            client = _clients[loop] = redis.asyncio.from_url(self.redis_url)
        await client.eval(_ENTER, 2, f"{self.key}:now", f"{self.key}:peak")
        return client

    async def _hold(self) -> None:
        """Hold the quota error until the other blocks are written, so that the job fails
        with exactly them saved (bounded: 30 s at most, under the attempt's timeout)."""
        if self.hold_quota_for is None:
            return
        folder, count = self.hold_quota_for
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await asyncio.to_thread(_complete_files, Path(folder)) >= count:
                return
            await asyncio.sleep(0.05)


def _complete_files(folder: Path) -> int:
    """Parquet files here that are neither pending (Ray's two-phase commit) nor still
    being written (their footer reads)."""
    import pyarrow.parquet as pq

    complete = 0
    for path in folder.glob("*.parquet"):
        if ".pending" in path.name:
            continue
        try:
            pq.read_metadata(path)
        except (OSError, ValueError):
            continue
        complete += 1
    return complete
