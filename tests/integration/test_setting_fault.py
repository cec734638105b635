"""pggit_chaos_setting against a real PostgreSQL of its own: a setting really changes (SHOW in a new session),
commits really wait on a synchronous standby that does not exist, and the revert (or the TTL reaper alone) puts
back exactly what ALTER SYSTEM held before: an earlier ALTER SYSTEM value, not just a RESET.

The server is private to this file (module scope): synchronous_standby_names would stall every other test.
"""
from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from background import ledger_ids, record
from modrun import run_module
from pgtools import Postgres, query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_setting

SYNC = 'FIRST 1 (pggit_absent_replica)'


@pytest.fixture(scope='module')
def server():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def pg(server, tmp_path):
    params = server.params('postgres')
    query(params, "ALTER SYSTEM SET work_mem = '8MB'")
    query(params, 'ALTER SYSTEM RESET synchronous_standby_names')
    query(params, 'SELECT pg_reload_conf()')
    assert wait_for(lambda: show(params, 'work_mem') == '8MB', 5)
    yield params
    query(params, 'ALTER SYSTEM RESET ALL')
    query(params, 'SELECT pg_reload_conf()')


def show(params, name):
    return query(params, 'SELECT current_setting(%s)', (name,))[0][0]


def auto_conf(params):
    return dict(query(params, "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%/postgresql.auto.conf'"))


def commit_waits(params, cancel_after=0.5):
    """A commit, cancelled by pg_cancel_backend after cancel_after s when still running: (seconds it took, notices).

    A commit waiting for a synchronous standby ignores statement_timeout; a cancel ends the wait with the
    "already committed locally" warning."""
    conn = psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname='postgres')
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute('SELECT pg_backend_pid()')
        pid = cur.fetchone()[0]
        timer = threading.Timer(cancel_after, lambda: query(params, 'SELECT pg_cancel_backend(%s)', (pid,)))
        timer.start()
        started = time.time()
        try:
            cur.execute('CREATE TEMP TABLE t_sync (i int)')
        finally:
            took = time.time() - started
            timer.cancel()
        return took, ' '.join(conn.notices)
    finally:
        conn.close()


def test_settings_really_change_and_the_revert_restores_the_previous_alter_system_values(pg, tmp_path):
    state_dir = str(tmp_path / 'state')
    assert commit_waits(pg)[0] < 0.4
    args = dict(pg, name='sync', ttl=60, state_dir=state_dir, settings={'synchronous_standby_names': SYNC, 'work_mem': '16MB'})
    result, failed = run_module(pggit_chaos_setting.main, args)
    assert not failed, result.get('msg')
    assert result['changed']
    assert result['settings'] == {'synchronous_standby_names': {'before': '', 'after': SYNC, 'previous': None},
                                  'work_mem': {'before': '8MB', 'after': '16MB', 'previous': '8MB'}}
    assert show(pg, 'synchronous_standby_names') == SYNC and show(pg, 'work_mem') == '16MB'
    took, notices = commit_waits(pg)
    assert took >= 0.45 and 'already committed locally' in notices, (took, notices)

    again, failed = run_module(pggit_chaos_setting.main, args)
    assert not failed and not again['changed']
    # A setting may hold a secret (a primary_conninfo with its password): its own in_place() compares the settings,
    # and the generic options copy (returned in replaced) never holds them.
    assert 'options' not in record(state_dir, result['fault_id'])

    reverted, failed = run_module(pggit_chaos_setting.main, dict(args, state='absent'))
    assert not failed and reverted['changed'], reverted.get('msg')
    assert wait_for(lambda: show(pg, 'work_mem') == '8MB' and show(pg, 'synchronous_standby_names') == '', 5)
    assert auto_conf(pg) == {'work_mem': '8MB'}  # the earlier ALTER SYSTEM value is back, the new one RESET
    assert commit_waits(pg)[0] < 0.4
    assert ledger_ids(state_dir) == []


def test_the_ttl_reaper_alone_restores_the_settings(pg, tmp_path):
    state_dir = str(tmp_path / 'state')
    result, failed = run_module(pggit_chaos_setting.main, dict(pg, name='mem', ttl=5, state_dir=state_dir,
                                                               settings={'work_mem': '32MB'}))
    assert not failed, result.get('msg')
    assert show(pg, 'work_mem') == '32MB'
    assert wait_for(lambda: ledger_ids(state_dir) == [], 25), 'the reaper did not revert the setting fault'
    assert wait_for(lambda: show(pg, 'work_mem') == '8MB', 5)
    assert auto_conf(pg) == {'work_mem': '8MB'}


def test_unknown_and_restart_only_settings_are_refused_and_nothing_changes(pg, tmp_path):
    state_dir = str(tmp_path / 'state')
    for settings, said in (({'pggit_no_such_setting': '1'}, 'not a setting this server knows'),
                           ({'wal_decode_buffer_size': '1MB'}, "'postmaster'")):
        result, failed = run_module(pggit_chaos_setting.main, dict(pg, name='bad', state_dir=state_dir, settings=settings))
        assert failed and said in result['msg'], result['msg']
    assert auto_conf(pg) == {'work_mem': '8MB'}
    assert not (tmp_path / 'state').exists()


def test_the_revert_leaves_a_value_a_dba_set_during_the_fault(pg, tmp_path):
    state_dir = str(tmp_path / 'state')
    args = dict(pg, name='mem', ttl=60, state_dir=state_dir, settings={'work_mem': '16MB', 'maintenance_work_mem': '100MB'})
    result, failed = run_module(pggit_chaos_setting.main, args)
    assert not failed, result.get('msg')
    query(pg, "ALTER SYSTEM SET work_mem = '64MB'")  # a DBA, during the window
    reverted, failed = run_module(pggit_chaos_setting.main, dict(args, state='absent'))
    assert not failed and reverted['changed'], reverted.get('msg')
    # The DBA's value stays; the setting the fault still owned is put back (RESET: it held nothing before).
    assert auto_conf(pg) == {'work_mem': '64MB'}
    assert ledger_ids(state_dir) == []


def test_a_value_that_never_takes_fails_the_inject_and_changes_nothing(pg, tmp_path):
    """A value set for the login role overrides ALTER SYSTEM in every new session: after == before is a failure."""
    state_dir = str(tmp_path / 'state')
    query(pg, "ALTER ROLE postgres SET work_mem = '1MB'")
    try:
        result, failed = run_module(pggit_chaos_setting.main, dict(pg, name='mem', ttl=60, state_dir=state_dir,
                                                                   settings={'work_mem': '32MB'}))
        assert failed and 'work_mem' in result['msg'] and "'32MB'" in result['msg'] and "'user'" in result['msg'], result['msg']
        assert auto_conf(pg) == {'work_mem': '8MB'}  # rolled back
        assert ledger_ids(state_dir) == []
    finally:
        query(pg, 'ALTER ROLE postgres RESET work_mem')
