# Copyright: pggit.chaos contributors
# MIT License
"""Connection options and SQL failures shared by every module that talks to PostgreSQL.

Option names and meanings follow community.postgresql so that existing
``module_defaults`` can be reused; they are documented once in the
``pggit.chaos.postgres`` doc fragment.

SQL errors become module failures in one place: :func:`exec_sql` for one
statement, :func:`sql_failures` around a block of them (it also catches a bare
psycopg2 error raised anywhere inside and recovers its statement from the
error's cursor).  The failure reads ``<what> failed (option <name>=<value>):
<first line of the error>; statement: <SQL>`` and returns ``statement`` and
``option`` as result keys.
"""
from __future__ import annotations

import contextlib

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges

SSL_MODES = ['allow', 'disable', 'prefer', 'require', 'verify-ca', 'verify-full']


def postgres_argument_spec():
    """A fresh argspec dict; modules .update() it with their own options."""
    return dict(
        login_host=dict(type='str', default='', aliases=['host', 'login_hostname']),
        login_port=dict(type='int', default=5432, aliases=['port']),
        login_user=dict(type='str', default='postgres', aliases=['login']),
        login_password=dict(type='str', default='', no_log=True),
        login_unix_socket=dict(type='str', default='', aliases=['unix_socket']),
        db=dict(type='str', default='pggit', aliases=['login_db']),
        ssl_mode=dict(type='str', default='prefer', choices=SSL_MODES),
        ca_cert=dict(type='str', aliases=['ssl_rootcert']),
        ssl_cert=dict(type='path'),
        ssl_key=dict(type='path'),
        connect_params=dict(type='dict', default={}),
        connect_timeout=dict(type='int', default=10),
    )


def check_postgres_params(module):
    """Refuse bad connection options before anything connects; warn about an ignored socket."""
    fail_on_ranges(module, (('login_port', 1, 65535), ('connect_timeout', 1, 600, ' seconds')))
    problem = _pgconn.connect_params_problem(module.params.get('connect_params'))
    if problem:
        module.fail_json(msg=problem)
    host = module.params.get('login_host') or ''
    if module.params.get('login_unix_socket') and not _pgconn.use_socket(module.params):
        module.warn("login_unix_socket '%s' is not used: login_host is '%s', and the socket is used only when "
                    "login_host is empty or 'localhost'" % (module.params['login_unix_socket'], host))


PSYCOPG2_REASON = ('connecting to PostgreSQL (Debian/Ubuntu: apt-get install python3-psycopg2; RHEL/Fedora: dnf install '
                   'python3-psycopg2; or pip install psycopg2-binary into the Python that runs the module)')


def ensure_psycopg2(module):
    if not _pgconn.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2', reason=PSYCOPG2_REASON), exception=str(_pgconn.PSYCOPG2_IMPORT_ERROR))


def connect_or_fail(module, application_name='pggit-chaos', autocommit=True):
    """Connect, or fail naming the host, port, database and user tried."""
    ensure_psycopg2(module)
    check_postgres_params(module)
    try:
        return _pgconn.connect(module.params, application_name=application_name, autocommit=autocommit)
    except _pgconn.psycopg2.Error as exc:
        module.fail_json(msg='unable to connect to %s: %s' % (_pgconn.describe(module.params), _pgconn.one_line(exc)))
    return None


def _rollback(target):
    conn = getattr(target, 'connection', target)
    try:
        if conn is not None and not conn.autocommit and not conn.closed:
            conn.rollback()
    except Exception:  # pylint: disable=broad-except
        pass


def fail_sql(module, exc, what=None, option=None, **result):
    """Fail the module for a database error (psycopg2.Error or _pgconn.SQLError), naming statement and option."""
    error = _pgconn.sql_error(exc, what=what, option=option)
    spec = (getattr(module, 'argument_spec', None) or {}).get(error.option) or {}
    shown = error.option in module.params and not spec.get('no_log')
    value = module.params.get(error.option) if shown else None
    result.update(statement=error.statement, option=error.option)
    module.fail_json(msg=error.message(value, show_value=shown and value is not None), **result)


def exec_sql(module, cursor_or_conn, query, args=None, option=None, what=None, **result):
    """Run one statement; on a database error roll back and fail the module.

    ``cursor_or_conn`` is a psycopg2 cursor or connection (a new cursor is
    opened on a connection).  ``query`` is a string or a psycopg2.sql
    Composable; ``args`` are bound parameters; ``option`` names the module
    option whose value went into the statement; ``what`` says what the
    statement does; ``result`` is returned with the failure.  Returns the
    cursor, ready to fetch.
    """
    cursor = cursor_or_conn.cursor() if hasattr(cursor_or_conn, 'cursor') else cursor_or_conn
    try:
        return _pgconn.execute(cursor, query, args, what=what, option=option)
    except _pgconn.SQLError as exc:
        _rollback(cursor)
        fail_sql(module, exc, **result)
    return cursor


@contextlib.contextmanager
def sql_failures(module, what=None, option=None, conn=None, **result):
    """Turn any database error raised inside the block into a clean module failure.

    Catches :class:`_pgconn.SQLError` (from :func:`_pgconn.execute`) and bare
    ``psycopg2.Error`` (a plain ``cursor.execute``); rolls back ``conn`` when
    given and not in autocommit.
    """
    errors = (_pgconn.SQLError,) + ((_pgconn.psycopg2.Error,) if _pgconn.HAS_PSYCOPG2 else ())
    try:
        yield
    except errors as exc:
        _rollback(conn)
        fail_sql(module, exc, what=what, option=option, **result)
