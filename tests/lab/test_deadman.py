"""Dead-man: kill -9 the controller mid-fault; the target heals itself by its TTL."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from waiting import wait_until
from labtools import REPO, chaos_processes, host_rules, ledger, playbook_argv, playbook_env, query, trigger_modes

DURATION, TTL = 30, 35


def kill_controller_after_injection(host, tmp_path, *extra_vars):
    """Start chaos.yml, wait until `host` holds an active fault, then SIGKILL the whole controller."""
    proc = subprocess.Popen(playbook_argv('chaos.yml', *extra_vars), cwd=REPO, env=playbook_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        active = wait_until(lambda: [r for r in ledger(host) if r.get('status') == 'active'], time.time() + 90)
        assert active, 'the fault was never injected'
        time.sleep(3)
        return active[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_killed_controller_leaves_no_fault_behind(primary, tmp_path):
    assert set(trigger_modes(primary).values()) == {'O'}, 'the lab must start at baseline'
    record = kill_controller_after_injection(primary, tmp_path, 'chaos_experiments=trigger_failure',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The fault really outlived the controller.
    assert set(trigger_modes(primary).values()) == {'D'}
    assert ledger(primary), 'the record must still be there'
    assert any(str(record['reaper']['pid']) in line for line in chaos_processes())

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL
    healed = wait_until(lambda: set(trigger_modes(primary).values()) == {'O'} and not ledger(primary),
                        expires_at + 5)
    healed_at = time.time()
    assert healed, 'not healed within TTL + 5 s: triggers %s, ledger %s' % (trigger_modes(primary), ledger(primary))
    assert healed_at - killed_at < TTL + 5
    assert wait_until(lambda: not chaos_processes(), time.time() + 5), chaos_processes()
    assert query(primary, "SELECT to_regnamespace('pggit_chaos_drift')")[0][0] is None, 'untracked tables dropped'
    print('deadman: healed %.2f s after expires_at' % (healed_at - expires_at))


def test_killed_controller_mid_partition_heals_and_the_replica_catches_up(lab, primary, tmp_path):
    isolated = next(h for h in lab.values() if h.get('pggit_region') == 'region_b')
    assert 'pggit-chaos' not in host_rules(isolated)
    record = kill_controller_after_injection(isolated, tmp_path, 'chaos_experiments=region_partition',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)

    # The partition outlived the controller: the replica falls behind.
    assert 'pggit-chaos' in host_rules(isolated)
    query(primary, 'CREATE TABLE public.deadman_%d (id int)' % int(time.time()))
    primary_rows = query(primary, 'SELECT count(*) FROM pggit.history')[0][0]
    time.sleep(1)
    assert query(isolated, 'SELECT count(*) FROM pggit.history')[0][0] < primary_rows

    healed = wait_until(lambda: 'pggit-chaos' not in host_rules(isolated) and not ledger(isolated),
                        record['expires_at'] + 5)
    assert healed, 'the partition did not heal within TTL + 5 s'
    digest = "SELECT count(*), md5(string_agg(id::text || sql_executed, ',' ORDER BY id)) FROM pggit.history"
    assert wait_until(lambda: query(isolated, digest) == query(primary, digest), time.time() + 60), \
        'the replica did not catch up with the primary after the heal'
    assert wait_until(lambda: not chaos_processes(), time.time() + 5), chaos_processes()
