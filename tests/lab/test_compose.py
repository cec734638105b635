"""chaos_compose on the lab: latency and kill_connections at once in one experiment; a conflicting pair is refused."""
from __future__ import annotations

import os

from labtools import chaos_processes, host_rules, ledger, load_report, run_playbook


def test_latency_and_kill_connections_composed_pass_with_both_faults_evidence(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_compose=network_latency,kill_connections', 'chaos_duration=5',
                          'pggit_chaos_compose_baseline_seconds=1.5')
    assert result.returncode == 0, result.stdout[-3000:]
    entries = load_report(tmp_path)['entries']
    # One experiment: one steady state, one workload, one exactly-once check.
    assert [e['experiment'] for e in entries] == ['compose(network_latency+kill_connections)']
    entry = entries[0]
    assert entry['status'] == 'passed', entry['reasons']
    assert entry['workload']['lost'] == [] and entry['workload']['duplicated'] == [] and entry['workload']['ok'] > 0
    members = entry['evidence']['members']
    assert entry['evidence']['fault_check'] == 'compose' and sorted(members) == ['kill_connections', 'network_latency']
    # Each member's own evidence: the DDL got slower by the delay, and backends were killed and reconnected.
    assert members['network_latency']['added_p50_ms'] >= 100
    assert members['network_latency']['own_packets'] > 0  # its own NFQUEUE rule queued the packets it delayed
    assert members['kill_connections']['terminated'] > 0 and members['kill_connections']['workload_reconnects'] > 0
    assert members['network_latency']['owns'] == ['latency@%s' % entry['host']]
    # Both faults reverted: the latency record undone, and nothing left on the host.
    assert entry['reverted'] is True and entry['revert']['failures'] == []
    assert any(name.startswith('latency-') for name in entry['revert']['reverted']), entry['revert']
    assert 'NFQUEUE' not in host_rules(primary)
    assert chaos_processes() == []
    assert ledger(primary) == []


def test_two_latency_faults_on_one_host_are_refused_before_anything_is_injected(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_compose=network_latency,packet_loss', 'chaos_duration=6')
    assert result.returncode != 0
    assert 'chaos_compose: network_latency and packet_loss both touch latency@' in result.stdout, result.stdout[-3000:]
    assert not os.path.exists(os.path.join(str(tmp_path), 'chaos-report.json'))
    assert ledger(primary) == [] and 'NFQUEUE' not in host_rules(primary) and chaos_processes() == []
