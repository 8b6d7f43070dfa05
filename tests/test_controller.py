"""ConcurrencyController: exact targets after exact event sequences on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections.abc import Sized
from typing import Any

import pytest

from evalexec._controller import (
    ControllerLike,
    TargetChange,
    adaptive_controller,
)
from evalexec.executors import AsyncExecutor, ConcurrencyController


class Clock:
    """A fake clock: `clock.at(t)` moves time to `t` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def at(self, t: float) -> Clock:
        self.now = t
        return self


def make(clock: Clock, **kwargs: Any) -> ConcurrencyController:
    kwargs.setdefault("max_concurrency", 10)
    kwargs.setdefault("initial_target", 8)
    return ConcurrencyController(clock=clock, **kwargs)


# -- Phoenix's defaults -------------------------------------------------------------------
#
# Every sequence starts with an event at t=0, the time the controller was built, so the
# first window starts at 0 whether it is opened by construction or by the first event.


def events(controller: ConcurrencyController, clock: Clock, *sequence: tuple[float, str]) -> None:
    """Feed `(time, "ok" | "error" | "timeout")` events; "ok" reports a 1-s latency."""
    for t, event in sequence:
        clock.at(t)
        if event == "ok":
            controller.record_success(1.0)
        elif event == "error":
            controller.record_error()
        elif event == "timeout":
            controller.record_timeout()
        else:
            raise ValueError(event)


def test_a_clean_window_adds_the_increase_step() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"))
    assert controller.target_concurrency == 4  # 4.5, floored
    events(controller, clock, (10.0, "ok"))
    assert controller.target_concurrency == 5
    assert list(controller.history) == [(0.0, 4), (10.0, 5)]


def test_a_window_closes_only_when_window_seconds_have_passed() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4, increase_step=1)
    events(controller, clock, (0.0, "ok"), (1.0, "ok"), (2.0, "ok"), (4.999, "ok"))
    assert controller.target_concurrency == 4
    events(controller, clock, (5.0, "ok"))
    assert controller.target_concurrency == 5


def test_the_next_window_starts_when_the_previous_one_closed() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4, increase_step=1)
    events(controller, clock, (0.0, "ok"), (7.0, "ok"), (11.0, "ok"))
    assert controller.target_concurrency == 5  # [0, 7) closed at 7; 11 is 4 s into the next
    events(controller, clock, (12.0, "ok"))
    assert controller.target_concurrency == 6


def test_a_window_with_an_error_multiplies_the_target_by_the_decrease_ratio() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    events(controller, clock, (0.0, "error"))
    assert controller.target_concurrency == 8
    events(controller, clock, (5.0, "ok"))
    assert controller.target_concurrency == 4
    assert list(controller.history) == [(0.0, 8), (5.0, 4)]


def test_a_window_with_a_timeout_multiplies_the_target_by_the_decrease_ratio() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    events(controller, clock, (0.0, "timeout"), (5.0, "ok"))
    assert controller.target_concurrency == 4


def test_the_event_that_closes_a_window_counts_in_it() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    events(controller, clock, (0.0, "ok"), (6.0, "timeout"))
    assert controller.target_concurrency == 4


def test_a_custom_decrease_ratio_and_increase_step() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, decrease_ratio=0.75, increase_step=2)
    events(controller, clock, (0.0, "ok"), (5.0, "error"))
    assert controller.target_concurrency == 6
    events(controller, clock, (10.0, "ok"))
    assert controller.target_concurrency == 8


def test_two_errors_within_the_collapse_window_set_the_target_to_one() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    events(controller, clock, (0.0, "error"), (1.0, "error"))
    assert controller.target_concurrency == 1
    assert list(controller.history) == [(0.0, 8), (1.0, 1)]


def test_the_collapse_window_is_inclusive() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, window_seconds=100)
    events(controller, clock, (0.0, "error"), (15.0, "error"))
    assert controller.target_concurrency == 1


def test_errors_further_apart_than_the_collapse_window_do_not_collapse() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, window_seconds=100)
    events(controller, clock, (0.0, "error"), (15.5, "error"))
    assert controller.target_concurrency == 8


def test_the_collapse_threshold_counts_errors_not_timeouts() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, window_seconds=100, collapse_error_threshold=3)
    events(controller, clock, (0.0, "error"), (1.0, "error"), (2.0, "timeout"))
    assert controller.target_concurrency == 8
    events(controller, clock, (3.0, "error"))
    assert controller.target_concurrency == 1


def test_only_the_latest_errors_count_towards_a_collapse() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, window_seconds=100, collapse_error_threshold=3)
    events(controller, clock, (0.0, "error"), (10.0, "error"), (20.0, "error"))
    assert controller.target_concurrency == 8  # 0..20 spans more than 15 s
    events(controller, clock, (24.0, "error"))  # the last three: 10, 20, 24
    assert controller.target_concurrency == 1


def test_a_collapse_threshold_of_zero_disables_the_collapse() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, window_seconds=100, collapse_error_threshold=0)
    events(controller, clock, (0.0, "error"), (0.5, "error"), (1.0, "error"), (1.5, "error"))
    assert controller.target_concurrency == 8


def test_the_target_is_floored() -> None:
    controller = make(Clock(), initial_target=3.9)
    assert controller.target_concurrency == 3


@pytest.mark.parametrize(("initial", "expected"), [(100, 10), (0.2, 1), (0, 1), (-5, 1)])
def test_the_initial_target_is_clamped_to_one_and_the_maximum(
    initial: float, expected: int
) -> None:
    assert make(Clock(), initial_target=initial).target_concurrency == expected


def test_growth_stops_at_the_maximum_and_a_cut_is_felt_at_once() -> None:
    """The float target is clamped too, so clean windows at the top do not bank growth."""
    clock = Clock()
    controller = make(clock, max_concurrency=4, initial_target=4, increase_step=1)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"), (10.0, "ok"), (15.0, "ok"))
    assert controller.target_concurrency == 4
    events(controller, clock, (16.0, "error"), (20.0, "ok"))
    assert controller.target_concurrency == 2


def test_cuts_never_go_below_one_and_growth_starts_from_one() -> None:
    clock = Clock()
    controller = make(clock, initial_target=2, collapse_error_threshold=0)
    events(controller, clock, (0.0, "error"), (5.0, "error"), (10.0, "error"))
    assert controller.target_concurrency == 1  # 2 * 0.5 * 0.5, clamped to 1.0
    events(controller, clock, (15.0, "ok"))
    assert controller.target_concurrency == 1  # 1.5
    events(controller, clock, (20.0, "ok"))
    assert controller.target_concurrency == 2
    assert list(controller.history) == [(0.0, 2), (5.0, 1), (20.0, 2)]


def test_latency_is_an_exponentially_weighted_moving_average() -> None:
    controller = make(Clock(), smoothing_factor=0.25)
    assert controller.smoothed_latency_seconds is None
    controller.record_success(1.0)
    assert controller.smoothed_latency_seconds == 1.0
    controller.record_success(3.0)
    assert controller.smoothed_latency_seconds == 1.5
    controller.record_success(5.5)
    assert controller.smoothed_latency_seconds == 2.5


def test_the_default_smoothing_factor_is_one_fifth() -> None:
    controller = make(Clock())
    controller.record_success(1.0)
    controller.record_success(2.0)
    assert controller.smoothed_latency_seconds == 1.2


def test_errors_and_timeouts_leave_the_latency_average_alone() -> None:
    controller = make(Clock())
    controller.record_success(2.0)
    controller.record_error()
    controller.record_timeout()
    assert controller.smoothed_latency_seconds == 2.0


def test_the_inactive_check_interval_is_at_least_a_tenth_of_a_second() -> None:
    assert make(Clock(), inactive_check_interval=0.01).inactive_check_interval == 0.1
    assert make(Clock(), inactive_check_interval=2.5).inactive_check_interval == 2.5
    assert make(Clock()).inactive_check_interval == 1.0


def test_max_concurrency_is_exposed() -> None:
    assert make(Clock(), max_concurrency=7).max_concurrency == 7


# -- extensions ---------------------------------------------------------------------------


def test_slow_start_doubles_the_target_until_the_first_error() -> None:
    clock = Clock()
    controller = make(
        clock, max_concurrency=64, initial_target=2, slow_start=True, collapse_error_threshold=0
    )
    events(controller, clock, (0.0, "ok"), (5.0, "ok"), (10.0, "ok"), (15.0, "ok"))
    assert controller.target_concurrency == 16
    events(controller, clock, (16.0, "error"), (20.0, "ok"))
    assert controller.target_concurrency == 8
    events(controller, clock, (25.0, "ok"), (30.0, "ok"))
    assert controller.target_concurrency == 9  # 8 + 0.5 + 0.5: growth is additive now
    assert list(controller.history) == [
        (0.0, 2),
        (5.0, 4),
        (10.0, 8),
        (15.0, 16),
        (20.0, 8),
        (30.0, 9),
    ]


def test_slow_start_stops_at_the_maximum() -> None:
    clock = Clock()
    controller = make(clock, max_concurrency=10, initial_target=3, slow_start=True)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"), (10.0, "ok"), (15.0, "ok"))
    assert [target for _, target in controller.history] == [3, 6, 10]


def test_a_timeout_ends_slow_start_too() -> None:
    clock = Clock()
    controller = make(clock, initial_target=2, increase_step=1, slow_start=True)
    events(controller, clock, (0.0, "timeout"), (5.0, "ok"), (10.0, "ok"))
    assert controller.target_concurrency == 2  # 2 * 0.5, then + 1 (not * 2)


def test_an_episode_cuts_once_at_the_first_error() -> None:
    """A burst of errors within an episode is one signal: one cut, at once."""
    clock = Clock()
    controller = make(clock, initial_target=8, episode_seconds=10, collapse_error_threshold=0)
    controller.observe_inflight(8)
    events(controller, clock, (0.0, "error"))
    assert controller.target_concurrency == 4
    events(controller, clock, (2.0, "error"), (5.0, "ok"))
    assert controller.target_concurrency == 4  # no second cut, and no cut at the window's close
    events(controller, clock, (10.0, "ok"))  # a clean window: 4.5
    events(controller, clock, (11.0, "error"))  # the episode is over: a new cut
    assert controller.target_concurrency == 2
    assert list(controller.history) == [(0.0, 8), (0.0, 4), (11.0, 2)]


def test_an_episode_is_also_opened_by_a_timeout() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, episode_seconds=10)
    controller.observe_inflight(8)
    events(controller, clock, (0.0, "timeout"))
    assert controller.target_concurrency == 4
    events(controller, clock, (2.0, "timeout"))
    assert controller.target_concurrency == 4


def test_an_episode_holds_the_calls_started_before_its_cut() -> None:
    """Given the refused call's start time, only calls started after the last cut cut again."""
    clock = Clock()
    controller = make(clock, initial_target=8, episode_seconds=10, collapse_error_threshold=0)
    controller.observe_inflight(8)
    clock.at(1.0)
    controller.record_error(started_at=0.5)
    assert controller.target_concurrency == 4
    clock.at(1.5)
    controller.record_error(started_at=0.9)  # started before the cut at 1.0
    assert controller.target_concurrency == 4
    clock.at(2.0)
    controller.record_error(started_at=1.2)  # started after it: a new signal
    assert controller.target_concurrency == 2
    assert list(controller.history) == [(1.0, 8), (1.0, 4), (2.0, 2)]


def test_an_error_within_an_episode_caps_the_target_at_the_calls_in_flight() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, episode_seconds=10, collapse_error_threshold=0)
    controller.observe_inflight(8)
    clock.at(1.0)
    controller.record_error(started_at=0.5)
    controller.observe_inflight(3)
    clock.at(1.5)
    controller.record_error(started_at=0.9)
    assert controller.target_concurrency == 3


def test_saturation_lets_a_window_grow_only_if_in_flight_reached_the_share() -> None:
    clock = Clock()
    controller = make(clock, max_concurrency=20, initial_target=10, increase_step=1, saturation=0.8)
    events(controller, clock, (0.0, "ok"))
    for inflight in (3, 7, 5):
        controller.observe_inflight(inflight)
    events(controller, clock, (5.0, "ok"))
    assert controller.target_concurrency == 10  # peak 7 < 0.8 * 10
    controller.observe_inflight(8)
    events(controller, clock, (10.0, "ok"))
    assert controller.target_concurrency == 11  # peak 8 >= 0.8 * 10
    events(controller, clock, (15.0, "ok"))
    assert controller.target_concurrency == 11  # the peak starts again at 0 each window


def test_without_saturation_an_idle_window_grows() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4, increase_step=1)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"))
    assert controller.target_concurrency == 5


def test_timeouts_that_do_not_cut_still_pause_growth() -> None:
    clock = Clock()
    controller = make(
        clock, initial_target=4, increase_step=1, timeouts_cut=False, episode_seconds=5
    )
    events(controller, clock, (0.0, "timeout"))
    assert controller.target_concurrency == 4
    events(controller, clock, (5.0, "ok"))
    assert controller.target_concurrency == 4
    events(controller, clock, (10.0, "ok"))
    assert controller.target_concurrency == 5


def test_timeouts_that_do_not_cut_end_slow_start() -> None:
    clock = Clock()
    controller = make(
        clock,
        initial_target=2,
        increase_step=1,
        slow_start=True,
        timeouts_cut=False,
        episode_seconds=5,
    )
    events(controller, clock, (0.0, "timeout"), (5.0, "ok"), (10.0, "ok"))
    assert controller.target_concurrency == 3  # grew by the step, not doubled


def test_timeouts_that_do_not_cut_do_not_open_an_episode() -> None:
    clock = Clock()
    controller = make(
        clock, initial_target=8, timeouts_cut=False, episode_seconds=10, collapse_error_threshold=0
    )
    events(controller, clock, (0.0, "timeout"), (1.0, "error"))
    assert controller.target_concurrency == 4


def test_history_records_each_change_of_the_integer_target() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4)
    events(controller, clock, *[(t, "ok") for t in (0.0, 5.0, 10.0, 15.0, 20.0)])
    assert list(controller.history) == [(0.0, 4), (10.0, 5), (20.0, 6)]


def test_history_keeps_the_latest_entries() -> None:
    clock = Clock()
    controller = make(clock, initial_target=1, increase_step=1, history_size=2)
    events(controller, clock, *[(t, "ok") for t in (0.0, 5.0, 10.0, 15.0)])
    assert list(controller.history) == [(10.0, 3), (15.0, 4)]


def test_history_starts_with_the_initial_target() -> None:
    clock = Clock().at(42.0)
    controller = make(clock, initial_target=3)
    events(controller, clock, (42.0, "ok"))
    assert list(controller.history) == [(42.0, 3)]


@pytest.mark.looptime
async def test_without_a_clock_the_running_loop_time_is_used() -> None:
    controller = ConcurrencyController(max_concurrency=10, initial_target=4, increase_step=1)
    controller.record_success(1.0)
    await asyncio.sleep(4.5)
    controller.record_success(1.0)
    assert controller.target_concurrency == 4
    await asyncio.sleep(0.5)
    controller.record_success(1.0)
    assert controller.target_concurrency == 5


# -- why the target moved ----------------------------------------------------------------


def test_changes_say_why_the_target_moved() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, increase_step=1)
    events(
        controller,
        clock,
        *[(0.0, "ok"), (5.0, "ok")],  # a clean window: 9
        *[(6.0, "timeout"), (10.0, "ok")],  # a window with a timeout: 4.5
        *[(11.0, "error"), (15.0, "ok")],  # a window with an error: 2.25
        (20.0, "ok"),  # a clean window: 3.25
        (21.0, "error"),  # the second error within 15 s: collapse
    )
    assert list(controller.changes) == [
        TargetChange(0.0, 8, 8, "start"),
        TargetChange(5.0, 8, 9, "clean window"),
        TargetChange(10.0, 9, 4, "timeout"),
        TargetChange(15.0, 4, 2, "rate limit"),
        TargetChange(20.0, 2, 3, "clean window"),
        TargetChange(21.0, 3, 1, "collapse"),
    ]
    assert list(controller.history) == [(c.at, c.new) for c in controller.changes]


def test_changes_name_slow_start_and_episode_cuts() -> None:
    clock = Clock()
    controller = make(
        clock,
        max_concurrency=64,
        initial_target=2,
        slow_start=True,
        episode_seconds=10,
        collapse_error_threshold=0,
    )
    controller.observe_inflight(16)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"), (10.0, "ok"), (11.0, "error"))
    controller.observe_inflight(3)
    events(controller, clock, (11.5, "error"), (25.0, "timeout"))
    assert list(controller.changes) == [
        TargetChange(0.0, 2, 2, "start"),
        TargetChange(5.0, 2, 4, "slow start"),
        TargetChange(10.0, 4, 8, "slow start"),
        TargetChange(11.0, 8, 4, "rate limit"),
        TargetChange(11.5, 4, 3, "rate limit"),  # in the episode: capped at the calls in flight
        TargetChange(25.0, 3, 1, "timeout"),  # a new episode: 3 * 0.5
    ]


def test_an_outside_write_to_the_float_target_is_logged_as_external() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    events(controller, clock, (0.0, "ok"))
    clock.at(3.0)
    controller._target_concurrency = 6.5
    assert controller.target_concurrency == 6
    assert controller._target_concurrency == 6.5
    assert controller.changes[-1] == TargetChange(3.0, 8, 6, "external")


def test_an_outside_write_before_the_first_event_sets_the_start() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8)
    controller._target_concurrency = 50
    assert controller._target_concurrency == 10  # clamped to max_concurrency
    events(controller, clock, (1.0, "ok"))
    assert list(controller.changes) == [TargetChange(1.0, 10, 10, "start")]


# -- Phoenix's private names -----------------------------------------------------------------


def test_phoenix_names_read_the_float_target_and_the_window_counts() -> None:
    clock = Clock()
    controller = make(clock, initial_target=3, increase_step=1)
    events(controller, clock, (0.0, "error"), (6.0, "ok"))
    assert controller._target_concurrency == 1.5
    assert controller.target_concurrency == 1
    events(controller, clock, (7.0, "ok"), (7.5, "timeout"))
    assert (controller._success_count, controller._timeout_count, controller._error_count) == (
        1,
        1,
        0,
    )
    assert controller._smoothed_latency_seconds == 1.0
    assert list(controller._error_timestamps) == [0.0]
    assert controller._window_started_at == 6.0
    assert (controller._max_concurrency, controller._window_seconds) == (10, 5.0)


def test_writing_phoenix_names_has_phoenix_effect() -> None:
    clock = Clock()
    controller = make(clock, initial_target=8, increase_step=1)
    events(controller, clock, (0.0, "ok"))
    controller._error_count = 1  # as if an error had been recorded in this window
    events(controller, clock, (5.0, "ok"))
    assert controller.target_concurrency == 4
    controller._window_seconds = 1.0
    controller._increase_step = 3
    events(controller, clock, (6.0, "ok"))
    assert controller.target_concurrency == 7
    controller._max_concurrency = 5
    assert controller.target_concurrency == 5
    controller._smoothed_latency_seconds = 4.0
    assert controller.smoothed_latency_seconds == 4.0


# -- bounded memory ---------------------------------------------------------------------------


def test_a_million_successes_keep_at_most_one_window_of_state() -> None:
    """Success times are trimmed to the last window on every success, not only at a cut."""
    clock = Clock()
    controller = make(clock, initial_target=10, goodput_floor=0.9, episode_seconds=5)
    for i in range(1_000_000):
        clock.at(i / 1000)
        controller.record_success(0.008)
    sizes = {
        name: len(value)
        for name, value in vars(controller).items()
        if isinstance(value, Sized) and not isinstance(value, str)
    }
    assert sizes
    assert max(sizes.values()) <= 5001, sizes  # one 5-s window at one success per ms
    clock.at(1000.0)
    controller.record_error()
    # Little's law over the last window: 5000 successes x 8 ms / 5 s = 8 sustained; the
    # floor keeps 90 % of it (7.2), above the halving to 5.
    assert controller.changes[-1] == TargetChange(1000.0, 10, 7, "rate limit")


def test_the_goodput_floor_counts_only_the_last_window_of_successes() -> None:
    clock = Clock()
    controller = make(
        clock, max_concurrency=100, initial_target=80, goodput_floor=0.9, episode_seconds=5
    )
    for i in range(500):  # one success every 20 ms from 0 to 9.98 s
        clock.at(i / 50)
        controller.record_success(1.0)
    assert controller._target_concurrency == 80.5  # the window [0, 5) was clean
    events(controller, clock, (10.0, "error"))
    # [5, 10) holds 250 successes: 250 / 5 s * 1 s = 50 sustained, 90 % of it is 45,
    # above the halving to 40.25. Counting all 500 would have given 72.
    assert controller._target_concurrency == 45.0
    assert controller.target_concurrency == 45


# -- what a plug-in controller offers ------------------------------------------------------


class PhoenixShapedController:
    """A controller shaped like the stub in Phoenix's executor tests."""

    def __init__(self) -> None:
        self._target_concurrency = 1

    @property
    def target_concurrency(self) -> int:
        return self._target_concurrency

    @property
    def inactive_check_interval(self) -> float:
        return 0.01

    def record_success(self, latency_seconds: float) -> None:
        pass

    def record_timeout(self) -> None:
        pass

    def record_error(self) -> None:
        pass


class NoTimeouts:
    target_concurrency = 1

    def record_success(self, latency_seconds: float) -> None:
        pass

    def record_error(self) -> None:
        pass


def test_controller_like_recognises_controllers_by_their_members() -> None:
    assert isinstance(make(Clock()), ControllerLike)
    assert isinstance(PhoenixShapedController(), ControllerLike)
    assert not isinstance(NoTimeouts(), ControllerLike)


# -- the executors' controller ------------------------------------------------------------


async def identity(item: Any) -> Any:
    return item


def settings(controller: ConcurrencyController) -> dict[str, Any]:
    return {k: v for k, v in vars(controller).items() if k not in ("_clock", "changes")}


def test_the_adaptive_controller_is_the_one_async_executor_builds() -> None:
    built = AsyncExecutor(
        identity,
        concurrency=12,
        dynamic_initial_target=3,
        dynamic_window_seconds=2.0,
        dynamic_increase_step=2,
        dynamic_decrease_ratio=0.25,
        dynamic_inactive_check_interval=0.5,
    )._concurrency_controller
    made = adaptive_controller(12, 3, 2.0, 2, 0.25, 0.5)
    assert settings(made) == settings(built)


def test_the_adaptive_controller_doubles_while_in_use_and_cuts_once_per_burst() -> None:
    clock = Clock()
    controller = adaptive_controller(64, 2, 5.0, 1, 0.5, 1.0, clock=clock)
    controller.observe_inflight(2)
    events(controller, clock, (0.0, "ok"), (5.0, "ok"))  # in use: doubled
    controller.observe_inflight(3)  # 3 < 80 % of 4
    events(controller, clock, (10.0, "ok"))  # not in use: kept
    controller.observe_inflight(4)
    events(controller, clock, (15.0, "ok"), (16.0, "timeout"), (20.0, "ok"))
    assert controller.target_concurrency == 8  # a timeout pauses growth, never cuts
    clock.at(21.0)
    controller.record_error(started_at=20.5)
    clock.at(21.1)
    controller.record_error(started_at=20.6)  # the same burst: no second cut, no collapse
    assert [(c.at, c.new, c.reason) for c in controller.changes] == [
        (0.0, 2, "start"),
        (5.0, 4, "slow start"),
        (15.0, 8, "slow start"),
        (21.0, 4, "rate limit"),
    ]


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be >= 1, got 0"),
        ({"initial_target": math.nan}, "initial_target must be a finite number, got nan"),
        ({"initial_target": math.inf}, "initial_target must be a finite number, got inf"),
        ({"window_seconds": 0}, "window_seconds must be > 0, got 0"),
        ({"decrease_ratio": 0}, "decrease_ratio must be in (0, 1], got 0"),
        ({"decrease_ratio": 1.5}, "decrease_ratio must be in (0, 1], got 1.5"),
        ({"smoothing_factor": 0}, "smoothing_factor must be in (0, 1], got 0"),
        ({"collapse_error_threshold": -1}, "collapse_error_threshold must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make(Clock(), **kwargs)


def test_all_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ConcurrencyController(10, 4)  # type: ignore[call-arg]


def test_timeouts_that_do_not_cut_never_cut_without_episodes() -> None:
    """With `timeouts_cut=False` a window holding only a timeout neither cuts nor grows."""
    clock = Clock()
    controller = make(clock, initial_target=8, increase_step=1, timeouts_cut=False)
    events(controller, clock, (0.0, "timeout"), (5.0, "ok"))
    assert controller.target_concurrency == 8
    events(controller, clock, (10.0, "ok"))
    assert controller.target_concurrency == 9


# -- toward the provider's limit ------------------------------------------------------------


def test_a_fractional_controller_dispatches_by_the_float_target() -> None:
    clock = Clock()
    whole = make(clock, initial_target=3.6)
    fractional = make(clock, initial_target=3.6, fractional=True)
    assert (whole.dispatch_limit, whole.target_concurrency) == (3.0, 3)
    assert (fractional.dispatch_limit, fractional.target_concurrency) == (3.6, 3)


def test_the_start_ramp_holds_back_the_rest_of_the_target_until_the_first_success() -> None:
    clock = Clock()
    controller = make(clock, max_concurrency=40, initial_target=40, start_share=0.5)
    assert (controller.dispatch_limit, controller.target_concurrency) == (20.0, 40)
    controller.record_success(1.0)
    assert controller.dispatch_limit == 40.0  # the ramp is over


def test_the_first_issue_ends_the_ramp_and_cuts_from_its_level() -> None:
    clock = Clock()
    controller = make(
        clock,
        max_concurrency=40,
        initial_target=40,
        start_share=0.5,
        episode_seconds=5,
        collapse_error_threshold=0,
    )
    controller.observe_inflight(19)
    events(controller, clock, (0.05, "error"))
    assert [(c.old, c.new) for c in controller.changes] == [(40, 40), (40, 20), (20, 10)]
    controller.record_success(1.0)
    assert controller.dispatch_limit == 10.0  # no ramp any more


def test_the_window_after_a_cut_grows_unless_it_sees_an_issue_of_its_own() -> None:
    clock = Clock()
    controller = make(
        clock, initial_target=8, increase_step=1, episode_seconds=5, collapse_error_threshold=0
    )
    controller.observe_inflight(8)
    events(controller, clock, (0.0, "ok"), (1.0, "error"))
    assert controller.target_concurrency == 4
    events(controller, clock, (6.0, "ok"))  # [1, 6) held only the cut
    assert controller.target_concurrency == 5


def test_the_goodput_floor_is_little_law_over_the_latencies_and_does_not_ratchet() -> None:
    clock = Clock()
    controller = make(
        clock,
        max_concurrency=100,
        initial_target=20,
        goodput_floor=0.9,
        episode_seconds=5,
        collapse_error_threshold=0,
    )
    for i in range(50):  # 50 successes of 2 s each within 5 s: 20 calls carried
        clock.at(i / 10)
        controller.record_success(2.0)
    clock.at(5.0)
    controller.record_error(started_at=4.9)
    assert controller._target_concurrency == 18.0  # 90 % of 20
    controller.record_error(started_at=5.0)  # a new episode, but 18 is already the floor
    assert controller._target_concurrency == 18.0


def test_once_successes_are_known_a_cut_to_the_calls_in_flight_keeps_the_floor_share() -> None:
    clock = Clock()
    controller = make(clock, initial_target=4, goodput_floor=0.9, episode_seconds=5)
    for i in range(10):  # 10 x 2 s over 5 s: 4 carried
        clock.at(i / 2)
        controller.record_success(2.0)
    controller.observe_inflight(1)  # one other call in flight when one was refused
    clock.at(5.0)
    controller.record_error(started_at=4.9)
    assert controller._target_concurrency == 3.6  # not 1


def test_inside_an_episode_a_refusal_with_few_calls_in_flight_keeps_the_episodes_cut() -> None:
    """A shared rate limit refuses whichever call finds the bucket empty: a small target
    refused with one call in flight must not drop to 1 (a large one would keep 90 %)."""
    clock = Clock()
    controller = make(
        clock, initial_target=4, goodput_floor=0.9, episode_seconds=5, collapse_error_threshold=0
    )
    for i in range(10):  # 10 x 2 s over 5 s: 4 carried
        clock.at(i / 2)
        controller.record_success(2.0)
    controller.observe_inflight(4)
    clock.at(5.0)
    controller.record_error(started_at=4.9)  # the cut: 3.6
    controller.observe_inflight(1)
    clock.at(5.1)
    controller.record_error(started_at=4.95)  # the same episode, one call in flight
    assert controller._target_concurrency == 3.6  # the episode's cut, not 1


def plateau_controller(clock: Clock) -> ConcurrencyController:
    return make(
        clock,
        max_concurrency=40,
        initial_target=9,
        increase_step=1,
        episode_seconds=5,
        goodput_floor=0.9,
        plateau=True,
        collapse_error_threshold=0,
    )


def refuse(controller: ConcurrencyController, clock: Clock, t: float, inflight: int) -> None:
    clock.at(t)
    controller.observe_inflight(inflight)
    controller.record_error(started_at=t - 0.05)


def busy(controller: ConcurrencyController, clock: Clock, start: float, end: float) -> None:
    """Successes of 0.8 s every 0.1 s from `start` to `end`: 8 calls carried."""
    for i in range(round((end - start) * 10)):
        clock.at(start + i / 10)
        controller.observe_inflight(8)
        controller.record_success(0.8)


def test_a_probe_refused_at_the_same_calls_in_flight_makes_a_plateau_probed_ever_less_often() -> (
    None
):
    """A limit of 8 calls in flight: each probe above 8 is refused with 8 others in flight."""
    clock = Clock()
    controller = plateau_controller(clock)
    probes: list[float] = []
    t = 0.0
    while t < 120:
        busy(controller, clock, t, t + 0.5)
        t += 0.5
        if controller._target_concurrency > 8:
            probes.append(t)
            refuse(controller, clock, t, 8)
    assert controller._knee == 8.0
    # The first refusal (at 9, the start) and the next probe make the plateau; then
    # each probe waits twice as many clean windows on it as the one before.
    gaps = [round(b - a) for a, b in itertools.pairwise(probes)]
    assert gaps == [6, 16, 20, 30]


def test_a_clean_window_above_a_plateau_ends_it() -> None:
    """The limit of 8 in flight goes away (another executor finished): once a probe above
    the plateau passes a clean window, growth goes on every window, not once a patience."""
    clock = Clock()
    controller = plateau_controller(clock)
    t = 0.0
    while controller._patience < 4:  # probes refused at 8 until the plateau is well set
        busy(controller, clock, t, t + 0.5)
        t += 0.5
        if controller._target_concurrency > 8:
            refuse(controller, clock, t, 8)
    targets = []
    for _ in range(12):  # no refusal any more: 8 calls carried, 6 windows
        busy(controller, clock, t, t + 5.0)
        t += 5.0
        targets.append(controller._target_concurrency)
    assert controller._knee is None
    assert targets[-1] > 12  # waiting on the plateau it would still be at 9


def test_refusals_at_varying_levels_make_no_plateau() -> None:
    clock = Clock()
    controller = plateau_controller(clock)
    busy(controller, clock, 0.0, 5.0)
    refuse(controller, clock, 5.0, 8)
    busy(controller, clock, 5.0, 10.1)  # a clean window: above 8
    refuse(controller, clock, 10.1, 6)  # a rate limit: refused wherever the bucket ran dry
    assert controller._knee is None
    busy(controller, clock, 10.1, 20.2)
    assert controller._target_concurrency > 8  # nothing holds growth at 8


def test_accelerated_growth_adds_one_more_step_per_clean_window_in_a_row() -> None:
    clock = Clock()
    controller = make(
        clock,
        max_concurrency=100,
        initial_target=4,
        increase_step=1,
        accelerate=True,
        episode_seconds=5,
        collapse_error_threshold=0,
    )
    controller.observe_inflight(4)
    events(controller, clock, *[(float(t), "ok") for t in range(0, 20, 5)])
    assert controller._target_concurrency == 4 + 1 + 2 + 3
    events(controller, clock, (16.0, "error"))  # an issue starts the count again
    cut = controller._target_concurrency
    events(controller, clock, (21.0, "ok"))
    assert controller._target_concurrency == cut + 1


def test_the_adaptive_controller_dispatches_fractionally_and_grows_faster() -> None:
    controller = adaptive_controller(20, 20, 5.0, 1, 0.5, 1.0, clock=Clock())
    assert (controller._fractional, controller._plateau, controller._accelerate) == (
        True,
        True,
        True,
    )


def test_start_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"^start_share must be in \[0, 1\], got 1\.5$"):
        make(Clock(), start_share=1.5)
