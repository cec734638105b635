"""Speed of the chaos suite: wall time against the sum of the fault windows, and growth with the lab's size.

Writes bench/results/suite.json and prints a table. Each part runs against the lab whose inventory it is given
(build one lab at a time: make lab LAB_NAME=... LAB_HOSTS=...); a part that is not run keeps the figures an
earlier run wrote, so the three labs can be measured one after the other:

  python bench/suite.py ratio   --inventory inventories/le/hosts.yml   # 3 hosts: the five first experiments
  python bench/suite.py scale-1 --inventory inventories/l1/hosts.yml   # 1 host:  SCALE_EXPERIMENT, chaos_targets=all
  python bench/suite.py scale-8 --inventory inventories/l8/hosts.yml   # 8 hosts: the same
  python bench/suite.py tracking-cost --inventory ...                  # pgGit's own cost per DDL, on any lab

- `ratio`: wall time of chaos.yml with RATIO_EXPERIMENTS over the sum of their windows (chaos_duration each);
- `wall_1_host_s`, `wall_8_host_s`, `growth_1_to_8`: wall time of chaos.yml with SCALE_EXPERIMENT on every host
  (chaos_targets=all: the primary and every standby run it at once) on a 1-host and an 8-host lab;
- `phases`: where the time outside the windows goes, per phase (begin, inject, workload start, window overrun,
  collect, revert, after, converge, verdict, controller-only tasks, gaps between tasks, start-up), from per-task
  timings (bench/callback_plugins/suite_timer.py), summed over the run and per experiment.
Each figure is measured --runs times (the machine is shared: the spread says how much to trust it); the headline
is the median of the runs (with two runs, their mean). No timed assertion: misses are reported, not tuned away.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(REPO, 'bench', 'results', 'suite.json')
RATIO_EXPERIMENTS = ['kill_connections', 'trigger_failure', 'network_latency', 'packet_loss', 'region_partition']
# Runs on every host, standbys included (requires_primary is false for the latency role: its tracked DDL goes
# to the cluster's primary from the controller, the delay sits on the target's port).
SCALE_EXPERIMENT = 'network_latency'
# Every PostgreSQL host of the lab. The inventory's `all` also holds the controller (localhost, the latency
# client), which never opts in: chaos_targets=all would fail the run on it, with the same experiments run.
SCALE_TARGETS = 'chaos_targets'
GOAL_RATIO = 1.3
GOAL_GROWTH = 1.5

# Phase of a task, by its name (first match wins); tasks that never leave the controller count as 'controller'.
PHASES = [
    ('window', ('Probe during the window', 'Probe the primary during the window')),
    ('begin_probe', ('Steady state before the fault',)),
    ('after_probe', ('Steady state after the revert',)),
    ('converge', ('Wait until each replica holds',)),
    ('revert', ('Revert every fault of this experiment',)),
    ('verdict', ('Record the experiment for the report',)),
    ('workload_wait', ('Wait for a workload that is still running',)),
    ('collect', ('Collect the',)),
    ('baseline', ('without the fault',)),
    ('workload_start', ('workload', 'Run DDL', 'Run tracked DDL')),
    ('leader_and_selection', ('who leads', 'opt-in and blast radius')),
]
CONTROLLER_ACTIONS = {'set_fact', 'assert', 'fail', 'debug', 'include_role', 'include_tasks', 'import_tasks', 'group_by',
                      'meta', 'set_stats', 'validate_argument_spec'}


def phase_of(row):
    name = row.get('task') or ''
    for phase, needles in PHASES:
        if any(needle.lower() in name.lower() for needle in needles):
            return phase
    if (row.get('action') or '').split('.')[-1] in CONTROLLER_ACTIONS or 'arg spec' in name:
        return 'controller'
    return 'inject_and_other'


def phases(timer_file, windows_s, experiments):
    """Seconds per phase: each task's wall time (its slowest host), the gaps between tasks and the start-up.

    The window phase counts only its overrun beyond the windows, so that the phases add up to wall - windows."""
    rows = []
    with open(timer_file) as handle:
        for line in handle:
            rows.append(json.loads(line))
    tasks = collections.OrderedDict()
    for row in rows:
        if 'task' not in row or not row.get('start'):
            continue
        key = (row['task'], row['start'])
        task = tasks.setdefault(key, dict(row))
        task['end'] = max(task['end'], row['end'])
    ordered = sorted(tasks.values(), key=lambda r: r['start'])
    first = min([r['start'] for r in rows if 'play' in r] or [0])
    last = max([r['end'] for r in rows if r.get('stats')] or [0])
    spent = collections.Counter()
    gaps, frontier = 0.0, first
    for task in ordered:
        spent[phase_of(task)] += task['end'] - task['start']
        gaps += max(0.0, task['start'] - frontier)
        frontier = max(frontier, task['end'])
    spent['gaps_between_tasks'] = gaps + max(0.0, last - frontier)
    spent['window'] -= windows_s
    out = dict((name, round(value, 2)) for name, value in spent.most_common())
    return {'total_s': out, 'per_experiment_s': dict((name, round(value / experiments, 2)) for name, value in out.items()),
            'callback_wall_s': round(last - first, 2)}


def run_chaos(inventory, experiments, window, extra=(), repo=REPO):
    report_dir = tempfile.mkdtemp(prefix='pggit-chaos-suite-')
    timer = os.path.join(report_dir, 'timer.jsonl')
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(repo, 'ansible.cfg'), PGGIT_CHAOS_REPORT_DIR=report_dir,
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, 'callback_plugins'),
               ANSIBLE_CALLBACKS_ENABLED='pggit.chaos.chaos_report,suite_timer', PGGIT_SUITE_TIMER_FILE=timer,
               ANSIBLE_NOCOLOR='1')
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), os.path.join(repo, 'playbooks', 'chaos.yml'),
            '-i', inventory, '-e', 'chaos_experiments=%s' % ','.join(experiments), '-e', 'chaos_duration=%s' % window,
            '-e', 'chaos_ttl=%d' % (window + 120)]
    for item in extra:
        argv += ['-e', item]
    started = time.time()
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - started
    with open(os.path.join(report_dir, 'chaos-log.txt'), 'w') as handle:
        handle.write(proc.stdout + proc.stderr)
    try:
        with open(os.path.join(report_dir, 'chaos-report.json')) as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        report = {'entries': [], 'summary': {}}
    entries = report.get('entries') or []
    # Only the experiments that ran had a window (an experiment skipped on a standby stops in begin).
    windows = window * len([e for e in entries if e.get('status') != 'skipped'])
    result = {'rc': proc.returncode, 'wall_s': round(wall, 2), 'experiments_run': len(entries), 'windows_s': windows,
              'statuses': ['%s@%s %s' % (e.get('experiment'), e.get('host'), e.get('status')) for e in entries],
              'report_dir': report_dir, 'load_avg_1m': round(os.getloadavg()[0], 2)}
    if windows:
        result['ratio'] = round(wall / windows, 3)
        result['phases'] = phases(timer, windows, max(1, windows // window)) if os.path.exists(timer) else None
    return result


def headline(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def part_ratio(args):
    runs = [run_chaos(args.inventory, RATIO_EXPERIMENTS, args.window, repo=args.repo) for _run in range(args.runs)]
    return {'ratio': headline([r.get('ratio') for r in runs]), 'ratio_runs': [r.get('ratio') for r in runs],
            'ratio_window_s': args.window, 'ratio_experiments': RATIO_EXPERIMENTS, 'ratio_detail': runs,
            'ratio_repo': args.repo}


def part_scale(args, hosts):
    runs = [run_chaos(args.inventory, [SCALE_EXPERIMENT], args.window, ['chaos_targets=%s' % args.targets], repo=args.repo)
            for _run in range(args.runs)]
    key = 'wall_%d_host_s' % hosts
    return {key: headline([r['wall_s'] for r in runs]), key.replace('_s', '_runs_s'): [r['wall_s'] for r in runs],
            'scale_%d_detail' % hosts: runs, 'scale_experiment': SCALE_EXPERIMENT, 'scale_window_s': args.window,
            'scale_targets': args.targets}


def part_tracking_cost(args):
    """pgGit's own cost per DDL (helper L's pggit_workload tracking_cost): CREATE TABLE with the triggers firing
    against the same with them off in one session, alternating, on the lab's primary, run in-process from here."""
    sys.path.insert(0, os.path.join(REPO, 'tests'))
    sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
    os.environ['PGGIT_LAB_INVENTORY'] = os.path.abspath(args.inventory)
    sys.path.insert(0, os.path.join(REPO, '.cache', 'collections'))
    from modrun import run_module  # pylint: disable=import-outside-toplevel
    import labtools  # pylint: disable=import-outside-toplevel
    from ansible_collections.pggit.chaos.plugins.modules import pggit_workload  # pylint: disable=import-outside-toplevel
    host = labtools.lab_primary()
    params = dict(login_host=host['pggit_login_host'], login_port=host['pggit_login_port'], login_user=host['pggit_login_user'],
                  db=host['pggit_db'], state_dir=labtools.controller_state_dir(), run_id='suitecost%d' % (time.time() % 100000),
                  duration=1, interval=0.2, tracking_cost=args.cost_ddl)
    result, failed = run_module(pggit_workload.main, params)
    cost = result.get('tracking_cost')
    return {'tracking_cost': cost if not failed else {'error': result.get('msg')}, 'tracking_cost_ddl': args.cost_ddl}


def table(results):
    rows = []
    if results.get('ratio') is not None:
        rows.append(('chaos.yml wall / sum of windows (%d x %s s)' % (len(RATIO_EXPERIMENTS), results['ratio_window_s']),
                     '%s (runs %s; goal <= %s)' % (results['ratio'], results['ratio_runs'], GOAL_RATIO)))
        for run_no, run in enumerate(results.get('ratio_detail') or [], 1):
            value = '%s s / %s s, load %s' % (run['wall_s'], run['windows_s'], run['load_avg_1m'])
            rows.append(('  run %d wall / windows, load' % run_no, value))
            for name, value in ((run.get('phases') or {}).get('per_experiment_s') or {}).items():
                rows.append(('    per experiment: %s' % name, '%s s' % value))
    for hosts in (1, 8):
        key = 'wall_%d_host_s' % hosts
        if results.get(key) is not None:
            targets = results.get('scale_targets', SCALE_TARGETS)
            label = '%s on %d host(s), chaos_targets=%s' % (results['scale_experiment'], hosts, targets)
            rows.append((label,
                         '%s s (runs %s)' % (results[key], results[key.replace('_s', '_runs_s')])))
    cost = results.get('tracking_cost')
    if isinstance(cost, dict):
        flat = dict((k, v) for k, v in cost.items() if not isinstance(v, (list, dict))) or cost
        rows.append(("pgGit's tracking cost per DDL (on vs off)", json.dumps(flat)[:200]))
    if results.get('growth_1_to_8') is not None:
        rows.append(('growth 1 -> 8 hosts', '%s (goal <= %s)' % (results['growth_1_to_8'], GOAL_GROWTH)))
    width = max([len(r[0]) for r in rows] + [6])
    print('| %s | value |' % 'metric'.ljust(width))
    print('|%s|-------|' % ('-' * (width + 2)))
    for name, value in rows:
        print('| %s | %s |' % (name.ljust(width), value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('part', choices=['ratio', 'scale-1', 'scale-8', 'tracking-cost'])
    parser.add_argument('--cost-ddl', type=int, default=50, help='DDL per side for tracking-cost')
    parser.add_argument('--inventory', default=os.environ.get('PGGIT_LAB_INVENTORY'), required=False)
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--window', type=float, default=20)
    parser.add_argument('--targets', default=SCALE_TARGETS, help='chaos_targets of the scale runs')
    parser.add_argument('--repo', default=REPO, help='the checkout whose chaos.yml and collection run (to compare two trees)')
    parser.add_argument('--results', default=RESULTS)
    args = parser.parse_args(argv)
    if not args.inventory:
        parser.error('--inventory (or PGGIT_LAB_INVENTORY) must name the lab inventory')
    results = {}
    if os.path.exists(args.results):
        with open(args.results) as handle:
            results = json.load(handle)
    if args.part == 'ratio':
        results.update(part_ratio(args))
    elif args.part == 'tracking-cost':
        results.update(part_tracking_cost(args))
    else:
        results.update(part_scale(args, int(args.part.split('-')[1])))
    if results.get('wall_1_host_s') and results.get('wall_8_host_s'):
        results['growth_1_to_8'] = round(results['wall_8_host_s'] / results['wall_1_host_s'], 3)
    results['ratio_goal_met'] = None if results.get('ratio') is None else results['ratio'] <= GOAL_RATIO
    results['growth_goal_met'] = None if results.get('growth_1_to_8') is None else results['growth_1_to_8'] <= GOAL_GROWTH
    results.setdefault('tracking_cost', None)
    results['measured_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, 'w') as handle:
        json.dump(results, handle, indent=2)
    table(results)
    print('wrote %s' % args.results)
    failed = [r for r in results.get('ratio_detail', []) + results.get('scale_1_detail', []) + results.get('scale_8_detail', [])
              if r['rc'] != 0]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
