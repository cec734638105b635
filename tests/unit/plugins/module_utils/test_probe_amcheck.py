"""The amcheck check of the probe, against a fake cursor: which function, which transactions, what is reported, what is created."""
from __future__ import annotations

import psycopg2
import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._probe import Probe, is_corruption

from test_probe import TARGET, FakeConn, FakeCursor, by_name, primary

INDEXES = [(101, 'pggit.history_pkey', True), (102, 'pggit.objects_pkey', True), (103, 'pggit.history_object_id_idx', True)]


class Corrupted(psycopg2.errors.IndexCorrupted):
    """What amcheck raises: SQLSTATE XX002 with its own message (pgcode is read-only on psycopg2 errors)."""

    pgcode = 'XX002'

    def __str__(self):
        return self.args[0]


class DataCorrupted(psycopg2.errors.DataCorrupted):
    pgcode = 'XX001'


class LockTimeout(psycopg2.errors.LockNotAvailable):
    pgcode = '55P03'


class AmcheckConn(FakeConn):
    """bt_index_*check answers per index oid: an exception to raise, else success."""

    def __init__(self, answers, per_index):
        super(AmcheckConn, self).__init__(answers)
        self.per_index = per_index
        self.calls = []

    def cursor(self):
        return AmcheckCursor(self)

    # Also in `executed`, so the order of statements and transaction ends can be asserted.
    def commit(self):
        super(AmcheckConn, self).commit()
        self.executed.append('<commit>')

    def rollback(self):
        super(AmcheckConn, self).rollback()
        self.executed.append('<rollback>')


class AmcheckCursor(FakeCursor):
    def execute(self, query, params=None):
        if isinstance(query, str) and query.startswith('SELECT bt_index'):
            self.conn.executed.append(query)
            self.conn.calls.append((query.split('(')[0][len('SELECT '):], params[0]))
            answer = self.conn.per_index.get(params[0])
            if answer is not None:
                raise answer
            self.rows = [('',)]
            return
        super(AmcheckCursor, self).execute(query, params)


def answers(recovery=False, extension='1.3', available=True, **overrides):
    base = primary(**{
        'pg_is_in_recovery()': [(recovery, '15.6', 'shop')],
        "FROM pg_extension WHERE extname = 'amcheck'": [(extension, available)],
        'CREATE EXTENSION': [],
        'SET TRANSACTION READ ONLY': [],
        'SET LOCAL': [],
        "a.amname = 'btree'": INDEXES,
    })
    base.update(overrides)
    return base


def run(mode, per_index=None, probe_out=None, check_mode=False, **kw):
    """kw: answers() overrides, and amcheck_create when given (else the probe's default)."""
    params = dict(TARGET, amcheck=mode, canary=False, health_check='skip', check_mode=check_mode)
    if 'create' in kw:
        params['amcheck_create'] = kw.pop('create')
    conn = AmcheckConn(answers(**kw), per_index or {})
    probe = Probe(params, connect=lambda: conn)
    result = probe.run_once()
    if probe_out is not None:
        probe_out.append(probe)
    return result, by_name(result).get('amcheck'), conn


def amcheck_statements(conn):
    """What ran from the first amcheck transaction on: SETs, the calls (named by their oid) and the transaction ends."""
    start = conn.executed.index('SET TRANSACTION READ ONLY')
    out = []
    for q in conn.executed[start:]:
        if q.startswith('SELECT bt_'):
            out.append('%s %d' % (q.split('(')[0][len('SELECT '):], conn.calls[len([o for o in out if o.startswith('bt_')])][1]))
        elif q.startswith('SET') or q.startswith('<'):
            out.append(q.split(' = ')[0])
    return out


def one_index(function, oid, end='<commit>'):
    return ['SET TRANSACTION READ ONLY', 'SET LOCAL statement_timeout', 'SET LOCAL lock_timeout', '%s %d' % (function, oid), end]


def test_none_runs_no_amcheck():
    result, check, conn = run('none')
    assert check is None and result['amcheck'] is None
    assert not conn.ran('amcheck') and conn.calls == []


@pytest.mark.parametrize('mode, function', [('check', 'bt_index_check'), ('parent', 'bt_index_parent_check')])
def test_each_index_is_checked_in_a_read_only_bounded_transaction_of_its_own(mode, function):
    """Committed before the next index: the parent check's ShareLock on a pgGit table never outlives its own index's check."""
    result, check, conn = run(mode)
    assert check['status'] == 'ok' and check['critical'] is True and result['healthy']
    assert check['data']['indexes_checked'] == 3 and check['data']['corrupt'] == [] and check['data']['function'] == function
    assert conn.calls == [(function, 101), (function, 102), (function, 103)]
    assert amcheck_statements(conn)[:15] == one_index(function, 101) + one_index(function, 102) + one_index(function, 103)
    assert conn.autocommit is True and not conn.ran('SAVEPOINT')
    assert not conn.ran('CREATE EXTENSION')


def test_each_corrupt_index_is_reported_with_amchecks_text_and_does_not_hide_the_others():
    broken = {101: Corrupted('item order invariant violated for index "history_pkey"'),
              103: Corrupted('index "history_object_id_idx" contains unexpected zero page at block 1')}
    result, check, conn = run('check', broken)
    assert conn.calls == [('bt_index_check', 101), ('bt_index_check', 102), ('bt_index_check', 103)]
    assert amcheck_statements(conn)[:15] == (one_index('bt_index_check', 101, '<rollback>') + one_index('bt_index_check', 102)
                                             + one_index('bt_index_check', 103, '<rollback>'))
    assert check['status'] == 'failed' and result['healthy'] is False and 'amcheck' in result['failed_checks']
    assert [(c['index'], c['error'], c['sqlstate']) for c in check['data']['corrupt']] == [
        ('pggit.history_pkey', 'item order invariant violated for index "history_pkey"', 'XX002'),
        ('pggit.history_object_id_idx', 'index "history_object_id_idx" contains unexpected zero page at block 1', 'XX002')]
    assert check['data']['indexes_checked'] == 3
    assert result['findings'] == [
        'amcheck: index pggit.history_pkey is corrupt: item order invariant violated for index "history_pkey"',
        'amcheck: index pggit.history_object_id_idx is corrupt: index "history_object_id_idx" contains unexpected zero page at block 1']
    assert result['amcheck']['corrupt'] == check['data']['corrupt']


def test_an_index_that_cannot_be_checked_is_an_error_not_corruption():
    result, check, _conn = run('check', {102: LockTimeout('canceling statement due to lock timeout')})
    assert check['status'] == 'error' and check['data']['corrupt'] == []
    assert check['data']['errors'][0]['index'] == 'pggit.objects_pkey' and check['data']['indexes_checked'] == 2
    assert 'could not be checked' in check['message'] and not result['healthy']


def test_parent_on_a_primary_runs_the_parent_check():
    _result, check, conn = run('parent')
    assert {c[0] for c in conn.calls} == {'bt_index_parent_check'} and check['data']['function'] == 'bt_index_parent_check'
    assert 'parent_check' not in check['data']


def test_parent_on_a_standby_is_skipped_and_says_why():
    _result, check, conn = run('parent', recovery=True)
    assert {c[0] for c in conn.calls} == {'bt_index_check'}
    assert check['status'] == 'ok'
    assert check['data']['parent_check'].startswith('bt_index_parent_check skipped: this is a standby')
    assert 'ShareLock' in check['message']


def test_missing_extension_is_created_only_when_amcheck_create_says_so_and_that_is_a_change():
    probes = []
    _result, check, conn = run('check', extension=None, create=True, probe_out=probes)
    assert conn.ran('CREATE EXTENSION IF NOT EXISTS amcheck') and check['status'] == 'ok' and check['data']['extension_created']
    assert probes[0].changed is True


def test_an_existing_extension_is_no_change_even_with_amcheck_create():
    probes = []
    _result, check, conn = run('check', create=True, probe_out=probes)
    assert check['status'] == 'ok' and check['data']['extension_created'] is False
    assert not conn.ran('CREATE EXTENSION') and probes[0].changed is False


@pytest.mark.parametrize('kw, words', [
    (dict(), 'amcheck_create=false: creating it is DDL that pgGit records in pggit.history'),
    (dict(create=False), 'set amcheck_create=true, or run CREATE EXTENSION amcheck before the baseline (amcheck comes with '
                         'the PostgreSQL contrib modules'),
    (dict(create=True, recovery=True), 'a standby cannot create it'),
    (dict(create=True, check_mode=True), 'check mode does not create it (option amcheck=check, amcheck_create=true)'),
    (dict(create=True, available=False), 'amcheck is not installed on this server (option amcheck=check): install the PostgreSQL contrib'),
])
def test_missing_extension_not_created_is_an_error_naming_why(kw, words):
    """Never created by default (zero footprint: CREATE EXTENSION is tracked DDL), nor on a standby, in check mode, or without contrib."""
    probes = []
    result, check, conn = run('check', extension=None, probe_out=probes, **kw)
    assert check['status'] == 'error' and words in check['message'], check['message']
    assert not conn.ran('CREATE EXTENSION') and conn.calls == [] and not result['healthy']
    assert probes[0].changed is bool(kw.get('check_mode')), 'a change only where it would have created it'


def test_invalid_indexes_are_a_warning_finding_not_a_silent_ok():
    result, check, conn = run('check', **{"a.amname = 'btree'": INDEXES[:1] + [(104, 'pggit.history_pkey_ccnew', False)]})
    assert conn.calls == [('bt_index_check', 101)] and check['data']['not_checked_invalid'] == ['pggit.history_pkey_ccnew']
    # A failed REINDEX CONCURRENTLY leaves an invalid index: a warning that names it (not critical: the valid ones are clean).
    assert check['status'] == 'warning' and check['critical'] is False and 'pggit.history_pkey_ccnew' in check['message']
    assert result['healthy'] and 'amcheck: index pggit.history_pkey_ccnew is invalid, not checked' not in result['findings']
    assert any('pggit.history_pkey_ccnew' in f for f in result['findings'])


def test_invalid_indexes_are_findings_next_to_corrupt_ones():
    per_index = {101: Corrupted('item order invariant violated for index "history_pkey"')}
    result, _check, _conn = run('check', per_index, **{"a.amname = 'btree'": INDEXES[:1] + [(104, 'pggit.history_pkey_ccnew', False)]})
    assert 'amcheck: index pggit.history_pkey_ccnew is invalid, not checked' in result['findings']


def test_corruption_is_class_xx_only():
    assert is_corruption(Corrupted('x'))
    assert is_corruption(DataCorrupted('invalid page in block 1'))
    assert not is_corruption(LockTimeout('timeout'))
    assert not is_corruption(psycopg2.errors.QueryCanceled('no code'))
