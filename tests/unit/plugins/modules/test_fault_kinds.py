"""One list of fault kinds: every fault module's kind is in it, and pggit_chaos_revert takes only those."""
from __future__ import annotations

import importlib
import inspect
import os

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import Fault
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_revert

PREFIX = 'ansible_collections.pggit.chaos.plugins.modules.'
MODULES_DIR = os.path.dirname(pggit_chaos_revert.__file__)


def fault_kinds():
    kinds = set()
    for name in sorted(os.listdir(MODULES_DIR)):
        if not name.endswith('.py') or name.startswith('_'):
            continue
        module = importlib.import_module(PREFIX + name[:-3])
        for _n, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Fault) and cls.kind and cls.__module__ == module.__name__:
                kinds.add(cls.kind)
    return kinds


def test_every_fault_module_kind_is_in_the_one_list():
    kinds = fault_kinds()
    assert kinds and kinds <= set(FAULT_KINDS), kinds - set(FAULT_KINDS)
    assert {'connections', 'workload', 'trigger'} <= kinds


@pytest.mark.parametrize('kinds, bad', [(['nope'], 'nope'), (['trigger', 'Trigger'], 'Trigger'), ([''], '')])
def test_revert_refuses_an_unknown_kind_naming_it(tmp_path, kinds, bad):
    state_dir = str(tmp_path / 'state')
    result, failed = run_module(pggit_chaos_revert.main, dict(kinds=kinds, state_dir=state_dir))
    assert failed and 'kinds' in result['msg'] and bad in result['msg'], result['msg']
    assert not os.path.exists(state_dir)


def test_revert_takes_every_known_kind(tmp_path):
    result, failed = run_module(pggit_chaos_revert.main, dict(kinds=list(FAULT_KINDS), state_dir=str(tmp_path / 'state')))
    assert not failed and result['reverted'] == []
