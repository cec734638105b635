"""region_bandwidth: judged from the throttle's result, the chaos monitor's lag series and the catch-up sample.

A record shaped as a lab run's passes; each record that must fail would pass if the rule did not look.
"""
from __future__ import annotations

import copy

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

DIGEST = 'd41d8cd98f00b204e9800998ecf8427e'
T0 = 1000.0
TIMINGS = dict(started_at=T0, inject_start=T0 + 2, inject_end=T0 + 3, window_end=T0 + 13, revert_start=T0 + 15,
               revert_end=T0 + 16, finished_at=T0 + 17)
KIB = 1024


def sample(t, phase='window', **lags):
    return dict(t=t, phase=phase, pggit_health='ok', lag_bytes=lags, probe_ms=1.0)


def window(lags_kib, name='lab-3', other=None):
    """One window sample per second; ``other`` gives an unthrottled replica's lag too."""
    out = []
    for i, kib in enumerate(lags_kib):
        lags = {name: kib * KIB}
        if other is not None:
            lags['lab-2'] = other
        out.append(sample(T0 + 3 + i, **lags))
    return out


def catchup(lags_kib, t0=T0 + 13.5):
    return [sample(t0 + 0.25 * i, phase='catchup', **{'lab-3': kib * KIB, 'lab-2': 0}) for i, kib in enumerate(lags_kib)]


def fault(catch=(1130, 1130, 900, 300, 40, 0, 0), heal_started_at=T0 + 13.6, heal_ended_at=T0 + 14.2, **extra):
    value = dict(rate_kbit=256, replicas=[['lab-3', '', '198.18.0.13']], min_growth_bytes=256 * KIB,
                 caught_up_bytes=64 * KIB, throttle=dict(changed=True, interface='eth0', applied=[['tc', 'qdisc']]),
                 heal=[dict(item='lab-1', changed=True)], heal_started_at=heal_started_at, heal_ended_at=heal_ended_at,
                 catchup=catchup(catch),
                 load=dict(changed=True, tps=104.5, latency_ms=dict(p50=1.0, p95=5.0, p99=13.0)))
    value.update(extra)
    return value


GROWING = [0, 40, 120, 260, 400, 560, 700, 850, 990, 1130]


def record(fault_value, series=None, converge_digest=DIGEST):
    during = dict(healthy=True, checks=[], failed_checks=[],
                  monitor=dict(series=[sample(T0 + 1, phase='before', **{'lab-3': 0})] + (window(GROWING) if series is None else series)))
    return dict(experiment='region_bandwidth', host='lab-1', experiment_id='exp-1',
                steady_state=dict(before=dict(healthy=True, checks=[], failed_checks=[]), during=during,
                                  after=dict(healthy=True, checks=[], failed_checks=[], history=dict(rows=10, digest=DIGEST))),
                fault=fault_value, revert_results=[dict(item='lab-1', reverted=[], failures=[])],
                converge_results=[dict(item='lab-3', history=dict(rows=10, digest=converge_digest))],
                parameters={}, timings=dict(TIMINGS))


def judged(raw):
    entry = _report.judge(raw)
    assert (entry['status'] == 'passed') == (entry['reasons'] == []), entry
    return entry


def test_region_bandwidth_is_picked_by_name():
    assert _report.EXPERIMENT_FAULT_CHECKS['region_bandwidth'] == 'bandwidth'
    assert _report.FAULT_CHECKS['bandwidth'] is _report._bandwidth_throttled


def test_growing_lag_that_catches_up_passes_with_the_series_max_and_catchup_time():
    entry = judged(record(fault()))
    assert entry['status'] == 'passed'
    evidence = entry['evidence']
    assert evidence['fault_check'] == 'bandwidth' and evidence['rate_kbit'] == 256 and evidence['interface'] == 'eth0'
    assert evidence['load_tps'] == 104.5 and evidence['load_error'] is None
    replica = evidence['replicas']['lab-3']
    assert replica['name'] == 'lab-3'  # no application_name given: the host's name
    assert replica['max_lag_bytes'] == 1130 * KIB and replica['lag_at_window_end'] == 1130 * KIB
    assert replica['growth_bytes'] == 1130 * KIB
    assert replica['lag_series'][0] == [0.0, 0] and replica['lag_series'][-1] == [9.0, 1130 * KIB]
    assert len(replica['lag_series']) == 10  # the window only, not the before sample
    # Samples every 0.25 s from +13.5 (before the heal, left out); the heal ran from +13.6 to +14.2; the first sample
    # under 64 KiB (40 KiB) is at +14.5.
    assert replica['lag_after_heal'] == 0 and replica['catchup_s'] == pytest.approx(0.3)
    assert [point[1] for point in replica['catchup_series']] == [k * KIB for k in (1130, 900, 300, 40, 0, 0)]
    assert replica['catchup_series'][0][0] == pytest.approx(-0.45)


@pytest.mark.parametrize('series, text', [
    (window([0, 3, 1, 4, 2, 5, 0, 6, 1, 2]), 'the fault did not happen: the replay lag of lab-3 grew by 6144 bytes'),
    # High but flat: the lag did not grow in the window (it was there before the throttle).
    (window([900] * 10), 'grew by 0 bytes in the window'),
    ([], 'the chaos monitor took no sample in the window'),
    (window(GROWING, name='walreceiver'), "no monitor sample of the window gives lab-3's replay lag"),
])
def test_a_lag_that_did_not_grow_fails(series, text):
    entry = judged(record(fault(), series=series))
    assert entry['status'] == 'failed'
    assert any(text in r for r in entry['reasons']), entry['reasons']


def test_growth_of_a_replica_that_is_not_throttled_does_not_count():
    series = [dict(s, lag_bytes={'lab-3': 0, 'lab-2': s['lag_bytes']['lab-3']}) for s in window(GROWING)]
    entry = judged(record(fault(), series=series))
    assert entry['status'] == 'failed'
    assert any('replay lag of lab-3 grew by 0 bytes' in r for r in entry['reasons'])


def test_application_name_and_twins_are_matched():
    value = fault(replicas=[['lab-3', 'east', '198.18.0.13']])
    value['catchup'] = [dict(s, lag_bytes={'east@198.18.0.13': s['lag_bytes']['lab-3']}) for s in value['catchup']]
    series = [dict(s, lag_bytes={'east@198.18.0.13': s['lag_bytes']['lab-3']}) for s in window(GROWING)]
    entry = judged(record(value, series=series))
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['replicas']['lab-3']['name'] == 'east'


@pytest.mark.parametrize('change, text', [
    (dict(throttle=dict(failed=True, msg='tc: no such device')), 'did not throttle the primary (tc: no such device)'),
    (dict(throttle={}), 'did not throttle the primary'),
    (dict(replicas=[]), 'no throttled replica was named'),
])
def test_a_throttle_that_was_not_applied_fails(change, text):
    entry = judged(record(fault(**change)))
    assert entry['status'] == 'failed'
    assert any(text in r for r in entry['reasons']), entry['reasons']


def test_a_replica_that_did_not_catch_up_fails_and_gets_no_catchup_time():
    # Under the threshold for a moment, then behind again: not caught up.
    entry = judged(record(fault(catch=(900, 10, 900))))
    assert entry['status'] == 'failed'
    assert any('after the heal lab-3 did not catch up: its replay lag is still 921600 bytes' in r for r in entry['reasons'])
    assert entry['evidence']['replicas']['lab-3']['catchup_s'] is None


def test_an_unread_catchup_fails():
    value = fault()
    value['catchup'] = []
    entry = judged(record(value))
    assert any('after the heal the replay lag of lab-3 was not read' in r for r in entry['reasons'])


def test_a_history_that_differs_after_the_heal_fails():
    entry = judged(record(fault(), converge_digest='other'))
    assert entry['status'] == 'failed'
    assert any('lab-3' in r and 'did not converge' in r for r in entry['reasons'])


def test_judge_does_not_mutate_the_record():
    raw = record(fault())
    kept = copy.deepcopy(raw)
    _report.judge(raw)
    assert raw == kept


def test_lag_growth_is_the_largest_rise_over_an_earlier_low():
    assert _report.lag_growth([]) == 0
    assert _report.lag_growth([(0, 5), (1, 1), (2, 4), (3, 0)]) == 3
    assert _report.lag_growth([(0, 10), (1, 20), (2, 5), (3, 30)]) == 25


def test_markdown_shows_the_lag_over_the_window_and_the_catchup():
    entry = judged(record(fault()))
    text = _report.render_markdown([entry], {'playbook': 'chaos.yml'}, generated_at='now')
    assert '## Region bandwidth' in text
    row = next(line for line in text.splitlines() if line.startswith('| region_bandwidth | lab-1 | lab-3 |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[3:9] == ['256', '104.5', '1130', '1130', '0.300', 'yes']
    assert cells[9].startswith('0 40 120 260 400 560 700 850 990 1130 (KiB at 0 1 2')


def test_markdown_says_no_when_the_history_differs():
    entry = judged(record(fault(), converge_digest='other'))
    text = _report.render_markdown([entry], {}, generated_at='now')
    row = next(line for line in text.splitlines() if line.startswith('| region_bandwidth | lab-1 | lab-3 |'))
    assert row.split('|')[9].strip() == 'no'


def test_no_bandwidth_section_without_the_experiment():
    assert '## Region bandwidth' not in _report.render_markdown([], {}, generated_at='now')


def test_a_failed_load_is_named_in_the_evidence_and_its_tps_left_out():
    value = fault(load=dict(failed=True, msg='pgbench: connection refused'))
    entry = judged(record(value))
    assert entry['evidence']['load_tps'] is None and entry['evidence']['load_error'] == 'pgbench: connection refused'
    text = _report.render_markdown([entry], {}, generated_at='now')
    row = next(line for line in text.splitlines() if line.startswith('| region_bandwidth | lab-1 | lab-3 |'))
    assert row.split('|')[5].strip() == '\\-'  # no figure (Markdown-escaped dash)


@pytest.mark.parametrize('lags_kib, passed', [([0, 30, 60, 90, 120, 150, 180, 200], True), ([0, 20, 40, 60, 80, 100], False)])
def test_the_default_growth_bar_is_128_kib(lags_kib, passed):
    value = fault()
    del value['min_growth_bytes']
    entry = judged(record(value, series=window(lags_kib)))
    assert (entry['status'] == 'passed') is passed, entry['reasons']
    assert entry['evidence']['min_growth_bytes'] == 128 * KIB
    if not passed:
        assert any('less than 131072' in r for r in entry['reasons'])


def test_a_replica_back_before_the_heal_returned_caught_up_in_0_s():
    entry = judged(record(fault(catch=(1130, 0, 0, 0), heal_ended_at=T0 + 14.5)))
    assert entry['evidence']['replicas']['lab-3']['catchup_s'] == 0.0


def test_a_low_lag_before_the_heal_began_is_no_catch_up():
    # Only the sample before the heal began is under the threshold; after the heal the lag stays high.
    entry = judged(record(fault(catch=(0, 900, 900, 900))))
    assert entry['status'] == 'failed'
    assert entry['evidence']['replicas']['lab-3']['catchup_s'] is None


def test_the_fault_of_inject_alone_is_judged_by_its_lag_only():
    # chaos_compose runs tasks/inject.yml only: no heal or catch-up facts (the key is absent), the lag still counts.
    value = fault()
    for key in ('catchup', 'heal', 'heal_started_at', 'heal_ended_at', 'load'):
        del value[key]
    assert judged(record(value))['status'] == 'passed'
    assert judged(record(value, series=window([0, 5, 10])))['status'] == 'failed'


# --- review (hostile reviewer, session 14) ------------------------------------------------------------------------

def test_twins_are_told_apart_by_their_own_address_not_by_a_twin_s_lag():
    # Review: two replicas with the same application_name are keyed name@client_addr (inet text: addr/32). The rule
    # took the first twin's lag for both, so lab-3, whose lag never grew (its traffic not shaped), passed on lab-2's.
    twins = {'walreceiver@198.18.0.12/32': None, 'walreceiver@198.18.0.13/32': None}
    value = fault(replicas=[['lab-2', 'walreceiver', '198.18.0.12'], ['lab-3', 'walreceiver', '198.18.0.13']])
    value['catchup'] = [dict(s, lag_bytes=dict(twins, **{'walreceiver@198.18.0.12/32': s['lag_bytes']['lab-3'],
                                                         'walreceiver@198.18.0.13/32': 0}))
                        for s in value['catchup']]
    series = [dict(s, lag_bytes=dict(twins, **{'walreceiver@198.18.0.12/32': s['lag_bytes']['lab-3'],
                                               'walreceiver@198.18.0.13/32': 0})) for s in window(GROWING)]
    raw = record(value, series=series)
    raw['converge_results'] = [dict(item=h, history=dict(rows=10, digest=DIGEST)) for h in ('lab-2', 'lab-3')]
    entry = judged(raw)
    assert entry['status'] == 'failed'
    assert any('the replay lag of lab-3 grew by 0 bytes' in r for r in entry['reasons']), entry['reasons']
    assert not any('lab-2 grew' in r for r in entry['reasons'])
    assert entry['evidence']['replicas']['lab-2']['max_lag_bytes'] == 1130 * KIB
    assert entry['evidence']['replicas']['lab-3']['max_lag_bytes'] == 0


def test_a_twin_without_its_own_address_is_not_read():
    value = fault(replicas=[['lab-3', 'walreceiver', '198.18.0.13']])
    series = [dict(s, lag_bytes={'walreceiver@198.18.0.12/32': s['lag_bytes']['lab-3'], 'walreceiver@198.18.0.14/32': 0})
              for s in window(GROWING)]
    entry = judged(record(value, series=series))
    assert any("no monitor sample of the window gives lab-3's replay lag" in r and '198.18.0.13' in r
               for r in entry['reasons']), entry['reasons']


@pytest.mark.parametrize('converge_results', [[], [dict(item='lab-2', history=dict(rows=10, digest=DIGEST))]])
def test_a_replica_whose_history_was_never_compared_fails(converge_results):
    # Review: with no convergence result for the throttled replica (finish's converge_hosts empty or other hosts),
    # the history equality after the heal was never checked, and the rule passed.
    raw = record(fault())
    raw['converge_results'] = converge_results
    entry = judged(raw)
    assert entry['status'] == 'failed'
    assert any("the pggit.history of lab-3 was not compared with the primary's" in r for r in entry['reasons'])


def test_the_catchup_time_counts_from_where_the_lag_stayed_under_the_threshold():
    # Review: a lag under the threshold for a moment, then behind again, then back: the catch-up is the second time.
    # Samples at +13.75 (40 KiB), +14.0 (900), +14.25 (40), +14.5 (0); the heal ended at +14.2.
    entry = judged(record(fault(catch=(1130, 40, 900, 40, 0))))
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['replicas']['lab-3']['catchup_s'] == pytest.approx(0.05)


def test_a_sample_without_the_replica_after_the_heal_is_no_catch_up():
    # Disconnected (no row in pg_stat_replication) is not zero lag: the catch-up counts from the sample after it.
    value = fault(catch=(1130, 40, 0, 0, 0))
    value['catchup'][2]['lag_bytes'] = {'lab-2': 0}
    entry = judged(record(value))
    # +13.75 40 KiB, +14.0 no row, +14.25 0: from +14.25 on, 0.05 s after the heal ended at +14.2.
    assert entry['evidence']['replicas']['lab-3']['catchup_s'] == pytest.approx(0.05)


def test_window_samples_without_the_replica_are_counted():
    series = window(GROWING)
    for s in series[3:5]:
        s['lag_bytes'] = {}
    entry = judged(record(fault(), series=series))
    replica = entry['evidence']['replicas']['lab-3']
    assert replica['missing_samples'] == 2 and len(replica['lag_series']) == 8


def test_the_bandwidth_code_names_no_variable_underscore():
    # ansible-test sanity (pylint disallowed-name) refuses a variable named _ .
    import ast
    import inspect
    for function in (_report._lag_of, _report.lag_growth, _report._caught_up_from, _report._bandwidth_throttled,
                     _report._lag_series_text, _report._bandwidth_table):
        tree = ast.parse(inspect.getsource(function))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == '_'], function.__name__


def test_a_burst_of_lag_that_falls_back_while_throttled_is_no_throttle():
    # Review: a burst of WAL (pgbench -i on a fresh database, full-page writes) shows a lag spike on an unthrottled
    # link too, replayed at once; the throttle is still on at the window's end, so its backlog must still be there.
    entry = judged(record(fault(), series=window([0, 900, 30, 10, 0, 20, 10, 0, 10, 20])))
    assert entry['status'] == 'failed'
    assert any('the replay lag of lab-3 rose by 921600 bytes but at the end of the window' in r for r in entry['reasons'])
    assert entry['evidence']['replicas']['lab-3']['held_bytes'] == 20 * KIB


def test_lag_held_is_the_last_sample_over_the_lowest():
    assert _report.lag_held([]) == 0
    assert _report.lag_held([(0, 5), (1, 900), (2, 1), (3, 3)]) == 2
    assert _report.lag_held([(0, 3194352), (1, 17484208), (7, 18077520)]) == 18077520 - 3194352
