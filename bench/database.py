"""Fidelity and recovery of the database faults on the lab (PGGIT_LAB_INVENTORY names it).

Measures on the lab's primary, each fault injected and reverted through its module, run over SSH on the host
(``ansible -m``), so restarts happen inside the host's namespace and cgroups:
- clock: the offset asked of pggit_chaos_clock against the offset the module measured and the offset this script
  measures itself (the server's clock_timestamp() against this machine's clock, which the lab hosts share), for a
  first injection (a restart) and then file rewrites (no restart); then the offset after the revert;
- locks: ACCESS EXCLUSIVE held on pggit.history and pggit.objects; one client runs tracked DDL back to back with
  lock_timeout 1000 ms, another one DDL with no lock_timeout that waits for the release: the wait of each DDL
  (p50/p95/max), the count that timed out, and the time from the end of the release to the waiting DDL's commit;
- corruption: the time from the module's return (the page written and read from disk) to the first bt_index_check
  that reports it, polled every 50 ms by this script, and the time to recover by the byte-exact restore and by
  REINDEX INDEX CONCURRENTLY, from the revert's start to the first clean bt_index_check.
Writes bench/results/database.json and prints a table. Misses are reported, not tuned away.
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
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
from labtools import INVENTORY, lab_hosts, lab_primary  # noqa: E402  # pylint: disable=wrong-import-position

TTL = 120
CLOCK_OFFSETS = (-3600, -60, 60, 3600, 86400)
LOCK_HOLD_S = 8
LOCK_TIMEOUT_MS = 1000
CORRUPT_TRIALS = 2
POLL_S = 0.05
SCHEMA = 'pggit_chaos_bench'


def adhoc(host, module, args):
    """Run one module on the host over SSH; return its result (raise with its message when it failed)."""
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible'), host['name'], '-i', INVENTORY, '-m', 'pggit.chaos.' + module,
            '-a', json.dumps(args)]
    # The ad-hoc callback prints "<host> | <STATUS> => {json}" (ansible.posix's json callback may be missing).
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    try:
        result = json.loads(proc.stdout[proc.stdout.index(' => ') + 4:])
    except ValueError:
        raise RuntimeError('%s printed no result: %s' % (module, (proc.stdout + proc.stderr)[-2000:]))
    if result.get('failed') or result.get('unreachable'):
        raise RuntimeError('%s %s: %s' % (module, args.get('name'), result.get('msg')))
    return result


def conn_args(host):
    return dict(login_host=host['pggit_login_host'], login_port=host['pggit_login_port'], login_user=host['pggit_login_user'],
                db=host['pggit_db'], state_dir=host['pggit_chaos_state_dir'])


def connect(host, **kwargs):
    conn = psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], connect_timeout=5, application_name='pggit-chaos-bench', **kwargs)
    conn.autocommit = True
    return conn


def sql(host, text, args=None):
    conn = connect(host)
    try:
        cur = conn.cursor()
        cur.execute(text, args)
        return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def server_offset(host):
    """The server's clock minus this machine's, read around one query."""
    conn = connect(host)
    try:
        cur = conn.cursor()
        before = time.time()
        cur.execute('SELECT extract(epoch FROM clock_timestamp())::float8')
        server = cur.fetchone()[0]
        return round(server - (before + time.time()) / 2.0, 3)
    finally:
        conn.close()


def pct(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))], 1)


# --- clock ------------------------------------------------------------------------------------

def clock_runs(host):
    runs, name = [], 'bench-clock-%d' % int(time.time())
    try:
        for number, offset in enumerate(CLOCK_OFFSETS):
            started = time.time()
            result = adhoc(host, 'pggit_chaos_clock', dict(conn_args(host), name=name, ttl=TTL, offset_s=offset))
            took = time.time() - started
            time.sleep(0.5)
            runs.append(dict(asked_s=offset, module_measured_s=result.get('measured_offset_s'), bench_measured_s=server_offset(host),
                             restarted=result.get('restarted'), call_s=round(took, 2), first=number == 0,
                             clocks=result.get('clocks')))
    finally:
        started = time.time()
        adhoc(host, 'pggit_chaos_clock', dict(name=name, state='absent', state_dir=host['pggit_chaos_state_dir']))
        revert_s = round(time.time() - started, 2)
    after = None
    for _attempt in range(50):
        try:
            after = server_offset(host)
            break
        except psycopg2.Error:
            time.sleep(0.2)
    for run in runs:
        run['error_s'] = None if run['bench_measured_s'] is None else round(run['bench_measured_s'] - run['asked_s'], 3)
    return dict(runs=runs, revert_s=revert_s, offset_after_revert_s=after)


# --- locks ------------------------------------------------------------------------------------

def ddl(host, name, lock_timeout_ms=None):
    """One tracked CREATE TABLE in the bench schema: (seconds, outcome)."""
    conn = connect(host, options='-c lock_timeout=%d' % lock_timeout_ms if lock_timeout_ms else '')
    conn.autocommit = False
    started = time.time()
    try:
        conn.cursor().execute('CREATE TABLE %s.%s (id int)' % (SCHEMA, name))
        conn.commit()
        return time.time() - started, 'ok', time.time()
    except psycopg2.errors.LockNotAvailable:  # pylint: disable=no-member
        conn.rollback()
        return time.time() - started, 'timeout', time.time()
    finally:
        conn.close()


def lock_runs(host):
    sql(host, 'CREATE SCHEMA IF NOT EXISTS %s' % SCHEMA)
    name = 'bench-lock-%d' % int(time.time())
    result = adhoc(host, 'pggit_chaos_lock', dict(conn_args(host), name=name, ttl=TTL))
    held_at = time.time()
    waits, waiter = [], {}

    def wait_for_release():
        waiter['seconds'], waiter['outcome'], waiter['done_at'] = ddl(host, 'waiter_%d' % int(held_at))

    thread = threading.Thread(target=wait_for_release)
    thread.start()
    number = 0
    while time.time() - held_at < LOCK_HOLD_S:
        number += 1
        waits.append(ddl(host, 'try_%d_%d' % (int(held_at), number), LOCK_TIMEOUT_MS))
    adhoc(host, 'pggit_chaos_lock', dict(name=name, state='absent', state_dir=host['pggit_chaos_state_dir']))
    released_at = time.time()
    thread.join(60)
    sql(host, 'DROP SCHEMA %s CASCADE' % SCHEMA)
    ms = [w[0] * 1000 for w in waits]
    return dict(locks=result.get('locks'), lock_timeout_ms=LOCK_TIMEOUT_MS, hold_s=LOCK_HOLD_S, attempts=len(waits),
                timed_out=len([w for w in waits if w[1] == 'timeout']),
                wait_ms=dict(p50=pct(ms, 50), p95=pct(ms, 95), max=pct(ms, 100)),
                waiter=dict(wait_s=round(waiter.get('seconds', 0), 3), outcome=waiter.get('outcome'),
                            commit_after_release_end_s=round(waiter['done_at'] - released_at, 3) if waiter.get('done_at') else None))


# --- corruption -------------------------------------------------------------------------------

def amcheck(host):
    """None when clean, else amcheck's error text."""
    try:
        sql(host, "SELECT bt_index_check('pggit.history_pkey'::regclass, true)")
        return None
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0]


def poll(host, want_corrupt, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            text = amcheck(host)
        except psycopg2.OperationalError:
            text = 'unreachable'
        if (text is not None and text != 'unreachable') == want_corrupt and text != 'unreachable':
            return time.time(), text
        time.sleep(POLL_S)
    return None, None


def corrupt_runs(host):
    if not sql(host, "SELECT 1 FROM pg_extension WHERE extname = 'amcheck'"):
        sql(host, 'CREATE EXTENSION amcheck')
    runs = []
    for recover in ('restore', 'reindex'):
        for trial in range(CORRUPT_TRIALS):
            name = 'bench-corrupt-%s-%d-%d' % (recover, trial, int(time.time()))
            started = time.time()
            result = adhoc(host, 'pggit_chaos_corrupt', dict(conn_args(host), name=name, ttl=TTL, recover=recover))
            returned = time.time()
            seen_at, text = poll(host, True, timeout=20)
            revert_at = time.time()
            adhoc(host, 'pggit_chaos_corrupt', dict(name=name, state='absent', state_dir=host['pggit_chaos_state_dir']))
            reverted = time.time()
            clean_at, dummy = poll(host, False)
            runs.append(dict(recover=recover, reveal=result.get('reveal'), block=result.get('block'),
                             inject_s=round(returned - started, 3),
                             detection_s=round(seen_at - returned, 3) if seen_at else None, amcheck_text=text,
                             revert_call_s=round(reverted - revert_at, 3),
                             recover_s=round(clean_at - revert_at, 3) if clean_at else None))
    return runs


def main():
    hosts = lab_hosts()
    for name, host in hosts.items():
        host['name'] = name
    primary = lab_primary(hosts)
    results = dict(inventory=INVENTORY, host=primary['name'], measured_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    results['clock'] = clock_runs(primary)
    results['locks'] = lock_runs(primary)
    results['corruption'] = corrupt_runs(primary)
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    with open(os.path.join(HERE, 'results', 'database.json'), 'w') as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    print('%-28s %10s %14s %14s %9s' % ('clock offset asked (s)', 'module (s)', 'measured (s)', 'error (s)', 'restart'))
    for run in results['clock']['runs']:
        print('%-28s %10s %14s %14s %9s' % (run['asked_s'], run['module_measured_s'], run['bench_measured_s'], run['error_s'],
                                            run['restarted']))
    print('clock after the revert: %s s off (revert %s s)' % (results['clock']['offset_after_revert_s'], results['clock']['revert_s']))
    locks = results['locks']
    figures = (locks['lock_timeout_ms'], locks['attempts'], locks['wait_ms']['p50'], locks['wait_ms']['p95'],
               locks['wait_ms']['max'], locks['timed_out'], locks['waiter']['outcome'], locks['waiter']['wait_s'],
               locks['waiter']['commit_after_release_end_s'])
    print('lock wait (lock_timeout %d ms, %d attempts): p50 %s ms, p95 %s ms, max %s ms; %d timed out; waiter %s after %s s, '
          'committed %s s after the release returned' % figures)
    print('%-10s %-8s %12s %14s %14s  %s' % ('recover', 'reveal', 'inject (s)', 'detection (s)', 'recover (s)', 'amcheck'))
    for run in results['corruption']:
        print('%-10s %-8s %12s %14s %14s  %s' % (run['recover'], run['reveal'], run['inject_s'], run['detection_s'], run['recover_s'],
                                                 run['amcheck_text']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
