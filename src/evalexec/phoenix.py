"""Run Phoenix's own paths on evalexec: one call, undone by another.

Phoenix's ``evaluate_dataframe`` / ``async_evaluate_dataframe`` (``phoenix.evals``) and its
experiment runner (``phoenix.client``) build their executors from their own modules, so a
user who only changes imports still runs Phoenix's executors there. ::

    import evalexec.phoenix
    evalexec.phoenix.install()

rebinds the executor names (`EXECUTOR_NAMES`) wherever an imported ``phoenix.*`` module
holds one of Phoenix's originals, so those paths build evalexec's executors instead.
Phoenix's sync paths get a `SyncExecutor` that runs ``sync_concurrency`` calls at once.
With ``replace_rate_limiters=True`` (the default) Phoenix's model-layer ``RateLimiter``
(``phoenix.evals`` and ``phoenix.client``) stops limiting: its ``limit`` / ``alimit`` hand the
function back unwrapped, so the provider's own rate-limit errors (``openai.RateLimitError``,
HTTP 429 with its retry hints) reach evalexec's executor, which backs off and adapts.

`uninstall` puts every original object back (the very same objects); `installed` is the
context-manager form. Nothing else of Phoenix is changed, and nothing outside ``phoenix.*``.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evalexec import executors as _ours
from evalexec._checks import check_int
from evalexec.executors import SyncExecutor

__all__ = ["EXECUTOR_NAMES", "install", "installed", "is_installed", "uninstall"]

#: The names Phoenix's executor modules define and evalexec replaces.
EXECUTOR_NAMES = (
    "AsyncExecutor",
    "SyncExecutor",
    "get_executor_on_sync_context",
    "ConcurrencyController",
    "ExecutionDetails",
    "ExecutionStatus",
)

# Where Phoenix defines its executors (one copy per distribution), and the modules known to
# import from them; install() imports these first so that they are covered whatever the
# user has imported so far. Other phoenix.* modules are found by scanning sys.modules.
_EXECUTOR_SOURCES = ("phoenix.evals.executors", "phoenix.client.utils.executors")
_KNOWN_USERS = ("phoenix.evals.evaluators", "phoenix.client.resources.experiments")
# Phoenix's model-layer limiters: the class `RateLimiter` in each, methods limit / alimit.
_RATE_LIMITER_SOURCES = ("phoenix.evals.rate_limiters", "phoenix.client.utils.rate_limiters")
_LIMITER_METHODS = ("limit", "alimit")

_MISSING_PHOENIX = (
    "evalexec.phoenix needs Arize Phoenix: pip install arize-phoenix-evals "
    "(and/or arize-phoenix-client)"
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _unlimited(self: object, fn: _F) -> _F:
    """`RateLimiter.limit` / `alimit` while installed: the function itself, not throttled.

    The provider's rate-limit errors then reach evalexec's executor unchanged, with the
    retry hints that Phoenix's limiter would have replaced by a hint-less error of its own.
    """
    return fn


@dataclass(frozen=True, slots=True)
class _Options:
    sync_concurrency: int
    replace_rate_limiters: bool


@dataclass(slots=True)
class _Patch:
    """One attribute we rebound: where, which name, and the object that was there."""

    owner: Any  # a module, or a Phoenix RateLimiter class
    name: str
    original: Any
    replacement: Any


@dataclass(slots=True)
class _State:
    options: _Options
    # executor name -> the evalexec object that stands in for it.
    ours: dict[str, Any]
    # id(Phoenix original) -> (that original, its executor name); the object is kept so
    # that a matching id is confirmed by identity.
    originals: dict[int, tuple[Any, str]] = field(default_factory=dict)
    # (defining module, executor name) -> Phoenix original, to restore late importers.
    by_source: dict[tuple[str, str], Any] = field(default_factory=dict)
    patches: list[_Patch] = field(default_factory=list)


_lock = threading.RLock()
_state: _State | None = None


def install(*, sync_concurrency: int = 8, replace_rate_limiters: bool = True) -> None:
    """Make Phoenix's evaluation and experiment paths run on evalexec.

    Args:
        sync_concurrency: how many calls Phoenix's sync paths (``evaluate_dataframe``, the
            sync ``run_experiment`` / ``evaluate_experiment``) run at once, on worker threads.
            1 keeps them sequential.
        replace_rate_limiters: make Phoenix's model-layer ``RateLimiter`` a pass-through, so
            that rate limits are handled by evalexec from the provider's own errors. False
            keeps Phoenix's limiter in front of every call.

    Calling it again is harmless: it also covers ``phoenix.*`` modules imported since, and
    with different options it re-installs with those. Raises ImportError, naming the
    package to install, when neither ``phoenix.evals`` nor ``phoenix.client`` is importable.
    """
    options = _Options(
        sync_concurrency=check_int("sync_concurrency", sync_concurrency, 1),
        replace_rate_limiters=_check_bool("replace_rate_limiters", replace_rate_limiters),
    )
    global _state
    with _lock:
        if _state is not None and _state.options != options:
            _uninstall_locked()
        sources = [module for module in map(_import_if_installed, _EXECUTOR_SOURCES) if module]
        if not sources:
            raise ImportError(_MISSING_PHOENIX)
        for name in _KNOWN_USERS:
            _import_if_installed(name)
        if _state is None:
            _state = _new_state(options)
        _record_originals(_state, sources)
        if options.replace_rate_limiters:
            _replace_rate_limiters(_state)
        _rebind_in_phoenix_modules(_state)


def uninstall() -> None:
    """Put back every object `install` replaced; a no-op when not installed."""
    with _lock:
        _uninstall_locked()


def is_installed() -> bool:
    """Whether `install` is in effect."""
    return _state is not None


@contextmanager
def installed(*, sync_concurrency: int = 8, replace_rate_limiters: bool = True) -> Iterator[None]:
    """`install` for the duration of a ``with`` block; on exit, the state before it returns
    (not installed, or installed with the options it had)."""
    with _lock:
        before = None if _state is None else _state.options
        install(sync_concurrency=sync_concurrency, replace_rate_limiters=replace_rate_limiters)
    try:
        yield
    finally:
        with _lock:
            if before is None:
                _uninstall_locked()
            else:
                install(
                    sync_concurrency=before.sync_concurrency,
                    replace_rate_limiters=before.replace_rate_limiters,
                )


# --------------------------------------------------------------------------------------
# Machinery


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _import_if_installed(name: str) -> types.ModuleType | None:
    """The module, or None when it (or a package above it) is not installed.

    A module that is installed but fails to import (a broken dependency) raises.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            return None
        raise


@functools.cache
def _sync_executor_class(concurrency: int) -> type[SyncExecutor]:
    """evalexec's SyncExecutor as Phoenix constructs it, with ``concurrency`` filled in.

    Phoenix passes only its own arguments, so ``concurrency`` is filled in unless the
    caller gave one. One class per value, so that installing again with the same options
    binds the same objects.
    """

    class PhoenixSyncExecutor(SyncExecutor):
        __doc__ = f"evalexec's SyncExecutor running up to {concurrency} calls at once."

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("concurrency", concurrency)
            super().__init__(*args, **kwargs)

    PhoenixSyncExecutor.__module__ = __name__
    PhoenixSyncExecutor.__qualname__ = "PhoenixSyncExecutor"
    return PhoenixSyncExecutor


def _new_state(options: _Options) -> _State:
    ours: dict[str, Any] = {name: getattr(_ours, name) for name in EXECUTOR_NAMES}
    ours["SyncExecutor"] = _sync_executor_class(options.sync_concurrency)
    return _State(options, ours)


def _record_originals(state: _State, sources: list[types.ModuleType]) -> None:
    """Note Phoenix's objects in each defining module not seen before (one installed
    since the first `install` call); a module already seen holds our objects by now."""
    seen = {module_name for module_name, _ in state.by_source}
    for module in sources:
        if module.__name__ in seen:
            continue
        for name in EXECUTOR_NAMES:
            original = vars(module).get(name)
            if original is not None:
                state.originals[id(original)] = (original, name)
                state.by_source[(module.__name__, name)] = original


def _phoenix_modules() -> list[types.ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "phoenix" or name.startswith("phoenix."))
        and isinstance(module, types.ModuleType)
    ]


def _rebind_in_phoenix_modules(state: _State) -> None:
    """In every imported phoenix.* module, swap each name bound to a Phoenix original."""
    for module in _phoenix_modules():
        for attribute, value in list(vars(module).items()):
            found = state.originals.get(id(value))
            if found is not None and found[0] is value:
                replacement = state.ours[found[1]]
                state.patches.append(_Patch(module, attribute, value, replacement))
                setattr(module, attribute, replacement)


def _replace_rate_limiters(state: _State) -> None:
    for module_name in _RATE_LIMITER_SOURCES:
        module = sys.modules.get(module_name) or _import_if_installed(module_name)
        limiter = getattr(module, "RateLimiter", None) if module is not None else None
        if not isinstance(limiter, type):
            continue
        for method in _LIMITER_METHODS:
            original = limiter.__dict__.get(method)
            if original is not None and original is not _unlimited:
                state.patches.append(_Patch(limiter, method, original, _unlimited))
                setattr(limiter, method, _unlimited)


def _uninstall_locked() -> None:
    global _state
    state, _state = _state, None
    if state is None:
        return
    for patch in reversed(state.patches):
        if getattr(patch.owner, patch.name, None) is patch.replacement:
            setattr(patch.owner, patch.name, patch.original)
    # A phoenix.* module imported while installed may have copied a replacement from a
    # patched module: it gets the original of that name from its own distribution.
    names_of_ours = {id(obj): (obj, name) for name, obj in state.ours.items()}
    for module in _phoenix_modules():
        home, other = _EXECUTOR_SOURCES
        if module.__name__.startswith("phoenix.client"):
            home, other = other, home
        for attribute, value in list(vars(module).items()):
            found = names_of_ours.get(id(value))
            if found is None or found[0] is not value:
                continue
            original = state.by_source.get((home, found[1]), state.by_source.get((other, found[1])))
            if original is not None:
                setattr(module, attribute, original)
