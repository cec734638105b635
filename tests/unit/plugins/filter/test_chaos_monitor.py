"""The chaos_monitor filter: the window probe result with its series replaced by the experiment's monitor."""
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.filter.chaos_monitor import FilterModule, chaos_monitor

T0 = 1795800000.0


def probe(phase, *ts):
    return {'healthy': True, 'series': [dict(t=T0 + t, phase=phase, connections=1, history_rows=1, pggit_health='ok',
                                             probe_ms=1.0) for t in ts]}


def test_joins_before_window_after_and_adds_ddl_latency():
    during = chaos_monitor(probe('window', 1, 2), before=probe('before', -3), after=probe('after', 9),
                           workload={'op_times': [[T0 + 1.5, 200.0, 'ok']]})
    assert 'series' not in during and during['healthy'] is True
    monitor = during['monitor']
    assert [s['phase'] for s in monitor['series']] == ['before', 'window', 'window', 'after']
    assert monitor['series'][2]['ddl_p95_ms'] == 200.0 and 'ddl_p95_ms' not in monitor['series'][1]


def test_empty_or_odd_input_is_left_alone():
    assert chaos_monitor({}, before=probe('before', 1)) == {}
    assert chaos_monitor('not a result') == 'not a result'
    assert chaos_monitor({'healthy': False})['monitor'] is None
    assert FilterModule().filters()['chaos_monitor'] is chaos_monitor
