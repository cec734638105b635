"""The lock holder's pure parts: modes, tables, keys, the LOCK statement (psycopg2.sql), its gate and its undo step's check."""
from __future__ import annotations

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
