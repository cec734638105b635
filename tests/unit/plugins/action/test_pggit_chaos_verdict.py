from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail

from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_verdict import ActionModule

HEALTHY = dict(healthy=True, checks=[])


def run(args, check_mode=False, task_vars=None):
    task = MagicMock(args=args, async_val=0, check_mode=check_mode, action='pggit.chaos.pggit_chaos_verdict')
    connection = MagicMock()
    action = ActionModule(task, connection, MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    result = action.run(task_vars={'inventory_hostname': 'pg1'} if task_vars is None else task_vars)
    connection.exec_command.assert_not_called()
    return result


def test_passed_record_defaults_host():
    result = run(dict(experiment='tracking-off', fault_check='none', steady_state=dict(before=HEALTHY, after=HEALTHY), reverted=True,
                      timings=dict(started_at='1700000000', finished_at=1700000010.5)))
    assert result['changed'] is False
    assert 'failed' not in result
    assert result['status'] == 'passed'
    assert result['msg'] == 'tracking-off@pg1: passed'
    entry = result['pggit_chaos_entry']
    assert entry['host'] == 'pg1'
    assert entry['timings']['total_s'] == 10.5
    assert entry['drift'] == [] and entry['parameters'] == {}


@pytest.mark.parametrize('check_mode', [False, True])
def test_failed_experiment_does_not_fail_the_task(check_mode):
    result = run(dict(experiment='lock-storm', host='pg2', reverted=False), check_mode=check_mode)
    assert 'failed' not in result
    assert result['status'] == 'failed'
    assert result['msg'] == 'lock-storm@pg2: failed'
    assert any(r.startswith('revert failed') for r in result['pggit_chaos_entry']['reasons'])


@pytest.mark.parametrize('args, message', [
    (dict(), 'experiment'),
    (dict(experiment='x', steady_state='healthy'), 'dictionary requested'),  # core reports the first error only
    (dict(experiment='x', timings=dict(started_at='yesterday')), 'started_at'),
    (dict(experiment='x', timings=dict(begun=1.0)), 'begun'),
    (dict(experiment='x', reverted='maybe'), 'reverted'),
    (dict(experiment='x', fault_check='vibes'), 'fault_check'),
    (dict(experiment='x', revert_results='all good'), 'revert_results'),
    (dict(experiment='x', revert_results=[], reverted=True), 'mutually exclusive: revert_results|reverted'),
    (dict(experiment='x', revert_results=[], revert={}), 'mutually exclusive: revert_results|revert'),
    (dict(experiment='x', history_at_window_end=dict(standby={})), 'standby'),
])
def test_bad_arguments_are_rejected(args, message):
    with pytest.raises(AnsibleActionFail, match=message):
        run(args)


def test_raw_facts_are_judged_by_the_action():
    """The finish role hands over registered results as they are; the action judges them."""
    after = dict(healthy=True, checks=[dict(name='connect', status='ok', critical=True)], history=dict(rows=5, digest='abc'))
    args = dict(
        experiment='region_partition', steady_state=dict(before=HEALTHY, during=HEALTHY, after=after),
        revert_results=[dict(item='pg1', reverted=[], failures=[]), dict(item='pg3', reverted=[dict(id='partition--p')], failures=[])],
        converge_results=[dict(item='pg3', history=dict(rows=5, digest='abc'))],
        history_at_window_end=dict(primary=dict(rows=5, digest='abc'), replicas=[dict(item='pg3', history=dict(rows=5, digest='old'))]),
        parameters=dict(full_isolation=False),
    )
    result = run(args)
    assert result['status'] == 'failed'
    assert result['pggit_chaos_entry']['reasons'] == ['the partition did not happen: pg3 holds 5 history rows, the primary 5']
    assert result['pggit_chaos_entry']['reverted'] is True
    args['history_at_window_end']['replicas'][0]['history']['rows'] = 2
    assert run(args)['status'] == 'passed'
    args['revert_results'][1] = dict(item='pg3', unreachable=True, msg='Failed to connect to the host via ssh')
    entry = run(args)['pggit_chaos_entry']
    assert entry['reverted'] is False and entry['status'] == 'failed'
    assert 'pg3: unreachable: Failed to connect to the host via ssh' in entry['reasons'][0]
