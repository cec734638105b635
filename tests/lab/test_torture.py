"""A small torture in make test: SIGKILL the controller mid-experiment a few times; nothing may be left."""
from __future__ import annotations

import random
import time

from torture import leftovers, one_run

# Every experiment once; the phases where a dead controller hurts most (bench/torture.py covers them all).
KILLS = [('trigger_failure', 'window'), ('region_partition', 'window'), ('kill_connections', 'window'),
         ('network_latency', 'inject'), ('packet_loss', 'revert')]


def test_killed_controllers_leave_nothing_behind(lab, tmp_path):
    assert leftovers(lab) == [], 'the lab must start at baseline'
    rng = random.Random(int(time.time()))
    runs = [one_run(experiment, phase, rng, tmp_path, lab) for experiment, phase in KILLS]
    # A run the playbook finished before the kill proves nothing: it must not count as passing.
    assert [r for r in runs if not r['killed']] == [], [r.get('error') for r in runs if not r['killed']]
    in_window = [r for r in runs if r['phase'] == 'window']
    assert all(r['records_at_kill'] > 0 for r in in_window), 'a kill in the window must leave a live fault to heal'
    assert [r for r in runs if not r.get('healed')] == [], [r.get('leftovers') for r in runs]
    assert leftovers(lab) == []
    print('torture: %s' % [(r['experiment'], r['phase'], r['healed_after_kill_s']) for r in runs])
