"""The verdict in one place: judge() works everything out from the raw facts the roles register."""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

DIGEST = 'd41d8cd98f00b204e9800998ecf8427e'


def probe(healthy=True, checks=None, history=None, **extra):
    result = dict(healthy=healthy, checks=checks or [], failed_checks=[], history=history)
    result.update(extra)
    return result


def revert_item(host, reverted=('trigger--x',), failures=()):
    """One item of the finish role's revert loop, as Ansible registers it."""
    return dict(item=host, changed=bool(reverted), reverted=[dict(id=i, result='reverted') for i in reverted],
                failures=list(failures), absent=[], remaining=[], ansible_loop_var='item')


def workload(ok=5, tables=None, reconnects=0, p50=2.0, top=4.0, errors=None, **extra):
    """What pggit_workload returns (through async_status: plus the job keys)."""
    result = dict(changed=True, check=dict(ops=ok, ok=ok, failed=0, unknown=0, tracked=ok, lost=[], duplicated=[],
                                           unexpected=[], phantom=[], valid=True),
                  reconnects=reconnects, errors=errors or {}, latency_ms=dict(p50=p50, p95=top, max=top),
                  tables=['s.t_%d' % n for n in range(ok)] if tables is None else tables)
    result.update(extra)
    return result


def raw(experiment='custom', **overrides):
    record = dict(
        experiment=experiment, host='pg1', experiment_id='exp-1',
        steady_state=dict(before=probe(), during=probe(), after=probe(history=dict(rows=10, digest=DIGEST))),
        fault={}, revert_results=[revert_item('pg1')], parameters={},
    )
    if experiment not in _report.EXPERIMENT_FAULT_CHECKS:
        record['fault_check'] = 'none'  # a made-up experiment has no fault rule and must say so
    record.update(overrides)
    return record


def reasons(**overrides):
    entry = _report.judge(raw(**overrides))
    assert (entry['status'] == 'passed') == (entry['reasons'] == []), entry
    return entry['reasons']


def test_clean_record_passes():
    entry = _report.judge(raw())
    assert (entry['status'], entry['reasons'], entry['reverted']) == ('passed', [], True)
    assert entry['revert'] == dict(hosts=['pg1'], reverted=['trigger--x'], failures=[])
    assert entry['evidence'] is None and entry['convergence'] is None


# --- the report speaks the probe's vocabulary -----------------------------------

def test_only_the_checks_that_failed_are_named():
    checks = [dict(name='connect', status='ok', critical=True), dict(name='health_check', status='warning', critical=True),
              dict(name='replication', status='skipped', critical=True), dict(name='drift', status='failed', critical=False),
              dict(name='canary', status='error', critical=True, message='timeout'),
              dict(name='event_triggers', status='failed', critical=True, message='1 of 2 enabled')]
    got = reasons(steady_state=dict(before=probe(), after=probe(healthy=False, checks=checks)))
    assert got == ['steady state after the fault not met: canary=error (timeout), event_triggers=failed (1 of 2 enabled)']


def test_unknown_check_status_is_shown_not_hidden():
    got = reasons(steady_state=dict(before=probe(), after=probe(healthy=False, checks=[dict(name='x', status='critical')])))
    assert got == ['steady state after the fault not met: x=critical']


def test_unhealthy_without_check_details_names_the_failed_checks():
    got = reasons(steady_state=dict(before=probe(), after=probe(healthy=False, failed_checks=['connect'])))
    assert got == ['steady state after the fault not met: connect']


# --- revert, from the raw loop results ---------------------------------------------

@pytest.mark.parametrize('results, detail', [
    ([], 'revert failed or was not confirmed; '),
    ([revert_item('pg1'), dict(item='client', unreachable=True, msg='ssh: connect refused', changed=False)],
     ': client: unreachable: ssh: connect refused'),
    ([dict(item='pg1', failed=True, msg='state_dir: owned by uid 1000')], 'pg1: state_dir: owned by uid 1000'),
    ([dict(item='pg1', skipped=True)], 'pg1: revert skipped'),
    ([revert_item('pg1', failures=[dict(id='trigger--x', result='failed', error='permission denied')])],
     'trigger--x on pg1: permission denied'),
])
def test_revert_not_confirmed(results, detail):
    entry = _report.judge(raw(revert_results=results))
    assert entry['status'] == 'failed' and entry['reverted'] is False
    assert entry['reasons'][0].startswith('revert failed or was not confirmed')
    assert detail.rstrip('; ') in entry['reasons'][0], entry['reasons']


def test_revert_on_every_host_confirmed():
    entry = _report.judge(raw(revert_results=[revert_item('pg1'), revert_item('client', reverted=())]))
    assert entry['reverted'] is True and entry['revert']['hosts'] == ['pg1', 'client']


def test_aborted_still_reports_a_failed_revert_and_divergence():
    entry = _report.judge(raw(aborted=True, error='2 consecutive unhealthy probe(s)', revert_results=[],
                              converge_results=[dict(item='pg2', history=dict(rows=3, digest='x'))]))
    assert entry['status'] == 'aborted'
    assert entry['reasons'][0] == 'aborted: 2 consecutive unhealthy probe(s)'
    assert entry['reasons'][1].startswith('revert failed or was not confirmed')
    assert entry['reasons'][2].startswith('after the revert pg2 (3 rows) did not converge')


# --- replicas converge after the revert ---------------------------------------------

def test_converged_replicas_pass():
    entry = _report.judge(raw(converge_results=[dict(item='pg2', history=dict(rows=10, digest=DIGEST))]))
    assert entry['status'] == 'passed'
    assert entry['convergence']['diverged'] == [] and entry['convergence']['replicas']['pg2']['rows'] == 10


@pytest.mark.parametrize('result, reason', [
    (dict(item='pg2', history=dict(rows=9, digest='other')),
     "after the revert pg2 (9 rows) did not converge to the primary's pggit.history (10 rows)"),
    (dict(item='pg2', history=None, msg='could not connect'),
     "after the revert pg2 (could not connect) did not converge to the primary's pggit.history (10 rows)"),
    (dict(item='pg2', unreachable=True, msg='unreachable'),
     "after the revert pg2 (unreachable) did not converge to the primary's pggit.history (10 rows)"),
    (dict(item='pg2', skipped=True), "after the revert the convergence of pg2 to the primary's pggit.history was not checked"),
])
def test_divergence_fails(result, reason):
    assert reasons(converge_results=[result]) == [reason]


def test_no_primary_digest_means_not_checked():
    got = reasons(steady_state=dict(before=probe(), after=probe()), converge_results=[dict(item='pg2', skipped=True)])
    assert got == ["after the revert the convergence of pg2 to the primary's pggit.history was not checked "
                   "(the primary's history digest is unknown)"]


# --- the workload result, as registered ------------------------------------------------

def test_workload_result_gives_the_checker_verdict():
    entry = _report.judge(raw(workload=workload(ok=7)))
    assert entry['status'] == 'passed' and entry['workload']['ok'] == 7


@pytest.mark.parametrize('result, reason', [
    (dict(failed=True, msg='final check could not read history: timeout'), 'workload failed: final check could not read history'),
    (dict(ansible_job_id='j1', finished=0, started=1), 'workload did not finish (job j1)'),
    (dict(changed=False, check='oops'), 'workload returned no checker verdict'),
    (workload(check=dict(ok=1, lost=['r_1'], duplicated=[], unexpected=[], valid=False)), 'workload lost 1 operation(s): r_1'),
])
def test_workload_failures(result, reason):
    got = reasons(workload=result)
    assert any(r.startswith(reason) for r in got), got


def test_skipped_workload_counts_as_none():
    assert reasons(workload=dict(skipped=True, changed=False)) == []


# --- did the fault really happen? --------------------------------------------------------

def test_fault_check_is_picked_by_experiment_name():
    assert _report.EXPERIMENT_FAULT_CHECKS == {'kill_connections': 'connections', 'trigger_failure': 'trigger',
                                               'network_latency': 'latency', 'packet_loss': 'latency',
                                               'region_partition': 'partition',
                                               'disk_pressure': 'disk', 'disk_full': 'disk_full',
                                               'memory_pressure': 'memory', 'cpu_pressure': 'cpu',
                                               'backend_crash': 'backend_kill', 'postmaster_crash': 'postmaster_kill',
                                               'process_pause': 'pause',
                                               'lock_contention': 'lock', 'index_corruption': 'corrupt',
                                               'clock_skew': 'clock', 'dependency_failure': 'dependency',
                                               'primary_failover': 'failover', 'region_failover': 'failover',
                                               'switchover': 'failover', 'manual_failover': 'failover',
                                               'load_spike': 'load', 'connection_exhaustion': 'sessions',
                                               'region_bandwidth': 'bandwidth'}
    assert set(_report.FAULT_CHECKS) == {'connections', 'trigger', 'latency', 'partition', 'disk', 'disk_full', 'memory',
                                         'cpu', 'backend_kill', 'postmaster_kill', 'pause', 'lock', 'corrupt', 'clock',
                                         'dependency', 'failover', 'load', 'sessions', 'bandwidth'}
    # A known experiment with no facts cannot prove its fault: never passed.
    for experiment in _report.EXPERIMENT_FAULT_CHECKS:
        entry = _report.judge(raw(experiment=experiment))
        assert entry['status'] == 'failed', experiment
    assert _report.judge(raw(experiment='kill_connections', fault_check='none'))['status'] == 'passed'
    assert reasons(fault_check='bogus') == ["unknown fault_check 'bogus'; expected one of auto, none, backend_kill, bandwidth, clock, "
                                            "connections, corrupt, cpu, dependency, disk, disk_full, failover, latency, load, lock, memory, "
                                            "partition, pause, postmaster_kill, sessions, trigger"]


def test_an_error_explains_itself_without_fault_check_noise():
    assert reasons(experiment='kill_connections', error='kill task failed') == ['error: kill task failed']


def test_skipped_experiment_is_not_checked():
    entry = _report.judge(raw(experiment='kill_connections', skipped_reason='check mode'))
    assert entry['status'] == 'skipped' and entry['evidence'] is None


# connections: backends terminated and the workload reconnected

@pytest.mark.parametrize('fault, reconnects, reason', [
    (dict(terminated=[101, 102]), 2, None),
    (dict(terminated=3), 1, None),
    (dict(terminated=[]), 2, 'the fault did not happen: 0 backend(s) terminated, 2 workload reconnect(s)'),
    (dict(terminated=[101]), 0, 'the fault did not happen: 1 backend(s) terminated, 0 workload reconnect(s)'),
    ({}, None, 'the fault did not happen: ? backend(s) terminated, ? workload reconnect(s)'),
])
def test_kills_hit(fault, reconnects, reason):
    record = dict(experiment='kill_connections', fault=fault)
    if reconnects is not None:
        record['workload'] = workload(reconnects=reconnects)
    assert reasons(**record) == ([reason] if reason else [])


def test_kills_can_come_apart_from_the_inject_result():
    entry = _report.judge(raw(experiment='kill_connections', fault=dict(injected=True), kills=dict(terminated=[7]),
                              workload=workload(reconnects=1)))
    assert entry['status'] == 'passed'
    assert entry['evidence'] == dict(fault_check='connections', terminated=1, workload_reconnects=1)


# trigger: every table committed with tracking off shows up as drift (the complete set)

def trigger(tables, drift, **workload_extra):
    return dict(experiment='trigger_failure', fault=dict(tracking='off'), drift=drift, workload=workload(tables=tables, **workload_extra))


def test_complete_drift_passes():
    tables = ['pggit_chaos_drift.t_r_%06d' % n for n in range(1, 61)]
    entry = _report.judge(raw(**trigger(tables, tables + ['other.t'], ok=60)))
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['missing'] == [] and entry['evidence']['committed'] == 60


def test_missing_drift_is_named():
    tables = ['s.t_%02d' % n for n in range(60)]
    got = reasons(**trigger(tables, tables[:30], ok=60))
    assert got == ['DDL run with tracking off is missing from the drift report (30 of 60): %s and 10 more'
                   % ', '.join(tables[30:50])]
    assert _report.judge(raw(**trigger(tables, tables[:30], ok=60)))['evidence']['missing'] == tables[30:]


def test_a_truncated_table_list_never_passes():
    # The workload committed 60 tables but returned 50, all of them in the drift:
    # the other 10 were never compared, so the check fails.
    tables = ['s.t_%02d' % n for n in range(50)]
    assert reasons(**trigger(tables, tables, ok=60)) == [
        'the drift check is incomplete: the workload returned 50 of the 60 tables it committed with tracking off']
    assert reasons(**trigger(tables, tables, ok=50, table_count=60)) == [
        'the drift check is incomplete: the workload returned 50 of the 60 tables it committed with tracking off']
    # Unknown outcomes the checker found committed are committed tables too.
    record = trigger(tables, tables, ok=50)
    record['workload']['check']['unknown_resolved'] = dict(committed=2, not_committed=1)
    assert reasons(**record) == [
        'the drift check is incomplete: the workload returned 50 of the 52 tables it committed with tracking off']


def test_no_untracked_ddl_proves_nothing():
    assert reasons(**trigger([], [], ok=0)) == [
        'the fault did not happen: no DDL committed while tracking was off, so there was no drift to find']


def test_no_table_list_fails():
    record = trigger([], [])
    del record['workload']['tables']
    assert reasons(**record) == [
        'the drift check cannot be made: the workload returned no list of the tables it committed with tracking off']


def test_drift_is_not_checked_when_tracking_stayed_on():
    record = trigger(['s.t_1'], [], ok=1)
    record['fault'] = dict(tracking='partial')
    assert reasons(**record) == []


# latency: the client's DDL got slower by the requested delay, or met the loss

def latency(delay, loss, before, during, top=None, errors=None, baseline=True):
    record = dict(experiment='packet_loss' if not delay else 'network_latency',
                  parameters=dict(delay_ms=str(delay), loss_pct=str(loss), port='5432', client='localhost'),
                  workload=workload(p50=during, top=during if top is None else top, errors=errors))
    if baseline:
        record['workload_baseline'] = workload(p50=before)
    return record


@pytest.mark.parametrize('record, ok', [
    (latency(100, 0, 3.0, 403.0), True),
    (latency(100, 0, 3.0, 103.0), True),           # exactly the delay
    (latency(100, 0, 3.0, 102.9), False),
    (latency(100, 0, 3.0, 3.2), False),            # the fault left no mark
    (latency(100, 0, None, 403.0), False),         # no baseline latency: cannot compare
    (latency(100, 0, 3.0, 403.0, baseline=False), False),
    (latency(0, 10, 3.0, 3.0, top=_report.LOSS_MARK_MS), True),
    (latency(0, 10, 3.0, 3.0, top=_report.LOSS_MARK_MS - 0.1), False),
    (latency(0, 10, 3.0, 3.0, top=5.0, errors=dict(OperationalError=1)), True),
    (latency(0, 0.01, 3.0, 3.0, top=5.0), False),
])
def test_latency_mark(record, ok):
    got = reasons(**record)
    assert (got == []) is ok, got
    if not ok:
        assert got[0].startswith('the fault did not happen: DDL latency p50 ')


def test_loss_mark_is_the_linux_minimum_retransmission_timeout():
    assert _report.LOSS_MARK_MS == 200.0


def test_latency_evidence_puts_measured_next_to_requested():
    entry = _report.judge(raw(**latency(100, 0, 3.0, 403.04)))
    assert entry['evidence'] == dict(
        fault_check='latency', requested_delay_ms=100.0, requested_loss_pct=0.0,
        ddl_latency_ms_before=dict(p50=3.0, p95=4.0, max=4.0), ddl_latency_ms_during=dict(p50=403.04, p95=403.04, max=403.04),
        added_p50_ms=400.0, workload_errors={}, loss_mark_ms=200.0)


def test_latency_message_says_what_was_asked_and_seen():
    got = reasons(**latency(0, 0.01, 2.5, 3.0, top=5.0))
    assert got == ['the fault did not happen: DDL latency p50 2.5 ms before; p50 3.0, p95 5.0, max 5.0 ms during '
                   '(added p50 0.5 ms); 0 workload error(s); for 0 ms delay and 0.01% loss '
                   '(needs a DDL of at least 200 ms or a workload error)']


def test_latency_without_requested_delay_cannot_tell():
    record = latency(100, 0, 3.0, 403.0)
    del record['parameters']['delay_ms']
    assert reasons(**record) == ['cannot tell whether the fault happened: parameters.delay_ms is None']


# partition: every isolated replica held fewer history rows than the primary at the window's end

def partition(primary_rows, replicas, full_isolation=False):
    return dict(experiment='region_partition', parameters=dict(full_isolation=full_isolation),
                history_at_window_end=dict(primary=None if primary_rows is None else dict(rows=primary_rows, digest='p'),
                                           replicas=replicas))


def replica(host, rows):
    return dict(item=host, history=None if rows is None else dict(rows=rows, digest='r'), healthy=True)


@pytest.mark.parametrize('record, expected', [
    (partition(40, [replica('pg2', 12), replica('pg3', 39)]), []),
    (partition(40, [replica('pg2', 12), replica('pg3', 40)]), ['the partition did not happen: pg3 holds 40 history rows, the primary 40']),
    (partition(40, [replica('pg2', None)]), ["the partition cannot be proven: pg2's pggit.history was not read at the window's end"]),
    (partition(40, [dict(item='pg2', skipped=True)]),
     ["the partition cannot be proven: pg2's pggit.history was not read at the window's end"]),
    (partition(None, [replica('pg2', 12)]),
     ["the partition cannot be proven: the primary's pggit.history was not read at the window's end"]),
    (partition(40, []), ['the partition cannot be proven: no isolated replica was looked at']),
    (partition(None, [dict(item='pg2', skipped=True)], full_isolation='True'), []),
    (partition(None, [], full_isolation=True), []),
])
def test_replicas_behind(record, expected):
    assert reasons(**record) == expected


def test_partition_evidence():
    entry = _report.judge(raw(**partition(40, [replica('pg2', 12)])))
    assert entry['evidence'] == dict(fault_check='partition', full_isolation=False, primary_rows=40.0, replica_rows={'pg2': 12.0})
