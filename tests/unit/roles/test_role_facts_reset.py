"""Every experiment role (roles/pggit_chaos_*/tasks/main.yml, no lab) starts from none of an earlier run's facts.

Facts outlive an include_role: chaos.yml runs one role for two experiments in a play (network_latency then packet_loss,
disk_pressure then disk_full, memory then cpu pressure, the process experiments, each step of a ramp). A role variable
that the finish include reads and that the role registers or sets (its error, abort, probe, fault, workload job) must be
reset by the role's first task(s), before anything can fail: else a later run that succeeds is failed for the earlier
run's error, and a later run that fails early hands the earlier run's probe or fault to finish as its own.
"""
from __future__ import annotations

import glob
import os
import re

import jinja2
import pytest
import yaml

ROLES = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles')
FINISH_ROLE = 'pggit.chaos.pggit_experiment'


def _load(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or []


def _leaves(items, tasks_dir, enclosing=(), section='block'):
    """The role's tasks in the order they run (a block's own tasks, then its rescue, then its always), include_tasks of
    the role's own files expanded in place; each with the blocks around it and the section (block/rescue/always)."""
    for item in items or []:
        if any(key in item for key in ('block', 'rescue', 'always')):
            for key in ('block', 'rescue', 'always'):
                inner = section if key == 'block' else key
                yield from _leaves(item.get(key), tasks_dir, enclosing + (item,), inner)
            continue
        yield item, enclosing, section
        for action in ('ansible.builtin.include_tasks', 'ansible.builtin.import_tasks', 'include_tasks', 'import_tasks'):
            target = item.get(action)
            if isinstance(target, dict):
                target = target.get('file')
            if isinstance(target, str) and '{{' not in target:
                # An included file's tasks are conditional on the include: never part of the leading reset.
                yield {'name': 'include %s' % target, 'when': item.get('when', True)}, enclosing, section
                yield from _leaves(_load(os.path.join(tasks_dir, target)), tasks_dir, enclosing + (item,), section)


def _set_fact(task):
    return task.get('ansible.builtin.set_fact') or task.get('set_fact')


def _is_finish(task):
    include = task.get('ansible.builtin.import_role') or task.get('ansible.builtin.include_role') or task.get('include_role') or {}
    return include.get('name') == FINISH_ROLE and include.get('tasks_from') == 'finish'


class Role:
    def __init__(self, path):
        self.name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        self.prefix = self.name + '_'
        self.tasks = list(_leaves(_load(path), os.path.dirname(path)))
        self.finish = [(task, enclosing) for task, enclosing, _section in self.tasks if _is_finish(task)]

    def reset(self):
        """The facts the role's leading set_fact tasks (unconditional, no loop) give a value, before any other task."""
        values = {}
        for task, _enclosing, section in self.tasks:
            facts = _set_fact(task)
            looped = any(key.startswith(('loop', 'with_')) for key in task)
            if section != 'block' or not facts or 'when' in task or looped:
                break
            values.update(facts)
        return values

    def written(self):
        """Every role-prefixed fact a task of the role registers or sets (rescue included)."""
        names = set()
        for task, _enclosing, _section in self.tasks:
            if isinstance(task.get('register'), str):
                names.add(task['register'])
            names.update(k for k in (_set_fact(task) or {}) if isinstance(k, str) and '{{' not in k)
        return {name for name in names if name.startswith(self.prefix)}

    def finish_text(self):
        """The finish include's vars and the vars of the blocks around it (finish templates those too)."""
        texts = []
        for task, enclosing in self.finish:
            texts.append(yaml.safe_dump(task.get('vars') or {}))
            texts.extend(yaml.safe_dump(block.get('vars') or {}) for block in enclosing)
        return '\n'.join(texts)

    def read_by_finish(self):
        return set(re.findall(r'\b%s\w+' % re.escape(self.prefix), self.finish_text()))


EXPERIMENT_ROLES = [Role(path) for path in sorted(glob.glob(os.path.join(ROLES, 'pggit_chaos_*', 'tasks', 'main.yml')))]
EXPERIMENT_ROLES = [role for role in EXPERIMENT_ROLES if role.finish]


def test_every_experiment_role_is_checked():
    names = {role.name for role in EXPERIMENT_ROLES}
    assert {'pggit_chaos_latency', 'pggit_chaos_disk', 'pggit_chaos_process', 'pggit_chaos_stress'} <= names
    assert len(names) >= 16


@pytest.mark.parametrize('role', EXPERIMENT_ROLES, ids=lambda role: role.name)
def test_every_fact_finish_reads_is_reset_before_the_experiment_starts(role):
    stale = sorted((role.read_by_finish() & role.written()) - set(role.reset()))
    assert stale == [], '%s: facts an earlier run of the role leaves for finish to read: %s' % (role.name, stale)


_DEFAULTED = r'\b(%s)\s*\)?\s*\|\s*default\(\s*([^(),]*?)\s*(?:,\s*(true|True)\s*)?\)'


@pytest.mark.parametrize('role', EXPERIMENT_ROLES, ids=lambda role: role.name)
def test_a_reset_fact_reads_as_if_it_were_absent(role):
    # A first run is unchanged: where finish reads `fact | default(X)`, the reset value is X (or, with default's second
    # argument true, any empty value).
    env = jinja2.Environment()
    wrong = []
    reset = role.reset()
    text = role.finish_text()
    for name, value in sorted(reset.items()):
        if not name.startswith(role.prefix):
            continue
        for fact, fallback, boolean in re.findall(_DEFAULTED % re.escape(name), text):
            expected = env.compile_expression(fallback)()
            if boolean and not value:
                continue
            if value != expected or type(value) is not type(expected):
                wrong.append('%s: reset %r, finish reads default(%s%s)' % (fact, value, fallback, ', true' if boolean else ''))
    assert wrong == [], role.name


def test_the_check_finds_a_fact_that_is_not_reset():
    # The check itself: the latency role without its first task leaves the earlier run's error, fault and probe.
    role = next(role for role in EXPERIMENT_ROLES if role.name == 'pggit_chaos_latency')
    assert {'pggit_chaos_latency_error', 'pggit_chaos_latency_during', 'pggit_chaos_latency_fault'} <= set(role.reset())
    role.tasks = role.tasks[1:]
    stale = (role.read_by_finish() & role.written()) - set(role.reset())
    assert {'pggit_chaos_latency_error', 'pggit_chaos_latency_aborted', 'pggit_chaos_latency_during',
            'pggit_chaos_latency_fault', 'pggit_chaos_latency_workload_job'} <= stale


def test_no_fact_or_register_shadows_what_a_role_hands_to_begin_or_finish():
    """The roles import begin and finish (import_role: no include task, 0.1 s less per experiment). An import's vars
    are task vars, which a fact or a registered variable of the same name outranks, and facts outlive the role: a fact
    named like one of finish's inputs (an earlier experiment's fault hosts) would silently replace what this experiment
    hands to finish. So no task of any role may set or register a variable that some import of the lifecycle takes."""
    handed, assigned = {}, {}
    for path in sorted(glob.glob(os.path.join(ROLES, '*', 'tasks', '*.yml'))):
        for task, _enclosing, _section in _leaves(_load(path), os.path.dirname(path)):
            include = task.get('ansible.builtin.import_role') or task.get('ansible.builtin.include_role') or {}
            if include.get('name') == FINISH_ROLE:
                for name in task.get('vars') or {}:
                    handed.setdefault(name, []).append(path)
            for name in list(_set_fact(task) or {}) + ([task['register']] if task.get('register') else []):
                if name not in ('cacheable',):
                    assigned.setdefault(name, []).append(path)
    assert 'pggit_experiment_fault' in handed and 'pggit_experiment_fault_hosts' in handed  # the scan found the imports
    clashes = dict((name, (handed[name], assigned[name])) for name in handed if name in assigned)
    assert clashes == {}


def test_no_role_settles_a_lifecycle_input_as_a_fact():
    """begin and finish take their settings (duration, ttl, probe_interval, abort_after, ...) from the play, the
    importing role's vars or the defaults. Facts outrank all of those and outlive the role: a fact named like one of
    them (begin once settled duration and ttl as facts) would hold the first experiment's value for every later one on
    the host, whatever the play or the next role says."""
    with open(os.path.join(ROLES, 'pggit_experiment', 'meta', 'argument_specs.yml')) as handle:
        specs = yaml.safe_load(handle)['argument_specs']
    inputs = set(specs['begin']['options']) | set(specs['finish']['options'])
    assert {'pggit_experiment_duration', 'pggit_experiment_ttl', 'pggit_experiment_probe_interval'} <= inputs
    settled = {}
    for path in sorted(glob.glob(os.path.join(ROLES, '*', 'tasks', '*.yml'))):
        for task, _enclosing, _section in _leaves(_load(path), os.path.dirname(path)):
            for name in list(_set_fact(task) or {}) + ([task['register']] if task.get('register') else []):
                if name in inputs:
                    settled.setdefault(name, []).append(os.path.relpath(path, ROLES))
    assert settled == {}
