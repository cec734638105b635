"""The undo steps of process faults: signal_process (CONT a paused PostgreSQL process) and pg_start (checks).

signal_process runs against a real stopped process whose command line says
postgres; pg_start's real start is proven in tests/integration/test_process_fault.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

PG_CTL = '/usr/lib/postgresql/15/bin/pg_ctl'


# Appends a byte to its file every 10 ms: its progress shows that it runs (a state letter can be D or R or S).
TICKER = 'import sys, time\nf = open(sys.argv[2], "ab", 0)\nwhile True:\n    f.write(b".")\n    time.sleep(0.01)\n'


@pytest.fixture
def paused(tmp_path):
    """A real process named like a PostgreSQL child, stopped with SIGSTOP; killed in any case."""
    ticks = tmp_path / 'ticks'
    proc = subprocess.Popen([sys.executable, '-c', TICKER, 'postgres: walreceiver', str(ticks)])
    proc.ticks = ticks
    threading.Thread(target=proc.wait, daemon=True).start()
    deadline = time.time() + 5
    while not (ticks.exists() and ticks.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.01)
    assert 'postgres' in _steps.proc_cmdline(proc.pid)
    os.kill(proc.pid, signal.SIGSTOP)
    while _steps.proc_state(proc.pid) != 'T' and time.time() < deadline:
        time.sleep(0.01)
    assert _steps.proc_state(proc.pid) == 'T'
    yield proc
    proc.kill()


def cont(proc, **change):
    step = dict({'type': 'signal_process', 'pid': proc.pid, 'starttime': _steps.proc_starttime(proc.pid), 'signal': 'CONT',
                 'match': 'postgres'}, **change)
    _steps.check_steps([step], None)
    return step


def test_signal_process_resumes_that_very_process(paused):
    step = cont(paused)
    stopped_at = paused.ticks.stat().st_size
    time.sleep(0.2)
    assert paused.ticks.stat().st_size == stopped_at  # stopped: no progress
    assert _steps.run_steps([step], {}) is True
    # Resumed: it makes progress again (its state letter may be R, S or D on a busy machine).
    deadline = time.time() + 10
    while paused.ticks.stat().st_size == stopped_at and time.time() < deadline:
        time.sleep(0.02)
    assert paused.ticks.stat().st_size > stopped_at
    assert _steps.proc_state(paused.pid) != 'T'
    assert _steps.run_steps([step], {}) is False  # idempotent: it runs, nothing to do


def test_signal_process_leaves_another_process_with_that_pid_alone(paused):
    """A pid reused by another process (another start time) is never signalled."""
    step = cont(paused, starttime=_steps.proc_starttime(paused.pid) - 1)
    assert _steps.run_steps([step], {}) is False
    assert _steps.proc_state(paused.pid) == 'T'


def test_signal_process_leaves_a_process_that_is_not_postgres_alone(paused):
    step = cont(paused, match='postmaster')
    assert _steps.run_steps([step], {}) is False
    assert _steps.proc_state(paused.pid) == 'T'


def test_signal_process_on_a_gone_process_is_done(paused):
    step = cont(paused)
    paused.kill()
    deadline = time.time() + 5
    while _steps.proc_starttime(paused.pid) is not None and time.time() < deadline:
        time.sleep(0.01)
    assert _steps.run_steps([step], {}) is False


def good_pg_start(**change):
    step = {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': '/var/lib/postgresql/15/main', 'pg_ctl': PG_CTL,
            'user': 'postgres', 'log': '/var/log/postgresql/x.log', 'options': "-p 5433 -c 'search_path=a;b'",
            'cgroups': {'memory': '/sys/fs/cgroup/memory/pggit-lab-x-pg1'}, 'wait_s': 60}
    step.update(change)
    return step


def test_good_steps_pass_the_check():
    if not os.path.exists(os.path.dirname(PG_CTL)):
        pytest.fail('PostgreSQL 15 binaries are missing in %s: run make deps' % os.path.dirname(PG_CTL))
    _steps.check_steps([good_pg_start(), good_pg_start(log=None, options=None, cgroups={}),
                        {'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql@15-main.service'}], None)


@pytest.mark.parametrize('step, why', [
    ({'type': 'signal_process', 'pid': 4242, 'starttime': 1, 'signal': 'KILL', 'match': 'postgres'}, 'signal must be one of CONT'),
    ({'type': 'signal_process', 'pid': 4242, 'starttime': 1, 'signal': 'STOP', 'match': 'postgres'}, 'signal must be one of CONT'),
    ({'type': 'signal_process', 'pid': 1, 'starttime': 1, 'signal': 'CONT', 'match': 'postgres'}, 'pid must be an integer above 1'),
    ({'type': 'signal_process', 'pid': '42', 'starttime': 1, 'signal': 'CONT', 'match': 'postgres'}, 'pid must be'),
    ({'type': 'signal_process', 'pid': 4242, 'signal': 'CONT', 'match': 'postgres'}, 'starttime must be'),
    ({'type': 'signal_process', 'pid': 4242, 'starttime': 1, 'signal': 'CONT', 'match': 'sshd'}, 'only PostgreSQL processes'),
    (good_pg_start(method='shell'), 'method must be one of'),
    (good_pg_start(pgdata='data'), 'pgdata must be an absolute'),
    (good_pg_start(pgdata='/'), 'pgdata must be an absolute'),
    (good_pg_start(pgdata='/var/lib/../../etc'), 'pgdata must be an absolute'),
    (good_pg_start(pg_ctl='/usr/lib/postgresql/15/bin/postgres'), 'named pg_ctl'),
    (good_pg_start(pg_ctl='pg_ctl'), 'named pg_ctl'),
    (good_pg_start(pg_ctl='/tmp/pg_ctl'), 'owned by root and writable only by root'),
    (good_pg_start(pg_ctl='/nonexistent/pg_ctl'), 'cannot look at its folder'),
    (good_pg_start(user='root'), 'never root'),
    (good_pg_start(user=''), 'never root'),
    (good_pg_start(log='rel.log'), 'log must be an absolute path'),
    (good_pg_start(options='-p 5433; touch /tmp/x'), 'options must be shell-quoted'),
    (good_pg_start(options='-c x=$(id)'), 'options must be shell-quoted'),
    (good_pg_start(options='`id`'), 'options must be shell-quoted'),
    (good_pg_start(wait_s=0), 'wait_s must be an integer from 1'),
    (good_pg_start(wait_s='60'), 'wait_s must be an integer from 1'),
    (good_pg_start(cgroups={'memory': '/etc'}), '/sys/fs/cgroup'),
    (good_pg_start(cgroups={'memory': '/sys/fs/cgroup/memory/../../../etc'}), 'not a normal path'),
    ({'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql; rm -rf /'}, 'unit must be a systemd .service'),
    ({'type': 'pg_start', 'method': 'systemd', 'unit': '-Hevil.service'}, 'unit must be a systemd .service'),  # read as an option
    ({'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql.socket'}, 'unit must be a systemd .service'),
])
def test_checks_refuse_what_our_faults_never_write(step, why):
    with pytest.raises(UndoError, match='refused: .*%s' % why.replace('(', r'\(').replace('.', r'\.')):
        _steps.check_steps([step], None)
    with pytest.raises(UndoError):
        _steps.run_steps([step], {})


def test_pg_start_systemd_starts_only_an_inactive_unit(monkeypatch):
    monkeypatch.setattr(_steps, 'find_bin', lambda name: '/usr/bin/' + name)
    seen, state = [], {'active': False}

    def runner(argv):
        seen.append(argv[1:])
        if argv[1] == 'start':
            state['active'] = True
            return 0, '', ''
        return (0, 'active\n', '') if state['active'] else (3, 'failed\n', '')
    step = {'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql@15-main.service'}
    assert _steps.run_steps([step], {'runner': runner}) is True
    assert seen == [['is-active', 'postgresql@15-main.service'], ['start', 'postgresql@15-main.service'],
                    ['is-active', 'postgresql@15-main.service']]
    del seen[:]
    assert _steps.run_steps([step], {'runner': runner}) is False
    assert seen == [['is-active', 'postgresql@15-main.service']]


def test_pg_start_systemd_fails_when_the_unit_stays_down(monkeypatch):
    monkeypatch.setattr(_steps, 'find_bin', lambda name: '/usr/bin/' + name)

    def runner(argv):
        return (1, '', 'Job for x.service failed') if argv[1] == 'start' else (3, 'failed\n', '')
    with pytest.raises(UndoError, match='not active after /usr/bin/systemctl start x.service exited 1: Job for x.service failed'):
        _steps.run_steps([{'type': 'pg_start', 'method': 'systemd', 'unit': 'x.service'}], {'runner': runner})


FAKE_PG_CTL = r'''#!/bin/sh
# A stand-in for pg_ctl: the first start finds the old shared memory still in use; the second starts a 'postmaster'.
D=$3
L=$8
n=$(cat "$D/attempts" 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > "$D/attempts"
echo "$(id -u) $*" >> "$D/calls"
if [ $n -lt 2 ]; then
  echo 'FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use' >> "$L"
  echo 'pg_ctl: could not start server'
  exit 1
fi
cd "$D" && setsid sleep 30 < /dev/null > /dev/null 2>&1 &
echo $! > "$D/postmaster.pid"
exit 0
'''


@pytest.fixture
def fake_install():
    """A root-owned folder with a fake pg_ctl, and a data directory owned by nobody (as root only)."""
    import pwd
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip('needs root: pg_start runs pg_ctl as the data directory owner')
    base = tempfile.mkdtemp(prefix='pggit-chaos-unit-')
    os.chmod(base, 0o755)
    bin_dir, data = os.path.join(base, 'bin'), os.path.join(base, 'data')
    os.mkdir(bin_dir, 0o755)
    os.mkdir(data, 0o700)
    with open(os.path.join(bin_dir, 'pg_ctl'), 'w') as handle:
        handle.write(FAKE_PG_CTL)
    os.chmod(os.path.join(bin_dir, 'pg_ctl'), 0o755)
    with open(os.path.join(data, 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')
    nobody = pwd.getpwnam('nobody')
    for path in (data, os.path.join(data, 'PG_VERSION')):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    log = os.path.join(base, 'log')
    open(log, 'w').close()
    os.chown(log, nobody.pw_uid, nobody.pw_gid)
    yield {'pg_ctl': os.path.join(bin_dir, 'pg_ctl'), 'data': data, 'log': log, 'uid': nobody.pw_uid}
    try:  # never open(): a test plants a FIFO there
        os.kill(int((_steps.read_regular(os.path.join(data, 'postmaster.pid')) or b'').split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
    shutil.rmtree(base, ignore_errors=True)


def test_pg_start_retries_while_the_old_shared_memory_is_in_use_and_runs_as_the_owner(fake_install):
    from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _server
    step = {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': fake_install['data'], 'pg_ctl': fake_install['pg_ctl'],
            'user': 'nobody', 'log': fake_install['log'], 'options': "-p 5433 -c 'search_path=a;b'",
            'cgroups': _cgroup.of_pid(os.getpid()), 'wait_s': 10}
    assert not _server.running(fake_install['data'])
    assert _steps.run_steps([step], {}) is True
    assert _server.running(fake_install['data'])
    with open(os.path.join(fake_install['data'], 'calls')) as handle:
        calls = handle.read().splitlines()
    assert len(calls) == 2  # refused once (shared memory in use), then started
    assert calls[1] == "%d start -D %s -w -t 10 -l %s -o -p 5433 -c 'search_path=a;b'" % (
        fake_install['uid'], fake_install['data'], fake_install['log'])
    pid = _server.postmaster_pid(fake_install['data'])
    assert os.stat('/proc/%d' % pid).st_uid == fake_install['uid']  # never root
    assert _steps.run_steps([step], {}) is False  # it runs: nothing more to start


def test_pg_start_fails_naming_the_command_and_the_log(fake_install):
    with open(fake_install['pg_ctl'], 'w') as handle:
        handle.write("#!/bin/sh\necho 'FATAL:  could not load pg_hba.conf' >> \"$8\"\necho 'pg_ctl: could not start server'\nexit 1\n")
    step = {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': fake_install['data'], 'pg_ctl': fake_install['pg_ctl'],
            'user': 'nobody', 'log': fake_install['log'], 'options': None, 'cgroups': {}, 'wait_s': 10}
    started = time.time()
    with pytest.raises(UndoError) as failure:
        _steps.run_steps([step], {})
    assert time.time() - started < 5  # a failure that is not about old shared memory is not retried
    text = str(failure.value)
    assert 'did not start: as nobody: %s start -D' % fake_install['pg_ctl'] in text
    assert 'exited 1: pg_ctl: could not start server' in text and 'its log says: FATAL: could not load pg_hba.conf' in text


# -- files the data directory's owner controls, read as root holding the ledger lock ---------------------------------
def in_thread(func, seconds=10.0):
    """(finished, result or exception) of func in a thread: a read blocked on a FIFO never finishes."""
    out = {}

    def run():
        try:
            out['result'] = func()
        except Exception as exc:  # pylint: disable=broad-except
            out['result'] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), out.get('result')


def unblock(fifo):
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


FAILING_PG_CTL = "#!/bin/sh\necho 'pg_ctl: could not start server'\nexit 1\n"


def failing_step(fake_install, **change):
    with open(fake_install['pg_ctl'], 'w') as handle:
        handle.write(FAILING_PG_CTL)
    return dict({'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': fake_install['data'], 'pg_ctl': fake_install['pg_ctl'],
                 'user': 'nobody', 'log': fake_install['log'], 'options': None, 'cgroups': {}, 'wait_s': 5}, **change)


def test_pg_start_with_a_fifo_as_postmaster_pid_never_hangs(fake_install):
    """A FIFO planted as postmaster.pid by the data directory's owner must not block the reaper (which holds the lock)."""
    fifo = os.path.join(fake_install['data'], 'postmaster.pid')
    os.mkfifo(fifo)
    os.chown(fifo, fake_install['uid'], -1)
    try:
        finished, result = in_thread(lambda: _steps.run_steps([failing_step(fake_install)], {}))
        assert finished, 'pg_start blocked on a FIFO postmaster.pid'
        assert isinstance(result, UndoError) and 'did not start' in str(result)
    finally:
        unblock(fifo)
        os.unlink(fifo)


def test_pg_start_never_shows_a_log_swapped_for_a_link_to_a_secret(fake_install, tmp_path):
    """The owner (here its pg_ctl run) swaps the log in its data directory for a link to a root-only file while pg_start runs."""
    secret = tmp_path / 'shadow'
    secret.write_text('root:$6$SECRETHASH:19000:0:99999:7:::\n')
    os.chmod(str(secret), 0o600)
    log = os.path.join(fake_install['data'], 'server.log')
    open(log, 'w').close()
    os.chown(log, fake_install['uid'], -1)
    step = failing_step(fake_install, log=log)
    with open(fake_install['pg_ctl'], 'w') as handle:
        handle.write('#!/bin/sh\nrm -f "$8" && ln -s %s "$8"\necho \'pg_ctl: could not start server\'\nexit 1\n' % secret)
    with pytest.raises(UndoError) as failure:
        _steps.run_steps([step], {})
    assert os.path.islink(log)  # the swap happened
    assert 'could not start server' in str(failure.value)
    assert 'SECRETHASH' not in str(failure.value) and 'its log says' not in str(failure.value)


def test_log_since_reads_only_a_regular_file_of_the_owner_without_blocking(tmp_path):
    log = tmp_path / 'log'
    log.write_text('old line\n' + 'x' * 3000 + '\nFATAL:  it broke\n')
    uid = os.stat(str(log)).st_uid
    assert _steps._log_since(str(log), 0, uid).endswith('FATAL: it broke')
    assert len(_steps._log_since(str(log), 0, uid)) <= 1500  # the tail only
    assert _steps._log_since(str(log), os.path.getsize(str(log)), uid) == ''  # nothing new after offset
    assert _steps._log_since(str(log), 0, uid + 1) == ''  # not the server owner's
    link = tmp_path / 'link'
    os.symlink(str(log), str(link))
    assert _steps._log_since(str(link), 0, uid) == '' and _steps._log_size(str(link)) == 0
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)
    try:
        finished, result = in_thread(lambda: _steps._log_since(fifo, 0, uid))
        assert finished and result == ''
    finally:
        unblock(fifo)
    assert _steps.read_regular(str(log), 5) == b'old l'  # capped


# -- a server another program manages: the step starts nothing ---------------------------------------------------------
def test_manager_step_passes_its_check_and_is_refused_where_a_restart_is_meant():
    step = {'type': 'pg_start', 'method': 'manager', 'manager': 'patroni /etc/patroni.yml', 'pgdata': '/var/lib/postgresql/15/main'}
    _steps.check_steps([step], None)
    # The steps that restart a server (pg_restart, restore_page's start) share this check: never a managed server.
    assert 'managed by patroni /etc/patroni.yml' in _steps._check_pg_start(step, None)


@pytest.mark.parametrize('change, why', [
    (dict(manager=''), 'manager must name the program'),
    (dict(manager='patroni\nrm -rf /'), 'manager must name the program'),
    (dict(manager='p' * 201), 'manager must name the program'),
    (dict(manager=None), 'manager must name the program'),
    (dict(pgdata='data'), 'pgdata must be an absolute'),
    (dict(pgdata='/'), 'pgdata must be an absolute'),
])
def test_manager_step_check_refuses(change, why):
    step = dict({'type': 'pg_start', 'method': 'manager', 'manager': 'patroni', 'pgdata': '/var/lib/postgresql/15/main'}, **change)
    with pytest.raises(UndoError, match='refused: %s' % why):
        _steps.check_steps([step], None)


def test_manager_step_starts_nothing_when_the_server_is_down(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_steps, '_as_user', lambda *args: calls.append(args))
    monkeypatch.setattr(_steps, '_run', lambda *args: calls.append(args))
    step = {'type': 'pg_start', 'method': 'manager', 'manager': 'patroni', 'pgdata': str(tmp_path)}
    ctx = {'state_dir': None}
    assert _steps.run_steps([step], ctx) is False
    assert calls == [] and 'not running' in ctx['notes'][0] and 'patroni manages it' in ctx['notes'][0]
