"""pggit_chaos_corrupt writes into data files: its action plugin needs pggit_chaos_destructive: true from the host's own
inventory as well as pggit_chaos_allowed, judged by the same rule (the run can lower it, never raise it)."""
from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from inventory_fixture import Inventory, hosts

from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_corrupt import ActionModule as CorruptAction
from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_trigger import ActionModule as TriggerAction
from ansible_collections.pggit.chaos.plugins.plugin_utils import _optin

MODULE_RESULT = {'changed': True, 'fault_id': 'corrupt--pkey'}


class Templar(object):
    def __init__(self, variables):
        self.variables = variables

    def template(self, value):
        if isinstance(value, str) and value.startswith('{{'):
            return self.variables[value.strip('{} ')]
        return value

    def copy_with_new_env(self, available_variables=None):
        return Templar(available_variables or {})


def run(folder, pg1, args=None, overrides=None, action_cls=CorruptAction, delegate_to=None, pg2=None, delegated_overrides=None):
    inventory = Inventory(folder, hosts(pg1=pg1, **({'pg2': pg2} if pg2 is not None else {})))
    task = MagicMock(args=dict(args or {'name': 'pkey'}), async_val=0, check_mode=False, delegate_to=delegate_to,
                     action='pggit_chaos_corrupt', resolved_action='pggit.chaos.pggit_chaos_corrupt')
    action = action_cls(task, MagicMock(), MagicMock(), loader=None, templar=Templar({'yes_var': True}), shared_loader_obj=None)
    action._execute_module = MagicMock(return_value=dict(MODULE_RESULT))
    task_vars = inventory.task_vars('pg1', **(overrides or {}))
    if delegate_to:
        task_vars['ansible_delegated_vars'] = {delegate_to: inventory.task_vars(delegate_to, **(delegated_overrides or {}))}
    return action.run(task_vars=task_vars), action._execute_module


@pytest.fixture
def folder(tmp_path):
    return tmp_path / 'inventory'


@pytest.mark.parametrize('destructive, shown', [(None, 'not set'), (False, 'false'), ('no', "'no'"), ('maybe', "'maybe'")])
def test_without_the_destructive_opt_in_nothing_reaches_the_host(folder, destructive, shown):
    pg1 = {'pggit_chaos_allowed': True}
    if destructive is not None:
        pg1['pggit_chaos_destructive'] = destructive
    result, execute = run(folder, pg1)
    execute.assert_not_called()
    assert (result['failed'], result['changed'], result['refused']) == (True, False, True)
    assert ('host pg1 has not opted in to pggit_chaos_destructive: pggit_chaos_destructive is %s in its inventory' % shown
            in result['msg'])
    assert 'set pggit_chaos_destructive: true in the inventory' in result['msg']


@pytest.mark.parametrize('override', [True, 'yes'])
def test_an_extra_var_cannot_raise_the_destructive_opt_in(folder, override):
    result, execute = run(folder, {'pggit_chaos_allowed': True}, overrides={'pggit_chaos_destructive': override})
    execute.assert_not_called()
    assert 'has not opted in to pggit_chaos_destructive in its inventory' in result['msg'] and 'cannot override it' in result['msg']


def test_a_run_can_lower_the_destructive_opt_in(folder):
    result, execute = run(folder, {'pggit_chaos_allowed': True, 'pggit_chaos_destructive': True},
                          overrides={'pggit_chaos_destructive': False})
    execute.assert_not_called()
    assert 'lowered it' in result['msg'] and 'pggit_chaos_destructive is false for this run' in result['msg']


def test_the_first_opt_in_is_still_needed_and_judged_first(folder):
    result, execute = run(folder, {'pggit_chaos_destructive': True})
    execute.assert_not_called()
    assert result['msg'].startswith('host pg1 has not opted in to chaos: pggit_chaos_allowed is not set')


@pytest.mark.parametrize('destructive', [True, 'true', '{{ yes_var }}'])
def test_both_opt_ins_run_the_module(folder, destructive):
    result, execute = run(folder, {'pggit_chaos_allowed': True, 'pggit_chaos_destructive': destructive, 'yes_var': True})
    assert result == MODULE_RESULT
    execute.assert_called_once()


def test_a_delegated_fault_needs_the_delegates_destructive_opt_in(folder):
    allowed = {'pggit_chaos_allowed': True}
    result, execute = run(folder, dict(allowed, pggit_chaos_destructive=True), delegate_to='pg2', pg2=dict(allowed))
    execute.assert_not_called()
    assert result['msg'].startswith('host pg2 has not opted in to pggit_chaos_destructive')
    result, execute = run(folder, dict(allowed), delegate_to='pg2', pg2=dict(allowed, pggit_chaos_destructive=True))
    assert result == MODULE_RESULT


def test_revert_needs_no_destructive_opt_in(folder):
    result, execute = run(folder, {}, args={'name': 'pkey', 'state': 'absent'})
    assert result == MODULE_RESULT


def test_other_faults_do_not_ask_for_it(folder):
    result, execute = run(folder, {'pggit_chaos_allowed': True}, action_cls=TriggerAction)
    assert result == MODULE_RESULT
    assert CorruptAction.EXTRA_OPT_INS == ('pggit_chaos_destructive',) and TriggerAction.EXTRA_OPT_INS == ()


def test_the_rule_names_the_variable_it_judges():
    decision = _optin.judge('pg1', _optin.UNDEFINED, True, var='pggit_chaos_destructive')
    assert not decision.allowed and 'pggit_chaos_destructive is not set there' in decision.msg
    assert _optin.judge('pg1', True, True, var='pggit_chaos_destructive').allowed
    # The default wording is unchanged.
    assert _optin.judge('pg1', False, False).msg.startswith('host pg1 has not opted in to chaos: pggit_chaos_allowed is false')
