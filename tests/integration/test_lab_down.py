"""lab_down removes one lab and nothing else: real processes, namespaces, links and mounts, the real playbook.

The lab here is a fake one with a random name: a directory under tmp_path, a
namespace and a bridge named the way lab_up names them, a tmpfs under its
directory and processes tied to it. Next to it stand what lab_down must leave
alone: a process whose command line says pggit-chaos-reaper but that the lab
did not start (a reaper of a real fault, another checkout's tests), a reaper
under a sibling directory whose name extends the lab's, and the namespace,
bridge and tmpfs of another lab whose name extends this one's. The lab's
cgroups (made by the role's own pggit_lab_cgroup.py, children of this test's
cgroups) hold a process that nothing else ties to the lab, frozen: lab_down
must thaw it, kill it and remove the cgroups, and leave the other lab's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import importlib.util
import time
import uuid

import pytest

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLEEP = 'import time; time.sleep(120)'
# Start argv[N + 2:] after writing the shell's own pid into the N cgroup.procs files argv[2:N + 2] (as lab_up does).
JOIN = ['sh', '-ec', 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n - 1)); done; exec "$@"', 'sh']


def _cgroup_module():
    path = os.path.join(REPO, 'roles', 'pggit_lab', 'files', 'pggit_lab_cgroup.py')
    spec = importlib.util.spec_from_file_location('pggit_lab_cgroup', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cgroup = _cgroup_module()


def freeze(paths):
    """Freeze a lab cgroup (v1 freezer, v2 cgroup.freeze) and wait until it is frozen."""
    path = paths.get('freezer') or paths['unified']
    control = 'freezer.state' if 'freezer' in paths else 'cgroup.freeze'
    with open(os.path.join(path, control), 'w') as handle:
        handle.write('FROZEN' if 'freezer' in paths else '1')
    for _attempt in range(100):
        if cgroup.freezer_state(path) == 'FROZEN':
            return
        time.sleep(0.05)
    raise AssertionError('%s did not freeze' % path)


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def reaper_script(state_dir):
    """A stand-in for <state_dir>/lib/pggit-chaos-reaper.py (sleeps; bounded)."""
    lib = os.path.join(state_dir, 'lib')
    os.makedirs(lib)
    path = os.path.join(lib, 'pggit-chaos-reaper.py')
    with open(path, 'w') as handle:
        handle.write(SLEEP + '\n')
    return path


class World(object):
    """Everything the test starts, so that all of it goes whatever happens."""

    def __init__(self):
        self.procs, self.netns, self.links, self.mounts, self.cgroups = {}, [], [], [], []

    def start(self, key, argv):
        self.procs[key] = subprocess.Popen(argv, cwd='/', start_new_session=True, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)

    def alive(self, key):
        return self.procs[key].poll() is None

    def cleanup(self):
        cgroup.thaw(self.cgroups)
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for path in reversed(self.mounts):
            sh('umount', '-l', path)
        for name in self.netns:
            sh('ip', 'netns', 'delete', name)
        for name in self.links:
            sh('ip', 'link', 'delete', name)
        for path in self.cgroups:
            if os.path.isdir(path):
                os.rmdir(path)


@pytest.fixture
def world():
    items = World()
    yield items
    items.cleanup()


def netns_list():
    return sh('ip', 'netns', 'list').stdout


def link_exists(name):
    return sh('ip', 'link', 'show', name).returncode == 0


def mounted(path):
    return sh('mountpoint', '-q', path).returncode == 0


def test_lab_down_kills_only_its_own_lab(world, tmp_path):
    name = 'rt' + uuid.uuid4().hex[:5]
    other = name + '1'  # a lab whose every name extends this one's
    lab_dir, sibling_dir = str(tmp_path / 'lab'), str(tmp_path / 'lab-1')
    inventory = tmp_path / 'inventory' / 'hosts.yml'
    inventory.parent.mkdir()
    inventory.write_text('all: {}\n')

    # This lab: a reaper under its directory, a process in its namespace, its bridge, a tmpfs under it.
    world.start('lab_reaper', [sys.executable, reaper_script(os.path.join(lab_dir, 'hosts', 'lab-1', 'state'))])
    for ns in ('pgg%s-1' % name, 'pgg%s-1' % other):
        assert sh('ip', 'netns', 'add', ns).returncode == 0
        world.netns.append(ns)
    world.start('lab_netns', ['ip', 'netns', 'exec', 'pgg%s-1' % name, sys.executable, '-c', SLEEP])
    world.start('other_netns', ['ip', 'netns', 'exec', 'pgg%s-1' % other, sys.executable, '-c', SLEEP])
    for bridge in ('pgg%s0' % name, 'pgg%s0' % other):
        assert sh('ip', 'link', 'add', bridge, 'type', 'bridge').returncode == 0
        world.links.append(bridge)
    for path in (os.path.join(lab_dir, 'hosts', 'lab-1', 'pgdata'), os.path.join(sibling_dir, 'pgdata')):
        os.makedirs(path)
        assert sh('mount', '-t', 'tmpfs', '-o', 'size=1m', 'pggit-lab-test', path).returncode == 0
        world.mounts.append(path)

    # Its host's cgroups, made as lab_up makes them, holding a frozen process; and the other lab's, not frozen.
    lab_cg = cgroup.ensure('pggit-lab-%s-lab-1' % name, '64M')
    other_cg = cgroup.ensure('pggit-lab-%s-lab-1' % other, '64M')
    for made in (lab_cg, other_cg):
        world.cgroups.extend(sorted(set(made['cgroups'].values())))
    world.start('lab_cgroup', JOIN + [str(len(lab_cg['procs_files']))] + lab_cg['procs_files']
                + [sys.executable, '-c', SLEEP])
    world.start('other_cgroup', JOIN + [str(len(other_cg['procs_files']))] + other_cg['procs_files']
                + [sys.executable, '-c', SLEEP])
    for _attempt in range(100):
        if all(world.procs[key].pid in cgroup._procs(path)
               for key, made in (('lab_cgroup', lab_cg), ('other_cgroup', other_cg))
               for path in made['cgroups'].values()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError('the cgroup processes did not join their cgroups')
    freeze(lab_cg['cgroups'])

    # Not this lab: a process merely named pggit-chaos-reaper, a reaper elsewhere, a reaper of the sibling directory.
    world.start('named', [sys.executable, '-c', SLEEP, 'pggit-chaos-reaper'])
    world.start('elsewhere', [sys.executable, reaper_script(str(tmp_path / 'elsewhere' / 'state'))])
    world.start('sibling', [sys.executable, reaper_script(os.path.join(sibling_dir, 'hosts', 'lab-1', 'state'))])

    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    env.pop('PGGIT_LAB_NAME', None)
    down = subprocess.run([os.path.join(BIN, 'ansible-playbook'), os.path.join(REPO, 'playbooks', 'lab_down.yml'),
                           '-i', 'localhost,', '-e', 'pggit_lab_name=%s' % name, '-e', 'pggit_lab_dir=%s' % lab_dir,
                           '-e', 'pggit_lab_inventory=%s' % inventory],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert down.returncode == 0, down.stdout + down.stderr

    for key in ('lab_reaper', 'lab_netns', 'lab_cgroup'):
        assert world.procs[key].wait(timeout=10) == -signal.SIGKILL, key
    for key in ('named', 'elsewhere', 'sibling', 'other_netns', 'other_cgroup'):
        assert world.alive(key), '%s must survive lab_down of lab %s' % (key, name)
    assert not [path for path in lab_cg['cgroups'].values() if os.path.exists(path)]
    assert [path for path in other_cg['cgroups'].values() if not os.path.isdir(path)] == []
    assert cgroup.find('^pggit-lab-%s-lab-[0-9]$' % name) == []

    assert 'pgg%s-1' % name not in netns_list().split()
    assert 'pgg%s-1' % other in netns_list().split()
    assert not link_exists('pgg%s0' % name) and link_exists('pgg%s0' % other)
    assert not os.path.exists(lab_dir) and not inventory.exists() and not inventory.parent.exists()
    assert mounted(os.path.join(sibling_dir, 'pgdata')) and os.path.isdir(sibling_dir)


def test_lab_down_refuses_a_bad_name_and_touches_nothing(world, tmp_path):
    world.start('named', [sys.executable, '-c', SLEEP, 'pggit-chaos-reaper'])
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    down = subprocess.run([os.path.join(BIN, 'ansible-playbook'), os.path.join(REPO, 'playbooks', 'lab_down.yml'),
                           '-i', 'localhost,', '-e', 'pggit_lab_name=Bad_Name', '-e', 'pggit_lab_dir=%s' % tmp_path],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert down.returncode != 0
    assert "pggit_lab_name must be 1 to 10 characters from a-z and 0-9" in down.stdout and "'Bad_Name'" in down.stdout
    assert world.alive('named') and tmp_path.is_dir()
