"""_server: what the server on this host is, how it starts again, and which processes play which role.

A real child process stands in for the postmaster: it works in a fake data
directory (its cwd), its stdout is a log file, and postmaster.pid names it.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import threading

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError

OPTS = ('/usr/lib/postgresql/15/bin/postgres "-D" "%s" "-p" "5433" "-k" "/tmp/sock dir" '
        '"-c" "listen_addresses=127.0.0.1" "-c" "search_path=a;b $x"\n')


class Cursor(object):
    def __init__(self, rows):
        self.rows = list(rows)
        self.executed = []

    def execute(self, query, args=None):
        self.executed.append((query, args))

    def fetchone(self):
        return self.rows.pop(0)

    def fetchall(self):
        return self.rows.pop(0)


@pytest.fixture
def server(tmp_path):
    """A fake data directory with a live 'postmaster' (sleep) working in it and logging to a file."""
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'PG_VERSION').write_text('15\n')
    (data / 'pg_wal').mkdir()
    log = tmp_path / 'server.log'
    with open(str(log), 'a') as out:
        proc = subprocess.Popen(['sleep', '30'], cwd=str(data), stdout=out, stderr=out)
    threading.Thread(target=proc.wait, daemon=True).start()
    (data / 'postmaster.pid').write_text('%d\n%s\n1700000000\n5433\n' % (proc.pid, data))
    (data / 'postmaster.opts').write_text(OPTS % data)
    yield {'data': str(data), 'pid': proc.pid, 'log': str(log), 'proc': proc}
    proc.kill()


def test_server_info_reads_the_server_and_proc(server, monkeypatch):
    monkeypatch.setattr(_server, 'SYSTEMD_RUN', '/nonexistent-systemd')
    cursor = Cursor([(server['data'], 150018, False)])
    info = _server.server_info(cursor)
    assert info['data_directory'] == server['data']
    assert info['pg_wal'] == os.path.join(os.path.realpath(server['data']), 'pg_wal')
    assert info['postmaster_pid'] == server['pid']
    assert info['postmaster_starttime'] == _steps.proc_starttime(server['pid'])
    assert info['version_num'] == 150018 and info['in_recovery'] is False
    assert info['owner'] == pwd.getpwuid(os.getuid()).pw_name
    assert info['bin_dir'] == os.path.dirname(os.path.realpath('/proc/%d/exe' % server['pid']))
    assert info['log'] == server['log']
    assert info['systemd_unit'] is None
    assert isinstance(info['cgroups'], dict)
    assert info['options'] == "-p 5433 -k '/tmp/sock dir' -c listen_addresses=127.0.0.1 -c 'search_path=a;b $x'"
    assert 'data_directory' in cursor.executed[0][0]


def test_server_info_refuses_a_data_directory_not_on_this_host(tmp_path):
    with pytest.raises(ChaosError, match='not a folder on this host'):
        _server.server_info(Cursor([(str(tmp_path / 'elsewhere'), 150018, False)]))


def test_server_info_refuses_a_dead_postmaster(server):
    server['proc'].kill()
    server['proc'].wait()
    with pytest.raises(ChaosError, match='not a live process working in that data directory'):
        _server.server_info(Cursor([(server['data'], 150018, False)]))


def test_server_info_refuses_a_pid_that_works_elsewhere(server, tmp_path):
    """A reused pid (a process whose cwd is another folder) is not the postmaster."""
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'postmaster.pid').write_text('%d\n' % server['pid'])
    with pytest.raises(ChaosError, match='not a live process'):
        _server.server_info(Cursor([(str(other), 150018, False)]))


def test_running_follows_the_postmaster(server, tmp_path):
    assert _server.running(server['data'])
    assert not _server.running(str(tmp_path))  # no postmaster.pid
    assert _server.leftovers(server['data']) == [server['pid']]
    server['proc'].kill()
    server['proc'].wait()
    assert not _server.running(server['data'])
    assert _server.leftovers(server['data']) == []


def test_start_step_pg_ctl_is_a_valid_pg_start_step(server, monkeypatch):
    monkeypatch.setattr(_server, 'SYSTEMD_RUN', '/nonexistent-systemd')
    info = _server.server_info(Cursor([(server['data'], 150018, False)]))
    info.update(bin_dir='/usr/lib/postgresql/15/bin', owner='postgres',
                cgroups={'memory': '/sys/fs/cgroup/memory/lab', 'cpu': '/sys/fs/cgroup/cpu/lab'})
    step = _server.start_step(info)
    assert step == {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': server['data'],
                    'pg_ctl': '/usr/lib/postgresql/15/bin/pg_ctl', 'user': 'postgres', 'log': server['log'],
                    'options': info['options'], 'cgroups': info['cgroups'], 'wait_s': 60}
    _steps.check_steps([step], None)
    command = _server.start_command(step)
    assert command.startswith('as postgres: /usr/lib/postgresql/15/bin/pg_ctl start -D %s -w -t 60 -l %s -o ' % (server['data'], server['log']))
    summary = _server.summary(info)
    assert summary['start_method'] == 'pg_ctl' and summary['postmaster_pid'] == server['pid']


def test_start_step_systemd():
    info = {'systemd_unit': 'postgresql@15-main.service', 'data_directory': '/var/lib/postgresql/15/main'}
    step = _server.start_step(info)
    assert step == {'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql@15-main.service'}
    _steps.check_steps([step], None)
    assert _server.start_command(step) == 'systemctl start postgresql@15-main.service'


@pytest.mark.parametrize('text, unit', [
    ('1:name=systemd:/system.slice/system-postgresql.slice/postgresql@15-main.service\n', 'postgresql@15-main.service'),
    ('0::/system.slice/postgresql.service\n', 'postgresql.service'),
    ('0::/user.slice/user-1000.slice/session-3.scope\n', None),
    ('4:memory:/lab/x.service\n', None),  # a controller line, not systemd's own
])
def test_unit_of(text, unit):
    assert _server.unit_of(text) == unit


def test_systemd_unit_only_when_the_unit_runs_this_postmaster(server, monkeypatch, tmp_path):
    monkeypatch.setattr(_server, 'SYSTEMD_RUN', str(tmp_path))
    monkeypatch.setattr(_server, 'unit_of', lambda text: 'ssh.service')
    assert _server.systemd_unit(server['pid'], main_pid=lambda unit: 1) is None
    assert _server.systemd_unit(server['pid'], main_pid=lambda unit: server['pid']) == 'ssh.service'


def test_start_options_without_opts_file(tmp_path):
    assert _server.start_options(str(tmp_path)) is None
    (tmp_path / 'postmaster.opts').write_text('/usr/lib/postgresql/15/bin/postgres "-D" "/x"\n')
    assert _server.start_options(str(tmp_path)) is None


def test_activity_query_filters_and_spares_our_own_sessions():
    query, args = _server.activity_query('backend', application_name='app%', user='u', pid=42)
    assert 'pid <> pg_backend_pid()' in query and 'application_name LIKE %s' in query
    assert args == [['client backend'], list(_server.OWN_APPLICATIONS), 'app%', 'u', 42]
    query, args = _server.activity_query('autovacuum')
    assert args == [['autovacuum launcher', 'autovacuum worker']] and 'LIKE' not in query


def test_processes_by_role(server):
    info = {'data_directory': server['data'], 'postmaster_pid': server['pid'],
            'postmaster_starttime': _steps.proc_starttime(server['pid'])}
    found = _server.processes(None, info, 'postmaster')
    assert [p['pid'] for p in found] == [server['pid']] and found[0]['role'] == 'postmaster'
    assert 'sleep' in found[0]['cmdline']
    # A row for a live process working in the data directory is kept; one for a pid elsewhere (ours) is not.
    cursor = Cursor([[(server['pid'], 'client backend', 'app', 'u'), (os.getpid(), 'client backend', 'x', 'u'), (2 ** 22 + 7, 'client backend', 'gone', 'u')]])
    found = _server.processes(cursor, info, 'backend', application_name='a%')
    assert [(p['pid'], p['role'], p['application_name'], p['usename']) for p in found] == [(server['pid'], 'backend', 'app', 'u')]
    with pytest.raises(ChaosError, match='role must be one of'):
        _server.processes(None, info, 'bgwriter')


def test_processes_drops_a_restarted_postmaster(server):
    info = {'data_directory': server['data'], 'postmaster_pid': server['pid'], 'postmaster_starttime': 1}
    assert _server.processes(None, info, 'postmaster') == []


def test_pg_start_does_nothing_while_the_server_runs(server):
    """Decided by looking: a running postmaster means no pg_ctl at all."""
    step = {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': server['data'], 'pg_ctl': '/nonexistent/pg_ctl', 'user': 'postgres',
            'log': None, 'options': None, 'cgroups': {}, 'wait_s': 5}
    assert _steps.STEP_HANDLERS['pg_start'](step, {}) is False


def test_pg_start_refuses_a_data_directory_of_another_user(server):
    server['proc'].kill()
    server['proc'].wait()
    step = {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': server['data'], 'pg_ctl': '/bin/true', 'user': 'nobody',
            'log': None, 'options': None, 'cgroups': {}, 'wait_s': 5}
    with pytest.raises(UndoError, match='not to nobody'):
        _steps.STEP_HANDLERS['pg_start'](step, {})


# -- files of the data directory are read as root: never blocking, never through a link, only the owner's ----------
def finishes(func, seconds=5.0):
    """(finished, result) of func run in a thread: a read that blocks (a FIFO) never finishes."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault('result', func()), daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), out.get('result')


def release(fifo):
    """Wake a reader still blocked on a FIFO (the unfixed code), so no thread outlives the test."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_fifo_planted_as_postmaster_pid_never_blocks(server):
    pid_file = os.path.join(server['data'], 'postmaster.pid')
    os.unlink(pid_file)
    os.mkfifo(pid_file)
    try:
        finished, result = finishes(lambda: _server.postmaster_pid(server['data']))
        assert finished, 'reading a FIFO postmaster.pid blocked'
        assert result is None
        finished, result = finishes(lambda: _server.running(server['data']))
        assert finished and result is False
    finally:
        release(pid_file)


def test_postmaster_pid_through_a_link_or_of_another_owner_is_not_read(server, tmp_path):
    pid_file = os.path.join(server['data'], 'postmaster.pid')
    real = tmp_path / 'elsewhere.pid'
    real.write_text('%d\n' % server['pid'])
    os.unlink(pid_file)
    os.symlink(str(real), pid_file)
    assert _server.postmaster_pid(server['data']) is None  # a link is never followed
    os.unlink(pid_file)
    with open(pid_file, 'w') as handle:
        handle.write('%d\n' % server['pid'])
    assert _server.postmaster_pid(server['data']) == server['pid']
    if os.geteuid() != 0:
        pytest.fail('run the unit tests as root (the owner check needs a file of another user)')
    os.chown(pid_file, pwd.getpwnam('nobody').pw_uid, -1)
    assert _server.postmaster_pid(server['data']) is None  # not the data directory owner's
    (tmp_path / 'opts').write_text(OPTS % server['data'])
    os.unlink(os.path.join(server['data'], 'postmaster.opts'))
    os.symlink(str(tmp_path / 'opts'), os.path.join(server['data'], 'postmaster.opts'))
    assert _server.start_options(server['data']) is None


# -- a server another program manages is never started by us ---------------------------------------------------------
@pytest.mark.parametrize('argv, manager', [
    (['/usr/bin/python3', '/usr/local/bin/patroni', '/etc/patroni/patroni.yml'],
     '/usr/bin/python3 /usr/local/bin/patroni /etc/patroni/patroni.yml'),
    (['patroni', '/etc/patroni.yml'], 'patroni /etc/patroni.yml'),
    (['pg_autoctl: start/stop postgres'], 'pg_autoctl: start/stop postgres'),
    (['/usr/bin/repmgrd', '-f', '/etc/repmgr.conf'], '/usr/bin/repmgrd -f /etc/repmgr.conf'),
    (['stolon-keeper', '--data-dir', '/data'], 'stolon-keeper --data-dir /data'),
    (['/usr/bin/python3', '/usr/bin/supervisord', '-n'], '/usr/bin/python3 /usr/bin/supervisord -n'),
    (['runsv', 'postgres'], 'runsv postgres'),
    # Not managers: PID 1 or a subreaper that adopted a server daemonized by pg_ctl, a shell, the sandbox init.
    (['/sbin/init'], None),
    (['/lib/systemd/systemd', '--system', '--deserialize', '31'], None),
    (['/lib/systemd/systemd', '--user'], None),
    (['/process_api', '--firecracker-init', '--addr', '0.0.0.0:2024'], None),
    (['/usr/bin/tini', '--', 'docker-entrypoint.sh'], None),
    (['bash'], None),
    (['/usr/lib/postgresql/15/bin/pg_ctl', 'start', '-D', '/data'], None),
    (['/usr/bin/python3', '/srv/not-patroni-really.py'], None),
    ([], None),
    (None, None),
])
def test_manager_of_decides_by_the_parent_command_line(argv, manager):
    assert _server.manager_of(argv) == manager


def test_manager_of_shortens_a_long_command_line():
    shown = _server.manager_of(['patroni'] + ['/etc/patroni/%d.yml' % n for n in range(50)])
    assert shown.startswith('patroni /etc/patroni/0.yml') and shown.endswith('...') and len(shown) == _server.MANAGER_SHOWN


@pytest.fixture
def managed(tmp_path):
    """A fake data directory whose 'postmaster' (sleep) is the child of a live process named patroni."""
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'PG_VERSION').write_text('15\n')
    parent = subprocess.Popen(['bash', '-c', 'exec -a patroni bash -c "sleep 30 & echo \\$!; wait"', 'x'], cwd=str(data),
                              stdout=subprocess.PIPE, universal_newlines=True, start_new_session=True)
    threading.Thread(target=parent.wait, daemon=True).start()
    pid = int(parent.stdout.readline())
    (data / 'postmaster.pid').write_text('%d\n%s\n' % (pid, data))
    yield {'data': str(data), 'pid': pid, 'parent': parent}
    try:
        os.killpg(parent.pid, 9)
    except OSError:
        pass  # the test killed it already


def test_a_server_whose_parent_is_patroni_gets_a_step_that_starts_nothing(managed, monkeypatch):
    monkeypatch.setattr(_server, 'SYSTEMD_RUN', '/nonexistent-systemd')
    assert _server.parent_manager(managed['pid']).startswith('patroni -c ')
    info = _server.server_info(Cursor([(managed['data'], 150018, False)]))
    assert info['manager'].startswith('patroni -c ')
    step = _server.start_step(info)
    assert step == {'type': 'pg_start', 'method': 'manager', 'manager': info['manager'], 'pgdata': managed['data']}
    _steps.check_steps([step], None)
    summary = _server.summary(info)
    assert summary['start_method'] == 'manager' and summary['manager'] == info['manager']
    assert summary['start_command'].startswith('nothing: patroni -c ')
    # Its handler starts nothing, running or not, and never fails: it says whether the server is back.
    ctx = {'state_dir': None}
    assert _steps.run_steps([step], ctx) is False
    assert 'is running' in ctx['notes'][0] and 'started nothing' in ctx['notes'][0]
    os.killpg(managed['parent'].pid, 9)
    assert wait_gone(managed['pid'])
    ctx = {'state_dir': None}
    assert _steps.run_steps([step], ctx) is False
    assert 'not running' in ctx['notes'][0]


def wait_gone(pid, seconds=5.0):
    import time  # pylint: disable=import-outside-toplevel
    deadline = time.time() + seconds
    while _steps.proc_starttime(pid) is not None and time.time() < deadline:
        time.sleep(0.01)
    return _steps.proc_starttime(pid) is None


def test_a_server_daemonized_by_pg_ctl_is_not_managed(server, monkeypatch):
    """The fixture's 'postmaster' is the child of this test (no manager): pg_ctl it is."""
    monkeypatch.setattr(_server, 'SYSTEMD_RUN', '/nonexistent-systemd')
    info = _server.server_info(Cursor([(server['data'], 150018, False)]))
    assert info['manager'] is None and _server.start_step(info)['method'] == 'pg_ctl'


def test_systemd_wins_over_a_manager_parent():
    step = _server.start_step({'systemd_unit': 'patroni.service', 'manager': 'patroni x', 'data_directory': '/d'})
    assert step['method'] == 'systemd'
