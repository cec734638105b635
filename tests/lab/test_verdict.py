"""The verdict, end to end: a fault that left no mark fails its experiment with the reason, and is still reverted."""
from __future__ import annotations

from labtools import chaos_processes, ledger, load_report, run_playbook, trigger_modes


def test_kills_that_hit_nothing_fail_the_experiment(lab, primary, tmp_path):
    # No backend carries this application_name: the kill rounds terminate nothing.
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=kill_connections', 'chaos_duration=4',
                          'pggit_chaos_connections_application_name=pggit-chaos-nobody')
    assert result.returncode != 0, 'chaos_fail_on_failure must fail the host'
    entry = load_report(tmp_path)['entries'][0]
    assert entry['status'] == 'failed', entry['reasons']
    assert entry['reverted'] is True
    assert entry['evidence']['fault_check'] == 'connections' and entry['evidence']['terminated'] == 0
    assert len(entry['reasons']) == 1 and entry['reasons'][0].startswith('the fault did not happen: 0 backend(s) terminated'), \
        entry['reasons']
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}
    assert chaos_processes() == []
