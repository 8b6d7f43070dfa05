"""Budgets that hold from one call to a cluster: the limiter an executor asks before
each attempt.

A `Limiter` decides when an attempt may start. It enforces up to three budgets at
once -- requests per period (``rpm``), tokens per period (``tpm``) and calls in flight
(``max_inflight``) -- and two signals the provider sends: a rate-limit pause that every
user of the limiter honours, and a stop when the quota is exhausted.

- `LocalLimiter` keeps its state in the process. One instance shared by several runs
  (or executors) caps them together.
- `RedisLimiter` keeps it in Redis, so every process, on any host, that names the same
  ``key`` shares one set of budgets. It needs ``pip install 'evalexec[redis]'``.

How the budgets are kept (both limiters run the same algorithm; see
`_Schedule` and `evalexec._redis_scripts`): each budget paces its starts with GCRA,
allowing ``burst`` seconds' worth of the budget at once after a quiet spell; and a log
of the starts of the last period makes sure that **no window of one period ever holds
more starts than ``rpm``, nor more tokens than ``tpm``** (counting each attempt's
estimated tokens until it is released with what it really used). An attempt costing
more tokens than the burst may still start (it waits for a full bucket and the budget
is paid back before anything else starts); one costing more than the whole ``tpm``
never could, and fails at once with `CostExceedsBudget`.

Threads: ``acquire``, ``release`` and the ``report_*`` methods must be called on the
event loop that runs the attempts (an engine that runs attempts on worker threads still
calls them from the loop, around the thread). ``pause_remaining()``, ``stopped`` and
``stop_reason`` only read plain attributes and may be read from any thread.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import logging
import math
import random
import urllib.parse
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from evalexec import _clock
from evalexec._redis_scripts import ACQUIRE, HEARTBEAT, KEY_NAMES, PAUSE, RELEASE, STOP

__all__ = [
    "Cost",
    "CostExceedsBudget",
    "Limiter",
    "LimiterStopped",
    "LimiterUnavailable",
    "LocalLimiter",
    "Permit",
    "RedisLimiter",
]

logger = logging.getLogger("evalexec")

Cost: TypeAlias = int
"""The estimated tokens of one attempt (each attempt is also one request)."""


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to start one attempt; hand it back with `Limiter.release`."""

    id: str
    """Unique to this permit: a release frees this permit's slot and no other."""
    tokens: int
    """The estimated tokens it was admitted with."""
    stamp: float
    """When the limiter counted this start, in seconds on the limiter's clock: the event
    loop's for `LocalLimiter`, the Redis server's (since 2025-01-01 UTC) for
    `RedisLimiter`."""


class CostExceedsBudget(ValueError):
    """An attempt's estimated cost is larger than the whole token budget: it could never
    start, however long it waited."""


class LimiterStopped(RuntimeError):
    """The limiter was stopped (the provider said the quota is exhausted): no attempt
    may start, in this process or in any other sharing the limiter."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the limiter is stopped: {reason}")
        self.reason = reason


class LimiterUnavailable(RuntimeError):
    """The limiter's shared store stayed unreachable longer than the caller allowed."""


@runtime_checkable
class Limiter(Protocol):
    """What an executor consults around every attempt.

    ``acquire`` before the attempt; ``release`` in a ``finally`` after it (synchronous,
    so a cancellation cannot skip it; any I/O it needs is scheduled on the loop); the
    ``report_*`` methods when the attempt's error says so; ``pause_remaining`` for the
    status line; ``flush`` when a run ends.
    """

    async def acquire(self, cost: Cost = 0) -> Permit:
        """Wait until an attempt of `cost` estimated tokens may start, and admit it.

        The wait holds no thread and can be cancelled; a cancelled acquire leaves
        nothing behind. Raises `CostExceedsBudget` at once for a cost that could never
        fit, and `LimiterStopped` once the limiter is stopped.
        """
        ...

    def release(self, permit: Permit, used_tokens: int | None = None) -> None:
        """Hand back `permit` (again: no effect). `used_tokens`, when known, replaces the
        estimate: the difference is refunded to the token budget or charged to it."""
        ...

    def report_rate_limit(self, hint_seconds: float | None) -> None:
        """The provider refused a call for its rate: with a hint, start nothing for
        `hint_seconds`, everywhere the limiter is shared. A pause only ever grows."""
        ...

    def report_quota_exhausted(self, reason: str) -> None:
        """The provider says no quota is left: stop, everywhere the limiter is shared."""
        ...

    def pause_remaining(self) -> float:
        """Seconds left of the shared pause (as last seen), 0.0 when none."""
        ...

    @property
    def stopped(self) -> bool: ...

    @property
    def stop_reason(self) -> str | None: ...

    async def flush(self) -> None:
        """Wait for the I/O that releases and reports scheduled; close what is idle."""
        ...


# -- budgets and the schedule (pure: time comes in as an argument) ----------------------


@dataclass(frozen=True, slots=True)
class _Budgets:
    rpm: int | None
    tpm: int | None
    max_inflight: int | None
    burst: float
    """Seconds' worth of each budget that may start at once after a quiet spell."""
    period: float
    """The window of ``rpm`` and ``tpm``, in seconds (60 for "per minute")."""

    @property
    def logged(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def describe(self) -> str:
        """``rpm<=500 tpm<=30000 inflight<=8``; with a period other than a minute the
        rates say theirs: ``requests<=100/10s tokens<=5000/10s``."""
        minute = self.period == 60
        per = "" if minute else f"/{self.period:g}s"
        named = (
            ("rpm" if minute else "requests", self.rpm, per),
            ("tpm" if minute else "tokens", self.tpm, per),
            ("inflight", self.max_inflight, ""),
        )
        return " ".join(f"{name}<={n}{unit}" for name, n, unit in named if n is not None)

    def scaled(self, share: float) -> _Budgets:
        def part(value: int | None) -> int | None:
            return None if value is None else max(1, math.floor(value * share))

        return _Budgets(
            part(self.rpm), part(self.tpm), part(self.max_inflight), self.burst, self.period
        )


def _positive_int_or_none(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def _seconds(name: str, value: object, *, allow_zero: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _budgets(
    rpm: object, tpm: object, max_inflight: object, burst: object, period: object
) -> _Budgets:
    return _Budgets(
        rpm=_positive_int_or_none("rpm", rpm),
        tpm=_positive_int_or_none("tpm", tpm),
        max_inflight=_positive_int_or_none("max_inflight", max_inflight),
        burst=_seconds("burst", burst, allow_zero=True),
        period=_seconds("period_seconds", period, allow_zero=False),
    )


def _tokens(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (tokens), got {value!r}")
    return value


def _check_cost(budgets: _Budgets, cost: object) -> int:
    tokens = _tokens("cost", cost)
    if budgets.tpm is not None and tokens > budgets.tpm:
        raise CostExceedsBudget(
            f"an attempt's estimated cost of {tokens} tokens exceeds the whole budget of "
            f"tpm={budgets.tpm} tokens per {budgets.period:g} s: it could never start"
        )
    return tokens


def _hint(hint_seconds: float | None) -> float:
    if hint_seconds is None:
        return 0.0
    return _seconds("hint_seconds", hint_seconds, allow_zero=True)


class _Entry:
    """One start in the log: when, and how many tokens it counts for."""

    __slots__ = ("id", "start", "tokens")

    def __init__(self, permit_id: str, start: float, tokens: int) -> None:
        self.id = permit_id
        self.start = start
        self.tokens = tokens


class _Schedule:
    """When the next start may happen under ``rpm`` and ``tpm``, on one clock.

    Each budget keeps a GCRA "theoretical arrival time" (``rtat``, ``ttat``): the time at
    which its bucket would be full again. A start of cost ``k`` is allowed once the
    bucket holds ``min(k, capacity)``, and moves the time on by ``k`` steps (a step is
    ``period / budget``). The log holds the starts of the last period, oldest first,
    and their token total: a start waits until the window ending at it has room.
    `evalexec._redis_scripts.ACQUIRE` is the same algorithm in Lua.
    """

    __slots__ = ("budgets", "by_id", "log", "rtat", "total", "ttat")

    def __init__(self, budgets: _Budgets) -> None:
        self.budgets = budgets
        self.rtat = -math.inf
        self.ttat = -math.inf
        self.log: deque[_Entry] = deque()
        self.by_id: dict[str, _Entry] = {}
        self.total = 0  # tokens in the log

    def earliest(self, tokens: int, now: float) -> float:
        b = self.budgets
        start = now
        if b.rpm is not None:
            step = b.period / b.rpm
            start = max(start, self.rtat - max(0.0, b.burst - step))
        if b.tpm is not None and tokens:
            start = max(start, self.ttat - max(0.0, b.burst - tokens * b.period / b.tpm))
        if b.logged:
            self._forget(now)
            log = self.log
            if b.rpm is not None and len(log) >= b.rpm:
                start = max(start, log[len(log) - b.rpm].start + b.period)
            if b.tpm is not None and self.total + tokens > b.tpm:
                need = self.total + tokens - b.tpm
                for entry in log:
                    need -= entry.tokens
                    if need <= 0:
                        start = max(start, entry.start + b.period)
                        break
        return start

    def commit(self, permit_id: str, tokens: int, start: float) -> None:
        b = self.budgets
        if b.rpm is not None:
            self.rtat = max(self.rtat, start) + b.period / b.rpm
        if b.tpm is not None and tokens:
            self.ttat = max(self.ttat, start) + tokens * b.period / b.tpm
        if b.logged:
            entry = _Entry(permit_id, start, tokens)
            self.log.append(entry)
            self.by_id[permit_id] = entry
            self.total += tokens

    def adjust(self, permit_id: str, estimate: int, used: int, now: float) -> None:
        """Count `used` tokens instead of `estimate` for this start: refund or surcharge."""
        b = self.budgets
        if b.tpm is None or used == estimate:
            return
        entry = self.by_id.get(permit_id)
        if entry is not None:
            self.total += used - entry.tokens
            entry.tokens = used
        shift = (used - estimate) * b.period / b.tpm
        if shift < 0:
            self.ttat = max(self.ttat + shift, now)  # a full bucket cannot overflow
        else:
            self.ttat = max(self.ttat, now) + shift

    def _forget(self, now: float) -> None:
        """Drop the starts that no window ending now or later contains."""
        period = self.budgets.period
        log = self.log
        # `start + period <= now`, the very expression `earliest` waits for, so that a
        # start it scheduled at `start + period` always finds `start` gone.
        while log and log[0].start + period <= now:
            entry = log.popleft()
            self.total -= entry.tokens
            del self.by_id[entry.id]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- in process ------------------------------------------------------------------------


class LocalLimiter:
    """Budgets kept in this process; no dependency.

    Args:
        rpm: starts allowed per period (None: no limit).
        tpm: estimated tokens allowed per period (None: no limit).
        max_inflight: permits out at once (None: no limit).
        burst: seconds' worth of each budget that may start at once after a quiet
            spell (0: strictly paced). No window of one period exceeds ``rpm`` or
            ``tpm`` whatever the burst.
        period_seconds: the window of ``rpm`` and ``tpm`` (60: per minute).

    Waiters are served first come, first served. Share one instance between runs to cap
    them together.
    """

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        max_inflight: int | None = None,
        burst: float = 1.0,
        *,
        period_seconds: float = 60.0,
    ) -> None:
        self._init(_budgets(rpm, tpm, max_inflight, burst, period_seconds))

    def _init(self, budgets: _Budgets) -> None:
        self.budgets = budgets
        self._schedule = _Schedule(budgets)
        self._live: dict[str, Permit] = {}
        self._ids = itertools.count()
        self._prefix = f"{id(self):x}-"
        # Waiting acquires, oldest first; only the first one looks at the budgets, and
        # sleeps on `_wake` (a release, a refund or a stop sets it).
        self._queue: deque[asyncio.Future[None]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._pause_until = -math.inf
        self._stop_reason: str | None = None

    @classmethod
    def _from_budgets(cls, budgets: _Budgets) -> LocalLimiter:
        limiter = cls.__new__(cls)
        limiter._init(budgets)
        return limiter

    def __repr__(self) -> str:
        b = self.budgets
        return (
            f"LocalLimiter(rpm={b.rpm}, tpm={b.tpm}, max_inflight={b.max_inflight}, "
            f"burst={b.burst:g}, period_seconds={b.period:g})"
        )

    @property
    def inflight(self) -> int:
        """Permits out now."""
        return len(self._live)

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    async def acquire(self, cost: Cost = 0) -> Permit:
        tokens = _check_cost(self.budgets, cost)
        self._raise_if_stopped()
        loop = asyncio.get_running_loop()
        queue = self._queue
        if not queue:  # nobody waiting: no need to queue when the budgets allow it now
            now = loop.time()
            when = self._earliest(tokens, now)
            if when is not None and when <= now:
                return self._grant(tokens, now)
        turn: asyncio.Future[None] = loop.create_future()
        queue.append(turn)
        try:
            if queue[0] is not turn:
                await turn  # set when every earlier acquire has left the queue
            due = -math.inf  # the time our timer was set for, once it has fired
            while True:
                self._raise_if_stopped()
                now = loop.time()
                when = self._earliest(tokens, now)
                if when is not None and when <= max(now, due):
                    # A loop may fire a timer a clock tick early (asyncio allows its
                    # clock resolution; a virtual clock rounds to its ticks): the start
                    # is counted at the time it was due, never earlier.
                    return self._grant(tokens, max(now, when))
                due = await self._doze(loop, when)
        finally:
            self._leave(turn)

    def release(self, permit: Permit, used_tokens: int | None = None) -> None:
        if self._live.pop(permit.id, None) is None:
            return
        self._poke()
        if used_tokens is not None:
            used = _tokens("used_tokens", used_tokens)
            self._schedule.adjust(permit.id, permit.tokens, used, _clock.now())

    def report_rate_limit(self, hint_seconds: float | None) -> None:
        seconds = _hint(hint_seconds)
        if seconds > 0:
            self._pause_until = max(self._pause_until, _clock.now() + seconds)

    def report_quota_exhausted(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = str(reason)
        for turn in self._queue:
            _resolve(turn)
        self._poke()

    def hold_at_most(
        self, requests_left: int | None, tokens_left: int | None, at: float, sent_after: int = 0
    ) -> None:
        """Hold at most `requests_left` starts and `tokens_left` tokens as of loop time `at`
        (less `sent_after` requests sent since): what a provider said was left. Only ever
        takes budget away, never adds it.

        The schedule is GCRA: its bucket holds ``n`` starts at time ``t`` when
        ``rtat = t + burst - n * step``, so moving ``rtat`` (or ``ttat`` for tokens) later
        takes budget away; waiters wake on the limiter's own timers.
        """
        budgets = self.budgets
        schedule = self._schedule
        if budgets.rpm is not None and requests_left is not None:
            step = budgets.period / budgets.rpm
            held = min(float(requests_left), budgets.burst / step) - sent_after
            schedule.rtat = max(schedule.rtat, at + budgets.burst - held * step)
        if budgets.tpm is not None and tokens_left is not None:
            per_token = budgets.period / budgets.tpm
            held = min(float(tokens_left), budgets.burst / per_token)
            schedule.ttat = max(schedule.ttat, at + budgets.burst - held * per_token)

    def pause_remaining(self) -> float:
        return max(0.0, self._pause_until - _clock.now())

    async def flush(self) -> None:
        """Nothing to wait for: a LocalLimiter does no I/O."""

    # -- inside ------------------------------------------------------------------------
    def _raise_if_stopped(self) -> None:
        if self._stop_reason is not None:
            raise LimiterStopped(self._stop_reason)

    def _earliest(self, tokens: int, now: float) -> float | None:
        """When an attempt of `tokens` may start; None until a permit comes back."""
        cap = self.budgets.max_inflight
        if cap is not None and len(self._live) >= cap:
            return None
        return max(self._pause_until, self._schedule.earliest(tokens, now))

    def _grant(self, tokens: int, now: float) -> Permit:
        permit = Permit(f"{self._prefix}{next(self._ids)}", tokens, now)
        self._schedule.commit(permit.id, tokens, now)
        self._live[permit.id] = permit
        return permit

    async def _doze(self, loop: asyncio.AbstractEventLoop, when: float | None) -> float:
        """Sleep until `when` (None: until poked); return `when` if the timer woke us,
        -inf if something changed first."""
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        fired: list[float] = []

        def ring() -> None:
            if not wake.done():
                fired.append(when)  # type: ignore[arg-type]
                wake.set_result(None)

        timer = None if when is None else loop.call_at(when, ring)
        try:
            await wake
        finally:
            if timer is not None:
                timer.cancel()
            if self._wake is wake:
                self._wake = None
        return fired[0] if fired else -math.inf

    def _poke(self) -> None:
        if self._wake is not None:
            _resolve(self._wake)

    def _leave(self, turn: asyncio.Future[None]) -> None:
        queue = self._queue
        if queue and queue[0] is turn:
            queue.popleft()
        else:
            queue.remove(turn)
        if queue:
            _resolve(queue[0])


# -- shared through Redis ----------------------------------------------------------------

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
_PROBE_SECONDS = 5.0
"""With ``fallback="local"``, how long the local limiter is used before Redis is tried again."""
_DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
}


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            "RedisLimiter needs the redis package: pip install 'evalexec[redis]'"
        ) from exc


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _safe_url(url: str) -> str:
    """`url` without its password, for log lines and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


class _Link:
    """This process's connection to Redis, bound to one event loop."""

    __slots__ = ("client", "heartbeat", "loop", "scripts", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.loop = loop
        self.client = client
        texts = {"acquire": ACQUIRE, "release": RELEASE, "heartbeat": HEARTBEAT}
        texts |= {"pause": PAUSE, "stop": STOP}
        # redis-py's Script sends EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH or a
        # restart), loads the script and sends it again.
        self.scripts: dict[str, Any] = {n: client.register_script(t) for n, t in texts.items()}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.heartbeat: asyncio.Task[None] | None = None


def _restore_redis_limiter(kwargs: dict[str, Any]) -> RedisLimiter:
    return RedisLimiter(**kwargs)


class RedisLimiter:
    """Budgets shared through Redis by every process that names the same ``key``.

    Args:
        url: a redis-py URL (``redis://host:6379/0``, ``rediss://...``,
            ``unix:///path/redis.sock``).
        key: names the shared budgets (e.g. ``"openai:gpt-4o:org-123"``); every process
            using it must pass the same budgets. No braces: the keys' hash tag is
            ``{key}``, so a Redis Cluster keeps them together.
        rpm, tpm, max_inflight, burst, period_seconds: as for `LocalLimiter`.
        lease_seconds: how long an in-flight slot outlives its process. A live process
            renews its leases every third of this; one that dies (SIGKILL, a lost host)
            gives its slots back within ``lease_seconds``.
        max_wait: the longest a start is reserved ahead: a waiter told to wait less is
            given its slot at once (first come, first served across processes) and
            sleeps; one told to wait longer reserves nothing and asks again later.
        inflight_poll: how often a waiter for an in-flight slot asks again (slots freed
            by other processes send no signal).
        fallback: what to do while Redis is unreachable. ``"wait"``: start nothing new
            and retry with backoff (calls in flight go on). ``"local"``: use a
            `LocalLimiter` with ``fallback_share`` of the budgets, with a warning, and
            try Redis again every few seconds.
        give_up_after: with ``fallback="wait"``, seconds of unreachability after which
            ``acquire`` raises `LimiterUnavailable` (None: wait until cancelled, e.g. by
            the run's deadline).
        stop_seconds: how long a quota stop stays set (`clear_stop` lifts it sooner).
        client_options: passed to ``redis.asyncio.from_url``.

    The object is a spec: it pickles without its connection, and each process (each
    event loop) opens its own connection when first used. ``await limiter.aclose()``
    when done with it on a loop.
    """

    def __init__(
        self,
        url: str,
        key: str,
        rpm: int | None = None,
        tpm: int | None = None,
        max_inflight: int | None = None,
        *,
        lease_seconds: float = 30.0,
        burst: float = 1.0,
        period_seconds: float = 60.0,
        max_wait: float = 5.0,
        inflight_poll: float = 0.05,
        fallback: Literal["wait", "local"] = "wait",
        fallback_share: float = 1.0,
        give_up_after: float | None = None,
        stop_seconds: float = 3600.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty string, got {url!r}")
        if not isinstance(key, str) or not key or "{" in key or "}" in key:
            raise ValueError(f"key must be a non-empty string without braces, got {key!r}")
        self.budgets = _budgets(rpm, tpm, max_inflight, burst, period_seconds)
        self.lease_seconds = _seconds("lease_seconds", lease_seconds, allow_zero=False)
        self.max_wait = _seconds("max_wait", max_wait, allow_zero=True)
        self.inflight_poll = _seconds("inflight_poll", inflight_poll, allow_zero=False)
        if fallback not in ("wait", "local"):
            raise ValueError(f"fallback must be 'wait' or 'local', got {fallback!r}")
        share = _seconds("fallback_share", fallback_share, allow_zero=False)
        if share > 1:
            raise ValueError(f"fallback_share must be in (0, 1], got {fallback_share!r}")
        self.give_up_after = (
            None
            if give_up_after is None
            else _seconds("give_up_after", give_up_after, allow_zero=False)
        )
        self.stop_seconds = _seconds("stop_seconds", stop_seconds, allow_zero=False)
        self._asyncio_redis = _import("redis.asyncio")
        exceptions = _import("redis.exceptions")
        self._outage_errors: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
        )
        self.url = url
        self.key = key
        self.fallback = fallback
        self._kwargs: dict[str, Any] = {
            "url": url,
            "key": key,
            "rpm": rpm,
            "tpm": tpm,
            "max_inflight": max_inflight,
            "lease_seconds": lease_seconds,
            "burst": burst,
            "period_seconds": period_seconds,
            "max_wait": max_wait,
            "inflight_poll": inflight_poll,
            "fallback": fallback,
            "fallback_share": fallback_share,
            "give_up_after": give_up_after,
            "stop_seconds": stop_seconds,
            "client_options": None if client_options is None else dict(client_options),
        }
        self._client_options = {**_DEFAULT_CLIENT_OPTIONS, **(client_options or {})}
        self._client_options["decode_responses"] = True
        self.keys: dict[str, str] = {name: f"{{{key}}}:{name}" for name in KEY_NAMES}
        self._fallback_budgets = self.budgets.scaled(share)
        # Per process; never pickled.
        self._link_: _Link | None = None
        self._live: dict[str, Permit] = {}
        self._acquiring = 0
        self._nappers: deque[asyncio.Future[None]] = deque()
        self._pause_until = -math.inf  # on this process's loop clock, as last seen
        self._stop_reason: str | None = None
        self._outage_since: float | None = None
        self._local: LocalLimiter | None = None
        self._local_ids: set[str] = set()
        self._local_until = -math.inf

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (_restore_redis_limiter, (dict(self._kwargs),))

    def __repr__(self) -> str:
        b = self.budgets
        return (
            f"RedisLimiter({_safe_url(self.url)!r}, key={self.key!r}, rpm={b.rpm}, "
            f"tpm={b.tpm}, max_inflight={b.max_inflight})"
        )

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def pause_remaining(self) -> float:
        return max(0.0, self._pause_until - _clock.now())

    # -- acquire -------------------------------------------------------------------------
    async def acquire(self, cost: Cost = 0) -> Permit:
        b = self.budgets
        tokens = _check_cost(b, cost)
        loop = asyncio.get_running_loop()
        permit_id = uuid.uuid4().hex
        args = [
            permit_id,
            tokens,
            b.rpm or 0,
            b.tpm or 0,
            _us(b.period),
            _us(b.burst),
            b.max_inflight or 0,
            _us(self.lease_seconds),
            _us(self.max_wait),
            _us(self.inflight_poll),
        ]
        keys = [self.keys[name] for name in KEY_NAMES]
        backoff = _BACKOFF_FIRST
        self._acquiring += 1
        try:
            while True:
                self._raise_if_stopped()
                paused = self._pause_until - loop.time()
                if paused > 0:
                    await self._nap(paused)
                    continue
                if loop.time() < self._local_until:
                    return await self._acquire_locally(tokens)
                link = self._link()
                try:
                    reply = await self._ask(link, keys, args, permit_id, tokens)
                except self._outage_errors as exc:
                    if self.fallback == "local":
                        self._fall_back(exc, loop)
                        continue
                    self._outage(exc, loop)
                    await self._nap(self._outage_nap(backoff, loop))
                    backoff = min(2 * backoff, _BACKOFF_MAX)
                    continue
                self._reachable()
                backoff = _BACKOFF_FIRST
                status = reply[0]
                if status == "ok":
                    permit = await self._granted(link, permit_id, tokens, reply)
                    if permit is not None:
                        return permit
                    continue  # a pause or a stop came while it waited for its slot
                if status == "stop":
                    self._stopped(str(reply[1]))
                    continue
                wait = float(reply[1]) / 1_000_000
                if status == "pause":
                    self._pause_until = max(self._pause_until, loop.time() + wait)
                    continue
                if status == "later":  # spread the retries of many waiters a little
                    wait *= 1.0 + 0.1 * random.random()
                await self._nap(max(wait, 0.001))
        finally:
            self._acquiring -= 1

    async def _ask(
        self, link: _Link, keys: list[str], args: list[Any], permit_id: str, tokens: int
    ) -> Any:
        """Run the acquire script; if we are cancelled meanwhile, a grant the server made
        anyway is handed back as soon as its reply arrives."""
        task = link.loop.create_task(link.scripts["acquire"](keys=keys, args=args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            link.tasks.add(task)
            task.add_done_callback(functools.partial(self._orphaned, link, permit_id, tokens))
            raise

    def _orphaned(self, link: _Link, permit_id: str, tokens: int, task: asyncio.Task[Any]) -> None:
        link.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        if task.result()[0] == "ok":
            self._send_release(Permit(permit_id, tokens, 0.0), None, never_started=True)

    async def _granted(self, link: _Link, permit_id: str, tokens: int, reply: Any) -> Permit | None:
        """The permit; None when a pause or a stop began while it waited for its slot
        (the slot is handed back, never started)."""
        wait = float(reply[1]) / 1_000_000
        permit = Permit(permit_id, tokens, float(reply[2]) / 1_000_000)
        self._live[permit_id] = permit
        self._keep_alive(link)
        if wait <= 0:
            return permit
        try:  # a start reserved a little ahead: sleep until it, then look again
            await asyncio.sleep(wait)
            async with link.client.pipeline(transaction=False) as pipe:
                pipe.get(self.keys["stop"])
                pipe.pttl(self.keys["pause"])
                reason, paused_ms = await pipe.execute()
        except BaseException:
            if self._live.pop(permit_id, None) is not None:
                self._send_release(permit, None, never_started=True)
            raise
        loop = asyncio.get_running_loop()
        if reason is not None:
            self._stopped(str(reason))
        elif paused_ms > 0:
            self._pause_until = max(self._pause_until, loop.time() + paused_ms / 1000)
        elif self._pause_until <= loop.time() and self._stop_reason is None:
            return permit
        if self._live.pop(permit_id, None) is not None:
            self._send_release(permit, None, never_started=True)
        return None

    async def _acquire_locally(self, tokens: int) -> Permit:
        local = self._local
        if local is None:
            local = self._local = LocalLimiter._from_budgets(self._fallback_budgets)
        permit = await local.acquire(tokens)
        self._local_ids.add(permit.id)
        return permit

    # -- release and reports -------------------------------------------------------------
    def release(self, permit: Permit, used_tokens: int | None = None) -> None:
        if permit.id in self._local_ids:
            self._local_ids.discard(permit.id)
            assert self._local is not None
            self._local.release(permit, used_tokens)
            return
        if self._live.pop(permit.id, None) is None:
            return
        self._wake_one()
        used = None if used_tokens is None else _tokens("used_tokens", used_tokens)
        self._send_release(permit, used, never_started=False)

    def report_rate_limit(self, hint_seconds: float | None) -> None:
        seconds = _hint(hint_seconds)
        if seconds <= 0:
            return
        self._pause_until = max(self._pause_until, _clock.now() + seconds)
        if self._local is not None:
            self._local.report_rate_limit(seconds)
        self._send("pause", [self.keys["pause"]], [math.ceil(seconds * 1000)], "share a pause")

    def report_quota_exhausted(self, reason: str) -> None:
        reason = str(reason)
        if self._local is not None:
            self._local.report_quota_exhausted(reason)
        if self._stop_reason is None:  # once: background sends may reach Redis in any order
            args = [reason, math.ceil(self.stop_seconds * 1000)]
            self._send("stop", [self.keys["stop"]], args, "share a stop")
        self._stopped(reason)

    async def clear_stop(self) -> None:
        """Lift a quota stop for every process (once the quota has been raised)."""
        link = self._link()
        await link.client.delete(self.keys["stop"])
        self._stop_reason = None
        if self._local is not None and self._local.stopped:
            self._local = None

    async def flush(self) -> None:
        """Wait for the releases and reports sent so far; close the connection when
        nothing on this loop uses it (the next acquire opens a new one)."""
        link = self._link_
        if link is None or link.loop is not asyncio.get_running_loop():
            return
        while link.tasks:
            await asyncio.gather(*list(link.tasks), return_exceptions=True)
        if not self._live and not self._acquiring and self._link_ is link:
            await self._close(link)

    async def aclose(self) -> None:
        """Flush, then close this loop's connection even if permits are still out (their
        leases then expire within ``lease_seconds``)."""
        await self.flush()
        link = self._link_
        if link is not None and link.loop is asyncio.get_running_loop():
            await self._close(link)

    # -- inside --------------------------------------------------------------------------
    def _link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._link_
        if link is None or link.loop is not loop:
            client = self._asyncio_redis.from_url(self.url, **self._client_options)
            link = self._link_ = _Link(loop, client)
        return link

    async def _close(self, link: _Link) -> None:
        self._link_ = None
        if link.heartbeat is not None:
            link.heartbeat.cancel()
            await asyncio.gather(link.heartbeat, return_exceptions=True)
        close = getattr(link.client, "aclose", None) or link.client.close
        await close()

    def _send(self, script: str, keys: list[str], args: list[Any], what: str) -> None:
        """Run a script in the background (callers are synchronous, e.g. a `finally`)."""
        try:
            link = self._link()
        except RuntimeError:
            logger.warning("evalexec: could not %s on Redis: no event loop is running", what)
            return
        task = link.loop.create_task(
            self._quietly(link.scripts[script](keys=keys, args=args), what)
        )
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    async def _quietly(self, call: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await call
        except self._outage_errors as exc:
            logger.warning("evalexec: could not %s on Redis (%s)", what, exc)

    def _send_release(self, permit: Permit, used: int | None, *, never_started: bool) -> None:
        b = self.budgets
        adjusts = b.tpm is not None and used is not None and used != permit.tokens
        if not (never_started or adjusts or b.max_inflight is not None):
            return  # nothing on the server depends on this release
        keys = [self.keys[name] for name in ("lease", "log", "sum", "rtat", "ttat")]
        args = [
            permit.id,
            permit.tokens,
            -1 if used is None else used,
            1 if never_started else 0,
            b.rpm or 0,
            b.tpm or 0,
            _us(b.period),
        ]
        self._send(
            "release",
            keys,
            args,
            f"release a permit (its lease expires within {self.lease_seconds:g} s)",
        )

    def _keep_alive(self, link: _Link) -> None:
        if self.budgets.max_inflight is not None and link.heartbeat is None:
            link.heartbeat = link.loop.create_task(self._beat(link))

    async def _beat(self, link: _Link) -> None:
        """Renew this process's leases every third of their life while any is out."""
        keep_ms = math.ceil((self.max_wait + self.lease_seconds) * 1000) + 1000
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = list(self._live)
            if not ids:
                link.heartbeat = None  # the next grant starts a new one
                return
            try:
                await link.scripts["heartbeat"](
                    keys=[self.keys["lease"]], args=[_us(self.lease_seconds), keep_ms, *ids]
                )
            except self._outage_errors as exc:
                logger.debug("evalexec: could not renew leases on Redis (%s)", exc)

    def _raise_if_stopped(self) -> None:
        if self._stop_reason is not None:
            raise LimiterStopped(self._stop_reason)

    def _stopped(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        for napper in self._nappers:
            _resolve(napper)

    def _outage(self, exc: BaseException, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if self._outage_since is None:
            self._outage_since = now
            logger.warning(
                "evalexec: Redis at %s is unreachable (%s); starting nothing new until it "
                "answers again",
                _safe_url(self.url),
                exc,
            )
        give_up = self.give_up_after
        if give_up is not None and now - self._outage_since >= give_up:
            raise LimiterUnavailable(
                f"Redis at {_safe_url(self.url)} was unreachable for {give_up:g} s "
                f"(give_up_after); no attempt was started. Last error: {exc}"
            ) from exc

    def _outage_nap(self, backoff: float, loop: asyncio.AbstractEventLoop) -> float:
        nap = backoff * (0.5 + 0.5 * random.random())
        if self.give_up_after is not None and self._outage_since is not None:
            left = self._outage_since + self.give_up_after - loop.time()
            nap = min(nap, max(left, 0.001))
        return nap

    def _fall_back(self, exc: BaseException, loop: asyncio.AbstractEventLoop) -> None:
        if self._outage_since is None:
            self._outage_since = loop.time()
            logger.warning(
                "evalexec: Redis at %s is unreachable (%s); falling back to a LocalLimiter "
                "for this process (budgets x %g): processes no longer share the budgets",
                _safe_url(self.url),
                exc,
                self._kwargs["fallback_share"],
            )
        self._local_until = loop.time() + _PROBE_SECONDS

    def _reachable(self) -> None:
        if self._outage_since is not None:
            self._outage_since = None
            self._local_until = -math.inf
            logger.warning("evalexec: Redis at %s answers again", _safe_url(self.url))

    async def _nap(self, seconds: float) -> None:
        """Sleep `seconds`, or until a local release or a stop wakes us."""
        loop = asyncio.get_running_loop()
        napper: asyncio.Future[None] = loop.create_future()
        self._nappers.append(napper)
        timer = loop.call_later(seconds, _resolve, napper)
        try:
            await napper
        finally:
            timer.cancel()
            self._nappers.remove(napper)

    def _wake_one(self) -> None:
        for napper in self._nappers:
            if not napper.done():
                napper.set_result(None)
                return
