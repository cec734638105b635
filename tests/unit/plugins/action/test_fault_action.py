from __future__ import annotations

from unittest.mock import MagicMock

import pytest

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


def run(action_cls, args, allowed=MISSING, state_dir=MISSING, async_val=0, variables=None):
    task = MagicMock(args=dict(args), async_val=async_val, check_mode=False,
                     action='pggit_chaos_x', resolved_action='pggit.chaos.pggit_chaos_x')
    action = action_cls(task, MagicMock(), MagicMock(), loader=None, templar=Templar(variables or {}), shared_loader_obj=None)
    action._execute_module = MagicMock(return_value=dict(MODULE_RESULT))
    task_vars = {'inventory_hostname': 'pg1'}
    if allowed is not MISSING:
        task_vars['pggit_chaos_allowed'] = allowed
    if state_dir is not MISSING:
        task_vars['pggit_chaos_state_dir'] = state_dir
    result = action.run(task_vars=task_vars)
    assert task.args == args  # the task itself is never rewritten
    return result, action._execute_module


def module_args(execute):
    execute.assert_called_once()
    return execute.call_args.kwargs['module_args']


@pytest.mark.parametrize('allowed, shown', [
    (MISSING, None), (None, None), (False, False), ('false', 'false'), ('no', 'no'), ('maybe', 'maybe'), ('', ''),
    ('{{ nope }}', False),  # judged after templating
])
@pytest.mark.parametrize('action_cls', [TriggerAction, ConnectionsAction])
def test_host_without_opt_in_is_refused_before_anything_runs(action_cls, allowed, shown):
    result, execute = run(action_cls, {'name': 'off'}, allowed=allowed, variables={'nope': False})
    execute.assert_not_called()
    assert (result['failed'], result['changed'], result['refused']) == (True, False, True)
    assert "host pg1 has not opted in to chaos: pggit_chaos_allowed is %r" % (shown,) in result['msg']
    assert 'set pggit_chaos_allowed: true' in result['msg']


@pytest.mark.parametrize('allowed', [True, 'true', 'yes', '{{ ok }}'])
def test_opted_in_host_runs_the_module_with_its_state_dir(allowed):
    result, execute = run(TriggerAction, {'name': 'off'}, allowed=allowed, state_dir='{{ dir }}',
                          async_val=45, variables={'ok': True, 'dir': '/srv/chaos'})
    assert result == MODULE_RESULT
    execute.assert_called_once_with(module_name='pggit.chaos.pggit_chaos_x', module_args={'name': 'off', 'state_dir': '/srv/chaos'},
                                    task_vars=execute.call_args.kwargs['task_vars'], wrap_async=45)


@pytest.mark.parametrize('args, state_dir, expected', [
    ({'name': 'off', 'state_dir': '/explicit'}, '/from/hostvars', '/explicit'),
    ({'name': 'off'}, MISSING, None),
    ({'name': 'off'}, None, None),
    ({'name': 'off'}, '', None),
])
def test_state_dir_from_host_var_only_when_not_given(args, state_dir, expected):
    dummy, execute = run(TriggerAction, args, allowed=True, state_dir=state_dir)
    assert module_args(execute).get('state_dir') == expected


@pytest.mark.parametrize('allowed', [MISSING, False])
def test_revert_by_state_absent_needs_no_opt_in(allowed):
    result, execute = run(TriggerAction, {'name': 'off', 'state': 'absent'}, allowed=allowed, state_dir='/srv/chaos')
    assert 'refused' not in result
    assert module_args(execute) == {'name': 'off', 'state': 'absent', 'state_dir': '/srv/chaos'}


@pytest.mark.parametrize('allowed', [MISSING, False, 'no'])
def test_revert_module_never_refuses(allowed):
    result, execute = run(RevertAction, {}, allowed=allowed, state_dir='/srv/chaos')
    assert result == MODULE_RESULT
    assert module_args(execute) == {'state_dir': '/srv/chaos'}


def test_connections_action_adds_no_state_dir_but_still_needs_opt_in():
    result, execute = run(ConnectionsAction, {'count': 1}, allowed=True, state_dir='/srv/chaos')
    assert result == MODULE_RESULT
    assert module_args(execute) == {'count': 1}


def test_action_plugins_wire_the_right_guard():
    assert issubclass(TriggerAction, FaultActionModule) and TriggerAction.REQUIRES_OPT_IN and TriggerAction.INJECT_STATE_DIR
    assert issubclass(RevertAction, RevertActionModule) and not RevertAction.REQUIRES_OPT_IN and RevertAction.INJECT_STATE_DIR
    assert ConnectionsAction.REQUIRES_OPT_IN and not ConnectionsAction.INJECT_STATE_DIR
