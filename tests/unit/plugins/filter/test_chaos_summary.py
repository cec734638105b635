"""pggit_chaos_summary: the counts AWX workflows branch on, from the verdicts' own statuses."""
from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.pggit.chaos.plugins.filter.chaos_summary import FilterModule, chaos_summary


def entry(experiment, host, status, **extra):
    return dict(experiment=experiment, host=host, status=status, reasons=['why'] if status != 'passed' else [], **extra)


def test_counts_every_host_in_run_order():
    per_host = [
        [entry('trigger_failure', 'lab-1', 'passed'), entry('kill_connections', 'lab-1', 'failed')],
        [],  # a host that ran nothing (the witness, localhost)
        [entry('trigger_failure', 'lab-2', 'aborted'), entry('clock_skew', 'lab-2', 'skipped')],
    ]
    summary = chaos_summary(per_host)
    assert {k: summary[k] for k in ('passed', 'failed', 'aborted', 'skipped', 'total', 'ok')} == \
        dict(passed=1, failed=1, aborted=1, skipped=1, total=4, ok=False)
    assert summary['experiments'] == [
        dict(experiment='trigger_failure', host='lab-1', status='passed'),
        dict(experiment='kill_connections', host='lab-1', status='failed'),
        dict(experiment='trigger_failure', host='lab-2', status='aborted'),
        dict(experiment='clock_skew', host='lab-2', status='skipped'),
    ]
    assert summary['failures'] == ['kill_connections@lab-1 failed: why', 'trigger_failure@lab-2 aborted: why']


@pytest.mark.parametrize('status, ok', [('passed', True), ('skipped', True), ('failed', False), ('aborted', False)])
def test_ok_only_when_nothing_failed_or_aborted(status, ok):
    assert chaos_summary([[entry('trigger_failure', 'h', status)]])['ok'] is ok


def test_nothing_ran_is_zero_not_an_error():
    assert chaos_summary([[], None]) == dict(passed=0, failed=0, aborted=0, skipped=0, breaking_points=0, total=0, ok=True,
                                             experiments=[], failures=[])
    assert chaos_summary([])['total'] == 0


def test_flat_list_and_mapping_of_hosts():
    flat = [entry('trigger_failure', 'a', 'passed'), entry('trigger_failure', 'b', 'failed')]
    assert chaos_summary(flat)['failed'] == 1
    assert chaos_summary({'a': flat[:1], 'b': flat[1:]})['passed'] == 1


@pytest.mark.parametrize('bad, words', [
    ([[entry('trigger_failure', 'h', 'maybe')]], "trigger_failure@h has status 'maybe'"),
    ([[dict(host='h', status='passed')]], 'no experiment or host'),
    ([[dict(experiment='x', status='passed')]], 'no experiment or host'),
    ('passed', 'expected a list'),
    (3, 'expected a list'),
])
def test_bad_entries_are_named(bad, words):
    with pytest.raises(AnsibleFilterError) as caught:
        chaos_summary(bad)
    assert words in str(caught.value)


def test_registered_under_its_name():
    assert FilterModule().filters()['chaos_summary'] is chaos_summary


def ramp_run(ramp_status='passed', break_status='failed', breaking_point=True):
    """A latency ramp of two steps on lab-1: 10 ms passed, 20 ms broke it; then the ramp's own entry."""
    steps = [entry('network_latency', 'lab-1', 'passed', experiment_id='s1'),
             entry('network_latency', 'lab-1', break_status, experiment_id='s2')]
    rows = [dict(level=10, status='passed', passed=True, experiment_id='s1'),
            dict(level=20, status=break_status, passed=False, experiment_id='s2')]
    ramp = entry('ramp(network_latency)', 'lab-1', ramp_status, experiment_id='ramp-s1',
                 ramp=dict(param='chaos_latency_ms', steps=rows, breaking_point=breaking_point))
    return steps + [ramp]


def test_the_step_where_a_ramp_broke_is_its_finding_not_a_failure():
    summary = chaos_summary([ramp_run()])
    assert {k: summary[k] for k in ('passed', 'failed', 'breaking_points', 'total', 'ok')} == \
        dict(passed=2, failed=0, breaking_points=1, total=3, ok=True)
    assert summary['experiments'][1] == dict(experiment='network_latency', host='lab-1', status='failed', ramp_breaking_point=True)
    assert summary['failures'] == []


@pytest.mark.parametrize('change', [dict(ramp_status='failed'), dict(break_status='aborted'), dict(breaking_point=False)])
def test_a_ramp_that_did_not_pass_or_an_aborted_step_still_fails_the_run(change):
    summary = chaos_summary([ramp_run(**change)])
    assert summary['ok'] is False
    assert summary['breaking_points'] == 0


def test_a_failure_elsewhere_is_never_taken_for_a_breaking_point():
    other = entry('network_latency', 'lab-2', 'failed', experiment_id='x9')
    summary = chaos_summary([ramp_run(), [other]])
    assert summary['failed'] == 1 and summary['breaking_points'] == 1 and summary['ok'] is False
