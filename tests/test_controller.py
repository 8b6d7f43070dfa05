"""ConcurrencyController: exact targets after exact event sequences on a fake clock."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

from evalexec.executors import ConcurrencyController


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
