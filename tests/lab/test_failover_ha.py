"""Dead-man on the HA lab (LAB_HA=patroni): kill -9 ansible-playbook while the leader's host is frozen.

The freeze outlives the controller (the leader's PostgreSQL and Patroni stay
frozen, Patroni elects a synchronous standby), then the target's TTL reaper
thaws the host by itself: the cluster ends with one leader, every other member
streaming (the old leader rejoined as a replica), no cgroup frozen and every
ledger empty.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
from waiting import wait_until
from labtools import REPO, _inventory, chaos_processes, ledger, playbook_argv, playbook_env

DURATION, TTL = 30, 45


@pytest.fixture(scope='module')
def ha(lab):
    kind = _inventory()['vars']['pggit_lab'].get('ha', 'none')
    if kind != 'patroni':
        pytest.fail('this test needs the HA lab (make lab LAB_HA=patroni); this lab runs %s' % kind)
    # The PostgreSQL hosts (the etcd witness is a lab host too, with no Patroni).
    return dict((name, host) for name, host in lab.items() if host.get('pggit_patroni_url'))


def cluster(lab):
    """Patroni's GET /cluster from the first member that answers, or None."""
    for host in lab.values():
        try:
            with urllib.request.urlopen(host['pggit_patroni_url'] + '/cluster', timeout=2) as answer:
                return json.load(answer)
        except (OSError, ValueError):
            continue
    return None


def leader(lab):
    state = cluster(lab) or {}
    names = [m['name'] for m in state.get('members', []) if m.get('role') == 'leader']
    return names[0] if len(names) == 1 else None


def settled(lab):
    """One leader running, every other member streaming (Patroni 4 says running for a replica that does not stream)."""
    state = cluster(lab) or {}
    members = state.get('members', [])
    leaders = [m for m in members if m.get('role') == 'leader' and m.get('state') == 'running']
    others = [m for m in members if m.get('role') != 'leader']
    return (len(members) == len(lab) and len(leaders) == 1
            and all(m.get('state') == 'streaming' for m in others))


def frozen(host):
    """The host's lab freezer cgroups (v1 freezer.state, or v2 cgroup.freeze) that say frozen."""
    found = []
    for root in ('/sys/fs/cgroup/freezer', '/sys/fs/cgroup'):
        for path in glob.glob(os.path.join(root, '**', host['pggit_lab_cgroup_name']), recursive=True):
            for name, value in (('freezer.state', 'FROZEN'), ('cgroup.freeze', '1')):
                try:
                    with open(os.path.join(path, name)) as handle:
                        if handle.read().strip() == value:
                            found.append(path)
                except OSError:
                    pass
        if found:
            break
    return sorted(set(found))


def test_killed_controller_while_the_leader_is_frozen_thaws_by_the_ttl(ha, tmp_path):
    assert wait_until(lambda: settled(ha), time.time() + 60), cluster(ha)
    old = leader(ha)
    host = ha[old]
    proc = subprocess.Popen(playbook_argv('chaos.yml', 'chaos_experiments=primary_failover', 'chaos_duration=%d' % DURATION,
                                          'chaos_ttl=%d' % TTL),
                            cwd=REPO, env=playbook_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        active = wait_until(lambda: [r for r in ledger(host) if r.get('status') == 'active' and r.get('kind') == 'host'],
                            time.time() + 180)
        assert active, 'the host fault was never injected on %s' % old
        assert wait_until(lambda: frozen(host), time.time() + 10), 'the leader host was never frozen'
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.time()
    record = active[0]

    # The freeze outlived the controller, and Patroni failed over meanwhile.
    assert frozen(host), 'the freeze did not outlive the controller'
    assert wait_until(lambda: leader(ha) not in (None, old), time.time() + 40), cluster(ha)

    # The TTL reaper thaws the host by itself; the old leader rejoins as a replica.
    assert wait_until(lambda: not frozen(host) and not ledger(host), record['expires_at'] + 10), (frozen(host), ledger(host))
    thawed_at = time.time()
    assert wait_until(lambda: settled(ha), time.time() + 90), cluster(ha)
    assert old in [m['name'] for m in cluster(ha)['members'] if m.get('role') != 'leader']
    assert wait_until(lambda: not any(ledger(h) for h in ha.values()) and not chaos_processes(), time.time() + 180), \
        (chaos_processes(), [ledger(h) for h in ha.values()])
    print('deadman failover: thawed %.1f s after the controller died (%.1f s after expires_at)'
          % (thawed_at - killed_at, thawed_at - record['expires_at']))
