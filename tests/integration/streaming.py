"""A private streaming cluster for integration tests: a primary and replicas (pg_basebackup -R) on 127.0.0.1.

Every server runs as postgres from a temporary folder of its own, on a free port, with wal_log_hints and
full_page_writes on (pg_rewind needs them).  ``stop()`` stops every server (immediate) and removes the folders; it
is registered with atexit too, so an interrupted run leaves nothing behind.
"""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import psycopg2

from pgtools import PG_BIN, _free_port

# In postgresql.conf (copied to the replicas by pg_basebackup), not on the command line: pg_rewind's single-user crash
# recovery reads only the configuration files, and would turn wal_log_hints off in pg_control otherwise.
SETTINGS = '''
listen_addresses = '127.0.0.1'
fsync = off
wal_log_hints = on
full_page_writes = on
wal_level = replica
max_wal_senders = 10
hot_standby = on
wal_keep_size = 64MB
max_connections = 30
shared_buffers = 16MB
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms
'''


def _as_postgres(argv, check=True):
    return subprocess.run(['runuser', '-u', 'postgres', '--'] + argv, check=check, capture_output=True, text=True, cwd='/')


class Node(object):
    def __init__(self, name):
        self.name = name
        self.base = tempfile.mkdtemp(prefix='pggit-chaos-fo-%s-' % name)
        os.chmod(self.base, 0o755)
        account = pwd.getpwnam('postgres')
        os.chown(self.base, account.pw_uid, account.pw_gid)
        self.data = os.path.join(self.base, 'data')
        self.log = os.path.join(self.base, 'log')
        self.port = _free_port()

    def member(self, region=None):
        found = {'name': self.name, 'host': '127.0.0.1', 'port': self.port}
        if region:
            found['region'] = region
        return found

    def params(self, db='postgres'):
        return {'login_host': '127.0.0.1', 'login_port': self.port, 'login_user': 'postgres', 'db': db,
                'login_password': '', 'login_unix_socket': '', 'ssl_mode': 'disable', 'connect_timeout': 3}

    def start(self):
        opts = '-p %d -k %s' % (self.port, self.base)
        _as_postgres([os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-o', opts, '-l', self.log, '-w', '-t', '60', 'start'])

    def stop(self):
        _as_postgres([os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-m', 'immediate', '-w', 'stop'], check=False)

    def query(self, text, args=None):
        conn = psycopg2.connect(host='127.0.0.1', port=self.port, user='postgres', dbname='postgres', connect_timeout=3)
        conn.autocommit = True
        try:
            cur = conn.cursor()
            cur.execute(text, args)
            return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def answers(self):
        try:
            self.query('SELECT 1')
            return True
        except psycopg2.Error:
            return False


class StreamingCluster(object):
    """``StreamingCluster(['m1', 'm2', 'm3']).start()``: m1 the primary, the others its streaming replicas."""

    def __init__(self, names):
        self.nodes = [Node(name) for name in names]
        atexit.register(self.stop)

    def __getitem__(self, name):
        return next(node for node in self.nodes if node.name == name)

    def start(self):
        primary = self.nodes[0]
        _as_postgres([os.path.join(PG_BIN, 'initdb'), '-A', 'trust', '-U', 'postgres', '-D', primary.data, '--no-sync',
                      '--no-instructions'])
        with open(os.path.join(primary.data, 'postgresql.conf'), 'a') as handle:
            handle.write(SETTINGS)
        primary.start()
        for node in self.nodes[1:]:
            _as_postgres([os.path.join(PG_BIN, 'pg_basebackup'), '-d',
                          'host=127.0.0.1 port=%d user=postgres application_name=%s' % (primary.port, node.name),
                          '-D', node.data, '-R', '-X', 'stream', '-c', 'fast', '--no-sync'])
            node.start()
        return self

    def members(self, regions=None):
        return [node.member((regions or {}).get(node.name)) for node in self.nodes]

    def stop(self):
        for node in self.nodes:
            if os.path.isdir(node.base):
                node.stop()
                shutil.rmtree(node.base, ignore_errors=True)

    # -- what the tests check ------------------------------------------------------------------------------------------
    def roles(self):
        """{name: True (in recovery) | False (primary) | None (down)}."""
        found = {}
        for node in self.nodes:
            try:
                found[node.name] = node.query('SELECT pg_is_in_recovery()')[0][0]
            except psycopg2.Error:
                found[node.name] = None
        return found

    def streaming_to(self, primary):
        """application_name of every walsender of ``primary`` in state streaming."""
        return sorted(r[0] for r in self[primary].query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"))

    def converged_on(self, primary):
        """True when ``primary`` is the one primary and every other node is in recovery and streams from it."""
        roles = self.roles()
        others = sorted(n.name for n in self.nodes if n.name != primary)
        return roles[primary] is False and all(roles[n] is True for n in others) and self.streaming_to(primary) == others

    def wait_converged(self, primary, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.converged_on(primary):
                    return True
            except psycopg2.Error:
                pass
            time.sleep(0.2)
        return False
