"""pggit_chaos_stress really presses on PostgreSQL's own cgroup, and every way of undoing it leaves no stress-ng.

A private memory (256 MB limit), cpu and cpuacct cgroup is made as a child of
this test's own cgroups, and a throwaway PostgreSQL is started inside it.
The module finds that cgroup from the server (data_directory, postmaster.pid,
/proc/<pid>/cgroup) and runs stress-ng there: the cgroup's own counters,
read here directly, must show the pressure; the revert, the TTL reaper, and a
revert after the program was SIGKILLed must each leave no stress-ng process.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid

import pytest

from background import kill_programs, ledger_ids, programs, record
from modrun import run_module
from pgtools import Postgres, cgroup_members as members, child_cgroups, query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _ledger, _server, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_stress

MB = 1024 * 1024
LIMIT = 256 * MB
PROGRAM = 'pggit-chaos-stress'


def read_int(path):
    with open(path) as handle:
        return int(handle.read().split()[0])


def write(path, text):
    with open(path, 'w') as handle:
        handle.write(text)


@pytest.fixture(scope='module')
def cgroups():
    """memory (256 MB), cpu and cpuacct cgroups of our own, children of this process's cgroups; removed after."""
    with child_cgroups('pggit-test', memory_limit=LIMIT) as made:
        yield made


@pytest.fixture(scope='module')
def server(cgroups):
    """A throwaway PostgreSQL born inside the test cgroups."""
    pg = Postgres()
    try:
        pg.start(cgroups=sorted(set(cgroups.values())))
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def db(server):
    return server.create_db('st_' + uuid.uuid4().hex[:8], fixture=False)


@pytest.fixture
def state(state_dir):
    yield state_dir
    kill_programs(state_dir)


def memory_dir(cgroups):
    return cgroups.get('memory') or cgroups['unified']


def usage(cgroups):
    folder = memory_dir(cgroups)
    name = 'memory.usage_in_bytes' if 'memory' in cgroups else 'memory.current'
    return read_int(os.path.join(folder, name))


def cpu_ns(cgroups):
    return _cgroup.cpu_usage_ns(cgroups)


def stress_ng(cgroups=None, pgid=None):
    """Live stress-ng processes (pid -> oom_score_adj) in our memory cgroup or in the program's process group."""
    found = {}
    ours = set(members(memory_dir(cgroups))) if cgroups else set()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _steps._stat_fields(pid)  # pylint: disable=protected-access
        if fields is None or fields[0] in ('Z', 'X') or 'stress-ng' not in _steps.proc_cmdline(pid):
            continue
        if pid in ours or (pgid is not None and int(fields[2]) == pgid):
            try:
                with open('/proc/%d/oom_score_adj' % pid) as handle:
                    found[pid] = int(handle.read())
            except OSError:
                continue
    return found


def written_in(folder, pgid):
    """Files open by the stress-ng processes of the group inside folder (hdd workers unlink what they write)."""
    found = []
    for pid in stress_ng(None, pgid):
        try:
            fds = os.listdir('/proc/%d/fd' % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            except OSError:
                continue
            if target.startswith(folder + '/'):
                found.append(target)
    return found


def inject(db, state, **kwargs):
    args = dict(db, state_dir=state, ttl=60)
    args.update(kwargs)
    result, failed = run_module(pggit_chaos_stress.main, args)
    assert not failed, result.get('msg')
    return result


def revert(state, name):
    result, failed = run_module(pggit_chaos_stress.main, dict(name=name, state='absent', state_dir=state))
    assert not failed, result.get('msg')
    return result


def test_memory_stress_fills_the_postgres_cgroup_and_the_revert_leaves_no_stress_ng(server, cgroups, db, state):
    postmaster = int(open(os.path.join(server.data, 'postmaster.pid')).readline())
    assert _cgroup.of_pid(postmaster)[('memory' if 'memory' in cgroups else 'unified')] == memory_dir(cgroups)
    before = usage(cgroups)
    asked = LIMIT // 2
    result = inject(db, state, name='mem', resource='memory', memory_pct=50, watch_s=2)
    program = result['stress']['program']['pid']
    try:
        assert result['changed'] is True
        assert result['server']['postmaster_pid'] == postmaster
        assert result['cgroup']['paths'] == _cgroup.of_pid(postmaster)
        assert result['cgroup']['limit_bytes'] == LIMIT
        assert result['stress']['argv'][1:6] == ['--vm', '1', '--vm-bytes', '%db' % asked, '--vm-keep']
        timeout = int(result['stress']['argv'][result['stress']['argv'].index('--timeout') + 1].rstrip('s'))
        assert 50 <= timeout <= 60  # the TTL, as a second bound
        # The cgroup itself, read here, holds the asked memory: stress-ng is confined with PostgreSQL.
        held = usage(cgroups) - before
        assert held >= 0.8 * asked, 'the cgroup holds %d MB more, asked %d MB' % (held // MB, asked // MB)
        figures = result['figures']
        assert figures['samples'] >= 4
        assert figures['peak_bytes'] - result['cgroup']['usage_bytes_before'] >= 0.8 * asked
        assert figures['peak_bytes'] <= LIMIT
        assert figures['oom_kills'] == 0
        running = stress_ng(cgroups, program)
        assert result['stress']['pid'] in running
        assert set(running) == set(stress_ng(cgroups)) == set(stress_ng(None, program))  # in the cgroup and the group
        assert set(running.values()) == {1000}  # the OOM killer's first choice
        again, failed = run_module(pggit_chaos_stress.main, dict(db, state_dir=state, ttl=60, name='mem', resource='memory',
                                                                 memory_pct=50))
        assert not failed and again['changed'] is False
    finally:
        outcome = revert(state, 'mem')
    assert outcome['changed'] is True
    assert stress_ng(cgroups, program) == {}  # at once: the revert returns once they are gone
    assert programs(state, PROGRAM) == []
    assert ledger_ids(state) == []
    assert wait_for(lambda: usage(cgroups) < before + 0.3 * asked, 5), 'the memory must be given back'


def test_memory_over_the_cgroup_limit_fails_before_anything_runs(cgroups, db, state):
    args = dict(db, state_dir=state, ttl=60, name='big', resource='memory', memory_mb=300)
    result, failed = run_module(pggit_chaos_stress.main, args)
    assert failed and 'memory_mb=300' in result['msg'] and '256 MB' in result['msg']
    assert not os.path.exists(state)
    assert stress_ng(cgroups) == {}


def test_ttl_reaper_alone_stops_stress_ng(cgroups, db, state):
    result = inject(db, state, name='ttl', resource='memory', memory_mb=32)
    program = result['stress']['program']['pid']
    assert stress_ng(cgroups, program)
    # The controller is gone (the module has returned); the TTL comes before stress-ng's own --timeout of ~60 s.
    ledger = _ledger.Ledger(state)
    with ledger.lock():
        record = ledger.read('stress--ttl')
        record['expires_at'] = time.time() + 1.0
        ledger.write(record)
    assert wait_for(lambda: stress_ng(cgroups, program) == {}, 10), 'the reaper must stop stress-ng at the TTL'
    assert wait_for(lambda: ledger_ids(state) == [], 5)
    assert programs(state, PROGRAM) == []
    with open(os.path.join(state, 'reaper.log')) as handle:
        assert 'stress--ttl: reverted' in handle.read()


def test_revert_kills_the_group_when_its_program_was_killed(cgroups, db, state):
    result = inject(db, state, name='orphan', resource='cpu', cpu_workers=1, cpu_load=10)
    program = result['stress']['program']['pid']
    os.kill(program, signal.SIGKILL)  # the leader is gone (OOM killer, kill -9); stress-ng lives on in its group
    assert wait_for(lambda: not _steps.same_process(program), 5)
    time.sleep(0.3)
    assert stress_ng(cgroups, program), 'stress-ng outlives its program until the revert'
    outcome = revert(state, 'orphan')
    assert outcome['changed'] is True
    assert stress_ng(cgroups, program) == {}
    assert ledger_ids(state) == []


def test_cpu_stress_raises_the_cgroup_cpu_time(cgroups, db, state):
    before = cpu_ns(cgroups)
    started = time.time()
    result = inject(db, state, name='cpu', resource='cpu', cpu_workers=1, cpu_load=100, watch_s=2)
    program = result['stress']['program']['pid']
    try:
        used = (cpu_ns(cgroups) - before) / 1e9
        wall = time.time() - started
        assert used >= 0.4 * wall, 'the cgroup used %.2f s of CPU in %.2f s' % (used, wall)
        assert result['figures']['cpu_load_measured_pct'] >= 40
        assert result['stress']['argv'][1:5] == ['--cpu', '1', '--cpu-load', '100']
        assert stress_ng(cgroups, program)
    finally:
        revert(state, 'cpu')
    assert stress_ng(cgroups, program) == {}
    settled = cpu_ns(cgroups)
    time.sleep(0.5)
    assert (cpu_ns(cgroups) - settled) / 1e9 < 0.2, 'no CPU stress after the revert'


def test_io_stress_writes_only_in_its_scratch_folder_and_cleans_it(cgroups, db, state):
    result = inject(db, state, name='io', resource='io', io_workers=1, watch_s=1)
    program = result['stress']['program']['pid']
    scratch = os.path.join(state, 'stress-io', 'stress--io')
    try:
        assert result['stress']['argv'][result['stress']['argv'].index('--temp-path') + 1] == scratch
        assert stress_ng(cgroups, program)
        assert wait_for(lambda: written_in(scratch, program), 5), 'stress-ng must write in its folder'
    finally:
        revert(state, 'io')
    assert stress_ng(cgroups, program) == {}
    assert not os.path.exists(scratch)


def test_io_stress_refuses_a_state_dir_off_the_data_directory_filesystem(server, cgroups, db):
    """IO in a scratch folder on another filesystem would never press on PostgreSQL's disk: refused, nothing left."""
    assert os.stat('/dev/shm').st_dev != os.stat(server.data).st_dev, 'this test needs /dev/shm apart from the data directory'
    other = tempfile.mkdtemp(dir='/dev/shm', prefix='pggit-chaos-it-')
    try:
        state = os.path.join(other, 'state')
        for confine in ('postgres', 'none'):
            result, failed = run_module(pggit_chaos_stress.main, dict(db, state_dir=state, ttl=60, name='io', resource='io',
                                                                      confine=confine))
            assert failed, result
            assert 'resource=io' in result['msg'] and server.data in result['msg'] and '/dev/shm' in result['msg']
            assert not os.path.exists(state)
        assert stress_ng(cgroups) == {}
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_revert_starts_the_server_again_when_the_oom_killer_took_the_postmaster(server, cgroups, db, state):
    """confine=postgres: the undo ends with pg_start (first in the list), so a postmaster killed while stress-ng held
    its cgroup (the OOM killer's pick) runs again after the revert, in its cgroups, and stress-ng is gone first.
    Last in this file: it kills the module's server."""
    result = inject(db, state, name='oom', resource='memory', memory_mb=32)
    program = result['stress']['program']['pid']
    undo = record(state, 'stress--oom')['undo']
    assert undo[0]['type'] == 'pg_start' and undo[0]['method'] == 'pg_ctl' and undo[0]['pgdata'] == server.data
    assert undo[0]['cgroups'] == _cgroup.of_pid(result['server']['postmaster_pid'])
    assert undo[-1]['type'] == 'kill_process' and undo[-1]['group'] is True
    postmaster = result['server']['postmaster_pid']
    os.kill(postmaster, signal.SIGKILL)
    assert wait_for(lambda: not _server.running(server.data), 5)
    assert stress_ng(cgroups, program)
    outcome = revert(state, 'oom')
    assert outcome['changed'] is True, outcome
    assert stress_ng(cgroups, program) == {}
    assert ledger_ids(state) == []
    assert _server.running(server.data), 'the revert must start the server the OOM killer took'
    again = _server.postmaster_pid(server.data)
    assert again != postmaster
    assert memory_dir(cgroups) in _cgroup.of_pid(again).values(), 'started again inside its cgroups'
    assert query(db, 'SELECT 1') == [(1,)]
