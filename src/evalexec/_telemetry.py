"""OpenTelemetry spans for a run, when ``opentelemetry-api`` is importable.

Install the extra (``pip install 'evalexec[otel]'``) and configure a tracer provider the
usual way (``phoenix.otel.register()``, or an SDK ``TracerProvider`` with an exporter):
every engine run then sends one span for the run and one child span per attempt. The
attempt span is the current span while the user's function runs, on the worker task or
on the worker thread, so spans that the function creates (an LLM client instrumented by
OpenInference, Phoenix's model wrappers) nest under the attempt that made them.

Without ``opentelemetry-api``, or with it but no recording tracer provider (the API's
default), a run gets `NO_TELEMETRY`, whose methods do nothing; nothing of OpenTelemetry is
imported until a run starts, and nothing at all when it is not installed.

Spans and attributes (OpenInference names where one exists, ``evalexec.*`` otherwise; no
name is the prefix of another, since Phoenix nests dotted names):

``evalexec.run`` -- one per run, a child of whatever span is current when it starts:
    ``openinference.span.kind``          "CHAIN"
    ``evalexec.executor``                "async" (AsyncExecutor), "threads" (SyncExecutor
                                         on worker threads) or "sync" (SyncExecutor, one
                                         call at a time in the calling thread)
    ``evalexec.function``                the function's qualified name
    ``evalexec.run.concurrency``         the number of workers
    ``evalexec.run.inputs``              len(inputs), when known
    ``evalexec.run.max_retries``         the retry budget per input
    ``evalexec.run.timeout_seconds``     seconds per attempt (absent when there is none)
    at the end:
    ``evalexec.run.stop_reason``         why the run ended: "completed", "failed", "quota",
                                         "interrupted", "deadline", "error", "cancelled"
    ``evalexec.run.attempts``            attempts started
    ``evalexec.status.completed``, ``evalexec.status.completed_with_retries``,
    ``evalexec.status.failed``, ``evalexec.status.did_not_run``
                                         how many inputs ended in each status
    status: OK when completed; ERROR when stopped by a failure, the quota or an error;
    unset when interrupted, past its deadline or cancelled.
    events:
    ``evalexec.cooldown``                a provider's retry hint paused every new call:
                                         ``evalexec.cooldown.seconds``
    ``evalexec.target_changed``          the adaptive controller moved the number of calls
                                         allowed in flight: ``evalexec.target.old``,
                                         ``evalexec.target.new``

``evalexec.attempt`` -- one per attempt, a child of the run span:
    ``openinference.span.kind``          "CHAIN"
    ``evalexec.input.index``             the input's position in the inputs
    ``evalexec.attempt.number``          1 for the first attempt on that input
    ``evalexec.attempt.outcome``         "ok", "error", "timeout", "rate_limit" or
                                         "cancelled" (stopped with the run)
    ``evalexec.attempt.will_retry``      whether the input is attempted again (absent for
                                         "ok" and "cancelled")
    ``evalexec.retry.delay_seconds``     the backoff before that next attempt, when retried
    ``evalexec.retry.cooldown_seconds``  the provider's hint that paused the run, if any
    ``evalexec.error.kind``              how the error was classified ("rate limit",
                                         "transient", "fatal", ...)
    ``error.type``                       the exception's class, or "TimeoutError"
    status: OK for "ok", ERROR (with a bounded description of the error) for "error",
    "rate_limit" and "timeout", unset for "cancelled"; an ``exception`` event carries
    ``exception.type`` and ``exception.message`` for errors.

Times are the tracer's (wall clock), not the run's loop clock. Tracing never breaks a
run: an error raised by the tracer (a span processor's bug, say) is logged once as a
warning and the run goes on untraced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

from evalexec._details import ExecutionStatus
from evalexec.exceptions import ErrorKind, describe_error

if TYPE_CHECKING:
    from evalexec._retry import Verdict

__all__ = ["NO_TELEMETRY", "Outcome", "RunTelemetry", "start_run"]

Outcome = Literal["ok", "error", "timeout", "rate_limit", "cancelled"]
ExecutorKind = Literal["async", "threads", "sync"]

SPAN_KIND = "openinference.span.kind"  # OpenInference's span kind attribute
CHAIN = "CHAIN"  # OpenInference's kind for a step that is neither an LLM call nor a tool
RUN_SPAN = "evalexec.run"
ATTEMPT_SPAN = "evalexec.attempt"
_STATUS_NAMES = {
    ExecutionStatus.COMPLETED: "evalexec.status.completed",
    ExecutionStatus.COMPLETED_WITH_RETRIES: "evalexec.status.completed_with_retries",
    ExecutionStatus.FAILED: "evalexec.status.failed",
}
_ERROR_STOPS = frozenset({"failed", "quota", "error"})

# Test seam: tests point this at a tracer provider of their own; None means the global one.
tracer_provider: Any = None

logger = logging.getLogger("evalexec")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class RunTelemetry:
    """What the engine tells the tracer about one run; this base class does nothing.

    The engine calls `attempt_started` right before it calls the function and
    `attempt_left` (in a ``finally``) right after, in the same task or thread; then
    exactly one of `attempt_ended` / `attempt_errored` for an attempt that ends on its
    own; `cooldown`, `target_changed` and `budget_learned` whenever they happen; `final`
    once per input that reaches a final status; and `run_ended` once, at the end.
    Attempts still open then were cancelled with the run (or left behind by an error
    that stopped it).
    """

    __slots__ = ()

    def attempt_started(self, index: int, attempt: int) -> object:
        """Attempt number `attempt` (from 1) on input `index` starts: its span is the
        current span from now until `attempt_left` is given what this returns."""
        return None

    def attempt_left(self, entered: object) -> None:
        """The function of the attempt that `attempt_started` returned `entered` for has
        returned or raised: the span current before it is current again."""

    def attempt_ended(self, index: int, outcome: Outcome, *, will_retry: bool = False) -> None:
        """Input `index`'s attempt ended with `outcome` ("ok", "timeout")."""

    def attempt_errored(self, index: int, error: BaseException, verdict: Verdict) -> None:
        """Input `index`'s attempt raised `error`; `verdict` is what the retry policy
        decided (retried or not, after which delay and pause)."""

    def cooldown(self, seconds: float) -> None:
        """A provider's hint paused every new call for `seconds`."""

    def target_changed(self, old: int, new: int) -> None:
        """The number of calls allowed in flight moved from `old` to `new`."""

    def budget_learned(self, budget: str) -> None:
        """The provider's headers set the run's budget (``rpm<=500 tpm<=30000``)."""

    def final(self, status: ExecutionStatus) -> None:
        """One more input reached its final `status`."""

    def run_ended(self, stop: str, inputs: int, error: BaseException | None) -> None:
        """The run is over: `stop` is why, `inputs` how many it saw, `error` what it raises."""


NO_TELEMETRY = RunTelemetry()


def start_run(
    *,
    executor: ExecutorKind,
    function: Callable[..., Any],
    total: int | None,
    concurrency: int,
    max_retries: int,
    timeout: float,
) -> RunTelemetry:
    """Start a run's span, current context as its parent; `NO_TELEMETRY` when there is
    no OpenTelemetry API, or when the tracer provider records nothing."""
    api = _api()
    if api is None:
        return NO_TELEMETRY
    trace, context = api
    try:
        from evalexec import __version__  # (here: evalexec imports this module)

        attributes: dict[str, Any] = {
            SPAN_KIND: CHAIN,
            "evalexec.executor": executor,
            "evalexec.function": _name_of(function),
            "evalexec.run.concurrency": concurrency,
            "evalexec.run.max_retries": max_retries,
        }
        if total is not None:
            attributes["evalexec.run.inputs"] = total
        if timeout != float("inf"):
            attributes["evalexec.run.timeout_seconds"] = float(timeout)
        tracer = trace.get_tracer("evalexec", __version__, tracer_provider=tracer_provider)
        span = tracer.start_span(RUN_SPAN, attributes=attributes)
        if not span.is_recording():
            return NO_TELEMETRY  # no SDK configured, or not sampled: stay out of the way
        return _Traced(tracer, span, trace, context)
    except Exception:
        _tracing_failed()
        return NO_TELEMETRY


_API: list[tuple[Any, Any] | None] = []  # the import's outcome, looked up once a process


def _api() -> tuple[Any, Any] | None:
    """OpenTelemetry's `trace` and `context` modules, or None without the API. A failed
    import is not retried at every run (a search of sys.path each time)."""
    if not _API:
        try:
            from opentelemetry import context, trace
        except ImportError:
            _API.append(None)
        else:
            _API.append((trace, context))
    return _API[0]


def _tracing_failed() -> None:
    logger.warning("evalexec: tracing this run failed; the run goes on without it", exc_info=True)


def _guarded(
    method: Callable[Concatenate[_Traced, _P], _R],
) -> Callable[Concatenate[_Traced, _P], _R | None]:
    """The tracer's errors stay out of the run: the first one is logged, and the run's
    telemetry then does nothing."""

    def guarded(self: _Traced, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        if self._broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self._break()
            return None

    return guarded


class _Traced(RunTelemetry):
    """A run that is traced: its span, and the spans of attempts not yet ended."""

    __slots__ = (
        "_attempts",
        "_broken",
        "_context",
        "_counts",
        "_open",
        "_parent",
        "_span",
        "_trace",
        "_tracer",
    )

    def __init__(self, tracer: Any, span: Any, trace: Any, context: Any) -> None:
        self._tracer = tracer
        self._span = span
        self._trace = trace
        self._context = context
        self._parent = trace.set_span_in_context(span)  # attempts are the run's children
        self._open: dict[int, Any] = {}  # input index -> span of its attempt in flight
        self._counts = dict.fromkeys(_STATUS_NAMES, 0)
        self._attempts = 0
        self._broken = False  # the tracer raised once: trace no more of this run

    @_guarded
    def attempt_started(self, index: int, attempt: int) -> object:
        self._attempts += 1
        span = self._tracer.start_span(
            ATTEMPT_SPAN,
            context=self._parent,
            attributes={
                SPAN_KIND: CHAIN,
                "evalexec.input.index": index,
                "evalexec.attempt.number": attempt,
            },
        )
        self._open[index] = span
        return self._context.attach(self._trace.set_span_in_context(span, self._parent))

    def attempt_left(self, entered: object) -> None:
        # Not skipped once broken: a span made current must not stay current.
        if entered is None:  # attempt_started failed, or was skipped
            return
        try:
            self._context.detach(entered)
        except Exception:
            self._break()

    def _break(self) -> None:
        if not self._broken:
            self._broken = True
            _tracing_failed()

    @_guarded
    def attempt_ended(self, index: int, outcome: Outcome, *, will_retry: bool = False) -> None:
        span = self._open.pop(index, None)
        if span is None:
            return
        span.set_attribute("evalexec.attempt.outcome", outcome)
        status = self._trace.StatusCode
        if outcome == "ok":
            span.set_status(status.OK)
        elif outcome == "timeout":
            span.set_attribute("evalexec.attempt.will_retry", will_retry)
            span.set_attribute("error.type", "TimeoutError")
            span.set_status(status.ERROR, "the attempt timed out")
        span.end()

    @_guarded
    def attempt_errored(self, index: int, error: BaseException, verdict: Verdict) -> None:
        span = self._open.pop(index, None)
        if span is None:
            return
        kind = verdict.report.kind
        rate_limited = kind in (ErrorKind.RATE_LIMIT, ErrorKind.QUOTA_EXHAUSTED)
        error_type = _name_of(type(error), module=True)
        description = describe_error(error)
        span.set_attribute("evalexec.attempt.outcome", "rate_limit" if rate_limited else "error")
        span.set_attribute("evalexec.attempt.will_retry", verdict.retry)
        if verdict.retry:
            span.set_attribute("evalexec.retry.delay_seconds", float(verdict.delay))
        if verdict.cooldown:
            span.set_attribute("evalexec.retry.cooldown_seconds", float(verdict.cooldown))
        span.set_attribute("evalexec.error.kind", kind.value)
        span.set_attribute("error.type", error_type)
        span.add_event(
            "exception", {"exception.type": error_type, "exception.message": description}
        )
        span.set_status(self._trace.StatusCode.ERROR, description)
        span.end()

    @_guarded
    def cooldown(self, seconds: float) -> None:
        self._span.add_event("evalexec.cooldown", {"evalexec.cooldown.seconds": float(seconds)})

    @_guarded
    def target_changed(self, old: int, new: int) -> None:
        self._span.add_event(
            "evalexec.target_changed", {"evalexec.target.old": old, "evalexec.target.new": new}
        )

    @_guarded
    def budget_learned(self, budget: str) -> None:
        self._span.add_event("evalexec.budget_learned", {"evalexec.budget": budget})

    @_guarded
    def final(self, status: ExecutionStatus) -> None:
        if status in self._counts:
            self._counts[status] += 1

    @_guarded
    def run_ended(self, stop: str, inputs: int, error: BaseException | None) -> None:
        span = self._span
        if not span.is_recording():
            return  # ended already
        for attempt in self._open.values():
            attempt.set_attribute("evalexec.attempt.outcome", "cancelled")
            attempt.end()
        self._open.clear()
        span.set_attribute("evalexec.run.stop_reason", stop)
        span.set_attribute("evalexec.run.attempts", self._attempts)
        for status, count in self._counts.items():
            span.set_attribute(_STATUS_NAMES[status], count)
        did_not_run = max(0, inputs - sum(self._counts.values()))
        span.set_attribute("evalexec.status.did_not_run", did_not_run)
        status_code = self._trace.StatusCode
        if error is not None:
            span.set_attribute("error.type", _name_of(type(error), module=True))
            span.set_status(status_code.ERROR, describe_error(error))
        elif stop in _ERROR_STOPS:
            span.set_status(status_code.ERROR, f"the run stopped: {stop}")
        elif stop == "completed":
            span.set_status(status_code.OK)
        span.end()


def _name_of(thing: Any, *, module: bool = False) -> str:
    name = getattr(thing, "__qualname__", None) or type(thing).__qualname__
    owner = getattr(thing, "__module__", None) if module else None
    if not isinstance(name, str):
        name = type(thing).__qualname__
    if isinstance(owner, str) and owner != "builtins":
        return f"{owner}.{name}"
    return name
