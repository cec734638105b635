"""Helpers for integration tests: a real, throwaway PostgreSQL 15 with the pgGit contract fixture.

Started once per test session on 127.0.0.1 and a free port, as the postgres
user, in a temporary directory; stopped (immediate) and removed at the end,
also from atexit so an interrupted run leaves nothing behind.
"""
from __future__ import annotations

import atexit
import json
import os
import pwd
import shutil
import socket
import subprocess
import signal
import tempfile
import time
import uuid
from contextlib import contextmanager

import pytest


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_BIN = os.environ.get('PGGIT_PG_BIN', '/usr/lib/postgresql/15/bin')
FIXTURE_SQL = os.path.join(REPO, 'roles', 'pggit_install', 'files', 'pggit_fixture.sql')
BROKEN_HEALTH_SQL = os.path.join(REPO, 'roles', 'pggit_install', 'files', 'pggit_broken_health_check.sql')


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _joiner(folders):
    """A preexec_fn: the child writes its pid to cgroup.procs of each folder before it runs anything."""
    def join():
        for folder in folders:
            fd = os.open(os.path.join(folder, 'cgroup.procs'), os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
    return join


def _as_postgres(argv, **kwargs):
    return subprocess.run(['runuser', '-u', 'postgres', '--'] + argv, check=True, capture_output=True, text=True, **kwargs)


class Postgres(object):
    def __init__(self):
        if not os.path.exists(os.path.join(PG_BIN, 'initdb')):
            pytest.fail('PostgreSQL 15 server binaries not found in %s: run make deps' % PG_BIN)
        self.base = tempfile.mkdtemp(prefix='pggit-chaos-it-')
        os.chmod(self.base, 0o755)
        pw = pwd.getpwnam('postgres')
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.base, 'data')
        self.port = _free_port()
        self.started = False

    def start(self, cgroups=()):
        """initdb and start; ``cgroups``: cgroup folders the starting process joins first, so the server is born in them."""
        _as_postgres([os.path.join(PG_BIN, 'initdb'), '-A', 'trust', '-U', 'postgres', '-D', self.data, '--no-sync'])
        opts = "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60 -c shared_buffers=16MB" % (self.port, self.base)
        _as_postgres([os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-o', opts, '-l', os.path.join(self.base, 'log'), '-w', 'start'],
                     preexec_fn=_joiner(cgroups) if cgroups else None)
        self.started = True
        atexit.register(self.stop)
        return self

    def stop(self):
        if self.started:
            subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-m', 'immediate', 'stop'],
                           capture_output=True, check=False)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def params(self, db='pggit'):
        return {'login_host': '127.0.0.1', 'login_port': self.port, 'login_user': 'postgres', 'db': db,
                'login_password': '', 'login_unix_socket': '', 'ssl_mode': 'disable', 'connect_timeout': 5}

    def psql(self, db, *args):
        proc = subprocess.run(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', str(self.port), '-U', 'postgres',
                               '-d', db] + list(args), check=False, capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError('psql %s failed (%s): %s' % (' '.join(args), proc.returncode, proc.stderr[-2000:]))
        return proc.stdout

    def create_db(self, name, fixture=True):
        self.psql('postgres', '-c', 'CREATE DATABASE "%s"' % name)
        if fixture:
            self.psql(name, '-f', FIXTURE_SQL)
        return self.params(name)


def kill_reapers(state_dir):
    """Never leave a reaper behind, whatever the test did."""
    faults = os.path.join(state_dir, 'faults')
    if not os.path.isdir(faults):
        return
    for entry in os.listdir(faults):
        if entry.endswith('.json'):
            try:
                with open(os.path.join(faults, entry)) as handle:
                    pid = (json.load(handle).get('reaper') or {}).get('pid')
            except (OSError, ValueError):
                continue
            if pid:
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass


@contextmanager
def connection(params):
    import psycopg2
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'], dbname=params['db'])
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def query(params, text, args=None):
    with connection(params) as conn:
        cur = conn.cursor()
        cur.execute(text, args)
        return cur.fetchall() if cur.description else None


def cgroup_members(folder):
    """The pids in a cgroup folder ([] when it is gone)."""
    try:
        with open(os.path.join(folder, 'cgroup.procs')) as handle:
            return [int(line) for line in handle if line.strip()]
    except OSError:
        return []


@contextmanager
def child_cgroups(prefix, controllers=('memory', 'cpu', 'cpuacct'), memory_limit=None):
    """Cgroups of our own for a test server: children of this process's cgroups (v1 controllers, or v2), removed after.

    Yields {controller: folder}.  Everything still in them at the end is killed first."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup  # pylint: disable=import-outside-toplevel
    mine = _cgroup.of_pid(os.getpid())
    name = '%s-%s' % (prefix, uuid.uuid4().hex[:10])
    wanted = [c for c in controllers if c in mine] if all(c in mine for c in controllers) else []
    if not wanted and 'unified' in mine:
        wanted = ['unified']
    if not wanted:
        pytest.fail('no %s cgroup of this process is visible (%s): cannot give the test server cgroups of its own'
                    % ('/'.join(controllers), mine))
    made = dict((controller, os.path.join(mine[controller], name)) for controller in wanted)
    folders = sorted(set(made.values()))
    try:
        for folder in folders:
            os.mkdir(folder)
        if memory_limit is not None:
            memory_dir = made.get('memory') or made['unified']
            limit_file = 'memory.limit_in_bytes' if 'memory' in made else 'memory.max'
            if not os.path.exists(os.path.join(memory_dir, limit_file)):
                pytest.fail('%s has no %s: the memory controller is not enabled there' % (memory_dir, limit_file))
            with open(os.path.join(memory_dir, limit_file), 'w') as handle:
                handle.write(str(memory_limit))
        yield made
    finally:
        for _attempt in range(100):
            pids = [pid for folder in folders for pid in cgroup_members(folder)]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        for folder in folders:
            if os.path.isdir(folder):
                os.rmdir(folder)
