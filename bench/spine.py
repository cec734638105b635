"""Spine benchmark on the running lab (make bench builds it and tears it down).

Writes bench/results/spine.json and prints a short table:
- pggit_verify probe latency, p50 and p95 over 50 runs against the primary;
- time from the end of the fault window until the fault is reverted, through
  the playbook (report timeline) and through the target-side TTL;
- wall time of chaos.yml with both experiments over the sum of their windows.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
# conftest puts the collection on sys.path.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _pgconn, _undo  # noqa: E402
from ansible_collections.pggit.chaos.plugins.module_utils._checker import percentile  # noqa: E402
from ansible_collections.pggit.chaos.plugins.module_utils._probe import Probe  # noqa: E402
from modrun import run_module  # noqa: E402

sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
from labtools import lab_primary  # noqa: E402  # pylint: disable=wrong-import-position
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_trigger  # noqa: E402

RUNS = 50
WINDOW = 10


def conn_params(host):
    return {'login_host': host['pggit_login_host'], 'login_port': host['pggit_login_port'], 'login_user': host['pggit_login_user'],
            'db': host['pggit_db'], 'ssl_mode': 'disable', 'connect_timeout': 5}


def probe_latency(params):
    probe = Probe(params)
    samples = []
    for _round in range(RUNS):
        started = time.perf_counter()
        result = probe.run_once()
        samples.append((time.perf_counter() - started) * 1000.0)
        assert result['healthy'], result['findings']
    return {'runs': RUNS, 'p50_ms': round(percentile(samples, 50), 2), 'p95_ms': round(percentile(samples, 95), 2)}


def ttl_revert(params):
    """Inject with a short TTL and time the revert after expires_at, no controller."""
    state_dir = tempfile.mkdtemp(prefix='pggit-chaos-bench-')
    delays = []
    for attempt in range(5):
        result, failed = run_module(pggit_chaos_trigger.main, dict(params, name='bench%d' % attempt, ttl=5, state_dir=state_dir))
        assert not failed, result['msg']
        expires = result['record']['expires_at']
        conn = _pgconn.connect(params)
        try:
            cur = conn.cursor()
            while True:
                cur.execute("SELECT bool_and(evtenabled = 'O') FROM pg_event_trigger WHERE evtname LIKE 'pggit%'")
                if cur.fetchone()[0]:
                    delays.append(time.time() - expires)
                    break
                if time.time() > expires + 30:
                    raise RuntimeError('TTL revert did not happen')
                time.sleep(0.02)
        finally:
            conn.close()
    leftover = _ledger.Ledger(state_dir).list()
    _undo.revert_many(_ledger.Ledger(state_dir))
    return {'faults': len(delays), 'reverted': len(delays) - len(leftover), 'p50_s': round(percentile(delays, 50), 3),
            'max_s': round(max(delays), 3)}


def playbook_run():
    report_dir = tempfile.mkdtemp(prefix='pggit-chaos-bench-report-')
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), PGGIT_CHAOS_REPORT_DIR=report_dir)
    started = time.time()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), 'playbooks/chaos.yml',
                           '-e', 'chaos_duration=%d' % WINDOW, '-e', 'chaos_ttl=%d' % (WINDOW + 60)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - started
    with open(os.path.join(report_dir, 'chaos-report.json')) as handle:
        report = json.load(handle)
    revert_after_window = {}
    for entry in report['entries']:
        line = entry.get('timeline') or {}
        if line.get('window_end') and line.get('revert_end'):
            revert_after_window[entry['experiment']] = round(line['revert_end'] - line['window_end'], 3)
    windows = WINDOW * len(report['entries'])
    return {'rc': proc.returncode, 'summary': report['summary'], 'wall_s': round(wall, 2), 'windows_s': windows,
            'overhead_ratio': round(wall / windows, 2), 'revert_after_window_s': revert_after_window}


def main():
    params = conn_params(lab_primary())
    results = {'probe': probe_latency(params), 'ttl_revert': ttl_revert(params), 'playbook': playbook_run(),
               'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
    with open(os.path.join(REPO, 'bench', 'results', 'spine.json'), 'w') as handle:
        json.dump(results, handle, indent=2)
    rows = [
        ('pggit_verify probe p50 / p95', '%s ms / %s ms' % (results['probe']['p50_ms'], results['probe']['p95_ms'])),
        ('TTL revert after expires_at p50 / max', '%s s / %s s' % (results['ttl_revert']['p50_s'], results['ttl_revert']['max_s'])),
        ('TTL faults injected / reverted', '%d / %d' % (results['ttl_revert']['faults'], results['ttl_revert']['reverted'])),
    ]
    rows += [('revert after window end: %s' % k, '%s s' % v) for k, v in results['playbook']['revert_after_window_s'].items()]
    run = results['playbook']
    rows += [('chaos.yml wall / sum of windows', '%s s / %s s = %s' % (run['wall_s'], run['windows_s'], run['overhead_ratio'])),
             ('experiments passed', '%(passed)d of %(total)d' % run['summary'])]
    width = max(len(r[0]) for r in rows)
    print('| %s | value |' % 'metric'.ljust(width))
    print('|%s|-------|' % ('-' * (width + 2)))
    for name, value in rows:
        print('| %s | %s |' % (name.ljust(width), value))
    print('wrote bench/results/spine.json')
    return 0 if results['playbook']['rc'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
