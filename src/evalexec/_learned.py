"""Budgets learned from the provider, and the link that lets HTTP hooks reach a run.

A run given no limiter learns one from the provider's rate-limit headers: the first
response that states a limit (``x-ratelimit-limit-requests`` / ``-tokens``, or
Anthropic's ``anthropic-ratelimit-*-limit``; both are per minute) sets a `LocalLimiter`
of that rpm / tpm for the rest of the run. The provider's ``remaining`` counts then keep
the limiter honest: after each response the limiter holds no more than what the
provider says is left, less the requests sent since (other processes on the same key
spend it too). A limiter only ever lets fewer calls start than the provider allows.

The engine makes the attempt's run current in `current_run` while the function runs;
`evalexec.httpx`'s hooks read it there (a worker thread of the threaded SyncExecutor
sees it too: the attempt's context goes with the call).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Protocol

from evalexec._headers import RateLimitInfo
from evalexec.exceptions import retry_hint_seconds
from evalexec.limits import LocalLimiter

__all__ = [
    "HEARD",
    "SENT",
    "LearnedBudget",
    "RequestCount",
    "ResponseObserver",
    "current_run",
    "heard",
    "response_headers",
    "retry_hint_from_headers",
]

SENT = "evalexec.sent"
"""Key in ``request.extensions``: ``(loop time, sequence number)`` of the request's send."""
HEARD = "evalexec.heard"
"""Key in ``response.extensions``: the hook reported this response to its run."""


class RequestCount:
    """The run's HTTP requests that may have spent the provider's budget: each one sent
    counts, until its response says it was refused. Safe from any thread."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def sent(self) -> int:
        """One more request went out; return the count with it (its mark)."""
        with self._lock:
            self.value += 1
            return self.value

    def refused(self) -> None:
        """A request's response was a 429: it spent nothing."""
        with self._lock:
            self.value -= 1


class ResponseObserver(Protocol):
    """What `evalexec.httpx`'s hooks need of the current run (the engine's `Run`)."""

    loop: asyncio.AbstractEventLoop
    requests_sent: RequestCount

    def observe_response(
        self, status: int, headers: Any, sent_at: float | None = None, sent_after: int = 0
    ) -> None: ...


current_run: contextvars.ContextVar[ResponseObserver | None] = contextvars.ContextVar(
    "evalexec_current_run", default=None
)


def heard(exc: BaseException) -> bool:
    """True when `exc` carries a response that a hook already reported to the run."""
    try:
        extensions = exc.response.extensions  # type: ignore[attr-defined]
        return extensions.get(HEARD) is True
    except Exception:  # no response, or one that cannot be read: not heard
        return False


def response_headers(exc: BaseException) -> Any:
    """``exc.response.headers`` (as on the SDKs' errors), or None if it cannot be read."""
    try:
        return exc.response.headers  # type: ignore[attr-defined]
    except Exception:
        return None


class _Headers:
    __slots__ = ("headers",)

    def __init__(self, headers: Any) -> None:
        self.headers = headers


class _Refusal(Exception):
    """A 429 seen by a hook, shaped as the SDK's error would be (for `retry_hint_seconds`)."""

    status_code = 429

    def __init__(self, headers: Any) -> None:
        super().__init__("HTTP 429")
        self.response = _Headers(headers)


def retry_hint_from_headers(headers: Any) -> float | None:
    """The wait a 429's headers ask for, read exactly as for the SDK's own error."""
    return retry_hint_seconds(_Refusal(headers))


class LearnedBudget:
    """The budget a run learns from rate-limit headers: None until a limit is seen."""

    __slots__ = ("limiter",)

    def __init__(self) -> None:
        self.limiter: LocalLimiter | None = None

    def describe(self) -> str:
        """``rpm<=500 tpm<=30000`` (what is known), or "" before anything is learned."""
        return "" if self.limiter is None else self.limiter.budgets.describe()

    def observe(
        self, info: RateLimitInfo, sent_at: float, sent_after: int, wait: float | None
    ) -> LocalLimiter | None:
        """Learn from one response's headers; return the limiter if it was made just now.

        `sent_at` is when the request went out (loop time), `sent_after` how many of the
        run's requests went out after it and were not refused; `wait` is None for a
        success, and for a 429 the seconds its hint asks for (0 without one).
        """
        made = None
        if self.limiter is None:
            if info.limit_requests is None and info.limit_tokens is None:
                return None
            made = self.limiter = LocalLimiter(rpm=info.limit_requests, tpm=info.limit_tokens)
        limiter = self.limiter
        if wait is None:
            left = info.remaining_requests
            _spend_down(limiter, left, info.remaining_tokens, sent_at, sent_after)
        elif limiter.budgets.rpm is not None:
            # One request is free again once the hint has passed (within one step of
            # the budget without a hint), and the refused request will take it: the
            # SDK, or our retry, sends it again then.
            step = limiter.budgets.period / limiter.budgets.rpm
            _spend_down(limiter, 1, None, sent_at + (wait or step), 1)
        return made


def _spend_down(
    limiter: LocalLimiter,
    requests_left: int | None,
    tokens_left: int | None,
    at: float,
    sent_after: int,
) -> None:
    """Let `limiter` hold at most what the provider says was left at `at`, less the
    `sent_after` requests sent since; never more than it holds already."""
    limiter.hold_at_most(requests_left, tokens_left, at, sent_after)
