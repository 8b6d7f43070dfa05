"""The sequential `SyncExecutor` run: one call at a time, in the calling thread.

Phoenix's contract for a plain function. The first attempt of an input is inlined
(a run of cheap calls spends its time in the function, not in bookkeeping); retries,
their waits and the stop follow the same policy (`_retry.decide`) and say the same
things (`_messages`) as the engine. A Ctrl-C raises `Interrupted` into the call in
progress.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from contextlib import AbstractContextManager, ExitStack
from typing import Any, NoReturn

from evalexec import _messages as say
from evalexec._checkpoint import CheckpointError, CheckpointStore
from evalexec._details import ExecutionDetails, ExecutionStatus
from evalexec._engine import IncompleteRunError, RunConfig, RunSnapshot
from evalexec._messages import StopReason
from evalexec._progress import Progress
from evalexec._retry import decide
from evalexec._signals import termination_handler
from evalexec._telemetry import NO_TELEMETRY, RunTelemetry, start_run

__all__ = ["Interrupted", "Sequential", "refuse_awaitable"]


class Interrupted(BaseException):
    """Raised inside an in-flight call by the first termination signal of a sync run."""


class Sequential:
    """One sequential run of a `SyncExecutor`: calls one by one in the calling thread.

    Its state is its own, so one executor can run in several threads at once.
    """

    def __init__(
        self, config: RunConfig, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.stop: StopReason | None = None
        self.in_call = False  # a call (or a backoff sleep) is on the stack right now
        self.resumed = threading.Event()  # cleared by `pause` from code, set by `resume`
        self.resumed.set()
        self.holding = False  # paused from code (read once per input: cheaper than the event)
        self.details: list[ExecutionDetails] | None = None
        # What `snapshot` reads (from any thread): plain counters, written by this run.
        self.total: int | None = None
        self.started = clock()
        self.finished = 0
        self.final_counts: Counter[ExecutionStatus] = Counter()
        self.retries = 0
        self.telemetry: RunTelemetry = NO_TELEMETRY
        self.traced = False

    # -- control from code (any thread) -------------------------------------------------
    def pause(self) -> None:
        self.resumed.clear()
        self.holding = True

    def resume(self) -> None:
        self.holding = False
        self.resumed.set()

    def cancel(self) -> None:
        """As a first Ctrl-C: nothing new starts (the call in progress runs to its end)."""
        if self.stop is None:
            say.cancelled(self.write)
            self.stop = "interrupted"
        self.holding = False
        self.resumed.set()

    def set_concurrency(self, ceiling: int) -> None:
        raise ValueError(
            "a sequential SyncExecutor makes one call at a time; create it with "
            "concurrency=N to run N calls at once on threads"
        )

    def snapshot(self) -> RunSnapshot:
        elapsed = self.clock() - self.started
        total = self.total
        final_counts = self.final_counts
        if self.details is not None:  # a run() fills in details: count them now
            final_counts = Counter(d.status for d in list(self.details))
            final_counts.pop(ExecutionStatus.DID_NOT_RUN, None)
        finished = sum(final_counts.values())
        counts = {status.value: final_counts[status] for status in ExecutionStatus}
        if total is not None:
            counts[ExecutionStatus.DID_NOT_RUN.value] = total - finished
        eta = None
        if total is not None and finished and self.stop is None:
            eta = elapsed / finished * (total - finished)
        return RunSnapshot(
            target=1,
            inflight=int(self.in_call),
            total=total,
            counts=counts,
            retries=self.retries,
            rate_limits=0,
            cooldown_seconds=0.0,
            paused=not self.resumed.is_set(),
            elapsed_seconds=elapsed,
            eta_seconds=eta,
            stop=self.stop,
        )

    def wait_resumed(self) -> None:
        """Wait while paused from code; a Ctrl-C (or `cancel`) ends the wait."""
        self.in_call = True
        try:
            self.resumed.wait()
        finally:
            self.in_call = False

    def handler(self) -> AbstractContextManager[bool]:
        return termination_handler(self.config.termination_signal, self.on_signal, Interrupted)

    def on_signal(self, announce: bool) -> bool:
        if self.stop is None and announce:
            say.interrupted(self.write)
        self.stop = "interrupted"
        return self.in_call  # raise Interrupted into the call on the stack

    def write(self, message: str) -> None:
        print(message, file=sys.stderr)

    def steps(
        self,
        inputs: Iterable[Any],
        total: int | None,
        details: list[ExecutionDetails] | None,
        outputs: list[Any] | None,
        *,
        stream: bool,
    ) -> Generator[tuple[int, Any, ExecutionDetails], None, None]:
        """Run the inputs one by one; when `stream`, yield each as it becomes final.

        The first attempt of an input is inlined: a run of cheap calls spends its time
        in the function, not in bookkeeping. Retries go through `retry`.
        """
        config = self.config
        clock = self.clock
        generate = config.function
        started = self.started = clock()
        self.total = total
        stop_at = math.inf if config.deadline is None else started + config.deadline
        final_counts = self.final_counts
        self.details = details
        counting = details is None
        telemetry = self.telemetry = start_run(
            executor="sync",
            function=config.function,
            total=total,
            concurrency=1,
            max_retries=config.max_retries,
            timeout=math.inf,
        )
        traced = self.traced = telemetry is not NO_TELEMETRY
        drawn = 0
        completed = ExecutionStatus.COMPLETED
        unchecked = True  # the first output tells whether the function is async by mistake
        checkpoint: CheckpointStore | None = None
        progress = Progress(total, config.bar_format, lambda: f"retries={self.retries}", clock)
        self.write = progress.write  # type: ignore[method-assign]
        handler = ExitStack()  # ours while this generator runs, not while it is suspended
        try:
            with handler:
                handler.enter_context(self.handler())
                try:
                    if config.checkpoint is not None:
                        checkpoint = config.checkpoint.open(config.function)
                    try:
                        iterator = iter(inputs)
                    except Exception as exc:
                        stopped_by(exc, outputs, details)
                    index = -1
                    while True:
                        try:
                            item = next(iterator)
                        except StopIteration:
                            if total is not None and drawn < total and self.stop is None:
                                say.inputs_fewer_than_len(drawn, total)
                            break
                        except Exception as exc:
                            stopped_by(exc, outputs, details)
                        index += 1
                        if total is not None and index >= total:
                            say.inputs_more_than_len(total)
                            break
                        if self.holding:
                            try:
                                self.wait_resumed()
                            except Interrupted:
                                break
                        if self.stop is not None:
                            break
                        drawn += 1
                        # The fingerprint is taken before the function can change the input.
                        key, stored = "", None
                        if checkpoint is not None:
                            try:
                                key = checkpoint.fingerprint(item)
                                stored = checkpoint.restore(index, key)
                            except CheckpointError as exc:
                                stopped_by(exc, outputs, details)
                        if stored is not None:
                            output, record = stored.output, stored.details()
                            if details is not None:
                                details[index] = record
                        else:
                            record = ExecutionDetails() if details is None else details[index]
                            if stop_at != math.inf and clock() >= stop_at:
                                self.stop = "deadline"
                                break
                            try:
                                output, error = self.call(item, record, index, 1)
                            except Interrupted:
                                break
                            if self.stop is not None:
                                break  # stopped during the call: its result is not trusted
                            if unchecked and error is None:
                                unchecked = False
                                refuse_awaitable(generate, output)
                            if error is None:
                                record.status = completed
                                if traced:
                                    telemetry.attempt_ended(index, "ok")
                            else:
                                finished, output, tries = self.retry(
                                    index, item, record, stop_at, error
                                )
                                self.retries += tries
                                if not finished:
                                    break
                            if checkpoint is not None:
                                try:
                                    checkpoint.record(index, key, output, record)
                                except CheckpointError as exc:
                                    stopped_by(exc, outputs, details)
                        if outputs is not None:
                            outputs[index] = output
                        if counting:  # a stream: `snapshot` cannot count `details`
                            self.finished += 1
                            final_counts[record.status] += 1
                        progress.advance(record.status)
                        if traced:
                            telemetry.final(record.status)
                        if stream:
                            handler.close()  # a stream left open never keeps our handler
                            yield index, output, record
                            handler.enter_context(self.handler())
                        if record.status is ExecutionStatus.FAILED and (
                            config.exit_on_error or self.stop is not None
                        ):
                            break
                finally:
                    try:
                        if checkpoint is not None:
                            checkpoint.close()
                    finally:
                        inputs_seen = drawn if total is None else total
                        progress.close(inputs_seen, self.retries, clock() - started)
                        telemetry.run_ended(self.stop or "completed", inputs_seen, None)
        finally:
            self.in_call = False
            if self.stop == "deadline":
                say.deadline_passed(config.deadline)

    def retry(
        self, index: int, item: Any, details: ExecutionDetails, stop_at: float, error: Exception
    ) -> tuple[bool, Any, int]:
        """Handle a failed attempt and retry until the input is final.

        Returns ``(finished, output, retries)``; not finished when the run was stopped.
        """
        config = self.config
        errors = 0
        while True:
            details.log_exception(error)
            verdict = decide(error, errors, config.max_retries, config.backoff)
            if self.telemetry is not NO_TELEMETRY:
                self.telemetry.attempt_errored(index, error, verdict)
                if verdict.cooldown:
                    self.telemetry.cooldown(verdict.cooldown)
            if not verdict.retry:
                details.fail()
                cause = say.describe(error)
                say.failed(index, errors + 1, cause)
                if verdict.stop_run:
                    self.stop = "quota"
                    say.stopped_early(self.write, verdict.reason, cause)
                return True, config.fallback, errors
            errors += 1
            wait = max(verdict.delay, verdict.cooldown or 0.0)
            say.retrying(index, errors, say.describe(error), wait)
            if wait > 0 and not self.wait_to_retry(min(wait, stop_at - self.clock())):
                return False, None, errors
            if self.clock() >= stop_at:
                self.stop = "deadline"
            if self.stop is not None:
                return False, None, errors
            try:
                output, failure = self.call(item, details, index, errors + 1)
            except Interrupted:
                return False, None, errors
            if self.stop is not None:
                return False, None, errors  # stopped during the call: not trusted
            if failure is not None:
                error = failure
                continue
            details.complete()
            if self.telemetry is not NO_TELEMETRY:
                self.telemetry.attempt_ended(index, "ok")
            return True, output, errors

    def call(
        self, item: Any, details: ExecutionDetails, index: int, attempt: int
    ) -> tuple[Any, Exception | None]:
        """One attempt: ``(output, None)`` or ``(None, error)``; its seconds are added to
        `details`. The first termination signal raises `Interrupted` out of it."""
        clock = self.clock
        telemetry = self.telemetry
        entered = telemetry.attempt_started(index, attempt) if self.traced else None
        start = clock()
        self.in_call = True
        try:
            return self.config.function(item), None
        except Exception as exc:
            return None, exc
        finally:
            self.in_call = False
            details.execution_seconds += clock() - start
            if entered is not None:
                telemetry.attempt_left(entered)

    def wait_to_retry(self, seconds: float) -> bool:
        """Sleep between attempts; False if the run was asked to stop, before or during it."""
        if self.stop is not None:
            return False
        if seconds <= 0:
            return True
        try:
            self.in_call = True
            try:
                self.sleep(min(seconds, threading.TIMEOUT_MAX))
            finally:
                self.in_call = False
        except Interrupted:
            return False
        return True


def stopped_by(
    error: Exception, outputs: list[Any] | None, details: list[ExecutionDetails] | None
) -> NoReturn:
    """The inputs or the checkpoint raised: out of `run` with what finished; a stream
    has yielded what finished, and raises the error itself."""
    if outputs is not None and details is not None:
        raise IncompleteRunError(error, outputs, details) from error
    raise error


def refuse_awaitable(fn: Callable[..., Any], result: object) -> None:
    """SyncExecutor's mirror of the async check: an `async def` function returns coroutines."""
    if not inspect.isawaitable(result):
        return
    close = getattr(result, "close", None)
    if callable(close):
        close()  # no "coroutine was never awaited" warning later
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    raise TypeError(
        f"SyncExecutor needs a plain function, but {name} returned {type(result).__name__}; "
        "use AsyncExecutor for an `async def` function"
    )
