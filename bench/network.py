"""Fidelity of the network faults on the lab (make bench-network builds and removes it).

Measures, for the nfqueue method, from the controller (the lab bridge, .1 of the lab's /24) to the
primary's PostgreSQL port:
- requested against measured added round-trip time, p50 and p95, for 20, 100
  and 300 ms (one `SELECT 1` on an open connection is one round trip);
- jitter: the spread of measured delays for 100 +/- 20 ms;
- requested against measured loss for 10 % and 30 % (a dropped SYN is only
  retransmitted after 1 s, so a connect that fails within 0.5 s was dropped);
- the daemon's overhead (`daemon_cost_pct`): pgbench select-only TPS through NFQUEUE at 0 ms against
  no rule at all, in OVERHEAD_ROUNDS rounds (no rule, through the daemon, no rule again), the median of
  the rounds' costs; every packet still goes through the daemon at 0 ms, so this is its per-packet cost
  at any delay. The machine is shared: the gap between the two runs without the rule (`noise_pct`)
  says whether a cost could be measured at all (above NOISE_LIMIT_PCT the target is null, neither
  met nor missed); the load average and the daemon's CPU time per packet are written beside it;
- the time from state=absent until traffic is back at baseline.
Writes bench/results/network.json and prints a table. Misses are reported, not tuned away.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
from labtools import lab_primary  # noqa: E402  # pylint: disable=wrong-import-position

SAMPLES = 200
CONNECTS = 200
OVERHEAD_ROUNDS = 5
OVERHEAD_SECONDS = 5
# Above this gap between the two runs without the rule (median over the rounds), a cost is not measured but guessed.
NOISE_LIMIT_PCT = 5.0


def fault(host, **args):
    """Inject or revert a latency fault inside the host's namespace, in-process (no SSH overhead)."""
    args.setdefault('name', 'bench')
    args.setdefault('state_dir', host['pggit_chaos_state_dir'])
    args.setdefault('ttl', 600)
    proc = subprocess.run(['ip', 'netns', 'exec', host['pggit_lab_netns'], sys.executable, os.path.join(HERE, '_in_netns.py'),
                           'pggit_chaos_latency', json.dumps(args)], capture_output=True, text=True, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result['failed']:
        raise RuntimeError(result['msg'])
    return result


def connect(host):
    conn = psycopg2.connect(host=host['pggit_login_host'], port=5432, user='postgres', dbname='postgres',
                            application_name='pggit-chaos-bench')
    conn.autocommit = True
    return conn


def rtts(conn, count):
    cur = conn.cursor()
    samples = []
    for _n in range(count):
        started = time.perf_counter()
        cur.execute('SELECT 1')
        cur.fetchone()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def delay_run(host, conn, base, delay_ms, jitter_ms=0):
    fault(host, port=5432, direction='in', delay_ms=delay_ms, jitter_ms=jitter_ms, method='nfqueue')
    try:
        time.sleep(0.5)
        added = [s - base for s in rtts(conn, SAMPLES)]
    finally:
        fault(host, state='absent')
    p50 = pct(added, 50)
    return {'requested_ms': delay_ms, 'jitter_ms': jitter_ms, 'p50_added_ms': round(p50, 2), 'p95_added_ms': round(pct(added, 95), 2),
            'p5_added_ms': round(pct(added, 5), 2), 'stdev_ms': round(statistics.pstdev(added), 2),
            'p50_error_pct': round(100.0 * (p50 - delay_ms) / delay_ms, 1) if delay_ms else None}


def loss_run(host, loss_pct):
    fault(host, port=5432, direction='in', delay_ms=0, loss_pct=loss_pct, method='nfqueue')
    failed = 0
    try:
        time.sleep(0.5)
        for _n in range(CONNECTS):
            try:
                socket.create_connection((host['pggit_login_host'], 5432), timeout=0.5).close()
            except OSError:
                failed += 1
    finally:
        fault(host, state='absent')
    measured = 100.0 * failed / CONNECTS
    return {'requested_pct': loss_pct, 'measured_pct': round(measured, 1), 'attempts': CONNECTS,
            'error_points': round(measured - loss_pct, 1)}


def pgbench_tps(host, seconds=OVERHEAD_SECONDS):
    out = subprocess.run(['pgbench', '-h', host['pggit_login_host'], '-U', 'postgres', '-n', '-S', '-c', '4', '-j', '2',
                          '-T', str(seconds), 'bench'], capture_output=True, text=True, check=True).stdout
    return float(re.search(r'tps = ([0-9.]+)', out).group(1)), int(re.search(r'transactions actually processed: ([0-9]+)', out).group(1))


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (IOError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf('SC_CLK_TCK'))


def daemon_seen(host):
    """Packets the last daemon saw, from its stop line in the host's nfqdelay.log."""
    try:
        with open(os.path.join(host['pggit_chaos_state_dir'], 'nfqdelay.log')) as handle:
            lines = [line for line in handle if 'stopped' in line and "'seen'" in line]
    except (IOError, OSError):
        return None
    found = re.search(r"'seen': ([0-9]+)", lines[-1]) if lines else None
    return int(found.group(1)) if found else None


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def overhead(host, rounds=None):
    """Interleaved pairs (no rule, through the daemon at 0 ms); the median of the pairs' costs."""
    rounds = rounds or OVERHEAD_ROUNDS
    admin = connect(host)
    admin.cursor().execute('DROP DATABASE IF EXISTS bench')
    admin.cursor().execute('CREATE DATABASE bench')
    admin.close()
    subprocess.run(['pgbench', '-h', host['pggit_login_host'], '-U', 'postgres', '-i', '-s', '1', '-q', 'bench'],
                   capture_output=True, check=True)
    pairs = []
    load_before = load_average()
    try:
        for _n in range(rounds):
            before, _count = pgbench_tps(host)
            injected = fault(host, port=5432, direction='in', delay_ms=0, method='nfqueue')
            pid = injected['daemon']['pid']
            try:
                cpu_before = cpu_seconds(pid)
                through, transactions = pgbench_tps(host)
                cpu_after = cpu_seconds(pid)
            finally:
                fault(host, state='absent')
            seen = daemon_seen(host)
            after, _count = pgbench_tps(host)
            plain = (before + after) / 2.0  # the runs without the rule bracket the one through it
            pair = {'tps_no_rule': round(plain, 1), 'tps_nfqueue_0ms': round(through, 1),
                    'cost_pct': round(100.0 * (plain - through) / plain, 1),
                    'noise_pct': round(100.0 * abs(before - after) / plain, 1)}
            if seen:
                # About 1: every transaction's query packet went through the daemon (no packet skipped at 0 ms).
                pair['packets_per_transaction'] = round(float(seen) / max(transactions, 1), 2)
            if seen and cpu_before is not None and cpu_after is not None:
                # Nothing but pgbench sends to port 5432 meanwhile: the packets it saw are this run's.
                pair['daemon_cpu_us_per_packet'] = round(1e6 * (cpu_after - cpu_before) / seen, 2)
            pairs.append(pair)
    finally:
        admin = connect(host)
        admin.cursor().execute('DROP DATABASE IF EXISTS bench')
        admin.close()
    cost = statistics.median(p['cost_pct'] for p in pairs)
    noise = statistics.median(p['noise_pct'] for p in pairs)
    result = {'tps_no_rule': round(statistics.median(p['tps_no_rule'] for p in pairs), 1),
              'tps_nfqueue_0ms': round(statistics.median(p['tps_nfqueue_0ms'] for p in pairs), 1),
              'cost_pct': round(cost, 1), 'daemon_cost_pct': round(cost, 1), 'noise_pct': round(noise, 1),
              'reliable': noise <= NOISE_LIMIT_PCT, 'rounds': pairs,
              'seconds_per_run': OVERHEAD_SECONDS, 'load_average_before': load_before, 'load_average_after': load_average(),
              'note': 'each round: no rule, through the daemon at 0 ms, no rule again; cost_pct = daemon_cost_pct = median '
                      'of the rounds\' costs against the mean of the two runs without the rule; noise_pct = median gap '
                      'between those two runs: above %g %% the machine was too busy to measure a cost (reliable false, '
                      'target null); daemon_cpu_us_per_packet: the daemon\'s CPU time (user + system, verdict path in '
                      'the kernel included) over the packets it saw; packets_per_transaction: packets the daemon saw over '
                      'pgbench\'s transactions (about 1: each query packet took the real queue path, 0 ms included)'
                      % NOISE_LIMIT_PCT}
    per = [p['packets_per_transaction'] for p in pairs if 'packets_per_transaction' in p]
    if per:
        result['packets_per_transaction'] = round(statistics.median(per), 2)
    cpu = [p['daemon_cpu_us_per_packet'] for p in pairs if 'daemon_cpu_us_per_packet' in p]
    if cpu:
        result['daemon_cpu_us_per_packet'] = round(statistics.median(cpu), 2)
    return result


def revert_time(host, conn, base):
    """Sample RTT every 10 ms from a thread; time from the revert call to the first baseline sample."""
    fault(host, port=5432, direction='in', delay_ms=100, method='nfqueue')
    samples, stop = [], threading.Event()

    def sampler():
        cur = conn.cursor()
        while not stop.is_set():
            started = time.perf_counter()
            cur.execute('SELECT 1')
            cur.fetchone()
            samples.append((time.time(), (time.perf_counter() - started) * 1000.0))
            time.sleep(0.01)
    thread = threading.Thread(target=sampler)
    thread.start()
    time.sleep(1)
    asked = time.time()
    result = fault(host, state='absent')
    time.sleep(1)
    stop.set()
    thread.join()
    back = [t for t, ms in samples if t > asked and ms < base + 5]
    return {'engine_revert_s': result['revert']['revert_seconds'],
            'until_baseline_s': round(back[0] - asked, 3) if back else None,
            'note': 'until_baseline_s includes starting python in the namespace and importing the module'}


PARTS = ('delay', 'jitter', 'loss', 'overhead', 'revert')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--parts', default=','.join(PARTS),
                        help='comma-separated subset of %s; a partial run prints and writes nothing' % ','.join(PARTS))
    parser.add_argument('--rounds', type=int, default=OVERHEAD_ROUNDS, help='interleaved pairs for the overhead')
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(',') if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error('--parts: unknown %s (choose from %s)' % (', '.join(unknown), ', '.join(PARTS)))
    host = lab_primary()
    conn = connect(host)
    base = pct(rtts(conn, SAMPLES), 50)
    results = {'method': 'nfqueue', 'baseline_rtt_ms': round(base, 3), 'delay': [], 'loss': []}
    if 'delay' in parts:
        for delay in (20, 100, 300):
            results['delay'].append(delay_run(host, conn, base, delay))
    if 'jitter' in parts:
        results['jitter'] = delay_run(host, conn, base, 100, 20)
    if 'loss' in parts:
        for loss in (10, 30):
            results['loss'].append(loss_run(host, loss))
    if 'overhead' in parts:
        results['overhead'] = overhead(host, args.rounds)
        results['daemon_cost_pct'] = results['overhead']['daemon_cost_pct']
    if 'revert' in parts:
        results['revert'] = revert_time(host, conn, base)
    conn.close()
    results['targets'] = {}
    if results['delay']:
        results['targets']['delay_p50_within_10pct'] = all(abs(d['p50_error_pct']) <= 10 for d in results['delay'])
        results['targets']['delay_p50_within_3pct'] = all(abs(d['p50_error_pct']) <= 3 for d in results['delay'])
    if results['loss']:
        results['targets']['loss_within_5_points'] = all(abs(loss['error_points']) <= 5 for loss in results['loss'])
    if 'overhead' in results:
        # null, not true or false, when the machine was too busy for the figure to mean anything
        results['targets']['daemon_cost_under_15pct'] = (results['daemon_cost_pct'] < 15) if results['overhead']['reliable'] else None
    if 'revert' in results:
        results['targets']['revert_under_1s'] = results['revert']['engine_revert_s'] < 1
    results['measured_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    if len(parts) == len(PARTS):
        os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
        with open(os.path.join(REPO, 'bench', 'results', 'network.json'), 'w') as handle:
            json.dump(results, handle, indent=2)
    else:
        print(json.dumps(results, indent=2))
    print('| measure | requested | measured |')
    print('|---|---|---|')
    for d in results['delay']:
        row = (d['requested_ms'], d['p50_added_ms'], d['p95_added_ms'], d['p50_error_pct'])
        print('| added RTT p50 / p95 | %d ms | %s / %s ms (%+.1f%%) |' % row)
    if 'jitter' in results:
        j = results['jitter']
        print('| jitter (stdev, p5..p95) | 100 +/- 20 ms | %s ms, %s..%s ms |' % (j['stdev_ms'], j['p5_added_ms'], j['p95_added_ms']))
    for loss in results['loss']:
        print('| loss | %d %% | %s %% of %d connects |' % (loss['requested_pct'], loss['measured_pct'], loss['attempts']))
    if 'overhead' in results:
        o = results['overhead']
        print('| daemon at 0 ms (pgbench -S TPS, median of %d rounds) | < 15 %% | no rule %s, through %s: cost %s %% '
              '(rounds %s; noise %s %%%s; %s us CPU per packet; load %s) |'
              % (len(o['rounds']), o['tps_no_rule'], o['tps_nfqueue_0ms'], o['daemon_cost_pct'],
                 ' '.join(str(p['cost_pct']) for p in o['rounds']), o['noise_pct'],
                 '' if o['reliable'] else ', TOO NOISY: not measured', o.get('daemon_cpu_us_per_packet'),
                 o['load_average_before']))
    if 'revert' in results:
        r = results['revert']
        print('| revert | < 1 s | engine %s s, traffic at baseline after %s s |' % (r['engine_revert_s'], r['until_baseline_s']))
    print('targets: %s' % json.dumps(results['targets']))
    if len(parts) == len(PARTS):
        print('wrote bench/results/network.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
