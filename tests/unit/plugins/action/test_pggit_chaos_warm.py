"""pggit_chaos_warm's action: it starts one helper for the roles' modules, on the controller, and never fails the run."""
from __future__ import annotations

import os
from unittest.mock import MagicMock

from ansible import constants as C

from ansible_collections.pggit.chaos.plugins.action import pggit_chaos_warm
from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_warm import ActionModule


def run(args, monkeypatch, start=None):
    calls = []

    def fake_start(modules, local_tmp, parent, timeout, compression, paths):
        calls.append(dict(modules=modules, local_tmp=local_tmp, parent=parent, timeout=timeout, compression=compression))
        if start is not None:
            return start()
        return 4242

    monkeypatch.setattr(pggit_chaos_warm._warm, 'start', fake_start)
    task = MagicMock(args=args, async_val=0, check_mode=False, action='pggit.chaos.pggit_chaos_warm')
    connection = MagicMock()
    action = ActionModule(task, connection, MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    result = action.run(task_vars={'inventory_hostname': 'lab-1'})
    connection.exec_command.assert_not_called()
    return result, calls


def test_one_helper_builds_the_roles_modules_for_this_run(monkeypatch):
    result, calls = run(dict(roles=['pggit.chaos.pggit_chaos_trigger']), monkeypatch)
    assert result['changed'] is False and 'failed' not in result and result['pid'] == 4242
    assert result['modules'][0] == 'pggit.chaos.pggit_verify' and 'pggit.chaos.pggit_chaos_trigger' in result['modules']
    assert calls == [dict(modules=result['modules'], local_tmp=C.DEFAULT_LOCAL_TMP, parent=os.getppid(), timeout=120,
                          compression='ZIP_DEFLATED')]


def test_a_helper_that_cannot_start_does_not_fail_the_run(monkeypatch):
    def refuse():
        raise OSError('no fork today')

    result, calls = run(dict(roles=['pggit.chaos.pggit_chaos_trigger'], timeout=5), monkeypatch, start=refuse)
    assert 'failed' not in result and result['pid'] is None and 'no fork today' in result['msg'] and len(calls) == 1


def test_a_bad_timeout_names_the_option_and_value_and_starts_nothing(monkeypatch):
    result, calls = run(dict(roles=['pggit.chaos.pggit_chaos_trigger'], timeout=0), monkeypatch)
    assert result['failed'] is True and 'timeout' in result['msg'] and 'timeout=0' in result['msg'] and calls == []
