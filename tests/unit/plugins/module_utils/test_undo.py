from __future__ import annotations

import os
import subprocess
import threading

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _steps, _undo
from ansible_collections.pggit.chaos.plugins.module_utils._ledger import Ledger
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError


@pytest.fixture
def ledger(tmp_path):
    return Ledger(str(tmp_path / 'state')).ensure()


@pytest.fixture
def calls(monkeypatch):
    """Register a fake step type 'note' that records its tag (and fails when asked)."""
    seen = []

    def note(step, ctx):
        seen.append(step['tag'])
        if step.get('fail'):
            raise RuntimeError('step %s broke' % step['tag'])
        return step.get('changed', True)
    monkeypatch.setitem(_steps.STEP_HANDLERS, 'note', note)
    return seen


@pytest.fixture
def process():
    """A real `sleep 30`, reaped by a thread as soon as it dies, killed in any case."""
    proc = subprocess.Popen(['sleep', '30'])
    reaper = threading.Thread(target=proc.wait, daemon=True)
    reaper.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        reaper.join(5)


def add(ledger, name, created_at, undo, experiment=None, kind='trigger'):
    record = ledger.new_record(kind, name, 60, undo, experiment=experiment, now=created_at)
    ledger.write(record)
    return record['id']


def note_steps(*tags, **extra):
    return [dict({'type': 'note', 'tag': tag}, **extra) for tag in tags]


class Runner(object):
    def __init__(self, rc, out='', err=''):
        self.reply = (rc, out, err)
        self.argvs = []

    def __call__(self, argv):
        self.argvs.append(list(argv))
        return self.reply


# -- revert_one / revert_many ----------------------------------------------
def test_revert_one_of_a_missing_record_is_absent(ledger):
    assert _undo.revert_one(ledger, 'trigger--nothing') == {'id': 'trigger--nothing', 'result': 'absent', 'changed': False}


def test_revert_one_deletes_record_and_secret_on_success(ledger, monkeypatch):
    seen = {}

    def note(step, ctx):
        seen.update(secret=ctx['secret'], runner=ctx['runner'])
        return True
    monkeypatch.setitem(_steps.STEP_HANDLERS, 'note', note)
    fid = add(ledger, 'ok', 1000.0, [{'type': 'note'}], experiment='exp1')
    ledger.write_secret(fid, {'login_password': 'pw'})
    runner = Runner(0)
    result = _undo.revert_one(ledger, fid, runner=runner, reason='state=absent')
    assert result['result'] == 'reverted' and result['changed'] is True and result['undo_changed'] is True
    assert (result['kind'], result['name'], result['experiment'], result['reason']) == ('trigger', 'ok', 'exp1', 'state=absent')
    assert result['expired'] is True  # expires_at 1060 is long past
    assert seen == {'secret': {'login_password': 'pw'}, 'runner': runner}
    assert os.listdir(ledger.faults_dir) == []


def test_revert_one_says_what_a_step_chose_not_to_do(ledger, monkeypatch):
    """A step that leaves something alone on purpose (a managed server, a setting changed since) says so in the result."""
    def note(step, ctx):
        ctx.setdefault('notes', []).append('left %s alone' % step['tag'])
        return False
    monkeypatch.setitem(_steps.STEP_HANDLERS, 'note', note)
    fid = add(ledger, 'noted', 1000.0, note_steps('a', 'b'))
    result = _undo.revert_one(ledger, fid)
    assert result['result'] == 'reverted' and result['notes'] == ['left b alone', 'left a alone']
    quiet = _undo.revert_one(ledger, add(ledger, 'quiet', 1000.0, []))
    assert 'notes' not in quiet


def test_revert_one_keeps_a_failed_record_with_its_error(ledger, calls):
    fid = add(ledger, 'broken', 1000.0, note_steps('x', fail=True))
    for attempt in (1, 2):
        result = _undo.revert_one(ledger, fid)
        error = result.pop('error')
        assert result == {'id': fid, 'result': 'failed', 'changed': False, 'kind': 'trigger'}
        assert 'step x broke' in error
        record = ledger.read(fid)
        assert record['last_error'] == error
        assert record['revert_attempts'] == attempt
    assert calls == ['x', 'x']


def test_revert_one_of_a_corrupt_record_fails_without_running_anything(ledger, calls):
    with open(os.path.join(ledger.faults_dir, 'trigger--bad.json'), 'w') as handle:
        handle.write('{')
    result = _undo.revert_one(ledger, 'trigger--bad')
    assert result['result'] == 'failed'
    assert 'unreadable' in result['error'] and ledger.faults_dir in result['error']
    assert os.path.exists(os.path.join(ledger.faults_dir, 'trigger--bad.json'))
    assert calls == []


def test_revert_one_stops_the_reaper_only_if_it_is_the_reaper(ledger, calls, process):
    fid = add(ledger, 'w', 1000.0, note_steps('x'))
    record = ledger.read(fid)
    record['reaper'] = {'pid': process.pid, 'starttime': _steps.proc_starttime(process.pid)}
    ledger.write(record)
    assert _undo.revert_one(ledger, fid)['result'] == 'reverted'
    assert process.poll() is None  # a `sleep` is not a pggit-chaos-reaper: left alone


def test_revert_many_goes_newest_first_and_reports_unknown_ids(ledger, calls):
    add(ledger, 'old', 1000.0, note_steps('old'))
    add(ledger, 'newest', 3000.0, note_steps('newest'))
    add(ledger, 'middle', 2000.0, note_steps('middle'))
    results = _undo.revert_many(ledger, ids=['old', 'trigger--newest', 'middle', 'ghost'])
    assert calls == ['newest', 'middle', 'old']
    assert [(r['id'], r['result']) for r in results] == [
        ('trigger--newest', 'reverted'), ('trigger--middle', 'reverted'), ('trigger--old', 'reverted'), ('ghost', 'absent')]
    assert ledger.list() == []


RECORDS = [
    {'id': 'trigger--a', 'name': 'a', 'kind': 'trigger', 'experiment': 'e1'},
    {'id': 'trigger--b', 'name': 'b', 'kind': 'trigger', 'experiment': 'e2'},
    {'id': 'netem--a', 'name': 'a', 'kind': 'netem', 'experiment': 'e1'},
]


@pytest.mark.parametrize('kwargs, expected', [
    ({}, ['trigger--a', 'trigger--b', 'netem--a']),
    ({'ids': ['a']}, ['trigger--a', 'netem--a']),
    ({'ids': ['trigger--a']}, ['trigger--a']),
    ({'experiment': 'e1'}, ['trigger--a', 'netem--a']),
    ({'kinds': ['netem']}, ['netem--a']),
    ({'ids': ['a'], 'kinds': ['trigger']}, ['trigger--a']),
    ({'experiment': 'e2', 'kinds': ['netem']}, []),
    ({'ids': ['nothing']}, []),
])
def test_select(kwargs, expected):
    assert [r['id'] for r in _undo.select(RECORDS, **kwargs)] == expected


def test_ensure_ledger_usable_names_the_state_dir(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(UndoError, match='cannot use state dir %s' % blocker):
        _undo.ensure_ledger_usable(Ledger(str(blocker)))


# -- an apply that outlasts the TTL (the record stays until the applier is done) ----------------
def test_revert_while_another_process_applies_runs_the_undo_but_keeps_the_record(ledger, calls, process):
    fid = add(ledger, 'slow', 1000.0, note_steps('undo'))
    record = ledger.read(fid)
    record['applier'] = {'pid': process.pid, 'starttime': _steps.proc_starttime(process.pid)}
    ledger.write(record)
    result = _undo.revert_one(ledger, fid, reason='ttl-expired')
    assert (result['result'], result['deferred']) == ('failed', True)
    assert calls == ['undo']  # undone once already
    kept = ledger.read(fid)
    assert kept['status'] == 'expired' and 'still applying' in kept['last_error']
    process.kill()
    process.wait()
    assert _undo.revert_one(ledger, fid)['result'] == 'reverted'  # the applier is gone: now it goes
    assert calls == ['undo', 'undo'] and ledger.read(fid) is None


def test_the_applier_itself_reverts_without_deferring(ledger, calls):
    fid = add(ledger, 'mine', 1000.0, note_steps('undo'))
    record = ledger.read(fid)
    record.update(status='expired', applier={'pid': os.getpid(), 'starttime': _steps.proc_starttime(os.getpid())})
    ledger.write(record)
    assert _undo.revert_one(ledger, fid)['result'] == 'reverted'


def test_a_forged_record_is_refused_naming_the_file_and_nothing_runs(ledger, tmp_path):
    victim = tmp_path / 'precious'
    victim.write_text('keep me')
    fid = add(ledger, 'forged', 1000.0, [{'type': 'remove_path', 'path': str(victim), 'root': '/'}])
    result = _undo.revert_one(ledger, fid)
    assert result['result'] == 'failed'
    assert os.path.join(ledger.faults_dir, fid + '.json') in result['error']
    assert 'nothing was run' in result['error']
    assert victim.read_text() == 'keep me'
    assert ledger.read(fid) is not None


def test_the_last_revert_removes_the_boot_hook(ledger, calls, monkeypatch):
    removed = []
    monkeypatch.setattr(_undo._boot, 'remove', lambda state_dir: removed.append(state_dir) or [])
    first = add(ledger, 'one', 1000.0, note_steps('a'))
    second = add(ledger, 'two', 1001.0, note_steps('b'))
    _undo.revert_one(ledger, first)
    assert removed == []  # a record is left: the host still needs its hook
    _undo.revert_one(ledger, second)
    assert removed == [ledger.state_dir]
