"""Let evalexec see every HTTP response your LLM client gets, its own retries included.

The openai and anthropic SDKs retry a 429 themselves (``max_retries=2`` by default), so
the executor never hears of the refusals they absorb, and keeps starting calls into a
provider that asked it to wait. Hand the SDK an HTTP client with evalexec's hooks::

    import evalexec.httpx
    client = openai.AsyncOpenAI(http_client=evalexec.httpx.async_client())
    # sync: openai.OpenAI(http_client=evalexec.httpx.client())
    # or your own: httpx.AsyncClient(event_hooks=evalexec.httpx.event_hooks(), ...)

Every response of a call made inside an executor's attempt is then reported to that
run: a 429 pauses every new call for its ``retry-after`` (or reset) hint, counts as a
rate limit for the adaptive controller, and, with the rate-limit headers of any
response, teaches the run its budget (requests and tokens per minute) when it was given
no limiter. Outside a run the hooks do nothing.

`async_client` and `client` build clients of the HTTP library the installed SDKs use:
``httpx2`` when it is installed (openai 3 and anthropic 2 use it), else ``httpx``; pass
``library="httpx"`` or ``"httpx2"`` to choose. Neither is a dependency of evalexec: they
come with the SDKs, and are imported only when a client is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Generator
from functools import partial
from types import ModuleType
from typing import Any, Literal

from evalexec._learned import HEARD, SENT, current_run

__all__ = ["async_client", "client", "event_hooks"]

logger = logging.getLogger("evalexec")

Library = Literal["httpx", "httpx2"]


class _Done:
    """What a hook returns: an awaitable that is already done.

    ``httpx.AsyncClient`` awaits each hook's result and ``httpx.Client`` drops it, so
    one pair of hooks serves both; a hook's work is done before it returns.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that yields nothing


_DONE = _Done()


def _on_request(request: Any) -> _Done:
    run = current_run.get()
    if run is not None:
        # A request object we cannot annotate leaves its send time unknown.
        with contextlib.suppress(Exception):
            request.extensions[SENT] = (run.loop.time(), run.requests_sent.sent())
    return _DONE


def _on_response(response: Any) -> _Done:
    run = current_run.get()
    if run is None:
        return _DONE
    try:
        status = int(response.status_code)
        headers = {str(name).lower(): str(value) for name, value in response.headers.items()}
        sent = response.request.extensions.get(SENT)
        response.extensions[HEARD] = True
    except Exception:  # not a response we can read: nothing to report
        return _DONE
    sent_at, sent_after = None, 0
    if isinstance(sent, tuple):
        sent_at, mark = sent
        sent_after = max(0, run.requests_sent.value - mark)
        if status == 429:
            run.requests_sent.refused()
    report = partial(run.observe_response, status, headers, sent_at, sent_after)
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is run.loop:
        try:
            report()
        except Exception:  # never let evalexec's bookkeeping break the user's call
            logger.exception("evalexec: reporting an HTTP response failed")
    else:  # a worker thread (or another loop): the run's state lives on its loop
        with contextlib.suppress(RuntimeError):  # the run's loop has closed: it is over
            run.loop.call_soon_threadsafe(report)
    return _DONE


def event_hooks() -> dict[str, list[Callable[[Any], Any]]]:
    """``event_hooks=`` for an ``httpx.AsyncClient`` or ``httpx.Client`` (or httpx2's).

    The same hooks serve both kinds of client. Responses of calls made outside an
    executor's run are not reported.
    """
    return {"request": [_on_request], "response": [_on_response]}


def async_client(*, library: Library | None = None, **kwargs: Any) -> Any:
    """An ``AsyncClient`` with evalexec's hooks, for ``http_client=`` of
    ``openai.AsyncOpenAI`` or ``anthropic.AsyncAnthropic``.

    `kwargs` go to the client; hooks of your own in ``event_hooks=`` run after ours.
    Unless given, the timeout (600 s, 5 s to connect), connection limits (1000, 100
    kept alive) and ``follow_redirects=True`` are the SDKs' own defaults.
    """
    module = _library(library)
    return module.AsyncClient(**_settings(module, kwargs))


def client(*, library: Library | None = None, **kwargs: Any) -> Any:
    """A ``Client`` with evalexec's hooks, for ``http_client=`` of ``openai.OpenAI`` or
    ``anthropic.Anthropic`` (see `async_client`)."""
    module = _library(library)
    return module.Client(**_settings(module, kwargs))


def _settings(module: ModuleType, kwargs: dict[str, Any]) -> dict[str, Any]:
    settings = dict(kwargs)
    theirs = dict(settings.pop("event_hooks", None) or {})
    hooks = event_hooks()
    for event in ("request", "response"):
        hooks[event] += list(theirs.pop(event, []))
    if theirs:
        raise ValueError(f"event_hooks has unknown events: {sorted(theirs)}")
    settings["event_hooks"] = hooks
    settings.setdefault("timeout", module.Timeout(600.0, connect=5.0))
    settings.setdefault(
        "limits", module.Limits(max_connections=1000, max_keepalive_connections=100)
    )
    settings.setdefault("follow_redirects", True)
    return settings


def _library(library: Library | None) -> ModuleType:
    names: tuple[str, ...]
    if library is None:
        names = ("httpx2", "httpx")
    elif library in ("httpx", "httpx2"):
        names = (library,)
    else:
        raise ValueError(f"library must be 'httpx', 'httpx2' or None, got {library!r}")
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    wanted = " or ".join(names)
    raise ImportError(
        f"evalexec.httpx needs {wanted}, which the openai and anthropic SDKs install: "
        f"pip install {names[-1]}"
    )
