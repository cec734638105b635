"""Dead-man for the database faults: kill -9 the controller mid-fault; the target heals by its TTL.

- lock_contention: the holder's ACCESS EXCLUSIVE locks on pggit.history and
  pggit.objects stay after the controller died (tracked DDL cannot commit), and
  go by the TTL (the reaper stops the holder and terminates its backend): no
  pggit-chaos-locker session left, tracked DDL works, ledger empty.
- clock_skew: the primary's postmaster runs with the libfaketime preload and a
  clock one hour back after the controller died, and by the TTL the reaper
  restarts it without the preload: its /proc/<pid>/environ holds no faketime,
  now() is true again, tracked DDL works, ledger empty.
"""
from __future__ import annotations

import datetime
import os
import time

import psycopg2
from waiting import wait_until
from labtools import chaos_processes, ledger, query
from test_resource_deadman import kill_controller_after_injection, nothing_left, tracked_ddl_works

DURATION, TTL = 30, 35
LOCKERS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pggit-chaos-locker%'"
HELD = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'pggit' AND c.relname IN ('history', 'objects') AND l.mode = 'AccessExclusiveLock' AND l.granted")


def lockers(host):
    try:
        return query(host, LOCKERS)[0][0]
    except psycopg2.Error:
        return None


def ddl_blocked(host):
    """A tracked CREATE TABLE fails by its lock_timeout (rolled back: it leaves nothing)."""
    conn = psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], options='-c lock_timeout=500', connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute('CREATE TABLE public.deadman_lock_%d (id int)' % int(time.time() * 1000))
        return False
    except psycopg2.errors.LockNotAvailable:  # pylint: disable=no-member
        return True
    finally:
        conn.rollback()
        conn.close()


def test_killed_controller_mid_lock_frees_the_lock_by_the_ttl(lab, primary, tmp_path):
    assert lockers(primary) == 0 and query(primary, HELD)[0][0] == 0, 'the lab must start at baseline'
    record = kill_controller_after_injection(primary, 'lock', tmp_path, 'chaos_experiments=lock_contention',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The locks outlived the controller: tracked DDL blocks.
    assert lockers(primary) == 1 and query(primary, HELD)[0][0] == 2
    assert ddl_blocked(primary), 'tracked DDL did not block on the held locks'

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL
    freed = wait_until(lambda: lockers(primary) == 0 and not [r for r in ledger(primary) if r.get('kind') == 'lock'],
                       expires_at + 5)
    freed_at = time.time()
    assert freed, 'the lock was not freed within TTL + 5 s: %s holder session(s), ledger %s' % (lockers(primary), ledger(primary))
    assert freed_at - killed_at < TTL + 5
    assert query(primary, HELD)[0][0] == 0
    assert wait_until(lambda: tracked_ddl_works(primary), time.time() + 10), 'tracked DDL does not work after the TTL'
    assert wait_until(lambda: nothing_left(lab), time.time() + 120), (chaos_processes(), [ledger(h) for h in lab.values()])
    print('deadman lock: freed %.2f s after expires_at' % (freed_at - expires_at))


def postmaster_environ(host):
    """The environment of the host's postmaster (from postmaster.pid), or None when it is not running."""
    try:
        with open(os.path.join(host['pggit_lab_pgdata'], 'postmaster.pid')) as handle:
            pid = int(handle.readline())
        with open('/proc/%d/environ' % pid, 'rb') as handle:
            return [item.decode('utf-8', 'replace') for item in handle.read().split(b'\0') if item]
    except (OSError, ValueError):
        return None


def preloaded(host):
    environ = postmaster_environ(host) or []
    return [item for item in environ if 'faketime' in item.lower()]


def offset_s(host):
    """The server's now() minus this machine's clock (the lab hosts share it), in seconds, or None when unreachable."""
    try:
        server = query(host, 'SELECT extract(epoch FROM clock_timestamp())::float8')[0][0]
    except psycopg2.Error:
        return None
    return server - time.time()


def test_killed_controller_mid_clock_skew_restarts_without_the_preload_by_the_ttl(lab, primary, tmp_path):
    assert not preloaded(primary) and abs(offset_s(primary)) < 2, 'the lab must start at baseline'
    record = kill_controller_after_injection(primary, 'clock', tmp_path, 'chaos_experiments=clock_skew',
                                             'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The skew outlived the controller: the postmaster has the preload and its clock is an hour back.
    assert wait_until(lambda: preloaded(primary) and offset_s(primary) is not None, time.time() + 20), postmaster_environ(primary)
    assert abs(offset_s(primary) + 3600) < 5, 'the clock is %s s off, not -3600' % offset_s(primary)

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL
    healed = wait_until(lambda: postmaster_environ(primary) is not None and not preloaded(primary)
                        and not [r for r in ledger(primary) if r.get('kind') == 'clock'], expires_at + 15)
    healed_at = time.time()
    assert healed, 'not restarted without the preload within TTL + 15 s: %s, ledger %s' % (preloaded(primary), ledger(primary))
    assert healed_at - killed_at < TTL + 15
    assert wait_until(lambda: offset_s(primary) is not None and abs(offset_s(primary)) < 2, time.time() + 10), offset_s(primary)
    assert wait_until(lambda: tracked_ddl_works(primary), time.time() + 10), 'tracked DDL does not work after the TTL'
    assert wait_until(lambda: nothing_left(lab), time.time() + 120), (chaos_processes(), [ledger(h) for h in lab.values()])
    print('deadman clock: true clock %.2f s after expires_at (%s)' % (healed_at - expires_at, datetime.datetime.now().isoformat()))
