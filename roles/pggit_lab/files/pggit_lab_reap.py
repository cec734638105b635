"""Kill every process that belongs to one pggit lab; print JSON of what died.

A process belongs to the lab when any of these holds:
- it lives in one of the lab's network namespaces (/run/netns/<name> with a
  name that matches --netns-regex);
- its cwd or executable is under the lab directory;
- its command line names the lab directory or a path under it (the lab's
  sshd, ssh control masters, and the pggit-chaos daemons of its hosts, which
  run from <lab dir>/hosts/<host>/state/lib).

Nothing else: never a process picked by its name alone, so the pggit-chaos
reapers of real faults, another lab and another checkout's tests are left
alone. Paths match whole: lab dir /x/lab-a does not claim /x/lab-ab.

HA managers go first: each scan kills the lab's Patroni and etcd processes
(program patroni, patronictl or etcd) and waits for them to die before it kills
the rest, so no Patroni restarts a postmaster in between; the postmasters, in
the lab's namespaces and named by their -D path, die in the same scan.

This script, its ancestors (the shell and the ansible-playbook that ran it)
and kernel threads are never touched. Matching processes get SIGKILL, and the
scan repeats until none are left or --timeout seconds pass. Run as root.

With --cgroup-regex (lab_down passes ^pggit-lab-<name>-lab-[0-9]$) the lab
hosts' cgroups are thawed first (a frozen process cannot die), and once the
scan is done, whatever is still in them (they are the lab's own) is killed
and they are removed (pggit_lab_cgroup.remove, next to this file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pggit_lab_cgroup  # noqa: E402  pylint: disable=wrong-import-position


def _read(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except OSError:
        return b''


def _ancestors(pid):
    """The pids of pid and all its ancestors."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        stat = _read('/proc/%d/stat' % pid).decode('utf-8', 'replace')
        try:
            # the comm field may hold spaces and parentheses: split after the last ')'
            pid = int(stat[stat.rindex(')') + 2:].split()[1])
        except (ValueError, IndexError):
            break
    return seen


def _lab_netns_inodes(regex):
    inodes = set()
    try:
        names = os.listdir('/run/netns')
    except OSError:
        return inodes
    for name in names:
        if regex.match(name):
            try:
                inodes.add(os.stat(os.path.join('/run/netns', name)).st_ino)
            except OSError:
                pass
    return inodes


def _under(path, lab_dir):
    return path == lab_dir or path.startswith(lab_dir + '/')


def _names_dir(text, lab_dirs):
    """Whether a command line names a lab dir itself or a path under it (not /x/lab-ab for /x/lab-a)."""
    return any(re.search(r'(?<![A-Za-z0-9._/-])' + re.escape(path) + r'(?![A-Za-z0-9._-])', text)
               for path in lab_dirs)


def _why(pid, lab_dirs, netns_inodes):
    """Why pid belongs to the lab, or None."""
    cmdline = _read('/proc/%d/cmdline' % pid)
    if not cmdline:
        return None  # kernel thread or already gone
    text = cmdline.replace(b'\0', b' ').decode('utf-8', 'replace')
    if netns_inodes:
        try:
            if os.stat('/proc/%d/ns/net' % pid).st_ino in netns_inodes:
                return 'netns'
        except OSError:
            pass
    for link in ('cwd', 'exe'):
        try:
            if any(_under(os.readlink('/proc/%d/%s' % (pid, link)), path) for path in lab_dirs):
                return link
        except OSError:
            pass
    if _names_dir(text, lab_dirs):
        return 'cmdline'
    return None


MANAGER_PROGRAMS = ('patroni', 'patronictl', 'etcd')


def is_manager(comm, cmdline_words):
    """Whether a process is an HA manager (Patroni, etcd): by its comm or the program it runs (a Python
    script such as .venv/bin/patroni runs as `python [-S] .../patroni CONFIG`)."""
    if comm in MANAGER_PROGRAMS:
        return True
    words = [word for word in cmdline_words[:3] if not word.startswith('-')][:2]
    return any(os.path.basename(word) in MANAGER_PROGRAMS for word in words)


def _kill_managers_first(pids, timeout=5.0):
    """SIGKILL the managers among pids and wait (bounded) until they are gone; the pids killed."""
    managers = []
    for pid in pids:
        comm = _read('/proc/%d/comm' % pid).decode('utf-8', 'replace').strip()
        words = _read('/proc/%d/cmdline' % pid).decode('utf-8', 'replace').split('\0')
        if is_manager(comm, words):
            managers.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    left = list(managers)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if os.path.exists('/proc/%d' % pid)
                and not _read('/proc/%d/stat' % pid).rsplit(b')', 1)[-1].strip().startswith(b'Z')]
        if left:
            time.sleep(0.05)
    return managers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lab-dir', required=True)
    parser.add_argument('--netns-regex', required=True, help="the lab's namespaces, e.g. ^pgglab-[0-9]$")
    parser.add_argument('--timeout', type=float, default=10.0)
    parser.add_argument('--cgroup-regex', help="the lab's cgroups, e.g. ^pggit-lab-lab-lab-[0-9]$")
    args = parser.parse_args(argv)

    lab_dirs = {os.path.normpath(args.lab_dir), os.path.realpath(args.lab_dir)}
    if not os.path.isabs(args.lab_dir) or min(path.count('/') for path in lab_dirs) < 2:
        parser.error('--lab-dir must be an absolute path at least two levels deep, got %s' % args.lab_dir)
    try:
        netns_regex = re.compile(args.netns_regex)
    except re.error as exc:
        parser.error('--netns-regex %r: %s' % (args.netns_regex, exc))
    if args.cgroup_regex is not None:
        if not args.cgroup_regex.startswith('^pggit-lab-'):
            parser.error('--cgroup-regex must start with ^pggit-lab- (the lab cgroups only), got %r'
                         % args.cgroup_regex)
        try:
            re.compile(args.cgroup_regex)
        except re.error as exc:
            parser.error('--cgroup-regex %r: %s' % (args.cgroup_regex, exc))
        pggit_lab_cgroup.thaw([path for _fstype, path in pggit_lab_cgroup.find(args.cgroup_regex)])
    spare = _ancestors(os.getpid())
    killed = {}
    deadline = time.monotonic() + args.timeout
    while True:
        netns_inodes = _lab_netns_inodes(netns_regex)
        found = 0
        mine = {}
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in spare:
                continue
            why = _why(pid, lab_dirs, netns_inodes)
            if why is not None:
                mine[pid] = why
        for pid in mine:
            if pid not in killed:
                comm = _read('/proc/%d/comm' % pid).decode('utf-8', 'replace').strip()
                killed[pid] = '%s (%s)' % (comm, mine[pid])
        managers = _kill_managers_first(sorted(mine))
        for pid in sorted(mine):
            found += 1
            if pid in managers:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result = {'killed': killed, 'survivors': found}
    if args.cgroup_regex is not None:
        cgroups = pggit_lab_cgroup.remove(args.cgroup_regex, max(1.0, deadline - time.monotonic()), spare)
        for pid, comm in cgroups['killed'].items():
            killed.setdefault(pid, '%s (cgroup)' % comm)
        result.update(cgroups_removed=cgroups['removed'], cgroups_thawed=cgroups['thawed'],
                      cgroups_left=cgroups['left'])
    json.dump(result, sys.stdout)
    return 1 if found or result.get('cgroups_left') else 0


if __name__ == '__main__':
    sys.exit(main())
