"""evalexec: a faster, safer drop-in replacement for ``phoenix.evals.executors``.

Swap ``from phoenix.evals.executors import AsyncExecutor`` for
``from evalexec.executors import AsyncExecutor`` and keep everything else.
"""

from evalexec._checkpoint import Checkpoint, CheckpointError, RecordedError
from evalexec._engine import IncompleteRunError, RunSnapshot
from evalexec._retry import Backoff
from evalexec.exceptions import (
    ErrorKind,
    ErrorReport,
    NestedRunError,
    PhoenixException,
    RateLimitError,
    classify_error,
    describe_error,
    retry_hint_seconds,
)
from evalexec.executors import (
    AsyncExecutor,
    ConcurrencyController,
    ExecutionDetails,
    ExecutionStatus,
    Executor,
    SyncExecutor,
    Unset,
    _unset,
    get_executor_on_sync_context,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncExecutor",
    "Backoff",
    "Checkpoint",
    "CheckpointError",
    "ConcurrencyController",
    "ErrorKind",
    "ErrorReport",
    "ExecutionDetails",
    "ExecutionStatus",
    "Executor",
    "IncompleteRunError",
    "NestedRunError",
    "PhoenixException",
    "RateLimitError",
    "RecordedError",
    "RunSnapshot",
    "SyncExecutor",
    "Unset",
    "__version__",
    "_unset",
    "classify_error",
    "describe_error",
    "get_executor_on_sync_context",
    "retry_hint_seconds",
]
