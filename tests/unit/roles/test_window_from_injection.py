"""The fault window is counted from the end of the injection (no lab): the window's probe, and a workload started
after the injection, run for what is left of chaos_duration (the chaos_window_left filter), not for all of it again;
such a workload counts that time from its own start (count_from=start), its preparation included.

Before, each task between the `inject_end` mark and the probe (a workload's async start, a first look at the
replicas) lengthened the fault by its own time: 0.35 to 0.7 s per experiment over the asked window.
"""
from __future__ import annotations

import glob
import os
import re

import yaml

ROLES = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles')
MODULES = ('pggit.chaos.pggit_verify', 'pggit.chaos.pggit_workload')


def _tasks(items):
    """Every task in the order of the file, blocks opened."""
    for item in items or []:
        if isinstance(item, dict) and 'block' in item:
            for key in ('block', 'rescue', 'always'):
                yield from _tasks(item.get(key))
        elif isinstance(item, dict):
            yield item


# A window's end may take off the time the window's probe then waited for the jobs it collects (pggit_verify jobs).
MARK_RE = re.compile(r"^\{\{ pggit_experiment_timeline \| default\(\{\}\) \| combine\(\{'([a-z_]+)': now\(\)\.timestamp\(\)"
                     r"(?:\s+- ([a-z_]+)\.jobs_waited_s \| default\(0\))?\}\) \}\}$")


def _mark(task):
    """The timeline mark a task stamps (a set_fact of pggit_experiment_timeline with the controller's clock), or None."""
    match = MARK_RE.match(str((task.get('ansible.builtin.set_fact') or {}).get('pggit_experiment_timeline', '')))
    return match.group(1) if match else None


def _window_tasks(path):
    """(task name, option, value) of each probe or workload after the inject_end mark that runs for a time given by
    chaos_duration."""
    with open(path) as handle:
        tasks = list(_tasks(yaml.safe_load(handle)))
    inside, found = False, []
    for task in tasks:
        mark = _mark(task)
        if mark == 'inject_end':  # a role may mark window_end in one branch and probe in another, after it
            inside = True
            continue
        for module in MODULES:
            args = task.get(module)
            if inside and isinstance(args, dict):
                for option in ('watch_duration', 'duration'):
                    if 'pggit_experiment_duration' in str(args.get(option, '')):
                        found.append((task['name'], option, str(args[option]), args))
    return found


def test_every_window_counts_from_the_end_of_the_injection():
    checked = {}
    for path in sorted(glob.glob(os.path.join(ROLES, 'pggit_chaos_*', 'tasks', '*.yml'))):
        for name, option, value, args in _window_tasks(path):
            role = path.split(os.sep)[-3]
            assert 'pggit.chaos.chaos_window_left(pggit_experiment_timeline' in value, (role, name, option, value)
            if option == 'duration':  # pggit_workload takes at least one second, counted from its start (not its first DDL)
                assert 'floor=1' in value and args.get('count_from') == 'start', (role, name, value, args.get('count_from'))
            checked.setdefault(role, []).append(option)
    # The window's probe of each experiment that marks inject_end and probes for chaos_duration; a test that found
    # none would pass for nothing.
    assert len(checked) >= 11, sorted(checked)
    for role in ('pggit_chaos_latency', 'pggit_chaos_partition', 'pggit_chaos_bandwidth', 'pggit_chaos_compose'):
        assert sorted(checked[role]) == ['duration', 'watch_duration'], (role, checked[role])


def test_every_mark_stamps_the_controllers_clock_under_the_name_the_torture_finds():
    """A mark is one set_fact (no include: 0.05 s less per mark, 15 marks in the suite), named for its mark, since
    tests/lab/torture.py finds the phases by those names; one that stamped something else would not be found."""
    marks = {}
    for path in sorted(glob.glob(os.path.join(ROLES, '*', 'tasks', '*.yml'))):
        with open(path) as handle:
            for task in _tasks(yaml.safe_load(handle)):
                timeline = (task.get('ansible.builtin.set_fact') or {}).get('pggit_experiment_timeline')
                if not isinstance(timeline, str) or 'revert_plan' in str(task.get('ansible.builtin.set_fact')):
                    continue
                mark = _mark(task)
                assert mark, (path, task['name'], timeline)
                assert task['name'] == 'Stamp the timeline with %s' % mark, (path, task['name'])
                marks.setdefault(mark, []).append(path)
        with open(path) as handle:
            assert 'tasks_from: mark' not in handle.read(), path
    assert {'inject_start', 'inject_end', 'window_end', 'revert_end'} <= set(marks), sorted(marks)
    assert len(marks['inject_end']) >= 16, marks['inject_end']


def test_a_window_end_after_a_probe_that_waited_for_jobs_takes_that_wait_off():
    """pggit_verify with jobs waits (up to jobs_timeout) for them after its watch: the window ended before that wait, so
    the window_end mark after such a probe takes off its jobs_waited_s (else the window, in the report and the bench's
    revert-after-window, grows by the workload's settle and clean-up)."""
    checked = []
    for path in sorted(glob.glob(os.path.join(ROLES, '*', 'tasks', '*.yml'))):
        with open(path) as handle:
            tasks = list(_tasks(yaml.safe_load(handle)))
        waited = None
        for task in tasks:
            args = task.get('pggit.chaos.pggit_verify')
            if isinstance(args, dict) and args.get('jobs'):
                waited = task['register']
            if _mark(task) == 'window_end' and waited:
                match = MARK_RE.match(str(task['ansible.builtin.set_fact']['pggit_experiment_timeline']))
                assert match.group(2) == waited, (path, task['name'], waited)
                checked.append(path.split(os.sep)[-3])
                waited = None
    assert sorted(checked) == ['pggit_chaos_connections', 'pggit_chaos_partition'], checked
