"""Ray Data: run a generation function over a dataset on a cluster, with limits that hold
across every actor (``pip install 'evalexec[ray]'``).

`EvalBatches` is a callable class for ``Dataset.map_batches`` with an actor pool::

    ds = ds.map_batches(
        EvalBatches,
        fn_constructor_kwargs={"fn": judge, "concurrency": 20, "limiter": limiter},
        compute=ray.data.ActorPoolStrategy(size=8),
        batch_size=None,  # each block is one run of the actor's executor
        batch_format="pyarrow",
        num_cpus=0.25,
    )

Each actor holds one `AsyncExecutor` and one limiter. Its ``__call__`` is an async
generator, so Ray runs it on the actor's own event loop, several batches at once, and
those batches share that executor's ``concurrency`` and that limiter. A `RedisLimiter`
travels to the actors as a spec (it pickles without its connection) and each actor
opens its own connection, so every actor, job and process naming the same key shares
one set of budgets.

A row never fails the batch: a row whose retries ran out comes back FAILED, as data,
with the columns ``output``, ``status``, ``error``, ``attempts`` and ``seconds``. The
batch raises only to end the job on purpose: `QuotaExhausted` when the provider says the
quota is exhausted (or a stop is set on the shared limiter), and `BatchIncomplete` when
a misuse stopped the batch (an error every row would hit alike).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from evalexec._details import ExecutionDetails, ExecutionStatus
from evalexec._threads import ThreadCalls
from evalexec.executors import AsyncExecutor
from evalexec.limits import Limiter, LocalLimiter

__all__ = ["COLUMNS", "BatchIncomplete", "EvalBatches", "QuotaExhausted"]


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"evalexec.ray needs Ray Data ({module} is missing): pip install 'evalexec[ray]'"
        ) from exc


_pa = _require("pyarrow")
_block_accessor = _require("ray.data.block").BlockAccessor

COLUMNS = ("output", "status", "error", "attempts", "seconds")
"""The columns `EvalBatches` adds to each batch, in this order."""

# Arguments of AsyncExecutor that make no sense for one batch of a Ray job.
_REFUSED = {
    "exit_on_error": "a FAILED row is data: EvalBatches records it and goes on",
    "termination_signal": "an actor has no terminal: Ray stops the job",
    "tqdm_bar_format": "an actor has no terminal to draw a bar on",
    "checkpoint": "on Ray, resume is Ray Data's own checkpoint (DataContext.checkpoint_config)",
    "deadline": (
        "rows a deadline leaves DID NOT RUN would be written (and checkpointed) as done; "
        "pass timeout= for each attempt, and stop the job from the driver"
    ),
}


class QuotaExhausted(RuntimeError):
    """The provider said the quota is exhausted, or the shared limiter is stopped: the
    job ends on purpose, and this batch is not written (a rerun calls it again)."""

    def __init__(self, reason: str, not_run: int = 0) -> None:
        super().__init__(
            f"evalexec.ray: the quota is exhausted ({reason}); the job stops on purpose, "
            f"and this batch ({not_run} rows not run) is not written. Raise the quota "
            "(with a RedisLimiter, also `await limiter.clear_stop()`), then run the job "
            "again: with Ray Data's checkpoint on, only the blocks not yet written run"
        )
        self.reason = reason
        self.not_run = not_run

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (type(self), (self.reason, self.not_run))


class BatchIncomplete(RuntimeError):
    """The batch stopped before every row was final, for a cause that every row would
    hit alike (a misuse such as an async client bound to another event loop)."""

    def __init__(self, cause: str, not_run: int = 0) -> None:
        super().__init__(f"evalexec.ray: the batch stopped with {not_run} rows not run: {cause}")
        self.cause = cause
        self.not_run = not_run

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (type(self), (self.cause, self.not_run))


class _OnThreads:
    """A plain function made awaitable: each call runs on a worker thread (the threaded
    `SyncExecutor`'s `ThreadCalls`), so the engine can abandon one that overruns its
    timeout."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__name__)
        self._calls: dict[asyncio.AbstractEventLoop, ThreadCalls] = {}
        self._lock = threading.Lock()

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._calls.get(loop)
            if calls is None:
                calls = self._calls[loop] = ThreadCalls(self._checked, loop)
        return await calls(item)

    def _checked(self, item: Any) -> Any:
        result = self.fn(item)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError(
                f"{self.__qualname__} returned an awaitable, but it is not an `async def` "
                "function (nor a callable whose __call__ is one), so EvalBatches ran it "
                "on a thread; define it with `async def`"
            )
        return result


def _is_async(fn: Callable[[Any], Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's own __call__
    )


class EvalBatches:
    """A callable class for ``Dataset.map_batches(EvalBatches, compute=ActorPoolStrategy(...),
    fn_constructor_kwargs={...})``: each actor runs its batches' rows through one executor.

    Args:
        fn: called once per row: an ``async def`` function (run on the actor's event
            loop), or a plain function (run on worker threads). It receives the row's
            ``input_column`` value, or the whole row as a dict when ``input_column`` is
            None.
        concurrency: calls in flight at once in this actor, across all the batches Ray
            runs on it at the same time.
        limiter: budgets beyond this actor. A `RedisLimiter` is shared by every actor
            (and every other process naming its key). A `LocalLimiter` is copied into
            each actor, so each actor gets the whole budget. None: no budget, but a quota
            stop still ends the job.
        input_column: the column whose value is passed to ``fn``; None for the whole row.
        output_type: the Arrow type of the ``output`` column (e.g. ``pyarrow.string()``).
            None: Arrow infers it from each batch, so a batch whose rows all FAILED
            gets a null column while the others get the real type; pass a type when
            the blocks are written to files that are read back together.
        output_json: store each output as its JSON text (a string column) instead of
            letting Arrow infer a type: for outputs whose shape varies from row to row.
        executor_kwargs: passed to `AsyncExecutor` (``max_retries``, ``timeout``,
            ``backoff``, ``fallback_return_value``, ``cost``, ``usage``,
            ``enable_dynamic_concurrency``, ``dynamic_*``).

    The batch comes back with the columns of `COLUMNS` added: ``output`` (the function's
    result; for a FAILED row ``fallback_return_value``, None by default), ``status`` (an
    `ExecutionStatus` value), ``error`` (``"Type: message"`` of a FAILED row's last
    error, else None), ``attempts`` (calls made) and ``seconds`` (time in those calls).
    A batch in the ``pyarrow``, ``pandas`` or ``numpy`` format comes back as a pyarrow
    Table, so the added columns have the same Arrow types in every block.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        concurrency: int = 8,
        limiter: Limiter | None = None,
        input_column: str | None = "input",
        output_type: Any = None,
        output_json: bool = False,
        **executor_kwargs: Any,
    ) -> None:
        for name, why in _REFUSED.items():
            if name in executor_kwargs:
                raise TypeError(f"EvalBatches does not take {name}=: {why}")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if input_column is not None and not isinstance(input_column, str):
            raise TypeError(
                f"input_column must be a column name or None, got {type(input_column).__name__}"
            )
        self.fn = fn
        self.input_column = input_column
        if output_type is not None and not isinstance(output_type, _pa.DataType):
            raise TypeError(
                f"output_type must be a pyarrow DataType (e.g. pyarrow.string()), got "
                f"{type(output_type).__name__}"
            )
        if output_type is not None and output_json:
            raise ValueError("pass output_type or output_json, not both (JSON text is a string)")
        self.output_type = output_type
        self.output_json = bool(output_json)
        self.fallback = executor_kwargs.pop("fallback_return_value", None)
        # Always a limiter: its stop is how a batch learns that the run ended for the
        # quota, and a stop seen once holds for every later batch of this actor.
        self.limiter: Limiter = LocalLimiter() if limiter is None else limiter
        call = fn if _is_async(fn) else _OnThreads(fn)
        self.executor = AsyncExecutor(
            call,
            concurrency=concurrency,
            tqdm_bar_format=None,
            exit_on_error=False,
            fallback_return_value=self.fallback,
            termination_signal=None,
            limiter=self.limiter,
            **executor_kwargs,
        )

    async def __call__(self, batch: Any) -> AsyncIterator[Any]:
        """What Ray Data calls: yields `evaluate`'s table, once.

        An async generator rather than a coroutine: Ray Data runs a callable class whose
        ``__call__`` is an async generator on the actor's own event loop, several
        batches at a time, in every Ray from 2.40 (a plain ``async def`` only in later
        ones).
        """
        yield await self.evaluate(batch)

    async def evaluate(self, batch: Any) -> Any:
        """The batch (pyarrow, pandas or numpy format) as a pyarrow Table with the
        columns of `COLUMNS` added; raises only for a quota stop or a misuse."""
        table = _arrow_table(batch)
        names = list(table.column_names)
        clash = [name for name in COLUMNS if name in names]
        if clash:
            raise ValueError(
                f"EvalBatches adds the columns {', '.join(COLUMNS)}, but the batch already "
                f"has {', '.join(clash)}; rename them first (Dataset.rename_columns)"
            )
        if table.num_rows == 0:  # an empty block (a filter upstream may give one with no columns)
            inputs = []
        elif self.input_column is None:
            inputs = table.to_pylist()
        elif self.input_column in names:
            inputs = table.column(self.input_column).to_pylist()
        else:
            raise ValueError(
                f"EvalBatches: the batch has no column {self.input_column!r} (it has "
                f"{', '.join(names) or 'none'}); pass input_column= the name of the "
                "column to send to fn, or None to send each whole row"
            )
        outputs, details = await self.executor.execute(inputs)
        self._raise_if_stopped(details)
        for name, column in self._columns(outputs, details).items():
            table = table.append_column(name, column)
        return table

    def _raise_if_stopped(self, details: list[ExecutionDetails]) -> None:
        not_run = sum(d.status is ExecutionStatus.DID_NOT_RUN for d in details)
        reason = self.limiter.stop_reason
        if reason is not None:
            raise QuotaExhausted(reason, not_run)
        if not_run:
            failed = [d for d in details if d.status is ExecutionStatus.FAILED]
            cause = _error_text(failed[-1]) if failed else None
            raise BatchIncomplete(cause or "the run stopped early", not_run)

    def _columns(self, outputs: list[Any], details: list[ExecutionDetails]) -> dict[str, Any]:
        if self.output_json:
            texts = [None if out is None else json.dumps(out) for out in outputs]
            output = _pa.array(texts, type=_pa.string())
        else:
            output = _arrow_outputs(outputs, self.output_type)
        return {
            "output": output,
            "status": _pa.array([d.status.value for d in details], type=_pa.string()),
            "error": _pa.array(
                [_error_text(d) if d.status is ExecutionStatus.FAILED else None for d in details],
                type=_pa.string(),
            ),
            "attempts": _pa.array([_attempts(d) for d in details], type=_pa.int64()),
            "seconds": _pa.array([d.execution_seconds for d in details], type=_pa.float64()),
        }


def _arrow_outputs(outputs: list[Any], output_type: Any) -> Any:
    try:
        return _pa.array(outputs, type=output_type)
    except (_pa.ArrowException, TypeError, ValueError) as exc:
        kinds = sorted({type(out).__name__ for out in outputs})
        wanted = "" if output_type is None else f" as {output_type}"
        raise TypeError(
            f"EvalBatches: the outputs of fn cannot form an Arrow column{wanted} ({exc}; "
            f"output types: {', '.join(kinds)}); return str, numbers, bools, or dicts and "
            "lists of them, the same shape on every row, or pass output_json=True"
        ) from exc


def _error_text(details: ExecutionDetails) -> str | None:
    errors = details.exceptions
    if not errors:
        return None
    last = errors[-1]
    return f"{type(last).__name__}: {last}"


def _attempts(details: ExecutionDetails) -> int:
    """Calls of the function: one per logged error or timeout, plus the one that worked."""
    status = details.status
    if status is ExecutionStatus.DID_NOT_RUN:
        return 0
    errors = len(details.exceptions)
    return errors if status is ExecutionStatus.FAILED else errors + 1


def _arrow_table(batch: Any) -> Any:
    """A batch in any of Ray's formats as a pyarrow Table."""
    if isinstance(batch, _pa.Table):
        return batch
    if isinstance(batch, Mapping) or type(batch).__name__ == "DataFrame":
        # Ray's own conversion (tensor columns included); it may give a pandas block.
        table = _block_accessor.batch_to_block(batch)
        if not isinstance(table, _pa.Table):
            table = _pa.Table.from_pandas(table, preserve_index=False)
        return table
    raise TypeError(
        "EvalBatches takes batches in the pyarrow, pandas or numpy format, got "
        f"{type(batch).__name__}; pass batch_format='pyarrow' to map_batches"
    )
