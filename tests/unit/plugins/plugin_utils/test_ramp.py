"""chaos_ramp's levels and stop rule, chaos_compose's conflict check, and the ramp's charts (Markdown and HTML)."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _ramp
from ansible_collections.pggit.chaos.plugins.plugin_utils._html import render_html
from ansible_collections.pggit.chaos.plugins.plugin_utils._ramp import (RampError, compose_plan, ramp_entry, ramp_plan,
                                                                        ramp_state, window_p95)
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import (judge, render_json, render_junit, render_markdown, summarize,
                                                                          summary_line)

LATENCY = {'param': 'chaos_latency_ms', 'from': 10, 'to': 1000, 'factor': 2}


def step(status='passed', p95=50.0, reverted=True, n=0, reasons=()):
    t0 = 1000.0 + n * 100
    return dict(experiment='network_latency', experiment_id='network_latency-h-%d' % n, host='h', status=status,
                reasons=list(reasons), reverted=reverted, target_role='primary',
                evidence={'fault_check': 'latency', 'ddl_latency_ms_during': {'p50': p95 / 2, 'p95': p95}},
                timings={'window_s': 5.0, 'revert_s': 1.0, 'total_s': 20.0},
                timeline={'started_at': t0, 'finished_at': t0 + 20})


# --- plan --------------------------------------------------------------------

def test_factor_levels_end_at_to():
    plan = ramp_plan(LATENCY, ['network_latency'])
    assert plan['levels'] == [10, 20, 40, 80, 160, 320, 640, 1000]
    assert plan['experiment'] == 'network_latency' and plan['slo_ms'] is None


def test_json_text_and_step_levels_and_slo():
    plan = ramp_plan(json.dumps({'param': 'chaos_loss_pct', 'from': 0, 'to': 10, 'step': 2.5, 'slo_ms': 300}),
                     'network_latency', slo_ms=100)
    assert plan['levels'] == [0, 2.5, 5, 7.5, 10]
    assert plan['slo_ms'] == 300  # the ramp's own slo_ms wins over chaos_slo_ms


def test_chaos_slo_ms_is_used_and_integer_params_round():
    plan = ramp_plan({'param': 'chaos_ddl_workers', 'from': 1, 'to': 10, 'factor': 1.5}, 'load_spike', slo_ms='250')
    assert plan['slo_ms'] == 250.0
    assert plan['levels'] == [1, 2, 3, 5, 8, 10]
    assert all(isinstance(level, int) for level in plan['levels'])


@pytest.mark.parametrize('ramp, experiments, words', [
    (dict(LATENCY, param='chaos_nope'), ['network_latency'], ['chaos_nope', 'cannot be ramped']),
    (dict(LATENCY, **{'from': 100, 'to': 10}), ['network_latency'], ['from=100', 'to=10']),
    (dict(LATENCY, factor=1), ['network_latency'], ['factor', '1']),
    (dict(LATENCY, factor=0.5), ['network_latency'], ['factor', '0.5']),
    (LATENCY, ['network_latency', 'kill_connections'], ['exactly one experiment', 'network_latency, kill_connections']),
    (LATENCY, [], ['exactly one experiment', 'none']),
    (LATENCY, ['kill_connections'], ['chaos_latency_ms', 'not used by experiment kill_connections']),
    ({'param': 'chaos_memory_pct', 'from': 50, 'to': 90, 'step': 10}, ['disk_pressure'], ['chaos_memory_pct', 'disk_pressure']),
    (dict(LATENCY, step=5), ['network_latency'], ['exactly one of factor', 'both']),
    ({'param': 'chaos_latency_ms', 'from': 1, 'to': 5}, ['network_latency'], ['neither']),
    (dict(LATENCY, speed=3), ['network_latency'], ["'speed'"]),
    (dict(LATENCY, **{'from': 'fast'}), ['network_latency'], ['from', "'fast'"]),
    (dict(LATENCY, slo_ms=-1), ['network_latency'], ['slo_ms', '-1']),
    ({'param': 'chaos_loss_pct', 'from': 10, 'to': 150, 'step': 10}, ['packet_loss'], ['0..100', 'to=150']),
    ({'param': 'chaos_latency_ms', 'from': 1, 'to': 1000, 'step': 1}, ['network_latency'], ['more than 30 steps']),
    ('{not json', ['network_latency'], ['JSON', '{not json']),
])
def test_bad_ramp_input_names_the_option_and_value(ramp, experiments, words):
    with pytest.raises(RampError) as err:
        ramp_plan(ramp, experiments)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_a_preset_param_or_compose_is_refused():
    with pytest.raises(RampError, match="chaos_latency_ms, which is already set to '50'"):
        ramp_plan(LATENCY, ['network_latency'], preset={'chaos_latency_ms': '50', 'chaos_duration': 5})
    with pytest.raises(RampError, match='chaos_ramp and chaos_compose cannot be combined'):
        ramp_plan(LATENCY, ['network_latency'], preset={'chaos_compose': 'network_latency,kill_connections'})
    assert ramp_plan(LATENCY, ['network_latency'], preset={'chaos_ramp': LATENCY, 'chaos_slo_ms': 5})['levels'][0] == 10


# --- stop rule ---------------------------------------------------------------

def test_the_ramp_goes_on_while_steps_pass():
    plan = ramp_plan(dict(LATENCY, slo_ms=100), ['network_latency'])
    state = ramp_state(plan, [step(p95=30, n=0), step(p95=60, n=1)])
    assert not state['done'] and state['next_level'] == 40 and state['last_passing'] == 20 and state['first_failing'] is None


def test_the_ramp_stops_when_p95_passes_the_slo():
    plan = ramp_plan(dict(LATENCY, slo_ms=100), ['network_latency'])
    state = ramp_state(plan, [step(p95=30, n=0), step(p95=60, n=1), step(p95=140, n=2)])
    assert state['done'] and state['stopped'] and state['next_level'] is None
    assert (state['last_passing'], state['first_failing']) == (20, 40)
    assert 'p95 140.0 ms is above the 100 ms SLO' in state['stop_reason']


def test_a_p95_at_the_slo_still_passes():
    plan = ramp_plan(dict(LATENCY, slo_ms=100), ['network_latency'])
    assert not ramp_state(plan, [step(p95=100)])['stopped']


def test_the_ramp_stops_at_the_first_failed_verdict_without_an_slo():
    plan = ramp_plan(LATENCY, ['network_latency'])
    state = ramp_state(plan, [step(p95=5000, n=0), step(status='failed', reasons=['workload lost 1 operation(s)'], n=1)])
    assert (state['last_passing'], state['first_failing']) == (10, 20)
    assert state['stop_reason'] == 'verdict failed: workload lost 1 operation(s)'


def test_an_abort_ends_the_ramp_as_aborted():
    plan = ramp_plan(LATENCY, ['network_latency'])
    state = ramp_state(plan, [step(status='aborted', reasons=['aborted: probe down'])])
    assert state['done'] and state['aborted'] and state['last_passing'] is None and state['first_failing'] == 10
    entry = ramp_entry(plan, [step(status='aborted', reasons=['aborted: probe down'])], 'h')
    assert entry['status'] == 'aborted' and entry['aborted'] is True


def test_a_step_not_reverted_stops_the_ramp_and_fails_it():
    plan = ramp_plan(LATENCY, ['network_latency'])
    steps = [step(n=0), step(reverted=False, n=1)]
    assert ramp_state(plan, steps)['stop_reason'] == 'not confirmed reverted'
    entry = ramp_entry(plan, steps, 'h')
    assert entry['status'] == 'failed' and entry['reverted'] is False and 'chaos_latency_ms=20' in entry['reasons'][0]


def test_an_slo_with_no_measured_p95_breaks_rather_than_passes():
    plan = ramp_plan(dict(LATENCY, slo_ms=100), ['network_latency'])
    bare = dict(step(), evidence=None)
    assert window_p95(bare) is None
    assert 'cannot be checked' in ramp_state(plan, [bare])['stop_reason']


def test_a_ramp_that_never_breaks_is_done_at_its_last_level():
    plan = ramp_plan({'param': 'chaos_latency_ms', 'from': 10, 'to': 20, 'step': 10}, ['network_latency'])
    state = ramp_state(plan, [step(n=0), step(n=1)])
    assert state['done'] and not state['stopped'] and state['first_failing'] is None
    entry = ramp_entry(plan, [step(n=0), step(n=1)], 'h')
    assert entry['status'] == 'passed' and entry['ramp']['breaking_point'] is False
    assert 'no breaking point' in entry['ramp']['summary']


def test_window_p95_reads_the_load_figures_then_the_evidence_then_the_monitor():
    assert window_p95({'latency_ms': {'during': {'p95': 7}}, 'evidence': {'ddl_latency_ms_during': {'p95': 9}}}) == 7
    assert window_p95({'evidence': {'ddl_latency_ms_during': {'p95': 9}}}) == 9
    monitor = {'series': [{'t': 1, 'phase': 'before', 'ddl_p95_ms': 99}, {'t': 2, 'phase': 'window', 'ddl_p95_ms': 12},
                          {'t': 3, 'phase': 'window', 'ddl_p95_ms': 15}]}
    assert window_p95({'steady_state': {'during': {'monitor': monitor}}}) == 15
    assert window_p95({'monitor': monitor}) == 15


# --- the ramp entry and its charts ---------------------------------------------

def breaking_entry():
    plan = ramp_plan(dict(LATENCY, slo_ms=100), ['network_latency'])
    return ramp_entry(plan, [step(p95=30, n=0), step(p95=60, n=1), step(p95=140, n=2)], 'lab-1')


def test_the_ramp_entry_says_the_breaking_point():
    entry = breaking_entry()
    assert entry['experiment'] == 'ramp(network_latency)' and entry['status'] == 'passed' and entry['reverted'] is True
    ramp = entry['ramp']
    assert (ramp['last_passing'], ramp['first_failing'], ramp['breaking_point']) == (20, 40, True)
    assert [(r['level'], r['p95_ms'], r['passed']) for r in ramp['steps']] == [(10, 30, True), (20, 60, True), (40, 140, False)]
    assert entry['timings']['total_s'] == 220.0
    assert 'last passing 20, first failing 40 ms' in ramp['summary']


def test_markdown_chart_has_one_bar_per_step_and_the_breaking_point():
    text = render_markdown([breaking_entry()], {'playbook': 'chaos.yml'}, generated_at='now')
    section = text.split('## Ramp ramp(network_latency)@lab-1')[1]
    assert 'last passing 20, first failing 40 ms' in section
    bars = [line for line in section.splitlines() if re.match(r'^(10|20|40) ', line)]
    assert len(bars) == 3
    lengths = [line.count('#') for line in bars]
    # Scaled to the highest figure: 40 cells wide, one of which is the SLO mark.
    assert lengths[0] < lengths[1] < lengths[2] and lengths[2] == 39
    assert bars[2].endswith('BREAK: window DDL latency p95 140.0 ms is above the 100 ms SLO')
    assert all('|' in line for line in bars)  # the SLO mark


def test_markdown_chart_cannot_be_broken_out_of_by_a_reason():
    entry = breaking_entry()
    entry['ramp']['steps'][2]['stop_reason'] = 'verdict failed: ```\n# injected'
    text = render_markdown([entry], {}, generated_at='now')
    fenced = text.split('```text')[1].split('```')[0]
    assert '# injected' not in text.split('```text')[1].split('```')[1]
    assert "'''" in fenced


def test_html_chart_draws_each_step_with_its_outcome():
    page = render_html([breaking_entry()], {'playbook': 'chaos.yml'}, generated_at='now')
    svg = re.search(r'<svg class="chart" data-metric="ramp".*?</svg>', page).group(0)
    root = ET.fromstring(svg)
    bars = [e for e in root.iter() if e.get('class') == 'step']
    assert [(b.get('data-level'), b.get('data-passed')) for b in bars] == [('10', 'true'), ('20', 'true'), ('40', 'false')]
    heights = [float(b.get('height')) for b in bars]
    assert heights[0] < heights[1] < heights[2]
    assert any(e.get('class') == 'slo' for e in root.iter())
    assert 'data-last-passing="20" data-first-failing="40"' in page


def test_json_and_junit_stay_valid_with_ramp_steps_and_entry():
    entries = [step(n=0), step(n=1), breaking_entry()]
    document = json.loads(render_json(entries, {}, generated_at='now'))
    assert document['summary']['total'] == 3 and document['entries'][2]['ramp']['first_failing'] == 40
    root = ET.fromstring(render_junit(entries, {}, generated_at='now').split('?>', 1)[1])
    assert [c.get('classname') for c in root.iter('testcase')][-1] == 'pggit.chaos.ramp(network_latency)'


def test_a_step_whose_verdict_failed_is_the_ramps_finding_in_junit_and_the_summary():
    """A ramp that found its breaking point at a failed verdict passes; its failing step is no failure of the run."""
    plan = ramp_plan(LATENCY, ['network_latency'])
    steps = [step(n=0), step(status='failed', reasons=['lost 2 DDL'], n=1)]
    entries = steps + [ramp_entry(plan, steps, 'h')]
    assert entries[-1]['status'] == 'passed' and entries[-1]['ramp']['first_failing'] == 20
    summary = summarize(entries)
    assert (summary['failed'], summary['passed'], summary['breaking_points'], summary['total']) == (0, 2, 1, 3)
    assert summary_line(summary).endswith('1 ramp breaking point(s)')
    root = ET.fromstring(render_junit(entries, {}, generated_at='now').split('?>', 1)[1])
    assert root.get('failures') == '0'
    broke = list(root.iter('testcase'))[1]
    assert broke.find('failure') is None
    assert broke.find('properties/property').get('value') == 'lost 2 DDL'
    # The same step outside a ramp (no ramp entry) is a failure.
    assert summarize(steps)['failed'] == 1
    assert ET.fromstring(render_junit(steps, {}, generated_at='now').split('?>', 1)[1]).get('failures') == '1'


# --- compose -------------------------------------------------------------------

def everything(_role):
    return True


def test_compose_plan_names_members_roles_and_owned_objects():
    plan = compose_plan('network_latency, kill_connections', 'lab-1', has_inject=everything)
    assert plan['name'] == 'compose(network_latency+kill_connections)'
    assert plan['members'] == [
        {'experiment': 'network_latency', 'role': 'pggit.chaos.pggit_chaos_latency', 'owns': ['latency@lab-1', 'qdisc@lab-1']},
        {'experiment': 'kill_connections', 'role': 'pggit.chaos.pggit_chaos_connections', 'owns': ['backends@lab-1']}]


def test_the_shipped_latency_and_connections_roles_can_be_composed():
    assert len(compose_plan(['network_latency', 'kill_connections'], 'h')['members']) == 2


@pytest.mark.parametrize('members, words', [
    ('network_latency,packet_loss', ['network_latency and packet_loss both touch latency@lab-1']),
    ('kill_connections,connection_exhaustion', ['kill_connections and connection_exhaustion both touch backends@lab-1']),
    ('network_latency', ['at least two', "'network_latency'"]),
    ('network_latency,network_latency', ['network_latency more than once']),
    ('network_latency,trigger_failure', ['trigger_failure cannot be composed']),
])
def test_compose_refuses_bad_members_naming_them(members, words):
    with pytest.raises(RampError) as err:
        compose_plan(members, 'lab-1', has_inject=everything)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_compose_refuses_a_member_without_inject_tasks():
    with pytest.raises(RampError, match=r'load_spike has no tasks/inject.yml in its role \(pggit_chaos_load\)'):
        compose_plan('network_latency,load_spike', 'h', has_inject=lambda role: role != 'pggit_chaos_load')


def test_compose_refuses_other_experiments_in_chaos_experiments():
    with pytest.raises(RampError, match='chaos_experiments=disk_full'):
        compose_plan('network_latency,kill_connections', 'h', experiments='disk_full', has_inject=everything)
    assert compose_plan('network_latency,kill_connections', 'h', experiments=['kill_connections', 'network_latency'],
                        has_inject=everything)


def test_the_same_pair_on_two_hosts_does_not_conflict():
    assert compose_plan('network_latency,kill_connections', 'a', has_inject=everything)['members'][0]['owns'] == ['latency@a', 'qdisc@a']
    assert _ramp.COMPOSE_MEMBERS['packet_loss'][1] == _ramp.COMPOSE_MEMBERS['network_latency'][1]


# --- the composed verdict checks every member's own evidence ----------------------

def counters(chain, target, packets, rc=0):
    """One item of the compose role's "Read the packet counters" loop, as iptables -L -v -x -n prints it."""
    return {'pggit_chaos_compose_chain': chain, 'rc': rc, 'stdout': '\n'.join([
        'Chain %s (1 references)' % chain,
        '    pkts      bytes target     prot opt in     out     source               destination',
        '       0        0 RETURN     all  --  lo     *       0.0.0.0/0            0.0.0.0/0',
        '  %6d    99999 %-10s tcp  --  *      *       0.0.0.0/0            0.0.0.0/0   tcp dpt:5432' % (packets, target)])}


def composed_raw(kills_terminated=3, added_ms=150.0, reconnects=2, job_done=True):
    kill_job = {'ansible_job_id': 'j1.2', 'started': 1, 'finished': 0}
    jobs = [{'ansible_job_id': 'j1.2', 'finished': 1, 'terminated': [{'pid': p} for p in range(kills_terminated)]}] if job_done else []
    return dict(
        experiment='compose(network_latency+kill_connections)', experiment_id='compose-h-1', host='h',
        steady_state={'before': {'healthy': True}, 'during': {'healthy': True}, 'after': {'healthy': True}},
        fault={'members': [
            {'experiment': 'network_latency', 'fault': {'changed': True, 'method': 'nfqueue', 'chains': ['pc-1-in']},
             'owns': ['latency@h'], 'parameters': {'delay_ms': '100', 'loss_pct': '0'}},
            {'experiment': 'kill_connections', 'fault': kill_job, 'owns': ['backends@h'], 'parameters': {'rounds': 3}}],
            'jobs': jobs, 'counters': [counters('pc-1-in', 'NFQUEUE', 120)]},
        revert_results=[{'reverted': [{'name': 'a'}], 'failed': False, 'remaining': []}],
        workload={'check': {'ok': 10, 'lost': [], 'duplicated': [], 'unexpected': []}, 'reconnects': reconnects,
                  'latency_ms': {'p50': 10 + added_ms, 'p95': 300, 'max': 400}, 'errors': {}},
        workload_baseline={'latency_ms': {'p50': 10.0}},
        parameters={'members': ['network_latency', 'kill_connections']},
        timings={})


def test_a_composed_run_passes_when_every_member_left_its_mark():
    entry = judge(composed_raw())
    assert entry['evidence']['fault_check'] == 'compose', entry['reasons']
    members = entry['evidence']['members']
    assert members['network_latency']['added_p50_ms'] == 150.0 and members['network_latency']['fault_check'] == 'latency'
    assert members['kill_connections']['terminated'] == 3 and members['kill_connections']['owns'] == ['backends@h']
    assert not [r for r in entry['reasons'] if 'did not happen' in r], entry['reasons']


@pytest.mark.parametrize('raw, word', [
    (composed_raw(kills_terminated=0), 'kill_connections: the fault did not happen: 0 backend(s) terminated'),
    (composed_raw(added_ms=5.0), 'network_latency: the fault did not happen'),
    (composed_raw(job_done=False), 'kill_connections: its background fault (job j1.2) was never collected'),
])
def test_a_composed_run_fails_when_one_member_left_no_mark(raw, word):
    entry = judge(raw)
    assert entry['status'] == 'failed' and any(r.startswith(word) for r in entry['reasons']), entry['reasons']


def test_a_member_that_handed_over_no_fault_fails_the_run():
    raw = composed_raw()
    raw['fault']['members'] = raw['fault']['members'][:1]
    entry = judge(raw)
    assert any('kill_connections handed over no fault' in r for r in entry['reasons']), entry['reasons']


# --- review fixes (each test failed before its fix) ------------------------------

def test_a_skipped_step_ends_the_ramp_without_claiming_a_breaking_point():
    plan = ramp_plan(LATENCY, ['network_latency'])
    skipped = dict(step(n=1), status='skipped', reverted=None, skipped_reason='host not opted in', evidence=None)
    state = ramp_state(plan, [step(n=0), skipped])
    assert state['done'] and state['inconclusive'] and state['first_failing'] is None and state['last_passing'] == 10
    entry = ramp_entry(plan, [step(n=0), skipped], 'h')
    assert entry['status'] == 'failed' and entry['ramp']['breaking_point'] is False
    assert 'no breaking point found' in entry['ramp']['summary'] and 'host not opted in' in entry['reasons'][0]
    assert entry['reverted'] is True  # a skipped step injected nothing, so it has nothing to revert


def test_a_step_that_left_no_verdict_stops_the_ramp_and_never_lends_a_later_verdict():
    plan = ramp_plan(LATENCY, ['network_latency'])
    # Per step, the entries it appended: the second step left none (its role broke before finish).
    state = ramp_state(plan, [[step(n=0)], []])
    assert state['done'] and state['inconclusive'] and state['first_failing'] is None and state['last_passing'] == 10
    assert state['rows'][1]['level'] == 20 and state['rows'][1]['passed'] is False
    assert 'no verdict' in state['stop_reason'] and 'expected exactly one' in state['stop_reason']
    # Other experiments' entries in the same step are not its verdict; two of its own are not one verdict either.
    other = dict(step(n=1), experiment='kill_connections')
    assert ramp_state(plan, [[step(n=0)], [other]])['rows'][1]['status'] == 'missing'
    assert ramp_state(plan, [[step(n=0), step(n=1)]])['rows'][0]['status'] == 'missing'
    assert ramp_state(plan, [[other, step(n=0)]])['rows'][0]['passed'] is True


def test_an_entry_flagged_aborted_ends_the_ramp_as_aborted_whatever_its_status():
    plan = ramp_plan(LATENCY, ['network_latency'])
    state = ramp_state(plan, [dict(step(), status='failed', aborted=True, reasons=['probe down'])])
    assert state['done'] and state['aborted'] and state['first_failing'] == 10


def test_check_mode_plans_every_step_and_the_ramp_is_skipped():
    plan = ramp_plan({'param': 'chaos_latency_ms', 'from': 10, 'to': 20, 'step': 10}, ['network_latency'])
    planned = dict(step(), status='skipped', reverted=None, skipped_reason='check mode: planned only, nothing injected')
    assert not ramp_state(plan, [planned], check_mode=True)['done']
    entry = ramp_entry(plan, [planned, planned], 'h', check_mode=True)
    assert entry['status'] == 'skipped' and entry['ramp']['first_failing'] is None and entry['ramp']['last_passing'] is None


@pytest.mark.parametrize('ramp', [
    {'param': 'chaos_latency_ms', 'from': 10, 'to': 1000, 'step': 1e-300},
    {'param': 'chaos_latency_ms', 'from': 10, 'to': 1000, 'factor': 1.0000000001},
])
def test_a_ramp_that_barely_moves_is_refused_at_once(ramp):
    import signal

    def timeout(*args):
        raise AssertionError('ramp_plan did not return within 5 s')
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    try:
        with pytest.raises(RampError, match='more than 30 steps'):
            ramp_plan(ramp, ['network_latency'])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize('members, words', [
    ('load_spike,connection_exhaustion', ['load_spike and connection_exhaustion both touch connection_slots@lab-1']),
    ('region_bandwidth,network_latency', ['region_bandwidth and network_latency both touch qdisc@lab-1']),
    ('packet_loss,region_bandwidth', ['packet_loss and region_bandwidth both touch qdisc@lab-1']),
])
def test_compose_refuses_members_sharing_connection_slots_or_the_root_qdisc(members, words):
    with pytest.raises(RampError) as err:
        compose_plan(members, 'lab-1', has_inject=everything)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_the_issue_example_loss_with_load_spike_can_be_composed():
    plan = compose_plan('packet_loss,load_spike', 'h')
    assert [m['role'] for m in plan['members']] == ['pggit.chaos.pggit_chaos_latency', 'pggit.chaos.pggit_chaos_load']


def loss_load_raw(transactions=500, slowest=450.0, errors=None, members=('packet_loss', 'load_spike'), dropped=7, rc=0):
    job = {'ansible_job_id': 'j9.1', 'started': 1, 'finished': 0}
    # As pggit_chaos_load returns it (seen on the lab): its own "load" key holds the pgbench plan, not the run.
    pgbench = {'ansible_job_id': 'j9.1', 'finished': 1, 'changed': True, 'tps': transactions / 8.0,
               'load': {'argv': ['pgbench', '-c', '4'], 'database': 'pggit_chaos_load', 'initialised': True},
               'transactions': transactions, 'started_at': 100.0, 'ended_at': 108.0,
               'tps_series': [[1, 60.0]], 'latency_ms': {'p50': 3.0, 'p95': 9.0, 'p99': 12.0}}
    handed = {'packet_loss': {'experiment': 'packet_loss', 'fault': {'changed': True, 'method': 'iptables', 'chains': ['pc-2-in']},
                              'owns': ['latency@h'],
                              'parameters': {'delay_ms': '0', 'loss_pct': '10'}},
              'load_spike': {'experiment': 'load_spike', 'fault': job, 'owns': ['load@h'], 'parameters': {'clients': 4}},
              'kill_connections': {'experiment': 'kill_connections', 'fault': {'finished': 1, 'terminated': [{'pid': 1}]},
                                   'owns': ['backends@h'], 'parameters': {'rounds': 3}}}
    op_times = [[99.0 + i, 20.0, 'ok'] for i in range(12)]  # (started, ms, outcome): before, during and after pgbench
    return dict(
        experiment='compose(%s)' % '+'.join(members), experiment_id='compose-h-2', host='h',
        steady_state={'before': {'healthy': True}, 'during': {'healthy': True}, 'after': {'healthy': True}},
        fault={'members': [handed[m] for m in members], 'jobs': [pgbench], 'counters': [counters('pc-2-in', 'DROP', dropped, rc)]},
        revert_results=[{'reverted': [{'name': 'a'}], 'failed': False, 'remaining': []}],
        workload={'check': {'ok': 12, 'lost': [], 'duplicated': [], 'unexpected': []}, 'reconnects': 1, 'op_times': op_times,
                  'latency_ms': {'p50': 12.0, 'p95': 300, 'max': slowest}, 'errors': errors or {}},
        workload_baseline={'latency_ms': {'p50': 10.0}},
        parameters={'members': list(members)}, timings={})


def test_a_composed_load_spike_is_judged_from_its_own_collected_pgbench_run():
    entry = judge(loss_load_raw())
    assert not [r for r in entry['reasons'] if r.startswith('load_spike:')], entry['reasons']
    assert entry['evidence']['members']['load_spike']['transactions'] == 500
    idle = judge(loss_load_raw(transactions=0))
    assert any(r.startswith('load_spike: the fault did not happen') for r in idle['reasons']), idle['reasons']


def test_a_composed_loss_is_not_proven_by_errors_another_member_caused():
    # kill_connections made the only workload errors and no DDL was slowed: the loss left no mark of its own.
    entry = judge(loss_load_raw(slowest=40.0, errors={'OperationalError': 3}, members=('packet_loss', 'kill_connections')))
    assert any(r.startswith('packet_loss: the fault did not happen') for r in entry['reasons']), entry['reasons']
    # Alone with a member that makes no errors, the loss's errors still count.
    alone = judge(loss_load_raw(slowest=40.0, errors={'OperationalError': 3}))
    assert not [r for r in alone['reasons'] if r.startswith('packet_loss:')], alone['reasons']


def test_a_composed_loss_needs_its_own_drop_rule_to_have_dropped_packets():
    # The DDL was slow (the load's doing, say) but the loss's own DROP rule dropped nothing: not proven.
    entry = judge(loss_load_raw(dropped=0))
    assert any(r.startswith('packet_loss: the fault did not happen: its own DROP rule matched no packet') for r in entry['reasons']), \
        entry['reasons']
    assert entry['evidence']['members']['packet_loss']['own_packets'] == 0
    unread = judge(loss_load_raw(rc=1))
    assert any(r.startswith('packet_loss: cannot tell') and 'pc-2-in' in r for r in unread['reasons']), unread['reasons']
    assert judge(loss_load_raw())['evidence']['members']['packet_loss']['own_packets'] == 7


def test_a_composed_delay_needs_its_own_nfqueue_rule_to_have_queued_packets():
    raw = composed_raw()
    raw['fault']['counters'] = [counters('pc-1-in', 'NFQUEUE', 0)]
    entry = judge(raw)
    assert any(r.startswith('network_latency: the fault did not happen: its own NFQUEUE rule') for r in entry['reasons']), \
        entry['reasons']


@pytest.mark.parametrize('ramp, experiment', [
    ({'param': 'chaos_latency_ms', 'from': 0, 'to': 100, 'step': 50}, 'network_latency'),
    ({'param': 'chaos_loss_pct', 'from': 0, 'to': 20, 'step': 10}, 'packet_loss'),
])
def test_a_ramp_whose_first_level_injects_nothing_is_refused(ramp, experiment):
    with pytest.raises(RampError, match='%s=0 is no fault for %s' % (ramp['param'], experiment)):
        ramp_plan(ramp, [experiment])
    # The same level is a real fault where another parameter injects something (packet_loss's added delay 0).
    assert ramp_plan({'param': 'chaos_latency_ms', 'from': 0, 'to': 100, 'step': 50}, ['packet_loss'])['levels'][0] == 0
