"""The results file of a background program: created safely, private, readable to the end; the record gate."""
from __future__ import annotations

import os

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _results


@pytest.fixture
def ledger(tmp_path):
    return _ledger.Ledger(str(tmp_path / 'state')).ensure()


def test_created_private_and_exclusive(ledger):
    path = _results.path_for(ledger, 'connections--k')
    assert path == os.path.join(ledger.faults_dir, 'connections--k.results')
    _results.create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.path.getsize(path) == 0


def test_a_planted_link_is_replaced_never_followed(ledger, tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_text('precious')
    path = _results.path_for(ledger, 'connections--k')
    os.symlink(str(target), path)
    _results.create(path)
    assert not os.path.islink(path)
    assert target.read_text() == 'precious'
    writer = _results.Writer(path)
    writer.write('ready', pid=1)
    assert target.read_text() == 'precious'


def test_the_program_refuses_a_file_others_can_read(ledger):
    path = _results.path_for(ledger, 'connections--k')
    _results.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(_results.ResultsError, match='mode 0600'):
        _results.Writer(path)


def test_the_program_never_creates_the_file(ledger):
    with pytest.raises(OSError):
        _results.Writer(_results.path_for(ledger, 'connections--nobody'))


def test_reader_sees_every_event_even_after_the_file_is_removed(ledger):
    path = _results.path_for(ledger, 'workload--w')
    _results.create(path)
    reader = _results.Reader(path)
    writer = _results.Writer(path)
    writer.write('ready', pid=5)
    assert reader.first('ready')['pid'] == 5
    assert reader.first('done') is None
    os.unlink(path)  # what the revert's remove_path step does
    writer.write('terminated', pid=9, round=1)
    os.write(writer.fd, b'{"event": "cut by SIGK')  # a line a SIGKILL cut short
    events = reader.poll()
    assert [e['event'] for e in events] == ['ready', 'terminated'] and events[1]['pid'] == 9


class FakeLedger(object):
    def __init__(self, records):
        self.records = list(records)

    def read(self, fid):
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]


def step(pid):
    return {'type': 'kill_process', 'pid': pid, 'starttime': 1, 'match': 'pggit-chaos-killer'}


@pytest.mark.parametrize('records, expected', [
    ([{'status': 'pending', 'undo': []}, {'status': 'pending', 'undo': [step(42)]}], True),
    ([{'status': 'active', 'undo': [step(42)]}], True),
    ([{'status': 'pending', 'undo': [step(41)]}], False),  # another process's step is not ours
    ([{'status': 'pending', 'undo': []}, None], False),  # reverted before it was recorded
    ([{'status': 'expired', 'undo': [step(42)]}], False),  # the revert ran while it was being applied
])
def test_the_program_acts_only_once_its_record_names_it(records, expected):
    clock = iter(range(1000))
    got = _results.await_recorded(FakeLedger(records), 'connections--k', 42, timeout=5, sleep=lambda s: None,
                                  clock=lambda: next(clock))
    assert got is expected


@pytest.mark.parametrize('record, reason', [
    (None, 'record gone'), ({'corrupt': True}, 'record unreadable'), ({'status': 'expired'}, 'record expired'),
    ({'status': 'pending'}, None), ({'status': 'active'}, None),
])
def test_standing(record, reason):
    assert _results.standing(record) == reason


def test_stop_condition_past_the_deadline():
    stop = _results.stop_condition(FakeLedger([{'status': 'active'}]), 'k', until=100.0, clock=lambda: 100.0)
    assert stop() == 'past expires_at'
    stop = _results.stop_condition(FakeLedger([{'status': 'active'}]), 'k', until=100.0, clock=lambda: 99.0)
    assert stop() is None
