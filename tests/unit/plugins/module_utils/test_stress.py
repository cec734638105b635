"""_stress (argv, sizes, figures), the module's option checks, and kill_process with group: true."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _steps, _stress
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_stress as module

MB = 1024 * 1024


# -- argv -------------------------------------------------------------------------
def test_memory_argv():
    spec = {'resource': 'memory', 'memory_bytes': 128 * MB}
    assert _stress.stress_argv('/usr/bin/stress-ng', spec, 119.9) == [
        '/usr/bin/stress-ng', '--vm', '1', '--vm-bytes', '134217728b', '--vm-keep', '--timeout', '119s', '--no-oom-adjust']


def test_cpu_argv():
    spec = {'resource': 'cpu', 'cpu_workers': 4, 'cpu_load': 80}
    assert _stress.stress_argv('/usr/bin/stress-ng', spec, 60) == [
        '/usr/bin/stress-ng', '--cpu', '4', '--cpu-load', '80', '--timeout', '60s', '--no-oom-adjust']


def test_io_argv_writes_only_in_its_scratch_folder():
    spec = {'resource': 'io', 'io_workers': 2}
    temp = _stress.io_dir('/var/lib/pggit-chaos', 'stress--io1')
    assert temp == '/var/lib/pggit-chaos/stress-io/stress--io1'
    assert _stress.stress_argv('/usr/bin/stress-ng', spec, 30, temp) == [
        '/usr/bin/stress-ng', '--hdd', '2', '--hdd-bytes', '%db' % _stress.IO_BYTES, '--temp-path', temp,
        '--timeout', '30s', '--no-oom-adjust']
    with pytest.raises(ValueError, match='scratch folder'):
        _stress.stress_argv('/usr/bin/stress-ng', spec, 30)


def test_argv_timeout_is_at_least_one_second_and_resource_is_checked():
    assert _stress.stress_argv('s', {'resource': 'cpu', 'cpu_workers': 1, 'cpu_load': 1}, 0.2)[-2] == '1s'
    with pytest.raises(ValueError, match="resource must be one of memory, cpu, io, got 'disk'"):
        _stress.stress_argv('s', {'resource': 'disk'}, 10)


# -- sizes ------------------------------------------------------------------------
def test_memory_bytes():
    assert _stress.memory_bytes(50, None, 256 * MB, None) == (128 * MB, None)
    assert _stress.memory_bytes(None, 100, 256 * MB, None) == (100 * MB, None)
    assert _stress.memory_bytes(None, 100, None, 1024 * MB) == (100 * MB, None)


@pytest.mark.parametrize('pct, mb, limit, host, words', [
    (50, None, None, 1024 * MB, ['memory_pct=50', 'needs a memory limit', 'memory_mb']),
    (None, 300, 256 * MB, None, ['memory_mb=300', 'over the memory limit', '256 MB']),
    (None, 2048, None, 1024 * MB, ['memory_mb=2048', 'over the memory of this host']),
])
def test_memory_bytes_refused(pct, mb, limit, host, words):
    size, problem = _stress.memory_bytes(pct, mb, limit, host)
    assert size is None
    for word in words:
        assert word in problem


def test_host_memory(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:        2048 kB\nMemFree: 1 kB\n')
    assert _stress.host_memory_bytes(str(meminfo)) == 2048 * 1024
    assert _stress.host_memory_bytes(str(tmp_path / 'none')) is None


def test_missing_stress_ng_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(tmp_path),))
    with pytest.raises(ChaosError, match='stress-ng is not installed.*install the package stress-ng'):
        _stress.find_stress_ng()


# -- figures ----------------------------------------------------------------------
def test_figures():
    started = {'at': 100.0, 'usage_bytes': 40 * MB, 'peak_bytes': 50 * MB, 'oom_kills': 2, 'cpu_ns': 0}
    samples = [
        {'at': 99.0, 'usage_bytes': 999 * MB},  # before the start: not counted
        {'at': 100.5, 'usage_bytes': 120 * MB, 'peak_bytes': 50 * MB, 'oom_kills': 2, 'cpu_ns': 10 ** 9},
        {'at': 101.0, 'usage_bytes': 170 * MB, 'peak_bytes': 172 * MB, 'oom_kills': 3, 'cpu_ns': 2 * 10 ** 9},
        {'at': 102.0, 'usage_bytes': 168 * MB, 'peak_bytes': 172 * MB, 'oom_kills': 3, 'cpu_ns': 3 * 10 ** 9},
    ]
    expected = {'peak_bytes': 172 * MB, 'oom_kills': 1, 'cpu_load_measured_pct': 75.0, 'samples': 3}
    assert _stress.figures(started, samples, 2) == expected


def test_figures_without_counters():
    started = {'at': 1.0, 'usage_bytes': None, 'peak_bytes': None, 'oom_kills': None, 'cpu_ns': None}
    assert _stress.figures(started, [{'at': 2.0, 'usage_bytes': 5}], 1) == {
        'peak_bytes': 5, 'oom_kills': None, 'cpu_load_measured_pct': None, 'samples': 1}
    assert _stress.figures(None, [], 1)['samples'] == 0


# -- the module's checks ----------------------------------------------------------
def params(**kwargs):
    base = dict(resource='cpu', memory_pct=None, memory_mb=None, cpu_workers=None, cpu_load=100, io_workers=1,
                confine='postgres', oom_score_adj=1000, watch_s=0.0, ttl=300)
    base.update(kwargs)
    return base


@pytest.mark.parametrize('kwargs, words', [
    (dict(resource='memory'), ['memory_pct or memory_mb']),
    (dict(resource='memory', memory_pct=0.5), ['memory_pct', '0.5']),
    (dict(resource='cpu', cpu_load=0), ['cpu_load', 'got 0']),
    (dict(resource='io', io_workers=0), ['io_workers', 'got 0']),
    (dict(resource='io', cpu_workers=2), ['cpu_workers=2', 'resource=io']),
    (dict(resource='memory', memory_mb=10, io_workers=3), ['io_workers=3', 'resource=memory']),
    (dict(resource='cpu', oom_score_adj=2000), ['oom_score_adj', '2000']),
    (dict(resource='cpu', ttl=10, watch_s=10.0), ['watch_s', 'ttl=10']),
])
def test_option_problem(kwargs, words):
    problem = module.option_problem(params(**kwargs))
    for word in words:
        assert word in problem, problem


@pytest.mark.parametrize('kwargs', [dict(resource='cpu', cpu_workers=2, cpu_load=50), dict(resource='memory', memory_pct=90.0),
                                    dict(resource='io', io_workers=4), dict(resource='cpu', oom_score_adj=-1000, watch_s=5.0)])
def test_option_problem_accepts(kwargs):
    assert module.option_problem(params(**kwargs)) is None


def test_module_missing_stress_ng_fails_before_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(tmp_path / 'bin'),))
    state = tmp_path / 'state'
    result, failed = run_module(module.main, dict(name='s', resource='cpu', confine='none', state_dir=str(state)))
    assert failed and 'install the package stress-ng' in result['msg']
    assert not state.exists()


def test_module_memory_over_the_cgroup_limit_fails_before_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(_cgroup, 'memory', lambda paths: {'version': 1, 'path': '/sys/fs/cgroup/memory/x',
                                                          'limit_bytes': 256 * MB, 'usage_bytes': MB, 'peak_bytes': MB,
                                                          'oom_kills': 0})
    state = tmp_path / 'state'
    result, failed = run_module(module.main, dict(name='s', resource='memory', memory_mb=300, confine='none',
                                                  state_dir=str(state)))
    assert failed and 'memory_mb=300' in result['msg'] and 'over the memory limit' in result['msg']
    assert result['cgroup']['limit_bytes'] == 256 * MB
    assert not state.exists()


def test_module_check_mode_shows_the_plan_and_runs_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(_cgroup, 'memory', lambda paths: {'version': 1, 'path': '/sys/fs/cgroup/memory/x',
                                                          'limit_bytes': 256 * MB, 'usage_bytes': MB, 'peak_bytes': MB,
                                                          'oom_kills': 0})
    state = tmp_path / 'state'
    result, failed = run_module(module.main, dict(name='s', resource='memory', memory_pct=50, confine='none', ttl=60,
                                                  state_dir=str(state)), check_mode=True)
    assert not failed, result
    assert result['changed'] is True
    argv = result['stress']['argv']
    assert result['stress']['pid'] is None
    assert argv[1:] == ['--vm', '1', '--vm-bytes', '%db' % (128 * MB), '--vm-keep', '--timeout', '60s', '--no-oom-adjust']
    assert result['cgroup']['limit_bytes'] == 256 * MB and 'figures' not in result
    assert not state.exists()


# -- kill_process with group: true -------------------------------------------------
STEP = {'type': 'kill_process', 'pid': 4242, 'starttime': 1, 'match': 'pggit-chaos-stress', 'group': True,
        'members_match': 'stress-ng'}


@pytest.mark.parametrize('change, words', [
    (dict(group=False), 'group must be true'),
    (dict(group='yes'), 'group must be true'),
    (dict(members_match='postgres'), "members_match must be one of stress-ng, pgbench, got 'postgres'"),
    (dict(members_match=''), 'members_match must be one of'),
    (dict(members_match=None), 'members_match must be one of'),
])
def test_group_step_check_refuses(change, words):
    step = dict(STEP, **change)
    assert words in _steps.STEP_CHECKS['kill_process'](step, '/var/lib/pggit-chaos')
    with pytest.raises(UndoError, match='refused'):
        _steps.check_steps([step], '/var/lib/pggit-chaos')


def test_group_step_check_needs_members_match_with_group():
    step = dict(STEP)
    del step['members_match']
    assert 'members_match' in _steps.STEP_CHECKS['kill_process'](step, None)
    step = dict(STEP)
    del step['group']
    assert 'group must be true' in _steps.STEP_CHECKS['kill_process'](step, None)


def test_group_step_check_accepts():
    assert _steps.STEP_CHECKS['kill_process'](dict(STEP), None) is None


LEADER = r'''
import subprocess, sys
sleeper = 'import time; time.sleep(60)'
member = subprocess.Popen([sys.executable, '-c', sleeper, 'stress-ng-vm'])
other = subprocess.Popen([sys.executable, '-c', sleeper, 'bystander'])
print(member.pid, other.pid, flush=True)
'''


@pytest.fixture
def orphaned_group():
    """A process group whose leader has exited: one stress-ng-like member, one bystander."""
    leader = subprocess.Popen([sys.executable, '-c', LEADER, 'pggit-chaos-stress'], stdout=subprocess.PIPE,
                              start_new_session=True, universal_newlines=True)
    starttime = _steps.proc_starttime(leader.pid)
    member, other = (int(x) for x in leader.stdout.readline().split())
    leader.wait()
    # Both children must have exec'd: before that each one's command line is the leader's, whose script names
    # stress-ng-vm too (a bystander not yet exec'd would match, and be killed, on a loaded machine).
    deadline = time.time() + 10
    while time.time() < deadline and ('stress-ng-vm' not in _steps.proc_cmdline(member)
                                      or 'bystander' not in _steps.proc_cmdline(other)):
        time.sleep(0.01)
    yield leader.pid, starttime, member, other
    for pid in (member, other):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def test_group_step_kills_matching_members_of_a_group_whose_leader_is_gone(orphaned_group):
    pgid, starttime, member, other = orphaned_group
    assert not _steps.same_process(pgid, starttime)
    assert _steps.group_members(pgid, 'stress-ng', starttime) == [(member, _steps.proc_starttime(member))]
    step = dict(STEP, pid=pgid, starttime=starttime)
    assert _steps.run_steps([step], {}) is True
    assert not _steps.same_process(member)
    assert _steps.same_process(other)  # in the group, but not stress-ng: spared
    assert _steps.run_steps([step], {}) is False  # idempotent: decided by looking


def test_group_step_spares_processes_older_than_the_leader(orphaned_group):
    pgid, starttime, member, other = orphaned_group
    assert _steps.group_members(pgid, 'stress-ng', since=_steps.proc_starttime(member) + 1) == []
    step = dict(STEP, pid=pgid, starttime=_steps.proc_starttime(member) + 1)
    assert _steps.run_steps([step], {}) is False
    assert _steps.same_process(member)


def test_plain_kill_process_leaves_the_group_alone(orphaned_group):
    pgid, starttime, member, other = orphaned_group
    step = {'type': 'kill_process', 'pid': pgid, 'starttime': starttime, 'match': 'pggit-chaos-stress'}
    assert _steps.run_steps([step], {}) is False
    assert _steps.same_process(member)


# -- confine=postgres on a systemd unit: OOMPolicy --------------------------------
UNIT = 'postgresql@15-main.service'


class FakeConn(object):
    def cursor(self):
        return None

    def close(self):
        pass


def fake_server(monkeypatch, tmp_path, unit=UNIT, data=None):
    """The module's server look, faked: a server in this process's cgroups, managed by a systemd unit."""
    data = data or tmp_path / 'data'
    data.mkdir(exist_ok=True)
    info = {'data_directory': str(data), 'postmaster_pid': os.getpid(), 'postmaster_starttime': 1, 'owner': 'postgres',
            'bin_dir': '/usr/lib/postgresql/15/bin', 'cgroups': _cgroup.of_pid(os.getpid()), 'log': None, 'options': None,
            'systemd_unit': unit, 'version_num': 150000, 'in_recovery': False}
    monkeypatch.setattr(module, 'connect_or_fail', lambda *args, **kwargs: FakeConn())
    monkeypatch.setattr(module._server, 'server_info', lambda cursor: info)  # pylint: disable=protected-access
    return info


def fake_systemctl(monkeypatch, tmp_path, policy):
    """A systemctl in front of the system folders that answers `show -p OOMPolicy --value UNIT` with policy."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    log = tmp_path / 'systemctl.args'
    script = folder / 'systemctl'
    script.write_text('#!/bin/sh\necho "$@" > %s\necho %s\n' % (log, policy))
    script.chmod(0o755)
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(folder),) + _steps.BIN_DIRS)
    return log


def test_oom_policy_reads_systemctl(monkeypatch, tmp_path):
    log = fake_systemctl(monkeypatch, tmp_path, 'continue')
    assert _stress.oom_policy(UNIT) == 'continue'
    assert log.read_text().split() == ['show', '-p', 'OOMPolicy', '--value', UNIT]


@pytest.mark.parametrize('policy', ['stop', 'kill', ''])
def test_confine_postgres_refuses_a_unit_that_stops_on_oom(monkeypatch, tmp_path, policy):
    fake_server(monkeypatch, tmp_path)
    fake_systemctl(monkeypatch, tmp_path, policy)
    state = tmp_path / 'state'
    result, failed = run_module(module.main, dict(name='s', resource='memory', memory_mb=16, state_dir=str(state)),
                                check_mode=True)
    assert failed, result
    for word in ('confine=postgres', UNIT, 'OOMPolicy is %s' % (policy or 'unknown'), 'confine=none', 'OOMPolicy=continue'):
        assert word in result['msg']
    assert not state.exists()


def test_confine_postgres_accepts_oom_policy_continue_and_confine_none_does_not_ask(monkeypatch, tmp_path):
    fake_server(monkeypatch, tmp_path)
    log = fake_systemctl(monkeypatch, tmp_path, 'continue')
    result, failed = run_module(module.main, dict(name='s', resource='memory', memory_mb=16, state_dir=str(tmp_path / 's')),
                                check_mode=True)
    assert not failed, result['msg']
    assert result['server']['systemd_unit'] == UNIT
    log.unlink()
    result, failed = run_module(module.main, dict(name='s', resource='cpu', confine='none', state_dir=str(tmp_path / 's')),
                                check_mode=True)
    assert not failed, result['msg']
    assert not log.exists()


# -- resource=io: on the data directory's filesystem, with room -------------------
def fs(mount, free):
    return {'mount': mount, 'device': '/dev/' + mount.strip('/').replace('/', '-'), 'free_bytes': free}


def test_io_problem_needs_the_state_dir_on_the_data_directory_filesystem(tmp_path):
    filesystems = {str(tmp_path / 'state'): fs('/', 10 ** 12), str(tmp_path): fs('/', 10 ** 12), '/data': fs('/data', 10 ** 12)}
    problem = module.io_problem(2, str(tmp_path / 'state' / 'x'), '/data', filesystem=filesystems.get,
                                same=lambda a, b: False)
    for word in ('resource=io', 'state_dir %s' % (tmp_path / 'state' / 'x'), 'on the filesystem / (/dev/)',
                 'data directory /data is on the filesystem /data (/dev/data)'):
        assert word in problem, problem
    assert module.io_problem(2, str(tmp_path / 'state'), '/data', filesystem=filesystems.get, same=lambda a, b: True) is None


def test_io_problem_needs_room_for_every_worker_and_a_margin():
    need = int(3 * _stress.IO_BYTES * 1.1)
    ok = module.io_problem(3, '/', '/data', filesystem=lambda path: fs('/data', need), same=lambda a, b: True)
    assert ok is None
    problem = module.io_problem(3, '/', '/data', filesystem=lambda path: fs('/data', need - 1), same=lambda a, b: True)
    for word in ('io_workers=3', 'needs %d MB free' % (need // MB), 'which has %d MB free' % ((need - 1) // MB), '/data'):
        assert word in problem, problem


@pytest.mark.skipif(not os.path.isdir('/dev/shm') or os.stat('/dev/shm').st_dev == os.stat('/tmp').st_dev,
                    reason='needs /dev/shm on a filesystem of its own')
def test_module_io_refuses_a_state_dir_off_the_data_directory_filesystem(monkeypatch, tmp_path):
    info = fake_server(monkeypatch, tmp_path, unit=None)
    with tempfile.TemporaryDirectory(dir='/dev/shm') as other:
        state = os.path.join(other, 'state')
        for confine in ('none', 'postgres'):
            result, failed = run_module(module.main, dict(name='io', resource='io', confine=confine, state_dir=state),
                                        check_mode=True)
            assert failed, result
            assert 'resource=io' in result['msg'] and info['data_directory'] in result['msg'] and '/dev/shm' in result['msg']
            assert not os.path.exists(state)
        result, failed = run_module(module.main, dict(name='io', resource='io', confine='none',
                                                      state_dir=str(tmp_path / 'state')), check_mode=True)
        assert not failed, result['msg']
        assert '--temp-path' in result['stress']['argv']
