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


def mode_problem(value, option='mode'):
    if normalize_mode(value) is None:
        return '%s must be a PostgreSQL table lock mode (%s), got %r' % (option, ', '.join(LOCK_MODES), value)
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


def tables_problem(tables, option='tables'):
    """Why ``tables`` (the option named ``option``) cannot be locked (checked before anything connects), or None."""
    if not tables:
        return '%s must name at least one table of schema pggit, got %r' % (option, tables)
    for value in tables:
        parsed = parse_table(value)
        if parsed is None:
            return "%s: %r is not a table name (pggit.<table> or <table>)" % (option, value)
        if parsed[0] != SCHEMA:
            return "%s: %r is not in schema pggit; pggit_chaos_lock only locks pgGit's own tables" % (option, value)
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


# --- the deadlock phase (then_tables) ---------------------------------------------------
# Once a session is seen waiting on the holder's first locks, and then_after_ms later,
# the holder asks for then_mode on then_tables, which that session may hold a
# conflicting lock on (a tracked DDL holds ROW EXCLUSIVE on pggit.objects while it
# waits to insert into pggit.history): both then wait on each other, and
# PostgreSQL's deadlock detector cancels the side whose deadlock_timeout runs out
# first after the cycle closed; so then_after_ms under deadlock_timeout makes the
# waiting session lose, over it the holder.
THEN_POLL = 0.05
# How long the holder looks, once its second lock is decided, for the waiters' transactions to end.
SETTLE_S = 3.0
DEADLOCK = '40P01'
LOCK_NOT_AVAILABLE = '55P03'
# Client sessions waiting on a lock this backend holds while they hold a lock on one of then_tables (so that
# asking for those closes a cycle; autovacuum, or a session that holds nothing there, does not count): pid,
# transaction id, statement, since when they wait (epoch s).
WAITERS = ("SELECT a.pid, a.backend_xid::text, left(a.query, 200), extract(epoch FROM min(l.waitstart))::float8 "
           "FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
           "WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' "
           "AND pg_backend_pid() = ANY(pg_blocking_pids(a.pid)) "
           "AND EXISTS (SELECT 1 FROM pg_locks g WHERE g.pid = a.pid AND g.granted AND g.locktype = 'relation' "
           "AND g.relation = ANY(%s::regclass[])) "
           "GROUP BY 1, 2, 3 ORDER BY 1")
XMAX = 'SELECT txid_snapshot_xmax(txid_current_snapshot())'
# What a waiter's transaction became, and the rows of pgGit's tables it wrote that are visible now.
XACT_OUTCOME = ("SELECT txid_status(%s), (SELECT count(*) FROM pggit.history WHERE xmin::text = %s), "
                "(SELECT count(*) FROM pggit.objects WHERE xmin::text = %s)")
THEN_RESULTS = ('granted', 'deadlock', 'timeout', 'error')


def regclass_names(tables):
    """The tables as quoted names that ::regclass reads back exactly (a WAITERS parameter)."""
    return ['"%s"."%s"' % (schema.replace('"', '""'), table.replace('"', '""')) for schema, table in qualified(tables)]


def then_problem(spec):
    """Why the deadlock-phase options cannot work, or None (then_after_ms is range-checked by the module)."""
    if not spec.get('then_tables'):
        return None
    return tables_problem(spec['then_tables'], 'then_tables') or mode_problem(spec.get('then_mode'), 'then_mode')


def full_xid(xid, near):
    """The 64-bit id (what txid_status takes) of a 32-bit ``xid`` running now, ``near`` a 64-bit id of now (the
    snapshot's xmax: running ids lie on either side of it, always within 2**31, as PostgreSQL compares them)."""
    xid, near = int(xid), int(near)
    base = (near & ~0xffffffff) | xid
    return min((base - 2 ** 32, base, base + 2 ** 32), key=lambda full: (abs(full - near), full))


def waiter_rows(rows, asked_at=None):
    """WAITERS rows as dicts; ``waited_ms``: how long each had waited when the holder asked for its second lock."""
    out = []
    for pid, xid, query, since in rows:
        item = {'pid': pid, 'xid': xid, 'query': query, 'waitstart': since}
        if asked_at is not None and since is not None:
            item['waited_ms'] = round((asked_at - since) * 1000.0, 1)
        out.append(item)
    return out


def settled(waiter):
    """Nothing more to learn of this waiter: no transaction id, its status not readable, or its transaction ended."""
    return waiter.get('xid') is None or 'error' in waiter or waiter.get('xact_status') in ('committed', 'aborted')


def classify(pgcode):
    """The result of the second LOCK by its SQLSTATE (None: granted)."""
    if pgcode is None:
        return 'granted'
    return {DEADLOCK: 'deadlock', LOCK_NOT_AVAILABLE: 'timeout'}.get(pgcode, 'error')


def who_lost(result, waiters):
    """'holder' when the detector cancelled the holder; 'waiter' when the holder got its lock after a waiter's
    transaction aborted (the waiter was cancelled); None when no side was."""
    if result == 'deadlock':
        return 'holder'
    if result == 'granted' and any(w.get('xact_status') == 'aborted' for w in waiters):
        return 'waiter'
    return None


class SecondLock(object):
    """The holder's deadlock phase: watch for a waiter, wait then_after_ms, ask, settle, report (event ``then``)."""

    def __init__(self, conn, spec, out, clock=time.time):
        self.conn, self.cur, self.spec, self.out, self.clock = conn, conn.cursor(), spec, out, clock
        self.seen_at = None
        self.done = False

    def what(self):
        return 'LOCK TABLE %s IN %s MODE' % (', '.join('%s.%s' % p for p in qualified(self.spec['then_tables'])),
                                             normalize_mode(self.spec['then_mode']))

    def waiters(self):
        # pg_stat_activity is read once per transaction and kept (stats_fetch_consistency): the holder's stays open.
        self.cur.execute('SELECT pg_stat_clear_snapshot()')
        self.cur.execute(WAITERS, (regclass_names(self.spec['then_tables']),))
        return self.cur.fetchall()

    def step(self, expires_at):
        """One look; when the time has come, ask for the second lock (this blocks until PostgreSQL decides): its event."""
        if self.done:
            return None
        now = self.clock()
        if self.seen_at is None:
            if self.waiters():
                self.seen_at = now
                self.out.write('then_waiter_seen', at=now)
            return None
        if (now - self.seen_at) * 1000.0 < int(self.spec.get('then_after_ms') or 0):
            return None
        return self.ask(expires_at)

    def ask(self, expires_at):
        rows = self.waiters()
        asked_at = self.clock()
        waiters = waiter_rows(rows, asked_at)
        self.cur.execute(XMAX)
        xmax = self.cur.fetchone()[0]
        remaining = max(1, int((expires_at - asked_at) * 1000))
        self.cur.execute('SET LOCAL lock_timeout = %s', (remaining,))
        self.out.write('then_asking', asked_at=asked_at, waiters=waiters)
        pgcode, msg, locks = None, None, []
        try:
            self.cur.execute(lock_statement(self.spec['then_tables'], self.spec['then_mode']))
            self.cur.execute('SET LOCAL lock_timeout = 0')
            self.cur.execute(HELD_RELATIONS, (SCHEMA,))
            locks = [{'relation': r, 'mode': m, 'granted': g} for r, m, g in self.cur.fetchall()]
        except _pgconn.psycopg2.Error as exc:
            pgcode, msg = getattr(exc, 'pgcode', None) or 'unknown', _pgconn.one_line(exc)
            # The error aborted the transaction: it holds nothing any more.
            self.conn.rollback()
        decided_at = self.clock()
        result = classify(pgcode)
        self.settle(waiters, xmax, holding=result == 'granted')
        self.done = True
        event = dict(result=result, lost=who_lost(result, waiters), sqlstate=pgcode, msg=msg, asked_at=asked_at,
                     decided_at=decided_at, waited_ms=round((decided_at - asked_at) * 1000.0, 1),
                     after_ms=round((asked_at - self.seen_at) * 1000.0, 1), waiters=waiters, locks=locks,
                     tables=['%s.%s' % p for p in qualified(self.spec['then_tables'])], mode=normalize_mode(self.spec['then_mode']))
        self.out.write('then', **event)
        return event

    def settle(self, waiters, xmax, holding):
        """Read what each waiter's transaction became (until none is in progress, SETTLE_S at most) and the rows it left.

        Holding its locks, the holder reads inside a savepoint: a failed read must not abort the transaction."""
        deadline = self.clock() + SETTLE_S
        while True:
            for waiter in waiters:
                if waiter.get('xid') is None:
                    continue
                if holding:
                    self.cur.execute('SAVEPOINT pggit_chaos_settle')
                try:
                    self.cur.execute(XACT_OUTCOME, (full_xid(waiter['xid'], xmax), waiter['xid'], waiter['xid']))
                    status, history, objects = self.cur.fetchone()
                    waiter.update(xact_status=status, history_rows=history, objects_rows=objects)
                except _pgconn.psycopg2.Error as exc:
                    waiter.update(xact_status=None, error=_pgconn.one_line(exc))
                    if not holding:
                        self.conn.rollback()
                        continue
                    self.cur.execute('ROLLBACK TO SAVEPOINT pggit_chaos_settle')
                if holding:
                    self.cur.execute('RELEASE SAVEPOINT pggit_chaos_settle')
            if not holding:
                self.conn.rollback()  # hold no snapshot, no lock, between the looks
            if all(settled(w) for w in waiters) or self.clock() >= deadline:
                return
            time.sleep(THEN_POLL)


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
    second = SecondLock(conn, spec, program.out) if spec.get('then_tables') else None
    reason, pinged = None, time.monotonic()
    while reason is None:
        time.sleep(THEN_POLL if second is not None and not second.done else STEP)
        reason = should_stop()
        if reason is None and second is not None and not second.done:
            try:
                event = second.step(float(program.record['expires_at']))
                if event:
                    program.log('%s: %s after %s ms (%s lost)' % (second.what(), event['result'], event['waited_ms'], event['lost']))
            except _pgconn.psycopg2.Error as exc:
                reason = 'its backend is gone: %s' % _pgconn.one_line(exc)
            except Exception as exc:  # pylint: disable=broad-except
                reason = 'its deadlock phase failed: %r' % (exc,)
            pinged = time.monotonic()
        elif reason is None and time.monotonic() - pinged >= PING:
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
