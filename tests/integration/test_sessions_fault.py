"""pggit_chaos_sessions really fills max_connections on a real PostgreSQL, and every way out (revert, TTL, a killed
holder) frees the sessions. Non-superusers are refused while it holds; the superuser still gets in."""
from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg2
import pytest

from background import kill_programs, ledger_ids, programs
from modrun import run_module
from pgtools import query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _holder, _ledger, _workload
from ansible_collections.pggit.chaos.plugins.module_utils._checker import check
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_sessions

HOLDER = 'pggit-chaos-holder'


@pytest.fixture
def private_state_dir(state_dir):
    yield state_dir
    kill_programs(state_dir)


@pytest.fixture
def role():
    return 'chaos_it_' + uuid.uuid4().hex[:8]


def args(pgdb, state_dir, role, **extra):
    base = dict(pgdb, name='full', state_dir=state_dir, ttl=60, role=role)
    base.update(extra)
    return base


def can_login(pgdb, role):
    return [row[0] for row in query(pgdb, 'SELECT rolcanlogin FROM pg_roles WHERE rolname = %s', (role,))]


def stored_password(pgdb, role):
    return query(pgdb, 'SELECT rolpassword FROM pg_authid WHERE rolname = %s', (role,))[0][0]


def held(pgdb):
    return query(pgdb, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pggit-chaos-holder-%'")[0][0]


def slots(pgdb):
    return query(pgdb, "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int")[0][0]


def connect_as(pgdb, user):
    return psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user=user, dbname=pgdb['db'], connect_timeout=5)


def test_check_mode_shows_the_plan_and_creates_nothing(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, _ansible_check_mode=True))
    assert not failed, result['msg']
    assert result['held'] == 0 and result['slots']['target'] == slots(pgdb)
    assert 'would hold up to %d idle session(s)' % slots(pgdb) in result['msg']
    assert query(pgdb, 'SELECT count(*) FROM pg_roles WHERE rolname = %s', (role,))[0][0] == 0
    assert held(pgdb) == 0 and ledger_ids(private_state_dir) == []


def test_the_slots_fill_non_superusers_are_refused_and_the_revert_frees_them(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role))
    assert not failed, result['msg']
    free = slots(pgdb)
    assert result['changed'] and result['role'] == {'name': role, 'state': 'created'}
    assert result['held'] >= free - 3 and result['sessions_after_fill'] == result['held'] == held(pgdb)
    assert programs(private_state_dir, HOLDER) == [result['holder']['pid']]
    assert query(pgdb, "SELECT rolsuper, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                 (role,)) == [(False, _holder.ROLE_MARK)]
    # A new non-superuser client is refused; its DDL is a definite fail (no DDL sent), never lost.
    with pytest.raises(psycopg2.OperationalError, match='remaining connection slots are reserved'):
        connect_as(pgdb, role)
    work = _workload.Workload(dict(pgdb, schema='s', run_id='r', login_host='127.0.0.1', op_login_user=role))
    op = work.fresh_op('r_000001')
    assert op['outcome'] == 'fail' and 'remaining connection slots are reserved' in work.refused[0][1]
    assert check([op], {}, set(), expect_tracked=True)['lost'] == []
    # The superuser gets in through the reserved slots.
    connect_as(pgdb, 'postgres').close()

    again, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role))
    assert not failed and again['changed'] is False and again['held'] == held(pgdb)

    started = time.time()
    reverted, failed = run_module(pggit_chaos_sessions.main, dict(args(pgdb, private_state_dir, role), state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted'
    assert wait_for(lambda: held(pgdb) == 0, 5), 'the revert frees every session'
    print('revert freed %d sessions in %.2f s' % (result['held'], time.time() - started))
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir, HOLDER) == []
    # The role is ours and stays, but nobody can log in with it once no fault uses it (the old code left it LOGIN).
    assert can_login(pgdb, role) == [False]
    with pytest.raises(psycopg2.OperationalError, match='is not permitted to log in'):
        connect_as(pgdb, role)


def test_the_ttl_reaper_alone_frees_the_sessions(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, count=5))
    assert not failed, result['msg']
    assert result['held'] == 5 == held(pgdb)
    ledger = _ledger.Ledger(private_state_dir)
    with ledger.lock():
        rec = ledger.read('sessions--full')
        rec['expires_at'] = time.time() + 1.0
        ledger.write(rec)
    assert wait_for(lambda: held(pgdb) == 0 and programs(private_state_dir, HOLDER) == [], 10), 'the TTL frees them'
    assert wait_for(lambda: ledger_ids(private_state_dir) == [], 5)
    assert can_login(pgdb, role) == [False], 'the reaper alone took the login away too'


def test_a_killed_holder_frees_its_sessions(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, count=4))
    assert not failed, result['msg']
    assert held(pgdb) == 4
    os.kill(result['holder']['pid'], signal.SIGKILL)
    assert wait_for(lambda: held(pgdb) == 0, 5), 'its sockets close with it'
    reverted, failed = run_module(pggit_chaos_sessions.main, dict(args(pgdb, private_state_dir, role), state='absent'))
    assert not failed and ledger_ids(private_state_dir) == []


def test_a_role_not_ours_is_never_touched_and_nothing_is_left(pgdb, private_state_dir, role):
    query(pgdb, 'CREATE ROLE %s LOGIN' % role)
    for extra in ({}, {'hold': False}):
        result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, **extra))
        assert failed and 'role' in result['msg'] and "'%s'" % role in result['msg'] and 'not ours' in result['msg']
        assert ledger_ids(private_state_dir) == [] and held(pgdb) == 0 and programs(private_state_dir, HOLDER) == []
    assert query(pgdb, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (role,)) == [(None,)]


def test_hold_false_lets_the_role_log_in_for_the_faults_life_only(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients'))
    assert not failed and result['changed'] and result['role'] == {'name': role, 'state': 'created'}
    assert ledger_ids(private_state_dir) == ['sessions--clients'] and held(pgdb) == 0
    assert programs(private_state_dir, HOLDER) == []
    connect_as(pgdb, role).close()
    again, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients'))
    assert not failed and not again['changed'], 'inside the fault\'s life nothing changes'
    reverted, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, name='clients', state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted' and ledger_ids(private_state_dir) == []
    assert can_login(pgdb, role) == [False]
    with pytest.raises(psycopg2.OperationalError, match='is not permitted to log in'):
        connect_as(pgdb, role)
    # A later run gives our role its login back: changed, and said so.
    later, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients'))
    assert not failed and later['changed'] and later['role'] == {'name': role, 'state': 'altered'}
    assert can_login(pgdb, role) == [True]


def test_check_mode_with_hold_false_changes_nothing(pgdb, private_state_dir, role):
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, _ansible_check_mode=True))
    assert not failed and result['changed'] and result['role'] == {'name': role, 'state': 'would be created'}
    assert can_login(pgdb, role) == [] and ledger_ids(private_state_dir) == []


def test_a_new_password_is_changed_true_and_the_same_one_is_not_set_again(pgdb, private_state_dir, role):
    """The old code reset the password of an existing role and said changed=false."""
    first, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, role_password='pw-1'))
    assert not failed and first['changed']
    stored = stored_password(pgdb, role)
    assert stored.startswith(('SCRAM-SHA-256$', 'md5')) and 'pw-1' not in stored
    same, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, role_password='pw-1'))
    assert not failed and not same['changed'] and stored_password(pgdb, role) == stored, 'the same password is not set again'
    new, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, role_password='pw-2'))
    assert not failed and new['changed'] and new['role']['state'] == 'altered' and stored_password(pgdb, role) != stored
    assert 'pw-2' not in repr(new)
    # Under the same live fault (stale password), and under a new one (after the revert): the new password works.
    psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user=role, password='pw-2', dbname=pgdb['db'],
                     connect_timeout=5).close()
    run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, state='absent'))
    assert can_login(pgdb, role) == [False] and stored_password(pgdb, role) is None, 'the revert drops the password'


def test_the_role_keeps_its_login_until_the_last_fault_using_it_is_reverted(pgdb, private_state_dir, role):
    clients, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients'))
    assert not failed, clients['msg']
    holder, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, count=2))
    assert not failed, holder['msg']
    first, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, state='absent'))
    assert not failed and first['revert']['result'] == 'reverted'
    assert 'sessions--clients still use it' in ' '.join(first['revert'].get('notes') or [])
    assert wait_for(lambda: held(pgdb) == 0, 5)
    assert can_login(pgdb, role) == [True], 'the clients fault still uses the role'
    connect_as(pgdb, role).close()
    last, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, name='clients', state='absent'))
    assert not failed and last['revert']['result'] == 'reverted'
    assert can_login(pgdb, role) == [False]


def test_an_experiment_revert_and_the_ttl_take_the_login_away(pgdb, private_state_dir, role):
    """The role's fault of an experiment goes with pggit_chaos_revert's experiment, or alone at its TTL."""
    from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_revert
    for name in ('clients', 'holder'):
        extra = dict(hold=False) if name == 'clients' else dict(count=2)
        result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, name=name, experiment='e1', **extra))
        assert not failed, result['msg']
    reverted, failed = run_module(pggit_chaos_revert.main, dict(state_dir=private_state_dir, experiment='e1'))
    assert not failed and ledger_ids(private_state_dir) == [] and can_login(pgdb, role) == [False]
    result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, name='clients', hold=False, ttl=5))
    assert not failed and can_login(pgdb, role) == [True]
    assert wait_for(lambda: can_login(pgdb, role) == [False] and ledger_ids(private_state_dir) == [], 15), 'the TTL reaper alone'


def role_sessions(pgdb, role):
    return query(pgdb, 'SELECT count(*) FROM pg_stat_activity WHERE usename = %s', (role,))[0][0]


def test_a_session_logged_in_as_the_role_does_not_outlive_the_revert(pgdb, private_state_dir, role):
    """NOLOGIN only refuses new logins: a session opened inside the fault's life (with its password) must end with the
    revert too, or the login outlives it.  The TTL reaper does the same, alone."""
    for how in ('revert', 'ttl'):
        result, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients',
                                                                    role_password='pw-s', ttl=60 if how == 'revert' else 5))
        assert not failed, result['msg']
        kept = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user=role, password='pw-s', dbname=pgdb['db'],
                                connect_timeout=5)
        try:
            kept.cursor().execute('SELECT 1')
            assert role_sessions(pgdb, role) == 1
            if how == 'revert':
                reverted, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, name='clients',
                                                                              state='absent'))
                assert not failed and reverted['revert']['result'] == 'reverted', reverted
            assert wait_for(lambda: ledger_ids(private_state_dir) == [], 20), 'the %s never came' % how
            assert can_login(pgdb, role) == [False]
            assert wait_for(lambda: role_sessions(pgdb, role) == 0, 5), 'a session as %s outlived the %s' % (role, how)
            with pytest.raises(psycopg2.Error):
                kept.cursor().execute('SELECT 1')
        finally:
            kept.close()


def test_the_same_fault_asked_for_another_role_is_not_already_in_place(pgdb, private_state_dir, role):
    """A live fault covers the role its record names: asked again under the same name for another role (a marked LOGIN
    role left by the release that never took logins away), it is not 'already in place' (changed=false, no undo step
    for that role, left LOGIN after the revert) but injected again for the role asked."""
    other = role + '_b'
    try:
        first, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, role, hold=False, name='clients'))
        assert not failed, first['msg']
        with connection_of(pgdb) as cur:
            cur.execute('CREATE ROLE %s LOGIN' % other)
            cur.execute("COMMENT ON ROLE %s IS '%s'" % (other, _holder.ROLE_MARK))
        again, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, other, hold=False, name='clients'))
        assert not failed, again['msg']
        assert again['changed'] is True, 'the record covers role %s, not %s' % (role, other)
        assert _ledger.Ledger(private_state_dir).read('sessions--clients')['detail']['role'] == other
        assert can_login(pgdb, role) == [False], 'the earlier record was reverted first'
        reverted, failed = run_module(pggit_chaos_sessions.main, args(pgdb, private_state_dir, other, name='clients', state='absent'))
        assert not failed and reverted['revert']['result'] == 'reverted'
        assert can_login(pgdb, other) == [False], 'role %s kept its login after the revert' % other
    finally:
        with connection_of(pgdb) as cur:
            cur.execute('DROP ROLE IF EXISTS %s' % other)


class connection_of(object):
    """An autocommit superuser cursor on the test server."""

    def __init__(self, pgdb):
        self.conn = psycopg2.connect(host=pgdb['login_host'], port=pgdb['login_port'], user=pgdb['login_user'],
                                     dbname=pgdb['db'])
        self.conn.autocommit = True

    def __enter__(self):
        return self.conn.cursor()

    def __exit__(self, *exc):
        self.conn.close()


class ModuleKilled(BaseException):
    """The module dies (the controller's SSH session is gone) before it sends the next statement."""


class DyingCursor(object):
    """A real cursor whose module dies right before it sends the statement that marks the role as ours."""

    def __init__(self, cur):
        self.cur = cur
        self.connection = cur.connection

    def execute(self, statement, args=None):
        text = statement if isinstance(statement, str) else statement.as_string(self.cur.connection)
        if 'COMMENT ON ROLE' in text:
            raise ModuleKilled()
        return self.cur.execute(statement, args)

    def fetchone(self):
        return self.cur.fetchone()


def test_a_module_killed_while_making_the_role_never_leaves_an_unmarked_role(pgdb, role):
    """An unmarked role of our name would be refused by every later run ('not ours'), forever."""
    conn = psycopg2.connect(host=pgdb['login_host'], port=pgdb['login_port'], user=pgdb['login_user'], dbname=pgdb['db'])
    conn.autocommit = True
    try:
        with pytest.raises(ModuleKilled):
            _holder.ensure_role(DyingCursor(conn.cursor()), role, 'pw')
        rows = query(pgdb, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (role,))
        assert rows in ([], [(_holder.ROLE_MARK,)]), 'an unmarked role %s was left: %r' % (role, rows)
        # The real thing: the role, its mark and a password the server stores hashed, never sent in clear.
        assert _holder.ensure_role(conn.cursor(), role, 'pw-of-the-role') == 'created'
        stored = query(pgdb, 'SELECT rolpassword FROM pg_authid WHERE rolname = %s', (role,))[0][0]
        assert stored.startswith(('SCRAM-SHA-256$', 'md5')), stored
        assert query(pgdb, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                     (role,)) == [(_holder.ROLE_MARK,)]
        check_conn = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user=role, password='pw-of-the-role',
                                      dbname=pgdb['db'], connect_timeout=5)
        check_conn.close()
    finally:
        conn.close()
        query(pgdb, 'DROP ROLE IF EXISTS %s' % role)
