"""roles/pggit_chaos_latency/tasks/main.yml (no lab): a second run of the role on the same host (network_latency then
packet_loss in one play, a ramp's steps) starts from none of the first run's facts."""
from __future__ import annotations

import os
import re

import jinja2
import yaml

from ansible_collections.pggit.chaos.plugins.filter.chaos_revert_plan import chaos_revert_plan

ROLE = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles', 'pggit_chaos_latency', 'tasks', 'main.yml')


def _walk(items):
    for item in items or []:
        yield item
        for key in ('block', 'rescue', 'always'):
            yield from _walk(item.get(key))


def role():
    with open(ROLE) as handle:
        return yaml.safe_load(handle)


def written_by_the_role(tasks):
    """Every role fact a task of the experiment's block registers or sets."""
    names = set()
    for item in _walk(tasks):
        if isinstance(item.get('register'), str):
            names.add(item['register'])
        names.update(k for k in (item.get('ansible.builtin.set_fact') or {}) if k.startswith('pggit_chaos_latency_'))
    return names


def finish_vars(tasks):
    finish = [t for t in _walk(tasks) if t.get('name') == 'Finish the experiment']
    assert len(finish) == 1
    return finish[0]['vars']


def test_every_fact_finish_reads_is_forgotten_before_the_experiment_starts():
    tasks = role()
    experiment = next(n for n, t in enumerate(tasks) if 'block' in t)
    reset = {}
    for item in tasks[:experiment]:
        reset.update(item.get('ansible.builtin.set_fact') or {})
    used = set()
    for expr in finish_vars(tasks).values():
        used.update(re.findall(r'\bpggit_chaos_latency_\w+', str(expr)))
    stale = sorted((used & written_by_the_role(tasks[experiment:])) - set(reset))
    assert stale == [], 'facts an earlier run leaves for finish to read: %s' % stale
    assert 'pggit_chaos_latency_error' in reset and 'pggit_chaos_latency_workload_job' in reset


def test_an_earlier_runs_error_does_not_stop_this_runs_workload_at_once():
    # Review: network_latency failed; packet_loss then ran well, but finish read the old error, reverted the client at
    # once (stopping packet_loss's workload, which finish now collects after the revert) and failed the experiment.
    tasks = role()
    experiment = next(n for n, t in enumerate(tasks) if 'block' in t)
    facts = dict(pggit_chaos_latency_error='aborted: probe failed', pggit_chaos_latency_aborted=True,
                 pggit_chaos_latency_during={'aborted': True}, pggit_chaos_latency_workload_job={'ansible_job_id': 'old'})
    for item in tasks[:experiment]:
        facts.update(item.get('ansible.builtin.set_fact') or {})
    facts.update(pggit_chaos_latency_client='localhost',
                 pggit_chaos_latency_workload_job={'ansible_job_id': 'new'})  # this run's job, registered in the block
    env = jinja2.Environment()
    values = {}
    for name in ('pggit_experiment_error', 'pggit_experiment_aborted', 'pggit_experiment_workload_job',
                 'pggit_experiment_during'):
        body = finish_vars(tasks)[name].strip()
        values[name] = env.compile_expression(body[2:-2].strip(), undefined_to_none=False)(**facts)
    assert values['pggit_experiment_error'] == '' and values['pggit_experiment_aborted'] is False
    assert values['pggit_experiment_during'] == {}
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True,
                             stop_workload=bool(values['pggit_experiment_error']) or values['pggit_experiment_aborted'])
    assert plan == {'now': ['lab-1'], 'later': ['localhost']}


def _baseline_task(tasks):
    return next(t for t in _walk(tasks) if t.get('name') == "Measure the client's DDL latency without the fault")


def _expression(body, **facts):
    return jinja2.Environment().compile_expression(body.strip()[2:-2].strip(), undefined_to_none=False)(**facts)


def test_only_a_delay_measures_a_baseline():
    # The verdict compares latencies only for a delay (added p50 >= delay_ms); loss alone is judged by the window's
    # slowest DDL and errors, so packet_loss saves the baseline's 2.4 s.
    conditions = _baseline_task(role())['when']
    env = jinja2.Environment()
    env.filters['float'] = float

    def runs(delay):
        return all(env.compile_expression(c)(ansible_check_mode=False, pggit_chaos_latency_delay_ms=delay) for c in conditions)

    assert runs(100) and runs('0.5') and not runs(0) and not runs('0')


def test_a_skipped_baseline_reaches_finish_as_none_and_a_measured_one_as_it_is():
    body = finish_vars(role())['pggit_experiment_workload_baseline']
    measured = {'latency_ms': {'p50': 3.0}, 'closed': {'result': 'reverted'}}
    assert _expression(body, pggit_chaos_latency_baseline={'skipped': True, 'changed': False}) is None
    assert _expression(body, pggit_chaos_latency_baseline=None) is None
    assert _expression(body, pggit_chaos_latency_baseline=measured) == measured
    # And so the client's records are not reverted once more after a loss experiment's workload closed its own.
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True,
                             workload_results=[{'closed': {'result': 'reverted'}}, None])
    assert plan['later'] == []
