"""The failover verdicts: judged from raw facts (leaders, timelines, the multi-host workload's server log, the
cluster after the heal), with RTO and RPO in the report entry and the Markdown report."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

D = 'aa' * 16
SETTINGS = dict(ttl=10, loop_wait=2, retry_timeout=3, synchronous_mode=True, synchronous_node_count=2,
                maximum_lag_on_failover=1048576, postgresql=dict(use_pg_rewind=True))


def member(name, host, role='replica', state='streaming', timeline=1):
    return dict(name=name, host=host, port=5432, role=role, state=state, timeline=timeline, lag=0)


BEFORE = dict(leader='lab-1', timeline=1, sync_standbys=['lab-2', 'lab-3'], settings=SETTINGS,
              members=[member('lab-1', '198.18.0.11', 'leader', 'running'), member('lab-2', '198.18.0.12', 'sync_standby'),
                       member('lab-3', '198.18.0.13', 'sync_standby')])
DURING = dict(leader='lab-2', timeline=2, members=[member('lab-2', '198.18.0.12', 'leader', 'running', 2),
                                                   member('lab-3', '198.18.0.13', 'sync_standby', 'streaming', 2)])
AFTER = dict(leader='lab-2', timeline=2, history=[[1, 50331808, 'no recovery target specified', '2026-11-28T00:00:00+00:00', 'lab-2']],
             members=[member('lab-1', '198.18.0.11', 'sync_standby', 'streaming', 2),
                      member('lab-2', '198.18.0.12', 'leader', 'running', 2),
                      member('lab-3', '198.18.0.13', 'sync_standby', 'streaming', 2)])
OLD, NEW = '198.18.0.11:5432', '198.18.0.12:5432'
OPS = [['r_1', 'ok', OLD, 99.0, 99.1, True], ['r_2', 'unknown', OLD, 100.2, 104.0, False],
       ['r_3', 'fail', '', 104.5, 107.0, False], ['r_4', 'ok', NEW, 108.0, 108.4, True], ['r_5', 'ok', NEW, 108.5, 108.6, True]]


def fault(**overrides):
    facts = dict(ha='patroni', fault_at=100.0, heal_at=130.0, failover_at=107.5, rejoined_at=141.0,
                 rejoin_method='pg_rewind', lost=['lab-1'],
                 regions={'lab-1': 'region_a', 'lab-2': 'region_b', 'lab-3': 'region_b'},
                 before=copy.deepcopy(BEFORE), failover=copy.deepcopy(DURING), after=copy.deepcopy(AFTER),
                 history=dict((n, dict(rows=40, digest=D)) for n in ('lab-1', 'lab-2', 'lab-3')),
                 synchronous=True, frozen=[])
    facts.update(overrides)
    return facts


def workload(ops=None, lost=()):
    ops = OPS if ops is None else ops
    ok = sum(1 for o in ops if o[1] == 'ok')
    return dict(changed=True, reconnects=2, errors={}, latency_ms={},
                check=dict(ops=len(ops), ok=ok, failed=1, unknown=1, tracked=ok, lost=list(lost), duplicated=[],
                           unexpected=[], phantom=list(lost), valid=not lost),
                servers=dict(observed_on=NEW, hosts=['198.18.0.11', '198.18.0.12', '198.18.0.13'],
                             target_session_attrs='read-write', ops=ops))


def raw(experiment='primary_failover', **overrides):
    probe = dict(healthy=True, checks=[], failed_checks=[])
    record = dict(experiment=experiment, host='lab-1', experiment_id='e1', fault=fault(), workload=workload(),
                  steady_state=dict(before=probe, during={}, after=dict(probe, history=dict(rows=40, digest=D))),
                  revert_results=[dict(item='lab-1', reverted=[dict(id='host--1', result='reverted')], failures=[])],
                  parameters={}, timings={})
    record.update(overrides)
    return record


def judged(**overrides):
    entry = _report.judge(raw(**overrides))
    assert (entry['status'] == 'passed') == (entry['reasons'] == []), entry
    return entry


def test_a_clean_primary_failover_passes_with_its_figures_in_the_entry():
    entry = judged()
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['evidence']['fault_check'] == 'failover'
    assert (entry['old_leader'], entry['new_leader']) == ('lab-1', 'lab-2')
    assert entry['rto_s'] == 8.4 and entry['rpo_lost_ddl'] == 0 and entry['write_pause_s'] == 9.3
    assert entry['pg_timeline'] == dict(before=1, after=2, final=2)
    assert entry['rejoin_s'] == 11.0 and entry['rejoin_method'] == 'pg_rewind' and entry['ha_settings'] == SETTINGS
    assert entry['failover_s'] == 7.5
    assert 'inject_start' in entry['timeline'], "the experiment's own timeline is kept"


def test_no_leader_change_fails():
    entry = judged(fault=fault(failover=dict(DURING, leader='lab-1')))
    assert 'the failover did not happen: lab-1 still led after the fault' in entry['reasons']
    assert judged(fault=fault(failover={}))['status'] == 'failed'


def test_the_new_leader_must_have_been_a_synchronous_standby_in_synchronous_mode():
    entry = judged(fault=fault(before=dict(BEFORE, sync_standbys=['lab-3'])))
    assert any('was not a synchronous standby' in r for r in entry['reasons'])


def test_region_failover_needs_the_new_leader_outside_the_lost_region():
    regions = {'lab-1': 'region_a', 'lab-2': 'region_a', 'lab-3': 'region_b'}
    entry = judged(experiment='region_failover', fault=fault(regions=regions, lost=['lab-1', 'lab-2']))
    assert any('is in the lost region (region_a)' in r for r in entry['reasons'])
    assert judged(experiment='region_failover', fault=fault(lost=['lab-1']))['status'] == 'passed'


def test_the_timeline_must_go_up():
    entry = judged(fault=fault(failover=dict(DURING, timeline=1)))
    assert 'the timeline did not go up with the failover (1 before, 1 after)' in entry['reasons']


def test_without_a_ddl_acknowledged_by_the_new_leader_there_is_no_rto():
    ops = [o for o in OPS if o[2] != NEW]
    entry = judged(workload=workload(ops))
    assert entry['rto_s'] is None and any('acknowledged no tracked DDL' in r for r in entry['reasons'])


def test_a_one_host_workload_cannot_measure_rto():
    entry = judged(workload=dict(workload(), servers=None))
    assert any('RTO and RPO cannot be measured' in r for r in entry['reasons'])


LOSS = [['r_1', 'ok', OLD, 99.0, 99.1, False]] + OPS[1:]


def test_a_lost_acknowledged_ddl_fails_in_synchronous_mode_and_is_named():
    entry = judged(workload=workload(LOSS, lost=['r_1']))
    assert entry['rpo_lost_ddl'] == 1
    assert any('1 DDL acknowledged before the fault are missing on the new leader (RPO must be 0 in synchronous mode): r_1'
               == r for r in entry['reasons'])


def test_asynchronous_replication_counts_the_loss_by_token_and_does_not_fail_for_it():
    entry = judged(workload=workload(LOSS, lost=['r_1']), fault=fault(synchronous=False, ha='none'),
                   experiment='manual_failover')
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['rpo_lost_ddl'] == 1 and entry['evidence']['accounting']['rpo_lost'][0]['token'] == 'r_1'
    row = _report.render_markdown([entry], {}).split('## Failover')[1]
    assert '| 1 |' in row  # the RPO column counts it


def test_a_switchover_loses_nothing_whatever_the_mode():
    entry = judged(experiment='switchover', workload=workload(LOSS, lost=['r_1']), fault=fault(synchronous=False))
    assert any('RPO must be 0 in a switchover' in r for r in entry['reasons'])


@pytest.mark.parametrize('after, reason', [
    (dict(AFTER, members=[dict(m, role='leader') for m in AFTER['members'][:2]] + AFTER['members'][2:]),
     'after the heal 2 leaders (lab-1, lab-2), not exactly one'),
    (dict(AFTER, members=[dict(AFTER['members'][0], state='starting')] + AFTER['members'][1:]),
     'after the heal not streaming: lab-1 (sync_standby starting)'),
    (dict(AFTER, members=AFTER['members'][1:]), 'the old leader lab-1 is not a member after the heal'),
    ({}, 'the cluster after the heal was not read'),
])
def test_after_the_heal_one_leader_and_every_member_streaming(after, reason):
    assert reason in judged(fault=fault(after=after))['reasons']


def test_history_must_be_equal_on_every_member():
    history = dict((n, dict(rows=40, digest=D)) for n in ('lab-1', 'lab-2'))
    history['lab-3'] = dict(rows=39, digest='bb' * 16)
    reasons = judged(fault=fault(history=history))['reasons']
    assert 'after the heal pggit.history differs between members: lab-1 40 rows, lab-2 40 rows, lab-3 39 rows' in reasons
    reasons = judged(fault=fault(history={'lab-2': dict(rows=40, digest=D)}))['reasons']
    assert 'after the heal the pggit.history digest of lab-1, lab-3 was not read' in reasons


def test_a_cgroup_left_frozen_fails():
    assert 'cgroups still frozen after the heal: /sys/fs/cgroup/lab-1' in judged(
        fault=fault(frozen=['/sys/fs/cgroup/lab-1']))['reasons']


def test_manual_failback_must_end_with_the_original_primary():
    # The role reads ``after`` once the old primary rejoined (the new one still leads) and ``final`` after the failback.
    final = dict(AFTER, leader='lab-1', timeline=3,
                 members=[member('lab-1', '198.18.0.11', 'primary', 'running', 3),
                          member('lab-2', '198.18.0.12', 'replica', 'streaming', 3),
                          member('lab-3', '198.18.0.13', 'replica', 'streaming', 3)])
    manual = fault(ha='none', synchronous=False, failback=True, final=final, manual=dict(promoted='lab-2'))
    entry = judged(experiment='manual_failover', fault=manual)
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['pg_timeline'] == dict(before=1, after=2, final=3)
    wrong = fault(ha='none', synchronous=False, failback=True, final=dict(final, leader='lab-2'), manual=dict(promoted='lab-2'))
    assert 'after the failback lab-2 leads, not the original leader lab-1' in judged(
        experiment='manual_failover', fault=wrong)['reasons']


@pytest.mark.parametrize('final', [None, {}, dict(leader=None, members=[])])
def test_a_failback_asked_for_and_never_read_fails(final):
    # Review: the role passed failback false, and an unread final state was not judged: a cluster left off its
    # declared primary passed without a word.
    facts = fault(failback=True) if final is None else fault(failback=True, final=final)
    assert 'the failback was asked for, but the cluster after it was not read: lab-1 may not lead again' in judged(
        fault=facts)['reasons']
    assert judged(fault=fault(failback=False))['status'] == 'passed'


def test_every_declared_member_must_be_back_with_its_history():
    # Review: a region member that never came back was absent from ``after`` and its history digest was not asked for.
    regions = {'lab-1': 'region_a', 'lab-2': 'region_b', 'lab-3': 'region_b', 'lab-4': 'region_a'}
    entry = judged(fault=fault(regions=regions))
    assert 'after the heal lab-4 not a member: every member must be back' in entry['reasons']
    assert 'after the heal the pggit.history digest of lab-4 was not read' in entry['reasons']


def test_no_rejoin_time_while_the_old_leader_is_not_streaming():
    # Review: the role notes rejoined_at when its wait ends, met or not: a timed-out wait gave a made-up rejoin_s.
    after = dict(AFTER, members=[dict(AFTER['members'][0], state='stopped')] + AFTER['members'][1:])
    entry = judged(fault=fault(after=after))
    assert entry['rejoin_s'] is None and entry['status'] == 'failed'
    assert judged(fault=fault(after=dict(AFTER, members=AFTER['members'][1:])))['rejoin_s'] is None
    assert judged()['rejoin_s'] == 11.0


def test_patroni_timeline_history_must_show_the_switch_to_the_new_leader():
    assert "the timeline history after the heal was not read (Patroni's GET /history)" in judged(
        fault=fault(after=dict(AFTER, history=None)))['reasons']
    old = [[0, 100, 'bootstrap', '2026-11-27T00:00:00+00:00', 'lab-1']]
    assert any(r.startswith('the timeline history after the heal does not show the switch from timeline 1 to lab-2')
               for r in judged(fault=fault(after=dict(AFTER, history=old)))['reasons'])
    other = [[1, 100, 'no recovery target specified', '2026-11-28T00:00:00+00:00', 'lab-3']]
    assert judged(fault=fault(after=dict(AFTER, history=other)))['status'] == 'failed'


def test_a_truncated_server_log_measures_no_rpo():
    # Review: the server log keeps at most OP_TIMES_MAX DDL; RPO over the first part of a long run is not the RPO.
    load = workload()
    load['check'] = dict(load['check'], ops=len(OPS) + 1)
    assert 'RTO and RPO cannot be measured: the server log holds 5 of the 6 DDL issued' in judged(workload=load)['reasons']


def test_the_markdown_report_has_a_failover_table():
    entry = judged()
    md = _report.render_markdown([entry], {'playbook': 'chaos.yml'})
    assert '## Failover' in md
    row = [line for line in md.split('## Failover')[1].splitlines() if line.startswith('| primary_failover')][0]
    assert '| lab-1 | lab-2 | 1 → 2 | 8.400 | 0 | 9.300 | 11.000 | pg_rewind |' in row
    assert 'ttl=10, loop_wait=2, retry_timeout=3, synchronous_mode=True' in row and 'use_pg_rewind=True' in row
    assert '## Failover' not in _report.render_markdown([], {})


def test_the_failback_must_end_with_the_original_leader_and_every_member_streaming():
    final = dict(AFTER, leader='lab-1', timeline=3,
                 members=[member('lab-1', '198.18.0.11', 'leader', 'running', 3),
                          member('lab-2', '198.18.0.12', 'sync_standby', 'streaming', 3),
                          member('lab-3', '198.18.0.13', 'sync_standby', 'streaming', 3)])
    entry = judged(fault=fault(final=final))
    assert entry['status'] == 'passed' and entry['pg_timeline']['final'] == 3
    stuck = dict(final, leader='lab-2', members=[dict(m, state='stopped') if m['name'] == 'lab-3' else m
                                                 for m in final['members']])
    reasons = judged(fault=fault(final=stuck))['reasons']
    assert 'after the failback lab-2 leads, not the original leader lab-1' in reasons
    assert 'after the failback not streaming: lab-3 (sync_standby stopped)' in reasons


def test_rpo_needs_the_new_leaders_catalog():
    # A thawed old leader still accepts a read-write session for a moment: a final check that read it is no RPO.
    entry = judged(workload=dict(workload(), servers=dict(workload()['servers'], observed_on=OLD)))
    assert "RPO cannot be measured: the workload's final check read 198.18.0.11:5432, not the new leader lab-2 " \
           "(198.18.0.12:5432)" in entry['reasons']


def test_a_crashed_leader_or_a_replica_that_is_only_running_is_not_back():
    # Patroni 4 says running for a replica that is up but not streaming, and crashed for a leader that failed.
    crashed = dict(AFTER, members=[member('lab-1', '198.18.0.11', 'leader', 'crashed', 2),
                                   member('lab-2', '198.18.0.12', 'replica', 'running', 2),
                                   member('lab-3', '198.18.0.13', 'replica', 'streaming', 2)])
    reasons = judged(fault=fault(after=crashed))['reasons']
    assert 'after the heal the leader is not running: lab-1 (crashed)' in reasons
    assert 'after the heal not streaming: lab-2 (replica running)' in reasons
    # Patroni 3.0: the role says running counts.
    assert not any('not streaming' in r for r in judged(fault=fault(after=crashed, replica_states=['streaming', 'running']))['reasons'])
    final = dict(crashed, leader='lab-1')
    assert 'after the failback not streaming: lab-1 (leader crashed), lab-2 (replica running)' in judged(
        fault=fault(final=final))['reasons']


def test_rto_and_rpo_use_the_fault_time_on_the_clients_clock():
    # Review: the fault time was the controller's clock, the DDL times the client host's: a controller 100 s behind
    # made the RTO 108.4 s and every DDL "before the fault". The role now reads the client's clock at the fault.
    shifted = [[o[0], o[1], o[2], o[3] + 100, o[4] + 100, o[5]] for o in LOSS]
    entry = judged(workload=workload(shifted, lost=['r_1']), fault=fault(fault_at_client=200.0))
    assert entry['rto_s'] == 8.4 and entry['rpo_lost_ddl'] == 1
    assert entry['failover_s'] == 7.5  # controller times stay with the controller's clock
    # Without the client's reading the controller's time is used, as before (the lab shares one clock).
    assert judged()['rto_s'] == 8.4


def test_the_report_says_who_leads_at_the_end():
    # Review: without a failback the cluster is left on the new leader; the report did not say so.
    entry = judged(fault=fault(failback=False))
    assert entry['leader_at_end'] == 'lab-2'
    assert 'lab-2 (not the leader before: no failback) |' in _report.render_markdown([entry], {})
    final = dict(AFTER, leader='lab-1', timeline=3,
                 members=[member('lab-1', '198.18.0.11', 'leader', 'running', 3),
                          member('lab-2', '198.18.0.12', 'sync_standby', 'streaming', 3),
                          member('lab-3', '198.18.0.13', 'sync_standby', 'streaming', 3)])
    entry = judged(fault=fault(failback=True, final=final))
    assert entry['status'] == 'passed' and entry['leader_at_end'] == 'lab-1'
    assert '| lab-1 |' in _report.render_markdown([entry], {}).split('## Failover')[1].splitlines()[4][-10:]


def test_an_outcome_not_resolved_on_the_new_leader_fails():
    # Review: unknown/maybe outcomes with no catalog answer (and ok ones) were left out of the verdict silently.
    ops = [['r_1', 'ok', OLD, 99.0, 99.1, None], ['r_2', 'unknown', OLD, 100.2, 104.0, None]] + OPS[2:]
    reasons = judged(workload=workload(ops))['reasons']
    assert "2 DDL were not resolved against the new leader's catalog: r_2, r_1" in reasons
