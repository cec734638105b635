"""RTO, RPO and rejoin time of the failover experiments on the lab (PGGIT_LAB_INVENTORY names it).

Runs chaos.yml once per experiment and run (at least 5 runs each): on the HA lab
(LAB_HA=patroni) primary_failover, region_failover and switchover; on the plain
lab manual_failover. Reads each run's report entry - the figures are the
verdict's own (judged from the multi-host client's server log and the cluster
states): rto_s (fault to the first DDL the new leader acknowledged), rpo_lost_ddl
(DDL acknowledged before the fault and missing on the new leader), rejoin_s
(heal to every member streaming), write_pause_s, failover_s (fault to the new
leader seen) and the Patroni timings used.

Writes bench/results/failover.json (in the section of this lab's mode the experiments measured
now are replaced, the others kept) and prints a table. Goals: primary failover RTO under 15 s with
the lab timings, RPO 0 in synchronous mode, rejoin under 30 s. Misses are
reported plainly, never tuned away.

    python bench/failover.py [--runs 5] [--experiments a,b] [--duration 15]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
from labtools import _inventory, load_report, run_playbook  # noqa: E402  # pylint: disable=wrong-import-position

RESULTS = os.path.join(HERE, 'results', 'failover.json')
HA_EXPERIMENTS = ('primary_failover', 'region_failover', 'switchover')
PLAIN_EXPERIMENTS = ('manual_failover',)
GOALS = dict(rto_s=15.0, rpo_lost_ddl=0, rejoin_s=30.0)
FIGURES = ('rto_s', 'rpo_lost_ddl', 'rejoin_s', 'write_pause_s', 'failover_s')


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100.0 * (len(ordered) - 1)))))]


def summarize(runs):
    """p50 and max of each figure over the runs that produced it, and how many did not."""
    out = {}
    for name in FIGURES:
        values = [r[name] for r in runs if isinstance(r.get(name), (int, float))]
        out[name] = dict(p50=percentile(values, 50), max=max(values) if values else None, n=len(values),
                         missing=len(runs) - len(values))
    return out


def misses(experiment, summary, runs, synchronous):
    """Goals missed, in plain words. RPO 0 is a goal where the mode promises it (synchronous, or a switchover)."""
    said = []
    failed = [r for r in runs if r['status'] != 'passed']
    if failed:
        said.append('%d of %d runs did not pass: %s' % (len(failed), len(runs), '; '.join(
            '%s' % ' / '.join(r['reasons'][:3]) for r in failed[:3])))
    rto = summary['rto_s']
    if experiment in ('primary_failover', 'manual_failover') and (rto['max'] is None or rto['max'] >= GOALS['rto_s']):
        said.append('RTO max %s s, goal under %s s' % (rto['max'], GOALS['rto_s']))
    if rto['missing']:
        said.append('%d run(s) without an RTO (the new leader acknowledged no DDL)' % rto['missing'])
    rpo = summary['rpo_lost_ddl']
    if (synchronous or experiment == 'switchover') and (rpo['max'] is None or rpo['max'] > GOALS['rpo_lost_ddl']):
        said.append('RPO max %s DDL lost, goal 0 (%s)' % (rpo['max'], 'synchronous mode' if synchronous else 'switchover'))
    rejoin = summary['rejoin_s']
    if rejoin['max'] is None or rejoin['max'] >= GOALS['rejoin_s']:
        said.append('rejoin max %s s, goal under %s s' % (rejoin['max'], GOALS['rejoin_s']))
    return said


def one_run(experiment, duration, ttl):
    with tempfile.TemporaryDirectory(prefix='pggit-bench-failover-') as tmp:
        started = time.time()
        proc = run_playbook('chaos.yml', tmp, 'chaos_experiments=%s' % experiment, 'chaos_duration=%s' % duration,
                            'chaos_ttl=%d' % ttl, 'chaos_fail_on_failure=false', timeout=1200)
        took = round(time.time() - started, 1)
        try:
            entry = next(e for e in load_report(tmp)['entries'] if e['experiment'] == experiment)
        except (OSError, ValueError, StopIteration):
            return dict(status='error', reasons=['no report entry (rc %d): %s' % (proc.returncode, proc.stdout[-500:])],
                        playbook_s=took)
    run = dict((name, entry.get(name)) for name in FIGURES)
    run.update(status=entry['status'], reasons=entry['reasons'], old_leader=entry.get('old_leader'),
               new_leader=entry.get('new_leader'), pg_timeline=entry.get('pg_timeline'),
               rejoin_method=entry.get('rejoin_method'), ha_settings=entry.get('ha_settings'),
               synchronous=(entry.get('evidence') or {}).get('synchronous'), playbook_s=took)
    return run


def cell(value):
    return '-' if value is None else ('%.2f' % value if isinstance(value, float) else str(value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--experiments', default='')
    parser.add_argument('--duration', type=float, default=15)
    parser.add_argument('--ttl', type=int, default=120)
    args = parser.parse_args(argv)
    lab = _inventory()['vars']['pggit_lab']
    mode = lab.get('ha', 'none')
    wanted = [x for x in args.experiments.split(',') if x] or list(HA_EXPERIMENTS if mode == 'patroni' else PLAIN_EXPERIMENTS)
    document = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as handle:
            document = json.load(handle)
    section = dict(lab=dict(name=lab.get('name'), ha=mode, patroni=lab.get('patroni'), patroni_version=lab.get('patroni_version'),
                            patroni_settings=lab.get('patroni_settings')),
                   goals=GOALS, duration_s=args.duration, runs_per_experiment=args.runs, experiments={},
                   measured_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    # Experiments measured by an earlier run of this mode (e.g. on a fresh lab each) are kept; those measured now replace theirs.
    earlier = document.get('patroni' if mode == 'patroni' else 'plain') or {}
    section['experiments'].update({k: v for k, v in (earlier.get('experiments') or {}).items() if k not in wanted})
    rows = []
    for experiment in wanted:
        runs = []
        for number in range(args.runs):
            run = one_run(experiment, args.duration, args.ttl)
            runs.append(run)
            print('%s run %d: %s rto %s s, rpo %s, rejoin %s s' % (
                experiment, number + 1, run['status'], cell(run.get('rto_s')), cell(run.get('rpo_lost_ddl')),
                cell(run.get('rejoin_s'))), flush=True)
        synchronous = any(r.get('synchronous') for r in runs)
        summary = summarize(runs)
        section['experiments'][experiment] = dict(summary=summary, misses=misses(experiment, summary, runs, synchronous),
                                                  synchronous=synchronous, runs=runs)
        rows.append((experiment, summary, section['experiments'][experiment]['misses']))
        document['patroni' if mode == 'patroni' else 'plain'] = section
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, 'w') as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write('\n')
    print('\n| experiment | RTO p50 / max s | RPO max DDL | write pause p50 s | rejoin p50 / max s | misses |')
    print('|---|---|---|---|---|---|')
    for experiment, summary, missed in rows:
        print('| %s | %s / %s | %s | %s | %s / %s | %s |' % (
            experiment, cell(summary['rto_s']['p50']), cell(summary['rto_s']['max']), cell(summary['rpo_lost_ddl']['max']),
            cell(summary['write_pause_s']['p50']), cell(summary['rejoin_s']['p50']), cell(summary['rejoin_s']['max']),
            '; '.join(missed) or 'none'))
    print('Patroni settings: %s' % json.dumps(lab.get('patroni_settings')))
    return 0


if __name__ == '__main__':
    sys.exit(main())
