"""Connections as community.postgresql makes them, and clean failures instead of tracebacks, on a real PostgreSQL.

- login_unix_socket is used only when login_host is empty or localhost;
- ca_cert / ssl_cert / ssl_key reach libpq (a TLS server that demands a client certificate), and the
  ledger keeps them so the revert reconnects the same way;
- connect_params reach libpq, and collisions or unknown keywords are refused before connecting;
- every bad input to pggit_verify ends in a finding or a message, never a traceback.
"""
from __future__ import annotations

import atexit
import json
import os
import pwd
import subprocess
from unittest import mock

import pytest

from ansible.module_utils.basic import AnsibleModule

from modrun import run_module
from pgtools import PG_BIN, Postgres, _as_postgres, kill_reapers, query
from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import exec_sql, postgres_argument_spec, sql_failures
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_revert, pggit_chaos_trigger, pggit_verify


def verify(params, **extra):
    args = dict(params)
    args.update(extra)
    return run_module(pggit_verify.main, args)


def by_name(result):
    return dict((c['name'], c) for c in result['checks'])


def over_socket(params):
    """True when a connection made from ``params`` came over the Unix socket (no server address)."""
    conn = _pgconn.connect(params)
    try:
        cur = conn.cursor()
        cur.execute('SELECT inet_server_addr() IS NULL')
        return cur.fetchone()[0]
    finally:
        conn.close()


# -- login_unix_socket -----------------------------------------------------------------
def test_socket_is_used_when_host_is_empty_or_localhost(postgres, pgdb):
    assert over_socket(dict(pgdb, login_host='', login_unix_socket=postgres.base)) is True
    assert over_socket(dict(pgdb, login_host='localhost', login_unix_socket=postgres.base)) is True


def test_a_real_host_wins_over_the_socket(pgdb):
    # Before: the socket silently won, and a stale socket path broke a good login_host.
    params = dict(pgdb, login_host='127.0.0.1', login_unix_socket='/nonexistent/socket-dir')
    assert over_socket(params) is False
    warnings = []
    with mock.patch.object(AnsibleModule, 'warn', lambda self, text: warnings.append(text)):
        result, failed = verify(params)
    assert not failed and result['healthy'], result['findings']
    assert any("login_unix_socket '/nonexistent/socket-dir' is not used" in w for w in warnings)


# -- connect_params ----------------------------------------------------------------------
def test_connect_params_reach_libpq(pgdb):
    params = dict(pgdb, connect_params={'options': '-c search_path=pggit_chaos_probe_test', 'keepalives': 1})
    conn = _pgconn.connect(params)
    try:
        cur = conn.cursor()
        cur.execute('SHOW search_path')
        assert cur.fetchone()[0] == 'pggit_chaos_probe_test'
    finally:
        conn.close()
    result, failed = verify(params)
    assert not failed and result['healthy'], result['findings']


@pytest.mark.parametrize('connect_params, message', [
    ({'host': '198.18.0.1'}, "connect_params: 'host' is set by login_host; use that option instead of connect_params"),
    ({'password': 'x'}, "connect_params: 'password' is set by login_password; use that option instead of connect_params"),
    ({'keepalive': 1}, 'connect_params: invalid dsn: invalid connection option "keepalive"'),
])
def test_bad_connect_params_fail_before_connecting(pgdb, connect_params, message):
    result, failed = verify(pgdb, connect_params=connect_params)
    assert failed and result['msg'] == message
    assert 'checks' not in result


# -- pggit_verify with bad inputs: a finding or a message, never a traceback ---------------
@pytest.mark.parametrize('change, check, status, text', [
    (dict(db='no_such_db'), 'connect', 'failed', 'database "no_such_db" does not exist'),
    (dict(login_port=1, connect_timeout=2), 'connect', 'failed', 'at 127.0.0.1:1'),
    (dict(login_user='no_such_role'), 'connect', 'failed', 'role "no_such_role" does not exist'),
    (dict(login_host='', login_unix_socket='/nonexistent/socket-dir'), 'connect', 'failed', 'socket /nonexistent/socket-dir'),
    (dict(ssl_mode='require'), 'connect', 'failed', 'server does not support SSL'),
    (dict(canary_schema='no_such_schema'), 'canary', 'error',
     "creating the canary table failed (option canary_schema='no_such_schema'): schema \"no_such_schema\" does not exist; "
     'statement: CREATE TABLE "no_such_schema"."pggit_chaos_canary_'),
    (dict(canary_schema='Weird"Name'), 'canary', 'error', 'schema "Weird"Name" does not exist'),
])
def test_bad_inputs_are_findings(pgdb, change, check, status, text):
    result, failed = verify(pgdb, **change)
    assert not failed and result['healthy'] is False
    found = by_name(result)[check]
    assert found['status'] == status and text in found['message'], found
    assert check in result['failed_checks']
    strict, failed = verify(pgdb, fail_on_unhealthy=True, **change)
    assert failed and strict['msg'].startswith('steady state not met: ') and text in strict['msg']


def test_a_failing_canary_leaves_nothing_and_names_its_statement(pgdb):
    before = query(pgdb, 'SELECT count(*) FROM pggit.history')[0][0]
    result, dummy = verify(pgdb, canary_schema='no_such_schema', zero_footprint=False)
    canary = by_name(result)['canary']
    assert canary['data']['option'] == 'canary_schema'
    assert canary['data']['statement'].startswith('CREATE TABLE "no_such_schema"."pggit_chaos_canary_')
    assert query(pgdb, 'SELECT count(*) FROM pggit.history')[0][0] == before
    assert by_name(result)['connections']['status'] == 'ok', 'the other checks still ran'


@pytest.mark.parametrize('schema', ['pg_catalog', 'PG_TOAST', 'information_schema', 'pggit', '', '  '])
def test_canary_in_a_system_schema_is_refused(pgdb, schema):
    result, failed = verify(pgdb, canary_schema=schema)
    assert failed and result['msg'] == 'canary_schema must name an existing user schema for the canary table, not %r' % schema


# -- exec_sql / sql_failures with real psycopg2 errors -------------------------------------
def run_sql_module(pgdb, body, **extra):
    spec = postgres_argument_spec()
    spec['schema'] = dict(type='str')

    def main():
        module = AnsibleModule(argument_spec=spec)
        conn = _pgconn.connect(module.params, autocommit=False)
        try:
            body(module, conn)
        finally:
            conn.close()
        module.exit_json(changed=False)
    return run_module(main, dict(pgdb, **extra))


def test_exec_sql_names_the_statement_the_server_rejected(pgdb):
    def body(module, conn):
        exec_sql(module, conn, _pgconn.sql.SQL('CREATE TABLE {} (id int)').format(_pgconn.sql.Identifier(module.params['schema'], 't')),
                 option='schema', what='creating the scratch table')
    result, failed = run_sql_module(pgdb, body, schema='gone')
    assert failed
    assert result['msg'] == ('creating the scratch table failed (option schema=\'gone\'): schema "gone" does not exist; '
                             'statement: CREATE TABLE "gone"."t" (id int)')
    assert (result['statement'], result['option']) == ('CREATE TABLE "gone"."t" (id int)', 'schema')


def test_exec_sql_shows_bound_values_in_the_statement(pgdb):
    def body(module, conn):
        exec_sql(module, conn, 'SELECT %s::int', ('twelve',), what='casting')
    result, failed = run_sql_module(pgdb, body)
    assert failed and result['statement'] == "SELECT 'twelve'::int"
    assert result['msg'].startswith('casting failed: invalid input syntax for type integer: "twelve"; statement: ')


def test_sql_failures_turns_a_bare_execute_into_a_clean_failure(pgdb):
    def body(module, conn):
        with sql_failures(module, what='disabling the triggers', option='schema', conn=conn):
            cur = conn.cursor()
            cur.execute('ALTER EVENT TRIGGER no_such_trigger DISABLE')
    result, failed = run_sql_module(pgdb, body, schema='x')
    assert failed
    assert result['msg'] == ("disabling the triggers failed (option schema='x'): event trigger \"no_such_trigger\" does not exist; "
                             'statement: ALTER EVENT TRIGGER no_such_trigger DISABLE')


# -- TLS: ca_cert, ssl_cert and ssl_key reach libpq, and the ledger keeps them ---------------
def _openssl(*argv, cwd):
    subprocess.run(['openssl'] + list(argv), cwd=cwd, check=True, capture_output=True)


def _make_pki(folder):
    """A CA, a server certificate for 127.0.0.1, a client certificate for 'postgres', and an unrelated CA."""
    os.makedirs(folder)
    for ca in ('ca', 'other-ca'):
        _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=pggit-chaos test %s' % ca,
                 '-keyout', ca + '.key', '-out', ca + '.crt', cwd=folder)
    with open(os.path.join(folder, 'san.ext'), 'w') as handle:
        handle.write('subjectAltName=IP:127.0.0.1,DNS:localhost\n')
    for name, cn, ext in (('server', '127.0.0.1', ['-extfile', 'san.ext']), ('client', 'postgres', [])):
        _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=' + cn, '-keyout', name + '.key', '-out', name + '.csr', cwd=folder)
        _openssl('x509', '-req', '-in', name + '.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
                 '-out', name + '.crt', *ext, cwd=folder)
    pw = pwd.getpwnam('postgres')
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o600 if name.endswith('.key') else 0o644)
    os.chown(os.path.join(folder, 'server.key'), pw.pw_uid, pw.pw_gid)
    os.chmod(folder, 0o755)


class TLSPostgres(Postgres):
    """A throwaway server that speaks only TLS on 127.0.0.1 and demands a client certificate signed by our CA."""

    def start(self):
        pki = os.path.join(self.base, 'pki')
        _make_pki(pki)
        _as_postgres([os.path.join(PG_BIN, 'initdb'), '-A', 'trust', '-U', 'postgres', '-D', self.data, '--no-sync'])
        with open(os.path.join(self.data, 'pg_hba.conf'), 'w') as handle:
            handle.write('local all all trust\nhostssl all all 127.0.0.1/32 cert\n')
        opts = ('-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=20 -c shared_buffers=16MB -c ssl=on '
                '-c ssl_cert_file=%s/server.crt -c ssl_key_file=%s/server.key -c ssl_ca_file=%s/ca.crt'
                % (self.port, self.base, pki, pki, pki))
        _as_postgres([os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-o', opts, '-l', os.path.join(self.base, 'log'), '-w', 'start'])
        self.started = True
        atexit.register(self.stop)
        self.pki = pki
        return self

    def psql(self, db, *args):
        # Set-up goes over the socket (trust); only the code under test uses TLS.
        proc = subprocess.run(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', self.base, '-p', str(self.port), '-U', 'postgres',
                               '-d', db] + list(args), check=False, capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError('psql %s failed: %s' % (' '.join(args), proc.stderr[-2000:]))
        return proc.stdout


@pytest.fixture(scope='module')
def tls_postgres():
    server = TLSPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def tls_db(tls_postgres):
    params = tls_postgres.create_db('tls_%s' % os.urandom(4).hex())
    pki = tls_postgres.pki
    params.update(ssl_mode='verify-full', ca_cert=os.path.join(pki, 'ca.crt'), ssl_cert=os.path.join(pki, 'client.crt'),
                  ssl_key=os.path.join(pki, 'client.key'))
    return params


def test_tls_with_a_client_certificate_connects(tls_db):
    result, failed = verify(tls_db)
    assert not failed and result['healthy'], result['findings']
    conn = _pgconn.connect(tls_db)
    try:
        cur = conn.cursor()
        cur.execute('SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
        assert cur.fetchone() == (True, '/CN=postgres')
    finally:
        conn.close()


@pytest.mark.parametrize('change, text', [
    (dict(ssl_cert=None, ssl_key=None), 'certificate'),  # the server demands one: proves ssl_cert/ssl_key were sent
    (dict(ca_cert='other-ca.crt'), 'certificate verify failed'),  # proves ca_cert is what verifies the server
])
def test_tls_options_are_really_used(tls_db, tls_postgres, change, text):
    params = dict(tls_db)
    for key, value in change.items():
        params[key] = os.path.join(tls_postgres.pki, value) if value else None
    result, failed = verify(params)
    assert not failed and result['healthy'] is False
    assert by_name(result)['connect']['status'] == 'failed' and text in by_name(result)['connect']['message']


def test_the_revert_reconnects_with_the_recorded_tls_options(tls_db, tmp_path):
    state_dir = str(tmp_path / 'state')
    try:
        injected, failed = run_module(pggit_chaos_trigger.main, dict(tls_db, name='tls', state_dir=state_dir, ttl=60,
                                                                     connect_params={'keepalives': 1}))
        assert not failed and injected['changed'], injected
        with open(os.path.join(state_dir, 'faults', 'trigger--tls.json')) as handle:
            record = json.load(handle)
        conn = [step['conn'] for step in record['undo'] if step.get('conn')][0]
        assert (conn['ca_cert'], conn['ssl_cert'], conn['ssl_key'], conn['connect_params']) == (
            tls_db['ca_cert'], tls_db['ssl_cert'], tls_db['ssl_key'], {'keepalives': 1})
        # The revert module gets no connection options at all: only the record can bring it back over TLS.
        reverted, failed = run_module(pggit_chaos_revert.main, dict(state_dir=state_dir))
        assert not failed and [r['id'] for r in reverted['reverted']] == ['trigger--tls'], reverted
    finally:
        kill_reapers(state_dir)
    with connection_over_socket(tls_db) as cur:
        cur.execute("SELECT DISTINCT evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'")
        assert cur.fetchall() == [('O',)]


class connection_over_socket(object):
    def __init__(self, params):
        self.params = params

    def __enter__(self):
        import psycopg2
        host = os.path.dirname(os.path.dirname(self.params['ca_cert']))
        self.conn = psycopg2.connect(host=host, port=self.params['login_port'], user='postgres', dbname=self.params['db'])
        self.conn.autocommit = True
        return self.conn.cursor()

    def __exit__(self, *exc):
        self.conn.close()
