"""Argument and input checks shared by both executors: early errors that name the problem."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "check_callable",
    "check_int",
    "check_limits",
    "check_seconds",
    "deadline_seconds",
    "sized_len",
    "stream_len",
    "timeout_seconds",
]

DEFAULT_TIMEOUT_SECONDS = 60  # Phoenix's default per-attempt timeout


def check_callable(generation_fn: object) -> None:
    if not callable(generation_fn):
        raise TypeError(f"generation_fn must be callable, got {type(generation_fn).__name__}")


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seconds(name: str, value: object, *, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return float(value)


def sized_len(inputs: object) -> int:
    """The number of inputs, or a TypeError that says what inputs must be."""
    refuse_dataframe(inputs)
    if inputs is None or isinstance(inputs, str | bytes | bytearray):
        what = "None" if inputs is None else f"a {type(inputs).__name__}"
        raise TypeError(
            f"inputs must be a sequence of inputs (a list, a tuple, or any sized iterable), "
            f"got {what}; to run a single input, wrap it in a list: [input]"
        )
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"inputs must be a sequence or sized iterable, got {type(inputs).__name__}, "
            "which is not iterable"
        )
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"inputs must have a length (a list, a tuple, or any sized iterable), got "
            f"{type(inputs).__name__}; for a generator, use the executor's stream() method "
            "or pass list(inputs)"
        ) from None


def stream_len(inputs: object) -> int | None:
    """The number of inputs of a stream, or None for an iterable of unknown length."""
    refuse_dataframe(inputs)
    if isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | bytearray):
        return len(inputs) if isinstance(inputs, Sized) else None
    return sized_len(inputs)  # raises the same clear error as execute()


def refuse_dataframe(inputs: object) -> None:
    """A DataFrame iterates over its column names, which is never what was meant."""
    cls = type(inputs)
    if cls.__module__.partition(".")[0] == "pandas" and cls.__name__ == "DataFrame":
        raise TypeError(
            "inputs is a pandas DataFrame, whose iteration yields its column names, not "
            'its rows; pass `df.to_dict("records")` (one dict per row), or use '
            "Phoenix's own evaluate_dataframe (with `evalexec.phoenix.install()`)"
        )


def timeout_seconds(timeout: object) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_SECONDS
    return check_seconds("timeout", timeout, allow_inf=True)


def deadline_seconds(deadline: object) -> float | None:
    return None if deadline is None else check_seconds("deadline", deadline, allow_inf=False)


def check_limits(limiter: object, cost: object, usage: object) -> tuple[Any, Any, Any]:
    """`limiter=`, `cost=` and `usage=` as given, or a TypeError that names the bad one."""
    if limiter is not None:
        missing = [
            name
            for name in ("acquire", "release", "report_rate_limit")
            if not hasattr(limiter, name)
        ]
        if missing:
            raise TypeError(
                f"limiter must be an evalexec.limits.Limiter (a LocalLimiter or RedisLimiter), "
                f"got {type(limiter).__name__}, which has no {', '.join(missing)}"
            )
    for name, value in (("cost", cost), ("usage", usage)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be a function of one input, got {type(value).__name__}")
    if (cost is not None or usage is not None) and limiter is None:
        raise ValueError(
            "cost= and usage= feed a token budget: pass limiter=LocalLimiter(tpm=...) "
            "(or a RedisLimiter) with them"
        )
    return limiter, cost, usage
