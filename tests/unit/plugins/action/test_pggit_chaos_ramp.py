"""The ramp's action: plans before anything runs, returns the entry once, when the ramp is done."""
from __future__ import annotations

from unittest.mock import MagicMock

from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_ramp import ActionModule

RAMP = '{"param": "chaos_latency_ms", "from": 10, "to": 40, "factor": 2}'


def run(args):
    task = MagicMock(args=args, async_val=0, check_mode=False, action='pggit.chaos.pggit_chaos_ramp')
    connection = MagicMock()
    action = ActionModule(task, connection, MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    result = action.run(task_vars={'inventory_hostname': 'lab-1'})
    connection.exec_command.assert_not_called()
    return result


def step(p95, n):
    return dict(experiment='network_latency', experiment_id='s%d' % n, status='passed', reasons=[], reverted=True,
                evidence={'ddl_latency_ms_during': {'p95': p95}}, timings={}, timeline={'started_at': n, 'finished_at': n + 1})


def test_the_plan_gives_the_levels_and_no_entry():
    result = run(dict(ramp=RAMP, experiments='network_latency', slo_ms='100'))
    assert 'failed' not in result and result['levels'] == [10, 20, 40] and result['next_level'] == 10
    assert result['done'] is False and 'pggit_chaos_entry' not in result


def test_bad_input_fails_the_task_with_the_reason():
    result = run(dict(ramp=RAMP, experiments=['network_latency', 'disk_full']))
    assert result['failed'] is True and 'exactly one experiment' in result['msg'] and 'disk_full' in result['msg']
    assert 'pggit_chaos_entry' not in result


def test_the_entry_comes_once_the_ramp_stopped():
    going = run(dict(ramp=RAMP, experiments=['network_latency'], slo_ms=100, steps=[step(50, 0)]))
    assert going['done'] is False and going['next_level'] == 20 and 'pggit_chaos_entry' not in going
    done = run(dict(ramp=RAMP, experiments=['network_latency'], slo_ms=100, steps=[step(50, 0), step(150, 1)]))
    assert done['done'] is True and (done['last_passing'], done['first_failing']) == (10, 20)
    entry = done['pggit_chaos_entry']
    assert entry['host'] == 'lab-1' and entry['experiment'] == 'ramp(network_latency)' and entry['status'] == 'passed'
    assert done['msg'] == entry['ramp']['summary']


def test_per_step_lists_keep_each_verdict_at_its_own_level():
    # As roles/pggit_chaos_ramp/tasks/step.yml passes them: per step, the entries it appended. The second step
    # appended none, so it has no verdict; the third step's entry must never be taken as the second's.
    result = run(dict(ramp=RAMP, experiments=['network_latency'], slo_ms=100, steps=[[step(50, 0)], []]))
    assert 'failed' not in result, result.get('msg')
    assert result['done'] is True and result['inconclusive'] is True
    assert (result['last_passing'], result['first_failing']) == (10, None)
    assert [row['level'] for row in result['steps']] == [10, 20] and result['steps'][1]['status'] == 'missing'
    assert result['pggit_chaos_entry']['status'] == 'failed'


def test_check_mode_plans_every_step():
    planned = dict(step(50, 0), status='skipped', reverted=None, skipped_reason='check mode: planned only, nothing injected')
    task = MagicMock(args=dict(ramp=RAMP, experiments=['network_latency'], steps=[[planned]]), async_val=0, check_mode=True,
                     action='pggit.chaos.pggit_chaos_ramp')
    action = ActionModule(task, MagicMock(), MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    result = action.run(task_vars={'inventory_hostname': 'lab-1'})
    assert result['done'] is False and result['next_level'] == 20 and result['first_failing'] is None
