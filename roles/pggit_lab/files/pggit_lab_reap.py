"""Kill every process that belongs to the pggit lab; print JSON of what died.

A process belongs to the lab when any of these holds:
- it lives in one of the lab's network namespaces (/run/netns/<prefix>*);
- its cwd or executable is under the lab directory;
- its command line mentions the lab directory or one of the --pattern strings
  (the collection's own daemons are named pggit-chaos-*).

This script, its ancestors (the shell and the ansible-playbook that ran it)
and kernel threads are never touched. Matching processes get SIGKILL, and the
scan repeats until none are left or --timeout seconds pass. Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


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


def _lab_netns_inodes(prefix):
    inodes = set()
    try:
        names = os.listdir('/run/netns')
    except OSError:
        return inodes
    for name in names:
        if name.startswith(prefix):
            try:
                inodes.add(os.stat(os.path.join('/run/netns', name)).st_ino)
            except OSError:
                pass
    return inodes


def _under(path, lab_dir):
    return path == lab_dir or path.startswith(lab_dir + '/')


def _why(pid, lab_dir, patterns, netns_inodes):
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
            if _under(os.readlink('/proc/%d/%s' % (pid, link)), lab_dir):
                return link
        except OSError:
            pass
    if lab_dir in text:
        return 'cmdline'
    for pattern in patterns:
        if pattern in text:
            return 'pattern ' + pattern
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lab-dir', required=True)
    parser.add_argument('--netns-prefix', default='pgglab-')
    parser.add_argument('--pattern', action='append', default=[])
    parser.add_argument('--timeout', type=float, default=10.0)
    args = parser.parse_args()

    lab_dir = os.path.realpath(args.lab_dir).rstrip('/')
    if lab_dir in ('', '/'):
        parser.error('--lab-dir must not be /')
    spare = _ancestors(os.getpid())
    killed = {}
    deadline = time.monotonic() + args.timeout
    while True:
        netns_inodes = _lab_netns_inodes(args.netns_prefix)
        found = 0
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in spare:
                continue
            why = _why(pid, lab_dir, args.pattern, netns_inodes)
            if why is None:
                continue
            found += 1
            if pid not in killed:
                comm = _read('/proc/%d/comm' % pid).decode('utf-8', 'replace').strip()
                killed[pid] = '%s (%s)' % (comm, why)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not found:
            break
        if time.monotonic() > deadline:
            json.dump({'killed': killed, 'survivors': found}, sys.stdout)
            return 1
        time.sleep(0.2)
    json.dump({'killed': killed, 'survivors': 0}, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
