# Copyright: pggit.chaos contributors
# MIT License
"""PostgreSQL connection helpers shared by modules, the probe and the reaper.

Standard library plus psycopg2 only, imported lazily so that importing this
file never fails on a host without psycopg2.

Connection semantics follow community.postgresql's ``get_conn_params``:
``login_unix_socket`` is used only when ``login_host`` is empty or
``localhost``; ``connect_params`` are extra libpq keywords.  Every SQL error
that should name its statement goes through :func:`execute`, which raises
:class:`SQLError`; ``postgres.py`` turns that into a module failure and the
probe turns it into a finding.
"""
from __future__ import annotations

try:
    import psycopg2
    import psycopg2.extensions
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
CONN_KEYS = ('login_host', 'login_port', 'login_user', 'login_unix_socket', 'db', 'ssl_mode', 'connect_timeout',
             'ca_cert', 'ssl_cert', 'ssl_key', 'connect_params')

# Named option -> libpq keyword.  connect_params may not set these keywords.
LIBPQ_KEYWORDS = (
    ('login_host', 'host'),
    ('login_port', 'port'),
    ('login_user', 'user'),
    ('login_password', 'password'),
    ('db', 'dbname'),
    ('ssl_mode', 'sslmode'),
    ('ca_cert', 'sslrootcert'),
    ('ssl_cert', 'sslcert'),
    ('ssl_key', 'sslkey'),
    ('connect_timeout', 'connect_timeout'),
)
# Keywords connect_params may not carry, with the option that owns each.
RESERVED_CONNECT_PARAMS = dict(
    [(keyword, option) for option, keyword in LIBPQ_KEYWORDS]
    + [('hostaddr', 'login_host'), ('database', 'db'), ('application_name', 'pggit.chaos itself (it names its own sessions)')]
    + [(k, 'psycopg2.connect() itself, not libpq') for k in ('dsn', 'connection_factory', 'cursor_factory', 'async', 'async_')]
)
# connect_params keywords that are secrets: kept out of the ledger record,
# stored in its 0600 side file with the password (see secret_conn()).
SECRET_CONNECT_PARAMS = ('sslpassword',)
LOCAL_HOSTS = ('', 'localhost')
# Every revert's session: a lock it would wait on, or a statement that hangs, fails the undo step (retried by the
# record's next revert) instead of blocking it.
REVERT_SQL_SETTINGS = ("SET lock_timeout = '5s'", "SET statement_timeout = '60s'")


class SQLError(Exception):
    """A database error with the statement that raised it and the option that led to it."""

    def __init__(self, error, statement=None, what=None, option=None, pgcode=None):
        self.error = error
        self.statement = statement
        self.what = what
        self.option = option
        self.pgcode = pgcode
        super(SQLError, self).__init__(self.message())

    def message(self, value=None, show_value=False):
        """``<what> failed (option <option>=<value>): <error>; statement: <SQL>``."""
        head = '%s failed' % (self.what or 'SQL statement')
        if self.option:
            head += ' (option %s%s)' % (self.option, '=%r' % (value,) if show_value else '')
        text = '%s: %s' % (head, self.error)
        if self.statement:
            text += '; statement: %s' % self.statement
        return text


def use_socket(params):
    """True when login_unix_socket applies: it is set and login_host is empty or localhost."""
    return bool(params.get('login_unix_socket')) and (params.get('login_host') or '') in LOCAL_HOSTS


def connect_params_problem(connect_params):
    """Why ``connect_params`` cannot be used, or None.  Pure except for libpq's keyword check."""
    if not connect_params:
        return None
    if not isinstance(connect_params, dict):
        return 'connect_params must be a dictionary of libpq keywords, got %r' % (connect_params,)
    for key in sorted(connect_params, key=str):
        owner = RESERVED_CONNECT_PARAMS.get(str(key).lower())
        if owner:
            return "connect_params: '%s' is set by %s; use that option instead of connect_params" % (key, owner)
    if HAS_PSYCOPG2:
        try:
            psycopg2.extensions.make_dsn(**dict((str(k), v) for k, v in connect_params.items()))
        except psycopg2.Error as exc:
            return 'connect_params: %s' % one_line(exc)
    return None


def conn_kwargs(params, application_name='pggit-chaos'):
    """Map module-style options to psycopg2.connect() keyword arguments.

    As community.postgresql does it: the socket replaces the host only when
    the host is empty or ``localhost``; empty options are left to libpq's
    defaults; ``connect_params`` (and their secret part) are added last.
    """
    problem = connect_params_problem(params.get('connect_params'))
    if problem:
        raise ValueError(problem)
    kwargs = {'application_name': application_name}
    for option, keyword in LIBPQ_KEYWORDS:
        value = params.get(option)
        if value not in (None, ''):
            kwargs[keyword] = value
    if use_socket(params):
        kwargs['host'] = params['login_unix_socket']
    for extra in (params.get('connect_params'), params.get('connect_secrets')):
        kwargs.update(extra or {})
    return kwargs


def describe(params):
    """Human description of a target database, for error messages."""
    if use_socket(params):
        where = 'socket %s' % params['login_unix_socket']
    else:
        where = params.get('login_host') or 'local socket'
    return "database '%s' at %s:%s as '%s'" % (
        params.get('db') or '(default)', where, params.get('login_port') or 5432, params.get('login_user') or '(default)')


def stored_conn(params):
    """The connection options a ledger record keeps: never a secret."""
    conn = dict((k, params.get(k)) for k in CONN_KEYS if params.get(k) not in (None, '', {}))
    if conn.get('connect_params'):
        public = dict((k, v) for k, v in conn['connect_params'].items() if str(k).lower() not in SECRET_CONNECT_PARAMS)
        if public:
            conn['connect_params'] = public
        else:
            del conn['connect_params']
    return conn


def secret_conn(params):
    """The secret half of a connection, for the record's 0600 side file; {} when there is none."""
    secret = {}
    if params.get('login_password'):
        secret['login_password'] = params['login_password']
    hidden = dict((k, v) for k, v in (params.get('connect_params') or {}).items() if str(k).lower() in SECRET_CONNECT_PARAMS)
    if hidden:
        secret['connect_secrets'] = hidden
    return secret


def connect(params, application_name='pggit-chaos', autocommit=True):
    if not HAS_PSYCOPG2:
        raise RuntimeError('psycopg2 is required on the target: %s' % PSYCOPG2_IMPORT_ERROR)
    conn = psycopg2.connect(**conn_kwargs(params, application_name))
    conn.autocommit = autocommit
    return conn


def revert_session(params):
    """(conn, cursor) of a revert's session: named pggit-chaos-revert, under REVERT_SQL_SETTINGS."""
    conn = connect(params, application_name='pggit-chaos-revert')
    try:
        cur = conn.cursor()
        for setting in REVERT_SQL_SETTINGS:
            cur.execute(setting)
    except BaseException:
        conn.close()
        raise
    return conn, cur


def one_line(exc):
    """First meaningful line of a database error, without libpq's ``ERROR:`` prefix."""
    diag = getattr(exc, 'diag', None)
    primary = getattr(diag, 'message_primary', None) if diag is not None else None
    text = str(primary or getattr(exc, 'pgerror', None) or exc).strip()
    line = text.splitlines()[0] if text else exc.__class__.__name__
    for prefix in ('ERROR:', 'FATAL:'):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return ' '.join(line.split())


def _text(value):
    if isinstance(value, bytes):
        value = value.decode('utf-8', 'replace')
    return ' '.join(value.split()) if isinstance(value, str) else None


def statement_text(cursor, query=None, args=None):
    """The SQL a cursor sent (or would send), as one line of text; None when unknown."""
    sent = getattr(cursor, 'query', None) if cursor is not None else None
    if sent:
        return _text(sent)
    if query is None:
        return None
    try:
        if args is not None and cursor is not None:
            return _text(cursor.mogrify(query, args))
        if sql is not None and isinstance(query, sql.Composable):
            return _text(query.as_string(cursor))
    except Exception:  # pylint: disable=broad-except
        pass
    return _text(query) or repr(query)


def sql_error(exc, what=None, option=None, query=None, args=None):
    """A :class:`SQLError` from a psycopg2 error; the statement comes from the error's cursor."""
    if isinstance(exc, SQLError):
        if option and not exc.option:
            exc.option = option
        if what and not exc.what:
            exc.what = what
        return exc
    cursor = getattr(exc, 'cursor', None)
    return SQLError(one_line(exc), statement_text(cursor, query, args), what=what, option=option,
                    pgcode=getattr(exc, 'pgcode', None))


def execute(cursor, query, args=None, what=None, option=None):
    """Run one statement; a database error becomes :class:`SQLError` naming it.

    ``what`` says what the statement does ("creating the canary table");
    ``option`` names the module option whose value is in the statement.
    Returns the cursor, so callers can fetch.
    """
    try:
        cursor.execute(query, args)
    except psycopg2.Error as exc:
        raise sql_error(exc, what=what, option=option, query=query, args=args) from exc
    return cursor
