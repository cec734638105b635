from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _steps
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


# -- run_steps ---------------------------------------------------------------
def test_steps_run_in_reverse_order(calls):
    _steps.run_steps(note_steps('first applied', 'second', 'last applied'), {})
    assert calls == ['last applied', 'second', 'first applied']


@pytest.mark.parametrize('changes, expected', [
    ([False, False], False),
    ([True, False], True),
    ([False, True], True),
    ([], False),
])
def test_run_steps_is_changed_when_any_step_changed(calls, changes, expected):
    steps = [{'type': 'note', 'tag': i, 'changed': c} for i, c in enumerate(changes)]
    assert _steps.run_steps(steps, {}) is expected
    assert len(calls) == len(changes)  # every step runs, even after one that changed nothing


def test_run_steps_of_none_is_a_noop():
    assert _steps.run_steps(None, {}) is False


def test_a_failing_step_stops_the_steps_applied_before_it(calls):
    # Undo of [enable triggers, drop schema]: the drop must succeed before tracking returns.
    steps = note_steps('enable') + note_steps('drop', fail=True)
    with pytest.raises(RuntimeError, match='drop broke'):
        _steps.run_steps(steps, {})
    assert calls == ['drop']


@pytest.mark.parametrize('step', [{'type': 'reboot'}, {'kind': 'run'}])
def test_unknown_step_type_raises_naming_it(step):
    with pytest.raises(UndoError, match='unknown undo step type %r' % step.get('type')):
        _steps.run_steps([step], {})


# -- the run step -------------------------------------------------------------
class Runner(object):
    def __init__(self, rc, out='', err=''):
        self.reply = (rc, out, err)
        self.argvs = []

    def __call__(self, argv):
        self.argvs.append(list(argv))
        return self.reply


ARGV = ['tc', 'qdisc', 'del', 'dev', 'eth0', 'root']


@pytest.mark.parametrize('step, rc, changed', [
    ({}, 0, True),
    ({'ok_rc': [0, 1]}, 1, True),
    ({'gone_rc': [2]}, 2, False),
    ({'ok_rc': [0], 'gone_rc': [1, 2]}, 1, False),
])
def test_run_step_ok_and_gone(step, rc, changed):
    runner = Runner(rc)
    assert _steps.run_steps([dict(step, type='run', argv=ARGV)], {'runner': runner}) is changed
    assert runner.argvs == [ARGV]


@pytest.mark.parametrize('out, err, shown', [
    ('', 'RTNETLINK answers: Operation not permitted\n', 'RTNETLINK answers: Operation not permitted'),
    ('only stdout\n', '', 'only stdout'),
])
def test_run_step_error_names_argv_rc_and_output(out, err, shown):
    runner = Runner(3, out, err)
    with pytest.raises(UndoError) as exc:
        _steps.run_steps([{'type': 'run', 'argv': ARGV, 'gone_rc': [2]}], {'runner': runner})
    assert str(exc.value) == 'tc qdisc del dev eth0 root exited 3: %s' % shown


def test_default_runner_runs_argv_without_a_shell(tmp_path):
    rc, out, err = _steps.default_runner([sys.executable, '-c', 'import sys; print(sys.argv[1:])', '$HOME', ';', 'x'])
    assert (rc, err) == (0, '')
    assert out.strip() == "['$HOME', ';', 'x']"


# -- remove_path ------------------------------------------------------------
def test_remove_path_is_idempotent(tmp_path):
    victim = tmp_path / 'sub' / 'victim'
    victim.parent.mkdir()
    victim.write_text('x')
    step = {'type': 'remove_path', 'path': str(victim), 'root': str(tmp_path)}
    assert _steps.run_steps([step], {}) is True
    assert not victim.exists()
    assert _steps.run_steps([step], {}) is False


@pytest.mark.parametrize('path, root', [
    ('/etc/passwd', '{tmp}'),
    ('{tmp}/../outside', '{tmp}'),
    ('{tmp}', '{tmp}'),  # the root itself
    ('{tmp}-sibling/file', '{tmp}'),  # shares the root as a string prefix only
    ('{tmp}/link/file', '{tmp}'),  # a symlink leading out of the root
])
def test_remove_path_refuses_paths_outside_its_root(tmp_path, path, root):
    outside = tmp_path.parent / (tmp_path.name + '-outside')
    outside.mkdir(exist_ok=True)
    (outside / 'file').write_text('keep me')
    (tmp_path / 'link').symlink_to(outside)
    step = {'type': 'remove_path', 'path': path.format(tmp=tmp_path), 'root': root.format(tmp=tmp_path)}
    with pytest.raises(UndoError, match='refusing to remove .* outside its recorded root'):
        _steps.run_steps([step], {})
    assert (outside / 'file').read_text() == 'keep me'


# -- processes -----------------------------------------------------------------
def test_same_process_guards_against_pid_reuse(process):
    start = _steps.proc_starttime(process.pid)
    assert isinstance(start, int)
    assert _steps.same_process(process.pid)
    assert _steps.same_process(process.pid, start, 'sleep 30')
    assert _steps.same_process(str(process.pid), str(start))
    assert not _steps.same_process(process.pid, start + 1)
    assert not _steps.same_process(process.pid, start, 'pggit-chaos-reaper')


@pytest.mark.parametrize('pid', [None, 0, 999999999])
def test_same_process_of_no_process_is_false(pid):
    assert not _steps.same_process(pid)
    assert _steps.stop_process(pid) is False


def test_stop_process_kills_only_the_recorded_process(process):
    start = _steps.proc_starttime(process.pid)
    assert _steps.stop_process(process.pid, start + 1, grace=0.5) is False
    assert _steps.stop_process(process.pid, start, 'pggit-chaos-reaper', grace=0.5) is False
    assert process.poll() is None
    assert _steps.stop_process(process.pid, start, 'sleep', grace=2.0) is True
    assert process.wait(5) == -15  # SIGTERM was enough
    assert _steps.proc_starttime(process.pid) is None


def test_kill_process_step(process):
    step = {'type': 'kill_process', 'pid': process.pid, 'starttime': _steps.proc_starttime(process.pid), 'match': 'sleep'}
    assert _steps.run_steps([step], {}) is True
    assert process.wait(5) == -15
    assert _steps.run_steps([step], {}) is False  # already gone


