"""Dead-man for the resource and process faults: kill -9 the controller mid-fault; the target heals by its TTL.

- process_pause: the region_b replica's walreceiver stays stopped after the
  controller died, and resumes by the TTL (the reaper sends SIGCONT): no
  PostgreSQL process left in state T, the replica streaming again and caught
  up, its ledger empty.
- disk_full: the fill file stays after the controller died, and is gone by the
  TTL; the server is up (the reaper starts it when the full disk shut it down)
  and takes tracked DDL.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import psycopg2
from waiting import wait_until
from labtools import REPO, chaos_processes, ledger, playbook_argv, playbook_env, query

DURATION, TTL = 30, 35
DIGEST = "SELECT count(*), md5(string_agg(id::text || sql_executed, ',' ORDER BY id)) FROM pggit.history"


def kill_controller_after_injection(host, kind, tmp_path, *extra_vars):
    """Start chaos.yml, wait until `host` holds an active fault of `kind`, then SIGKILL the whole controller."""
    proc = subprocess.Popen(playbook_argv('chaos.yml', *extra_vars), cwd=REPO, env=playbook_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        active = wait_until(lambda: [r for r in ledger(host) if r.get('status') == 'active' and r.get('kind') == kind],
                            time.time() + 120)
        assert active, 'the %s fault was never injected on %s' % (kind, host['pggit_lab_netns'])
        time.sleep(3)
        return active[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def postgres_states(host):
    """pid -> /proc state letter of every process working in the host's data directory (all of its PostgreSQL)."""
    pgdata = os.path.realpath(host['pggit_lab_pgdata'])
    states = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            if os.path.realpath(os.readlink('/proc/%s/cwd' % entry)) != pgdata:
                continue
            with open('/proc/%s/stat' % entry) as handle:
                states[int(entry)] = handle.read().rsplit(')', 1)[1].split()[0]
        except OSError:
            continue
    return states


def stopped(host):
    return sorted(pid for pid, state in postgres_states(host).items() if state == 'T')


def receiver(host):
    """(pid, status) of the replica's walreceiver, or None."""
    try:
        rows = query(host, 'SELECT pid, status FROM pg_stat_wal_receiver')
    except psycopg2.Error:
        return None
    return tuple(rows[0]) if rows else None


def own_processes(host):
    """Engine programs (reapers, ...) running from this host's state dir."""
    return [line for line in chaos_processes() if host['pggit_chaos_state_dir'].rstrip('/') + '/' in line]


def nothing_left(lab):
    """The workload the dead controller started ends by itself (its duration) and its record goes: no ledger, no program."""
    return not any(ledger(host) for host in lab.values()) and not chaos_processes()


def test_killed_controller_mid_pause_resumes_the_walreceiver_by_the_ttl(lab, primary, tmp_path):
    paused = next(h for h in lab.values() if h.get('pggit_region') == 'region_b' and h is not primary)
    assert not stopped(paused) and (receiver(paused) or (None, ''))[1] == 'streaming', 'the lab must start at baseline'
    record = kill_controller_after_injection(paused, 'process', tmp_path, 'chaos_experiments=process_pause',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The pause outlived the controller: the walreceiver is stopped and the replica falls behind.
    pid = receiver(paused)[0]
    assert stopped(paused) == [pid], postgres_states(paused)
    query(primary, 'CREATE TABLE public.deadman_pause_%d (id int)' % int(time.time()))
    primary_rows = query(primary, 'SELECT count(*) FROM pggit.history')[0][0]
    time.sleep(1)
    assert query(paused, 'SELECT count(*) FROM pggit.history')[0][0] < primary_rows
    assert ledger(paused) and own_processes(paused), 'the record and its reaper must still be there'

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL
    healed = wait_until(lambda: not stopped(paused) and not ledger(paused), expires_at + 5)
    healed_at = time.time()
    assert healed, 'not resumed within TTL + 5 s: stopped %s, ledger %s' % (stopped(paused), ledger(paused))
    assert healed_at - killed_at < TTL + 5
    assert wait_until(lambda: (receiver(paused) or (None, ''))[1] == 'streaming', time.time() + 10), receiver(paused)
    assert wait_until(lambda: query(paused, DIGEST) == query(primary, DIGEST), time.time() + 60), \
        'the replica did not catch up with the primary after the resume'
    assert wait_until(lambda: not own_processes(paused), time.time() + 5), own_processes(paused)
    assert wait_until(lambda: nothing_left(lab), time.time() + 120), (chaos_processes(), [ledger(h) for h in lab.values()])
    print('deadman pause: resumed %.2f s after expires_at' % (healed_at - expires_at))


def fill_files(host):
    return glob.glob(os.path.join(host['pggit_lab_pgdata_mount'], '.pggit-chaos-fill-*'))


def tracked_ddl_works(host):
    """A committed CREATE TABLE gets its history row (dropped again, tracked too)."""
    name = 'deadman_disk_%d' % int(time.time() * 1000)
    try:
        before = query(host, 'SELECT count(*) FROM pggit.history')[0][0]
        query(host, 'CREATE TABLE public.%s (id int)' % name)
        query(host, 'DROP TABLE public.%s' % name)
        return query(host, 'SELECT count(*) FROM pggit.history')[0][0] >= before + 2
    except psycopg2.Error:
        return False


def test_killed_controller_mid_disk_full_removes_the_fill_by_the_ttl(lab, primary, tmp_path):
    assert not fill_files(primary), 'the lab must start at baseline'
    record = kill_controller_after_injection(primary, 'disk', tmp_path, 'chaos_experiments=disk_full',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The full disk outlived the controller.
    assert len(fill_files(primary)) == 1, fill_files(primary)
    fs = os.statvfs(primary['pggit_lab_pgdata_mount'])
    assert fs.f_bavail * fs.f_frsize < 1024 * 1024, 'the filesystem is not full'

    def disk_records():
        return [r for r in ledger(primary) if r.get('kind') == 'disk']
    assert disk_records()

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL
    healed = wait_until(lambda: not fill_files(primary) and not disk_records(), expires_at + 5)
    healed_at = time.time()
    assert healed, 'fill not removed within TTL + 5 s: %s, ledger %s' % (fill_files(primary), disk_records())
    assert healed_at - killed_at < TTL + 5
    # The server is up (started by the reaper if the full disk shut it down) and tracks DDL.
    assert wait_until(lambda: tracked_ddl_works(primary), time.time() + 10), 'the server is not up with tracked DDL'
    assert wait_until(lambda: nothing_left(lab), time.time() + 120), (chaos_processes(), [ledger(h) for h in lab.values()])
    print('deadman disk_full: fill removed %.2f s after expires_at' % (healed_at - expires_at))
