"""pggit_chaos_host against a real PostgreSQL run by a stand-in HA manager, inside a throwaway freezer cgroup of its own.

The "manager" is a small program named ``patroni`` that starts the server with ``pg_ctl start`` (the postmaster is
double-forked, its parent is not the manager: as with Patroni 4) and stays, as the postgres user; the engine finds it
in the postmaster's cgroup.  Everything runs in a child freezer cgroup
of this test's own, removed (its processes killed) at the end.

- freeze: the cgroup reads FROZEN, every process is in state D, a new client connection times out; the revert thaws
  it and the same server answers again; left to its TTL, the reaper thaws it with no controller at all;
- a foreign process in the cgroup, or a server in the root cgroup, is refused naming it, and nothing is recorded;
- kill: the manager and the postmaster are gone, the server is down; the revert starts the manager again (its argv,
  as postgres, in its cgroup), and the manager starts the server.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess

import psycopg2
import pytest

from background import ledger_ids, record
from modrun import run_module
from pgtools import PG_BIN, Postgres, cgroup_members, child_cgroups
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss, _ledger, _server, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_host

MANAGER = '''import subprocess, sys, time
subprocess.run(sys.argv[2:], check=False)
while True:
    time.sleep(1)
'''


@pytest.fixture(scope='module')
def cgroup():
    with child_cgroups('pggit-test-host', controllers=('freezer',)) as made:
        yield made['freezer']


@pytest.fixture(scope='module')
def managed(cgroup):
    """A private server started by the stand-in manager, both born in the freezer cgroup."""
    pg = Postgres()
    script = os.path.join(pg.base, 'patroni')
    with open(script, 'w') as handle:
        handle.write(MANAGER)
    pw = pwd.getpwnam('postgres')
    os.chown(script, pw.pw_uid, pw.pw_gid)
    os.chmod(script, 0o755)
    subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(PG_BIN, 'initdb'), '-A', 'trust', '-U', 'postgres', '-D', pg.data,
                    '--no-sync'], check=True, capture_output=True)
    # The system interpreter: the postgres user can run it (a virtualenv under /root it cannot).
    # As Patroni 4 does: the postmaster is double-forked (pg_ctl start), its parent is not the manager; the interpreter has
    # an option (-S), as the lab's.
    argv = ['/usr/bin/python3', '-S', script, '--', os.path.join(PG_BIN, 'pg_ctl'), 'start', '-w', '-D', pg.data,
            '-l', os.path.join(pg.base, 'postgresql.log'),
            '-o', '-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB' % (pg.port, pg.base)]

    def join():
        with open(os.path.join(cgroup, 'cgroup.procs'), 'w') as procs:
            procs.write(str(os.getpid()))
        os.setsid()
        os.setgid(pw.pw_gid)
        os.initgroups('postgres', pw.pw_gid)
        os.setuid(pw.pw_uid)
    log = open(os.path.join(pg.base, 'log'), 'ab')
    os.chown(log.name, pw.pw_uid, pw.pw_gid)  # the manager's log is its user's: the restarted one appends to it
    proc = subprocess.Popen(argv, preexec_fn=join, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=pg.base)
    log.close()
    pg.started = True
    pg.manager_argv = argv
    pg.first_manager = proc.pid
    try:
        assert wait_for(lambda: answers(pg.params('postgres')), 30), 'the managed server did not come up'
        yield pg
    finally:
        for pid in cgroup_members(cgroup):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.poll()
        pg.started = False
        pg.stop()


def answers(params, timeout=3):
    try:
        conn = psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname='postgres', connect_timeout=timeout)
    except psycopg2.Error:
        return False
    try:
        conn.cursor().execute('SELECT 1')
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


@pytest.fixture
def pg(managed):
    assert wait_for(lambda: answers(managed.params('postgres')), 30), 'the managed server is not up'
    return managed.params('postgres')


def freezer(cgroup):
    return _hostloss.freezer_state(1, cgroup)


def fault(params, state_dir, **args):
    full = dict(params, state_dir=state_dir, ttl=60)
    full.update(args)
    return run_module(pggit_chaos_host.main, full)


def test_freeze_hangs_the_host_and_the_revert_thaws_it(pg, managed, cgroup, state_dir):
    result, failed = fault(pg, state_dir, name='hang', mode='freeze')
    assert not failed, result['msg']
    try:
        assert result['changed'] and result['frozen'] == [cgroup]
        assert freezer(cgroup) == 'FROZEN'
        roles = dict((m['pid'], m['role']) for m in result['members'])
        postmaster = _server.postmaster_pid(managed.data)
        assert roles[postmaster] == 'postmaster' and 'manager' in roles.values() and len(roles) > 3
        assert all(_steps.proc_state(pid) == 'D' for pid in roles)  # every process frozen, seen by the kernel
        assert not answers(pg, timeout=2)  # a client connect times out
        assert record(state_dir, 'host--hang')['undo'] == [{'type': 'cgroup_thaw', 'paths': [cgroup], 'version': 1}]
        again, failed = fault(pg, state_dir, name='hang', mode='freeze')
        assert not failed and again['changed'] is False  # in place: never stacked
    finally:
        reverted, failed = fault(pg, state_dir, name='hang', state='absent')
    assert not failed and reverted['changed'], reverted['msg']
    assert freezer(cgroup) == 'THAWED'
    assert answers(pg)
    assert ledger_ids(state_dir) == []


def test_left_to_its_ttl_the_reaper_thaws_the_host(pg, cgroup, state_dir):
    result, failed = fault(pg, state_dir, name='hang-ttl', mode='freeze', ttl=5)
    assert not failed, result['msg']
    assert freezer(cgroup) == 'FROZEN'
    reaper = record(state_dir, 'host--hang-ttl')['reaper']['pid']
    assert _hostloss.freezer_of(reaper)[1] != cgroup  # the reaper never sits inside what it froze
    assert wait_for(lambda: freezer(cgroup) == 'THAWED', 20), 'the TTL reaper did not thaw the host'
    assert wait_for(lambda: ledger_ids(state_dir) == [], 5)
    assert answers(pg)


def test_check_mode_freezes_nothing(pg, cgroup, state_dir):
    args = dict(pg, state_dir=state_dir, name='plan', mode='freeze')
    result, failed = run_module(pggit_chaos_host.main, args, check_mode=True)
    assert not failed and result['changed'], result['msg']
    assert result['planned']['paths'] == [cgroup] and freezer(cgroup) == 'THAWED'
    assert ledger_ids(state_dir) == []


def test_a_foreign_process_in_the_cgroup_is_refused_naming_it(pg, cgroup, state_dir):
    def join():
        with open(os.path.join(cgroup, 'cgroup.procs'), 'w') as procs:
            procs.write(str(os.getpid()))
    stranger = subprocess.Popen(['sleep', '30'], preexec_fn=join)
    try:
        result, failed = fault(pg, state_dir, name='refused', mode='freeze')
        assert failed and 'pid %d (sleep 30)' % stranger.pid in result['msg'], result['msg']
        assert "neither the postmaster's nor its manager's" in result['msg']
        assert freezer(cgroup) == 'THAWED' and ledger_ids(state_dir) == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_server_in_the_root_cgroup_is_refused(postgres, state_dir):
    result, failed = fault(postgres.params('postgres'), state_dir, name='root', mode='freeze')
    assert failed and 'root cgroup' in result['msg'] and str(_server.postmaster_pid(postgres.data)) in result['msg'], result['msg']
    assert ledger_ids(state_dir) == []


def test_kill_cuts_the_power_and_the_revert_starts_the_manager_again(pg, managed, cgroup, state_dir):
    postmaster = _server.postmaster_pid(managed.data)
    manager = _hostloss.manager_pid(postmaster)
    assert manager and _hostloss.argv_of(manager) == managed.manager_argv
    result, failed = fault(pg, state_dir, name='cut', mode='kill')
    assert not failed, result['msg']
    assert {manager, postmaster} <= set(result['killed'])
    assert not _steps.same_process(manager) and not _server.running(managed.data)
    assert not answers(pg, timeout=2)
    step = record(state_dir, 'host--cut')['undo'][0]
    assert (step['type'], step['method'], step['argv'], step['user']) == ('manager_start', 'exec', managed.manager_argv, 'postgres')
    assert step['cgroups']['freezer'] == cgroup and step['netns'] == os.readlink('/proc/self/ns/net')
    assert 'manager_env' not in str(record(state_dir, 'host--cut'))  # the environment is a secret: side file only
    assert 'PATH' in (_ledger.Ledger(state_dir).read_secret('host--cut').get('manager_env') or {})

    reverted, failed = fault(pg, state_dir, name='cut', state='absent')
    assert not failed and reverted['changed'], '%s; log: %s' % (reverted['msg'], open(os.path.join(managed.base, 'log')).read()[-1500:])
    assert wait_for(lambda: answers(pg), 30), 'the restarted manager did not start the server'
    new_manager = _hostloss.manager_pid(_server.postmaster_pid(managed.data))
    assert new_manager and new_manager != manager and _hostloss.argv_of(new_manager) == managed.manager_argv
    assert _steps.proc_real_uid(new_manager) == pwd.getpwnam('postgres').pw_uid
    assert new_manager in cgroup_members(cgroup)  # started again in its recorded cgroup
    assert ledger_ids(state_dir) == []
    # A second revert finds the manager back: it starts nothing.
    assert _steps.STEP_HANDLERS['manager_start'](step, {}) is False
