"""pggit_chaos_lock really holds its locks on a real PostgreSQL, and every way out (revert, TTL, a dead holder) frees them.

A tracked DDL (CREATE TABLE: pgGit's event trigger writes pggit.history in the
same transaction) must time out on its lock_timeout while the lock is held,
leaving no table and no history row, and work once the fault is gone.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

import psycopg2
import pytest

from background import kill_programs, ledger_ids, programs, record
from modrun import run_module
from pgtools import query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_lock

LOCKER = 'pggit-chaos-locker'
FID = 'lock--held'
APP = 'pggit-chaos-locker-' + FID


@pytest.fixture
def private_state_dir(state_dir):
    yield state_dir
    kill_programs(state_dir)


def args(pgdb, state_dir, **extra):
    base = dict(pgdb, name='held', state_dir=state_dir, ttl=60)
    base.update(extra)
    return base


def tracked_ddl(pgdb, table, timeout_ms=300):
    """CREATE TABLE with the client's own lock_timeout: None when it worked, else the error."""
    conn = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'], application_name='ddl-client')
    try:
        cur = conn.cursor()
        cur.execute('SET lock_timeout = %s', (timeout_ms,))
        cur.execute('CREATE TABLE public.%s (id int)' % table)
        conn.commit()
        return None
    except psycopg2.Error as exc:
        conn.rollback()
        return exc
    finally:
        conn.close()


def history_of(pgdb, table):
    return query(pgdb, "SELECT count(*) FROM pggit.history h JOIN pggit.objects o ON o.id = h.object_id "
                       "WHERE o.schema_name = 'public' AND o.object_name = %s", (table,))[0][0]


def holder_sessions(pgdb):
    return [r[0] for r in query(pgdb, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pggit-chaos-locker-%'")]


def held_locks(pgdb, pid):
    return sorted(query(pgdb, "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                              "WHERE l.pid = %s AND l.granted AND c.relname IN ('history', 'objects')", (pid,)))


def assert_freed(pgdb, state_dir, table):
    assert holder_sessions(pgdb) == []
    assert tracked_ddl(pgdb, table) is None, 'tracked DDL must work once the lock is gone'
    assert history_of(pgdb, table) == 1
    assert wait_for(lambda: programs(state_dir, LOCKER) == [], 5)


def test_held_lock_blocks_tracked_ddl_until_the_revert(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, advisory_keys=[4242, -7]))
    assert not failed, result['msg']
    holder = result['holder']
    assert result['changed'] and holder['application_name'] == APP
    assert holder_sessions(pgdb) == [holder['backend_pid']]
    assert programs(private_state_dir, LOCKER) == [holder['pid']]
    assert sorted((lock['relation'], lock['mode'], lock['granted']) for lock in result['locks']) == [
        ('pggit.history', 'AccessExclusiveLock', True), ('pggit.objects', 'AccessExclusiveLock', True)]
    assert held_locks(pgdb, holder['backend_pid']) == [('history', 'AccessExclusiveLock'), ('objects', 'AccessExclusiveLock')]
    assert sorted(result['advisory_keys']) == [-7, 4242]
    steps = record(private_state_dir, FID)['undo']
    assert {'type': 'pg_terminate_backend', 'pid': holder['backend_pid'], 'application_name': APP} == dict(
        (k, v) for k, v in steps[-1].items() if k != 'conn')

    started = time.time()
    error = tracked_ddl(pgdb, 'blocked_one', timeout_ms=500)
    waited = time.time() - started
    assert isinstance(error, psycopg2.errors.LockNotAvailable), error
    assert 0.45 <= waited < 5, waited
    assert query(pgdb, "SELECT to_regclass('public.blocked_one')")[0][0] is None, 'never half-tracked: no table'
    again, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, advisory_keys=[4242, -7]))
    assert not failed and again['changed'] is False and again['holder']['backend_pid'] == holder['backend_pid']

    reverted, failed = run_module(pggit_chaos_lock.main, dict(args(pgdb, private_state_dir), state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted'
    assert ledger_ids(private_state_dir) == []
    assert_freed(pgdb, private_state_dir, 'after_revert')
    assert history_of(pgdb, 'blocked_one') == 0


def bring_expiry_forward(state_dir, seconds):
    ledger = _ledger.Ledger(state_dir)
    with ledger.lock():
        rec = ledger.read(FID)
        rec['expires_at'] = time.time() + seconds
        ledger.write(rec)


def test_the_ttl_reaper_alone_frees_the_lock(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, tables=['history']))
    assert not failed, result['msg']
    assert isinstance(tracked_ddl(pgdb, 'during_ttl'), psycopg2.errors.LockNotAvailable)
    # The holder stops by itself only at the ttl it was started with (60 s): within the next seconds only the reaper can free it.
    bring_expiry_forward(private_state_dir, 1.0)
    assert wait_for(lambda: holder_sessions(pgdb) == [], 10), 'the reaper must free the lock at the TTL'
    assert wait_for(lambda: ledger_ids(private_state_dir) == [], 5)
    with open(os.path.join(private_state_dir, 'reaper.log')) as handle:
        assert FID + ': reverted' in handle.read()
    assert_freed(pgdb, private_state_dir, 'after_ttl')


def test_a_frozen_holder_loses_its_backend_to_the_terminate_step(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir))
    assert not failed, result['msg']
    holder = result['holder']
    os.kill(holder['pid'], signal.SIGSTOP)  # a holder that can neither release nor exit
    try:
        time.sleep(0.3)
        assert isinstance(tracked_ddl(pgdb, 'frozen'), psycopg2.errors.LockNotAvailable)
        step = record(private_state_dir, FID)['undo'][-1]
        assert step['type'] == 'pg_terminate_backend'
        assert _steps.run_steps([step], {'state_dir': private_state_dir}) is True
        assert holder_sessions(pgdb) == [], 'the step alone ended the backend'
        assert _steps.same_process(holder['pid'], holder['starttime'], LOCKER), 'while the holder process still exists'
        assert tracked_ddl(pgdb, 'frozen') is None
        assert _steps.run_steps([step], {'state_dir': private_state_dir}) is False, 'gone is gone: nothing to do'
    finally:
        os.kill(holder['pid'], signal.SIGCONT)
    reverted, failed = run_module(pggit_chaos_lock.main, dict(args(pgdb, private_state_dir), state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted'
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir, LOCKER) == []


SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (generic syscall table)


def take_sockets(pid):
    """Duplicates, into this process, of every socket the process pid holds (pidfd_getfd): its connection outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    taken = []
    try:
        for fd in os.listdir('/proc/%d/fd' % pid):
            if os.readlink('/proc/%d/fd/%s' % (pid, fd)).startswith('socket:'):
                dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                assert dup >= 0, 'pidfd_getfd: %s' % os.strerror(ctypes.get_errno())
                taken.append(dup)
    finally:
        os.close(pidfd)
    return taken


def test_a_sigkilled_holder_whose_backend_lives_on_loses_it_to_the_terminate_step(pgdb, private_state_dir):
    """A holder that is gone while its session is not (its connection kept open elsewhere): only the revert's
    pg_terminate_backend step can free the lock, and it does.

    A plain SIGKILL would not prove that: the holder's socket closes and its
    backend ends by itself. So the holder is stopped, its socket duplicated into
    this test (it stays open until the end), and only then killed."""
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir))
    assert not failed, result['msg']
    holder = result['holder']
    os.kill(holder['pid'], signal.SIGSTOP)  # it can neither release nor exit while its socket is taken
    taken = take_sockets(holder['pid'])
    try:
        assert taken, 'the holder has a connection to the server'
        os.kill(holder['pid'], signal.SIGKILL)
        assert wait_for(lambda: not _steps.same_process(holder['pid'], holder['starttime'], LOCKER), 5)
        time.sleep(0.5)  # time enough for a backend whose client went away to notice and end
        assert holder_sessions(pgdb) == [holder['backend_pid']], 'the holder is dead, its backend is not'
        assert held_locks(pgdb, holder['backend_pid']) == [('history', 'AccessExclusiveLock'), ('objects', 'AccessExclusiveLock')]
        assert isinstance(tracked_ddl(pgdb, 'after_sigkill'), psycopg2.errors.LockNotAvailable), 'still locked: nothing freed it yet'

        reverted, failed = run_module(pggit_chaos_lock.main, dict(args(pgdb, private_state_dir), state='absent'))
        assert not failed and reverted['revert']['result'] == 'reverted', reverted
        assert holder_sessions(pgdb) == [], 'the terminate step ended the backend (its socket is still open here)'
        assert ledger_ids(private_state_dir) == []
    finally:
        for fd in taken:
            os.close(fd)
    assert_freed(pgdb, private_state_dir, 'after_sigkill')


def test_the_terminate_step_leaves_a_session_that_is_not_the_holders_alone(pgdb, private_state_dir):
    bystander = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'],
                                 application_name='bystander')
    try:
        step = {'type': 'pg_terminate_backend', 'pid': bystander.get_backend_pid(), 'application_name': APP,
                'conn': dict((k, pgdb[k]) for k in ('login_host', 'login_port', 'login_user', 'db'))}
        assert _steps.run_steps([step], {'state_dir': private_state_dir}) is False
        bystander.cursor().execute('SELECT 1')
    finally:
        bystander.close()


def test_a_conflicting_lock_fails_the_fault_and_leaves_nothing(pgdb, private_state_dir):
    other = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'])
    try:
        other.cursor().execute('LOCK TABLE pggit.objects IN SHARE MODE')
        result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, acquire_timeout_ms=300))
        assert failed and 'canceling statement due to lock timeout' in result['msg'], result['msg']
        assert 'LOCK TABLE pggit.history, pggit.objects IN ACCESS EXCLUSIVE MODE' in result['msg']
        assert 'conflicting lock for longer than acquire_timeout_ms=300' in result['msg']
        assert result['rollback']['result'] == 'reverted'
    finally:
        other.close()
    assert ledger_ids(private_state_dir) == [] and holder_sessions(pgdb) == []
    assert wait_for(lambda: programs(private_state_dir, LOCKER) == [], 5)


@pytest.mark.parametrize('tables, named', [(['pggit.nope'], 'pggit.nope is not a table'),
                                           (['pggit.history', 'pggit.history_pkey'], 'pggit.history_pkey is not a table')])
def test_an_unknown_table_fails_naming_it_before_anything_is_recorded(pgdb, private_state_dir, tables, named):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, tables=tables))
    assert failed and named in result['msg'] and 'tables=' in result['msg'], result['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == [] and holder_sessions(pgdb) == []


def test_check_mode_locks_nothing(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, mode='row exclusive'), check_mode=True)
    assert not failed and result['changed'] and 'holder' not in result
    assert result['msg'] == 'would lock pggit.history, pggit.objects IN ROW EXCLUSIVE MODE; locked nothing'
    assert ledger_ids(private_state_dir) == [] and holder_sessions(pgdb) == []


# --- the deadlock phase -------------------------------------------------------------------------
# SHARE on pggit.history blocks a tracked DDL after it took ROW EXCLUSIVE on pggit.objects (its trigger upserts the
# object first, then inserts the history row); the holder then asks SHARE on pggit.objects: a real cycle.
DEADLOCK = dict(name='held', tables=['pggit.history'], mode='SHARE', then_tables=['pggit.objects'], then_mode='SHARE')


def ddl_session(pgdb, table, timeout_ms=10000):
    """A tracked CREATE TABLE that may wait long: (backend pid, None or the error, seconds it took)."""
    conn = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'], application_name='ddl-client')
    try:
        cur = conn.cursor()
        cur.execute('SET lock_timeout = %s', (timeout_ms,))
        started = time.monotonic()
        try:
            cur.execute('CREATE TABLE public.%s (id int)' % table)
            conn.commit()
            error = None
        except psycopg2.Error as exc:
            conn.rollback()
            error = exc
        return conn.get_backend_pid(), error, time.monotonic() - started
    finally:
        conn.close()


def holder_events(state_dir):
    with open(os.path.join(state_dir, 'faults', FID + '.results')) as handle:
        return handle.read()


def then_lock(pgdb, state_dir, after_ms):
    """Run the task again until the holder reports how its second lock ended."""
    def decided():
        result, failed = run_module(pggit_chaos_lock.main, args(pgdb, state_dir, then_after_ms=after_ms, **DEADLOCK))
        assert not failed and result["changed"] is False, result
        return result['then_lock'] if result['then_lock']['result'] not in ('pending', 'waiting') else None
    outcome = []
    assert wait_for(lambda: outcome.append(decided()) or outcome[-1] is not None, 10)
    return outcome[-1]


def test_deadlock_phase_the_detector_cancels_the_waiting_ddl_and_it_leaves_no_history_row(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, then_after_ms=200, **DEADLOCK))
    assert not failed, result['msg']
    assert [(lock['relation'], lock['mode']) for lock in result['locks']] == [('pggit.history', 'ShareLock')]
    assert result['then_lock'] == {'result': 'pending'}, 'no session waits on the holder yet'

    pid, error, took = ddl_session(pgdb, 'dl_loser')
    assert isinstance(error, psycopg2.errors.DeadlockDetected), (error, holder_events(private_state_dir))  # SQLSTATE 40P01 on the DDL's side
    assert error.pgcode == '40P01' and 0.9 <= took < 3, took  # deadlock_timeout 1 s, then the detector
    outcome = then_lock(pgdb, private_state_dir, 200)
    assert outcome['result'] == 'granted' and outcome['lost'] == 'waiter' and outcome['sqlstate'] is None, outcome
    assert 150 <= outcome['after_ms'] < 600 and 300 <= outcome['waited_ms'] < 1500, outcome
    [waiter] = outcome['waiters']
    assert waiter['pid'] == pid and waiter['query'].startswith('CREATE TABLE public.dl_loser'), waiter
    assert waiter['xact_status'] == 'aborted' and waiter['history_rows'] == 0 and waiter['objects_rows'] == 0, waiter
    assert sorted((lock['relation'], lock['mode']) for lock in outcome['locks']) == [
        ('pggit.history', 'ShareLock'), ('pggit.objects', 'ShareLock')]
    held = result['holder']['backend_pid']
    assert {('history', 'ShareLock'), ('objects', 'ShareLock')} <= set(held_locks(pgdb, held)), 'the holder won and holds both'
    assert history_of(pgdb, 'dl_loser') == 0 and query(pgdb, "SELECT to_regclass('public.dl_loser')")[0][0] is None

    reverted, failed = run_module(pggit_chaos_lock.main, dict(args(pgdb, private_state_dir), state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted'
    assert ledger_ids(private_state_dir) == []
    assert_freed(pgdb, private_state_dir, 'after_deadlock')
    assert history_of(pgdb, 'dl_loser') == 0


def test_deadlock_phase_asked_after_deadlock_timeout_the_holder_loses_and_the_ddl_is_tracked_once(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_lock.main, args(pgdb, private_state_dir, then_after_ms=1500, **DEADLOCK))
    assert not failed, result['msg']
    pid, error, took = ddl_session(pgdb, 'dl_winner')
    assert error is None, error
    assert 2.2 <= took < 5, took  # waited 1.5 s for the holder to ask, then 1 s of deadlock_timeout on the holder's side
    outcome = then_lock(pgdb, private_state_dir, 1500)
    assert outcome['result'] == 'deadlock' and outcome['lost'] == 'holder' and outcome['sqlstate'] == '40P01', outcome
    assert 'deadlock detected' in outcome['msg'] and 900 <= outcome['waited_ms'] < 2000, outcome
    [waiter] = outcome['waiters']
    assert waiter['pid'] == pid and waiter['waited_ms'] >= 1400, waiter
    assert waiter['xact_status'] == 'committed' and waiter['history_rows'] == 1 and waiter['objects_rows'] == 1, waiter
    assert held_locks(pgdb, result['holder']['backend_pid']) == [], 'cancelled, the holder holds nothing'
    assert history_of(pgdb, 'dl_winner') == 1
    reverted, failed = run_module(pggit_chaos_lock.main, dict(args(pgdb, private_state_dir), state='absent'))
    assert not failed and reverted['revert']['result'] == 'reverted'
    assert_freed(pgdb, private_state_dir, 'after_lost_deadlock')


def test_deadlock_phase_with_an_unknown_then_table_fails_naming_it(pgdb, private_state_dir):
    unknown = args(pgdb, private_state_dir, **DEADLOCK)
    unknown['then_tables'] = ['pggit.nope']
    result, failed = run_module(pggit_chaos_lock.main, unknown)
    assert failed and 'then_tables: pggit.nope is not a table' in result['msg'], result['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == [] and holder_sessions(pgdb) == []
