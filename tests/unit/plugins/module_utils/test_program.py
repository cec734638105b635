"""The one start-up of the background programs (kill rounds, workload): record, results file, secret, gate."""
from __future__ import annotations

import json
import os
import re

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _killer, _ledger, _program, _results, _workload

FID = 'workload--w'


@pytest.fixture
def ledger(tmp_path):
    return _ledger.Ledger(str(tmp_path / 'state')).ensure()


def write_record(ledger, fid=FID, undo=None):
    kind, name = fid.split('--')
    detail = {'conn': {'login_host': 'db1', 'db': 'app'}, 'options': {'run_id': 'w'}}
    record = ledger.new_record(kind, name, 60, undo or [], detail=detail)
    ledger.write(record)
    ledger.write_secret(fid, {'login_password': 's3cret'})
    _results.create(_results.path_for(ledger, fid))
    return record


def events(ledger, fid=FID):
    with open(_results.path_for(ledger, fid)) as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.parametrize('main', [_killer.main, _workload.main], ids=['killer', 'workload'])
def test_no_record_means_nothing_done(ledger, main, capsys):
    assert main(['--state-dir', ledger.state_dir, '--fault-id', FID]) == _program.NO_RECORD
    assert 'no usable ledger record; nothing to do' in capsys.readouterr().out
    assert os.listdir(ledger.faults_dir) == []


@pytest.mark.parametrize('main', [_killer.main, _workload.main], ids=['killer', 'workload'])
def test_a_record_without_its_results_file_means_nothing_done(ledger, main, capsys):
    write_record(ledger)
    os.unlink(_results.path_for(ledger, FID))
    assert main(['--state-dir', ledger.state_dir, '--fault-id', FID]) == _program.NO_RECORD
    assert 'cannot read its record or open its results file' in capsys.readouterr().out


def test_the_body_gets_the_record_the_secret_and_the_results_file(ledger, capsys):
    record = write_record(ledger)
    seen = {}

    def body(program):
        seen.update(detail=program.detail, params=program.conn_params(), until=program.record['expires_at'])
        program.out.write('hello')
        program.log('said hello')
        return 7

    assert _program.main('pggit-chaos-test', body, ['--state-dir', ledger.state_dir, '--fault-id', FID]) == 7
    assert seen['params'] == {'login_host': 'db1', 'db': 'app', 'login_password': 's3cret'}
    assert seen['detail']['options'] == {'run_id': 'w'} and seen['until'] == record['expires_at']
    assert [e['event'] for e in events(ledger)] == ['hello']
    line = capsys.readouterr().out
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d pggit-chaos-test\[%d\] %s: said hello\n$' % (os.getpid(), FID), line), line


def test_the_gate_says_ready_and_waits_for_its_own_undo_step(ledger):
    step = {'type': 'kill_process', 'pid': os.getpid(), 'starttime': 1, 'match': 'pggit-chaos-test'}
    record = write_record(ledger)
    program = _program.Program('pggit-chaos-test', ledger, FID, record)
    assert program.recorded(timeout=0.2) is False, 'not named in its record: it must not act'
    record['undo'] = [step]
    ledger.write(record)
    assert program.recorded(timeout=0.2) is True
    assert [e['event'] for e in events(ledger)] == ['ready', 'ready'] and events(ledger)[0]['pid'] == os.getpid()
    assert program.stop_condition()() is None
    ledger.delete(FID)
    assert program.stop_condition()() == 'record gone'
    assert _program.Program('pggit-chaos-test', ledger, FID, dict(record, expires_at=0)).stop_condition(grace=0)() \
        == 'past expires_at'
