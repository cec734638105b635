# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-locker``: the lock holder of ``pggit_chaos_lock``, as a ledger-recorded program.

The module writes the fault's record (connection without secrets, tables,
mode, advisory keys), then starts this program.  It connects with
``application_name`` ``pggit-chaos-locker-<fault id>``, reports its backend
pid (``connected``) and ``ready``, and waits until its record holds both the
``kill_process`` step naming its own pid and the ``pg_terminate_backend``
step naming its backend: only then does it take any lock.  It then runs
``LOCK TABLE ... IN <mode> MODE`` (bounded by ``lock_timeout``, or
``NOWAIT``) and ``pg_advisory_xact_lock`` for each key, reads what it was
granted from ``pg_locks`` (``locked``), and keeps the transaction open.

It ends the transaction and exits when its record is gone or reverted, at
``expires_at`` (no grace: a lock must not outlive its TTL), or on SIGTERM
(the revert, the reaper; the default action, so the backend's socket
closes at once).  Should the holder die or hang, the revert's
``pg_terminate_backend`` step ends its backend all the same.
"""
from __future__ import annotations

import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _program, _results

PROC_TAG = 'pggit-chaos-locker'
APP_PREFIX = 'pggit-chaos-locker-'
# PostgreSQL keeps application_name to NAMEDATALEN - 1 bytes.
APP_MAX = 63
SCHEMA = 'pggit'
# Every table lock mode of PostgreSQL, weakest first (pg_locks names in MODE_NAMES).
LOCK_MODES = ('ACCESS SHARE', 'ROW SHARE', 'ROW EXCLUSIVE', 'SHARE UPDATE EXCLUSIVE', 'SHARE', 'SHARE ROW EXCLUSIVE',
              'EXCLUSIVE', 'ACCESS EXCLUSIVE')
MODE_NAMES = dict((mode, ''.join(w.capitalize() for w in mode.split()) + 'Lock') for mode in LOCK_MODES)
BIGINT = (-2 ** 63, 2 ** 63 - 1)
STEP = 0.2
# How often the holder touches its connection, to see that its backend is still there.
PING = 1.0


def application_name(fid):
    """The holder's application_name: what the pg_terminate_backend step looks for."""
    return (APP_PREFIX + fid)[:APP_MAX]


def normalize_mode(value):
    """The canonical mode ('ACCESS EXCLUSIVE') of 'access exclusive', 'ACCESS_EXCLUSIVE', 'AccessExclusiveLock', ...; or None."""
    if not isinstance(value, str):
        return None
    text = ' '.join(value.replace('_', ' ').split()).upper()
    if text.endswith(' MODE'):
        text = text[:-5]
    if text in LOCK_MODES:
        return text
    squashed = text.replace(' ', '')
    for mode, name in MODE_NAMES.items():
        if squashed in (name.upper(), mode.replace(' ', '')):
            return mode
    return None


def mode_problem(value):
    if normalize_mode(value) is None:
        return 'mode must be a PostgreSQL table lock mode (%s), got %r' % (', '.join(LOCK_MODES), value)
    return None


def parse_table(value):
    """(schema, table) of 'pggit.history' or 'history' (pgGit's schema is implied); None when malformed."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split('.')
    if len(parts) == 1:
        parts = [SCHEMA] + parts
    if len(parts) != 2 or not all(p.strip() == p and p for p in parts):
        return None
    return parts[0], parts[1]


def tables_problem(tables):
    """Why ``tables`` cannot be locked (checked before anything connects), or None."""
    if not tables:
        return 'tables must name at least one table of schema pggit, got %r' % (tables,)
    for value in tables:
        parsed = parse_table(value)
        if parsed is None:
            return "tables: %r is not a table name (pggit.<table> or <table>)" % (value,)
        if parsed[0] != SCHEMA:
            return "tables: %r is not in schema pggit; pggit_chaos_lock only locks pgGit's own tables" % (value,)
    return None


def keys_problem(keys):
    for key in keys or []:
        if isinstance(key, bool) or not isinstance(key, int) or not BIGINT[0] <= key <= BIGINT[1]:
            return 'advisory_keys must be bigint values (%d to %d), got %r' % (BIGINT[0], BIGINT[1], key)
    return None


def qualified(tables):
    """Distinct (schema, table) pairs, in the order given."""
    seen = []
    for value in tables:
        parsed = parse_table(value)
        if parsed not in seen:
            seen.append(parsed)
    return seen


def lock_statement(tables, mode, nowait=False):
    """``LOCK TABLE <idents> IN <mode> MODE [NOWAIT]``: identifiers via psycopg2.sql, the mode from LOCK_MODES only."""
    canonical = normalize_mode(mode)
    if canonical is None:
        raise ValueError(mode_problem(mode))
    sql = _pgconn.sql
    return sql.SQL('LOCK TABLE {} IN ' + canonical + ' MODE' + (' NOWAIT' if nowait else '')).format(
        sql.SQL(', ').join(sql.Identifier(schema, table) for schema, table in qualified(tables)))


# The tables asked for, as the catalog knows them: (asked, schema, table, relkind) of those that exist.
FIND_TABLES = ("SELECT a.asked, n.nspname, c.relname, c.relkind FROM unnest(%s::text[], %s::text[], %s::text[]) AS a(asked, nsp, rel) "
               "JOIN pg_namespace n ON n.nspname = a.nsp JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = a.rel")
# What this session holds, read from pg_locks.
HELD_RELATIONS = ("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), l.mode, l.granted FROM pg_locks l "
                  "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND n.nspname = %s AND c.relkind IN ('r', 'p') "
                  "ORDER BY 1, 2")
# A bigint advisory key k is held as classid = k >> 32, objid = k & 0xffffffff, objsubid = 1.
HELD_ADVISORY = ("SELECT ((l.classid::bigint << 32) | l.objid::bigint), l.mode, l.granted FROM pg_locks l "
                 "WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory' AND l.objsubid = 1 ORDER BY 1")


def find_tables_args(tables):
    pairs = qualified(tables)
    asked = ['%s.%s' % p for p in pairs]
    return (asked, [p[0] for p in pairs], [p[1] for p in pairs])


def missing_tables(tables, rows):
    """The asked names that are not ordinary or partitioned tables, from FIND_TABLES rows."""
    found = dict((row[0], row[3]) for row in rows)
    return ['%s.%s' % p for p in qualified(tables) if found.get('%s.%s' % p) not in ('r', 'p')]


def signed(key):
    """pg_locks' (classid << 32 | objid) read as a signed bigint."""
    key = int(key) & 0xffffffffffffffff
    return key - 2 ** 64 if key >= 2 ** 63 else key


def take_locks(cur, spec):
    """Take the locks in the holder's open transaction; return (relation locks, advisory keys) read from pg_locks."""
    timeout = int(spec['acquire_timeout_ms'])
    nowait = timeout == 0
    if not nowait:
        cur.execute('SET LOCAL lock_timeout = %s', (timeout,))
    cur.execute(lock_statement(spec['tables'], spec['mode'], nowait=nowait))
    for key in spec['advisory_keys']:
        if nowait:
            cur.execute('SELECT pg_try_advisory_xact_lock(%s)', (key,))
            if not cur.fetchone()[0]:
                raise LockBusy('advisory key %s is held by another session (NOWAIT)' % key)
        else:
            cur.execute('SELECT pg_advisory_xact_lock(%s)', (key,))
    cur.execute('SET LOCAL lock_timeout = 0')
    cur.execute(HELD_RELATIONS, (SCHEMA,))
    locks = [{'relation': r, 'mode': m, 'granted': g} for r, m, g in cur.fetchall()]
    cur.execute(HELD_ADVISORY)
    advisory = [signed(k) for k, _m, g in cur.fetchall() if g]
    return locks, advisory


class LockBusy(Exception):
    pass


def await_terminate_step(ledger, fid, backend_pid, timeout, sleep=time.sleep, clock=time.monotonic):
    """Wait until the standing record holds the pg_terminate_backend step of this backend; False if it never does."""
    def holds_step(record):
        return any(s.get('type') == 'pg_terminate_backend' and s.get('pid') == backend_pid for s in record.get('undo') or [])
    return _results.await_recorded(ledger, fid, None, timeout, sleep=sleep, clock=clock, predicate=holds_step)


def hold(program):
    """The program's body: connect, pass the gate, lock, report, hold until told to stop."""
    spec = program.detail
    params = program.conn_params()
    what = 'LOCK TABLE %s IN %s MODE' % (', '.join('%s.%s' % p for p in qualified(spec['tables'])), normalize_mode(spec['mode']))
    try:
        conn = _pgconn.connect(params, application_name=application_name(program.fid), autocommit=False)
        cur = conn.cursor()
        cur.execute('SELECT pg_backend_pid()')
        backend_pid = cur.fetchone()[0]
        conn.rollback()
    except Exception as exc:  # pylint: disable=broad-except
        program.out.write('error', msg='the lock holder could not connect to %s: %s' % (_pgconn.describe(params), _pgconn.one_line(exc)))
        return 1
    program.out.write('connected', backend_pid=backend_pid, application_name=application_name(program.fid))
    if not program.recorded() or not await_terminate_step(program.ledger, program.fid, backend_pid, _program.RECORD_WAIT):
        conn.close()
        program.out.write('done', reason='never recorded in the ledger; locked nothing')
        program.log('never recorded in the ledger; exiting without locking')
        return 1
    try:
        locks, advisory = take_locks(cur, spec)
    except (LockBusy, _pgconn.psycopg2.Error) as exc:
        busy = isinstance(exc, LockBusy) or getattr(exc, 'pgcode', None) == '55P03'
        hint = ('; another session holds a conflicting lock for longer than acquire_timeout_ms=%s' % spec['acquire_timeout_ms']
                if busy else '')
        program.out.write('error', msg='%s%s failed (option tables=%s, mode=%r): %s%s' % (
            what, ' and the advisory locks' if spec['advisory_keys'] else '', spec['tables'], spec['mode'], _pgconn.one_line(exc), hint))
        conn.close()
        return 1
    program.out.write('locked', backend_pid=backend_pid, locks=locks, advisory_keys=advisory)
    program.log('%s held by backend %s; advisory keys %s' % (what, backend_pid, advisory))
    should_stop = program.stop_condition(grace=0)
    reason, pinged = None, time.monotonic()
    while reason is None:
        time.sleep(STEP)
        reason = should_stop()
        if reason is None and time.monotonic() - pinged >= PING:
            pinged = time.monotonic()
            try:
                cur.execute('SELECT 1')  # inside the open transaction: the locks stay
            except _pgconn.psycopg2.Error as exc:
                reason = 'its backend is gone: %s' % _pgconn.one_line(exc)
    try:
        conn.rollback()
        conn.close()
    except _pgconn.psycopg2.Error:
        pass
    program.out.write('released', reason=reason)
    program.log('released (%s)' % reason)
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, hold, argv)
