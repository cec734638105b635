"""An abort stops the kill rounds: no backend is terminated after the revert, and the report says reverted only then.

kill_connections runs a long window with many rounds while an application's
connection pool keeps coming back; mid-window the steady state breaks (an
operator turns pgGit tracking off by hand), the experiment aborts and reverts
at once. The kill rounds run in a ledger-recorded program (pggit-chaos-killer)
on the target: the revert must stop it, so the pool sees no kill after the
revert ends, the program is gone, and the ledger is empty.
"""
from __future__ import annotations

import subprocess
import threading
import time

import psycopg2

from waiting import wait_until
from labtools import REPO, lab_dir, ledger, load_report, playbook_argv, playbook_env, query, trigger_modes

WINDOW = 60
ROUNDS = 30  # one round every 2 s


def connect(host, app):
    return psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], connect_timeout=5, application_name=app)


class Pool(object):
    """Connections that come back when killed, as an application's pool would; every kill seen is timed."""

    def __init__(self, host, size=3):
        self.host = host
        self.conns = [connect(host, 'lab-pool-%d' % i) for i in range(size)]
        self.deaths = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch)
        self.thread.start()

    def _alive(self, conn):
        try:
            conn.cursor().execute('SELECT 1')
            conn.rollback()
            return True
        except psycopg2.Error:
            return False

    def _watch(self):
        while not self.stop.wait(0.05):
            for i, conn in enumerate(self.conns):
                if conn is None or not self._alive(conn):
                    if conn is not None:
                        self.deaths.append(time.time())
                        conn.close()
                    try:
                        self.conns[i] = connect(self.host, 'lab-pool-%d' % i)
                    except psycopg2.Error:
                        self.conns[i] = None

    def close(self):
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            if conn is not None:
                conn.close()


def killers():
    """pggit-chaos-killer programs of this lab's hosts."""
    proc = subprocess.run(['pgrep', '-af', 'pggit-chaos-killer'], capture_output=True, text=True, check=False)
    return [line for line in proc.stdout.splitlines() if 'pgrep' not in line and lab_dir().rstrip('/') + '/' in line]


def connections_records(host):
    return [r for r in ledger(host) if r.get('kind') == 'connections']


def test_abort_stops_the_kill_rounds(primary, tmp_path):
    pool = Pool(primary)
    proc = subprocess.Popen(playbook_argv('chaos.yml', 'chaos_experiments=kill_connections', 'chaos_duration=%d' % WINDOW,
                                          'chaos_ttl=%d' % (WINDOW + 60), 'chaos_fail_on_failure=false',
                                          '{"pggit_chaos_connections_rounds": %d}' % ROUNDS),
                            cwd=REPO, env=playbook_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    triggers = {}
    try:
        assert wait_until(lambda: [r for r in connections_records(primary) if r.get('status') == 'active'], time.time() + 90)
        assert wait_until(lambda: len(pool.deaths) >= 3, time.time() + 30), 'the rounds must really kill before the abort'
        assert len(killers()) == 1
        # The hypothesis (tracking on) breaks: the experiment aborts and reverts.
        triggers = trigger_modes(primary)
        for name in triggers:
            query(primary, 'ALTER EVENT TRIGGER %s DISABLE' % name)
        broken_at = time.time()
        assert wait_until(lambda: not connections_records(primary), time.time() + 60), 'the abort must revert the kill rounds'
        for name in triggers:
            query(primary, 'ALTER EVENT TRIGGER %s ENABLE' % name)
        triggers = {}
        assert proc.wait(timeout=WINDOW + 120) == 0
        finished_at = time.time()
        time.sleep(3 * WINDOW / ROUNDS)  # three more round intervals
    finally:
        for name in triggers:
            query(primary, 'ALTER EVENT TRIGGER %s ENABLE' % name)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pool.close()
    entry = load_report(tmp_path)['entries'][0]
    assert entry['status'] == 'aborted', entry['reasons']
    assert finished_at - broken_at < WINDOW / 2, 'the abort must cut the window short'
    revert_end = entry['timeline']['revert_end']
    assert revert_end and broken_at < revert_end < finished_at
    late = [t for t in pool.deaths if t > revert_end + 0.2]
    assert late == [], 'backends terminated after the revert ended: %s' % ['+%.2fs' % (t - revert_end) for t in late]
    assert [t for t in pool.deaths if t < broken_at], 'the kills happened before the abort'
    assert entry['reverted'] is True and killers() == [], 'reported reverted, and the kill rounds are really gone'
    assert ledger(primary) == [] and set(trigger_modes(primary).values()) == {'O'}
    assert query(primary, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pggit_chaos%'")[0][0] == 0
