"""Torture benchmark: SIGKILL ansible-playbook at random moments of every experiment; count what is left.

Runs against the lab under test (PGGIT_LAB_INVENTORY, see tests/lab/labtools.py;
`make bench` builds one and tears it down). Each run kills the controller's whole
process group during the steady state, the inject, the window or the revert of
one experiment, then waits, with no controller, until every fault has expired
plus a grace period, and lists what is still there (tests/lab/torture.py
leftovers()): records, rules, chains, qdiscs, processes (engine programs,
stress-ng, stopped postgres), fill files, frozen cgroups, faketime preloads,
servers down or replicas not streaming, pggit-chaos sessions, ALTER SYSTEM
settings, scratch tablespaces, invalid or amcheck-failing indexes, disabled
triggers, schemas.

Writes bench/results/torture.json (killed_runs, healed_runs, leftovers,
permanent_faults, per_experiment {runs, killed, healed, leftovers, heal_p50_s,
heal_max_s}, runs) and prints a table. Goal: at least 50 killed runs, 0 leftovers.

    python bench/torture.py [--runs 60] [--seed 7] [--experiments all|network|resource|database|NAME,...]

--experiments picks what is killed (groups: network = the five network and
connection experiments, resource = issue 7's disk/stress/process ones,
database = issue 8's); the runs go round the chosen experiments, each in a phase
it was not killed in yet, so --runs 2xN kills each of N experiments twice.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
import conftest  # noqa: E402,F401  # pylint: disable=unused-import,wrong-import-position  # pyflakes: ignore
from torture import DATABASE_EXPERIMENTS, EXPERIMENTS, NETWORK_EXPERIMENTS, RESOURCE_EXPERIMENTS, torture  # noqa: E402  # pylint: disable=wrong-import-position


GROUPS = {'all': EXPERIMENTS, 'network': NETWORK_EXPERIMENTS, 'resource': RESOURCE_EXPERIMENTS,
          'database': DATABASE_EXPERIMENTS}


def experiments(text):
    chosen = []
    for item in [i.strip() for i in text.split(',') if i.strip()]:
        if item not in GROUPS and item not in EXPERIMENTS:
            raise argparse.ArgumentTypeError('--experiments: unknown experiment or group %r; known: %s; groups: %s' % (
                item, ', '.join(EXPERIMENTS), ', '.join(GROUPS)))
        chosen += [e for e in GROUPS.get(item, (item,)) if e not in chosen]
    if not chosen:
        raise argparse.ArgumentTypeError('--experiments: no experiment given in %r' % text)
    return tuple(chosen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=60)
    parser.add_argument('--seed', type=int, default=int(time.time()))
    parser.add_argument('--experiments', type=experiments, default=EXPERIMENTS)
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'torture.json'))
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix='pggit-chaos-torture-') as report_dir:
        result = torture(args.runs, args.seed, report_dir, experiments=args.experiments)
    result['wall_s'] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    table = collections.defaultdict(collections.Counter)
    for run in result['runs']:
        cell = table[(run['experiment'], run['phase'])]
        cell['runs'] += 1
        cell['killed'] += run['killed']
        cell['healed'] += bool(run.get('healed'))
        cell['heal_s'] = max(cell['heal_s'], run.get('healed_after_kill_s') or 0)
    print('\n%-18s %-13s %5s %7s %7s %12s' % ('experiment', 'phase', 'runs', 'killed', 'healed', 'max heal s'))
    for (experiment, phase), cell in sorted(table.items()):
        row = (experiment, phase, cell['runs'], cell['killed'], cell['healed'], cell['heal_s'])
        print('%-18s %-13s %5d %7d %7d %12.1f' % row)
    header = ('experiment', 'runs', 'killed', 'healed', 'leftovers', 'heal p50 s', 'heal max s')
    print('\n%-18s %5s %7s %7s %9s %11s %11s' % header)
    for experiment, cell in sorted(result['per_experiment'].items()):
        print('%-18s %5d %7d %7d %9d %11s %11s' % (experiment, cell['runs'], cell['killed'], cell['healed'],
                                                   len(cell['leftovers']), cell['heal_p50_s'], cell['heal_max_s']))
    print('\nkilled runs %d, leftovers %d, permanent faults %d, wall %.0f s -> %s' % (
        result['killed_runs'], len(result['leftovers']), result['permanent_faults'], result['wall_s'], args.out))
    return 0 if result['killed_runs'] >= 50 and not result['leftovers'] else 1


if __name__ == '__main__':
    sys.exit(main())
