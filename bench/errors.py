"""Fake provider errors shaped like the ones LLM SDKs raise; the one home for them.

The openai and anthropic SDKs raise `APIStatusError` subclasses (`RateLimitError` for
HTTP 429, `InternalServerError` for 5xx) that carry a `status_code`, the httpx
`response` (whose `headers` hold `retry-after` / `retry-after-ms`) and the decoded JSON
`body`; openai also exposes the body's `error.code` as `code`. The classes here have
those attributes and nothing else, are defined here and imported from no SDK, so code
that recognises them must do it by shape (status, headers, class name), as evalexec
does and as Phoenix does not.

`rate_limit_error`, `quota_error` and `server_error` build the errors the simulated
provider raises (`bench/provider.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "FakeResponse",
    "InternalServerError",
    "RateLimitError",
    "TransientProviderError",
    "quota_error",
    "rate_limit_error",
    "server_error",
]


class FakeResponse:
    """The part of an `httpx.Response` that error handlers look at."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return f"<FakeResponse [{self.status_code}]>"


class APIStatusError(Exception):
    """Shaped like the SDKs' `APIStatusError`: `message`, `status_code`, `response`, `body`
    and (openai) `code`, the body's ``error.code``.

    Without `status_code` the error has neither `status_code` nor `response`, like an
    exception whose status is unknown: only its class name can tell what it is.
    """

    status_code: int
    response: FakeResponse

    def __init__(
        self,
        message: str = "api error",
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
            self.response = FakeResponse(status_code, headers)
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        self.code: str | None = error.get("code") if isinstance(error, dict) else None


class RateLimitError(APIStatusError):
    """Named like openai's and anthropic's 429 error (not evalexec's or Phoenix's)."""


class InternalServerError(APIStatusError):
    """Named like the SDKs' 5xx error."""


class APIConnectionError(Exception):
    """Shaped like the SDKs' connection error: no status code, no response."""


class TransientProviderError(Exception):
    """A plain transient failure (think connection reset, or a 500 without a status)."""


def rate_limit_error(retry_after: float | None = None, *, exact: bool = False) -> RateLimitError:
    """A 429 like openai's. With a hint, `retry-after` in seconds; with `exact`, the
    precise wait as `retry-after-ms` plus `retry-after` rounded up to whole seconds, as
    OpenAI sends them."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        if exact:
            headers["retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        else:
            headers["retry-after"] = f"{retry_after:g}"
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": None}}
    return RateLimitError(
        "Error code: 429 - rate limit reached", status_code=429, headers=headers, body=body
    )


def quota_error() -> RateLimitError:
    """A 429 that no wait cures: openai's ``insufficient_quota``."""
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan.",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    return RateLimitError("Error code: 429 - insufficient_quota", status_code=429, body=body)


def server_error(status_code: int = 503) -> InternalServerError:
    """A 5xx, like an overloaded model's."""
    body = {"error": {"message": "The server is overloaded", "type": "server_error"}}
    return InternalServerError(
        f"Error code: {status_code} - overloaded", status_code=status_code, body=body
    )
