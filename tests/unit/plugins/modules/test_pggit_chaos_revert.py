"""The red button on a state dir it must not trust: a clean failure that names state_dir, and nothing run."""
from __future__ import annotations

import os

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_revert


@pytest.fixture
def state_dir(tmp_path):
    """A ledger holding one record whose undo would remove a file: the file tells whether anything ran."""
    ledger = _ledger.Ledger(str(tmp_path / 'state')).ensure()
    witness = os.path.join(ledger.state_dir, 'witness')
    with open(witness, 'w') as handle:
        handle.write('still here')
    record = ledger.new_record('trigger', 'tracking-off', 300,
                               [{'type': 'remove_path', 'path': witness, 'root': ledger.state_dir}])
    ledger.write(record)
    yield ledger.state_dir
    for path in (ledger.state_dir, ledger.faults_dir):
        os.chmod(path, 0o700)


@pytest.mark.parametrize('where', ['state_dir', 'faults'])
@pytest.mark.parametrize('check_mode', [False, True])
def test_a_world_writable_state_dir_fails_cleanly_naming_state_dir(state_dir, where, check_mode):
    path = state_dir if where == 'state_dir' else os.path.join(state_dir, 'faults')
    os.chmod(path, 0o777)
    result, failed = run_module(pggit_chaos_revert.main, dict(state_dir=state_dir), check_mode=check_mode)
    assert failed, result
    assert result['msg'].startswith('state_dir') and path in result['msg'], result['msg']
    assert 'writable by group or others (mode 0777)' in result['msg'], result['msg']
    assert result['changed'] is False and result['reverted'] == []
    assert os.path.exists(os.path.join(state_dir, 'witness')), 'no undo step may run from a state dir we do not trust'
    assert os.path.exists(os.path.join(state_dir, 'faults', 'trigger--tracking-off.json'))


def test_a_state_dir_behind_a_symbolic_link_fails_cleanly(state_dir, tmp_path):
    link = str(tmp_path / 'link')
    os.symlink(state_dir, link)
    result, failed = run_module(pggit_chaos_revert.main, dict(state_dir=link))
    assert failed and result['msg'].startswith('state_dir') and 'symbolic link' in result['msg'], result['msg']
    assert result['changed'] is False
    assert os.path.exists(os.path.join(state_dir, 'witness'))


def test_a_private_state_dir_is_reverted(state_dir):
    """The same ledger with safe modes: the red button runs the undo (the failure above was the mode's doing)."""
    result, failed = run_module(pggit_chaos_revert.main, dict(state_dir=state_dir))
    assert not failed, result
    assert [r['id'] for r in result['reverted']] == ['trigger--tracking-off'] and result['changed']
    assert not os.path.exists(os.path.join(state_dir, 'witness')) and result['remaining'] == []
