# Copyright: pggit.chaos contributors
# MIT License
"""PostgreSQL connection helpers shared by modules and the reaper.

Standard library plus psycopg2 only, imported lazily so that importing this
file never fails on a host without psycopg2.
"""
from __future__ import annotations

try:
    import psycopg2
    # Re-exported: callers build identifiers with _pgconn.sql.
    from psycopg2 import sql  # noqa: F401  # pylint: disable=unused-import
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    psycopg2 = None
    sql = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = _exc

# Connection options as community.postgresql names them; these are what the
# ledger stores (never the password) so the reaper can reconnect on its own.
CONN_KEYS = ('login_host', 'login_port', 'login_user', 'login_unix_socket', 'db', 'ssl_mode', 'connect_timeout')


def conn_kwargs(params, application_name='pggit-chaos'):
    """Map module-style options to psycopg2.connect() keyword arguments."""
    kwargs = {'application_name': application_name}
    host = params.get('login_unix_socket') or params.get('login_host')
    mapping = (
        ('host', host),
        ('port', params.get('login_port')),
        ('user', params.get('login_user')),
        ('password', params.get('login_password')),
        ('dbname', params.get('db')),
        ('sslmode', params.get('ssl_mode')),
        ('connect_timeout', params.get('connect_timeout')),
    )
    for key, value in mapping:
        if value not in (None, ''):
            kwargs[key] = value
    return kwargs


def describe(params):
    """Human description of a target database, for error messages."""
    where = params.get('login_unix_socket') or params.get('login_host') or 'local socket'
    return "database '%s' at %s:%s as '%s'" % (
        params.get('db') or '(default)', where, params.get('login_port') or 5432, params.get('login_user') or '(default)')


def stored_conn(params):
    return dict((k, params.get(k)) for k in CONN_KEYS if params.get(k) not in (None, ''))


def connect(params, application_name='pggit-chaos', autocommit=True):
    if not HAS_PSYCOPG2:
        raise RuntimeError('psycopg2 is required on the target: %s' % PSYCOPG2_IMPORT_ERROR)
    conn = psycopg2.connect(**conn_kwargs(params, application_name))
    conn.autocommit = autocommit
    return conn


def one_line(exc):
    """First meaningful line of a database error."""
    text = str(getattr(exc, 'pgerror', None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
