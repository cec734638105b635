"""Did the database fault really happen? judge() decides lock_contention, index_corruption, clock_skew and
dependency_failure from the raw facts their roles pass.

Every rule gets a record shaped as a real run's (from the lab) that passes, and
records that must fail: each would pass if the rule did not look.
"""
from __future__ import annotations

import copy

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._verdict_spec import FAULT_CHECKS as SPEC_CHECKS
from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

DIGEST = 'd41d8cd98f00b204e9800998ecf8427e'
T0 = 1000.0
TIMINGS = dict(started_at=T0, inject_start=T0 + 2, inject_end=T0 + 3, window_end=T0 + 13, revert_start=T0 + 15,
               revert_end=T0 + 16, finished_at=T0 + 17)


def probe(healthy=True, history=None):
    return dict(healthy=healthy, checks=[], failed_checks=[], history=history)


def workload(ok=20, failed=0, unknown=0, maybe=0, maybe_committed=None, op_times=None, **extra):
    check = dict(ops=ok + failed + unknown + maybe, ok=ok, failed=failed, unknown=unknown, maybe=maybe,
                 maybe_resolved=dict(committed=maybe if maybe_committed is None else maybe_committed,
                                     not_committed=0 if maybe_committed is None else maybe - maybe_committed),
                 tracked=ok + maybe, lost=[], duplicated=[], unexpected=[], phantom=[], valid=True)
    result = dict(changed=True, check=check, reconnects=0, errors={}, latency_ms=dict(p50=2.0, p95=4.0, max=5.0),
                  op_times=op_times or [])
    result.update(extra)
    return result


def record(experiment, fault, **overrides):
    raw = dict(experiment=experiment, host='pg1', experiment_id='exp-1',
               steady_state=dict(before=probe(), after=probe(history=dict(rows=10, digest=DIGEST))),
               fault=fault, revert_results=[dict(item='pg1', reverted=[dict(id='x--1', result='reverted')], failures=[])],
               workload=workload(), parameters={}, timings=dict(TIMINGS))
    raw.update(overrides)
    return raw


def judged(experiment, fault, **overrides):
    entry = _report.judge(record(experiment, fault, **overrides))
    assert (entry['status'] == 'passed') == (entry['reasons'] == []), entry
    return entry


def test_every_fault_check_is_allowed_by_the_verdict_module_and_picked_by_name():
    assert set(SPEC_CHECKS) == {'auto', 'none'} | set(_report.FAULT_CHECKS)
    for experiment, check in (('lock_contention', 'lock'), ('index_corruption', 'corrupt'), ('clock_skew', 'clock'),
                              ('dependency_failure', 'dependency')):
        assert _report.EXPERIMENT_FAULT_CHECKS[experiment] == check


# --- lock_contention ----------------------------------------------------------------------------

def lock_fault(granted=True, tables=('pggit.history', 'pggit.objects')):
    locks = [dict(relation=t, mode='AccessExclusiveLock', granted=granted) for t in tables]
    return dict(lock=dict(locks=locks, mode='ACCESS EXCLUSIVE', tables=['pggit.history', 'pggit.objects'],
                          holder=dict(pid=1, backend_pid=2)),
                release=dict(changed=True), tables=['pggit.history', 'pggit.objects'], lock_timeout_ms=2000)


# Before the lock: fast; in the window: four timed out at 2 s, one completed at the release; after: fast again.
LOCK_OPS = ([[T0 + 1 + i * 0.1, 3.0, 'ok'] for i in range(5)]
            + [[T0 + 3.1 + 2 * i, 2001.0, 'fail'] for i in range(4)] + [[T0 + 11.2, 1850.0, 'ok']]
            + [[T0 + 14 + i * 0.1, 2.5, 'ok'] for i in range(5)])


def test_lock_contention_passes_and_reports_blocked_time_and_timeouts():
    entry = judged('lock_contention', lock_fault(), workload=workload(ok=11, failed=4, op_times=LOCK_OPS))
    assert entry['status'] == 'passed'
    evidence = entry['evidence']
    assert evidence['ddl_in_window'] == 5 and evidence['timed_out'] == 4 and evidence['completed'] == 1
    assert evidence['blocked_ms'] == dict(p50=2001.0, p95=2001.0, max=2001.0)
    assert [g['relation'] for g in evidence['locks_granted']] == ['pggit.history', 'pggit.objects']


@pytest.mark.parametrize('fault, ops, reason', [
    (lock_fault(granted=False), LOCK_OPS, 'the holder was granted no lock'),
    (lock_fault(tables=('pggit.history',)), LOCK_OPS, 'the fault did not happen on pggit.objects'),
    (lock_fault(), [op for op in LOCK_OPS if not T0 + 3 <= op[0] < T0 + 13], 'started no DDL while the lock was held'),
    (lock_fault(), [[op[0], 3.0, 'ok'] for op in LOCK_OPS], 'no tracked DDL blocked'),
    (lock_fault(), LOCK_OPS + [[T0 + 12.5, 4.0, 'ok']], 'the lock did not hold: 1 of the 6 DDL'),
])
def test_lock_contention_fails_without_a_held_lock_or_a_blocked_ddl(fault, ops, reason):
    entry = judged('lock_contention', fault, workload=workload(op_times=ops))
    assert entry['status'] == 'failed' and any(reason in r for r in entry['reasons']), entry['reasons']


def test_lock_contention_without_a_window_cannot_be_proven():
    timings = dict(TIMINGS)
    del timings['window_end']
    entry = judged('lock_contention', lock_fault(), workload=workload(op_times=LOCK_OPS), timings=timings)
    assert any('no inject_end or window_end' in r for r in entry['reasons'])


# The deadlock phase, as a lab run reports it: the holder asked 200 ms after the DDL waited, the DDL lost.
DL_OPS = LOCK_OPS[:10] + [[T0 + 13.5, 1003.0, 'fail'], [T0 + 13.9, 40.0, 'ok']] + LOCK_OPS[10:]


def dl_waiter(status='aborted', history=0, objects=0):
    return dict(pid=77, xid='900', query='CREATE TABLE pggit_chaos_drift.t_1 (id int)', waited_ms=230.0, xact_status=status,
                history_rows=history, objects_rows=objects)


def dl_fault(result='granted', lost='waiter', sqlstate=None, waiters=None, enabled=True):
    then = dict(result=result, lost=lost, sqlstate=sqlstate, waited_ms=770.0, after_ms=205.0,
                waiters=[dl_waiter()] if waiters is None else waiters)
    fault = lock_fault()
    fault['deadlock'] = dict(enabled=enabled, lock=dict(then_lock=then, holder=dict(pid=3, backend_pid=4)), release=dict(changed=True),
                             started_at=str(T0 + 13.3), ended_at=str(T0 + 13.95))  # as set_fact leaves them
    return fault


def dl_judged(fault, deadlocks=1):
    return judged('lock_contention', fault,
                  workload=workload(ok=11, failed=6, op_times=DL_OPS, errors=dict(DeadlockDetected=deadlocks, LockNotAvailable=5)))


def test_lock_contention_deadlock_phase_passes_and_shows_the_ddl_lost_and_left_no_row():
    entry = dl_judged(dl_fault())
    assert entry['status'] == 'passed', entry['reasons']
    deadlock = entry['evidence']['deadlock']
    assert deadlock['lost'] == 'ddl' and deadlock['result'] == 'granted' and deadlock['ddl_deadlock_errors'] == 1
    assert deadlock['waiters'][0]['xact_status'] == 'aborted' and deadlock['waiters'][0]['history_rows'] == 0
    assert deadlock['ddl_in_phase'] == 2 and deadlock['ddl_failed_in_phase'] == 1
    assert deadlock['asked_after_ms'] == 205.0 and deadlock['holder_waited_ms'] == 770.0


def test_lock_contention_deadlock_phase_passes_when_the_holder_lost_and_the_ddl_is_tracked():
    fault = dl_fault(result='deadlock', lost='holder', sqlstate='40P01', waiters=[dl_waiter('committed', 1, 1)])
    entry = dl_judged(fault, deadlocks=0)
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['deadlock']['lost'] == 'holder' and entry['evidence']['deadlock']['sqlstate'] == '40P01'


def test_lock_contention_without_the_deadlock_phase_judges_the_first_phase_only():
    entry = dl_judged(dl_fault(enabled=False), deadlocks=0)
    assert entry['status'] == 'passed' and entry['evidence']['deadlock'] is None


@pytest.mark.parametrize('fault, deadlocks, reason', [
    (dl_fault(result='pending', lost=None, waiters=[]), 0, 'the deadlock did not happen: no tracked DDL waited on the holder'),
    (dl_fault(result='waiting', lost=None), 0, 'the detector had not decided'),
    (dl_fault(lost=None, waiters=[dl_waiter('committed', 1, 1)]), 0, 'no waiting DDL aborted, and the workload saw 0 deadlock'),
    (dl_fault(), 0, 'a waiting DDL aborted, and the workload saw 0 deadlock errors'),
    (dl_fault(result='timeout', lost=None), 0, "second lock ended with timeout"),
    (dl_fault(waiters=[dl_waiter('aborted', 1, 1)]), 1, 'half-tracked: the cancelled DDL of backend 77 left 1 history and 1 objects'),
    (dl_fault(result='deadlock', lost='holder', sqlstate='40P01', waiters=[dl_waiter('committed', 0, 0)]), 0,
     'committed but left no history row'),
    (dl_fault(result='deadlock', lost='holder', sqlstate='40P01', waiters=[dl_waiter('in progress')]), 0, 'was in progress'),
    (dl_fault(result='deadlock', lost='holder', sqlstate='55P03', waiters=[dl_waiter('committed', 1, 1)]), 0, 'SQLSTATE 55P03'),
    (dl_fault(result='deadlock', lost='holder', sqlstate='40P01', waiters=[]), 0, 'no DDL was waiting on the holder'),
])
def test_lock_contention_deadlock_phase_fails_without_a_real_deadlock_or_with_a_half_tracked_ddl(fault, deadlocks, reason):
    entry = dl_judged(fault, deadlocks=deadlocks)
    assert entry['status'] == 'failed' and any(reason in r for r in entry['reasons']), entry['reasons']


def test_lock_contention_deadlock_phase_with_nothing_reported_cannot_be_proven():
    fault = dl_fault()
    fault['deadlock']['lock'] = {}
    entry = dl_judged(fault)
    assert any('reported nothing of its second lock' in r for r in entry['reasons'])


# --- index_corruption ----------------------------------------------------------------------------

def amcheck(host, corrupt=(), errors=(), checked=6):
    return dict(item=host, healthy=not corrupt, amcheck=dict(indexes_checked=checked, corrupt=list(corrupt), errors=list(errors)))


ORDER = dict(index='pggit.history_pkey', error='item order invariant violated for index "history_pkey"', sqlstate='XX002')
BEFORE = dict(rows=167, max_id=171, digest=DIGEST)


def corrupt_fault(**changes):
    fault = dict(corrupt=dict(index='pggit.history_pkey', block=1, mode='scramble', reveal='restart', recover='restore',
                              bytes_written=8192, sha256_before='a' * 64, sha256_after='b' * 64,
                              replicas=dict(attached=2, files_written=False)),
                 amcheck_during=[amcheck('pg1', [ORDER]), amcheck('pg2'), amcheck('pg3')],
                 amcheck_after=[amcheck('pg1'), amcheck('pg2'), amcheck('pg3')],
                 history_before=dict(BEFORE), detected_at=T0 + 3.4, recovery_s=0.8)
    fault.update(changes)
    return fault


def corrupt_workload(prefix=None):
    return workload(ok=114, failed=2, history_prefix=dict(BEFORE) if prefix is None else prefix)


def test_index_corruption_passes_with_amcheck_text_clean_after_and_history_intact():
    entry = judged('index_corruption', corrupt_fault(), workload=corrupt_workload())
    assert entry['status'] == 'passed'
    evidence = entry['evidence']
    assert evidence['amcheck_text'] == [ORDER['error']]
    assert evidence['replicas_during'] == {'pg2': 'clean', 'pg3': 'clean'}
    assert evidence['detection_s'] == 0.4 and evidence['recovery_s'] == 0.8
    assert evidence['ddl_during']['ok'] == 114 and evidence['ddl_during']['failed'] == 2


@pytest.mark.parametrize('changes, prefix, reason', [
    (dict(corrupt=dict(index='pggit.history_pkey', bytes_written=0, sha256_before='a', sha256_after='a')), None,
     'the fault did not happen: 0 bytes written'),
    (dict(amcheck_during=[amcheck('pg1'), amcheck('pg2')]), None, 'amcheck did not report the damaged index'),
    (dict(amcheck_during=[amcheck('pg2')]), None, 'amcheck did not run on pg1 during the window'),
    (dict(amcheck_after=[amcheck('pg1'), amcheck('pg2', [ORDER]), amcheck('pg3')]), None,
     'amcheck after the recovery is not clean on pg2'),
    (dict(amcheck_after=[amcheck('pg1'), amcheck('pg2', errors=[dict(index='pggit.history_pkey', error='lock timeout')])]),
     None, 'not clean on pg2: pggit.history_pkey: lock timeout'),
    (dict(amcheck_after=[amcheck('pg1', checked=0)]), None, 'amcheck after the recovery did not check pg1'),
    (dict(amcheck_after=[]), None, 'amcheck did not run on any host after the recovery'),
    ({}, dict(rows=166, max_id=171, digest='0' * 32), 'history is not intact: 167 rows up to id 171'),
    ({}, {}, 'history cannot be proven intact: no digest of those rows after it'),
    (dict(history_before={}), None, 'history cannot be proven intact: no digest before the fault'),
])
def test_index_corruption_fails_when_unseen_unclean_or_history_changed(changes, prefix, reason):
    entry = judged('index_corruption', corrupt_fault(**changes), workload=corrupt_workload(prefix))
    assert entry['status'] == 'failed' and any(reason in r for r in entry['reasons']), entry['reasons']


# --- clock_skew ----------------------------------------------------------------------------------

CLOCKS = dict(postmaster='fake', client_backend='fake', walwriter='real')
AUDIT = dict(since_id=290, rows=119, backwards=58, max_backwards_s=3599.8, first_backwards_id=323,
             missed_by_time_filter=58, in_the_future=31)


def clock_fault(skew=-3600.0, jump=1800.0, after_offset=0.01, after_at=T0 + 15.5):
    return dict(skew=dict(measured_offset_s=skew, restarted=True, clocks=CLOCKS, timestamp='-3600'),
                jump=dict(measured_offset_s=jump, restarted=False, clocks=CLOCKS, timestamp='+1800'),
                revert=dict(changed=True), clock_after=dict(offset_s=after_offset, at=after_at, uncertainty_s=0.001))


CLOCK_PARAMETERS = dict(offset_s=-3600.0, jump_offset_s=1800.0)


def test_clock_skew_passes_and_says_what_time_queries_get_wrong():
    entry = judged('clock_skew', clock_fault(), parameters=CLOCK_PARAMETERS, workload=workload(history_order=AUDIT))
    assert entry['status'] == 'passed'
    evidence = entry['evidence']
    assert [p['off_by_s'] for p in evidence['phases']] == [0.0, 0.0]
    assert evidence['phases'][0]['clocks']['walwriter'] == 'real'
    assert 'ORDER BY created_at puts 58 of the 119 rows' in evidence['what_time_queries_get_wrong']
    assert 'misses 58' in evidence['what_time_queries_get_wrong']


@pytest.mark.parametrize('fault, audit, reason', [
    (clock_fault(skew=-2.0), AUDIT, 'the fault did not happen in clock phase 1: asked -3600 s'),
    (clock_fault(jump=None), AUDIT, 'clock phase 2 cannot be proven'),
    (clock_fault(), dict(AUDIT, backwards=0), 'the skew did not reach pggit.history'),
    (clock_fault(), None, 'the ordering audit of pggit.history was not made'),
    (clock_fault(after_offset=-3600.0), AUDIT, 'the clock is not true after the revert'),
    (clock_fault(after_offset=None), AUDIT, 'the clock after the revert was not read'),
    (clock_fault(after_at=T0 + 5), AUDIT, 'was not read after the window'),
])
def test_clock_skew_fails_when_the_clock_was_not_off_or_not_true_after(fault, audit, reason):
    entry = judged('clock_skew', fault, parameters=CLOCK_PARAMETERS, workload=workload(history_order=audit))
    assert entry['status'] == 'failed' and any(reason in r for r in entry['reasons']), entry['reasons']


# --- dependency_failure --------------------------------------------------------------------------

def dependency_fault(after='FIRST 1 ("pg3")', cut=True):
    return dict(setting=dict(settings=dict(synchronous_standby_names=dict(before='', after=after, previous=None))),
                standby_name='pg3', commit_timeout_ms=1500,
                partition=[dict(item='pg3', changed=True, chains=['x'])] if cut else [dict(item='pg3', skipped=True)])


DEP_OPS = [[T0 + 3.5 + 1.6 * i, 1505.0, 'maybe'] for i in range(6)]


def test_dependency_failure_passes_when_commits_waited_and_maybe_resolved():
    entry = judged('dependency_failure', dependency_fault(), workload=workload(ok=32, maybe=8, op_times=DEP_OPS))
    assert entry['status'] == 'passed'
    evidence = entry['evidence']
    assert evidence['maybe'] == 8 and evidence['maybe_resolved'] == dict(committed=8, not_committed=0)
    assert evidence['commit_wait_ms']['p50'] == 1505.0 and evidence['ddl_in_window'] == 6


@pytest.mark.parametrize('fault, maybe, reason', [
    (dependency_fault(after=''), 8, "synchronous_standby_names is '' after the change, not naming 'pg3'"),
    (dependency_fault(after='FIRST 1 (other)'), 8, 'not naming'),
    (dependency_fault(cut=False), 8, 'the standby was not cut off'),
    (dependency_fault(), 0, 'no commit waited for the standby'),
])
def test_dependency_failure_fails_without_the_setting_the_cut_or_a_wait(fault, maybe, reason):
    entry = judged('dependency_failure', fault, workload=workload(ok=32, maybe=maybe, op_times=DEP_OPS))
    assert entry['status'] == 'failed' and any(reason in r for r in entry['reasons']), entry['reasons']


def test_a_maybe_that_is_lost_fails_the_workload():
    result = workload(ok=32, maybe=8)
    result['check'] = dict(copy.deepcopy(result['check']), lost=['r_000040'], valid=False)
    entry = judged('dependency_failure', dependency_fault(), workload=result)
    assert any(r.startswith('workload lost 1 operation(s): r_000040') for r in entry['reasons'])


def test_maybe_commits_count_in_the_drift_check():
    raw = record('trigger_failure', dict(tracking='off'), drift=['s.t_1', 's.t_2'])
    raw['workload'] = dict(workload(ok=1, maybe=1), tables=['s.t_1'])
    entry = _report.judge(raw)
    assert any('returned 1 of the 2 tables it committed' in r for r in entry['reasons']), entry['reasons']
