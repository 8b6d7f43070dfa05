"""The engine both executors run on: one scheduler, one place that settles an attempt.

A run is a producer that draws inputs lazily into a priority queue, ``concurrency``
workers that take them through the dispatch `Gate`, and one coroutine (`Run.drive`)
that owns every task's life. `AsyncExecutor` hands it the user's coroutine function;
the threaded `SyncExecutor` hands it a function that runs the user's plain function on
a worker thread. Everything else is the same code: retries and their budgets, backoff
off the worker, a provider's hint pausing every new call, the adaptive controller,
per-attempt timeouts, the checkpoint, the deadline, the status line and Ctrl-C.

Policy lives elsewhere and is pure: `_retry.decide` (whether and when an error is
retried), `_controller` (the adaptive target), `_gate` (who may start now).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from evalexec import _messages as say
from evalexec._checkpoint import Checkpoint, CheckpointError, CheckpointStore
from evalexec._controller import ConcurrencyController
from evalexec._details import ExecutionDetails, ExecutionStatus
from evalexec._gate import Gate
from evalexec._headers import parse_rate_limit_headers
from evalexec._learned import LearnedBudget, RequestCount, current_run, heard, response_headers
from evalexec._learned import retry_hint_from_headers as _hint_from_headers
from evalexec._messages import StopReason
from evalexec._progress import Progress
from evalexec._retry import DEFAULT_MAX_HINT, Backoff, decide
from evalexec._signals import termination_handler
from evalexec._telemetry import NO_TELEMETRY, RunTelemetry, start_run
from evalexec._watchdog import SAMPLE_PERIOD, SAMPLE_SIZE, Watchdog
from evalexec.exceptions import ErrorKind
from evalexec.limits import (
    CostExceedsBudget,
    Limiter,
    LimiterStopped,
    LimiterUnavailable,
    Permit,
    _Budgets,
)

logger = logging.getLogger("evalexec")

__all__ = [
    "GatePerLoop",
    "IncompleteRunError",
    "OnFinal",
    "Run",
    "RunConfig",
    "RunSnapshot",
    "drive",
    "raise_for",
]

OnFinal = Callable[[int, Any, ExecutionDetails], None]

# Inputs drawn and not yet final, per worker: enough to keep every worker busy while
# the producer sleeps, small enough that a million-input stream holds little.
WINDOW_PER_WORKER = 4
# The producer gives the loop a turn after this many inputs in a row that needed no
# wait (restored from a checkpoint, say), so a Ctrl-C or a timer is never held up.
DRAW_BATCH = 256


class IncompleteRunError(Exception):
    """The run stopped early because the inputs or the checkpoint raised an error.

    Nothing that finished is lost: ``outputs`` and ``details`` are the run's two lists
    (the inputs that did not finish are DID NOT RUN), and the original error is this
    one's ``__cause__``.
    """

    __module__ = "evalexec"

    def __init__(self, cause: BaseException, outputs: list[Any], details: list[Any]) -> None:
        finished = sum(d.status is not ExecutionStatus.DID_NOT_RUN for d in details)
        super().__init__(
            f"the run stopped early: {say.describe(cause)}; the {finished} outputs that "
            "finished are on this error's .outputs and .details (the rest are DID NOT RUN)"
        )
        self.outputs = outputs
        self.details = details


class GatePerLoop:
    """One `Gate` per event loop for one executor: its runs on that loop share it, so
    ``concurrency`` bounds the executor's calls in flight, not each run's (and a
    provider's pause, or a cut of the target, holds all of them)."""

    def __init__(self) -> None:
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Gate] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, concurrency: int) -> Gate:
        loop = asyncio.get_running_loop()
        with self._lock:
            gate = self._gates.get(loop)
            if gate is None:
                gate = self._gates[loop] = Gate(concurrency)
            return gate


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What a run is made with: the executor's settings, frozen for the run."""

    call: Callable[[Any], Any]  # one attempt: called with an input, returns an awaitable
    function: Callable[..., Any]  # the user's function (for messages and the checkpoint)
    concurrency: int
    max_retries: int
    exit_on_error: bool
    fallback: Any
    timeout: float  # seconds per attempt; math.inf for none
    backoff: Backoff | None
    deadline: float | None
    termination_signal: signal.Signals | None
    bar_format: str | None
    checkpoint: Checkpoint | None
    controller: Any  # ConcurrencyController, or any object with its four members
    gates: GatePerLoop  # the executor's gate, shared by its runs on one loop
    check_output: Callable[[Any], None] | None = None  # raises if an output is a misuse
    limiter: Limiter | None = None  # budgets (requests, tokens, in flight) beyond this run
    cost: Callable[[Any], int] | None = None  # an input's estimated tokens, for the limiter
    usage: Callable[[Any], int | None] | None = None  # an output's tokens used, if known
    kind: Literal["async", "threads"] = "async"  # how attempts run (for telemetry)


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run as it is at one moment: what `executor.snapshot()` returns."""

    __module__ = "evalexec"

    target: int  # the most calls allowed in flight now (controller, ceiling)
    inflight: int  # calls in flight
    total: int | None  # inputs of the run (None for a stream of unknown length)
    counts: dict[str, int]  # inputs per status value; "DID NOT RUN" = not final yet
    retries: int
    rate_limits: int  # attempts the provider refused for its rate limit
    cooldown_seconds: float  # left of a provider's pause (0 when none)
    paused: bool  # paused from code (`executor.pause()`)
    elapsed_seconds: float
    eta_seconds: float | None  # at the pace so far; None before the first input is final
    stop: StopReason | None  # why the run is stopping, or None while it goes on
    budget: str = ""  # the budgets in use ("rpm<=500 tpm<=30000"), "" when none is known
    budget_learned: bool = False  # True when `budget` was learned from the provider


class _Work:
    """One input in play: its index, its value, and its attempt counts so far."""

    __slots__ = ("details", "errors", "index", "input", "key", "timeouts")

    def __init__(self, index: int, input: Any, details: ExecutionDetails, key: str) -> None:
        self.index = index
        self.input = input
        self.details = details
        self.key = key  # the input's checkpoint fingerprint, taken when it was drawn ("" without)
        self.errors = 0  # attempts that raised (each lowers the queue priority by one)
        self.timeouts = 0  # attempts that timed out (they keep the priority)

    @property
    def attempts(self) -> int:
        return self.errors + self.timeouts + 1


_Entry = tuple[int, int, _Work]  # (priority, index, work): retries sort before fresh inputs


class _Steering:
    """The controller's feedback, and the gate's limit that follows it.

    Our own `ConcurrencyController` changes its target only when told of an event, so
    the limit is moved right after each event. Any other controller (Phoenix's, or a
    user's) may change from outside, so its target is also re-read every
    ``inactive_check_interval`` seconds while the run lasts.
    """

    __slots__ = ("_controller", "_gate", "_observe", "_own", "_poll", "_telemetry", "ceiling")

    def __init__(
        self,
        controller: Any,
        gate: Gate,
        loop: asyncio.AbstractEventLoop,
        telemetry: RunTelemetry = NO_TELEMETRY,
    ) -> None:
        self._controller = controller
        self._gate = gate
        self._telemetry = telemetry
        self.ceiling = gate.limit  # the most calls in flight the run allows (set_concurrency)
        self._own = isinstance(controller, ConcurrencyController)
        self._observe: Callable[[int], None] | None = getattr(controller, "observe_inflight", None)
        self._poll: asyncio.TimerHandle | None = None
        if controller is not None:
            self.follow()
            if not self._own:
                interval = float(getattr(controller, "inactive_check_interval", 1.0))
                self._poll = loop.call_later(interval, self._look_again, loop, interval)

    def follow(self) -> None:
        level: float = self.ceiling
        if self._own:  # a fractional limit where the controller asks for one
            level = min(level, self._controller.dispatch_limit)
        elif self._controller is not None:
            level = min(level, int(self._controller.target_concurrency))
        gate = self._gate
        old = gate.limit
        gate.level = level
        if gate.limit != old:
            self._telemetry.target_changed(old, gate.limit)

    def set_ceiling(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.follow()

    def _look_again(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.follow()
        self._poll = loop.call_later(interval, self._look_again, loop, interval)

    def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()

    def started(self, inflight: int) -> None:
        if self._observe is not None:
            self._observe(inflight)

    def succeeded(self, latency: float) -> None:
        if self._controller is not None:
            self._controller.record_success(latency)
            self.follow()

    def timed_out(self) -> None:
        if self._controller is not None:
            self._controller.record_timeout()
            self.follow()

    def refused(self, started_at: float, inflight: int) -> None:
        """A rate-limit error for an attempt started at `started_at`."""
        if self._controller is None:
            return
        if self._observe is not None:
            self._observe(inflight)  # what was in flight when it was refused
        if self._own:
            self._controller.record_error(started_at=started_at)
        else:
            self._controller.record_error()
        self.follow()


class Run:
    """The state of one run. `drive` owns its life; nothing outside changes it."""

    def __init__(
        self,
        config: RunConfig,
        total: int | None,
        details: list[ExecutionDetails] | None,
        on_final: OnFinal,
        room: asyncio.Semaphore | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.config = config
        self.total = total  # len(inputs), or None for a stream of unknown length
        self.details = details  # the caller's list to fill in, or None for a stream
        self.on_final = on_final  # told of each input once, when it is final
        self.store: CheckpointStore | None = None
        self.started_at = loop.time()
        self.queue: asyncio.PriorityQueue[_Entry] = asyncio.PriorityQueue()
        # At most `window` inputs are drawn and not yet final (or, for a stream that
        # passes its own `room`, not yet taken by its reader).
        window = WINDOW_PER_WORKER * config.concurrency
        self.room = asyncio.Semaphore(window) if room is None else room
        self.release_room = room is None
        self.gate = config.gates.get(config.concurrency)
        self.gate.users += 1
        self.telemetry = start_run(
            executor=config.kind,
            function=config.function,
            total=total,
            concurrency=config.concurrency,
            max_retries=config.max_retries,
            timeout=config.timeout,
        )
        self.traced = self.telemetry is not NO_TELEMETRY  # skip its calls on the hot path
        self.steering = _Steering(config.controller, self.gate, loop, self.telemetry)
        # The stop: `stop` is None while the run goes on, then why it ends (the first
        # reason wins); `stopped` is set at the same moment, for `drive` to wake on.
        self.stop: StopReason | None = None
        self.stopped = asyncio.Event()
        self.error: BaseException | None = None  # what `drive` raises once all is stopped
        self.error_is_partial = False  # the error came from the inputs or the checkpoint
        # Counts. Invariants: finished <= produced; inflight <= concurrency; the run is
        # complete when not producing and finished == produced.
        self.producing = True
        self.produced = 0  # inputs drawn (restored ones included)
        self.finished = 0  # inputs that reached a final status
        self.inflight = 0  # attempts started and not yet ended
        self.retries = 0
        self.rate_limits = 0
        self.final_counts: Counter[ExecutionStatus] = Counter()  # inputs final, per status
        self.delayed: dict[int, asyncio.TimerHandle] = {}  # retries waiting out a backoff
        self.attempting: set[asyncio.Task[None]] = set()  # workers inside an attempt
        self.progress = Progress(total, config.bar_format, self.status_text, loop.time)
        # Budgets: the caller's limiter, or (without one) one learned from the provider's
        # rate-limit headers once a response states them (evalexec._learned).
        self.limiter: Limiter | None = config.limiter
        self.learned = LearnedBudget() if config.limiter is None else None
        self.requests_sent = RequestCount()  # HTTP requests seen by evalexec.httpx's hooks
        self.watchdog = Watchdog(config.function, loop)  # a call that holds the loop

    # -- the life of an input -----------------------------------------------------------
    async def produce(self, inputs: Iterable[Any]) -> None:
        """Draw inputs lazily and queue them, keeping at most a window of them in play."""
        store = self.store
        try:
            iterator = iter(inputs)
            index = 0
            while True:
                if index % DRAW_BATCH == DRAW_BATCH - 1:
                    await asyncio.sleep(0)
                await self.room.acquire()
                if self.stop is not None:
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                if self.total is not None and index >= self.total:
                    say.inputs_more_than_len(self.total)
                    break
                # The fingerprint is taken now, before the function can change the input.
                key = "" if store is None else store.fingerprint(item)
                stored = None if store is None else store.restore(index, key)
                if stored is None:
                    details = ExecutionDetails() if self.details is None else self.details[index]
                    self.produced += 1
                    self.enqueue(_Work(index, item, details, key))
                else:
                    self.restored(index, stored.output, stored.details())
                index += 1
            if self.total is not None and index < self.total:
                say.inputs_fewer_than_len(index, self.total)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # from the user's iterable (or the checkpoint)
            self.crash(exc, from_inputs=True)
        except BaseException as exc:  # KeyboardInterrupt and the like, from the iterable
            self.crash(exc)
        finally:
            self.producing = False
            self.end_if_done()

    def enqueue(self, work: _Work) -> None:
        """Queue `work`: each logged error lowers its priority number by one, so retries
        run before fresh inputs; timeouts keep it."""
        self.queue.put_nowait((-work.errors, work.index, work))

    def requeue(self, work: _Work, delay: float) -> None:
        if delay > 0:
            self.delayed[work.index] = self.loop.call_later(delay, self._requeue_now, work)
        else:
            self.enqueue(work)

    def _requeue_now(self, work: _Work) -> None:
        del self.delayed[work.index]
        self.enqueue(work)

    def restored(self, index: int, output: Any, details: ExecutionDetails) -> None:
        """Input `index` finished in an earlier run: take its result from the checkpoint."""
        if self.details is not None:
            self.details[index] = details
        self.produced += 1
        self._final(index, output, details)

    def finish(self, work: _Work, output: Any) -> None:
        """`work` reached its final status (COMPLETED, COMPLETED_WITH_RETRIES or FAILED)."""
        if self.store is not None:
            try:
                self.store.record(work.index, work.key, output, work.details)
            except CheckpointError as exc:
                self.crash(exc, from_inputs=True)
        self._final(work.index, output, work.details)
        self.end_if_done()

    def _final(self, index: int, output: Any, details: ExecutionDetails) -> None:
        self.finished += 1
        self.final_counts[details.status] += 1
        if self.release_room:
            self.room.release()
        self.on_final(index, output, details)
        self.progress.advance(details.status)
        if self.traced:
            self.telemetry.final(details.status)

    # -- workers and attempts -----------------------------------------------------------
    async def work(self) -> None:
        """Take queued inputs through the gate and attempt them, until the run stops."""
        gate = self.gate
        queue = self.queue
        # evalexec.httpx's hooks report to this run: set once for the worker, whose
        # context every attempt (and every worker thread it uses) inherits.
        current_run.set(self)
        try:
            while self.stop is None:
                # The input first, then the permit: a worker of a run with nothing to do
                # must not hold a permit of a gate that the executor's other runs share.
                entry = await queue.get()
                if self.stop is not None:
                    return
                if not gate.try_acquire():
                    await gate.acquire()  # waits out a pause, or a cut of the limit
                try:
                    if self.stop is not None:
                        return
                    if self.limiter is None:  # (a budget may be learned mid-run)
                        await self._try(entry[2])
                    else:
                        await self.attempt(entry[2])
                finally:
                    gate.release()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, any abort of the function's
            self.crash(exc)  # the run stops in order, then drive() raises it

    async def attempt(self, work: _Work) -> None:
        """Make one attempt on `work` (within a permit of the limiter, if there is one)."""
        limiter = self.limiter
        if limiter is None:
            await self._try(work)
            return
        permit = await self._admit(limiter, work)
        if permit is None:
            return
        output = None
        try:
            output = await self._try(work)
        finally:
            # After the outcome is settled, so a rate limit is reported (a pause shared
            # with other processes) before the slot is free for another start.
            self._give_back(permit, output)

    async def _try(self, work: _Work) -> Any:
        """Call the function once on `work` and settle what happens next; the output
        if the input COMPLETED now, else None."""
        config = self.config
        loop = self.loop
        task = asyncio.current_task()
        assert task is not None
        self.inflight += 1
        self.attempting.add(task)
        self.steering.started(self.inflight)
        start = loop.time()
        scope = asyncio.timeout(None if math.isinf(config.timeout) else config.timeout)
        error: BaseException | None = None
        output: Any = None
        # The attempt's span is the current span while the function runs.
        traced = self.telemetry.attempt_started(work.index, work.attempts) if self.traced else None
        try:
            async with scope:
                awaitable = config.call(work.input)
                if not inspect.isawaitable(awaitable):
                    self.crash(_not_awaitable(config.function, awaitable))
                    return None
                if work.index % SAMPLE_PERIOD < SAMPLE_SIZE:  # a sample of inputs is timed
                    awaitable = self.watchdog.watch(awaitable)
                output = await awaitable
        except asyncio.CancelledError as exc:
            if task.cancelling():
                raise
            error = exc  # raised by the function itself, not by us
        except Exception as exc:
            error = exc
        finally:
            if traced is not None:
                self.telemetry.attempt_left(traced)
            elapsed = loop.time() - start
            work.details.execution_seconds += elapsed
            self.inflight -= 1
            self.attempting.discard(task)
        if scope.expired():
            # Timed out, whether the function let the cancellation through or swallowed
            # it and returned something: a value returned after our cancellation is
            # not the function's answer.
            self.telemetry.attempt_ended(
                work.index, "timeout", will_retry=work.timeouts < config.max_retries
            )
            self.timed_out(work)
        elif task.cancelling() or self.stop == "interrupted":
            # We cancelled this call, or a Ctrl-C reached everything (a run nested in
            # the function included), and the function returned anyway: what it returns
            # is not its answer. The input stays DID NOT RUN.
            raise asyncio.CancelledError
        elif error is not None:
            self.errored(work, error, start)
        elif config.check_output is not None and self._misused(output):
            pass
        else:
            if self.traced:
                self.telemetry.attempt_ended(work.index, "ok")
            work.details.complete()
            self.steering.succeeded(elapsed)
            self.finish(work, output)
            return output
        return None

    async def _admit(self, limiter: Limiter, work: _Work) -> Permit | None:
        """The limiter's leave to start `work`, or None when the input cannot start."""
        try:
            cost = 0 if self.config.cost is None else self.config.cost(work.input)
            return await limiter.acquire(cost)
        except CostExceedsBudget as exc:
            work.details.log_exception(exc)
            self.fail(work, say.describe(exc))  # it could never fit: not retried
        except LimiterStopped as exc:
            if self.stop is None:
                say.stopped_early(self.progress.write, "the shared limiter is stopped", exc.reason)
            self.end("quota")  # the input stays DID NOT RUN
        except LimiterUnavailable as exc:
            self.crash(exc)
        except Exception as exc:  # the user's cost function
            self.crash(exc)
        return None

    def _give_back(self, permit: Permit, output: Any) -> None:
        assert self.limiter is not None
        used = None
        usage = self.config.usage
        if usage is not None and output is not None:
            try:
                used = usage(output)
            except Exception as exc:  # the user's usage function: the estimate stands
                logger.warning(
                    "evalexec: usage() raised %s; the estimate stands", say.describe(exc)
                )
        try:
            self.limiter.release(permit, used)
        except ValueError as exc:  # a usage the limiter cannot take
            logger.warning("evalexec: %s", exc)

    def _misused(self, output: Any) -> bool:
        assert self.config.check_output is not None
        try:
            self.config.check_output(output)
        except Exception as exc:
            self.crash(exc)
            return True
        return False

    def timed_out(self, work: _Work) -> None:
        timeout = self.config.timeout
        work.details.log_exception(TimeoutError(f"attempt timed out after {timeout} s"))
        work.timeouts += 1
        self.steering.timed_out()
        if work.timeouts > self.config.max_retries:
            self.fail(work, f"timed out {work.timeouts} times")
            return
        self.retries += 1
        say.timed_out(work.index, work.attempts)
        self.requeue(work, 0.0)

    def errored(self, work: _Work, exc: BaseException, started_at: float) -> None:
        config = self.config
        work.details.log_exception(exc)
        verdict = decide(exc, work.errors, config.max_retries, config.backoff)
        self.telemetry.attempt_errored(work.index, exc, verdict)
        if verdict.report.kind is ErrorKind.RATE_LIMIT and not heard(exc):
            # (A refusal that evalexec.httpx's hook already reported is counted once.)
            self.rate_limits += 1
            self.steering.refused(started_at, self.inflight)
            self._cool_down(verdict.cooldown)
            self._learn(response_headers(exc), started_at, self.inflight, verdict.cooldown or 0.0)
        if not verdict.retry:
            cause = say.describe(exc)
            if verdict.stop_run:
                if self.stop is None:
                    say.stopped_early(self.progress.write, verdict.reason, cause)
                if self.limiter is not None and verdict.report.kind is not ErrorKind.MISUSE:
                    self.limiter.report_quota_exhausted(verdict.reason)
                # A provider's stop lets admitted calls finish; a misuse fails them all.
                # It comes before fail(), whose exit_on_error stop would cancel them.
                self.end("failed" if verdict.report.kind is ErrorKind.MISUSE else "quota")
            self.fail(work, cause)
            return
        work.errors += 1
        self.retries += 1
        say.retrying(work.index, work.attempts - 1, say.describe(exc), verdict.delay)
        self.requeue(work, verdict.delay)

    def _cool_down(self, seconds: float | None) -> None:
        """The provider refused a call: start nothing new for `seconds` (its hint)."""
        if seconds:
            self.gate.pause_for(seconds)
            self.telemetry.cooldown(seconds)
            self.progress.refresh(force=True)
        if self.limiter is not None:
            self.limiter.report_rate_limit(seconds)

    def observe_response(
        self, status: int, headers: Any, sent_at: float | None = None, sent_after: int = 0
    ) -> None:
        """An HTTP response that an attempt's client received, the SDK's own retries
        included (evalexec.httpx's hooks; on the loop). `sent_at` is when its request
        went out (loop time), `sent_after` how many of the run's requests went out since.

        A 429 pauses new calls for its hint and counts as a rate limit for the
        controller; any response's rate-limit headers teach the budget.
        """
        sent = self.loop.time() if sent_at is None else sent_at
        wait = None
        if status == 429:
            self.rate_limits += 1
            self.steering.refused(sent, self.inflight)
            hint = _hint_from_headers(headers)
            backoff = self.config.backoff
            longest = DEFAULT_MAX_HINT if backoff is None else backoff.max_hint
            # A longer wait stops the run when the SDK's error reaches us (errored).
            wait = hint if hint is not None and hint <= longest else 0.0
            self._cool_down(wait)
        self._learn(headers, sent, sent_after, wait)

    def _learn(self, headers: Any, sent_at: float, sent_after: int, wait: float | None) -> None:
        """Teach the run's budget what a response's rate-limit headers say (`wait` is
        None for a success, the hint honoured for a 429)."""
        if self.learned is None:
            return  # the caller's limiter is the budget
        info = parse_rate_limit_headers(headers)
        if info is None:
            return
        limiter = self.learned.observe(info, sent_at, sent_after, wait)
        if limiter is not None:
            self.limiter = limiter
            if wait:
                limiter.report_rate_limit(self.gate.pause_remaining() or None)
            budget = self.learned.describe()
            say.budget_learned(budget)
            self.telemetry.budget_learned(budget)
            self.progress.note = say.learned_budget(budget)
            self.progress.refresh(force=True)

    def fail(self, work: _Work, cause: str) -> None:
        work.details.fail()
        say.failed(work.index, work.attempts, cause)
        self.finish(work, self.config.fallback)
        if self.config.exit_on_error:
            self.end("failed")

    # -- the stop -----------------------------------------------------------------------
    def end_if_done(self) -> None:
        if not self.producing and self.finished == self.produced:
            self.end("completed")

    def end(self, reason: StopReason) -> None:
        """Start nothing new; `drive` cancels what is in flight and returns."""
        if self.stop is None:
            self.stop = reason
            self.stopped.set()

    def crash(self, exc: BaseException, *, from_inputs: bool = False) -> None:
        if self.error is None:
            self.error = exc
            self.error_is_partial = from_inputs
        self.end("error")

    def interrupt(self, announce: bool = True) -> None:
        if self.stop is None and announce:
            say.interrupted(self.progress.write)
        self.end("interrupted")

    def on_signal(self, announce: bool) -> bool:
        self.loop.call_soon_threadsafe(self.interrupt, announce)
        return False

    # -- control from code: each is safe from any thread, and takes effect on the loop ---
    def _soon(self, action: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            self.loop.call_soon_threadsafe(action)

    def pause(self) -> None:
        self._soon(self.gate.hold)

    def resume(self) -> None:
        self._soon(self.gate.resume)

    def cancel(self) -> None:
        self._soon(self._cancel_now)

    def _cancel_now(self) -> None:
        if self.stop is None:
            say.cancelled(self.progress.write)
        self.end("interrupted")

    def set_concurrency(self, ceiling: int) -> None:
        self._soon(partial(self.steering.set_ceiling, ceiling))

    def snapshot(self) -> RunSnapshot:
        """The run now, as a frozen record (safe to call from any thread: it only reads)."""
        elapsed = self.loop.time() - self.started_at
        total = self.total
        eta = None
        if total is not None and self.finished and self.stop is None:
            eta = elapsed / self.finished * (total - self.finished)
        counts = {status.value: self.final_counts[status] for status in ExecutionStatus}
        counts[ExecutionStatus.DID_NOT_RUN.value] = (
            total - self.finished if total is not None else self.produced - self.finished
        )
        return RunSnapshot(
            target=self.gate.limit,
            inflight=self.inflight,
            total=total,
            counts=counts,
            retries=self.retries,
            rate_limits=self.rate_limits,
            cooldown_seconds=self.cooldown(),
            paused=self.gate.held,
            elapsed_seconds=elapsed,
            eta_seconds=eta,
            stop=self.stop,
            budget=self.budget_text(),
            budget_learned=self.learned is not None and self.learned.limiter is not None,
        )

    def budget_text(self) -> str:
        """The budgets in use: learned, or the limiter's own (a `Limiter` of the user's
        own making may not say what it enforces: "")."""
        if self.learned is not None:
            return self.learned.describe()
        budgets = getattr(self.limiter, "budgets", None)
        return budgets.describe() if isinstance(budgets, _Budgets) else ""

    def cooldown(self) -> float:
        """Seconds left of a provider's pause, here or (with a shared limiter) anywhere."""
        limiter = self.limiter
        shared = 0.0 if limiter is None else limiter.pause_remaining()
        return max(self.gate.pause_remaining(), shared)

    def status_text(self) -> str:
        parts = [f"target={self.gate.limit}", f"inflight={self.inflight}"]
        if self.retries:
            parts.append(f"retries={self.retries}")
        if self.rate_limits:
            parts.append(f"rate_limited={self.rate_limits}")
        if failures := self.final_counts[ExecutionStatus.FAILED]:
            parts.append(f"failed={failures}")
        if self.learned is not None and self.learned.limiter is not None:
            parts.append(self.learned.describe())
        cooldown = self.cooldown()
        if cooldown >= 0.5:
            parts.append(f"cooldown={cooldown:.0f}s")
        return " ".join(parts)

    # -- the run --------------------------------------------------------------------------
    async def drive(self, inputs: Iterable[Any], install_handler: bool) -> None:
        """Run to the end; the one place that starts and stops the run's tasks.

        The tasks are supervised by hand rather than by an `asyncio.TaskGroup`: a
        TaskGroup would raise an `ExceptionGroup` where Phoenix's callers expect the
        error itself, and a quota stop must let calls in flight finish while the other
        workers are cancelled.
        """
        config = self.config
        loop = self.loop
        signum = config.termination_signal if install_handler else None
        deadline = None
        try:
            with termination_handler(signum, self.on_signal):
                if config.checkpoint is not None:
                    try:
                        self.store = config.checkpoint.open(config.function)
                    except CheckpointError as exc:
                        self.crash(exc)  # nothing ran: the error itself, not a partial run
                if config.deadline is not None:
                    deadline = loop.call_later(config.deadline, self.end, "deadline")
                tasks = []
                if self.stop is None:
                    tasks.append(loop.create_task(self.produce(inputs)))
                    tasks += [loop.create_task(self.work()) for _ in range(config.concurrency)]
                try:
                    await self.stopped.wait()
                    if self.stop == "quota":
                        # Calls the provider already admitted will be billed: let them
                        # finish (each within its timeout) and keep what they return.
                        draining = set(self.attempting)
                        for task in tasks:
                            if task not in draining:
                                task.cancel()
                        await asyncio.gather(*draining, return_exceptions=True)
                finally:
                    self.end("cancelled")
                    for task in tasks:
                        task.cancel()
                    try:
                        await asyncio.gather(*tasks, return_exceptions=True)
                        if self.limiter is not None:
                            await asyncio.shield(self.limiter.flush())
                    finally:
                        self._close()
        finally:
            if deadline is not None:
                deadline.cancel()
        if self.stop == "deadline":
            say.deadline_passed(config.deadline)

    def _close(self) -> None:
        for handle in self.delayed.values():
            handle.cancel()
        self.steering.close()
        self.gate.users -= 1
        if self.gate.users == 0:
            self.gate.resume()  # a pause from code ends with the last run that shares it
        try:
            if self.store is not None:
                self.store.close()
        finally:
            inputs_seen = self.produced if self.total is None else self.total
            self.telemetry.run_ended(self.stop or "cancelled", inputs_seen, self.error)
            self.progress.close(inputs_seen, self.retries, self.loop.time() - self.started_at)


async def drive(
    config: RunConfig,
    inputs: Iterable[Any],
    total: int | None,
    details: list[ExecutionDetails] | None,
    on_final: OnFinal,
    *,
    room: asyncio.Semaphore | None = None,
    install_handler: bool = True,
    started: Callable[[Run], None] | None = None,
) -> Run:
    """Run `inputs` to the end under `config`; each final result goes to `on_final`.

    Returns the finished run; the caller raises `run.error` if there is one (wrapped in
    an `IncompleteRunError` with its outputs when `run.error_is_partial`).
    """
    run = Run(config, total, details, on_final, room)
    if started is not None:
        started(run)
    await run.drive(inputs, install_handler)
    return run


def raise_for(run: Run, outputs: list[Any], details: list[ExecutionDetails]) -> None:
    """Raise what stopped `run`, if it was an error; with the outputs when they matter."""
    error = run.error
    if error is None:
        return
    if run.error_is_partial:
        raise IncompleteRunError(error, outputs, details) from error
    raise error


def _not_awaitable(fn: Callable[..., Any], result: object) -> TypeError:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return TypeError(
        f"AsyncExecutor needs a function that returns an awaitable, but {name} returned "
        f"{type(result).__name__}; pass an `async def` function, or use SyncExecutor for a "
        "plain function"
    )
