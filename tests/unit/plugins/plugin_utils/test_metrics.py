"""The chaos monitor's assembly and its OpenMetrics text (parsed with prometheus_client's reference parsers)."""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._probe import health_of, lag_by_replica, sample_from_row
from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import (
    build_monitor, entry_monitor, hoist_monitor, render_openmetrics,
)

try:
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
except ImportError:  # a failure, never a skip: requirements-dev.txt installs it
    text_string_to_metric_families = openmetrics_families = None

T0 = 1795800000.0


def sample(t, phase='window', **values):
    base = dict(t=T0 + t, phase=phase, connections=3, active=1, pggit_health='ok', history_rows=10, lag_bytes={'lab-2': 0},
                lock_waits=0, probe_ms=2.0)
    base.update(values)
    return base


def entry(status='passed', experiment='kill_connections', host='lab-1', series=None):
    if series is None:
        series = [sample(-1, 'before'), sample(1), sample(2, history_rows=12), sample(6, 'after', history_rows=13)]
    timeline = {'started_at': T0 - 2, 'inject_start': T0, 'window_end': T0 + 4, 'revert_start': T0 + 4.5, 'revert_end': T0 + 5,
                'finished_at': T0 + 6}
    return dict(experiment=experiment, host=host, status=status, reverted=True, reasons=[] if status == 'passed' else ['boom'],
                timings={'total_s': 12.5}, timeline=timeline, monitor={'series': series})


def parse_both(text):
    assert text_string_to_metric_families is not None, 'prometheus_client is missing: pip install -r requirements-dev.txt'
    prom = dict((f.name, f) for f in text_string_to_metric_families(text))
    openm = dict((f.name, f) for f in openmetrics_families(text))
    return prom, openm


def test_ddl_latency_per_second_from_the_workload_op_times():
    before = {'series': [sample(-5, 'before')]}
    during = {'series': [sample(1), sample(2), sample(3)]}
    # [started, ms, outcome]: completes at started + ms/1000.
    workload = {'op_times': [[T0 + 0.1, 100.0, 'ok'], [T0 + 0.5, 300.0, 'ok'], [T0 + 1.2, 50.0, 'ok'], [T0 + 2.1, 800.0, 'fail'],
                             [T0 + 2.9, 2000.0, 'ok'],  # completes after the last sample: in none
                             ['bad', 1, 'ok']]}
    monitor = build_monitor(before, during, None, workload)
    series = monitor['series']
    assert [s['phase'] for s in series] == ['before', 'window', 'window', 'window']
    assert 'ddl_p95_ms' not in series[0]  # nothing completed in the second before it
    assert series[1]['ddl_count'] == 2 and series[1]['ddl_p50_ms'] == 100.0 and series[1]['ddl_p95_ms'] == 300.0
    assert series[2]['ddl_count'] == 1 and series[2]['ddl_p95_ms'] == 50.0
    assert series[3]['ddl_count'] == 1 and series[3]['ddl_p95_ms'] == 800.0  # completed at T0+2.9, in (T0+2, T0+3]
    assert monitor['interval_s'] == 1.0 and monitor['ddl_ops'] == 5


def test_no_workload_leaves_latency_out_and_no_samples_is_none():
    monitor = build_monitor(None, {'series': [sample(1)]}, None, None)
    assert 'ddl_p95_ms' not in monitor['series'][0] and monitor['ddl_ops'] is None
    assert build_monitor({}, {}, {}, None) is None


def test_hoist_moves_the_monitor_out_of_the_window_probe():
    raw = dict(experiment='x', host='h', steady_state={'during': {'healthy': True, 'monitor': {'series': [sample(1)]}}})
    hoisted = hoist_monitor(raw)
    assert hoisted['monitor']['series'][0]['t'] == T0 + 1
    assert 'monitor' not in hoisted['steady_state']['during'] and 'monitor' in raw['steady_state']['during']
    assert entry_monitor({'monitor': {'series': []}}) == {'series': []}
    assert hoist_monitor({'experiment': 'y'})['monitor'] is None


def test_lag_names_tell_twins_apart_and_keep_null():
    assert lag_by_replica([['walreceiver', '10.0.0.2', 5], ['walreceiver', '10.0.0.3', None], ['lab-9', None, 7]]) == {
        'walreceiver@10.0.0.2': 5, 'walreceiver@10.0.0.3': None, 'lab-9': 7}


@pytest.mark.parametrize('present, tracking, disabled, expect, health', [
    (None, 0, 0, True, 'down'), (False, 0, 0, True, 'absent'), (True, 2, 0, True, 'ok'), (True, 1, 1, True, 'degraded'),
    (True, 0, 3, True, 'untracked'), (True, 0, 3, False, 'ok'), (True, 3, 0, False, 'tracking'),
])
def test_health_of(present, tracking, disabled, expect, health):
    assert health_of(present, tracking, disabled, expect) == health


def test_sample_from_row():
    row = (T0, False, 4, 2, 1, True, 2, 0, 99, '[["lab-2", "198.18.0.12", 1024]]')
    got = sample_from_row(row, 'window')
    assert got == dict(t=T0, phase='window', connections=4, active=2, pggit_health='ok', tracking_triggers=2, history_rows=99,
                       lag_bytes={'lab-2': 1024}, lock_waits=1, in_recovery=False)


def test_prom_parses_with_both_reference_parsers_and_carries_verdicts_and_phases():
    entries = [entry(), entry('failed', 'network_latency', 'lab-2'), entry('aborted', 'process_pause', 'lab-1', series=[]),
               entry('skipped', 'trigger_failure', 'lab-3', series=[])]
    text = render_openmetrics(entries, {}, generated_at='2026-11-27T23:00:00Z')
    prom, openm = parse_both(text)
    assert text.endswith('# EOF\n')
    verdicts = dict(((s.labels['experiment'], s.labels['host']), s.value) for s in prom['pggit_chaos_verdict'].samples)
    assert verdicts == {('kill_connections', 'lab-1'): 1, ('network_latency', 'lab-2'): 0, ('process_pause', 'lab-1'): -1,
                        ('trigger_failure', 'lab-3'): -2}
    status = [s for s in prom['pggit_chaos_experiment_status'].samples if s.value == 1]
    assert sorted(s.labels['status'] for s in status) == ['aborted', 'failed', 'passed', 'skipped']
    growth = dict((s.labels['phase'], s.value) for s in prom['pggit_chaos_history_rows_growth'].samples
                  if s.labels['experiment'] == 'kill_connections')
    assert growth == {'before': 0, 'window': 2, 'after': 0}
    lag = list(prom['pggit_chaos_replication_lag_bytes'].samples)
    assert lag and all(s.labels['replica'] == 'lab-2' for s in lag)
    for family in list(prom.values()) + list(openm.values()):
        assert family.type == 'gauge' and family.documentation
        for s in family.samples:
            assert s.timestamp is None, 'the textfile collector refuses timestamps'
    assert prom['pggit_chaos_report_timestamp_seconds'].samples[0].value == 1795820400


def test_prom_escapes_hostile_label_values():
    hostile = 'evil"} 1\n# TYPE x counter\\'
    text = render_openmetrics([entry(host=hostile, experiment='a"b')], {}, generated_at='2026-11-27T23:00:00Z')
    prom, _openm = parse_both(text)
    hosts = set(s.labels['host'] for s in prom['pggit_chaos_verdict'].samples)
    assert hosts == {hostile}
    assert 'x' not in prom


def test_prom_with_no_monitor_still_has_the_verdict():
    text = render_openmetrics([entry(series=[])], {})
    prom, _openm = parse_both(text)
    assert 'pggit_chaos_verdict' in prom and 'pggit_chaos_connections' not in prom


def test_the_lab_fixture_gives_a_parsable_prom_with_every_experiment_and_its_phases():
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'fixtures', 'chaos-report-lab.json')
    with open(path, encoding='utf-8') as handle:
        document = json.load(handle)
    entries = [hoist_monitor(e) for e in document['entries']]
    prom, _openm = parse_both(render_openmetrics(entries, document['meta'], generated_at=document['generated_at']))
    assert sorted((s.labels['experiment'], s.labels['host']) for s in prom['pggit_chaos_verdict'].samples) == sorted(
        (e['experiment'], e['host']) for e in entries)
    phases = set(s.labels['phase'] for s in prom['pggit_chaos_monitor_samples'].samples)
    assert phases == {'before', 'window', 'after'}
    assert prom['pggit_chaos_replication_lag_bytes_max'].samples


def test_the_locked_history_statement_is_the_sample_without_the_count():
    from ansible_collections.pggit.chaos.plugins.module_utils import _probe
    assert _probe.MONITOR_HISTORY_SQL in _probe.MONITOR_SQL
    assert 'pggit.history' not in _probe.MONITOR_SQL_UNLOCKED.replace("to_regclass('pggit.history')", '')
    assert _probe.MONITOR_SQL_UNLOCKED.count(',') == _probe.MONITOR_SQL.count(',') - _probe.MONITOR_HISTORY_SQL.count(',') + 1


def test_label_values_that_were_not_utf8_still_give_a_writable_parsable_file():
    text = render_openmetrics([entry(host='lab-\udcff')], {})
    text.encode('utf-8')
    prom, _openm = parse_both(text)
    assert set(s.labels['host'] for s in prom['pggit_chaos_verdict'].samples) == {'lab-\\udcff'}
