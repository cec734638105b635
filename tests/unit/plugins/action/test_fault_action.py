from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from inventory_fixture import Inventory, hosts

from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_connections import ActionModule as ConnectionsAction
from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_revert import ActionModule as RevertAction
from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_trigger import ActionModule as TriggerAction
from ansible_collections.pggit.chaos.plugins.plugin_utils._fault_action import FaultActionModule, RevertActionModule

MODULE_RESULT = {'changed': True, 'fault_id': 'trigger--off'}
MISSING = object()


class Templar(object):
    """Resolves '{{ name }}' from a dict, like the real templar does from host vars."""

    def __init__(self, variables):
        self.variables = variables

    def template(self, value):
        if isinstance(value, str) and value.startswith('{{'):
            return self.variables[value.strip('{} ')]
        return value

    def copy_with_new_env(self, available_variables=None):
        return Templar(available_variables or {})


@pytest.fixture
def folder(tmp_path):
    return tmp_path / 'inventory'


def make_inventory(folder, allowed=MISSING, state_dir=MISSING, **pg1):
    """pg1 with the given inventory opt-in, state dir and other variables."""
    if allowed is not MISSING:
        pg1['pggit_chaos_allowed'] = allowed
    if state_dir is not MISSING:
        pg1['pggit_chaos_state_dir'] = state_dir
    return Inventory(folder, hosts(pg1=pg1))


def run(action_cls, args, inventory, async_val=0, variables=None, overrides=None, delegate_to=None, delegated_overrides=None,
        transport=None):
    """Run the action for pg1; ``overrides`` are what extra vars or task/play vars add on top of the inventory.

    ``transport``: the connection plugin the task uses (a MagicMock connection names none)."""
    task = MagicMock(args=dict(args), async_val=async_val, check_mode=False, delegate_to=delegate_to,
                     action='pggit_chaos_x', resolved_action='pggit.chaos.pggit_chaos_x')
    connection = MagicMock()
    if transport:
        connection._load_name = transport
    action = action_cls(task, connection, MagicMock(), loader=None, templar=Templar(variables or {}), shared_loader_obj=None)
    action._execute_module = MagicMock(return_value=dict(MODULE_RESULT))
    task_vars = inventory.task_vars('pg1', **(overrides or {}))
    if delegate_to:
        task_vars['ansible_delegated_vars'] = {delegate_to: inventory.task_vars(delegate_to, **(delegated_overrides or {}))}
    result = action.run(task_vars=task_vars)
    assert task.args == args  # the task itself is never rewritten
    return result, action._execute_module


def module_args(execute):
    execute.assert_called_once()
    return execute.call_args.kwargs['module_args']


@pytest.mark.parametrize('allowed, shown', [
    (MISSING, 'not set'), (None, 'None'), (False, 'false'), ('false', "'false'"), ('no', "'no'"), ('maybe', "'maybe'"), ('', "''"),
    ('{{ nope }}', 'false'),  # judged after templating, from inventory variables
])
@pytest.mark.parametrize('action_cls', [TriggerAction, ConnectionsAction])
def test_host_without_opt_in_is_refused_before_anything_runs(folder, action_cls, allowed, shown):
    inventory = make_inventory(folder, allowed=allowed, nope=False)
    result, execute = run(action_cls, {'name': 'off'}, inventory)
    execute.assert_not_called()
    assert (result['failed'], result['changed'], result['refused']) == (True, False, True)
    assert 'host pg1 has not opted in to chaos: pggit_chaos_allowed is %s in its inventory' % shown in result['msg']
    assert 'set pggit_chaos_allowed: true in the inventory' in result['msg']


@pytest.mark.parametrize('inventory_value', [MISSING, False, 'no'])
@pytest.mark.parametrize('override', [True, 'true', 'yes'])
@pytest.mark.parametrize('action_cls', [TriggerAction, ConnectionsAction])
def test_extra_vars_or_task_vars_cannot_raise_the_opt_in(folder, action_cls, inventory_value, override):
    result, execute = run(action_cls, {'name': 'off'}, make_inventory(folder, allowed=inventory_value),
                          overrides={'pggit_chaos_allowed': override})
    execute.assert_not_called()
    assert result['refused'] and result['failed']
    assert 'has not opted in to chaos in its inventory' in result['msg']
    assert 'an extra-var or play var cannot override it' in result['msg']
    assert result['opt_in']['effective'] == override


@pytest.mark.parametrize('lowered', [False, 'false', 'no', 'maybe'])
def test_a_play_or_extra_var_can_lower_the_opt_in(folder, lowered):
    result, execute = run(TriggerAction, {'name': 'off'}, make_inventory(folder, allowed=True), overrides={'pggit_chaos_allowed': lowered})
    execute.assert_not_called()
    assert result['refused'] and 'lowered it' in result['msg']


@pytest.mark.parametrize('allowed', [True, 'true', 'yes', '{{ ok }}'])
def test_opted_in_host_runs_the_module_with_its_state_dir(folder, allowed):
    inventory = Inventory(folder, hosts(pg1={'pggit_chaos_allowed': allowed, 'ok': True, 'pggit_chaos_state_dir': '{{ dir }}'}))
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, async_val=45, variables={'ok': True, 'dir': '/srv/chaos'})
    assert result == MODULE_RESULT
    execute.assert_called_once_with(module_name='pggit.chaos.pggit_chaos_x', module_args={'name': 'off', 'state_dir': '/srv/chaos'},
                                    task_vars=execute.call_args.kwargs['task_vars'], wrap_async=45)


@pytest.mark.parametrize('task_host, delegate, allowed', [
    (True, False, False),   # the delegate takes the fault: its inventory decides
    (False, True, True),
    (True, True, True),
])
def test_delegated_fault_obeys_the_delegates_inventory(folder, task_host, delegate, allowed):
    inventory = Inventory(folder, hosts(pg1={'pggit_chaos_allowed': task_host}, pg2={'pggit_chaos_allowed': delegate}))
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='pg2')
    assert bool(execute.called) is allowed
    if not allowed:
        assert result['msg'].startswith('host pg2 has not opted in to chaos')


def test_delegate_cannot_be_raised_by_extra_vars_either(folder):
    inventory = Inventory(folder, hosts(pg1={'pggit_chaos_allowed': True}, pg2={'pggit_chaos_allowed': False}))
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='pg2', overrides={'pggit_chaos_allowed': True},
                          delegated_overrides={'pggit_chaos_allowed': True})
    execute.assert_not_called()
    assert 'host pg2 has not opted in to chaos in its inventory' in result['msg']


def test_a_delegate_outside_the_inventory_is_refused(folder):
    inventory = make_inventory(folder, allowed=True)
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='pg9')
    execute.assert_not_called()
    assert result['msg'].startswith('host pg9 is not in the inventory')


@pytest.mark.parametrize('args, state_dir, expected', [
    ({'name': 'off', 'state_dir': '/explicit'}, '/from/hostvars', '/explicit'),
    ({'name': 'off'}, MISSING, None),
    ({'name': 'off'}, None, None),
    ({'name': 'off'}, '', None),
])
def test_state_dir_from_host_var_only_when_not_given(folder, args, state_dir, expected):
    dummy, execute = run(TriggerAction, args, make_inventory(folder, allowed=True, state_dir=state_dir))
    assert module_args(execute).get('state_dir') == expected


@pytest.mark.parametrize('allowed', [MISSING, False])
def test_revert_by_state_absent_needs_no_opt_in(folder, allowed):
    result, execute = run(TriggerAction, {'name': 'off', 'state': 'absent'}, make_inventory(folder, allowed=allowed, state_dir='/srv/chaos'))
    assert 'refused' not in result
    assert module_args(execute) == {'name': 'off', 'state': 'absent', 'state_dir': '/srv/chaos'}


@pytest.mark.parametrize('allowed', [MISSING, False, 'no'])
def test_revert_module_never_refuses(folder, allowed):
    result, execute = run(RevertAction, {}, make_inventory(folder, allowed=allowed, state_dir='/srv/chaos'))
    assert result == MODULE_RESULT
    assert module_args(execute) == {'state_dir': '/srv/chaos'}


def test_connections_action_gets_the_state_dir_and_needs_opt_in(folder):
    # kill_connections is a ledger-recorded fault like the others (its kill rounds are a recorded program).
    result, execute = run(ConnectionsAction, {'name': 'k', 'count': 1}, make_inventory(folder, allowed=True, state_dir='/srv/chaos'))
    assert result == MODULE_RESULT
    assert module_args(execute) == {'name': 'k', 'count': 1, 'state_dir': '/srv/chaos'}


def test_action_plugins_wire_the_right_guard():
    assert issubclass(TriggerAction, FaultActionModule) and TriggerAction.REQUIRES_OPT_IN and TriggerAction.INJECT_STATE_DIR
    assert issubclass(RevertAction, RevertActionModule) and not RevertAction.REQUIRES_OPT_IN and RevertAction.INJECT_STATE_DIR
    assert ConnectionsAction.REQUIRES_OPT_IN and ConnectionsAction.INJECT_STATE_DIR


# -- the inventory as parsed, the implicit localhost, and where the fault lands ----------------------
def test_add_host_cannot_raise_the_opt_in(folder):
    inventory = make_inventory(folder, allowed=False)
    inventory.add_host('pg1', pggit_chaos_allowed=True)  # add_host: {name: pg1, pggit_chaos_allowed: true}
    result, execute = run(TriggerAction, {'name': 'off'}, inventory)
    execute.assert_not_called()
    assert 'host pg1 has not opted in to chaos in its inventory (pggit_chaos_allowed is false there)' in result['msg']


def test_a_host_added_at_run_time_is_refused(folder):
    inventory = make_inventory(folder, allowed=True)
    inventory.add_host('pg9', groups=['db'], pggit_chaos_allowed=True, ansible_connection='local')
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='pg9')
    execute.assert_not_called()
    assert result['msg'].startswith('host pg9 is not in the inventory')


@pytest.mark.parametrize('delegate', ['localhost', '127.0.0.1'])
def test_delegating_to_the_implicit_localhost_is_refused_even_with_an_all_group_opt_in(folder, delegate):
    inventory = Inventory(folder, {'all': {'vars': {'pggit_chaos_allowed': True},
                                           'children': {'db': {'hosts': {'pg1': {'ansible_connection': 'local'}}}}}})
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to=delegate)
    execute.assert_not_called()
    assert result['refused'] and result['msg'].startswith('host %s has not opted in to chaos: it is not in the inventory' % delegate)


def test_localhost_listed_with_the_opt_in_may_take_a_delegated_fault(folder):
    inventory = Inventory(folder, {'all': {'hosts': {'localhost': {'pggit_chaos_allowed': True, 'ansible_connection': 'local'}},
                                           'children': {'db': {'hosts': {'pg1': {'ansible_connection': 'local'}}}}}})
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='localhost')
    assert result == MODULE_RESULT


def address_inventory(folder):
    return Inventory(folder, hosts(pg1={'pggit_chaos_allowed': True, 'ansible_host': '198.18.0.11'},
                                   pg2={'pggit_chaos_allowed': True, 'ansible_host': '198.18.0.12'}))


def test_a_redirected_connection_is_refused(folder):
    result, execute = run(TriggerAction, {'name': 'off'}, address_inventory(folder), overrides={'ansible_host': 'prod'})
    execute.assert_not_called()
    assert result['refused'] and result['msg'] == ("host pg1: ansible_host is 'prod' here but '198.18.0.11' in the inventory: "
                                                   "the opt-in belongs to the inventory's host; refusing")
    assert result['opt_in']['connection'] == {'variable': 'ansible_host', 'here': 'prod', 'inventory': '198.18.0.11'}


def test_a_templated_redirect_is_resolved_before_it_is_compared(folder):
    result, execute = run(TriggerAction, {'name': 'off'}, address_inventory(folder), variables={'target': 'prod'},
                          overrides={'ansible_host': '{{ target }}'})
    execute.assert_not_called()
    assert "ansible_host is 'prod' here but '198.18.0.11' in the inventory" in result['msg']


def test_a_redirected_delegate_is_refused(folder):
    result, execute = run(TriggerAction, {'name': 'off'}, address_inventory(folder), delegate_to='pg2',
                          delegated_overrides={'ansible_host': 'prod', 'ansible_port': 2222})
    execute.assert_not_called()
    assert result['msg'].startswith("host pg2: ansible_host is 'prod' here but '198.18.0.12' in the inventory")


def test_the_inventorys_connection_passes(folder):
    result, execute = run(TriggerAction, {'name': 'off'}, address_inventory(folder), delegate_to='pg2')
    assert result == MODULE_RESULT


@pytest.mark.parametrize('transport, allowed', [('ssh', True), ('local', False)])
def test_a_delegates_connection_plugin_counts_when_no_variable_names_it(folder, transport, allowed):
    # delegate_to: pg2 under -c local: nothing in pg2's variables says local, but the connection plugin does.
    inventory = Inventory(folder, {'all': {'hosts': {'pg1': {'pggit_chaos_allowed': True, 'ansible_connection': 'local'},
                                                     'pg2': {'pggit_chaos_allowed': True}}}})
    result, execute = run(TriggerAction, {'name': 'off'}, inventory, delegate_to='pg2', transport=transport)
    assert bool(execute.called) is allowed
    if not allowed:
        assert "ansible_connection is 'local' here but not set in the inventory (Ansible's default: 'ssh')" in result['msg']


def test_an_action_that_judges_the_target_does_not_police_the_clients_connection(folder):
    # pggit_workload: the target's opt-in decides and the client (here the implicit localhost) only runs the load; where
    # that load goes is the database's login_host, which this guard does not police.
    class TargetAction(FaultActionModule):
        OPT_IN_OF = 'target'

    inventory = Inventory(folder, {'all': {'vars': {'pggit_chaos_allowed': False},
                                           'hosts': {'pg1': {'pggit_chaos_allowed': True, 'ansible_connection': 'local'}}}})
    result, execute = run(TargetAction, {'name': 'off'}, inventory, delegate_to='localhost', transport='local')
    assert result == MODULE_RESULT
    result, execute = run(TargetAction, {'name': 'off'}, inventory, overrides={'ansible_host': 'prod'})
    execute.assert_not_called()
    assert "host pg1: ansible_host is 'prod' here but not set in the inventory" in result['msg']
