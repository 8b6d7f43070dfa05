"""The AIMD concurrency controller: pure policy, no tasks and no sleeps.

It is a function of (state, event, now): the executor reports events
(`record_success`, `record_timeout`, `record_error`) and reads
`target_concurrency`. Time comes from an injected clock, so tests drive it with
plain numbers.

Besides the controller this module holds what the engine expects of any controller
(`ControllerLike`) and the settings the executors use (`adaptive_controller`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from evalexec._clock import now as _default_clock

__all__ = [
    "ChangeReason",
    "ConcurrencyController",
    "ControllerLike",
    "InflightObserver",
    "TargetChange",
    "adaptive_controller",
]


@runtime_checkable
class ControllerLike(Protocol):
    """What the engine needs of an object put in ``executor._concurrency_controller``.

    Phoenix's own tests plug in such objects; `ConcurrencyController` is one. Two
    members are optional and looked up with ``getattr``:

    * ``inactive_check_interval`` (float seconds, default 1.0): how often gated workers
      look again at a target that may change from outside (not needed by our own
      controller, whose target changes only when it is told of an event).
    * ``observe_inflight(inflight: int) -> None`` (see `InflightObserver`): told the
      number of calls in flight when a call starts and just before `record_error`.

    ``isinstance(obj, ControllerLike)`` checks only that the four members exist.
    """

    @property
    def target_concurrency(self) -> int:
        """How many calls may be in flight now (the engine floors it at 1)."""
        ...

    def record_success(self, latency_seconds: float) -> None: ...

    def record_timeout(self) -> None: ...

    def record_error(self) -> None:
        """A rate-limit error. Our controller also takes ``started_at=`` (keyword)."""
        ...


class InflightObserver(Protocol):
    """The optional part of `ControllerLike`: told how many calls are in flight."""

    def observe_inflight(self, inflight: int) -> None: ...


ChangeReason = Literal[
    "start",  # the target when the first event came (old == new)
    "clean window",  # a window with no error or timeout added the increase step
    "slow start",  # a clean window doubled the target (before the first error or timeout)
    "rate limit",  # a cut (or a cap at the calls in flight) after a rate-limit error
    "timeout",  # a cut (or a cap at the calls in flight) after a timeout
    "collapse",  # collapse_error_threshold errors within collapse_window_seconds
    "external",  # code outside the controller assigned `_target_concurrency`
]


@dataclass(frozen=True, slots=True)
class TargetChange:
    """One change of the integer target: at ``at`` (controller clock) from ``old`` to
    ``new``, because of ``reason``."""

    at: float
    old: int
    new: int
    reason: ChangeReason


class ConcurrencyController:
    """Additive-increase / multiplicative-decrease control of the target concurrency.

    With the defaults it behaves as Phoenix's controller: time is cut into windows of
    ``window_seconds``; a window that saw no error and no timeout adds
    ``increase_step`` to the target, a window that saw any multiplies it by
    ``decrease_ratio``; ``collapse_error_threshold`` errors within
    ``collapse_window_seconds`` set the target to 1. ``target_concurrency`` is the
    floor of the target, clamped to ``[1, max_concurrency]``.

    Keyword-only extensions (all off by default) make it converge faster:

    * ``slow_start``: until the first error or timeout, a clean window doubles the
      target instead of adding ``increase_step``.
    * ``episode_seconds``: an error (or timeout) cuts the target at once and opens
      an episode; further errors in the episode do not cut again (a burst of N
      simultaneous 429s is one signal, not N). When the error's attempt start time
      is given (``record_error(started_at=...)``), the episode holds exactly the
      calls started before the cut; otherwise it lasts one smoothed latency, at
      most ``episode_seconds``. Windows that saw an issue never grow; the window
      restarts at each cut with its counts cleared, so the first window after a cut
      grows unless it sees an issue of its own. Inside an episode an error still
      caps the target at the calls in flight when it came (see `observe_inflight`):
      the provider refused a call at that level.
    * ``goodput_floor``: a cut never goes below this fraction of the concurrency
      that recent successes show the provider sustains (Little's law: the seconds
      of the successful calls that ended in the last window, divided by its length).
      It is a floor in calls, not a share of the target, so refusals that follow a
      cut do not ratchet the target down. A fraction below 1 keeps the decrease
      multiplicative, so executors sharing a provider converge to fair shares. Once
      successes are known, a cut to the calls in flight keeps this share of the
      target too (losing one call per refusal would cut a small target far deeper
      than a large one).
    * ``fractional``: `dispatch_limit` is the float target, not its floor: at 3.6 a
      fourth call may be in flight 60 % of the time (the engine's gate keeps that
      share), where the floor would leave a provider that sustains 3.6 at 3.
    * ``start_share``: the start ramp. The first calls go out at this share of the
      target (rounded up); the first success lets the rest in, and the first issue
      ends the ramp and cuts from its level. A provider that refuses the start
      refuses that share of the calls it would have; a run that is never refused
      starts the rest one (fastest) latency late.
    * ``plateau``: remember the calls in flight when the provider last refused one.
      When a probe above that level is refused within one window at the same level
      (a limit on calls in flight, not on their rate), growth stops there: it waits
      one clean window before the next probe, then twice as many after each probe
      refused at the same level.
    * ``accelerate``: the n-th clean window in a row adds n times ``increase_step``
      (an issue, or a window that does not grow, starts the count again), so a
      target far below what the provider now allows (another executor finished)
      climbs back in a few windows.
    * ``saturation``: a clean window grows the target only if the peak number of
      calls in flight reached ``saturation * target`` (report it with
      `observe_inflight`), so an idle run does not inflate its target.
    * ``timeouts_cut``: when False, timeouts pause growth but never cut.
    * ``collapse_error_threshold=0`` disables the collapse to one worker.
    * ``history_size``: how many `TargetChange` entries `changes` keeps.
    * ``clock``: a ``() -> float`` monotonic clock in seconds (default: the running
      event loop's time, else ``time.monotonic``).

    The state Phoenix's controller keeps lives under Phoenix's private names, so code
    written against Phoenix (its own test suite reads ``_target_concurrency``) reads
    and writes the same values: ``_target_concurrency`` (the float target),
    ``_max_concurrency``, ``_window_seconds``, ``_increase_step``, ``_decrease_ratio``,
    ``_smoothing_factor``, ``_collapse_window_seconds``, ``_collapse_error_threshold``,
    ``_smoothed_latency_seconds``, ``_success_count`` / ``_timeout_count`` /
    ``_error_count`` (this window's events), ``_error_timestamps`` and
    ``_window_started_at`` (None until the first event; on the controller's clock,
    not ``time.time()``).

    Memory is bounded whatever the run length: the success times kept for the
    goodput floor are trimmed to the last window on every success, and the error
    times and `changes` are bounded deques.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        initial_target: float,
        window_seconds: float = 5,
        increase_step: float = 0.5,
        decrease_ratio: float = 0.5,
        inactive_check_interval: float = 1.0,
        smoothing_factor: float = 0.2,
        collapse_window_seconds: float = 15,
        collapse_error_threshold: int = 2,
        slow_start: bool = False,
        episode_seconds: float = 0.0,
        saturation: float = 0.0,
        goodput_floor: float = 0.0,
        timeouts_cut: bool = True,
        fractional: bool = False,
        start_share: float = 0.0,
        plateau: bool = False,
        accelerate: bool = False,
        history_size: int = 1000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if int(max_concurrency) < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        if not math.isfinite(initial_target):
            raise ValueError(f"initial_target must be a finite number, got {initial_target!r}")
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
        if not 0 < decrease_ratio <= 1:
            raise ValueError(f"decrease_ratio must be in (0, 1], got {decrease_ratio!r}")
        if not 0 < smoothing_factor <= 1:
            raise ValueError(f"smoothing_factor must be in (0, 1], got {smoothing_factor!r}")
        if not 0 <= start_share <= 1:
            raise ValueError(f"start_share must be in [0, 1], got {start_share!r}")
        if collapse_error_threshold < 0:
            raise ValueError(
                f"collapse_error_threshold must be >= 0, got {collapse_error_threshold!r}"
            )
        self._clock = clock or _default_clock
        # -- settings (Phoenix's names) --
        self._max_concurrency = int(max_concurrency)
        self._window_seconds = float(window_seconds)
        self._increase_step = float(increase_step)
        self._decrease_ratio = float(decrease_ratio)
        self._smoothing_factor = float(smoothing_factor)
        self._collapse_window_seconds = float(collapse_window_seconds)
        self._collapse_error_threshold = int(collapse_error_threshold)
        self.inactive_check_interval = max(0.1, float(inactive_check_interval))
        # -- settings (ours) --
        self._slow_start = slow_start  # cleared by the first error or timeout
        self._episode_seconds = float(episode_seconds)
        self._saturation = float(saturation)
        self._goodput_floor = float(goodput_floor)
        self._timeouts_cut = timeouts_cut
        self._fractional = fractional
        self._start_share = float(start_share)
        self._plateau = plateau
        self._accelerate = accelerate

        # The float target, always within [1, max_concurrency]; read and written by
        # outside code as `_target_concurrency` (a property that logs outside writes).
        self._target = min(max(float(initial_target), 1.0), float(self._max_concurrency))
        # The first window starts at the first event, not at construction: an
        # executor built long before its run (or outside the event loop whose clock
        # the run uses) must not begin with a stale window.
        self._window_started_at: float | None = None
        # This window's events (Phoenix's names): an "issue" is an error, or a
        # timeout when timeouts cut; a timeout that does not cut only pauses growth.
        self._success_count = 0
        self._timeout_count = 0
        self._error_count = 0
        self._window_peak_inflight = 0  # the most calls in flight seen this window
        # Episodes: errors before `_episode_until` (or from calls started before
        # `_last_cut_at`) belong to the episode already cut for.
        self._episode_until = -math.inf
        self._last_cut_at = -math.inf
        self._started_at = 0.0  # time of the first event
        self._inflight: int | None = None  # unknown until observe_inflight is called
        # Success times within the last window (only with a goodput floor); trimmed
        # on every success, so at most one window of successes is held.
        self._success_times: deque[tuple[float, float]] = deque()  # (time, latency)
        # The start ramp (with `start_share`): the first calls start at that share of the
        # target; the first success lets the rest in, the first issue ends it at that share.
        self._ramping = self._start_share > 0
        # The plateau: the calls the provider held when it last refused one, and how many
        # clean windows growth waits there before it probes above them again.
        self._held: float | None = None
        self._knee: float | None = None
        self._probe_at: float | None = None
        self._patience = 1
        self._calm = 0
        self._streak = 0
        # The latest errors, as many as a collapse needs (Phoenix's name).
        self._error_timestamps: deque[float] = deque(maxlen=max(1, self._collapse_error_threshold))
        self._smoothed_latency_seconds: float | None = None
        self.changes: deque[TargetChange] = deque(maxlen=history_size)
        """Each change of the integer target, with its reason; the first entry
        (reason "start") is the target when the first event came."""

    # -- what the executor reads ------------------------------------------------------
    @property
    def target_concurrency(self) -> int:
        return min(max(1, int(self._target)), self._max_concurrency)

    @property
    def dispatch_limit(self) -> float:
        """How many calls the engine lets be in flight: `target_concurrency`, or with
        ``fractional`` the float target itself (3.6: a fourth call 60 % of the time)."""
        limit = self._target if self._fractional else float(self.target_concurrency)
        if self._ramping:
            limit = min(limit, self._ramp_level())
        if limit < 1.0:
            return 1.0
        return limit if limit <= self._max_concurrency else float(self._max_concurrency)

    def _ramp_level(self) -> float:
        return max(1.0, math.ceil(self._start_share * self._target))

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def smoothed_latency_seconds(self) -> float | None:
        """Exponentially weighted moving average of successful calls' latency."""
        return self._smoothed_latency_seconds

    @property
    def history(self) -> list[tuple[float, int]]:
        """``(time, target_concurrency)`` at the first event and each time the integer
        target changed: `changes` without the reasons."""
        return [(change.at, change.new) for change in self.changes]

    @property
    def _target_concurrency(self) -> float:
        """The float target, under Phoenix's name. Assigning it moves the target as in
        Phoenix (clamped to ``[1, max_concurrency]``) and logs an "external" change."""
        return self._target

    @_target_concurrency.setter
    def _target_concurrency(self, value: float) -> None:
        if self._window_started_at is None:  # before the first event: a new start
            self._target = min(max(float(value), 1.0), float(self._max_concurrency))
        else:
            self._set_target(float(value), self._clock(), "external")

    # -- events -----------------------------------------------------------------------
    def _now(self) -> float:
        now = self._clock()
        if self._window_started_at is None:
            self._window_started_at = self._started_at = now
            target = self.target_concurrency
            self.changes.append(TargetChange(now, target, target, "start"))
        return now

    def record_success(self, latency_seconds: float) -> None:
        now = self._clock() if self._window_started_at is not None else self._now()
        self._success_count += 1
        latency = float(latency_seconds)
        if self._goodput_floor > 0:
            times = self._success_times
            times.append((now, latency))
            if times[0][0] < now - self._window_seconds:  # (the call only when needed)
                self._trim_success_times(now)
        self._ramping = False
        if self._smoothed_latency_seconds is None:
            self._smoothed_latency_seconds = latency
        else:
            alpha = self._smoothing_factor
            self._smoothed_latency_seconds += alpha * (latency - self._smoothed_latency_seconds)
        self._maybe_close_window(now)

    def record_timeout(self) -> None:
        now = self._now()
        self._timeout_count += 1
        if self._timeouts_cut:
            self._issue(now, "timeout")
        else:
            self._slow_start = False
        self._maybe_close_window(now)

    def record_error(self, *, started_at: float | None = None) -> None:
        """Report a rate-limit error; `started_at` is when the refused call started."""
        now = self._now()
        self._error_count += 1
        self._issue(now, "rate limit", started_at)
        if self._collapse_error_threshold:
            self._error_timestamps.append(now)
            if (
                len(self._error_timestamps) >= self._collapse_error_threshold
                and now - self._error_timestamps[0] <= self._collapse_window_seconds
            ):
                self._set_target(1.0, now, "collapse")
        self._maybe_close_window(now)

    def observe_inflight(self, inflight: int) -> None:
        """Report the number of calls in flight now: when a call starts (for the peak)
        and just before `record_error` (for the cap below).

        Used by the ``saturation`` gate, and with ``goodput_floor`` a cut never leaves
        the target above the calls in flight when the provider refused one.
        """
        self._inflight = inflight
        if inflight > self._window_peak_inflight:
            self._window_peak_inflight = inflight

    # -- policy -----------------------------------------------------------------------
    def _issue(self, now: float, reason: ChangeReason, started_at: float | None = None) -> None:
        """An error, or a timeout that cuts, was recorded (and counted) at `now`."""
        self._slow_start = False
        if self._ramping:  # the ramp ends: the target is what was in use
            self._ramping = False
            ramp = self._ramp_level()
            if ramp < self._target:
                self._set_target(ramp, now, reason)
        if self._episode_seconds <= 0:
            return
        if started_at is None:
            new_episode = now >= self._episode_until
        else:
            new_episode = started_at >= self._last_cut_at
        if not new_episode:
            if self._inflight is None:
                return
            inflight = float(max(self._inflight, 1))
            if self._held is not None:
                self._held = min(self._held, inflight)
            # Before any success, the calls in flight are all the episode says about the
            # provider (a start burst into a limit of 8 in flight ends at 8). Once the
            # goodput floor knows what it sustains, the episode's cut already used that,
            # and a refusal that found a shared bucket empty with one call in flight would
            # cut a small target far deeper than a large one.
            if inflight < self._target and not self._knows_goodput():
                self._set_target(inflight, now, reason)
            return
        self._streak = 0
        if self._plateau and self._inflight is not None:
            held = float(max(self._inflight, 1))
            quick = self._probe_at is not None and now - self._probe_at <= self._window_seconds
            if quick and self._held is not None and abs(held - self._held) < 1:
                if self._knee is not None and abs(held - self._knee) < 1:
                    self._patience *= 2  # a probe above the plateau was refused: wait longer
                else:
                    self._knee = held
                    self._patience = 1
            else:
                self._knee = None
                self._patience = 1
            self._held = held
            self._probe_at = None
            self._calm = 0
        length = self._episode_seconds
        if self._smoothed_latency_seconds is not None:
            length = min(length, self._smoothed_latency_seconds)
        self._episode_until = now + length
        self._last_cut_at = now
        self._set_target(self._cut(now), now, reason)
        # The window restarts at the cut with its counts cleared: the cut answers what
        # came before it, and a window after it grows unless it sees an issue itself.
        self._window_started_at = now
        self._window_peak_inflight = 0
        self._success_count = self._timeout_count = self._error_count = 0

    def _trim_success_times(self, now: float) -> None:
        times = self._success_times
        horizon = now - self._window_seconds
        while times and times[0][0] < horizon:
            times.popleft()

    def _cut(self, now: float) -> float:
        cut = self._target * self._decrease_ratio
        if self._goodput_floor <= 0:
            return cut
        latency = self._smoothed_latency_seconds
        span = min(self._window_seconds, now - self._started_at)
        if latency is not None and span > 0:
            self._trim_success_times(now)
            # Little's law over the window: the seconds of successful calls it holds,
            # divided by its length, is how many calls the provider carried on average.
            sustained = sum(seconds for _, seconds in self._success_times) / span
            cut = min(self._target, max(cut, sustained * self._goodput_floor))
        if self._inflight is None:
            return cut
        # The provider refused a call with `_inflight` others in flight: no more than
        # that, except that once successes show what it sustains, a cut to the calls in
        # flight keeps the floor's share of the target (a small target that lost one
        # call per refusal would be cut far deeper than a large one).
        held = float(max(self._inflight, 1))
        if latency is not None:
            held = max(held, self._goodput_floor * self._target)
        return min(cut, held)

    def _knows_goodput(self) -> bool:
        return self._goodput_floor > 0 and self._smoothed_latency_seconds is not None

    def _window_issues(self) -> int:
        return self._error_count + (self._timeout_count if self._timeouts_cut else 0)

    def _maybe_close_window(self, now: float) -> None:
        assert self._window_started_at is not None
        if now - self._window_started_at < self._window_seconds:
            return
        if self._window_issues():
            self._streak = 0
            if self._episode_seconds <= 0:
                reason: ChangeReason = "rate limit" if self._error_count else "timeout"
                self._set_target(self._cut(now), now, reason)
        elif (
            not self._timeout_count  # a timeout that does not cut still pauses growth
            and self._window_peak_inflight >= self._saturation * self.target_concurrency
        ):
            if self._slow_start:
                self._set_target(self._target * 2, now, "slow start")
            else:
                self._grow(now)
        else:
            self._streak = 0
        self._window_started_at = now
        self._success_count = 0
        self._timeout_count = 0
        self._error_count = 0
        self._window_peak_inflight = 0

    def _grow(self, now: float) -> None:
        """A clean window that was in use: add the step (times the streak when
        accelerating), but stop at a known plateau until it is time to probe above it."""
        self._streak += 1
        grown = self._target + self._increase_step * (self._streak if self._accelerate else 1)
        knee = self._knee
        if knee is not None and grown > knee:
            if self._target < knee:
                grown = knee  # back up to the plateau
            elif self._target > knee:  # a clean window above it: the plateau is gone
                self._knee = None
                self._patience = 1
            elif self._calm < self._patience:
                self._calm += 1
                self._streak = 0
                return  # wait on the plateau
            else:
                self._calm = 0
                grown = self._target + self._increase_step  # one step above it
        held = self._held
        if held is not None and self._probe_at is None and grown > held:
            self._probe_at = now  # from now on the target is above the last refusal
        self._set_target(grown, now, "clean window")

    def _set_target(self, target: float, now: float, reason: ChangeReason) -> None:
        before = self.target_concurrency
        # Clamp the float too, so a cut after a long clean stretch is felt at once.
        self._target = min(max(target, 1.0), float(self._max_concurrency))
        after = self.target_concurrency
        if after != before:
            self.changes.append(TargetChange(now, before, after, reason))


# -- the executors' controller ----------------------------------------------------------
#
# Phoenix's rules with these settings converge instead of collapsing (README, "Dynamic
# concurrency"; bench/ measures them). Each sits under the reason for its value.

# No collapse to one worker: with episodes a burst of 429s is already one cut, and
# dropping to 1 would throw away the concurrency the goodput floor shows still works.
COLLAPSE_ERROR_THRESHOLD = 0
# Episodes on, at most one feedback window long: the engine passes each error's start
# time, so an episode holds exactly the calls started before its cut; the length only
# bounds it for errors reported without a start time (one smoothed latency, if shorter).
EPISODE_WINDOWS = 1.0
# A clean window grows the target only if 80 % of it was in use at its peak: an idle
# target proves nothing about the provider, and 80 % leaves room for the gaps between
# one worker's calls.
SATURATION = 0.8
# A cut keeps at least 90 % of the concurrency recent successes show the provider
# sustains; below 1 the decrease stays multiplicative, so executors sharing a
# provider still converge to fair shares.
GOODPUT_FLOOR = 0.9
# Double the target per clean window until the first error or timeout: from a low
# start the provider's limit is found in log2(concurrency) windows, not linearly.
SLOW_START = True
# Timeouts pause growth but do not cut: they say the provider is slow, not that it
# refuses calls, and fewer calls in flight would not make each one faster.
TIMEOUTS_CUT = False
# Dispatch by the float target: a provider that sustains 4 calls in flight, cut by the
# floor to 3.6, keeps 3.6 of them instead of 3 (a quarter of its rate).
FRACTIONAL = True
# No start ramp by default. `start_share=0.5` halves the calls a provider refuses at
# the start (inflight8: 1.7 % of calls refused instead of 3.6 %), but every run that is
# never refused waits one latency for its second half: the latency row (fixed latency,
# 40 rounds) takes one round more (+2.5 %), a run of at most `concurrency` inputs twice
# as long. Nothing seen before the first response tells the two cases apart.
START_SHARE = 0.0
# A limit on calls in flight refuses every probe above it: after two refusals at the
# same level, probe it less and less often instead of once every two windows.
PLATEAU = True
# Clean windows in a row grow faster, so capacity another executor frees is taken
# in a few windows; AIMD's fairness is kept (equal streaks grow equally, and the
# executors that were refused least recently are the ones that climb).
ACCELERATE = True


def adaptive_controller(
    concurrency: int,
    initial_target: int,
    window_seconds: float,
    increase_step: float,
    decrease_ratio: float,
    inactive_check_interval: float,
    *,
    clock: Callable[[], float] | None = None,
) -> ConcurrencyController:
    """The controller the executors build for ``enable_dynamic_concurrency=True``:
    Phoenix's ``dynamic_*`` arguments plus the settings above (``clock`` for tests)."""
    return ConcurrencyController(
        max_concurrency=concurrency,
        initial_target=initial_target,
        window_seconds=window_seconds,
        increase_step=increase_step,
        decrease_ratio=decrease_ratio,
        inactive_check_interval=inactive_check_interval,
        collapse_error_threshold=COLLAPSE_ERROR_THRESHOLD,
        episode_seconds=EPISODE_WINDOWS * window_seconds,
        saturation=SATURATION,
        goodput_floor=GOODPUT_FLOOR,
        slow_start=SLOW_START,
        timeouts_cut=TIMEOUTS_CUT,
        fractional=FRACTIONAL,
        start_share=START_SHARE,
        plateau=PLATEAU,
        accelerate=ACCELERATE,
        clock=clock,
    )


if TYPE_CHECKING:  # the type checker proves our controller offers what the engine needs
    _conforms: type[ControllerLike] = ConcurrencyController
