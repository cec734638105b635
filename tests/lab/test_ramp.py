"""chaos_ramp on the lab: a latency ramp finds its breaking point, and every step is reverted before the next."""
from __future__ import annotations

import json
import os

from labtools import chaos_processes, host_rules, ledger, load_report, run_playbook

LEVELS = [5, 40, 320]
SLO_MS = 120
RAMP = {'param': 'chaos_latency_ms', 'from': 5, 'to': 320, 'factor': 8}


def test_a_latency_ramp_finds_its_breaking_point_and_reverts_every_step(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=network_latency', json.dumps({'chaos_ramp': RAMP}),
                          'chaos_slo_ms=%d' % SLO_MS, 'chaos_duration=4', 'pggit_chaos_latency_baseline_seconds=1.5',
                          'chaos_fail_on_failure=false')
    assert result.returncode == 0, result.stdout[-3000:]
    entries = load_report(tmp_path)['entries']
    ramps = [e for e in entries if e['experiment'] == 'ramp(network_latency)']
    steps = [e for e in entries if e['experiment'] == 'network_latency']
    assert len(ramps) == 1, [e['experiment'] for e in entries]
    ramp = ramps[0]['ramp']
    assert ramp['levels'] == LEVELS and ramp['slo_ms'] == SLO_MS

    # The breaking point: a level that broke, and every level before it passed.
    assert ramp['breaking_point'] is True, ramp
    rows = ramp['steps']
    assert rows[-1]['level'] == ramp['first_failing'] and not rows[-1]['passed'], rows
    assert all(row['passed'] for row in rows[:-1]), rows
    assert ramp['last_passing'] == (rows[-2]['level'] if len(rows) > 1 else None)
    # The ramp stopped there: no step ran past the first failing level.
    assert len(steps) == len(rows) and [float(s['parameters']['delay_ms']) for s in steps] == [float(r['level']) for r in rows]

    for entry, row in zip(steps, rows):
        # Each step is a full experiment whose fault left its mark (the added p50 is at least the asked delay) ...
        assert entry['evidence']['fault_check'] == 'latency' and entry['evidence']['added_p50_ms'] >= row['level'], entry
        assert row['p95_ms'] == round(entry['evidence']['ddl_latency_ms_during']['p95'], 1)
        # ... and was reverted: its own latency record undone, on the target.
        assert entry['reverted'] is True and entry['revert']['failures'] == [], entry['revert']
        assert any(name.startswith('latency-') and entry['experiment_id'] in name for name in entry['revert']['reverted']), \
            entry['revert']
    # A step's revert ended before the next step injected anything.
    for earlier, later in zip(steps, steps[1:]):
        assert earlier['timeline']['revert_end'] <= later['timeline']['inject_start']
    if rows[-1]['status'] == 'passed':
        assert rows[-1]['p95_ms'] > SLO_MS and 'SLO' in rows[-1]['stop_reason']

    # The charts: Markdown bars and the HTML SVG.
    with open(os.path.join(str(tmp_path), 'chaos-report.md')) as handle:
        markdown = handle.read()
    assert '## Ramp ramp(network_latency)@' in markdown and 'first failing %s ms' % ramp['first_failing'] in markdown
    with open(os.path.join(str(tmp_path), 'chaos-report.html')) as handle:
        page = handle.read()
    assert 'data-metric="ramp"' in page and 'data-first-failing="%s"' % ramp['first_failing'] in page

    # Nothing left on the host: no NFQUEUE rule, no delay daemon, no ledger record.
    assert 'NFQUEUE' not in host_rules(primary)
    assert chaos_processes() == []
    assert ledger(primary) == []


def test_bad_ramp_input_fails_before_anything_is_injected(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=kill_connections', json.dumps({'chaos_ramp': RAMP}))
    assert result.returncode != 0
    assert 'chaos_ramp: param chaos_latency_ms is not used by experiment kill_connections' in result.stdout
    assert not os.path.exists(os.path.join(str(tmp_path), 'chaos-report.json'))
    assert ledger(primary) == [] and 'NFQUEUE' not in host_rules(primary) and chaos_processes() == []
