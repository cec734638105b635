"""chaos_window_left: the window is counted from the end of the injection, not from the probe's start."""
from __future__ import annotations

import time

from ansible_collections.pggit.chaos.plugins.filter.chaos_window_left import FilterModule, chaos_window_left, window_left

NOW = 1795800000.0


def left(duration, timeline, mark='inject_end', floor=0.1):
    return window_left(duration, timeline, mark, floor, NOW)


def test_the_time_since_the_injection_ended_is_taken_off_the_window():
    assert left(20, {'inject_start': NOW - 2, 'inject_end': NOW - 0.75}) == 19.25
    assert left('20.0', {'inject_end': str(NOW - 0.5)}) == 19.5


def test_another_mark_can_start_the_window():
    assert left(10, {'inject_start': NOW - 3, 'inject_end': NOW - 1}, mark='inject_start') == 7.0


def test_a_window_already_over_still_gets_one_look():
    assert left(5, {'inject_end': NOW - 60}) == 0.1
    assert left(5, {'inject_end': NOW - 60}, floor=1) == 1.0


def test_a_clock_behind_the_mark_never_lengthens_the_window():
    assert left(20, {'inject_end': NOW + 5}) == 20.0


def test_without_the_mark_the_whole_window_is_left():
    for timeline in ({}, None, 'x', {'inject_end': None}, {'inject_end': 'soon'}, {'inject_end': True}):
        assert left(20, timeline) == 20.0, timeline


def test_a_length_that_is_not_a_number_is_returned_as_it_is():
    for duration in ('long', None, True):
        assert left(duration, {'inject_end': NOW}) is duration


def test_the_filter_is_registered():
    assert FilterModule().filters()['chaos_window_left'] is chaos_window_left


def test_the_filter_counts_from_now():
    assert 9.0 < chaos_window_left(10, {'inject_end': time.time() - 0.5}) <= 9.5
