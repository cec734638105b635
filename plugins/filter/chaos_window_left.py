# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_window_left
short_description: Seconds left of an experiment's fault window, counted from the end of its injection
version_added: 0.1.0
description:
  - Takes the window's length (C(chaos_duration)) and returns how much of it is left now, counted from the
    timeline's O(mark) (by default V(inject_end), when the fault is in place). The window's probe and a workload
    started after the injection run for that long, so that the fault stays in place for the asked window, not the
    window plus the time the tasks between the injection and the probe took (a workload's start, a first look).
  - Never less than O(floor), so that the window's probe still looks at least once.
  - The full window when the timeline has no number at O(mark) (check mode, or an experiment that marks nothing), or
    when the input is not a number.
  - Both clocks are the controller's (the timeline is stamped by C(now()) there), so a target's clock does not
    matter.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description: The window's length in seconds.
    type: raw
    required: true
  timeline:
    description: The experiment's timeline (C(pggit_experiment_timeline)), epoch seconds per mark.
    type: raw
    required: true
  mark:
    description: The timeline's mark the window is counted from.
    type: str
    default: inject_end
  floor:
    description: The least number of seconds returned.
    type: float
    default: 0.1
'''

EXAMPLES = r'''
- name: Probe for what is left of the window
  pggit.chaos.pggit_verify:
    watch_duration: "{{ pggit_experiment_duration | pggit.chaos.chaos_window_left(pggit_experiment_timeline) }}"
'''

RETURN = r'''
_value:
  description: Seconds, rounded to hundredths.
  type: float
'''

import time

from ansible_collections.pggit.chaos.plugins.plugin_utils._report import _number


def window_left(duration, timeline, mark, floor, now):
    length = _number(duration)
    if length is None:
        return duration
    started = _number(timeline.get(mark)) if isinstance(timeline, dict) else None
    if started is None:
        return length
    return round(max(float(floor), min(length, length - (now - started))), 2)


def chaos_window_left(duration, timeline, mark='inject_end', floor=0.1):
    return window_left(duration, timeline, mark, floor, time.time())


class FilterModule(object):
    def filters(self):
        return {'chaos_window_left': chaos_window_left}
