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
    assert chaos_summary([[], None]) == dict(passed=0, failed=0, aborted=0, skipped=0, total=0, ok=True, experiments=[], failures=[])
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
