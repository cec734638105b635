"""Connection options as community.postgresql means them, and SQL errors that name their statement."""
from __future__ import annotations

import psycopg2
import pytest

from modrun import run_module

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import (
    check_postgres_params, exec_sql, postgres_argument_spec, sql_failures,
)


def kwargs(**params):
    return _pgconn.conn_kwargs(params, application_name='t')


# -- login_unix_socket: used only when login_host is empty or localhost ------------
@pytest.mark.parametrize('host, socket, expected', [
    ('', '/run/pg', '/run/pg'),
    (None, '/run/pg', '/run/pg'),
    ('localhost', '/run/pg', '/run/pg'),
    ('db1.example.com', '/run/pg', 'db1.example.com'),
    ('127.0.0.1', '/run/pg', '127.0.0.1'),  # only the name localhost means "local", as in community.postgresql
    ('db1', '', 'db1'),
    ('localhost', '', 'localhost'),
])
def test_socket_is_used_only_for_an_empty_or_local_host(host, socket, expected):
    assert kwargs(login_host=host, login_unix_socket=socket)['host'] == expected
    assert _pgconn.use_socket(dict(login_host=host, login_unix_socket=socket)) is (expected == socket)


def test_no_host_and_no_socket_leaves_libpq_its_default():
    assert 'host' not in kwargs(login_host='', login_unix_socket='')


def test_describe_names_what_is_really_used():
    assert _pgconn.describe(dict(login_host='db1', login_unix_socket='/run/pg', db='app', login_user='u')) == \
        "database 'app' at db1:5432 as 'u'"
    assert _pgconn.describe(dict(login_host='localhost', login_unix_socket='/run/pg', login_port=5433)) == \
        "database '(default)' at socket /run/pg:5433 as '(default)'"
    assert _pgconn.describe(dict(login_host='')) == "database '(default)' at local socket:5432 as '(default)'"


# -- TLS and connect_params ------------------------------------------------------------
def test_tls_options_map_to_libpq_keywords():
    got = kwargs(login_host='db1', login_port=5433, login_user='u', login_password='pw', db='app', ssl_mode='verify-full',
                 ca_cert='/etc/ca.pem', ssl_cert='/etc/c.pem', ssl_key='/etc/c.key', connect_timeout=3)
    assert got == {'application_name': 't', 'host': 'db1', 'port': 5433, 'user': 'u', 'password': 'pw', 'dbname': 'app',
                   'sslmode': 'verify-full', 'sslrootcert': '/etc/ca.pem', 'sslcert': '/etc/c.pem', 'sslkey': '/etc/c.key',
                   'connect_timeout': 3}


def test_empty_options_are_left_out():
    assert kwargs(login_host='db1', ca_cert=None, ssl_cert='', ssl_key=None, connect_params={}) == {'application_name': 't', 'host': 'db1'}


def test_connect_params_are_passed_through():
    got = kwargs(login_host='db1', connect_params={'keepalives_idle': 30, 'options': '-c search_path=app'},
                 connect_secrets={'sslpassword': 'k'})
    assert got == {'application_name': 't', 'host': 'db1', 'keepalives_idle': 30, 'options': '-c search_path=app', 'sslpassword': 'k'}


@pytest.mark.parametrize('key, owner', [
    ('host', 'login_host'), ('HOST', 'login_host'), ('hostaddr', 'login_host'), ('port', 'login_port'), ('user', 'login_user'),
    ('password', 'login_password'), ('dbname', 'db'), ('database', 'db'), ('sslmode', 'ssl_mode'), ('sslrootcert', 'ca_cert'),
    ('sslcert', 'ssl_cert'), ('sslkey', 'ssl_key'), ('connect_timeout', 'connect_timeout'),
    ('application_name', 'pggit.chaos itself'), ('dsn', 'psycopg2.connect() itself'), ('cursor_factory', 'psycopg2.connect() itself'),
])
def test_connect_params_that_collide_with_a_named_option_are_refused(key, owner):
    problem = _pgconn.connect_params_problem({'keepalives': 1, key: 'x'})
    assert problem.startswith("connect_params: '%s' is set by %s" % (key, owner))
    assert problem.endswith('use that option instead of connect_params')
    with pytest.raises(ValueError) as err:
        kwargs(login_host='db1', connect_params={key: 'x'})
    assert "connect_params: '%s'" % key in str(err.value)


def test_unknown_connect_params_are_refused_by_libpq():
    assert _pgconn.connect_params_problem({'keepalive': 1}) == 'connect_params: invalid dsn: invalid connection option "keepalive"'
    assert _pgconn.connect_params_problem({'keepalives': 1, 'options': '-c x=y', 'sslpassword': 's'}) is None
    assert _pgconn.connect_params_problem(None) is None and _pgconn.connect_params_problem({}) is None


# -- what the ledger keeps: everything needed to reconnect, never a secret ---------------
def test_stored_conn_keeps_the_new_options_and_no_secret():
    params = dict(login_host='db1', login_port=5433, login_user='u', login_password='pw', login_unix_socket='', db='app',
                  ssl_mode='verify-ca', ca_cert='/etc/ca.pem', ssl_cert='/etc/c.pem', ssl_key='/etc/c.key', connect_timeout=5,
                  connect_params={'keepalives': 1, 'sslpassword': 'keypass'})
    stored = _pgconn.stored_conn(params)
    assert stored == {'login_host': 'db1', 'login_port': 5433, 'login_user': 'u', 'db': 'app', 'ssl_mode': 'verify-ca',
                      'ca_cert': '/etc/ca.pem', 'ssl_cert': '/etc/c.pem', 'ssl_key': '/etc/c.key', 'connect_timeout': 5,
                      'connect_params': {'keepalives': 1}}
    assert 'pw' not in repr(stored) and 'keypass' not in repr(stored)
    secret = _pgconn.secret_conn(params)
    assert secret == {'login_password': 'pw', 'connect_secrets': {'sslpassword': 'keypass'}}
    # The reaper's way back: record + side file give the same connection as the module had.
    rejoined = dict(stored)
    rejoined.update(secret)
    assert _pgconn.conn_kwargs(rejoined) == _pgconn.conn_kwargs(params)


def test_stored_conn_drops_connect_params_that_are_all_secret():
    assert 'connect_params' not in _pgconn.stored_conn(dict(login_host='db1', connect_params={'sslpassword': 'k'}))
    assert _pgconn.secret_conn(dict(login_host='db1')) == {}


def test_every_connection_option_is_stored_or_secret():
    options = set(postgres_argument_spec())
    assert options - set(_pgconn.CONN_KEYS) == {'login_password'}


# -- SQL errors ---------------------------------------------------------------------------
class Cursor(object):
    """A cursor whose execute fails as psycopg2 does: the error carries the cursor, the cursor the query sent."""

    def __init__(self, error=None, rows=None):
        self.error = error
        self.rows = rows or []
        self.query = None
        self.connection = Conn()

    def execute(self, query, args=None):
        self.query = (query % tuple("'%s'" % a for a in args) if args else query).encode()
        if self.error is not None:
            raise self.error

    def fetchall(self):
        return self.rows


class Conn(object):
    autocommit = False
    closed = 0

    def __init__(self):
        self.rolled_back = False

    def rollback(self):
        self.rolled_back = True


class ErrorWithCursor(psycopg2.errors.UndefinedTable):
    cursor = None  # psycopg2 sets it from C on a real error; here the test sets it


def test_execute_raises_an_error_naming_statement_option_and_what():
    cursor = Cursor()
    cursor.error = ErrorWithCursor('relation "pggit.nope" does not exist\nLINE 1: SELECT ...')
    cursor.error.cursor = cursor
    with pytest.raises(_pgconn.SQLError) as err:
        _pgconn.execute(cursor, 'SELECT *\n  FROM pggit.nope WHERE x = %s', ('a',), what='reading nope', option='table')
    exc = err.value
    assert (exc.error, exc.statement, exc.option, exc.what) == (
        'relation "pggit.nope" does not exist', "SELECT * FROM pggit.nope WHERE x = 'a'", 'table', 'reading nope')
    assert exc.message('nope', show_value=True) == ("reading nope failed (option table='nope'): relation \"pggit.nope\" does not exist; "
                                                    "statement: SELECT * FROM pggit.nope WHERE x = 'a'")
    assert str(exc) == ('reading nope failed (option table): relation "pggit.nope" does not exist; '
                        "statement: SELECT * FROM pggit.nope WHERE x = 'a'")


def test_statement_text_without_a_sent_query_renders_the_query():
    assert _pgconn.statement_text(None, 'SELECT  1\n') == 'SELECT 1'
    assert _pgconn.statement_text(None, None) is None


def run_with(body, **params):
    """A real AnsibleModule over the shared connection options plus two of its own, run through ``body``."""
    spec = postgres_argument_spec()
    spec['schema'] = dict(type='str', default='public')
    spec['secret_name'] = dict(type='str', no_log=True)

    def main():
        mod = AnsibleModule(argument_spec=spec)
        warnings = []
        mod.warn = warnings.append
        check_postgres_params(mod)
        body(mod)
        mod.exit_json(changed=False, warnings_seen=warnings)
    return run_module(main, params)


def test_exec_sql_fails_with_statement_and_option_and_rolls_back():
    cursor = Cursor()
    cursor.error = ErrorWithCursor('schema "nope" does not exist')
    cursor.error.cursor = cursor
    result, failed = run_with(lambda mod: exec_sql(mod, cursor, 'CREATE TABLE nope.t (id int)', option='schema', what='creating t'),
                              schema='nope')
    assert failed
    assert result['msg'] == ("creating t failed (option schema='nope'): schema \"nope\" does not exist; "
                             'statement: CREATE TABLE nope.t (id int)')
    assert (result['statement'], result['option']) == ('CREATE TABLE nope.t (id int)', 'schema')
    assert cursor.connection.rolled_back


def test_exec_sql_returns_the_cursor_on_success():
    cursor = Cursor(rows=[(1,)])
    seen = []
    result, failed = run_with(lambda mod: seen.append(exec_sql(mod, cursor, 'SELECT 1').fetchall()))
    assert not failed and seen == [[(1,)]]


def test_sql_failures_catches_a_bare_psycopg2_error_and_hides_secret_values():
    cursor = Cursor()
    cursor.error = ErrorWithCursor('permission denied')
    cursor.error.cursor = cursor

    def body(mod):
        with sql_failures(mod, what='disabling triggers', option='secret_name', partial=True):
            cursor.execute('ALTER EVENT TRIGGER x DISABLE')
    result, failed = run_with(body, secret_name='hunter2')
    assert failed and 'hunter2' not in repr(result)
    assert result['msg'] == 'disabling triggers failed (option secret_name): permission denied; statement: ALTER EVENT TRIGGER x DISABLE'
    assert result['partial'] is True and result['statement'] == 'ALTER EVENT TRIGGER x DISABLE'


def test_sql_failures_lets_other_exceptions_through():
    def body(mod):
        with sql_failures(mod):
            raise KeyError('not ours')
    with pytest.raises(KeyError):
        run_with(body)


def test_bad_connect_params_fail_before_connecting():
    result, failed = run_with(lambda mod: None, connect_params={'host': 'elsewhere'})
    assert failed and result['msg'] == "connect_params: 'host' is set by login_host; use that option instead of connect_params"


def test_an_ignored_socket_is_warned_about():
    result, failed = run_with(lambda mod: None, login_host='db1', login_unix_socket='/run/pg')
    assert not failed
    assert result['warnings_seen'] == ["login_unix_socket '/run/pg' is not used: login_host is 'db1', and the socket is used only "
                                       "when login_host is empty or 'localhost'"]
    quiet, dummy = run_with(lambda mod: None, login_host='localhost', login_unix_socket='/run/pg')
    assert quiet['warnings_seen'] == []
