"""The workload and its checker against real faults: killed backends, tracking off."""
from __future__ import annotations

import threading

from modrun import run_module
from pgtools import query
from ansible_collections.pggit.chaos.plugins.modules import pggit_workload


def _repeat(action, stop, every):
    while not stop.wait(every):
        action()


def run_with(pgdb, action, every, duration=4.0, **extra):
    stop = threading.Event()
    thread = threading.Thread(target=_repeat, args=(action, stop, every))
    thread.start()
    try:
        args = dict(pgdb, run_id='it', duration=duration, interval=0.01)
        args.update(extra)
        return run_module(pggit_workload.main, args)
    finally:
        stop.set()
        thread.join()


def kill_workload(pgdb):
    query(pgdb, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pggit-chaos-workload'")


def test_exactly_once_through_killed_connections(pgdb):
    result, failed = run_with(pgdb, lambda: kill_workload(pgdb), every=0.3)
    assert not failed, result.get('msg')
    check = result['check']
    assert result['reconnects'] >= 3, 'the fault must really have hit the workload'
    assert check['ok'] > 10
    assert check['valid'], check
    assert query(pgdb, "SELECT to_regnamespace('pggit_chaos_workload')")[0][0] is None, 'cleanup drops the schema'


def test_checker_catches_untracked_ddl(pgdb):
    """If tracking silently stops, the checker must report lost DDL."""
    def tracking_off():
        query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
        query(pgdb, 'ALTER EVENT TRIGGER pggit_enhanced_ddl_trigger DISABLE')
    result, failed = run_with(pgdb, tracking_off, every=1.0, duration=2.5)
    assert not failed
    check = result['check']
    assert check['lost'] and not check['valid']
    assert check['tracked'] + len(check['lost']) == check['ok']


def test_bad_run_id(pgdb):
    result, failed = run_module(pggit_workload.main, dict(pgdb, run_id='Bad-Id'))
    assert failed and result['msg'] == "run_id must be 1 to 24 characters of [a-z0-9_], got 'Bad-Id'"


def test_reused_run_id_is_refused(pgdb):
    first, failed = run_module(pggit_workload.main, dict(pgdb, run_id='again', duration=1, max_ops=2))
    assert not failed and first['check']['valid']
    second, failed = run_module(pggit_workload.main, dict(pgdb, run_id='again', duration=1, max_ops=2))
    assert failed and "run_id 'again' was already used in this database" in second['msg']
