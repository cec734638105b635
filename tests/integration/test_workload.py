"""The workload and its checker against real faults, as a ledger-recorded program that the revert stops.

- exactly-once through killed connections, and the checker catches untracked DDL;
- it only works in (and only drops) a schema it created and marked as its own;
- two runs sharing a schema: the one that took it over last owns it, the other's clean-up leaves it alone;
- every committed table is returned (the drift check needs all of them);
- pggit_chaos_revert experiment=<id> stops a running workload at once.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from background import kill_programs, ledger_ids, module_result, programs, start_module
from modrun import run_module
from pgtools import query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_revert, pggit_workload

WORKLOAD = 'pggit-chaos-workload'


def _repeat(action, stop, every):
    while not stop.wait(every):
        action()


@pytest.fixture
def private_state_dir(state_dir):
    """The shared state_dir fixture, and no program started from it outlives the test."""
    yield state_dir
    kill_programs(state_dir)


def workload_args(pgdb, state_dir, **extra):
    args = dict(pgdb, run_id='it', duration=4.0, interval=0.01, state_dir=state_dir)
    args.update(extra)
    return args


def run_with(pgdb, state_dir, action, every, **extra):
    stop = threading.Event()
    thread = threading.Thread(target=_repeat, args=(action, stop, every))
    thread.start()
    try:
        return run_module(pggit_workload.main, workload_args(pgdb, state_dir, **extra))
    finally:
        stop.set()
        thread.join()


def kill_workload(pgdb):
    query(pgdb, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pggit-chaos-workload'")


def schema_comment(pgdb, schema):
    rows = query(pgdb, "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,))
    return rows[0][0] if rows else None


def tables_in(pgdb, schema):
    return query(pgdb, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relkind = 'r'", (schema,))[0][0]


def test_exactly_once_through_killed_connections(pgdb, private_state_dir):
    result, failed = run_with(pgdb, private_state_dir, lambda: kill_workload(pgdb), every=0.3)
    assert not failed, result.get('msg')
    check = result['check']
    assert result['reconnects'] >= 3, 'the fault must really have hit the workload'
    assert check['ok'] > 10
    assert check['valid'], check
    assert result['cleanup'] == 'dropped schema pggit_chaos_workload'
    assert query(pgdb, "SELECT to_regnamespace('pggit_chaos_workload')")[0][0] is None, 'cleanup drops the schema'
    # It ran as a recorded program, and left nothing: no record, no program, no results file.
    assert result['fault_id'] == 'workload--it' and result['closed']['result'] == 'reverted'
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []


def test_checker_catches_untracked_ddl(pgdb, private_state_dir):
    """If tracking silently stops, the checker must report lost DDL."""
    def tracking_off():
        query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
        query(pgdb, 'ALTER EVENT TRIGGER pggit_enhanced_ddl_trigger DISABLE')
    result, failed = run_with(pgdb, private_state_dir, tracking_off, every=1.0, duration=2.5)
    assert not failed
    check = result['check']
    assert check['lost'] and not check['valid']
    assert check['tracked'] + len(check['lost']) == check['ok']


def test_every_committed_table_is_returned(pgdb, private_state_dir):
    result, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, duration=30, interval=0, max_ops=120,
                                                                   cleanup=False, schema='pggit_chaos_drift'))
    assert not failed, result['msg']
    assert result['check']['ok'] == 120
    assert result['table_count'] == len(result['tables']) == 120, 'more than 50: all of them'
    assert result['tables'][0] == 'pggit_chaos_drift.t_it_000001' and result['tables'][-1] == 'pggit_chaos_drift.t_it_000120'
    assert tables_in(pgdb, 'pggit_chaos_drift') == 120
    assert schema_comment(pgdb, 'pggit_chaos_drift') == 'pggit.chaos workload run it'
    # state=absent drops the schema it marked as its own.
    dropped, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, schema='pggit_chaos_drift', state='absent'))
    assert not failed and dropped['changed'] and dropped['cleanup'] == 'dropped schema pggit_chaos_drift'
    assert schema_comment(pgdb, 'pggit_chaos_drift') is None and tables_in(pgdb, 'pggit_chaos_drift') == 0


@pytest.mark.parametrize('comment', [None, 'the billing team'])
def test_a_schema_that_is_not_its_own_is_refused_and_never_dropped(pgdb, private_state_dir, comment):
    query(pgdb, 'CREATE SCHEMA mine')
    query(pgdb, 'CREATE TABLE mine.precious (id int)')
    if comment:
        query(pgdb, "COMMENT ON SCHEMA mine IS %s", (comment,))
    result, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, schema='mine'))
    assert failed
    assert "schema 'mine' exists and is not the workload's own" in result['msg'], result['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []
    gone, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, schema='mine', state='absent'))
    assert not failed and gone['changed'] is False, gone
    assert gone['cleanup'] == ("schema mine kept: its comment is %r, not the mark of run it ('pggit.chaos workload run it'); "
                               "only that run's schema is dropped" % (comment,)), gone['cleanup']
    assert tables_in(pgdb, 'mine') == 1, 'nothing of a schema that is not ours is ever dropped'


@pytest.mark.parametrize('schema', ['public', 'PUBLIC', 'pggit', 'PgGit', 'pg_catalog', 'PG_TOAST', 'information_schema', ' '])
@pytest.mark.parametrize('state', ['present', 'absent'])
def test_public_pggit_and_system_schemas_are_refused_by_name(pgdb, private_state_dir, schema, state):
    before = tables_in(pgdb, 'pggit')
    result, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, schema=schema, state=state))
    assert failed and result['msg'].startswith('schema') and ("'%s'" % schema) in result['msg'], result['msg']
    assert result.get('changed') is not True
    assert tables_in(pgdb, 'pggit') == before and ledger_ids(private_state_dir) == []


def test_bad_run_id(pgdb, private_state_dir):
    result, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='Bad-Id'))
    assert failed and result['msg'] == "run_id must be 1 to 24 characters of [a-z0-9_], got 'Bad-Id'"


def test_reused_run_id_is_refused(pgdb, private_state_dir):
    first, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='again', duration=1, max_ops=2))
    assert not failed and first['check']['valid']
    second, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='again', duration=1, max_ops=2))
    assert failed and "run_id 'again' was already used in this database" in second['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []


def test_the_experiment_revert_stops_a_running_workload(pgdb, private_state_dir):
    proc = start_module('pggit_workload', workload_args(pgdb, private_state_dir, run_id='longrun', duration=60, interval=0.05,
                                                        experiment='exp9'))
    try:
        assert wait_for(lambda: tables_in(pgdb, 'pggit_chaos_workload') >= 5, 20), 'the workload must be running'
        running = programs(private_state_dir, WORKLOAD)
        assert len(running) == 1 and ledger_ids(private_state_dir) == ['workload--longrun']
        started = time.time()
        reverted, failed = run_module(pggit_chaos_revert.main, dict(state_dir=private_state_dir, experiment='exp9'))
        assert not failed and [r['id'] for r in reverted['reverted']] == ['workload--longrun']
        assert time.time() - started < 6, 'SIGTERM stops it within the revert grace'
        assert programs(private_state_dir, WORKLOAD) == [], 'the revert returns only once the workload is stopped'
        result = module_result(proc, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result['failed'] and 'the workload was stopped before it finished' in result['msg'], result['msg']
    assert 'dropped schema pggit_chaos_workload' in result['msg']
    assert query(pgdb, "SELECT to_regnamespace('pggit_chaos_workload')")[0][0] is None
    ddl = query(pgdb, "SELECT count(*) FROM pggit.objects WHERE starts_with(object_name, 't_longrun_')")[0][0]
    time.sleep(1.0)
    assert query(pgdb, "SELECT count(*) FROM pggit.objects WHERE starts_with(object_name, 't_longrun_')")[0][0] == ddl
    assert ledger_ids(private_state_dir) == []


def test_ttl_shorter_than_duration_is_refused(pgdb, private_state_dir):
    result, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, duration=30, ttl=20))
    assert failed and 'ttl must be longer than duration' in result['msg'] and 'ttl=20' in result['msg']


def test_a_workload_killed_before_it_cleans_up_has_its_marked_schema_dropped_by_the_revert(pgdb, private_state_dir):
    """SIGKILL (no chance to clean up), then the red button: the schema it marked goes with the revert."""
    proc = start_module('pggit_workload', workload_args(pgdb, private_state_dir, run_id='killed', duration=60, interval=0.05,
                                                        schema='pggit_chaos_killed'))
    try:
        assert wait_for(lambda: tables_in(pgdb, 'pggit_chaos_killed') > 3, 20), 'the workload must be running'
        proc.kill()  # the module that waits for it dies too (a dead controller): it cannot close the record
        proc.wait()
        for pid in programs(private_state_dir, WORKLOAD):
            os.kill(pid, signal.SIGKILL)  # no SIGTERM: it cannot clean up after itself
        assert wait_for(lambda: programs(private_state_dir, WORKLOAD) == [], 5)
        assert schema_comment(pgdb, 'pggit_chaos_killed').startswith('pggit.chaos workload run')
        reverted, failed = run_module(pggit_chaos_revert.main, dict(state_dir=private_state_dir))
        assert not failed, reverted
        assert [r['id'] for r in reverted['reverted']] == ['workload--killed']
        assert schema_comment(pgdb, 'pggit_chaos_killed') is None and tables_in(pgdb, 'pggit_chaos_killed') == 0
        assert ledger_ids(private_state_dir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def own_tables(pgdb, schema, run_id):
    return query(pgdb, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relkind = 'r' AND starts_with(c.relname, %s)",
                 (schema, 't_%s_' % run_id))[0][0]


def test_two_runs_on_one_schema_the_first_ones_cleanup_leaves_the_second_alone(pgdb, private_state_dir):
    """A manual run and an experiment's run on the default schema: the first to end must not drop the other's tables."""
    schema = 'pggit_chaos_workload'
    first = start_module('pggit_workload', workload_args(pgdb, private_state_dir, run_id='first', duration=4, interval=0.05))
    second = None
    try:
        assert wait_for(lambda: own_tables(pgdb, schema, 'first') >= 3, 20), 'the first run must be running'
        assert schema_comment(pgdb, schema) == 'pggit.chaos workload run first'
        second = start_module('pggit_workload', workload_args(pgdb, private_state_dir, run_id='second', duration=14,
                                                              interval=0.05))
        assert wait_for(lambda: own_tables(pgdb, schema, 'second') >= 3, 20), 'the second run must be running'
        assert schema_comment(pgdb, schema) == 'pggit.chaos workload run second', 'the second run took the schema over'
        one = module_result(first, timeout=30)
        assert not one['failed'] and one['check']['valid'], one
        assert one['cleanup'].startswith("schema %s kept: its comment is 'pggit.chaos workload run second'" % schema), one
        # The second run's schema and tables are still there, and it goes on writing into them.
        during = own_tables(pgdb, schema, 'second')
        assert during >= 3 and schema_comment(pgdb, schema) == 'pggit.chaos workload run second'
        assert wait_for(lambda: own_tables(pgdb, schema, 'second') > during, 5), 'the second run must still be working'
        two = module_result(second, timeout=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not two['failed'] and two['check']['valid'], two
    assert two['check']['ok'] == two['table_count'] > during, 'none of its tables was dropped under it'
    assert two['cleanup'] == 'dropped schema %s' % schema, 'the run that owns the schema drops it, with both runs\' tables'
    assert schema_comment(pgdb, schema) is None and tables_in(pgdb, schema) == 0
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []


def test_state_absent_drops_only_the_schema_of_its_own_run(pgdb, private_state_dir):
    schema = 'pggit_chaos_drift'
    for run_id in ('older', 'newer'):
        done, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id=run_id, max_ops=3,
                                                                     interval=0, cleanup=False, schema=schema))
        assert not failed and done['table_count'] == 3, done
    assert schema_comment(pgdb, schema) == 'pggit.chaos workload run newer' and tables_in(pgdb, schema) == 6
    kept, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='older', schema=schema,
                                                                 state='absent'))
    assert not failed and kept['changed'] is False, kept
    assert "schema %s kept: its comment is 'pggit.chaos workload run newer', not the mark of run older" % schema in kept['msg']
    assert tables_in(pgdb, schema) == 6, 'a schema another run has taken over is not the older run\'s to drop'
    dropped, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='newer', schema=schema,
                                                                    state='absent'))
    assert not failed and dropped['changed'] and dropped['cleanup'] == 'dropped schema %s' % schema, dropped
    assert schema_comment(pgdb, schema) is None and tables_in(pgdb, schema) == 0
    assert ledger_ids(private_state_dir) == []


def test_state_absent_of_a_running_workload_goes_through_the_revert(pgdb, private_state_dir):
    """The record's revert stops the program, which drops the schema still marked with its run; absent says so."""
    proc = start_module('pggit_workload', workload_args(pgdb, private_state_dir, run_id='absent', duration=60, interval=0.05,
                                                        schema='pggit_chaos_absent'))
    try:
        assert wait_for(lambda: tables_in(pgdb, 'pggit_chaos_absent') >= 3, 20), 'the workload must be running'
        gone, failed = run_module(pggit_workload.main, workload_args(pgdb, private_state_dir, run_id='absent',
                                                                     schema='pggit_chaos_absent', state='absent'))
        result = module_result(proc, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not failed and gone['changed'] and gone['revert']['result'] == 'reverted', gone
    assert gone['msg'].startswith('reverted workload--absent; '), gone['msg']
    assert result['failed'] and 'dropped schema pggit_chaos_absent' in result['msg'], result['msg']
    assert schema_comment(pgdb, 'pggit_chaos_absent') is None and tables_in(pgdb, 'pggit_chaos_absent') == 0
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []
