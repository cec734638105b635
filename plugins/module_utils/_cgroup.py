# Copyright: pggit.chaos contributors
# MIT License
"""Control groups (v1 and v2) of a process: where they are, what they hold, how to join them.

Read from ``/proc`` and ``/sys/fs/cgroup`` only (no systemd, no libcgroup).
Paths are *absolute cgroup directories*, keyed by controller: on cgroup v1
``{'memory': '/sys/fs/cgroup/memory/<path>', 'cpu': ..., 'cpuacct': ...}``
(combined mounts such as ``cpu,cpuacct`` give every name of the mount the same
directory); on cgroup v2 ``{'unified': '/sys/fs/cgroup/<path>'}``.

The roots are module attributes so that tests can point them at fake trees.
"""
from __future__ import annotations

import errno
import os
import re

PROC = '/proc'
SYS = '/sys/fs/cgroup'

# Limits at or above this are "no limit" (v1 reports PAGE_COUNTER_MAX * page size).
_UNLIMITED = 1 << 60
_KEY_RE = re.compile(r'^[a-z0-9_]+$')


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _int(path):
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == 'max':
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(path, key):
    """The integer after `key` in a "key value" per line file (memory.stat, memory.events, ...)."""
    text = _read(path)
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


def _mounts():
    """[(mount root, mount point, fstype, super options)] of the cgroup mounts."""
    text = _read(os.path.join(PROC, 'self', 'mountinfo')) or ''
    found = []
    for line in text.splitlines():
        fields = line.split()
        if ' - ' not in line or len(fields) < 5:
            continue
        before, after = line.split(' - ', 1)
        after = after.split()
        if len(after) < 3 or after[0] not in ('cgroup', 'cgroup2'):
            continue
        before = before.split()
        point = before[4].replace('\\040', ' ')
        found.append((before[3], point, after[0], set(after[2].split(','))))
    return found


def _join_path(mount_root, mount_point, path):
    """The directory of cgroup `path` (as /proc/<pid>/cgroup says it) under a mount of `mount_root`."""
    if mount_root != '/' and (path == mount_root or path.startswith(mount_root.rstrip('/') + '/')):
        path = path[len(mount_root.rstrip('/')):]
    return os.path.normpath(os.path.join(mount_point, path.lstrip('/')))


def of_pid(pid):
    """Controller -> absolute cgroup directory of process `pid`; {} when it has none we can see.

    On a hybrid host (v1 controllers plus an empty v2 hierarchy) the v1
    controllers are returned; named hierarchies (``name=systemd``) are left out.
    """
    text = _read(os.path.join(PROC, str(int(pid)), 'cgroup'))
    if text is None:
        return {}
    mounts = _mounts()
    v1 = {}
    unified = None
    for line in text.splitlines():
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        hier, names, path = parts
        if hier == '0' and names == '':
            for root, point, fstype, _opts in mounts:
                if fstype == 'cgroup2':
                    unified = _join_path(root, point, path)
                    break
            continue
        wanted = set(n for n in names.split(',') if n and not n.startswith('name='))
        if not wanted:
            continue
        for root, point, fstype, opts in mounts:
            if fstype == 'cgroup' and wanted <= opts:
                for name in wanted:
                    v1[name] = _join_path(root, point, path)
                break
    if v1:
        return v1
    if unified is not None:
        return {'unified': unified}
    return {}


def _memory_dir(paths):
    paths = paths or {}
    if paths.get('memory'):
        return 1, paths['memory']
    if paths.get('unified'):
        return 2, paths['unified']
    return None, None


def _v2_limit(path):
    """The tightest memory.max of path and its ancestors below the cgroup root."""
    root = os.path.normpath(SYS)
    best = None
    here = os.path.normpath(path)
    while here.startswith(root + '/'):
        value = _int(os.path.join(here, 'memory.max'))
        if value is not None and value < _UNLIMITED and (best is None or value < best):
            best = value
        here = os.path.dirname(here)
    return best


def memory(paths):
    """Figures of the memory cgroup in `paths`: version, path, limit_bytes (None = unlimited),
    usage_bytes, peak_bytes and oom_kills (None when the kernel does not say).  {} without one."""
    version, path = _memory_dir(paths)
    if version is None:
        return {}
    if version == 1:
        limit = _int(os.path.join(path, 'memory.limit_in_bytes'))
        hier = _keyed(os.path.join(path, 'memory.stat'), 'hierarchical_memory_limit')
        limits = [v for v in (limit, hier) if v is not None and v < _UNLIMITED]
        return {'version': 1, 'path': path,
                'limit_bytes': min(limits) if limits else None,
                'usage_bytes': _int(os.path.join(path, 'memory.usage_in_bytes')),
                'peak_bytes': _int(os.path.join(path, 'memory.max_usage_in_bytes')),
                'oom_kills': _keyed(os.path.join(path, 'memory.oom_control'), 'oom_kill')}
    return {'version': 2, 'path': path,
            'limit_bytes': _v2_limit(path),
            'usage_bytes': _int(os.path.join(path, 'memory.current')),
            'peak_bytes': _int(os.path.join(path, 'memory.peak')),
            'oom_kills': _keyed(os.path.join(path, 'memory.events'), 'oom_kill')}


def cpu_usage_ns(paths):
    """CPU time used by the cgroup in ns (cpuacct.usage, or cpu.stat usage_usec * 1000); None unknown."""
    paths = paths or {}
    if paths.get('cpuacct'):
        return _int(os.path.join(paths['cpuacct'], 'cpuacct.usage'))
    if paths.get('unified'):
        usec = _keyed(os.path.join(paths['unified'], 'cpu.stat'), 'usage_usec')
        return None if usec is None else usec * 1000
    return None


def check_paths(paths):
    """None when `paths` is a {controller: cgroup directory} we may write to, else why not."""
    if not isinstance(paths, dict):
        return 'cgroups must be a mapping of controller to cgroup directory, got %r' % (paths,)
    root = os.path.normpath(SYS)
    for key, path in paths.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            return 'cgroup controller name %r is not valid' % (key,)
        if not isinstance(path, str) or not path.startswith('/'):
            return 'cgroup path %r of %s is not absolute' % (path, key)
        if '..' in path.split('/') or os.path.normpath(path) != path.rstrip('/') or '\x00' in path:
            return 'cgroup path %r of %s is not a normal path' % (path, key)
        if path != root and not path.startswith(root + '/'):  # the root itself: a v2 server in its namespace's root
            return 'cgroup path %r of %s is not under %s/' % (path, key, root)
    return None


def join(paths, pid):
    """Move process `pid` into every cgroup directory in `paths` (writes cgroup.procs).

    Refuses (ValueError) any path that is not under the cgroup root after
    realpath; OSError from the kernel (no such cgroup, no permission) is raised.
    """
    why = check_paths(paths)
    if why:
        raise ValueError(why)
    root = os.path.realpath(SYS)
    done = set()
    for key in sorted(paths):
        real = os.path.realpath(paths[key])
        if real != root and not real.startswith(root + '/'):
            raise ValueError('cgroup path %r of %s resolves to %s, outside %s/' % (paths[key], key, real, root))
        if real in done:
            continue
        target = os.path.join(real, 'cgroup.procs')
        if not os.path.isfile(target):
            raise OSError(errno.ENOENT, 'no cgroup at %s (for %s)' % (real, key), target)
        with open(target, 'w') as handle:
            handle.write('%d\n' % int(pid))
        done.add(real)
