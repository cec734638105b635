"""Did the resource or process fault really happen? judge() decides from the raw facts the roles pass.

Every rule gets a record that passes (the facts of a real run, shaped as the
modules return them) and records that must fail: each would pass if the rule
did not look, so each proves the rule looks.
"""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

MIB = 1024 * 1024
DIGEST = 'd41d8cd98f00b204e9800998ecf8427e'


def probe(healthy=True, history=None):
    return dict(healthy=healthy, checks=[], failed_checks=[], history=history)


def workload(ok=20, failed=0, unknown=0, reconnects=0, p50=2.0, p95=4.0):
    return dict(changed=True, check=dict(ops=ok + failed + unknown, ok=ok, failed=failed, unknown=unknown, tracked=ok, lost=[],
                                         duplicated=[], unexpected=[], phantom=[], valid=True),
                reconnects=reconnects, errors={'DiskFull': failed} if failed else {}, latency_ms=dict(p50=p50, p95=p95, max=p95))


def record(experiment, fault, **overrides):
    raw = dict(experiment=experiment, host='pg1', experiment_id='exp-1',
               steady_state=dict(before=probe(), after=probe(history=dict(rows=10, digest=DIGEST))),
               fault=fault, revert_results=[dict(item='pg1', reverted=[dict(id='x--1', result='reverted')], failures=[])],
               workload=workload(), parameters={})
    raw.update(overrides)
    return raw


def judged(experiment, fault, **overrides):
    entry = _report.judge(record(experiment, fault, **overrides))
    assert (entry['status'] == 'passed') == (entry['reasons'] == []), entry
    return entry


def rounds(*spec, start=1000.0, step=0.25):
    """Probe rounds from a string: '+' healthy, 'x' unhealthy (DDL failed), 'd' down (no connection)."""
    out = []
    for n, mark in enumerate(''.join(spec)):
        failed = {'+': [], 'x': ['canary'], 'd': ['connect']}[mark]
        out.append(dict(at=start + n * step, healthy=mark == '+', failed=failed))
    return out


# --- disk -----------------------------------------------------------------------------------

def fill(asked=12 * MIB, after=12 * MIB, fill_bytes=150 * MIB, size=256 * MIB):
    return dict(filesystem=dict(mount='/srv/pg1', size_bytes=size, free_bytes_before=fill_bytes + after, free_bytes_after=after),
                fill_file='/srv/pg1/.pggit-chaos-fill-disk--exp-1', fill_bytes=fill_bytes, asked_free_bytes=asked, enospc=False)


def test_disk_pressure_passes_when_the_fill_left_what_was_asked():
    entry = judged('disk_pressure', fill(after=12 * MIB + 300 * 1024))
    assert entry['status'] == 'passed'
    assert entry['evidence']['fault_check'] == 'disk'
    assert entry['evidence']['free_bytes_after'] == 12 * MIB + 300 * 1024
    assert entry['evidence']['tolerance_bytes'] == pytest.approx(0.01 * 256 * MIB)


@pytest.mark.parametrize('fault,reason', [
    (fill(fill_bytes=0), 'the fault did not happen: the fill file took 0 bytes'),
    ({}, 'the fault did not happen: the fill file took ? bytes'),
    (fill(after=40 * MIB), 'the fill missed its ask: 12.0 MiB free asked, 40.0 MiB free after the fill'),
    (dict(fill(), filesystem={}), 'the fill cannot be proven'),
])
def test_disk_pressure_fails_without_a_real_fill(fault, reason):
    got = judged('disk_pressure', fault)['reasons']
    assert any(r.startswith(reason) for r in got), got


def full(window='++xxxxxxxx', recovery='xx++++', asked_at=1010.0, after=0):
    fault = fill(asked=0, after=after)
    fault.update(window_rounds=rounds(window), fill_revert=dict(asked_at=asked_at, result={}),
                 recovery_rounds=rounds(recovery, start=1009.9, step=0.2))
    return fault


def test_disk_full_passes_and_reports_panic_and_recovery():
    entry = judged('disk_full', full(window='++xxddddd'), workload=workload(failed=3, unknown=1))
    assert entry['status'] == 'passed', entry['reasons']
    evidence = entry['evidence']
    assert evidence['panicked'] is True and evidence['ddl_failed'] == 4
    # Recovery rounds at 1009.9, 1010.1, 1010.3 (first healthy): 0.3 s after the revert was asked at 1010.0.
    assert evidence['recovery_s'] == pytest.approx(0.3)


def test_disk_full_without_panic_says_so():
    evidence = judged('disk_full', full(window='+xxxxx'))['evidence']
    assert evidence['panicked'] is False and evidence['window_probes_unhealthy'] == 5


@pytest.mark.parametrize('fault,reason', [
    (full(window='++++++'), 'the full disk never reached PostgreSQL: no DDL failed and all 6 probes of the window were healthy'),
    (full(window=''), 'the full disk cannot be shown to reach PostgreSQL: the window was not probed'),
    (full(recovery='xxxxx'), 'tracked DDL did not work again within 0.70 s of the revert of the fill (5 probes)'),
    (full(asked_at=None), 'the recovery after the full disk was not timed'),
    (full(recovery=''), 'the recovery after the full disk was not timed'),
    (full(after=30 * MIB), 'the fill missed its ask: 0.0 MiB free asked, 30.0 MiB free after the fill'),
])
def test_disk_full_fails_when_it_cannot_show_the_full_disk(fault, reason):
    got = judged('disk_full', fault)['reasons']
    assert reason in got or any(r.startswith(reason) for r in got), got


# --- stress ----------------------------------------------------------------------------------

LIMIT = 512 * MIB


def phase(asked, peak, oom_kills=0, limit=LIMIT, load=None):
    figures = dict(peak_bytes=peak, oom_kills=oom_kills, cpu_load_measured_pct=load, samples=40)
    return dict(asked=asked, result=dict(cgroup=dict(paths={'memory': '/sys/fs/cgroup/memory/lab/pg1'}, limit_bytes=limit,
                                                     usage_bytes_before=60 * MIB),
                                         stress=dict(pid=4242, argv=['stress-ng']), figures=figures))


def test_memory_pressure_passes_and_names_the_oom_victim():
    fault = dict(resource='memory', phases=[phase(90, 505 * MIB), phase(100, LIMIT, oom_kills=7)])
    entry = judged('memory_pressure', fault)
    assert entry['status'] == 'passed', entry['reasons']
    evidence = entry['evidence']
    assert evidence['oom_kills'] == 7 and evidence['postgres_sessions_reset'] is False
    assert evidence['oom_victim'].startswith('stress-ng')
    assert [p['asked_bytes'] for p in evidence['phases']] == [pytest.approx(0.9 * LIMIT), LIMIT]


def test_memory_pressure_says_when_postgresql_was_reset():
    fault = dict(resource='memory', phases=[phase(90, LIMIT, oom_kills=2)])
    evidence = judged('memory_pressure', fault, workload=workload(reconnects=2))['evidence']
    assert evidence['postgres_sessions_reset'] is True and evidence['oom_victim'].startswith('PostgreSQL')


@pytest.mark.parametrize('phases,reason', [
    ([], 'the fault did not happen: no memory phase ran'),
    ([phase(90, 200 * MIB)], 'the fault did not happen in memory phase 1: the cgroup peaked at 200.0 MiB'),
    ([phase(90, LIMIT), phase(100, 300 * MIB)], 'the fault did not happen in memory phase 2'),
    ([phase(90, None)], 'memory phase 1 cannot be proven'),
    ([phase(90, LIMIT, limit=None)], 'memory phase 1 cannot be proven'),
])
def test_memory_pressure_fails_when_the_peak_stayed_low(phases, reason):
    got = judged('memory_pressure', dict(resource='memory', phases=phases))['reasons']
    assert any(r.startswith(reason) for r in got), got


def test_cpu_pressure_passes_and_reports_latency_before_and_during():
    entry = judged('cpu_pressure', dict(resource='cpu', phases=[phase(100, 0, load=96.5)]),
                   workload_baseline=workload(p50=2.0, p95=3.0), workload=workload(p50=9.0, p95=30.0))
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['ddl_latency_ms_before'] == dict(p50=2.0, p95=3.0)
    assert entry['evidence']['ddl_latency_ms_during'] == dict(p50=9.0, p95=30.0)
    assert entry['evidence']['phases'][0]['measured_load_pct'] == 96.5


@pytest.mark.parametrize('phases,reason', [
    ([], 'the fault did not happen: no cpu phase ran'),
    ([phase(100, 0, load=12.0)], 'the fault did not happen in cpu phase 1: load measured 12.0%, under 25% of the 100% asked'),
    ([phase(100, 0, load=None)], 'cpu phase 1 cannot be proven'),
])
def test_cpu_pressure_fails_without_measured_load(phases, reason):
    got = judged('cpu_pressure', dict(resource='cpu', phases=phases))['reasons']
    assert any(r.startswith(reason) for r in got), got


# --- processes -------------------------------------------------------------------------------

def signalled(role='backend', signal='KILL', **extra):
    row = dict(pid=4242, starttime=1, role=role, backend_type='client backend', application_name='pggit-chaos-workload',
               cmdline='postgres: ...', signal=signal)
    row.update(extra)
    return [row]


def test_backend_crash_passes_with_recovery_bounds():
    fault = dict(signalled=signalled(exited=True), window_rounds=rounds('+++dd+++', step=0.2))
    entry = judged('backend_crash', fault, workload=workload(reconnects=1, unknown=1))
    assert entry['status'] == 'passed', entry['reasons']
    # Last healthy before at 1000.4, first unhealthy at 1000.6, first healthy after at 1001.0.
    assert entry['evidence']['recovery_s'] == pytest.approx(0.6)
    assert entry['evidence']['down_seen_s'] == pytest.approx(0.4)


def test_backend_crash_shorter_than_a_probe_is_not_a_failure():
    entry = judged('backend_crash', dict(signalled=signalled(), window_rounds=rounds('++++')), workload=workload(reconnects=1))
    assert entry['status'] == 'passed' and entry['evidence']['recovery_s'] is None
    assert entry['evidence']['outage_seen'] is False
    assert entry['evidence']['recovery_s_at_most'] == pytest.approx(0.25)


@pytest.mark.parametrize('fault,load,reason', [
    (dict(signalled=[], window_rounds=rounds('++')), workload(reconnects=1), 'the fault did not happen: no process was signalled'),
    (dict(signalled=signalled(), window_rounds=rounds('++')), workload(reconnects=0),
     'the kill did not reach the workload: it never reconnected'),
    (dict(signalled=signalled(exited=False), window_rounds=rounds('++')), workload(reconnects=1),
     'the signal KILL had no effect: pid 4242 not exited'),
    (dict(signalled=signalled(signal='TERM'), window_rounds=rounds('++')), workload(reconnects=1), 'signalled with TERM, not KILL'),
    (dict(signalled=signalled(), window_rounds=rounds('++ddd')), workload(reconnects=1),
     'the target did not recover within the window: 3 probe(s) unhealthy'),
])
def test_backend_crash_fails_when_the_kill_missed(fault, load, reason):
    got = judged('backend_crash', fault, workload=load)['reasons']
    assert any(r.startswith(reason) for r in got), got


def crash(window='++ddddd++++', asked_at=1001.1):
    return dict(signalled=signalled(role='postmaster', backend_type=None), window_rounds=rounds(window),
                restart=dict(asked_at=asked_at, result={}))


def test_postmaster_crash_passes_and_times_the_first_tracked_ddl():
    entry = judged('postmaster_crash', crash(), workload=workload(reconnects=1))
    assert entry['status'] == 'passed', entry['reasons']
    evidence = entry['evidence']
    # Down from 1000.5; restart asked at 1001.1; first healthy round at 1001.75.
    assert evidence['probes_down'] == 5 and evidence['down_s'] == pytest.approx(0.6)
    assert evidence['first_tracked_ddl_s'] == pytest.approx(0.65)


@pytest.mark.parametrize('fault,reason', [
    (crash(window='+++++++'), 'the fault did not happen: the server never went down (all 7 probes of the window connected)'),
    (crash(window=''), 'the crash cannot be proven: the window was not probed'),
    (crash(asked_at=None), 'the server was not restarted by the revert of the process fault'),
    (crash(window='++dddddddd'), 'tracked DDL did not work again after the restart within the window'),
    (dict(crash(), signalled=[]), 'the fault did not happen: no process was signalled'),
])
def test_postmaster_crash_fails_without_a_crash_and_a_restart(fault, reason):
    got = judged('postmaster_crash', fault)['reasons']
    assert reason in got, got


def verify_item(host, rows):
    return dict(item=host, healthy=True, history=None if rows is None else dict(rows=rows, max_id=rows, digest='x%d' % rows))


def pause(start=40, end=40, primary=55, stopped=True):
    fault = dict(signalled=signalled(role='walreceiver', backend_type='walreceiver', signal='STOP', stopped=stopped),
                 replicas_at_start=[verify_item('pg3', start)])
    window_end = dict(primary=dict(rows=primary, digest='p'), replicas=[verify_item('pg3', end)])
    return dict(fault=fault, history_at_window_end=window_end)


def test_process_pause_passes_when_the_replica_stood_still():
    facts = pause()
    entry = judged('process_pause', facts['fault'], history_at_window_end=facts['history_at_window_end'])
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['replica_rows_at_start'] == {'pg3': 40}
    assert entry['evidence']['replica_rows_at_end'] == {'pg3': 40} and entry['evidence']['primary_rows'] == 55


@pytest.mark.parametrize('facts,reason', [
    (pause(end=47), 'the pause did not happen: the pggit.history of pg3 grew from 40 to 47 rows in the window'),
    (pause(start=55, end=55), 'the pause cannot be proven: pg3 holds 55 history rows, the primary 55'),
    (pause(start=None), "the pause cannot be proven: pg3's pggit.history was not read at the window's start"),
    (pause(end=None), "the pause cannot be proven: pg3's pggit.history was not read at the window's end"),
    (pause(primary=None), "the pause cannot be proven: the primary's pggit.history was not read"),
    (pause(stopped=False), 'the signal STOP had no effect: pid 4242 not stopped'),
])
def test_process_pause_fails_when_the_replica_did_not_stop(facts, reason):
    got = judged('process_pause', facts['fault'], history_at_window_end=facts['history_at_window_end'])['reasons']
    assert any(r.startswith(reason) for r in got), got


def test_process_pause_catch_up_is_the_convergence_check():
    facts = pause()
    after = probe(history=dict(rows=60, digest=DIGEST))
    got = judged('process_pause', facts['fault'], history_at_window_end=facts['history_at_window_end'],
                 steady_state=dict(before=probe(), after=after),
                 converge_results=[dict(item='pg3', history=dict(rows=58, digest='other'))])['reasons']
    assert got == ["after the revert pg3 (58 rows) did not converge to the primary's pggit.history (60 rows)"]


@pytest.mark.parametrize('experiment', ['disk_pressure', 'disk_full', 'memory_pressure', 'cpu_pressure', 'backend_crash',
                                        'postmaster_crash', 'process_pause'])
def test_no_resource_experiment_passes_on_empty_facts(experiment):
    entry = _report.judge(record(experiment, {}))
    assert entry['status'] == 'failed' and entry['evidence']['fault_check'] == _report.EXPERIMENT_FAULT_CHECKS[experiment]
