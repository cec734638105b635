"""_cgroup: finding, reading and joining cgroups, on fake /proc and /sys/fs/cgroup trees."""
from __future__ import annotations

import os

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup

V1_MOUNTINFO = """\
31 23 0:28 / {sys} rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {sys}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / {sys}/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / {sys}/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / {sys}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / {sys}/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = """\
9:name=systemd:/
6:freezer:/
4:memory:/process_api/abc
2:cpu,cpuacct:/lab/pg1
0::/
"""
V2_MOUNTINFO = "41 23 0:38 / {sys} rw,relatime - cgroup2 cgroup2 rw\n"


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    proc = tmp_path / 'proc'
    sys_root = tmp_path / 'sys' / 'fs' / 'cgroup'
    sys_root.mkdir(parents=True)
    monkeypatch.setattr(_cgroup, 'PROC', str(proc))
    monkeypatch.setattr(_cgroup, 'SYS', str(sys_root))
    return str(proc), str(sys_root)


def _v1(roots, pid=42, cgroup=V1_CGROUP):
    proc, sys_root = roots
    _write(os.path.join(proc, 'self', 'mountinfo'), V1_MOUNTINFO.format(sys=sys_root))
    _write(os.path.join(proc, str(pid), 'cgroup'), cgroup)


def _v2(roots, pid=42, path='/lab/pg1'):
    proc, sys_root = roots
    _write(os.path.join(proc, 'self', 'mountinfo'), V2_MOUNTINFO.format(sys=sys_root))
    _write(os.path.join(proc, str(pid), 'cgroup'), '0::%s\n' % path)


def test_of_pid_v1_combined_mounts_and_no_named_hierarchies(roots):
    _v1(roots)
    sys_root = roots[1]
    assert _cgroup.of_pid(42) == {
        'freezer': sys_root + '/freezer',
        'memory': sys_root + '/memory/process_api/abc',
        'cpu': sys_root + '/cpu,cpuacct/lab/pg1',
        'cpuacct': sys_root + '/cpu,cpuacct/lab/pg1',
    }


def test_of_pid_v1_mount_root_is_stripped(roots):
    proc, sys_root = roots
    _write(os.path.join(proc, 'self', 'mountinfo'),
           '35 31 0:32 /docker/x %s/memory rw - cgroup cgroup rw,memory\n' % sys_root)
    _write(os.path.join(proc, '7', 'cgroup'), '4:memory:/docker/x/inner\n')
    assert _cgroup.of_pid(7) == {'memory': sys_root + '/memory/inner'}


def test_of_pid_v2(roots):
    _v2(roots)
    assert _cgroup.of_pid(42) == {'unified': roots[1] + '/lab/pg1'}


def test_of_pid_gone_process_is_empty(roots):
    _v2(roots)
    assert _cgroup.of_pid(43) == {}


def test_of_pid_real_self():
    # The real machine: whatever it has, every path is a directory under /sys/fs/cgroup.
    found = _cgroup.of_pid(os.getpid())
    for path in found.values():
        assert path.startswith('/sys/fs/cgroup/') and os.path.isdir(path)
    assert _cgroup.check_paths(found) is None


def test_memory_v1(roots):
    _v1(roots)
    paths = _cgroup.of_pid(42)
    mem = paths['memory']
    _write(mem + '/memory.limit_in_bytes', '9223372036854771712\n')
    _write(mem + '/memory.stat', 'cache 0\nhierarchical_memory_limit 268435456\n')
    _write(mem + '/memory.usage_in_bytes', '1000\n')
    _write(mem + '/memory.max_usage_in_bytes', '5000\n')
    _write(mem + '/memory.oom_control', 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n')
    assert _cgroup.memory(paths) == {'version': 1, 'path': mem, 'limit_bytes': 268435456,
                                     'usage_bytes': 1000, 'peak_bytes': 5000, 'oom_kills': 3}


def test_memory_v1_unlimited_and_old_kernel(roots):
    _v1(roots)
    paths = _cgroup.of_pid(42)
    mem = paths['memory']
    _write(mem + '/memory.limit_in_bytes', '9223372036854771712\n')
    _write(mem + '/memory.usage_in_bytes', '10\n')
    _write(mem + '/memory.max_usage_in_bytes', '20\n')
    _write(mem + '/memory.oom_control', 'oom_kill_disable 0\nunder_oom 0\n')
    got = _cgroup.memory(paths)
    assert got['limit_bytes'] is None and got['oom_kills'] is None and got['peak_bytes'] == 20


def test_memory_v2_limit_of_ancestor(roots):
    _v2(roots)
    paths = _cgroup.of_pid(42)
    cg = paths['unified']
    _write(roots[1] + '/lab/memory.max', '536870912\n')
    _write(cg + '/memory.max', 'max\n')
    _write(cg + '/memory.current', '123\n')
    _write(cg + '/memory.peak', '456\n')
    _write(cg + '/memory.events', 'low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n')
    assert _cgroup.memory(paths) == {'version': 2, 'path': cg, 'limit_bytes': 536870912,
                                     'usage_bytes': 123, 'peak_bytes': 456, 'oom_kills': 1}


def test_memory_v2_no_peak_file(roots):
    _v2(roots)
    paths = _cgroup.of_pid(42)
    _write(paths['unified'] + '/memory.max', '1048576\n')
    _write(paths['unified'] + '/memory.current', '5\n')
    got = _cgroup.memory(paths)
    assert got['limit_bytes'] == 1048576 and got['peak_bytes'] is None and got['oom_kills'] is None


def test_memory_without_memory_cgroup():
    assert _cgroup.memory({'cpu': '/sys/fs/cgroup/cpu'}) == {}
    assert _cgroup.memory({}) == {}


def test_cpu_usage_v1_and_v2(roots):
    _v1(roots)
    paths = _cgroup.of_pid(42)
    _write(paths['cpuacct'] + '/cpuacct.usage', '123456789\n')
    assert _cgroup.cpu_usage_ns(paths) == 123456789
    cg = roots[1] + '/lab/pg2'
    _write(cg + '/cpu.stat', 'usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n')
    assert _cgroup.cpu_usage_ns({'unified': cg}) == 2500000
    assert _cgroup.cpu_usage_ns({'memory': cg}) is None


@pytest.mark.parametrize('paths, why', [
    ('/sys/fs/cgroup/memory', 'mapping'),
    ({'memory': 'sys/fs/cgroup/memory/x'}, 'not absolute'),
    ({'memory': '/sys/fs/cgroup/memory/../../../etc'}, 'not a normal path'),
    ({'memory': '/sys/fs/cgroup//memory'}, 'not a normal path'),
    ({'memory': '/etc/memory'}, 'not under'),
    ({'memory': '/sys/fs/cgroupx/a'}, 'not under'),
    ({'Memory x': '/sys/fs/cgroup/memory/x'}, 'not valid'),
    ({'memory': 5}, 'not absolute'),
])
def test_check_paths_refuses(paths, why):
    assert why in _cgroup.check_paths(paths)


def test_check_paths_accepts():
    assert _cgroup.check_paths({'memory': '/sys/fs/cgroup/memory/a/b', 'cpu': '/sys/fs/cgroup/cpu,cpuacct/x'}) is None
    assert _cgroup.check_paths({}) is None
    assert _cgroup.check_paths({'unified': '/sys/fs/cgroup'}) is None  # v2, the namespace's root


def test_join_writes_every_distinct_cgroup_once(roots):
    _v1(roots)
    paths = _cgroup.of_pid(42)
    for path in set(paths.values()):
        _write(path + '/cgroup.procs', '')
    _cgroup.join(paths, 99)
    for path in set(paths.values()):
        with open(path + '/cgroup.procs') as handle:
            assert handle.read() == '99\n'


def test_join_refuses_link_out_of_root(roots, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'cgroup.procs').write_text('')
    os.symlink(str(outside), roots[1] + '/evil')
    with pytest.raises(ValueError, match='outside'):
        _cgroup.join({'memory': roots[1] + '/evil'}, 99)
    assert (outside / 'cgroup.procs').read_text() == ''


def test_join_refuses_bad_paths_and_missing_cgroup(roots):
    with pytest.raises(ValueError, match='not under'):
        _cgroup.join({'memory': '/tmp/x'}, 1)
    with pytest.raises(OSError, match='no cgroup'):
        _cgroup.join({'memory': roots[1] + '/memory/none'}, 1)
