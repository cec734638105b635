"""chaos_window_latency: a workload collected after the revert is judged on the DDL that ended by the revert's start."""
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.filter.chaos_window_latency import FilterModule, chaos_window_latency

CUT = 1795800000.0


def test_only_acknowledged_ddl_that_ended_by_the_cutoff_count():
    workload = {'latency_ms': {'p50': 5.0}, 'op_times': [
        [CUT - 2.0, 300.0, 'ok'], [CUT - 1.0, 400.0, 'ok'], [CUT - 0.5, 600.0, 'ok'],  # the last one ends after the cut
        [CUT - 1.5, 900.0, 'fail'], [CUT - 1.2, 950.0, 'unknown'],  # no latency of an acknowledged DDL
        [CUT + 0.1, 5.0, 'ok'], [CUT + 0.2, 5.0, 'ok'],
        'junk', [CUT - 3.0, None, 'ok'], [None, 3.0, 'ok'], [CUT - 3.0]]}
    out = chaos_window_latency(workload, CUT)
    assert out['latency_ms'] == {'p50': 300.0, 'p95': 400.0, 'p99': 400.0, 'max': 400.0}
    assert out['latency_ms_whole_run'] == {'p50': 5.0} and out['latency_cutoff'] == CUT
    assert out['latency_ops_after_cutoff'] == 3
    assert out['failed_ops_by_cutoff'] == 2  # the fail and the unknown, both ended by the cut
    assert out['open_at_cutoff_ms'] == 500.0  # the 600 ms DDL had run 500 ms when the cut came
    assert workload['latency_ms'] == {'p50': 5.0}  # the input is not changed


def test_nothing_before_the_cutoff_leaves_no_figures():
    out = chaos_window_latency({'op_times': [[CUT + 1, 5.0, 'ok']], 'latency_ms': {'p50': 5.0}}, str(CUT))
    assert out['latency_ms'] == {'p50': None, 'p95': None, 'p99': None, 'max': None} and out['open_at_cutoff_ms'] is None


def test_what_cannot_be_cut_is_returned_as_it_is():
    for workload, cutoff in (({'latency_ms': {'p50': 5.0}}, CUT), ({'op_times': 'x'}, CUT), (None, CUT), ('omit', CUT),
                             ({'op_times': []}, None), ({'op_times': []}, 'later'), ({'op_times': []}, True)):
        assert chaos_window_latency(workload, cutoff) is workload, (workload, cutoff)


def test_the_filter_is_registered():
    assert FilterModule().filters()['chaos_window_latency'] is chaos_window_latency
