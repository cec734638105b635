"""region_bandwidth on the lab: the primary's link toward region_b throttled under tracked DDL and pgbench.

The proof is the fault's own evidence: the region_b replica's replay lag, sampled on the primary, grows in the
window; after the heal it catches up, no qdisc of ours is left and its pggit.history equals the primary's.
"""
from __future__ import annotations

import subprocess

from labtools import chaos_processes, ledger, load_report, query, run_playbook

OUR_HANDLE = '7a3c:'
HISTORY = 'SELECT count(*), max(id), md5(string_agg(id::text, \',\' ORDER BY id)) FROM pggit.history'


def qdiscs(host):
    return subprocess.run(['ip', 'netns', 'exec', host['pggit_lab_netns'], 'tc', 'qdisc', 'show'],
                          capture_output=True, text=True, check=True).stdout


def region_b(lab):
    return {name: h for name, h in lab.items() if h.get('pggit_region') == 'region_b' and h.get('pggit_lab_role') == 'replica'}


def test_region_bandwidth_lag_grows_then_catches_up(lab, primary, tmp_path):
    replicas = region_b(lab)
    assert replicas, 'the lab has no region_b replica (make lab LAB_HOSTS=3)'
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=region_bandwidth', 'chaos_duration=8',
                          'chaos_bandwidth_kbit=256')
    entry = load_report(tmp_path)['entries'][0]
    assert result.returncode == 0 and entry['status'] == 'passed', (entry['reasons'], result.stdout[-3000:])
    evidence = entry['evidence']
    assert evidence['fault_check'] == 'bandwidth' and evidence['rate_kbit'] == 256
    applied = [' '.join(cmd) for cmd in entry['fault']['throttle']['applied']]
    assert any('htb rate 256kbit' in cmd for cmd in applied), applied
    for name in replicas:
        replica = evidence['replicas'][name]
        series = [point[1] for point in replica['lag_series']]
        # The lag really grew during the window (a later sample above an earlier one by >= 256 KiB).
        assert len(series) >= 5, series
        assert max(series[i] - min(series[:i + 1]) for i in range(len(series))) >= 256 * 1024, series
        # ... and the backlog was still there at the window's end (the throttle still on), not a burst replayed at once.
        assert series[-1] - min(series) >= 256 * 1024 and replica['held_bytes'] == series[-1] - min(series), series
        assert replica['max_lag_bytes'] == max(series) >= 256 * 1024
        assert replica['lag_after_heal'] is not None and replica['lag_after_heal'] <= 64 * 1024
        assert replica['catchup_s'] is not None
        # Its history equals the primary's: in the verdict, and read again here.
        assert entry['convergence']['replicas'][name]['digest'] == entry['convergence']['primary']['digest']
        assert query(replicas[name], HISTORY) == query(primary, HISTORY)
    # The heal left nothing behind: no qdisc of ours, no ledger record, no engine program.
    assert OUR_HANDLE not in qdiscs(primary), qdiscs(primary)
    assert ledger(primary) == []
    assert chaos_processes() == []
    report = (tmp_path / 'chaos-report.md').read_text()
    assert '## Region bandwidth' in report


def test_region_bandwidth_skips_without_a_remote_region(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=region_bandwidth', 'chaos_duration=8',
                          'pggit_chaos_bandwidth_group=no_such_region')
    entry = load_report(tmp_path)['entries'][0]
    assert result.returncode == 0, result.stdout[-3000:]
    assert entry['status'] == 'skipped'
    assert 'no replica in the inventory group no_such_region' in entry['skipped_reason']
    assert OUR_HANDLE not in qdiscs(primary) and ledger(primary) == []
