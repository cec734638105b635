"""chaos_revert_plan: finish reverts the fault first and the latency client's host after its workload has ended."""
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.filter.chaos_revert_plan import FilterModule, chaos_revert_plan

CLOSED = {'finished': 1, 'closed': {'result': 'reverted'}}


def test_the_client_waits_for_its_workload_when_the_window_ended_well():
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True)
    assert plan == {'now': ['lab-1'], 'later': ['localhost']}


def test_an_abort_or_an_error_stops_the_workload_with_everything_else():
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True, stop_workload=True)
    assert plan == {'now': ['lab-1', 'localhost'], 'later': []}


def test_a_collected_workload_or_none_reverts_every_host_at_once():
    assert chaos_revert_plan('lab-1', ['lab-2', 'lab-1'], 'localhost') == {'now': ['lab-1', 'lab-2', 'localhost'], 'later': []}
    assert chaos_revert_plan('lab-1') == {'now': ['lab-1'], 'later': []}


def test_a_workload_host_that_holds_a_fault_is_never_deferred():
    # The workload runs on the target (kill_connections) or on a fault host: the revert there stops it, as before.
    assert chaos_revert_plan('lab-1', workload_host='lab-1', workload_pending=True) == {'now': ['lab-1'], 'later': []}
    assert chaos_revert_plan('lab-1', ['lab-3'], 'lab-3', workload_pending=True) == {'now': ['lab-1', 'lab-3'], 'later': []}


def test_nothing_is_left_when_every_ended_run_closed_its_own_record():
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True, workload_results=[CLOSED, None, CLOSED])
    assert plan['later'] == []


def test_a_run_that_did_not_close_its_record_gets_the_revert():
    for other in ({'finished': 1, 'closed': {'result': 'failed'}}, {'failed': True, 'msg': 'timeout'}, {'skipped': True}):
        plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True, workload_results=[CLOSED, other])
        assert plan['later'] == ['localhost'], other
    plan = chaos_revert_plan('lab-1', workload_host='localhost', workload_pending=True, workload_results=[None])
    assert plan['later'] == ['localhost']


def test_the_filter_is_registered():
    assert FilterModule().filters()['chaos_revert_plan'] is chaos_revert_plan


def test_a_pending_workload_without_a_host_of_its_own_is_not_deferred():
    assert chaos_revert_plan('lab-1', workload_pending=True) == {'now': ['lab-1'], 'later': []}
    # Results given for a host that was not deferred change nothing.
    assert chaos_revert_plan('lab-1', workload_host='localhost', workload_results=[{'failed': True}]) == \
        {'now': ['lab-1', 'localhost'], 'later': []}
