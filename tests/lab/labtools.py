"""Helpers for lab tests: run playbooks, read ledgers, query hosts.

The lab under test is the one whose inventory PGGIT_LAB_INVENTORY names (make
exports it for LAB_NAME; make test uses its own lab), else the demo lab's
inventories/lab/hosts.yml. Playbooks run against that inventory, and only
that lab's processes count as ours.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import psycopg2
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


INVENTORY = os.path.abspath(os.environ.get('PGGIT_LAB_INVENTORY') or os.path.join(REPO, 'inventories', 'lab', 'hosts.yml'))


def _inventory():
    with open(INVENTORY) as handle:
        return yaml.safe_load(handle)['all']


def lab_dir():
    """The directory of the lab under test (every process of its hosts runs from under it)."""
    return _inventory()['vars']['pggit_lab']['dir']


def _all_hosts():
    stack = [_inventory()]
    hosts = {}
    while stack:
        node = stack.pop() or {}
        for name, hostvars in (node.get('hosts') or {}).items():
            hosts.setdefault(name, {}).update(hostvars or {})
        stack.extend((node.get('children') or {}).values())
    return hosts


def lab_hosts():
    """Host name -> host vars of the lab's namespace hosts, from the inventory make lab wrote."""
    return dict((name, hostvars) for name, hostvars in _all_hosts().items() if 'pggit_lab_netns' in hostvars)


def controller_state_dir():
    """The ledger of the lab's controller (the latency experiments' workload runs there)."""
    return (_all_hosts().get('localhost') or {}).get('pggit_chaos_state_dir') or '/var/lib/pggit-chaos'


def lab_primary(hosts=None):
    return next(h for h in (hosts or lab_hosts()).values() if h.get('pggit_lab_role') == 'primary')


def playbook_env(report_dir):
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), PGGIT_CHAOS_REPORT_DIR=str(report_dir),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    return env


def playbook_argv(name, *extra):
    argv = [os.path.join(BIN, 'ansible-playbook'), os.path.join(REPO, 'playbooks', name), '-i', INVENTORY]
    for item in extra:
        argv += [item] if item.startswith('--') else ['-e', item]
    return argv


def run_playbook(name, report_dir, *extra, timeout=600):
    return subprocess.run(playbook_argv(name, *extra), cwd=REPO, env=playbook_env(report_dir),
                          capture_output=True, text=True, timeout=timeout, check=False)


def ledger(host):
    records = []
    for path in glob.glob(os.path.join(host['pggit_chaos_state_dir'], 'faults', '*.json')):
        try:
            with open(path) as handle:
                records.append(json.load(handle))
        except (OSError, ValueError):
            continue
    return records


def query(host, text, args=None):
    conn = psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], connect_timeout=5, application_name='pggit-chaos-test')
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(text, args)
        return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def trigger_modes(host):
    return dict(query(host, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"))


def host_rules(host):
    """iptables rules inside a lab host's namespace."""
    return subprocess.run(['ip', 'netns', 'exec', host['pggit_lab_netns'], 'iptables', '-w', '-S'],
                          capture_output=True, text=True, check=False).stdout


def chaos_processes():
    """The engine programs of this lab's hosts: reapers, killers, workloads, delay daemons.

    They run from <lab dir>/hosts/<host>/state/lib, so their command line names the lab dir."""
    proc = subprocess.run(['pgrep', '-af', 'pggit-chaos-'], capture_output=True, text=True, check=False)
    under = re.compile(re.escape(lab_dir().rstrip('/')) + '/')
    return [line for line in proc.stdout.splitlines() if 'pgrep' not in line and under.search(line)]


def load_report(report_dir):
    with open(os.path.join(str(report_dir), 'chaos-report.json')) as handle:
        return json.load(handle)
