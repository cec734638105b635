"""The abort condition, end to end: the steady state breaks mid-window, the experiment stops and reverts at once."""
from __future__ import annotations

import subprocess
import time

from waiting import wait_until
from labtools import REPO, ledger, load_report, playbook_argv, playbook_env, query, trigger_modes

WINDOW = 60


def test_broken_expectation_aborts_and_reverts_early(primary, tmp_path):
    proc = subprocess.Popen(playbook_argv('chaos.yml', 'chaos_experiments=trigger_failure', 'chaos_duration=%d' % WINDOW,
                                          'chaos_ttl=%d' % (WINDOW + 30), 'chaos_fail_on_failure=false'),
                            cwd=REPO, env=playbook_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: [r for r in ledger(primary) if r.get('status') == 'active'], time.time() + 90)
        # An operator turns tracking back on by hand: the window's hypothesis (tracking off) no longer holds.
        time.sleep(2)
        for name in trigger_modes(primary):
            query(primary, 'ALTER EVENT TRIGGER %s ENABLE' % name)
        broken_at = time.time()
        assert proc.wait(timeout=WINDOW + 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finished_at = time.time()
    entry = load_report(tmp_path)['entries'][0]
    assert entry['status'] == 'aborted', entry['reasons']
    assert entry['reverted'] is True
    assert any('consecutive unhealthy' in reason for reason in entry['reasons']), entry['reasons']
    assert finished_at - broken_at < WINDOW / 2, 'the abort must cut the window short'
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}
    assert query(primary, "SELECT to_regnamespace('pggit_chaos_drift')")[0][0] is None
