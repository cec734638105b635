"""BackgroundFault.close_record: a program that ended by itself closes its record, or makes it due at once."""
from __future__ import annotations

import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _steps
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._ledger import Ledger


class Module(object):
    def __init__(self, state_dir):
        self.params = {'name': 'w1', 'state_dir': state_dir}

    def run_command(self, argv):
        raise AssertionError('no command expected: %s' % argv)


class Program(BackgroundFault):
    kind = 'workload'
    program = 'pggit-chaos-workload'


@pytest.fixture
def fault(tmp_path, monkeypatch):
    def note(step, ctx):
        if step.get('fail'):
            raise RuntimeError('could not extend file: No space left on device')
        return True
    monkeypatch.setitem(_steps.STEP_HANDLERS, 'note', note)
    state_dir = str(tmp_path / 'state')
    Ledger(state_dir).ensure()
    return Program(Module(state_dir))


def write(fault, fail, ttl=186):
    ledger = fault.state_ledger()
    record = ledger.new_record('workload', 'w1', ttl, [{'type': 'note', 'fail': fail}])
    ledger.write(record)
    return ledger, record


def test_a_record_whose_close_fails_is_due_at_once_so_its_reaper_retries_now(fault):
    ledger, record = write(fault, fail=True)
    assert record['expires_at'] > time.time() + 100
    outcome = fault.close_record()
    assert outcome['result'] == 'failed' and outcome['due_now'] is True
    assert ledger.read(record['id'])['expires_at'] <= time.time()


def test_a_record_that_closes_is_gone(fault):
    ledger, record = write(fault, fail=False)
    outcome = fault.close_record()
    assert outcome['result'] == 'reverted' and 'due_now' not in outcome
    assert ledger.read(record['id']) is None
