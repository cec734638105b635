"""The lock holder's pure parts: modes, tables, keys, the LOCK statement (psycopg2.sql), its gate and its undo step's check."""
from __future__ import annotations

import psycopg2.errors
import pytest
from psycopg2 import sql

from ansible_collections.pggit.chaos.plugins.module_utils import _locker, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError


@pytest.mark.parametrize('value, mode', [
    ('ACCESS EXCLUSIVE', 'ACCESS EXCLUSIVE'),
    ('access exclusive', 'ACCESS EXCLUSIVE'),
    ('  Row   Exclusive mode ', 'ROW EXCLUSIVE'),
    ('share_update_exclusive', 'SHARE UPDATE EXCLUSIVE'),
    ('RowExclusiveLock', 'ROW EXCLUSIVE'),
    ('ShareLock', 'SHARE'),
    ('share', 'SHARE'),
    ('exclusive', 'EXCLUSIVE'),
    ('ACCESSSHARE', 'ACCESS SHARE'),
    ('super exclusive', None),
    ('EXCLUSIVE; DROP TABLE pggit.history', None),
    ('', None),
    (None, None),
])
def test_normalize_mode(value, mode):
    assert _locker.normalize_mode(value) == mode


def test_every_mode_has_its_pg_locks_name():
    assert _locker.MODE_NAMES['ACCESS EXCLUSIVE'] == 'AccessExclusiveLock'
    assert _locker.MODE_NAMES['SHARE UPDATE EXCLUSIVE'] == 'ShareUpdateExclusiveLock'
    assert len(_locker.LOCK_MODES) == 8 and all(_locker.normalize_mode(n) == m for m, n in _locker.MODE_NAMES.items())


def test_mode_problem_names_option_and_value():
    assert _locker.mode_problem('ACCESS EXCLUSIVE') is None
    assert _locker.mode_problem('super').startswith("mode must be a PostgreSQL table lock mode (ACCESS SHARE, ")
    assert _locker.mode_problem('super').endswith("got 'super'")


@pytest.mark.parametrize('tables, problem', [
    (['pggit.history', 'objects'], None),
    ([], "tables must name at least one table of schema pggit, got []"),
    (['public.accounts'], "tables: 'public.accounts' is not in schema pggit; pggit_chaos_lock only locks pgGit's own tables"),
    (['PGGIT.history'], "tables: 'PGGIT.history' is not in schema pggit"),
    (['pggit.a.b'], "tables: 'pggit.a.b' is not a table name (pggit.<table> or <table>)"),
    (['pggit.'], "tables: 'pggit.' is not a table name"),
    (['pggit. history'], "tables: 'pggit. history' is not a table name"),
])
def test_tables_problem(tables, problem):
    got = _locker.tables_problem(tables)
    assert got == problem if problem is None else got.startswith(problem), got


@pytest.mark.parametrize('keys, ok', [([], True), ([0, -1, 2 ** 63 - 1, -2 ** 63], True), ([2 ** 63], False), ([True], False)])
def test_keys_problem(keys, ok):
    assert (_locker.keys_problem(keys) is None) is ok


def test_lock_statement_quotes_identifiers_and_takes_the_mode_from_the_list_only():
    stmt = _locker.lock_statement(['pggit.history', 'objects', 'pggit.history'], 'access exclusive')
    assert isinstance(stmt, sql.Composed)
    parts = stmt.seq
    assert parts[0] == sql.SQL('LOCK TABLE ')
    assert parts[1] == sql.Composed([sql.Identifier('pggit', 'history'), sql.SQL(', '), sql.Identifier('pggit', 'objects')])
    assert parts[2] == sql.SQL(' IN ACCESS EXCLUSIVE MODE')
    assert _locker.lock_statement(['history'], 'share', nowait=True).seq[2] == sql.SQL(' IN SHARE MODE NOWAIT')
    weird = _locker.lock_statement(['pggit.Odd "name"'], 'SHARE')
    assert weird.seq[1] == sql.Composed([sql.Identifier('pggit', 'Odd "name"')])
    with pytest.raises(ValueError):
        _locker.lock_statement(['history'], 'EXCLUSIVE; DROP TABLE x')


def test_missing_tables_from_the_catalog_rows():
    asked = ['pggit.history', 'objects', 'pggit.nope', 'pggit.a_view']
    assert _locker.find_tables_args(asked) == (['pggit.history', 'pggit.objects', 'pggit.nope', 'pggit.a_view'],
                                               ['pggit'] * 4, ['history', 'objects', 'nope', 'a_view'])
    rows = [('pggit.history', 'pggit', 'history', 'r'), ('pggit.objects', 'pggit', 'objects', 'p'),
            ('pggit.a_view', 'pggit', 'a_view', 'v')]
    assert _locker.missing_tables(asked, rows) == ['pggit.nope', 'pggit.a_view']


def test_application_name_fits_postgres_and_carries_the_prefix():
    assert _locker.application_name('lock--x') == 'pggit-chaos-locker-lock--x'
    long = _locker.application_name('lock--' + 'n' * 128)
    assert len(long) == 63 and long.startswith(_steps.LOCKER_APP_PREFIX)


@pytest.mark.parametrize('raw, key', [(0, 0), (4242, 4242), (2 ** 64 - 1, -1), (2 ** 63, -2 ** 63)])
def test_signed_advisory_keys(raw, key):
    assert _locker.signed(raw) == key


class Cursor(object):
    def __init__(self, answers):
        self.answers = answers
        self.ran = []
        self.rows = []

    def execute(self, query, args=None):
        self.ran.append((query if isinstance(query, str) else 'LOCK', args))
        self.rows = []
        for needle, rows in self.answers.items():
            if isinstance(query, str) and needle in query:
                self.rows = rows

    def fetchone(self):
        return self.rows[0]

    def fetchall(self):
        return self.rows


HELD = {"l.locktype = 'relation'": [('pggit.history', 'AccessExclusiveLock', True)],
        "l.locktype = 'advisory'": [(7, 'ExclusiveLock', True), (2 ** 64 - 1, 'ExclusiveLock', True)]}


def test_take_locks_bounded_then_reads_pg_locks():
    cur = Cursor(HELD)
    locks, keys = _locker.take_locks(cur, {'tables': ['pggit.history'], 'mode': 'ACCESS EXCLUSIVE', 'advisory_keys': [7, -1],
                                           'acquire_timeout_ms': 2500})
    assert [r[0].split(' ')[0] if r[0] != 'LOCK' else 'LOCK' for r in cur.ran][:5] == ['SET', 'LOCK', 'SELECT', 'SELECT', 'SET']
    assert cur.ran[0] == ('SET LOCAL lock_timeout = %s', (2500,))
    assert cur.ran[2] == ('SELECT pg_advisory_xact_lock(%s)', (7,)) and cur.ran[3] == ('SELECT pg_advisory_xact_lock(%s)', (-1,))
    assert locks == [{'relation': 'pggit.history', 'mode': 'AccessExclusiveLock', 'granted': True}]
    assert keys == [7, -1]


def test_take_locks_nowait_refuses_a_busy_advisory_key():
    cur = Cursor(dict(HELD, pg_try_advisory_xact_lock=[(False,)]))
    with pytest.raises(_locker.LockBusy, match='advisory key 9 is held by another session'):
        _locker.take_locks(cur, {'tables': ['history'], 'mode': 'SHARE', 'advisory_keys': [9], 'acquire_timeout_ms': 0})
    assert not any('lock_timeout' in str(q) for q, _a in cur.ran)


class Ledger(object):
    def __init__(self, records):
        self.records = list(records)

    def read(self, fid):
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]


def rec(*steps, **kw):
    return dict({'status': 'pending', 'undo': list(steps)}, **kw)


KILL = {'type': 'kill_process', 'pid': 10, 'starttime': 1, 'match': 'pggit-chaos-locker'}
TERM = {'type': 'pg_terminate_backend', 'pid': 555, 'application_name': 'pggit-chaos-locker-lock--x'}


def test_the_holder_locks_only_once_its_backend_is_in_the_undo():
    ledger = Ledger([rec(KILL), rec(KILL), rec(KILL, TERM)])
    assert _locker.await_terminate_step(ledger, 'lock--x', 555, 5, sleep=lambda s: None) is True
    assert ledger.records == [rec(KILL, TERM)]


def test_the_holder_gives_up_when_never_recorded_or_reverted():
    clock = iter(range(100)).__next__
    assert _locker.await_terminate_step(Ledger([rec(KILL)]), 'lock--x', 555, 3, sleep=lambda s: None, clock=clock) is False
    assert _locker.await_terminate_step(Ledger([rec(KILL, dict(TERM, pid=556))]), 'lock--x', 555, 3, sleep=lambda s: None,
                                        clock=iter(range(100)).__next__) is False
    assert _locker.await_terminate_step(Ledger([rec(KILL, TERM, status='expired')]), 'lock--x', 555, 3, sleep=lambda s: None) is False
    assert _locker.await_terminate_step(Ledger([None]), 'lock--x', 555, 3, sleep=lambda s: None) is False


def test_the_wait_for_the_terminate_step_is_the_shared_await_recorded_with_a_predicate(monkeypatch):
    from ansible_collections.pggit.chaos.plugins.module_utils import _results
    # await_recorded takes a predicate: the record's undo, not only a kill_process of this pid, decides.
    assert _results.await_recorded(Ledger([rec(KILL), rec(KILL, TERM)]), 'lock--x', None, 5, sleep=lambda s: None,
                                   predicate=lambda r: len(r['undo']) == 2) is True
    calls = []
    monkeypatch.setattr(_results, 'await_recorded', lambda *a, **kw: calls.append((a, kw)) or 'shared')
    assert _locker.await_terminate_step(Ledger([rec(KILL, TERM)]), 'lock--x', 555, 5) == 'shared'
    predicate = calls[0][1]['predicate']
    assert predicate(rec(KILL, TERM)) and not predicate(rec(KILL, dict(TERM, pid=556)))


@pytest.mark.parametrize('step, reason', [
    (dict(TERM, application_name='psql'), "application_name must be a lock holder's ('pggit-chaos-locker-...'), got 'psql'"),
    (dict(TERM, application_name='pggit-chaos-locker-'), 'application_name must be'),
    (dict(TERM, application_name=None), 'application_name must be'),
    (dict(TERM, pid=0), 'pid must be a backend pid'),
    (dict(TERM, pid='555'), 'pid must be a backend pid'),
    (dict(TERM, pid=True), 'pid must be a backend pid'),
    (dict(TERM, conn='host=x'), 'conn must be a dictionary'),
])
def test_pg_terminate_backend_step_refuses_what_a_lock_fault_never_writes(step, reason):
    with pytest.raises(UndoError, match='refused') as raised:
        _steps.check_steps([step], '/var/lib/pggit-chaos')
    assert reason in str(raised.value)


def test_pg_terminate_backend_step_as_written_is_accepted():
    _steps.check_steps([KILL, dict(TERM, conn={'login_host': '127.0.0.1', 'db': 'app'})], '/var/lib/pggit-chaos')


class Backends(object):
    """pg_stat_activity as the handler sees it: pid -> application_name; terminating one removes it."""

    def __init__(self, sessions, survives=False):
        self.sessions = dict(sessions)
        self.survives = survives
        self.ran = []
        self.rows = []

    def cursor(self):
        return self

    def execute(self, query, args=None):
        self.ran.append(query)
        if 'FROM pg_stat_activity' in query:
            pid, app = args
            self.rows = [(1,)] if self.sessions.get(pid) == app else []
        elif 'pg_terminate_backend' in query:
            if not self.survives:
                self.sessions.pop(args[0], None)
            self.rows = [(True,)]

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def close(self):
        pass


@pytest.mark.parametrize('sessions, changed, terminated', [
    ({555: TERM['application_name']}, True, True),
    ({555: 'someone-else'}, False, False),  # the pid now serves another session: left alone
    ({}, False, False),  # already gone
])
def test_pg_terminate_backend_handler_decides_by_looking(monkeypatch, sessions, changed, terminated):
    db = Backends(sessions)
    monkeypatch.setattr(_steps, '_pg_connect', lambda step, ctx: (db, db))
    assert _steps.run_steps([TERM], {}) is changed
    assert any('pg_terminate_backend' in q for q in db.ran) is terminated
    assert db.ran[0].startswith('SELECT 1 FROM pg_stat_activity')


def test_pg_terminate_backend_handler_fails_when_the_backend_stays(monkeypatch):
    db = Backends({555: TERM['application_name']}, survives=True)
    monkeypatch.setattr(_steps, '_pg_connect', lambda step, ctx: (db, db))
    monkeypatch.setattr(_steps, 'TERMINATE_WAIT', 0.1)
    with pytest.raises(UndoError, match='backend 555 .* is still there'):
        _steps.run_steps([TERM], {})


# --- the deadlock phase ---------------------------------------------------------------------------

@pytest.mark.parametrize('spec, problem', [
    ({'then_tables': []}, None),
    ({'then_tables': ['objects'], 'then_mode': 'share'}, None),
    ({'then_tables': ['public.accounts'], 'then_mode': 'SHARE'}, "then_tables: 'public.accounts' is not in schema pggit"),
    ({'then_tables': ['pggit.a.b'], 'then_mode': 'SHARE'}, "then_tables: 'pggit.a.b' is not a table name"),
    ({'then_tables': ['objects'], 'then_mode': 'sharish'}, "then_mode must be a PostgreSQL table lock mode"),
])
def test_then_problem_names_the_then_option(spec, problem):
    got = _locker.then_problem(spec)
    assert got == problem if problem is None else got.startswith(problem), got
    if problem and 'mode' in problem:
        assert got.endswith("got 'sharish'")


@pytest.mark.parametrize('xid, near, full', [
    (746, 748, 746),                               # running ids may be under the snapshot's xmax ...
    (746, 746, 746),                               # ... or at it ...
    (750, 748, 750),                               # ... or over it (xmax is the first id not yet completed)
    (4294967290, (1 << 32) + 5, 4294967290),       # began in the previous epoch
    (3, (1 << 32) - 2, (1 << 32) + 3),             # began in the next epoch, after the snapshot was read
    (100, (7 << 32) + 90, (7 << 32) + 100),
])
def test_full_xid_picks_the_epoch_nearest_the_snapshot(xid, near, full):
    assert _locker.full_xid(xid, near) == full


def test_waiter_rows_say_how_long_each_had_waited_when_the_holder_asked():
    rows = [(11, '746', 'CREATE TABLE s.t (id int)', 100.0), (12, None, 'SELECT 1', None)]
    assert _locker.waiter_rows(rows, 100.25) == [
        {'pid': 11, 'xid': '746', 'query': 'CREATE TABLE s.t (id int)', 'waitstart': 100.0, 'waited_ms': 250.0},
        {'pid': 12, 'xid': None, 'query': 'SELECT 1', 'waitstart': None}]


@pytest.mark.parametrize('pgcode, result', [(None, 'granted'), ('40P01', 'deadlock'), ('55P03', 'timeout'), ('57P01', 'error')])
def test_classify_by_sqlstate(pgcode, result):
    assert _locker.classify(pgcode) == result


@pytest.mark.parametrize('result, statuses, lost', [
    ('deadlock', ['committed'], 'holder'),
    ('granted', ['aborted'], 'waiter'),
    ('granted', ['committed'], None),    # granted after the waiter committed: no cycle, no side cancelled
    ('granted', [], None),
    ('timeout', ['in progress'], None),
])
def test_who_lost(result, statuses, lost):
    assert _locker.who_lost(result, [{'xact_status': s} for s in statuses]) == lost


@pytest.mark.parametrize('waiter, done', [
    ({'xid': None}, True), ({'xid': '7', 'xact_status': 'aborted'}, True), ({'xid': '7', 'xact_status': 'committed'}, True),
    ({'xid': '7', 'xact_status': 'in progress'}, False), ({'xid': '7'}, False), ({'xid': '7', 'xact_status': None, 'error': 'x'}, True),
])
def test_settled(waiter, done):
    assert _locker.settled(waiter) is done


def test_regclass_names_quote_what_regclass_reads_back():
    assert _locker.regclass_names(['objects', 'pggit.Odd "x"', 'pggit.objects']) == ['"pggit"."objects"', '"pggit"."Odd ""x"""']


class Raises(object):
    def __init__(self, exc):
        self.exc = exc


class FakeCursor(object):
    """Answers the holder's statements in order; records them."""

    def __init__(self, answers):
        self.answers, self.executed, self.result = list(answers), [], None

    def execute(self, statement, args=None):
        self.executed.append((statement, args))
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, Raises):
            raise answer.exc
        self.result = answer

    def fetchall(self):
        return self.result

    def fetchone(self):
        return self.result[0]


class FakeConn(object):
    def __init__(self, cursor):
        self.cursor_, self.rolled_back = cursor, 0

    def cursor(self):
        return self.cursor_

    def rollback(self):
        self.rolled_back += 1


class Out(object):
    def __init__(self):
        self.events = []

    def write(self, event, **data):
        self.events.append(dict(data, event=event))


def test_second_lock_waits_for_a_waiter_then_then_after_ms_before_it_asks():
    now = [100.0]
    waiter = [(11, '746', 'CREATE TABLE s.t (id int)', 99.9)]
    cur = FakeCursor([None, [], None, waiter, None, waiter])
    out = Out()
    second = _locker.SecondLock(FakeConn(cur), {'then_tables': ['objects'], 'then_mode': 'share', 'then_after_ms': 200}, out,
                                clock=lambda: now[0])
    assert second.step(200.0) is None and second.seen_at is None, 'nobody waits yet'
    assert cur.executed[0][0] == 'SELECT pg_stat_clear_snapshot()', 'a fresh pg_stat_activity each look'
    assert cur.executed[1] == (_locker.WAITERS, (['"pggit"."objects"'],))
    now[0] = 100.1
    assert second.step(200.0) is None and second.seen_at == 100.1 and out.events[-1]['event'] == 'then_waiter_seen'
    now[0] = 100.2
    assert second.step(200.0) is None, '100 ms after the waiter was seen: not yet'
    assert len(cur.executed) == 4


def test_second_lock_granted_after_the_waiter_aborted_reports_the_waiter_lost_and_no_rows():
    now = [100.0]
    waiter = [(11, '746', 'CREATE TABLE s.t (id int)', 99.9)]
    held = [('pggit.history', 'ShareLock', True), ('pggit.objects', 'ShareLock', True)]
    cur = FakeCursor([None, waiter,                                   # the look that sees it
                      None, waiter, [(748,)], None, None, None, held,  # ask: waiters, xmax, lock_timeout, LOCK, reset, pg_locks
                      None, [('aborted', 0, 0)], None])               # settle inside a savepoint
    conn, out = FakeConn(cur), Out()
    second = _locker.SecondLock(conn, {'then_tables': ['pggit.objects'], 'then_mode': 'SHARE', 'then_after_ms': 0}, out,
                                clock=lambda: now[0])
    assert second.step(110.0) is None
    now[0] = 100.3
    event = second.step(110.0)
    assert event['result'] == 'granted' and event['lost'] == 'waiter' and event['sqlstate'] is None
    assert event['waiters'][0]['xact_status'] == 'aborted' and event['waiters'][0]['history_rows'] == 0
    assert event['waiters'][0]['waited_ms'] == 400.0 and event['after_ms'] == 300.0
    statements = [str(s) if isinstance(s, str) else s for s, _a in cur.executed]
    assert ('SET LOCAL lock_timeout = %s', (9700,)) in cur.executed, 'the second lock waits at most until the TTL'
    assert statements[-3:] == ['SAVEPOINT pggit_chaos_settle', _locker.XACT_OUTCOME, 'RELEASE SAVEPOINT pggit_chaos_settle']
    assert cur.executed[-2][1] == (746, '746', '746')
    assert conn.rolled_back == 0, 'holding its locks, the holder never rolls back'
    assert second.done and second.step(110.0) is None and [e['event'] for e in out.events][-1] == 'then'


class Deadlock(psycopg2.errors.DeadlockDetected):
    pgcode = '40P01'  # as the server sets it


def test_second_lock_cancelled_by_the_detector_reports_the_holder_lost():
    now = [100.0]
    waiter = [(11, '746', 'CREATE TABLE s.t (id int)', 99.0)]
    cur = FakeCursor([None, waiter, None, waiter, [(748,)], None, Raises(Deadlock('deadlock detected')),
                      [('committed', 1, 1)]])
    conn, out = FakeConn(cur), Out()
    second = _locker.SecondLock(conn, {'then_tables': ['objects'], 'then_mode': 'SHARE', 'then_after_ms': 1500}, out,
                                clock=lambda: now[0])
    second.step(110.0)
    now[0] = 101.6
    event = second.step(110.0)
    assert event['result'] == 'deadlock' and event['lost'] == 'holder' and event['locks'] == []
    assert event['waiters'][0]['xact_status'] == 'committed' and event['waiters'][0]['history_rows'] == 1
    assert conn.rolled_back >= 2, 'the aborted transaction is rolled back, and so is each read after it'
