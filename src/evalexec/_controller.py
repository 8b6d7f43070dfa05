"""The AIMD concurrency controller: pure policy, no tasks and no sleeps.

It is a function of (state, event, now): the executor reports events
(`record_success`, `record_timeout`, `record_error`) and reads
`target_concurrency`. Time comes from an injected clock, so tests drive it with
plain numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from evalexec._clock import now as _default_clock

__all__ = ["ConcurrencyController"]


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
      most ``episode_seconds``. Windows that saw an issue never grow. Inside an
      episode an error still caps the target at the calls in flight when it came
      (see `observe_inflight`): the provider refused a call at that level.
    * ``goodput_floor``: a cut never goes below this fraction of the concurrency
      that recent successes show the provider sustains (Little's law: successes per
      second over the last window times the smoothed latency). A fraction below 1
      keeps the decrease multiplicative, so executors sharing a provider converge
      to fair shares.
    * ``saturation``: a clean window grows the target only if the peak number of
      calls in flight reached ``saturation * target`` (report it with
      `observe_inflight`), so an idle run does not inflate its target.
    * ``timeouts_cut``: when False, timeouts pause growth but never cut.
    * ``collapse_error_threshold=0`` disables the collapse to one worker.
    * ``clock``: a ``() -> float`` monotonic clock in seconds (default: the running
      event loop's time, else ``time.monotonic``).
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
        if collapse_error_threshold < 0:
            raise ValueError(
                f"collapse_error_threshold must be >= 0, got {collapse_error_threshold!r}"
            )
        self._clock = clock or _default_clock
        self._max_concurrency = int(max_concurrency)
        self._target = min(max(float(initial_target), 1.0), float(self._max_concurrency))
        self._window_seconds = float(window_seconds)
        self._increase_step = float(increase_step)
        self._decrease_ratio = float(decrease_ratio)
        self._smoothing_factor = float(smoothing_factor)
        self._collapse_window_seconds = float(collapse_window_seconds)
        self._collapse_error_threshold = int(collapse_error_threshold)
        self._slow_start = slow_start
        self._episode_seconds = float(episode_seconds)
        self._saturation = float(saturation)
        self._goodput_floor = float(goodput_floor)
        self._timeouts_cut = timeouts_cut
        self.inactive_check_interval = max(0.1, float(inactive_check_interval))

        # The first window starts at the first event, not at construction: an
        # executor built long before its run (or outside the event loop whose clock
        # the run uses) must not begin with a stale window.
        self._window_started_at: float | None = None
        self._window_successes = 0
        self._window_issues = 0
        self._window_stalls = 0  # timeouts that pause growth without cutting
        self._window_peak_inflight = 0
        self._episode_until = -math.inf
        self._last_cut_at = -math.inf
        self._started_at = 0.0
        self._inflight: int | None = None  # unknown until observe_inflight is called
        self._success_times: deque[float] = deque()
        self._error_times: deque[float] = deque(maxlen=max(1, self._collapse_error_threshold))
        self._smoothed_latency: float | None = None
        self.history: deque[tuple[float, int]] = deque(maxlen=history_size)
        """``(time, target_concurrency)`` at the first event and each time the integer
        target changed."""

    # -- what the executor reads ------------------------------------------------------
    @property
    def target_concurrency(self) -> int:
        return min(max(1, int(self._target)), self._max_concurrency)

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def smoothed_latency_seconds(self) -> float | None:
        """Exponentially weighted moving average of successful calls' latency."""
        return self._smoothed_latency

    # -- events -----------------------------------------------------------------------
    def _now(self) -> float:
        now = self._clock()
        if self._window_started_at is None:
            self._window_started_at = self._started_at = now
            self.history.append((now, self.target_concurrency))
        return now

    def record_success(self, latency_seconds: float) -> None:
        now = self._now()
        self._window_successes += 1
        if self._goodput_floor > 0:
            self._success_times.append(now)
        latency = float(latency_seconds)
        if self._smoothed_latency is None:
            self._smoothed_latency = latency
        else:
            alpha = self._smoothing_factor
            self._smoothed_latency += alpha * (latency - self._smoothed_latency)
        self._maybe_close_window(now)

    def record_timeout(self) -> None:
        now = self._now()
        if self._timeouts_cut:
            self._issue(now)
        else:
            self._window_stalls += 1
            self._slow_start = False
        self._maybe_close_window(now)

    def record_error(self, *, started_at: float | None = None) -> None:
        """Report a rate-limit error; `started_at` is when the refused call started."""
        now = self._now()
        self._issue(now, started_at)
        if self._collapse_error_threshold:
            self._error_times.append(now)
            if (
                len(self._error_times) >= self._collapse_error_threshold
                and now - self._error_times[0] <= self._collapse_window_seconds
            ):
                self._set_target(1.0, now)
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
    def _issue(self, now: float, started_at: float | None = None) -> None:
        self._window_issues += 1
        self._slow_start = False
        if self._episode_seconds <= 0:
            return
        if started_at is None:
            new_episode = now >= self._episode_until
        else:
            new_episode = started_at >= self._last_cut_at
        if not new_episode:
            if self._inflight is not None and self._inflight < self._target:
                self._set_target(max(self._inflight, 1), now)
            return
        length = self._episode_seconds
        if self._smoothed_latency is not None:
            length = min(length, self._smoothed_latency)
        self._episode_until = now + length
        self._last_cut_at = now
        self._set_target(self._cut(now), now)
        # The window restarts at the cut, counted as one with an issue: growth
        # waits for a whole clean window after the one that holds the cut.
        self._window_started_at = now
        self._window_peak_inflight = 0

    def _cut(self, now: float) -> float:
        cut = self._target * self._decrease_ratio
        if self._goodput_floor <= 0:
            return cut
        latency = self._smoothed_latency
        span = min(self._window_seconds, now - self._started_at)
        if latency is not None and span > 0:
            times = self._success_times
            while times and times[0] < now - self._window_seconds:
                times.popleft()
            sustained = len(times) / span * latency
            cut = max(cut, min(sustained, self._target) * self._goodput_floor)
        return cut if self._inflight is None else min(cut, max(self._inflight, 1))

    def _maybe_close_window(self, now: float) -> None:
        assert self._window_started_at is not None
        if now - self._window_started_at < self._window_seconds:
            return
        if self._window_issues:
            if self._episode_seconds <= 0:
                self._set_target(self._cut(now), now)
        elif (
            not self._window_stalls
            and self._window_peak_inflight >= self._saturation * self.target_concurrency
        ):
            grown = self._target * 2 if self._slow_start else self._target + self._increase_step
            self._set_target(grown, now)
        self._window_started_at = now
        self._window_successes = 0
        self._window_issues = 0
        self._window_stalls = 0
        self._window_peak_inflight = 0

    def _set_target(self, target: float, now: float) -> None:
        before = self.target_concurrency
        # Clamp the float too, so a cut after a long clean stretch is felt at once.
        self._target = min(max(target, 1.0), float(self._max_concurrency))
        after = self.target_concurrency
        if after != before:
            self.history.append((now, after))
