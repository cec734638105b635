"""The lab hosts' cgroups (roles/pggit_lab/files/pggit_lab_cgroup.py), on fake /proc and /sys/fs/cgroup trees:
children of the caller's own cgroups per controller (v1 split or combined mounts, v2), the limit, the postmaster's
confinement, and removal that thaws, kills and touches no other lab's cgroups."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil

import pytest

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'roles', 'pggit_lab', 'files')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(FILES, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cg = _load('pggit_lab_cgroup')
NAME = 'pggit-lab-h4-lab-1'
OWN_MEMORY = '/process_api/abc'


class Tree(object):
    """A fake /proc and /sys/fs/cgroup; `mounts` are (fstype, dir name, super options)."""

    def __init__(self, root, monkeypatch, mounts, self_cgroup):
        self.proc, self.sys = str(root / 'proc'), str(root / 'sys' / 'fs' / 'cgroup')
        monkeypatch.setattr(cg, 'PROC', self.proc)
        monkeypatch.setattr(cg, 'SYS', self.sys)
        lines = []
        for i, (fstype, name, opts) in enumerate(mounts):
            point = os.path.join(self.sys, name) if name else self.sys
            os.makedirs(point, exist_ok=True)
            lines.append('%d 20 0:%d / %s rw,relatime shared:%d - %s cgroup rw,%s'
                         % (30 + i, 30 + i, point, i, fstype, opts))
        self.write('proc/self/mountinfo', '\n'.join(lines) + '\n')
        self.write('proc/self/cgroup', self_cgroup)

    def write(self, rel, text):
        path = os.path.join(os.path.dirname(self.proc), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as handle:
            handle.write(text)
        return path

    def cg(self, rel):
        return os.path.join(self.sys, rel)


V1_SPLIT = [('cgroup', 'cpu', 'cpu'), ('cgroup', 'cpuacct', 'cpuacct'), ('cgroup', 'memory', 'memory'),
            ('cgroup', 'freezer', 'freezer'), ('cgroup', 'pids', 'pids'), ('cgroup2', 'unified', 'nsdelegate')]
V1_SPLIT_SELF = '8:pids:/\n6:freezer:/\n4:memory:%s\n2:cpuacct:/\n1:cpu:/\n0::/\n' % OWN_MEMORY


@pytest.fixture
def v1(tmp_path, monkeypatch):
    """This machine's layout: split cpu and cpuacct, memory under /process_api/<id>, a hybrid unified mount."""
    tree = Tree(tmp_path, monkeypatch, V1_SPLIT, V1_SPLIT_SELF)
    os.makedirs(tree.cg('memory' + OWN_MEMORY))
    return tree


def test_v1_children_of_the_callers_own_cgroup_per_controller(v1):
    version, wanted = cg.targets(NAME)
    assert version == 1
    assert wanted == {'memory': v1.cg('memory/process_api/abc/' + NAME), 'cpu': v1.cg('cpu/' + NAME),
                      'cpuacct': v1.cg('cpuacct/' + NAME), 'freezer': v1.cg('freezer/' + NAME)}


def test_ensure_makes_them_sets_the_limit_and_then_changes_nothing(v1):
    dry = cg.ensure(NAME, '512M', dry_run=True)
    assert dry['changed'] and not os.path.exists(v1.cg('freezer/' + NAME))
    first = cg.ensure(NAME, '512M')
    assert first['changed'] and first['memory_limit_bytes'] == 536870912
    for path in first['cgroups'].values():
        assert os.path.isdir(path)
    with open(os.path.join(first['cgroups']['memory'], 'memory.limit_in_bytes')) as handle:
        assert handle.read() == '536870912'
    assert sorted(first['procs_files']) == sorted(os.path.join(p, 'cgroup.procs') for p in first['cgroups'].values())
    assert cg.ensure(NAME, '512M') == dict(first, changed=False, actions=[])
    assert cg.ensure(NAME, '1G')['actions'] == ['memory.limit_in_bytes=1073741824']


def test_a_combined_cpu_cpuacct_mount_is_one_cgroup(tmp_path, monkeypatch):
    tree = Tree(tmp_path, monkeypatch, [('cgroup', 'cpu,cpuacct', 'cpu,cpuacct'), ('cgroup', 'memory', 'memory'),
                                        ('cgroup', 'freezer', 'freezer')],
                '5:freezer:/a\n4:memory:/a\n2:cpu,cpuacct:/a\n')
    for ctrl in ('cpu,cpuacct', 'memory', 'freezer'):
        os.makedirs(tree.cg(ctrl + '/a'))
    result = cg.ensure(NAME, '512M')
    assert result['cgroups']['cpu'] == result['cgroups']['cpuacct'] == tree.cg('cpu,cpuacct/a/' + NAME)
    assert len(result['procs_files']) == 3


def test_v2_one_child_with_memory_max_and_the_controllers_enabled(tmp_path, monkeypatch):
    tree = Tree(tmp_path, monkeypatch, [('cgroup2', '', 'nsdelegate')], '0::/lab.slice\n')
    tree.write('sys/fs/cgroup/lab.slice/cgroup.controllers', 'cpuset cpu io memory pids\n')
    tree.write('sys/fs/cgroup/lab.slice/cgroup.subtree_control', '')
    written = []
    real_write = cg._write
    monkeypatch.setattr(cg, '_write', lambda path, text: (written.append((os.path.basename(path), text)),
                                                          real_write(path, text)))
    result = cg.ensure(NAME, '512m')
    assert result['version'] == 2 and result['cgroups'] == {'unified': tree.cg('lab.slice/' + NAME)}
    assert ('cgroup.subtree_control', '+memory') in written and ('cgroup.subtree_control', '+cpu') in written
    with open(tree.cg('lab.slice/%s/memory.max' % NAME)) as handle:
        assert handle.read() == '536870912'


def test_v2_says_why_a_cgroup_with_processes_cannot_have_children_with_controllers(tmp_path, monkeypatch):
    tree = Tree(tmp_path, monkeypatch, [('cgroup2', '', 'nsdelegate')], '0::/session.scope\n')
    tree.write('sys/fs/cgroup/session.scope/cgroup.controllers', 'cpu memory\n')

    def busy(path, text):
        raise OSError(errno.EBUSY, 'Device or resource busy')
    monkeypatch.setattr(cg, '_write', busy)
    with pytest.raises(cg.CgroupError, match=r'cannot enable the cgroup v2 controller memory .*session.scope.*'
                                             r'holds processes'):
        cg.ensure(NAME, '512M')
    assert not os.path.exists(tree.cg('session.scope/' + NAME))


@pytest.mark.parametrize('name', ['pggit-lab-h4-lab-10', 'other', '../pggit-lab-h4-lab-1', 'pggit-lab-H4-lab-1', ''])
def test_only_lab_cgroup_names_are_made(v1, name):
    with pytest.raises(cg.CgroupError, match='pggit_lab_cgroup_name must match .* got %r' % (name,)):
        cg.ensure(name, '512M')


@pytest.mark.parametrize('limit, expected', [('512M', 536870912), ('512m', 536870912), ('1G', 1 << 30),
                                             ('16777216', 16777216), ('64MB', 64 << 20)])
def test_sizes(limit, expected):
    assert cg.parse_size(limit) == expected


@pytest.mark.parametrize('limit', ['', 'lots', '1T', '-5M', '1M', '0'])
def test_a_bad_limit_is_refused_naming_the_option_and_value(limit):
    with pytest.raises(cg.CgroupError, match=r'pggit_lab_memory_limit must be a size of at least 16M .* got %r'
                       % (limit,)):
        cg.parse_size(limit)


def test_a_postmaster_is_confined_only_in_every_one_of_its_cgroups(v1):
    result = cg.ensure(NAME, '512M')
    pidfile = v1.write('data/postmaster.pid', '4242\n/data\n')
    v1.write('proc/4242/cgroup', '6:freezer:/%s\n4:memory:%s/%s\n2:cpuacct:/%s\n1:cpu:/%s\n'
             % (NAME, OWN_MEMORY, NAME, NAME, NAME))
    assert cg.ensure(NAME, '512M', pidfile)['confined'] is True
    assert cg.status(NAME, pidfile)['postmaster_confined'] is True
    v1.write('proc/4242/cgroup', '6:freezer:/%s\n4:memory:%s\n2:cpuacct:/%s\n1:cpu:/%s\n'
             % (NAME, OWN_MEMORY, NAME, NAME))
    again = cg.ensure(NAME, '512M', pidfile)
    assert again['postmaster_pid'] == 4242 and again['confined'] is False and not again['changed']
    assert cg.status(NAME, pidfile)['postmaster_confined'] is False
    shutil.rmtree(os.path.join(v1.proc, '4242'))
    assert cg.ensure(NAME, '512M', pidfile)['postmaster_pid'] is None, 'a stale postmaster.pid is no postmaster'
    assert result['confined'] is False


def test_status_reports_the_freezer_state_limit_and_processes(v1):
    cg.ensure(NAME, '512M')
    v1.write('sys/fs/cgroup/freezer/%s/freezer.state' % NAME, 'FROZEN\n')
    v1.write('sys/fs/cgroup/freezer/%s/cgroup.procs' % NAME, '77\n')
    v1.write('proc/77/stat', '77 (postgres) T 1 77 77 0 -1')
    v1.write('proc/77/comm', 'postgres\n')
    v1.write('proc/77/cmdline', 'postgres: walreceiver\0')
    status = cg.status(NAME)
    assert status['freezer_states'] == ['FROZEN']
    freezer = [c for c in status['cgroups'] if c['path'].startswith(v1.cg('freezer/'))][0]
    assert freezer['processes'] == [{'pid': 77, 'comm': 'postgres', 'state': 'T', 'cmdline': 'postgres: walreceiver'}]
    memory = [c for c in status['cgroups'] if c['path'].startswith(v1.cg('memory/'))][0]
    assert memory['memory_limit'] == '536870912'


def test_find_matches_whole_names_of_one_lab_only(v1):
    for rel in ('freezer/pggit-lab-h4-lab-1', 'freezer/pggit-lab-h4-lab-2', 'freezer/deep/er/pggit-lab-h4-lab-3',
                'freezer/pggit-lab-h41-lab-1', 'freezer/pggit-lab-h4-lab-1x',
                'memory/process_api/abc/pggit-lab-h4-lab-1', 'memory/process_api/other/pggit-lab-lab-lab-1'):
        os.makedirs(v1.cg(rel))
    found = sorted(path for _fstype, path in cg.find('^pggit-lab-h4-lab-[0-9]$'))
    assert found == sorted(v1.cg(rel) for rel in ('freezer/pggit-lab-h4-lab-1', 'freezer/pggit-lab-h4-lab-2',
                                                  'freezer/deep/er/pggit-lab-h4-lab-3',
                                                  'memory/process_api/abc/pggit-lab-h4-lab-1'))


def test_remove_thaws_first_then_kills_what_is_left_then_removes(v1, monkeypatch):
    """The order matters: SIGKILL to a process in a frozen cgroup does nothing until it is thawed."""
    frozen = v1.write('sys/fs/cgroup/freezer/%s/freezer.state' % NAME, 'FROZEN\n')
    procs = v1.write('sys/fs/cgroup/freezer/%s/cgroup.procs' % NAME, '501\n502\n')
    other = v1.cg('freezer/pggit-lab-h41-lab-1')
    os.makedirs(other)
    events = []

    def kill(pid, sig):
        with open(frozen) as handle:
            events.append(('kill', pid, sig, handle.read().strip()))
        with open(procs, 'w') as handle:
            handle.write('')  # the processes died

    monkeypatch.setattr(cg.os, 'kill', kill)
    real_rmdir = os.rmdir

    def rmdir(path):  # a cgroup directory goes whole, its control files with it
        events.append(('rmdir', path))
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
        real_rmdir(path)
    monkeypatch.setattr(cg.os, 'rmdir', rmdir)
    result = cg.remove('^pggit-lab-h4-lab-[0-9]$', timeout=2, spare={502})
    assert events[0] == ('kill', 501, 9, 'THAWED'), 'thawed before the kill; the spared pid untouched'
    assert ('rmdir', v1.cg('freezer/' + NAME)) in events
    assert result['thawed'] == [v1.cg('freezer/' + NAME)] and list(result['killed']) == [501]
    assert result['removed'] == [v1.cg('freezer/' + NAME)] and result['left'] == []
    assert os.path.isdir(other), "another lab's cgroup stays"


def test_main_refuses_a_regex_that_is_not_the_labs(capsys):
    assert cg.main(['remove', '--regex', '.*']) == 1
    out = json.loads(capsys.readouterr().out)
    assert out['failed'] and "--regex must start with ^pggit-lab- (the lab cgroups only), got '.*'" == out['msg']


def test_main_prints_a_failure_as_json(v1, capsys):
    assert cg.main(['ensure', '--name', NAME, '--memory-limit', 'lots']) == 1
    assert 'pggit_lab_memory_limit' in json.loads(capsys.readouterr().out)['msg']
    assert not os.path.exists(v1.cg('freezer/' + NAME)), 'bad input leaves nothing behind'


def test_the_reaper_refuses_a_cgroup_regex_that_is_not_the_labs(capsys):
    reap = _load('pggit_lab_reap')
    with pytest.raises(SystemExit):
        reap.main(['--lab-dir', '/var/tmp/pggit-lab-x', '--netns-regex', '^pggx-[0-9]$', '--cgroup-regex', '.*'])
    assert "--cgroup-regex must start with ^pggit-lab- (the lab cgroups only), got '.*'" in capsys.readouterr().err


def test_baseline_problems_name_what_is_wrong(v1):
    cg.ensure(NAME, '512M')
    pidfile = v1.write('data/postmaster.pid', '4242\n')
    v1.write('proc/4242/cgroup', '6:freezer:/%s\n4:memory:%s/%s\n2:cpuacct:/%s\n1:cpu:/%s\n'
             % (NAME, OWN_MEMORY, NAME, NAME, NAME))
    assert cg.status(NAME, pidfile)['problems'] == [], 'a confined, thawed, empty host is at baseline'
    v1.write('sys/fs/cgroup/freezer/%s/freezer.state' % NAME, 'FROZEN\n')
    v1.write('sys/fs/cgroup/memory/process_api/abc/%s/cgroup.procs' % NAME, '4242\n4300\n4301\n')
    for pid, comm, state, cmdline in ((4242, 'postgres', 'S', '/usr/lib/postgresql/15/bin/postgres -D /d'),
                                      (4300, 'postgres', 'T', 'postgres: lab-3: walreceiver streaming 0/3000'),
                                      (4301, 'stress-ng-vm', 'R', 'stress-ng --vm 1 --timeout 60s')):
        v1.write('proc/%d/stat' % pid, '%d (%s) %s 1 1 1 0 -1' % (pid, comm, state))
        v1.write('proc/%d/comm' % pid, comm + '\n')
        v1.write('proc/%d/cmdline' % pid, cmdline.replace(' ', '\0'))
    assert cg.status(NAME, pidfile)['problems'] == [
        'the cgroup %s is FROZEN' % v1.cg('freezer/' + NAME),
        'the postgres process 4300 is stopped (state T): postgres: lab-3: walreceiver streaming 0/3000',
        'a stress-ng process is left: 4301 stress-ng --vm 1 --timeout 60s']
    shutil.rmtree(os.path.join(v1.proc, '4242'))
    assert cg.status(NAME, pidfile)['problems'][0] == 'PostgreSQL is not running (no live postmaster in %s)' % pidfile
    assert 'no cgroup named pggit-lab-h4-lab-2' in cg.status('pggit-lab-h4-lab-2')['problems']


def test_the_hosts_get_the_cgroup_mounts_again_under_a_fresh_sys(v1, monkeypatch):
    """`ip netns exec` hides /sys/fs/cgroup from sshd: the spec read in the play is mounted again before sshd."""
    spec = cg.mount_spec()
    assert spec['root'] is None  # the fake tree has no tmpfs line for SYS itself
    assert ['cgroup', v1.cg('memory'), 'memory'] in spec['mounts'] and ['cgroup2', v1.cg('unified'), 'nsdelegate'] \
        in spec['mounts']
    calls = []
    cg.mount_again(dict(spec, root='tmpfs'), run=calls.append)
    assert calls[0] == ['mount', '-t', 'tmpfs', '-o', 'mode=755,nosuid,nodev,noexec', 'tmpfs', v1.sys]
    assert ['mount', '-t', 'cgroup', '-o', 'memory', 'cgroup', v1.cg('memory')] in calls
    with pytest.raises(cg.CgroupError, match='refusing to mount a cgroup on .*/etc.*: not under'):
        cg.mount_again({'root': None, 'mounts': [['cgroup', '/etc', 'memory']]}, run=calls.append)

    def fail(argv):
        raise OSError('mount failed')
    assert cg.mount_again({'root': None, 'mounts': [['cgroup', v1.cg('pids'), 'pids']]}, run=fail) == []
    with pytest.raises(cg.CgroupError, match='cannot mount the cgroup hierarchy freezer'):
        cg.mount_again({'root': None, 'mounts': [['cgroup', v1.cg('freezer'), 'freezer']]}, run=fail)
