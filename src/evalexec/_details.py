"""The per-input records of a run: `ExecutionStatus`, `ExecutionDetails` and `Unset`.

A leaf module (it imports nothing of evalexec), so the engine, the checkpoint and the
progress bar can all name the statuses without importing each other. Users import
these names from `evalexec.executors`, which is also what their reprs, pickles and
docs show: each class's ``__module__`` is set to that public home.
"""

from __future__ import annotations

import time
from enum import Enum

__all__ = ["STORED_STATUSES", "ExecutionDetails", "ExecutionStatus", "Unset", "_unset"]

_PUBLIC_MODULE = "evalexec.executors"


class Unset:
    """Type of `_unset`, the default fallback output of inputs that did not complete.

    There is one `_unset`: a copy or an unpickled `_unset` is the same object, so
    ``output is _unset`` holds after a checkpoint round trip or a process pool.
    """

    __slots__ = ()
    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> str:
        return "_unset"  # pickled by reference to `evalexec.executors._unset`

    def __copy__(self) -> Unset:
        return self

    def __deepcopy__(self, memo: object) -> Unset:
        return self

    def __repr__(self) -> str:
        return "<unset>"


_unset = Unset()


class ExecutionStatus(Enum):
    DID_NOT_RUN = "DID NOT RUN"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_RETRIES = "COMPLETED WITH RETRIES"
    FAILED = "FAILED"


# The statuses a checkpoint keeps: an input that FAILED or did not run is tried again.
STORED_STATUSES = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED_WITH_RETRIES})


class ExecutionDetails:
    """What happened to one input: its status, the exceptions of failed attempts, and
    the seconds spent in attempts (cumulative)."""

    __slots__ = ("_exceptions", "execution_seconds", "status")

    def __init__(self) -> None:
        self._exceptions: list[BaseException] | None = None
        self.status = ExecutionStatus.DID_NOT_RUN
        self.execution_seconds: float = 0.0

    @property
    def exceptions(self) -> list[BaseException]:
        """The exceptions of failed attempts (timeouts as `TimeoutError`), in order."""
        if self._exceptions is None:
            self._exceptions = []
        return self._exceptions

    @exceptions.setter
    def exceptions(self, value: list[BaseException]) -> None:
        self._exceptions = value

    def fail(self) -> None:
        self.status = ExecutionStatus.FAILED

    def complete(self) -> None:
        self.status = (
            ExecutionStatus.COMPLETED_WITH_RETRIES
            if self._exceptions
            else ExecutionStatus.COMPLETED
        )

    def log_exception(self, exc: BaseException) -> None:
        self.exceptions.append(exc)

    def log_runtime(self, start_time: float) -> None:
        """Add the seconds since `start_time`, a ``time.time()`` reading (as in Phoenix).

        evalexec's engine measures attempts on its monotonic clock itself; this method
        keeps Phoenix's meaning for code written against Phoenix's contract.
        """
        self.execution_seconds += time.time() - start_time

    def __repr__(self) -> str:
        return (
            f"ExecutionDetails(status={self.status.value!r}, "
            f"exceptions={self._exceptions or []!r}, "
            f"execution_seconds={self.execution_seconds!r})"
        )


for _cls in (Unset, ExecutionStatus, ExecutionDetails):
    _cls.__module__ = _PUBLIC_MODULE
del _cls
