"""pggit_workload's guard: the database host's opt-in decides, even when the workload runs on a client."""
from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from inventory_fixture import Inventory, hosts

from ansible_collections.pggit.chaos.plugins.action.pggit_workload import ActionModule as WorkloadAction
from ansible_collections.pggit.chaos.plugins.plugin_utils._fault_action import FaultActionModule

RESULT = {'changed': True, 'check': {}}


class Templar(object):
    def template(self, value):
        return value

    def copy_with_new_env(self, available_variables=None):
        return Templar()


def run(inventory, args, delegate_to=None):
    task = MagicMock(args=dict(args), async_val=0, check_mode=False, delegate_to=delegate_to,
                     action='pggit_workload', resolved_action='pggit.chaos.pggit_workload')
    action = WorkloadAction(task, MagicMock(), MagicMock(), loader=None, templar=Templar(), shared_loader_obj=None)
    action._execute_module = MagicMock(return_value=dict(RESULT))
    task_vars = inventory.task_vars('pg1')
    if delegate_to:
        task_vars['ansible_delegated_vars'] = {delegate_to: inventory.task_vars(delegate_to)}
    return action.run(task_vars=task_vars), action._execute_module


def inventory(tmp_path, pg1_allowed, client_allowed, client_state_dir='/var/lib/client-chaos'):
    pg1 = {'pggit_chaos_state_dir': '/var/lib/pg1-chaos'}
    client = {'pggit_chaos_state_dir': client_state_dir}
    if pg1_allowed is not None:
        pg1['pggit_chaos_allowed'] = pg1_allowed
    if client_allowed is not None:
        client['pggit_chaos_allowed'] = client_allowed
    return Inventory(tmp_path / 'inventory', hosts(pg1=pg1, client=client))


def test_it_is_a_fault_action():
    assert issubclass(WorkloadAction, FaultActionModule) and WorkloadAction.REQUIRES_OPT_IN


@pytest.mark.parametrize('client_allowed', [None, False, True])
def test_database_host_without_opt_in_is_refused_even_from_an_opted_in_client(tmp_path, client_allowed):
    result, execute = run(inventory(tmp_path, None, client_allowed), {'run_id': 'r1'}, delegate_to='client')
    execute.assert_not_called()
    assert result['refused'] and result['failed'] and result['changed'] is False
    assert 'host pg1 has not opted in' in result['msg']


@pytest.mark.parametrize('client_allowed', [None, False])
def test_opted_in_database_host_runs_on_a_client_that_did_not_opt_in_with_the_clients_state_dir(tmp_path, client_allowed):
    result, execute = run(inventory(tmp_path, True, client_allowed), {'run_id': 'r1'}, delegate_to='client')
    assert result == RESULT
    assert execute.call_args.kwargs['module_args'] == {'run_id': 'r1', 'state_dir': '/var/lib/client-chaos'}


def test_not_delegated_is_the_usual_guard(tmp_path):
    result, execute = run(inventory(tmp_path, None, True), {'run_id': 'r1'})
    execute.assert_not_called()
    assert result['refused'] and 'host pg1 has not opted in' in result['msg']
    result, execute = run(inventory(tmp_path, True, None), {'run_id': 'r1'})
    assert execute.call_args.kwargs['module_args'] == {'run_id': 'r1', 'state_dir': '/var/lib/pg1-chaos'}


def test_stopping_and_dropping_need_no_opt_in(tmp_path):
    result, execute = run(inventory(tmp_path, None, None), {'run_id': 'r1', 'state': 'absent'}, delegate_to='client')
    assert result == RESULT
