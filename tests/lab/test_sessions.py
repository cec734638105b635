"""connection_exhaustion on the lab: idle sessions fill max_connections, new DDL clients are refused (outcome fail,
never lost), the superuser probes keep working; and the dead-man case, where the target's TTL frees every session.

Both tests read the fault's own evidence apart from the playbook: this test polls pg_stat_activity (as the superuser,
through the reserved slots) for the holder's sessions while the playbook runs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg2
from waiting import wait_until
from labtools import REPO, chaos_processes, ledger, load_report, playbook_argv, playbook_env, query
from test_resource_deadman import nothing_left
from torture import leftovers

ROLE = 'pggit_chaos_client'
HOLDERS = ("SELECT count(*) FILTER (WHERE application_name LIKE 'pggit-chaos-holder-%%'), count(*) FILTER (WHERE usename = %s) "
           "FROM pg_stat_activity")
SLOTS = "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
# Our role may log in only inside a fault's life: before and after an experiment it is NOLOGIN (or not there yet).
CAN_LOGIN = 'SELECT rolcanlogin FROM pg_roles WHERE rolname = %s'


def role_can_login(host):
    return [row[0] for row in query(host, CAN_LOGIN, (ROLE,))] == [True]


def kill_controller_once_holding(host, tmp_path, *extra_vars):
    """Start chaos.yml, wait until `host` holds the holder's active record (the DDL clients' role record, also of
    kind sessions, comes first and holds no sessions), then SIGKILL the whole controller."""
    proc = subprocess.Popen(playbook_argv('chaos.yml', *extra_vars), cwd=REPO, env=playbook_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        active = wait_until(lambda: [r for r in ledger(host) if r.get('status') == 'active' and r.get('kind') == 'sessions'
                                     and any(s.get('match') == 'pggit-chaos-holder' for s in r.get('undo') or [])],
                            time.time() + 120)
        assert active, 'the sessions fault was never injected on %s' % host['pggit_lab_netns']
        time.sleep(3)
        return active[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def holder_sessions(host):
    """(holder sessions, sessions of our role) in pg_stat_activity, or None when the server cannot be read."""
    try:
        return tuple(query(host, HOLDERS, (ROLE,))[0])
    except psycopg2.Error:
        return None


def holder_processes():
    return [line for line in chaos_processes() if 'pggit-chaos-holder' in line]


class Watcher(object):
    """Polls the holder's sessions in a thread; keeps the most seen and the probe's failures to connect."""

    def __init__(self, host):
        self.host, self.most, self.unread, self.done = host, 0, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done:
            seen = holder_sessions(self.host)
            if seen is None:
                self.unread += 1
            else:
                self.most = max(self.most, seen[0])
            time.sleep(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done = True
        self.thread.join(timeout=10)


def test_connection_exhaustion_refuses_new_ddl_clients_and_keeps_the_probes(lab, primary, tmp_path):
    assert holder_sessions(primary) == (0, 0) and not ledger(primary), 'the lab must start at baseline'
    slots = query(primary, SLOTS)[0][0]
    with Watcher(primary) as watcher:
        started = time.time()
        run = subprocess.run(playbook_argv('chaos.yml', 'chaos_experiments=connection_exhaustion', 'chaos_duration=8'),
                             cwd=REPO, env=playbook_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
        elapsed = time.time() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    entry = load_report(tmp_path)['entries'][0]
    assert entry['experiment'] == 'connection_exhaustion' and entry['status'] == 'passed', entry['reasons']

    # The fault happened: this test saw the holder fill the non-reserved slots, and new DDL clients were refused.
    assert watcher.most >= slots - 5, 'pg_stat_activity showed %d holder sessions of %d slots' % (watcher.most, slots)
    evidence = entry['evidence']
    assert evidence['fault_check'] == 'sessions'
    assert evidence['sessions_held'] > 0 and evidence['sessions_seen_after_fill'] > 0
    assert evidence['refused'] > 0 and 'remaining connection slots are reserved' in evidence['refusal_message']
    assert evidence['first_refused_at'] <= evidence['last_refused_at']
    # Each refused client is a definite fail, none lost; DDL went through before the slots were full.
    workload = entry['workload']
    assert workload['lost'] == [] and workload['unexpected'] == [] and workload['duplicated'] == []
    assert workload['failed'] >= evidence['refused'] and workload['ok'] > 0 and workload['unknown'] == 0
    # The superuser probes kept working through the reserved slots: every round of the window healthy.
    rounds = entry['steady_state']['during']['rounds']
    assert rounds and all(r['healthy'] for r in rounds)
    assert watcher.unread == 0, 'the test (superuser) could not read pg_stat_activity %d time(s)' % watcher.unread

    # The revert freed every session: no holder, no session of our role, no record.
    assert holder_sessions(primary) == (0, 0) and not holder_processes() and not ledger(primary)
    # The role could log in during the run (the DDL clients did), and cannot any more: a leftover login is a way in.
    assert not role_can_login(primary), 'role %s may still log in after the revert' % ROLE
    report = (tmp_path / 'chaos-report.md').read_text()
    assert '## Connection exhaustion' in report and 'remaining connection slots are reserved' in report
    print('sessions: held %d (test saw %d of %d slots), refused %d, revert %.2f s, playbook %.1f s'
          % (evidence['sessions_held'], watcher.most, slots, evidence['refused'], entry['timings']['revert_s'], elapsed))


DURATION, TTL = 10, 15


def test_killed_controller_mid_exhaustion_frees_every_session_by_the_ttl(lab, primary, tmp_path):
    assert holder_sessions(primary) == (0, 0) and not ledger(primary), 'the lab must start at baseline'
    slots = query(primary, SLOTS)[0][0]
    record = kill_controller_once_holding(primary, tmp_path, 'chaos_experiments=connection_exhaustion',
                                          'chaos_duration=%d' % DURATION, 'chaos_ttl=%d' % TTL)
    killed_at = time.time()

    # The sessions outlived the controller: the holder still fills the slots.
    held = holder_sessions(primary)
    assert held[0] >= slots - 5 and held[1] >= held[0], 'holder sessions %s of %d slots' % (held, slots)
    assert holder_processes(), 'the holder must still be there'

    expires_at = record['expires_at']
    assert expires_at - record['created_at'] == TTL

    def freed_now():
        seen = holder_sessions(primary)
        return (seen is not None and seen[0] == 0 and not holder_processes()
                and not [r for r in ledger(primary) if r.get('kind') == 'sessions'])
    freed = wait_until(freed_now, expires_at + 5)
    freed_at = time.time()
    assert freed, 'not freed within TTL + 5 s: sessions %s, holders %s, ledger %s' % (
        holder_sessions(primary), holder_processes(), ledger(primary))
    assert holder_sessions(primary)[0] == 0 and not holder_processes()
    assert freed_at - killed_at < TTL + 5
    # The reapers took the role's login away too, with no controller.
    assert wait_until(lambda: not role_can_login(primary), time.time() + 10), 'role %s may still log in' % ROLE
    # The workload the dead controller started ends by its own duration; then nothing of ours is left: no record,
    # no program, no session, and no process at all on a lab host (the workload module's async wrapper included),
    # so the next test starts from the baseline.
    assert wait_until(lambda: nothing_left(lab) and holder_sessions(primary) == (0, 0), time.time() + 60), \
        (chaos_processes(), [ledger(h) for h in lab.values()], holder_sessions(primary))
    assert wait_until(lambda: leftovers(lab) == [], time.time() + 60), leftovers(lab)
    print('deadman sessions: freed %.2f s after expires_at (%.2f s after the kill)' % (freed_at - expires_at, freed_at - killed_at))
