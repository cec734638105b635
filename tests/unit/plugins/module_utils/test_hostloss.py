"""Host loss: the checks of its undo steps (cgroup_thaw, manager_start), the thaw on a cgroup tree, who may be run."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _hostloss, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError

FREEZER = '/sys/fs/cgroup/freezer/pggit-lab-hlb-lab-1'
PATRONI = ['/opt/patroni/bin/python3', '/opt/patroni/bin/patroni', '/etc/patroni/lab-1.yml']


def thaw(**over):
    return dict({'type': 'cgroup_thaw', 'paths': [FREEZER], 'version': 1}, **over)


def manager(**over):
    return dict({'type': 'manager_start', 'method': 'exec', 'argv': PATRONI, 'user': 'postgres', 'cwd': '/var/lib/postgresql',
                 'cgroups': {'freezer': FREEZER, 'memory': '/sys/fs/cgroup/memory/pggit-lab-hlb-lab-1'}, 'log': None,
                 'pgdata': '/srv/lab-1/data', 'wait_s': 60, 'manager': ' '.join(PATRONI),
                 'netns': 'net:[4026532281]'}, **over)


def test_the_steps_our_host_fault_writes_are_accepted():
    _steps.check_steps([thaw(), thaw(paths=['/sys/fs/cgroup/pggit/lab-1'], version=2), manager(),
                        {'type': 'manager_start', 'method': 'systemd', 'unit': 'patroni.service', 'pgdata': '/srv/data'}], '/var/lib/x')


@pytest.mark.parametrize('step, reason', [
    (thaw(paths=[]), 'paths must be a list'),
    (thaw(paths='/sys/fs/cgroup/freezer/x'), 'paths must be a list'),
    (thaw(version=3), 'version must be 1 or 2'),
    (thaw(paths=['/sys/fs/cgroup/freezer']), 'root of the freezer hierarchy'),
    (thaw(paths=['/sys/fs/cgroup'], version=2), 'not below /sys/fs/cgroup'),
    (thaw(paths=['/sys/fs/cgroup/memory/x']), 'not in the v1 freezer hierarchy'),
    (thaw(paths=['/etc/shadow']), 'is not under /sys/fs/cgroup'),
    (thaw(paths=['/sys/fs/cgroup/freezer/../../../etc']), 'not a normal path'),
    (thaw(paths=['freezer/x']), 'not absolute'),
    (manager(method='shell'), 'method must be exec or systemd'),
    (manager(argv=['/bin/sh', '-c', 'rm -rf /']), 'not a program that manages PostgreSQL'),
    (manager(argv=['patroni', '/etc/p.yml']), 'argv[0] must be an absolute path'),
    (manager(argv=[]), 'argv must be a list'),
    (manager(argv=['/usr/bin/patroni', 'a\x00b']), 'argv must be a list'),
    (manager(user='root;id'), 'user must name'),
    (manager(cwd='relative'), 'cwd must be an absolute path'),
    (manager(log='../log'), 'log must be an absolute path'),
    (manager(wait_s=0), 'wait_s must be'),
    (manager(cgroups={'memory': '/etc'}), 'not under /sys/fs/cgroup'),
    (manager(pgdata='/'), 'pgdata must be'),
    (manager(netns='/proc/1/ns/net'), 'netns must be'),
    ({'type': 'manager_start', 'method': 'systemd', 'unit': 'patroni; reboot', 'pgdata': '/srv/d'}, 'unit must be'),
    ({'type': 'manager_start', 'method': 'systemd', 'unit': '-Hevil.service', 'pgdata': '/srv/d'}, 'unit must be'),
])
def test_forged_host_steps_are_refused_before_anything_runs(step, reason):
    with pytest.raises(UndoError) as caught:
        _steps.run_steps([step], {})
    assert reason in str(caught.value)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A fake v1 freezer tree under a fake /sys/fs/cgroup (thaw writes only the state file)."""
    root = tmp_path / 'cgroup'
    group = root / 'freezer' / 'lab-1'
    group.mkdir(parents=True)
    (group / 'freezer.state').write_text('FROZEN\n')
    monkeypatch.setattr(_cgroup, 'SYS', str(root))
    return str(group)


def test_thaw_is_idempotent_and_a_gone_cgroup_is_nothing_to_thaw(tree):
    step = thaw(paths=[tree])
    assert _steps.STEP_CHECKS['cgroup_thaw'](step, None) is None
    assert _steps.run_steps([step], {}) is True
    assert open(os.path.join(tree, 'freezer.state')).read() == 'THAWED'
    assert _steps.run_steps([step], {}) is False  # already thawed: nothing to do
    os.unlink(os.path.join(tree, 'freezer.state'))
    os.rmdir(tree)
    assert _steps.run_steps([step], {}) is False


def test_a_thaw_that_does_not_take_is_an_error(tree, monkeypatch):
    monkeypatch.setattr(_hostloss, 'freezer_state', lambda version, path: 'FROZEN')
    with pytest.raises(UndoError) as caught:
        _hostloss.thaw(1, [tree], wait=0.1)
    assert 'still frozen after the thaw' in str(caught.value) and tree in str(caught.value)


def test_v2_freezer_state_from_cgroup_events(tmp_path):
    group = tmp_path / 'g'
    group.mkdir()
    (group / 'cgroup.freeze').write_text('1\n')
    (group / 'cgroup.events').write_text('populated 1\nfrozen 0\n')
    assert _hostloss.freezer_state(2, str(group)) == 'FREEZING'
    (group / 'cgroup.events').write_text('populated 1\nfrozen 1\n')
    assert _hostloss.freezer_state(2, str(group)) == 'FROZEN'
    (group / 'cgroup.freeze').write_text('0\n')
    (group / 'cgroup.events').write_text('populated 1\nfrozen 0\n')
    assert _hostloss.freezer_state(2, str(group)) == 'THAWED'
    assert _hostloss.freezer_state(2, str(tmp_path / 'gone')) is None


@pytest.mark.parametrize('path, outer, expected', [
    ('/sys/fs/cgroup/freezer/a', '/sys/fs/cgroup/freezer/a', True),
    ('/sys/fs/cgroup/freezer/a/b', '/sys/fs/cgroup/freezer/a', True),
    ('/sys/fs/cgroup/freezer/ab', '/sys/fs/cgroup/freezer/a', False),
    ('/sys/fs/cgroup/freezer', '/sys/fs/cgroup/freezer/a', False),
])
def test_inside(path, outer, expected):
    assert _hostloss.inside(path, outer) is expected


# -- who may be run again ------------------------------------------------------------------------
def make_program(folder, mode=0o755, owner=None):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'patroni')
    with open(path, 'w') as handle:
        handle.write('#!/bin/sh\n')
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, -1)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to own files as another user')
def test_program_problem_root_runs_only_root_owned_programs_under_root_only_folders(tmp_path):
    folder = str(tmp_path / 'bin')
    program = make_program(folder)
    os.chmod(str(tmp_path), 0o755)
    assert _hostloss.program_problem([program], 0) is None
    os.chmod(program, 0o777)
    assert 'writable by its owner only' in _hostloss.program_problem([program], 0)
    os.chmod(program, 0o755)
    os.chown(program, 65534, -1)
    assert 'must belong to root' in _hostloss.program_problem([program], 0)
    assert _hostloss.program_problem([program], 65534) is None  # a user may run its own program as itself
    os.chown(program, 0, -1)
    os.chmod(folder, 0o777)
    assert 'the folder %s' % folder in _hostloss.program_problem([program], 0)


def test_program_problem_checks_the_script_of_an_interpreter(tmp_path):
    script = str(tmp_path / 'patroni')
    with open(script, 'w') as handle:
        handle.write('print(1)\n')
    os.chmod(script, 0o666)
    problem = _hostloss.program_problem(['/usr/bin/python3', script], os.geteuid())
    assert problem and script in problem


def test_program_problem_of_a_missing_program():
    assert 'No such file' in _hostloss.program_problem(['/nonexistent/patroni'], 0)


# -- the tree of a process ------------------------------------------------------------------------
def test_tree_holds_a_process_and_its_children():
    parent = subprocess.Popen(['sh', '-c', 'sleep 30 & sleep 30 & wait'])
    try:
        deadline = 50
        while deadline and len(_hostloss.tree(parent.pid)) < 3:
            deadline -= 1
            time.sleep(0.05)
        members = _hostloss.tree(parent.pid)
        assert parent.pid in members and len(members) == 3
        assert os.getpid() not in members
        assert _hostloss.argv_of(parent.pid) == ['sh', '-c', 'sleep 30 & sleep 30 & wait']
    finally:
        for pid in _hostloss.tree(parent.pid):
            os.kill(pid, 9)
        parent.wait()


def test_kill_targets_then_kill_confirms_they_are_gone():
    parent = subprocess.Popen(['sh', '-c', 'sleep 30 & wait'])
    try:
        while len(_hostloss.tree(parent.pid)) < 2:
            time.sleep(0.05)
        targets = _hostloss.kill_targets(parent.pid, None)
        assert [t['role'] for t in targets] == ['postmaster', 'child']
        killed = _hostloss.kill(targets)
        parent.wait()
        assert set(killed) == set(t['pid'] for t in targets)
        assert not any(_steps.same_process(t['pid'], t['starttime']) for t in targets)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_freeze_plan_refuses_a_process_in_no_freezer(monkeypatch):
    monkeypatch.setattr(_hostloss, 'freezer_of', lambda pid: None)
    with pytest.raises(ChaosError) as caught:
        _hostloss.freeze_plan(os.getpid(), None, [])
    assert 'pid %d' % os.getpid() in str(caught.value) and 'no freezer cgroup' in str(caught.value)


@pytest.mark.parametrize('argv, expected', [
    (['/usr/bin/python3', '-S', '/var/tmp/lab/patroni-bin/patroni', '/var/tmp/lab/hosts/lab-1/patroni.yml'], True),
    (['/opt/venv/bin/patroni', '/etc/patroni.yml'], True),
    (['pg_autoctl: start/stop postgres'], True),
    (['/usr/bin/python3', '-S', '/tmp/evil.py'], False),
    (['/bin/sh', '-c', 'patroni'], False),
    ([], False),
])
def test_manager_name_sees_through_interpreter_options(argv, expected):
    assert bool(_hostloss.manager_name(argv)) is expected


def test_the_script_of_an_interpreter_with_options_is_checked(tmp_path):
    script = str(tmp_path / 'patroni')
    with open(script, 'w') as handle:
        handle.write('print(1)\n')
    os.chmod(script, 0o666)
    assert script in _hostloss.program_problem(['/usr/bin/python3', '-S', script, 'conf.yml'], os.geteuid())


# -- review fixes ---------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to own files as another user')
@pytest.mark.parametrize('interpreter', ['/bin/sh', '/usr/bin/env'])
def test_the_script_of_any_interpreter_is_checked_and_never_relative(tmp_path, interpreter):
    """A record whose user is root: `/bin/sh /home/x/patroni` (a script its owner may change) or `/bin/sh patroni-x`
    (looked up where it starts) would run the postgres user's code as root."""
    folder = str(tmp_path / 'bin')
    script = make_program(folder, owner=65534)
    os.chmod(str(tmp_path), 0o755)
    problem = _hostloss.program_problem([interpreter, script, '/etc/p.yml'], 0)
    assert problem and 'must belong to root' in problem
    problem = _hostloss.program_problem([interpreter, 'patroni-x'], 0)
    assert problem and 'not a program named by an absolute path' in problem
    os.chown(script, 0, -1)
    assert _hostloss.program_problem([interpreter, script, '/etc/p.yml'], 0) is None


def _one_cgroup(monkeypatch, pids, state='THAWED'):
    monkeypatch.setattr(_hostloss, 'freezer_of', lambda pid: (1, FREEZER))
    monkeypatch.setattr(_hostloss, 'is_root_cgroup', lambda version, path: False)
    monkeypatch.setattr(_hostloss, 'path_problem', lambda version, path: None)
    monkeypatch.setattr(_hostloss, 'freezer_state', lambda version, path: state)
    monkeypatch.setattr(_hostloss, 'cgroup_pids', lambda path: list(pids))


@pytest.mark.parametrize('state', ['FROZEN', 'FREEZING'])
def test_a_cgroup_frozen_by_someone_else_is_refused(monkeypatch, state):
    """Freezing it again would be a no-op, and our thaw would then undo the other freeze (an admin's, another fault's)."""
    _one_cgroup(monkeypatch, [os.getpid()], state)
    with pytest.raises(ChaosError, match='%s is %s already' % (FREEZER, state)):
        _hostloss.freeze_plan(os.getpid(), None, [])
    _one_cgroup(monkeypatch, [os.getpid()], 'THAWED')
    assert _hostloss.freeze_plan(os.getpid(), None, [])['paths'] == [FREEZER]


def test_the_other_programs_of_a_general_supervisor_are_foreign():
    """supervisord runs PostgreSQL and other programs: those are neither frozen with it nor orphaned by a kill."""
    sup = subprocess.Popen(['supervisord', '-c', 'sleep 30 & sleep 30 & wait'], executable='/bin/sh')
    try:
        deadline = time.time() + 5
        kids = []
        while len(kids) < 2 and time.time() < deadline:
            kids = sorted(_hostloss._children().get(sup.pid, []))  # pylint: disable=protected-access
            time.sleep(0.02)
        assert len(kids) == 2 and _hostloss.generic_supervisor(sup.pid)
        postmaster, other = kids
        assert _hostloss.foreign_children(postmaster, sup.pid) == [other]
        mp = pytest.MonkeyPatch()
        try:
            _one_cgroup(mp, [sup.pid, postmaster, other])
            with pytest.raises(ChaosError, match='holds pid %d .* neither the postmaster' % other):
                _hostloss.freeze_plan(postmaster, sup.pid, [])
        finally:
            mp.undo()
    finally:
        for pid in _hostloss.tree(sup.pid) - {sup.pid}:
            os.kill(pid, 9)
        sup.kill()
        sup.wait()


def test_an_ha_manager_is_not_a_general_supervisor():
    assert _hostloss.foreign_children(os.getpid(), None) == []
    proc = subprocess.Popen(['patroni', '-c', 'sleep 30'], executable='/bin/sh')
    try:
        time.sleep(0.05)
        assert not _hostloss.generic_supervisor(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_kill_refuses_a_general_supervisor_that_runs_other_programs(monkeypatch, tmp_path):
    """Killing supervisord would orphan its other programs, and its restart would start them a second time."""
    from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_host

    class Module(object):
        params = {'mode': 'kill', 'state_dir': str(tmp_path), 'name': 'cut'}
        check_mode = False

    calls = []
    monkeypatch.setattr(_hostloss, 'foreign_children', lambda postmaster, manager: calls.append((postmaster, manager)) or [os.getpid()])
    monkeypatch.setattr(_hostloss, 'manager_step', lambda *a: calls.append('recorded') or ({}, None))
    fault = pggit_chaos_host.HostFault(Module())
    fault.info = {'postmaster_pid': 4242, 'data_directory': '/srv/data'}
    fault.manager = {'pid': 4241, 'cmd': '/usr/bin/python3 /usr/bin/supervisord -n', 'role': 'manager', 'starttime': 1}
    with pytest.raises(ChaosError, match=r'also runs pid %d .*nothing is killed' % os.getpid()):
        fault.plan({'server': {}, 'manager': fault.manager})
    assert calls == [(4242, 4241)]
