"""pggit_chaos_connections really terminates backends, only the chosen ones, and stops when reverted.

The kill rounds run in a ledger-recorded program (pggit-chaos-killer): these
tests prove that the rounds happen, that a revert (state=absent, or the
experiment's pggit_chaos_revert) stops them at once, that the TTL reaper
alone stops them when the controller is gone, and that nothing is left.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import psycopg2
import pytest

from background import kill_programs, ledger_ids, programs, start_module
from modrun import run_module
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _ledger
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_connections, pggit_chaos_revert

KILLER = 'pggit-chaos-killer'


def connect(pgdb, app):
    return psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'], application_name=app)


@pytest.fixture
def private_state_dir(state_dir):
    """The shared state_dir fixture, and no program started from it outlives the test."""
    yield state_dir
    kill_programs(state_dir)


@pytest.fixture
def victims(pgdb):
    conns = [connect(pgdb, 'victim-%d' % i) for i in range(4)]
    bystander = connect(pgdb, 'bystander')
    yield conns, bystander
    for conn in conns + [bystander]:
        conn.close()


def alive(conn):
    try:
        conn.cursor().execute('SELECT 1')
        conn.rollback()
        return True
    except psycopg2.Error:
        return False


class Pool(object):
    """Connections that come back when killed, as an application's pool would; it counts every kill it sees."""

    def __init__(self, pgdb, size=3):
        self.pgdb = pgdb
        self.conns = [connect(pgdb, 'pooled-%d' % i) for i in range(size)]
        self.deaths = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch)
        self.thread.start()

    def _watch(self):
        while not self.stop.wait(0.02):
            for i, conn in enumerate(self.conns):
                if not alive(conn):
                    self.deaths.append(time.time())
                    conn.close()
                    try:
                        self.conns[i] = connect(self.pgdb, 'pooled-%d' % i)
                    except psycopg2.Error:
                        pass

    def close(self):
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def pool(pgdb):
    created = Pool(pgdb)
    yield created
    created.close()


def args(pgdb, state_dir, **extra):
    base = dict(pgdb, name='kills', state_dir=state_dir, ttl=60)
    base.update(extra)
    return base


def test_rounds_terminate_exactly_the_chosen_backends_and_leave_nothing(pgdb, private_state_dir, victims):
    conns, bystander = victims
    by_conn = [(c, c.get_backend_pid()) for c in conns]
    pids = sorted(pid for _c, pid in by_conn)
    result, failed = run_module(pggit_chaos_connections.main,
                                args(pgdb, private_state_dir, count=2, application_name='victim-%', rounds=2, interval=0.5))
    assert not failed, result['msg']
    assert result['changed'] and result['rounds'] == 2 and result['candidates'] == [4, 2]
    killed = [t['pid'] for t in result['terminated']]
    assert killed == pids, 'oldest first, two per round'
    assert [t['round'] for t in result['terminated']] == [1, 1, 2, 2]
    assert all(t['application_name'].startswith('victim-') for t in result['terminated'])
    assert result['msg'] == 'terminated 4 backend(s) in 2 round(s)'
    assert not any(alive(c) for c in conns)
    assert alive(bystander)
    # Ended by itself: the module removed the record, the program and the results file are gone.
    assert result['closed']['result'] == 'reverted'
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []
    assert [f for f in os.listdir(os.path.join(private_state_dir, 'faults')) if not f.startswith('.')] == []


def test_check_mode_says_would_terminate_and_kills_nothing(pgdb, private_state_dir, victims):
    conns, _ignored = victims
    result, failed = run_module(pggit_chaos_connections.main,
                                args(pgdb, private_state_dir, percent=50, application_name='victim-%', rounds=3, interval=1),
                                check_mode=True)
    assert not failed, result['msg']
    assert result['terminated'] == [] and len(result['would_terminate']) == 2 and result['changed']
    assert result['msg'] == 'would terminate 2 of 4 candidate backend(s) in the first of 3 round(s); terminated none'
    assert 'terminated 2' not in result['msg']
    assert all(alive(c) for c in conns)
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []


def test_percent_rounds_up(pgdb, private_state_dir, victims):
    result, failed = run_module(pggit_chaos_connections.main, args(pgdb, private_state_dir, percent=30, application_name='victim-%'))
    assert not failed and len(result['terminated']) == 2  # ceil(4 * 0.3)


def test_no_match_is_not_a_change(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_connections.main, args(pgdb, private_state_dir, count=5, application_name='nobody-%'))
    assert not failed and result['changed'] is False and result['terminated'] == [] and result['candidates'] == [0]
    assert ledger_ids(private_state_dir) == []


@pytest.mark.parametrize('how', ['state=absent', 'pggit_chaos_revert experiment'])
def test_revert_in_the_middle_stops_the_rounds(pgdb, private_state_dir, pool, how):
    result, failed = run_module(pggit_chaos_connections.main,
                                args(pgdb, private_state_dir, count=1, application_name='pooled-%', rounds=60, interval=0.3,
                                     experiment='exp1', wait=False))
    assert not failed, result['msg']
    killer = result['killer']
    assert programs(private_state_dir, KILLER) == [killer['pid']]
    assert ledger_ids(private_state_dir) == ['connections--kills']
    assert wait_for(lambda: len(pool.deaths) >= 3, 10), 'the rounds must really kill before the revert'

    if how == 'state=absent':
        reverted, failed = run_module(pggit_chaos_connections.main, dict(args(pgdb, private_state_dir), state='absent'))
        assert not failed and reverted['revert']['result'] == 'reverted'
    else:
        reverted, failed = run_module(pggit_chaos_revert.main, dict(state_dir=private_state_dir, experiment='exp1'))
        assert not failed and [r['id'] for r in reverted['reverted']] == ['connections--kills']
    reverted_at = time.time()
    assert programs(private_state_dir, KILLER) == [], 'the revert returns only once the kill rounds are stopped'
    assert ledger_ids(private_state_dir) == []
    time.sleep(0.2)  # the pool sees a kill within 20 ms
    seen = len(pool.deaths)
    time.sleep(3.0)  # ten more round intervals
    assert len(pool.deaths) == seen, 'a backend was terminated after the revert'
    assert not [t for t in pool.deaths if t > reverted_at + 0.1]


def read(path):
    with open(path) as handle:
        return handle.read()


def bring_expiry_forward(state_dir, fid, seconds):
    """As if the TTL were shorter than the rounds (the module refuses that): the reaper reads expires_at from the record."""
    ledger = _ledger.Ledger(state_dir)
    with ledger.lock():
        record = ledger.read(fid)
        record['expires_at'] = time.time() + seconds
        ledger.write(record)


def test_ttl_reaper_alone_stops_the_rounds_when_the_controller_is_gone(pgdb, private_state_dir, pool):
    proc = start_module('pggit_chaos_connections',
                        args(pgdb, private_state_dir, count=1, application_name='pooled-%', rounds=100, interval=0.3, ttl=60))
    try:
        assert wait_for(lambda: len(pool.deaths) >= 2, 15), 'the rounds must really kill'
        killers = programs(private_state_dir, KILLER)
        assert len(killers) == 1
        proc.send_signal(signal.SIGKILL)  # the module waiting for the rounds dies with its controller
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen = len(pool.deaths)
    assert wait_for(lambda: len(pool.deaths) > seen + 2, 5), 'the rounds go on without the controller'
    assert programs(private_state_dir, KILLER) == killers
    bring_expiry_forward(private_state_dir, 'connections--kills', 1.0)
    assert wait_for(lambda: programs(private_state_dir, KILLER) == [], 10), 'the reaper must stop the rounds at the TTL'
    stopped_at = time.time()
    assert wait_for(lambda: ledger_ids(private_state_dir) == [], 5)
    assert wait_for(lambda: 'connections--kills: reverted' in read(os.path.join(private_state_dir, 'reaper.log')), 5)
    time.sleep(0.2)
    seen = len(pool.deaths)
    time.sleep(2.0)
    assert len(pool.deaths) == seen and not [t for t in pool.deaths if t > stopped_at + 0.1]


def test_a_running_killer_is_not_stacked_and_the_password_never_reaches_its_argv(pgdb, private_state_dir, pool):
    secret = 'not-in-argv-3f9c'
    first, failed = run_module(pggit_chaos_connections.main,
                               args(pgdb, private_state_dir, login_password=secret, count=1, application_name='pooled-%',
                                    rounds=50, interval=0.5, wait=False))
    assert not failed, first['msg']
    pid = first['killer']['pid']
    for name in ('cmdline', 'environ'):
        with open('/proc/%d/%s' % (pid, name), 'rb') as handle:
            assert secret.encode() not in handle.read(), name
    with open(os.path.join(private_state_dir, 'faults', 'connections--kills.json')) as handle:
        assert secret not in handle.read()
    assert os.stat(os.path.join(private_state_dir, 'faults', 'connections--kills.secret')).st_mode & 0o777 == 0o600
    results = os.path.join(private_state_dir, 'faults', 'connections--kills.results')
    assert os.stat(results).st_mode & 0o777 == 0o600
    again, failed = run_module(pggit_chaos_connections.main,
                               args(pgdb, private_state_dir, count=1, application_name='pooled-%', rounds=50, interval=0.5))
    assert not failed and again['changed'] is False and 'already in place' in again['msg']
    assert programs(private_state_dir, KILLER) == [pid]
    run_module(pggit_chaos_connections.main, dict(args(pgdb, private_state_dir), state='absent'))
    assert programs(private_state_dir, KILLER) == [] and not os.path.exists(results)


def test_unreachable_database_fails_before_anything_is_written(pgdb, private_state_dir):
    result, failed = run_module(pggit_chaos_connections.main, args(pgdb, private_state_dir, count=1, login_port=1))
    assert failed and 'unable to connect' in result['msg'] and ':1' in result['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []


@pytest.mark.parametrize('extra, msg', [
    ({'count': 0}, 'count must be between 1 and 10000, got 0'),
    ({'percent': 101}, 'percent must be between 1 and 100, got 101'),
    ({'count': 1, 'rounds': 0}, 'rounds must be between 1 and 100, got 0'),
    ({'count': 1, 'interval': -1}, 'interval must be between 0 and 600 seconds, got -1.0'),
    ({'count': 1, 'percent': 5}, 'parameters are mutually exclusive: count|percent'),
    ({'count': 1, 'application_name': ''}, "application_name must not be empty, got ''; omit it to match every application"),
    ({'count': 1, 'user': ''}, "user must not be empty, got ''; omit it to match every role"),
    ({'count': 1, 'rounds': 11, 'interval': 10}, 'does not fit in ttl=60s'),
])
def test_bad_input(pgdb, private_state_dir, extra, msg):
    result, failed = run_module(pggit_chaos_connections.main, args(pgdb, private_state_dir, **extra))
    assert failed and msg in result['msg'], result['msg']
    assert ledger_ids(private_state_dir) == [] and programs(private_state_dir) == []
