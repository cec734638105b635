"""Bad input to chaos.yml fails with a message naming the option and value, and leaves no fault."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from labtools import INVENTORY, REPO, chaos_processes, host_rules, ledger, load_report, playbook_argv, playbook_env, run_playbook, trigger_modes

KNOWN = ['kill_connections', 'trigger_failure', 'network_latency', 'packet_loss', 'region_partition',
         'disk_pressure', 'disk_full', 'memory_pressure', 'cpu_pressure', 'backend_crash', 'postmaster_crash', 'process_pause',
         'lock_contention', 'index_corruption', 'clock_skew', 'dependency_failure',
         'primary_failover', 'region_failover', 'switchover', 'manual_failover',
         'load_spike', 'connection_exhaustion', 'region_bandwidth']


@pytest.mark.parametrize('extra, needle', [
    (['chaos_experiments=trigger_failure,nope'], "chaos_experiments: unknown experiment 'nope'"),
    (['chaos_duration=30', 'chaos_ttl=20'], 'chaos_ttl must be at least chaos_duration + 5 s'),
    (['chaos_duration=abc'], 'chaos_duration must be a positive number of seconds'),
    (['chaos_max_hosts=0'], "chaos_max_hosts must be at least 1, got '0'"),
    (['chaos_max_hosts=150%'], "chaos_max_hosts must be a percentage in (0, 100], got '150%'"),
    (['pggit_chaos_allowed=false'], 'opted in to chaos in its inventory, but pggit_chaos_allowed is'),
    (['chaos_experiments=trigger_failure', 'chaos_duration=2', '{"pggit_chaos_trigger_triggers": ["nope"]}'],
     "triggers: unknown event trigger 'nope'"),
])
def test_bad_input_is_named_and_leaves_nothing(lab, primary, tmp_path, extra, needle):
    result = run_playbook('chaos.yml', tmp_path, *extra)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert needle in out, out[-3000:]
    for host in lab.values():
        assert ledger(host) == []
    assert set(trigger_modes(primary).values()) == {'O'}
    assert chaos_processes() == []


def test_unreachable_database_fails_the_experiment_not_the_host(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=trigger_failure', 'chaos_duration=2', 'pggit_login_port=1')
    assert result.returncode != 0
    entry = load_report(tmp_path)['entries'][0]
    assert entry['status'] == 'failed'
    assert any(':1' in reason and 'connect' in reason for reason in entry['reasons']), entry['reasons']
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}


def test_check_mode_injects_nothing(lab, primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_duration=2', '--check')
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}
    report = load_report(tmp_path)
    plans = dict((e['experiment'], e['fault']) for e in report['entries'])
    assert sorted(plans) == sorted(KNOWN)
    assert report['summary']['skipped'] == report['summary']['total'] == len(KNOWN)
    assert plans['trigger_failure']['changed'] and 'pggit_ddl_trigger' in plans['trigger_failure']['planned']['disable']
    assert 'terminated' in plans['kill_connections']
    assert plans['network_latency']['planned']['method'] == 'nfqueue' and plans['network_latency']['changed']
    assert plans['packet_loss']['planned']['method'] == 'iptables'
    # The database experiments plan without locking, writing a page, restarting or changing a setting.
    assert plans['lock_contention']['lock']['planned']['tables'] == ['pggit.history', 'pggit.objects']
    assert plans['index_corruption']['corrupt']['bytes_written'] == 0
    assert plans['clock_skew']['skew']['planned']['offset_s'] == -3600 and not plans['clock_skew']['skew'].get('restarted')
    assert plans['dependency_failure']['standby_name'] == 'lab-3' and plans['dependency_failure']['setting']
    for host in lab.values():
        assert 'pggit-chaos' not in host_rules(host), 'check mode added a rule on %s' % host['pggit_lab_netns']


def test_extra_var_cannot_override_a_host_whose_inventory_says_false(lab, primary, tmp_path):
    """chaos.yml -e pggit_chaos_allowed=true on a copy of the lab inventory where the primary says false: refused."""
    name = next(n for n, h in lab.items() if h is primary or h == primary)
    with open(INVENTORY) as handle:
        inventory = yaml.safe_load(handle)
    stack = [inventory['all']]
    while stack:
        node = stack.pop() or {}
        for host, hostvars in (node.get('hosts') or {}).items():
            if host == name and hostvars and 'pggit_chaos_allowed' in hostvars:
                hostvars['pggit_chaos_allowed'] = False
        stack.extend((node.get('children') or {}).values())
    copy = tmp_path / 'inventory' / 'hosts.yml'
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(inventory))
    argv = playbook_argv('chaos.yml', 'chaos_experiments=trigger_failure', 'chaos_duration=2', 'pggit_chaos_allowed=true')
    argv[argv.index(INVENTORY)] = str(copy)
    result = subprocess.run(argv, cwd=REPO, env=playbook_env(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert ('host %s has not opted in to chaos in its inventory (pggit_chaos_allowed is false there); '
            'an extra-var or play var cannot override it' % name) in out, out[-3000:]
    assert 'Run each experiment' not in out
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}
    assert chaos_processes() == []
