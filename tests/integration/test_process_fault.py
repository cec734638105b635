"""pggit_chaos_process against a real PostgreSQL of its own: a STOP really stops and the revert (or the TTL
reaper alone) really resumes; a KILLed backend makes the server run crash recovery and come back by
itself; a KILLed postmaster leaves the server down until the revert (or the TTL reaper) starts it again,
as its owner, with its own options, log and cgroups; a role that matches nothing fails and records nothing.

The server is private to this file (module scope): these tests crash it.  It is born in cgroups of its own
(children of this test's cgroups), so a restarted postmaster that joins its recorded cgroups is seen there, not
merely in the cgroups of the test runner (which the revert and the reaper inherit anyway).
"""
from __future__ import annotations

import os
import time

import psycopg2
import pytest

from background import ledger_ids, record
from modrun import run_module
from pgtools import Postgres, child_cgroups
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _server, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_process


@pytest.fixture(scope='module')
def cgroups():
    """memory, cpu and cpuacct (or the v2) cgroups of our own, children of this process's cgroups; removed after."""
    with child_cgroups('pggit-test-pm') as made:
        yield made


@pytest.fixture(scope='module')
def server(cgroups):
    """The private server, born in its own cgroups."""
    pg = Postgres()
    try:
        pg.start(cgroups=sorted(set(cgroups.values())))
        yield pg
    finally:
        pg.stop()


def in_own_cgroups(pid, cgroups):
    """True when pid is in every cgroup of the server's own (and so not merely in the test runner's)."""
    found = _cgroup.of_pid(pid)
    return all(found.get(controller) == folder for controller, folder in cgroups.items())


@pytest.fixture
def pg(server):
    """The private server, up and answering (a test before may have crashed it)."""
    assert wait_for(lambda: answers(server.params('postgres')), 20), 'the private server is not up'
    return server.params('postgres')


def connect(params, app):
    conn = psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname=params['db'],
                            application_name=app, connect_timeout=3)
    conn.autocommit = True
    return conn


def answers(params):
    try:
        conn = connect(params, 'it-check')
    except psycopg2.Error:
        return False
    try:
        conn.cursor().execute('SELECT 1')
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def backend_pid(conn):
    cur = conn.cursor()
    cur.execute('SELECT pg_backend_pid()')
    return cur.fetchone()[0]


def alive(conn):
    try:
        conn.cursor().execute('SELECT 1')
        return True
    except psycopg2.Error:
        return False


def fault(params, state_dir, **args):
    full = dict(params, state_dir=state_dir, ttl=60)
    full.update(args)
    return run_module(pggit_chaos_process.main, full)


def postmaster(server):
    return _server.postmaster_pid(server.data)


def test_stop_really_stops_a_backend_and_the_revert_resumes_it(pg, state_dir):
    victim, bystander = connect(pg, 'victim-stop'), connect(pg, 'bystander-stop')
    try:
        pid = backend_pid(victim)
        result, failed = fault(pg, state_dir, name='pause', role='backend', signal='STOP', application_name='victim-stop')
        assert not failed, result['msg']
        assert result['changed'] and [p['pid'] for p in result['signalled']] == [pid]
        assert result['signalled'][0]['stopped'] is True and result['signalled'][0]['role'] == 'backend'
        assert _steps.proc_state(pid) == 'T'  # really stopped, seen by the kernel
        assert alive(bystander)  # only the chosen backend
        undo = record(state_dir, 'process--pause')['undo']
        assert undo == [{'type': 'signal_process', 'pid': pid, 'starttime': _steps.proc_starttime(pid), 'signal': 'CONT',
                         'match': 'postgres'}]
        again, failed = fault(pg, state_dir, name='pause', role='backend', signal='STOP', application_name='victim-stop')
        assert not failed and again['changed'] is False  # in place: faults never stack

        reverted, failed = fault(pg, state_dir, name='pause', state='absent')
        assert not failed and reverted['changed'], reverted['msg']
        assert _steps.proc_state(pid) in ('S', 'R')
        assert alive(victim)  # the very same session works again
        assert ledger_ids(state_dir) == []
    finally:
        victim.close()
        bystander.close()


def test_check_mode_shows_the_plan_and_signals_nothing(pg, state_dir):
    victim = connect(pg, 'victim-check')
    try:
        pid = backend_pid(victim)
        args = dict(pg, state_dir=state_dir, name='plan', role='backend', signal='STOP', application_name='victim-check')
        result, failed = run_module(pggit_chaos_process.main, args, check_mode=True)
        assert not failed and result['changed'], result['msg']
        assert [p['pid'] for p in result['would_signal']] == [pid] and 'signalled' not in result
        assert result['server']['start_method'] == 'pg_ctl'
        assert _steps.proc_state(pid) != 'T' and alive(victim)
        assert ledger_ids(state_dir) == []
    finally:
        victim.close()


def test_a_stop_left_to_its_ttl_is_resumed_by_the_reaper(pg, state_dir):
    victim = connect(pg, 'victim-ttl')
    try:
        pid = backend_pid(victim)
        result, failed = fault(pg, state_dir, name='pause-ttl', ttl=5, role='backend', signal='STOP', application_name='victim-ttl')
        assert not failed, result['msg']
        assert _steps.proc_state(pid) == 'T'
        assert wait_for(lambda: _steps.proc_state(pid) != 'T', 20), 'the reaper did not resume the stopped backend by the TTL'
        assert wait_for(lambda: ledger_ids(state_dir) == [], 5)
        assert alive(victim)
    finally:
        victim.close()


def test_kill_of_a_backend_makes_the_server_recover_by_itself(server, pg, state_dir):
    victim, bystander = connect(pg, 'victim-kill'), connect(pg, 'bystander-kill')
    before = postmaster(server)
    try:
        pid = backend_pid(victim)
        result, failed = fault(pg, state_dir, name='crash', role='backend', application_name='victim-kill')
        assert not failed, result['msg']
        assert [p['pid'] for p in result['signalled']] == [pid] and result['signalled'][0]['exited'] is True
        assert result['server']['postmaster_pid'] == before and result['server']['start_method'] == 'pg_ctl'
        assert _steps.proc_starttime(pid) is None
        # Crash recovery: the postmaster ends every other backend too, then takes connections again by itself.
        assert wait_for(lambda: not alive(bystander), 5), 'the other session survived: no crash recovery happened'
        assert wait_for(lambda: answers(pg), 15), 'the server did not come back after crash recovery'
        assert postmaster(server) == before
        with open(os.path.join(server.base, 'log')) as handle:
            assert 'was terminated by signal 9' in handle.read()
        assert [s['type'] for s in record(state_dir, 'process--crash')['undo']] == ['pg_start']
        reverted, failed = fault(pg, state_dir, name='crash', state='absent')
        assert not failed and reverted['revert']['undo_changed'] is False  # it runs: nothing to start
        assert postmaster(server) == before
    finally:
        victim.close()
        bystander.close()


def killed_postmaster(server, pg, state_dir, name, ttl, cgroups):
    old = postmaster(server)
    assert in_own_cgroups(old, cgroups), 'the test server was not born in its own cgroups'
    recorded = _cgroup.of_pid(old)
    result, failed = fault(pg, state_dir, name=name, ttl=ttl, role='postmaster')
    assert not failed, result['msg']
    assert [(p['pid'], p['role']) for p in result['signalled']] == [(old, 'postmaster')]
    assert result['server']['start_method'] == 'pg_ctl' and result['server']['manager'] is None
    step = record(state_dir, 'process--' + name)['undo'][0]
    assert step['type'] == 'pg_start' and step['method'] == 'pg_ctl' and step['user'] == 'postgres'
    assert step['pgdata'] == server.data and '-p %d' % server.port in step['options']
    assert step['log'] == os.path.join(server.base, 'log') and step['cgroups'] == recorded
    assert all(step['cgroups'][controller] == folder for controller, folder in cgroups.items())
    assert _steps.proc_starttime(old) is None
    assert not _server.running(server.data)
    time.sleep(1)
    assert not answers(pg)  # down, and nothing but the revert starts it
    return old


def check_restarted(server, pg, old, cgroups):
    new = postmaster(server)
    assert new and new != old and _server.running(server.data)
    assert answers(pg)  # same port, same socket dir: started with its own options
    assert os.stat('/proc/%d' % new).st_uid == os.stat(server.data).st_uid != 0  # as the owner, never root
    assert _server.stdout_log(new) == os.path.join(server.base, 'log')
    # In the server's own cgroups, which neither this test nor the reaper is in: the start joined them.
    assert in_own_cgroups(new, cgroups), (_cgroup.of_pid(new), cgroups)
    assert not in_own_cgroups(os.getpid(), cgroups)


def test_a_killed_postmaster_is_started_again_by_the_revert(server, pg, state_dir, cgroups):
    old = killed_postmaster(server, pg, state_dir, 'pm-crash', 60, cgroups)
    reverted, failed = fault(pg, state_dir, name='pm-crash', state='absent')
    assert not failed, reverted['msg']
    assert reverted['revert']['undo_changed'] is True
    check_restarted(server, pg, old, cgroups)
    assert ledger_ids(state_dir) == []


def test_a_killed_postmaster_is_started_again_by_the_reaper_alone(server, pg, state_dir, cgroups):
    old = killed_postmaster(server, pg, state_dir, 'pm-ttl', 5, cgroups)
    assert wait_for(lambda: ledger_ids(state_dir) == [], 30), 'the reaper did not revert by the TTL'
    assert wait_for(lambda: answers(pg), 10)
    check_restarted(server, pg, old, cgroups)


def test_term_of_the_postmaster_is_refused_and_nothing_is_signalled(server, pg, state_dir):
    before = postmaster(server)
    result, failed = fault(pg, state_dir, name='pm-term', role='postmaster', signal='TERM')
    assert failed and 'signal=TERM' in result['msg'] and 'role=postmaster' in result['msg'], result['msg']
    assert ledger_ids(state_dir) == []
    time.sleep(0.5)
    assert postmaster(server) == before and _server.running(server.data) and answers(pg)


@pytest.mark.parametrize('args, named', [
    (dict(role='backend', application_name='nobody-here-%'), 'role=backend application_name=nobody-here-%'),
    (dict(role='walreceiver'), 'role=walreceiver'),
])
def test_a_role_that_matches_nothing_fails_and_records_nothing(pg, state_dir, args, named):
    result, failed = fault(pg, state_dir, name='nothing', **args)
    assert failed and named in result['msg'] and 'matches no process' in result['msg'], result['msg']
    assert ledger_ids(state_dir) == []
