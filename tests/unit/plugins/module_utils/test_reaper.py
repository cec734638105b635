from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _reaper, _steps, _undo
from ansible_collections.pggit.chaos.plugins.module_utils._ledger import Ledger
from waiting import wait_for

START = 1000000.0
ENGINE = _daemon.ENGINE


class Clock(object):
    """A wall clock (callable) and a monotonic clock; sleeping advances both, a step moves the wall only."""

    def __init__(self, now=START):
        self.now = now
        self.mono = 500.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def monotonic(self):
        return self.mono

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        self.mono += seconds


@pytest.fixture
def ledger(tmp_path):
    return Ledger(str(tmp_path / 'state')).ensure()


@pytest.fixture
def clock():
    return Clock()


def add(ledger, expires_in):
    record = ledger.new_record('trigger', 'off', 60, [], now=START)
    record['expires_at'] = START + expires_in
    ledger.write(record)
    return record['id']


def fake_revert(monkeypatch, ledger, clock, results):
    """Patch revert_one: answer from ``results`` (the last repeats), delete the record on success."""
    calls = []

    def revert_one(led, fid, runner=None, reason='requested'):
        calls.append((clock.now, reason))
        result = results[min(len(calls), len(results)) - 1]
        if result == 'reverted':
            led.delete(fid)
        return {'id': fid, 'result': result, 'error': 'boom' if result == 'failed' else None}
    monkeypatch.setattr(_undo, 'revert_one', revert_one)
    return calls


def test_returns_at_once_when_the_record_is_gone(ledger, clock, monkeypatch):
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])
    assert _reaper.watch(ledger, 'trigger--off', clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert calls == [] and clock.sleeps == []


@pytest.mark.parametrize('result', ['reverted', 'absent'])
def test_waits_for_expiry_then_reverts_once(ledger, clock, monkeypatch, result):
    fid = add(ledger, expires_in=1.1)
    calls = fake_revert(monkeypatch, ledger, clock, [result])
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert calls == [(START + 1.1, 'ttl-expired')]
    assert max(clock.sleeps) <= _reaper.POLL_SECONDS  # notices a normal revert quickly
    assert sum(clock.sleeps) == pytest.approx(1.1)


def test_an_expired_record_is_reverted_without_waiting(ledger, clock, monkeypatch):
    fid = add(ledger, expires_in=-30)
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert calls == [(START, 'ttl-expired')] and clock.sleeps == []


def test_stops_waiting_when_the_fault_is_reverted_elsewhere(ledger, clock, monkeypatch):
    fid = add(ledger, expires_in=100)
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            ledger.delete(fid)  # e.g. state=absent ran
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=sleep) == 0
    assert calls == [] and len(clock.sleeps) == 3


def test_retries_with_backoff_until_it_works(ledger, clock, monkeypatch):
    fid = add(ledger, expires_in=0)
    calls = fake_revert(monkeypatch, ledger, clock, ['failed', 'failed', 'failed', 'reverted'])
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert [t - START for t, _ignored in calls] == [0, 1, 3, 7]  # waits of 1, 2 and 4 s
    assert ledger.read(fid) is None


def test_never_gives_up_while_the_fault_is_there(ledger, clock, monkeypatch, capsys):
    fid = add(ledger, expires_in=0)
    attempts = 300  # far past the old 600 s limit: about 4.6 hours of failures

    def sleep(seconds):
        clock.sleep(seconds)
        if len(calls) >= attempts:
            ledger.delete(fid)  # someone fixed it by hand; the reaper then exits
    calls = fake_revert(monkeypatch, ledger, clock, ['failed'])
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=sleep) == 0
    assert len(calls) == attempts
    gaps = [round(b - a, 6) for (a, _x), (b, _y) in zip(calls, calls[1:])]
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 60] and set(gaps[7:]) == {_reaper.RETRY_MAX_SECONDS}
    log = capsys.readouterr().out
    assert 'trigger--off: revert failed (attempt 1), the fault is still in place: boom; retrying in 1s' in log
    assert 'attempt %d' % attempts in log


@pytest.mark.parametrize('step', [3600.0, -3600.0])
def test_a_clock_step_neither_delays_nor_hastens_the_revert(ledger, clock, monkeypatch, step):
    fid = add(ledger, expires_in=10)
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 4:
            clock.now += step  # the wall clock jumps an hour (our own clock_skew fault, NTP, an admin)
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=sleep) == 0
    assert len(calls) == 1
    assert sum(clock.sleeps) == pytest.approx(10.0)  # exactly the TTL on the monotonic clock


def test_a_later_expires_at_moves_the_deadline(ledger, clock, monkeypatch):
    fid = add(ledger, expires_in=2)
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            record = ledger.read(fid)
            record['expires_at'] += 5  # the record was extended
            ledger.write(record)
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=sleep) == 0
    assert sum(clock.sleeps) == pytest.approx(7.0) and len(calls) == 1


def test_backoff_is_capped():
    assert [_reaper.backoff(n) for n in (1, 2, 3, 6, 7, 50)] == [1, 2, 4, 32, 60, 60]


def test_install_engine_writes_a_self_contained_copy(tmp_path):
    state_dir = str(tmp_path)
    scripts = _daemon.install_engine(state_dir)
    lib = os.path.join(state_dir, 'lib')
    assert {'pggit-chaos-reaper', 'pggit-chaos-nfqdelay'} <= set(scripts)
    assert scripts == dict((tag, os.path.join(lib, tag + '.py')) for tag in _daemon.PROGRAMS)
    script = scripts['pggit-chaos-reaper']
    pkg = os.path.join(lib, 'ansible_collections', 'pggit', 'chaos', 'plugins', 'module_utils')
    files = sorted(scripts.values()) + [os.path.join(pkg, name + '.py') for name in ENGINE]
    for path in files:
        with open(path) as handle:
            compile(handle.read(), path, 'exec')
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(pkg)) == sorted(name + '.py' for name in ENGINE)
    mtimes = [os.stat(p).st_mtime_ns for p in files]
    assert _daemon.install_engine(state_dir) == scripts  # unchanged files are not rewritten
    assert [os.stat(p).st_mtime_ns for p in files] == mtimes
    # The copy imports on its own: no PYTHONPATH, not run from the repository.
    env = dict((k, v) for k, v in os.environ.items() if k != 'PYTHONPATH')
    proc = subprocess.run([sys.executable, script, '--help'], cwd='/', env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'usage: pggit-chaos-reaper' in proc.stdout
    proc = subprocess.run([sys.executable, scripts['pggit-chaos-nfqdelay'], '--help'], cwd='/', env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30, check=False)
    assert proc.returncode == 0 and 'usage: pggit-chaos-nfqdelay' in proc.stdout, proc.stderr


def _running(pid):
    """Alive and not a zombie (an orphan may wait a while to be reaped)."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[-1].split()[0] != 'Z'
    except OSError:
        return False


def test_arm_starts_a_detached_reaper_that_reverts_at_expiry(tmp_path):
    ledger = Ledger(str(tmp_path / 'state')).ensure()
    victim = tmp_path / 'state' / 'victim'  # undo steps may only remove files of our own
    victim.write_text('fault in place')
    record = ledger.new_record('file', 'victim', 1, [{'type': 'remove_path', 'path': str(victim), 'root': ledger.state_dir}])
    ledger.write(record)
    reaper = _reaper.arm(ledger, record['id'])
    pid = reaper['pid']
    try:
        assert _reaper.PROC_TAG in _steps.proc_cmdline(pid)
        assert reaper['starttime'] == _steps.proc_starttime(pid)
        # A new session it does not lead (double fork): it survives the SSH session and never gets a terminal.
        assert os.getsid(pid) not in (os.getsid(0), pid)
        if time.time() < record['expires_at'] - 0.1:
            assert victim.exists()  # not before expires_at
        assert wait_for(lambda: not victim.exists(), 10), 'the reaper did not remove the file within 10 s'
        assert wait_for(lambda: ledger.read(record['id']) is None, 5)
        assert wait_for(lambda: not _running(pid), 5), 'the reaper outlived its fault'
        with open(os.path.join(ledger.state_dir, 'reaper.log')) as handle:
            assert '%s: reverted' % record['id'] in handle.read()
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _program(tmp_path, monkeypatch, body):
    """Register a throwaway engine program whose main() runs ``body`` (Python source)."""
    state_dir = str(tmp_path / 'state')
    os.makedirs(state_dir, mode=0o700)
    monkeypatch.setitem(_daemon.PROGRAMS, 'pggit-chaos-testprog', '_reaper')
    scripts = _daemon.install_engine(state_dir)
    with open(scripts['pggit-chaos-testprog'], 'w') as handle:
        handle.write(body)
    monkeypatch.setattr(_daemon, 'install_engine', lambda _state_dir: scripts)
    return state_dir


def test_spawn_waits_until_the_program_proves_it_is_ready(tmp_path, monkeypatch):
    flag = tmp_path / 'ready'
    state_dir = _program(tmp_path, monkeypatch, 'import time, sys\ntime.sleep(0.3)\nopen(%r, "w").close()\ntime.sleep(30)\n'
                         % str(flag))
    started = _daemon.spawn(state_dir, 'pggit-chaos-testprog', [], ready=flag.exists, ready_timeout=5)
    try:
        assert flag.exists()
        assert _steps.same_process(started['pid'], started['starttime'], 'pggit-chaos-testprog')
    finally:
        _steps.stop_process(started['pid'], started['starttime'])


def test_spawn_fails_with_the_log_when_the_program_dies_before_ready(tmp_path, monkeypatch):
    state_dir = _program(tmp_path, monkeypatch, 'import sys\nsys.stderr.write("no module named netfilterqueue\\n")\nsys.exit(3)\n')
    with pytest.raises(_daemon.DaemonError, match='exited before it was ready: no module named netfilterqueue'):
        _daemon.spawn(state_dir, 'pggit-chaos-testprog', [], ready=lambda: False, ready_timeout=5)


def test_spawn_stops_a_program_that_never_gets_ready(tmp_path, monkeypatch):
    state_dir = _program(tmp_path, monkeypatch, 'import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(30)\n')
    with pytest.raises(_daemon.DaemonError, match='was not ready after 0.5s'):
        _daemon.spawn(state_dir, 'pggit-chaos-testprog', [], ready=lambda: False, ready_timeout=0.5)
    pid = int(_daemon.log_tail(state_dir, 'pggit-chaos-testprog').split()[-1])
    assert wait_for(lambda: not _steps.same_process(pid), 3), 'the program that never got ready must be stopped'


def test_programs_run_isolated_so_nothing_in_lib_shadows_the_standard_library(tmp_path):
    state_dir = str(tmp_path / 'state')
    scripts = _daemon.install_engine(state_dir)
    lib = os.path.join(state_dir, 'lib')
    marker = tmp_path / 'shadowed'
    # Whoever could write here would get their json.py run by root; it must never be imported.
    for name in ('json', 'argparse'):
        with open(os.path.join(lib, name + '.py'), 'w') as handle:
            handle.write('open(%r, "w").close()\nraise SystemExit(99)\n' % str(marker))
    argv = _daemon.argv_for(scripts['pggit-chaos-reaper'], ['--help'])
    assert argv[1] == '-I'
    env = dict(os.environ, PYTHONPATH=lib, PYTHONSTARTUP=str(tmp_path / 'x'))  # ignored under -I
    proc = subprocess.run(argv, cwd=lib, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'pggit-chaos-reaper' in proc.stdout
    assert not marker.exists()


def test_install_engine_refuses_a_lib_someone_else_can_write(tmp_path):
    state_dir = str(tmp_path / 'state')
    _daemon.install_engine(state_dir)
    os.chmod(os.path.join(state_dir, 'lib'), 0o777)
    with pytest.raises(_daemon._ledger.LedgerError, match='lib is writable by group or others'):
        _daemon.install_engine(state_dir)


def test_every_engine_file_is_named_by_an_import_statement_so_modules_bundle_it():
    """AnsiballZ bundles only module_utils imported by statement; install_engine loads ENGINE files by name."""
    import ast
    tree = ast.parse(open(_daemon.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').endswith('plugins.module_utils'):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('ansible_collections.pggit.chaos'):
            imported.add(node.module.rsplit('.', 1)[-1])
    missing = set(_daemon.ENGINE) - imported - {'_daemon'}
    assert not missing, 'ENGINE files no import statement names (they would be missing on the target): %s' % sorted(missing)


def test_an_exception_outside_the_steps_never_ends_the_reaper(ledger, clock, monkeypatch, capsys):
    """A state dir made unsafe, a full disk, a bug: logged and retried, the fault is never left behind."""
    fid = add(ledger, expires_in=0)
    calls = []

    def revert_one(led, fault_id, runner=None, reason='requested'):
        calls.append(reason)
        if len(calls) < 3:
            raise _reaper._ledger.LedgerError('state_dir %s is writable by group or others' % led.state_dir)
        led.delete(fault_id)
        return {'id': fault_id, 'result': 'reverted'}
    monkeypatch.setattr(_undo, 'revert_one', revert_one)
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert len(calls) == 3
    assert 'LedgerError: state_dir' in capsys.readouterr().out


def test_a_broken_expiry_is_acted_on_not_a_crash(ledger, clock, monkeypatch):
    fid = add(ledger, expires_in=100)
    record = ledger.read(fid)
    record['expires_at'] = 'soon'
    ledger.write(record)
    calls = fake_revert(monkeypatch, ledger, clock, ['reverted'])
    assert _reaper.watch(ledger, fid, clock=clock, monotonic=clock.monotonic, sleep=clock.sleep) == 0
    assert len(calls) == 1


def test_a_reaper_that_never_starts_is_an_error_not_a_silent_success(tmp_path):
    ledger = Ledger(str(tmp_path / 'state')).ensure()
    record = ledger.new_record('file', 'x', 60, [])
    ledger.write(record)
    started = time.time()
    with pytest.raises(_daemon.DaemonError, match='pggit-chaos-reaper .* exited before it was ready'):
        _reaper.arm(ledger, record['id'], python='/bin/false')
    assert time.time() - started < 10
