"""Fidelity and recovery of the resource and process faults on the lab (PGGIT_LAB_INVENTORY names it).

Measures on the lab's primary, each fault injected and reverted through its module:
- fill fidelity: free bytes asked against the free bytes this script measures
  itself (statvfs) right after the fill, for fill_pct 80/90/95 and free_mb 20/5;
- memory: the memory asked of stress-ng (percent of the PostgreSQL cgroup's
  limit) against the cgroup's peak and its OOM kills;
- CPU: the load asked against the load measured in the cgroup;
- recovery times, sampled every 10 ms by a client that runs one tracked DDL
  (rolled back) per sample, reconnecting as needed:
  backend_crash (SIGKILL of a backend: from the last good DDL before the
  outage to the first after it), postmaster_crash (SIGKILL of the postmaster,
  restart by the revert: from the server's own start time to the first good
  DDL) and disk_full (0 bytes free: from the revert of the fill to the first
  good DDL; when the full disk shut the server down, the revert starts it).
Writes bench/results/resource.json and prints a table. Misses are reported, not tuned away.

Faults that need no PostgreSQL start run in-process from this machine (the
lab's hosts share its filesystem, process ids and cgroups); a revert that may
have to start PostgreSQL runs over SSH with pggit_chaos_revert, so the server
starts inside its host's namespace and cgroups.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
from labtools import INVENTORY, lab_hosts  # noqa: E402  # pylint: disable=wrong-import-position

TTL = 90
MIB = 1024 * 1024
FILLS = (dict(fill_pct=80), dict(fill_pct=90), dict(fill_pct=95), dict(free_mb=20), dict(free_mb=5))
MEMORY_PCTS = (50, 75, 90)
CPU_LOADS = (25, 50, 100)
WATCH_S = 4
CRASH_TRIALS = 3
SAMPLE_S = 0.01


def conn_args(host):
    return dict(login_host=host['pggit_login_host'], login_port=host['pggit_login_port'], login_user=host['pggit_login_user'],
                db=host['pggit_db'])


def module(host, module_name, **args):
    """Run one module in-process in a fresh interpreter, on this machine (not in the host's namespace)."""
    args.setdefault('state_dir', host['pggit_chaos_state_dir'])
    if args.get('state', 'present') == 'present':
        args.setdefault('ttl', TTL)
        args.update(conn_args(host))
    proc = subprocess.run([sys.executable, os.path.join(HERE, '_in_netns.py'), module_name, json.dumps(args)],
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError('%s printed nothing: %s' % (module_name, proc.stderr[-2000:]))
    result = json.loads(lines[-1])
    if result['failed']:
        raise RuntimeError('%s %s: %s' % (module_name, args.get('name'), result['msg']))
    return result


def revert_over_ssh(host, fault_id):
    """The one revert, run on the host itself (its pg_start step starts PostgreSQL in the host's namespace)."""
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible'), host['name'], '-i', INVENTORY, '-m', 'pggit.chaos.pggit_chaos_revert',
            '-a', json.dumps({'faults': [fault_id]})]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError('revert of %s over SSH failed: %s' % (fault_id, proc.stdout[-2000:] + proc.stderr[-2000:]))


def connect(host, application_name='pggit-chaos-bench'):
    conn = psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], connect_timeout=2, application_name=application_name)
    conn.autocommit = False
    return conn


def free_bytes(path):
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


# --- fill fidelity ---------------------------------------------------------------------------

def fill_fidelity(host):
    rows = []
    mount = host['pggit_lab_pgdata_mount']
    for number, ask in enumerate(FILLS):
        name = 'bench-fill-%d' % number
        result = module(host, 'pggit_chaos_disk', name=name, target='data', **ask)
        try:
            measured = free_bytes(mount)
        finally:
            module(host, 'pggit_chaos_disk', name=name, state='absent')
        asked = result.get('asked_free_bytes')
        size = result['filesystem']['size_bytes']
        rows.append(dict(ask=ask, asked_free_bytes=asked, measured_free_bytes=measured, module_free_bytes_after=result['filesystem']['free_bytes_after'],
                         fill_bytes=result.get('fill_bytes'), size_bytes=size,
                         off_bytes=None if asked is None else measured - asked,
                         off_pct_of_fs=None if asked is None else round(100.0 * (measured - asked) / size, 3),
                         after_revert_free_bytes=free_bytes(mount)))
    return rows


# --- stress ----------------------------------------------------------------------------------

def stress_runs(host):
    memory, cpu = [], []
    for pct in MEMORY_PCTS:
        name = 'bench-mem-%d' % pct
        result = module(host, 'pggit_chaos_stress', name=name, resource='memory', memory_pct=pct, watch_s=WATCH_S)
        module(host, 'pggit_chaos_stress', name=name, state='absent')
        cgroup, figures = result['cgroup'], result['figures']
        asked = cgroup['limit_bytes'] * pct / 100.0 if cgroup.get('limit_bytes') else None
        memory.append(dict(asked_pct=pct, asked_bytes=asked, limit_bytes=cgroup.get('limit_bytes'),
                           usage_bytes_before=cgroup.get('usage_bytes_before'), peak_bytes=figures.get('peak_bytes'),
                           # The cgroup holds PostgreSQL too: what stress-ng added is the peak over the usage before.
                           added_bytes=figures['peak_bytes'] - cgroup['usage_bytes_before']
                           if figures.get('peak_bytes') is not None and cgroup.get('usage_bytes_before') is not None else None,
                           peak_over_ask=round(figures['peak_bytes'] / asked, 3) if asked and figures.get('peak_bytes') else None,
                           oom_kills=figures.get('oom_kills'), samples=figures.get('samples')))
    workers = os.cpu_count()
    for load in CPU_LOADS:
        name = 'bench-cpu-%d' % load
        result = module(host, 'pggit_chaos_stress', name=name, resource='cpu', cpu_load=load, cpu_workers=workers, watch_s=WATCH_S)
        module(host, 'pggit_chaos_stress', name=name, state='absent')
        measured = result['figures'].get('cpu_load_measured_pct')
        cpu.append(dict(asked_load_pct=load, workers=workers, measured_load_pct=measured,
                        error_points=None if measured is None else round(measured - load, 1), samples=result['figures'].get('samples')))
    return memory, cpu


# --- recovery --------------------------------------------------------------------------------

class Sampler(object):
    """One tracked DDL (rolled back) every SAMPLE_S on one connection, reconnecting after a failure."""

    def __init__(self, host):
        self.host = host
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.conn = None

    def one(self, number):
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.host, 'pggit-chaos-bench-sampler')
        cur = self.conn.cursor()
        try:
            cur.execute('SELECT count(*) FROM pggit.history')
            before = cur.fetchone()[0]
            cur.execute('CREATE TABLE public.pggit_chaos_bench_%d (id int)' % number)
            cur.execute('SELECT count(*) FROM pggit.history')
            return cur.fetchone()[0] == before + 1
        finally:
            self.conn.rollback()

    def run(self):
        number = 0
        while not self.stop.is_set():
            number += 1
            try:
                ok = self.one(number)
            except psycopg2.Error:
                ok = False
                if self.conn is not None:
                    try:
                        self.conn.close()
                    except psycopg2.Error:
                        pass
                self.conn = None
            self.samples.append((time.time(), ok))
            time.sleep(SAMPLE_S)

    def __enter__(self):
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.conn is not None:
            self.conn.close()

    def wait_ok_after(self, since, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            hit = next((t for t, ok in list(self.samples) if ok and t > since), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        return None

    def outage(self, since):
        """(last good before the first failure after since, first failure, first good after it)."""
        samples = list(self.samples)
        first = next((n for n, (t, ok) in enumerate(samples) if t >= since and not ok), None)
        if first is None:
            return None, None, None
        before = next((t for t, ok in reversed(samples[:first]) if ok), None)
        after = next((t for t, ok in samples[first:] if ok), None)
        return before, samples[first][0], after


def postmaster_start(host):
    conn = connect(host)
    try:
        cur = conn.cursor()
        cur.execute('SELECT extract(epoch FROM pg_postmaster_start_time())')
        return float(cur.fetchone()[0])
    finally:
        conn.close()


def backend_crash(host):
    trials = []
    for trial in range(CRASH_TRIALS):
        victim = connect(host, 'pggit-chaos-bench-victim')
        with Sampler(host) as sampler:
            asked = time.time()
            result = module(host, 'pggit_chaos_process', name='bench-backend-%d' % trial, role='backend', signal='KILL',
                            application_name='pggit-chaos-bench-victim')
            back = sampler.wait_ok_after(asked + 0.05)
            time.sleep(0.3)
            before, first, after = sampler.outage(asked)
        module(host, 'pggit_chaos_process', name='bench-backend-%d' % trial, state='absent')
        victim.close()
        trials.append(dict(signalled=[s['pid'] for s in result.get('signalled') or []], outage_seen=first is not None,
                           recovery_s=round(after - before, 3) if before and after else None,
                           down_seen_s=round(after - first, 3) if first and after else None, back=back is not None))
    return trials


def postmaster_crash(host):
    name = 'bench-postmaster'
    with Sampler(host) as sampler:
        killed = time.time()
        module(host, 'pggit_chaos_process', name=name, role='postmaster', signal='KILL')
        time.sleep(2)
        asked = time.time()
        revert_over_ssh(host, 'process--' + name)
        back = sampler.wait_ok_after(asked)
    started = postmaster_start(host)
    return dict(down_s=round(started - killed, 3), revert_call_s=round(time.time() - asked, 3),
                start_to_first_tracked_ddl_s=round(back - started, 3) if back else None,
                revert_asked_to_first_tracked_ddl_s=round(back - asked, 3) if back else None,
                note='revert_asked includes starting ansible and SSH; start_to_first uses the server clock (same machine)')


def server_running(host):
    try:
        connect(host).close()
        return True
    except psycopg2.OperationalError:
        return False


def disk_full(host):
    name = 'bench-full'
    with Sampler(host) as sampler:
        filled = time.time()
        result = module(host, 'pggit_chaos_disk', name=name, target='data', free_mb=0)
        time.sleep(3)
        failed = sum(1 for t, ok in list(sampler.samples) if t > filled and not ok)
        up = server_running(host)
        asked = time.time()
        if up:  # only the fill to remove: in-process, no SSH in the measure
            module(host, 'pggit_chaos_disk', name=name, state='absent')
        else:  # the revert must start the server inside its namespace
            revert_over_ssh(host, 'disk--' + name)
        back = sampler.wait_ok_after(asked)
    figures = dict(fill_bytes=result.get('fill_bytes'), free_bytes_after=result['filesystem']['free_bytes_after'],
                   ddl_failed_in_3s=failed, panicked=not up, revert_over_ssh=not up,
                   revert_asked_to_first_tracked_ddl_s=round(back - asked, 3) if back else None)
    if not up:
        started = postmaster_start(host)
        figures['start_to_first_tracked_ddl_s'] = round(back - started, 3) if back else None
    return figures


def main():
    name, host = next((n, h) for n, h in lab_hosts().items() if h.get('pggit_lab_role') == 'primary')
    host = dict(host, name=name)
    started = time.time()
    with open('/proc/loadavg') as handle:
        # The lab shares the machine's cores: other load lowers the CPU share the cgroup gets.
        results = {'lab': INVENTORY, 'host': host['pggit_login_host'], 'loadavg_before': handle.read().split()[:3]}
    results['fill'] = fill_fidelity(host)
    results['memory'], results['cpu'] = stress_runs(host)
    results['backend_crash'] = backend_crash(host)
    results['postmaster_crash'] = postmaster_crash(host)
    results['disk_full'] = disk_full(host)
    fill_tolerance = max(MIB, 0.01 * results['fill'][0]['size_bytes'])
    recovered = [t['recovery_s'] for t in results['backend_crash'] if t['recovery_s'] is not None]
    results['targets'] = {
        'fill_within_1MiB_or_1pct': all(abs(r['off_bytes']) <= fill_tolerance for r in results['fill']),
        'memory_peak_at_least_90pct_of_ask': all((r['peak_over_ask'] or 0) >= 0.9 for r in results['memory']),
        'cpu_load_within_15_points': all(r['error_points'] is not None and abs(r['error_points']) <= 15 for r in results['cpu']),
        'backend_crash_recovered_every_time': all(t['back'] for t in results['backend_crash']),
        'postmaster_restarted': results['postmaster_crash']['start_to_first_tracked_ddl_s'] is not None,
        'disk_full_recovered': results['disk_full']['revert_asked_to_first_tracked_ddl_s'] is not None,
    }
    results['seconds'] = round(time.time() - started, 1)
    results['measured_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
    with open(os.path.join(REPO, 'bench', 'results', 'resource.json'), 'w') as handle:
        json.dump(results, handle, indent=2)
    print('| measure | asked | measured |')
    print('|---|---|---|')
    for r in results['fill']:
        print('| fill %s | %.1f MiB free | %.1f MiB free (off %+.1f MiB, %+.2f %% of fs) |' % (
            ', '.join('%s=%s' % kv for kv in r['ask'].items()), r['asked_free_bytes'] / MIB, r['measured_free_bytes'] / MIB,
            r['off_bytes'] / MIB, r['off_pct_of_fs']))
    for r in results['memory']:
        print('| memory %d %% of %.0f MiB | %.1f MiB | peak %.1f MiB (x%s), %.1f MiB over the usage before, %s OOM kills |' % (
            r['asked_pct'], (r['limit_bytes'] or 0) / MIB, (r['asked_bytes'] or 0) / MIB, (r['peak_bytes'] or 0) / MIB,
            r['peak_over_ask'], (r['added_bytes'] or 0) / MIB, r['oom_kills']))
    for r in results['cpu']:
        print('| cpu load, %d workers | %d %% | %s %% |' % (r['workers'], r['asked_load_pct'], r['measured_load_pct']))
    print('| backend_crash recovery (%d trials) | - | %s s (outage seen %s) |' % (
        CRASH_TRIALS, ', '.join('%s' % t['recovery_s'] for t in results['backend_crash']),
        ', '.join(str(t['outage_seen']) for t in results['backend_crash'])))
    p = results['postmaster_crash']
    print('| postmaster_crash: server start to first tracked DDL | - | %s s (revert asked to first DDL %s s) |' % (
        p['start_to_first_tracked_ddl_s'], p['revert_asked_to_first_tracked_ddl_s']))
    d = results['disk_full']
    print('| disk_full: revert to first tracked DDL | - | %s s (panicked %s, %d DDL failed in 3 s) |' % (
        d['revert_asked_to_first_tracked_ddl_s'], d['panicked'], d['ddl_failed_in_3s']))
    print('load average before: %s (the lab shares the machine)' % ' '.join(results['loadavg_before']))
    print('targets: %s' % json.dumps(results['targets']))
    print('recovered backend trials: %d of %d' % (len(recovered), CRASH_TRIALS))
    print('wrote bench/results/resource.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
