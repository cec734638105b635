"""roles/pggit_experiment/tasks/finish.yml's own expressions (no lab): which hosts it reverts now and after the
workload, and the workload the verdict judges when the latency client's workload is collected after the revert.

The expressions are read from finish.yml and rendered by Jinja with the collection's filters under their
pggit.chaos names (and Ansible's ``bool``), so a change to the wiring in finish.yml is what these tests see."""
from __future__ import annotations

import os

import jinja2
import pytest
import yaml

from ansible.plugins.filter.core import to_bool

from ansible_collections.pggit.chaos.plugins.filter.chaos_revert_plan import chaos_revert_plan
from ansible_collections.pggit.chaos.plugins.filter.chaos_window_latency import chaos_window_latency
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import _latency_mark

FINISH = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles', 'pggit_experiment', 'tasks', 'finish.yml')
OMIT = '__omit_place_holder__'


def task(name):
    with open(FINISH) as handle:
        found = [t for t in yaml.safe_load(handle) if t.get('name') == name]
    assert len(found) == 1, name
    return found[0]


def render(expr, **variables):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update({'pggit.chaos.chaos_revert_plan': chaos_revert_plan,
                        'pggit.chaos.chaos_window_latency': chaos_window_latency, 'bool': to_bool})
    body = expr.strip()
    assert body.startswith('{{') and body.endswith('}}'), expr
    return env.compile_expression(body[2:-2].strip(), undefined_to_none=False)(omit=OMIT, **variables)


JOB = {'ansible_job_id': 'j1.2'}
CLOSED = {'result': 'reverted'}


def facts(**over):
    base = dict(inventory_hostname='lab-1', pggit_experiment_fault_hosts=[], pggit_experiment_workload_host='localhost',
                pggit_experiment_workload=None, pggit_experiment_workload_job=JOB, pggit_experiment_error='',
                pggit_experiment_aborted=False, pggit_experiment_workload_baseline={'closed': CLOSED})
    base.update(over)
    return base


def plan(**over):
    variables = facts(**over)
    expr = task("Stamp the timeline with revert_start, and choose the hosts to revert now and whether the workload's host waits")
    return render(expr['ansible.builtin.set_fact']['pggit_experiment_revert_plan'], **variables)


def later(wait, **over):
    variables = facts(**over)
    variables.update(pggit_experiment_revert_plan=plan(**over), pggit_experiment_workload_wait=wait)
    expr = task("Revert what is left on the workload's host, now that its workload has ended")['loop']
    return render(expr, **variables)


def test_a_window_that_ended_well_reverts_the_target_first_and_the_client_after_its_workload():
    assert plan() == {'now': ['lab-1'], 'later': ['localhost']}
    assert later({'finished': 1, 'closed': CLOSED}) == []
    # A workload that timed out, failed before closing its record, or could not close it: the client is reverted.
    for wait in ({'finished': 0}, {'finished': 1, 'failed': True, 'msg': 'timed out'},
                 {'finished': 1, 'closed': {'result': 'failed', 'error': 'x'}}):
        assert later(wait) == ['localhost'], wait
    # The baseline's own record too.
    assert later({'finished': 1, 'closed': CLOSED},
                 pggit_experiment_workload_baseline={'closed': {'result': 'failed'}}) == ['localhost']


@pytest.mark.parametrize('over', [dict(pggit_experiment_error='inject failed'), dict(pggit_experiment_aborted=True),
                                  dict(pggit_experiment_aborted='true')])
def test_an_abort_or_an_error_reverts_the_client_at_once(over):
    assert plan(**over) == {'now': ['lab-1', 'localhost'], 'later': []}
    assert later({'finished': 0}, **over) == []


@pytest.mark.parametrize('over', [dict(pggit_experiment_workload_job=None),  # skipped, check mode, inject failed
                                  dict(pggit_experiment_workload_job={'skipped': True}),
                                  dict(pggit_experiment_workload={'finished': 1}),  # collected by the role (compose)
                                  dict(pggit_experiment_workload_host='lab-1')])  # the workload runs on the target
def test_no_pending_workload_on_a_host_of_its_own_reverts_every_host_at_once(over):
    expected = ['lab-1'] if over.get('pggit_experiment_workload_host') == 'lab-1' else ['lab-1', 'localhost']
    assert plan(**over) == {'now': expected, 'later': []}


def verdict_workload(wait, revert_start, **over):
    variables = facts(**over)
    variables.update(pggit_experiment_revert_plan=plan(**over), pggit_experiment_workload_wait=wait,
                     pggit_experiment_timeline={'revert_start': revert_start})
    return render(task('Record the experiment for the report')['pggit.chaos.pggit_chaos_verdict']['workload'], **variables)


def ops(start, count, ms, step):
    return [[round(start + n * step, 3), ms, 'ok'] for n in range(count)]


REVERT = 1000.0
BASELINE = {'latency_ms': {'p50': 8.0}}
PARAMETERS = {'delay_ms': 100, 'loss_pct': 0}


def test_the_latency_verdict_judges_the_ddl_run_through_the_delay_not_the_fast_tail_after_the_revert():
    # Review: the workload starts its loop after preparing through the delay (seconds at high delays), so it runs on
    # past the revert; its fast DDL there (8 ms, 16 a second) outnumber the slow ones and the whole run's p50 hid the
    # 100 ms delay: a fault that happened was judged as one that did not.
    slow, fast = ops(REVERT - 8.0, 20, 350.0, 0.4), ops(REVERT + 0.5, 30, 8.0, 0.06)
    wait = {'finished': 1, 'closed': CLOSED, 'op_times': slow + fast, 'errors': {},
            'latency_ms': {'p50': 8.0, 'p95': 350.0, 'p99': 350.0, 'max': 350.0}}
    workload = verdict_workload(wait, REVERT)
    assert workload['latency_ms']['p50'] == 350.0 and workload['latency_ops_after_cutoff'] == 30
    assert workload['latency_ms_whole_run'] == wait['latency_ms']
    reasons, evidence = _latency_mark(dict(parameters=PARAMETERS, workload_baseline=BASELINE, workload=workload))
    assert reasons == [] and evidence['added_p50_ms'] == 342.0


def test_the_window_cut_never_makes_a_fault_that_did_not_happen_pass():
    fast = ops(REVERT - 8.0, 100, 8.0, 0.06)
    for op_times in (fast, ops(REVERT + 0.1, 20, 350.0, 0.4)):  # no delay at all; slow only after the revert
        wait = {'finished': 1, 'op_times': op_times, 'errors': {}, 'latency_ms': {'p50': 350.0, 'max': 350.0}}
        reasons, _evidence = _latency_mark(dict(parameters=PARAMETERS, workload_baseline=BASELINE,
                                                workload=verdict_workload(wait, REVERT)))
        assert reasons and reasons[0].startswith('the fault did not happen'), op_times[:1]


def test_a_workload_collected_before_the_revert_or_stopped_at_once_is_judged_as_it_is():
    wait = {'finished': 1, 'op_times': ops(REVERT + 1, 5, 8.0, 0.1), 'latency_ms': {'p50': 8.0}}
    assert verdict_workload(wait, REVERT, pggit_experiment_aborted=True) == wait
    collected = {'finished': 1, 'latency_ms': {'p50': 9.0}}
    assert verdict_workload(None, REVERT, pggit_experiment_workload=collected) == collected


LOSS = {'delay_ms': 0, 'loss_pct': 10}


def test_the_loss_verdict_counts_only_the_errors_before_the_revert():
    # Review (stop 15): the workload's errors cover its whole run; one after the revert (the link is clean again) must
    # not mark a loss that never showed in the window.
    fast = ops(REVERT - 8.0, 100, 8.0, 0.06)
    wait = {'finished': 1, 'op_times': fast + [[REVERT + 0.5, 30.0, 'fail']], 'errors': {'OperationalError': 1},
            'latency_ms': {'p50': 8.0, 'max': 30.0}}
    reasons, evidence = _latency_mark(dict(parameters=LOSS, workload=verdict_workload(wait, REVERT)))
    assert reasons and reasons[0].startswith('the fault did not happen') and evidence['failed_ddl_by_revert'] == 0
    # A DDL that failed in the window marks it.
    wait['op_times'] = fast + [[REVERT - 1.0, 300.0, 'unknown']]
    reasons, evidence = _latency_mark(dict(parameters=LOSS, workload=verdict_workload(wait, REVERT)))
    assert reasons == [] and evidence['failed_ddl_by_revert'] == 1
    # So does a slow one, as before; and a workload judged as it came (no cut) still counts its errors.
    wait['op_times'] = fast + [[REVERT - 2.0, 450.0, 'ok']]
    assert _latency_mark(dict(parameters=LOSS, workload=verdict_workload(wait, REVERT)))[0] == []
    assert _latency_mark(dict(parameters=LOSS, workload={'latency_ms': {'max': 9.0}, 'errors': {'x': 1}}))[0] == []


def test_the_loss_verdict_counts_a_ddl_the_loss_held_open_past_the_revert():
    # Review (stop 15): at a high loss the DDL in flight waits on TCP's retransmissions until the link is clean again,
    # so it ends after the revert's start: the cut left it out, and the window held only the fast DDL before the loss.
    fast = ops(REVERT - 8.0, 50, 8.0, 0.06)
    held = fast + [[REVERT - 3.0, 3600.0, 'ok']]
    wait = {'finished': 1, 'op_times': held, 'errors': {}, 'latency_ms': {'p50': 8.0, 'max': 3600.0}}
    reasons, evidence = _latency_mark(dict(parameters=LOSS, workload=verdict_workload(wait, REVERT)))
    assert reasons == [] and evidence['ddl_open_at_revert_ms'] == 3000.0
    # One that had run for less than the loss mark when the revert began proves nothing.
    wait['op_times'] = fast + [[REVERT - 0.05, 900.0, 'ok']]
    reasons, evidence = _latency_mark(dict(parameters=LOSS, workload=verdict_workload(wait, REVERT)))
    assert reasons and reasons[0].startswith('the fault did not happen') and evidence['ddl_open_at_revert_ms'] == 50.0
