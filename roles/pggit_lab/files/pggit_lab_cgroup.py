"""The lab hosts' control groups: make them, say what they hold, remove them; print JSON.

Each lab host's PostgreSQL runs in cgroups of its own, named
``pggit-lab-<lab name>-<host>``, made as children of the cgroups that the
calling process (the lab_up play) is in, per controller:

- cgroup v1: the ``memory`` (``memory.limit_in_bytes``), ``cpu`` (and
  ``cpuacct``, whether mounted with cpu or apart) and ``freezer`` hierarchies;
- cgroup v2 (only when no v1 memory hierarchy is mounted): one child of the
  caller's unified cgroup, with ``memory.max``; ``+memory +cpu`` are enabled in
  the caller's ``cgroup.subtree_control`` (the kernel refuses that in a cgroup
  that holds processes and is not the root: the error says so).

Sub-commands:

- ``ensure --name N --memory-limit 512M [--pidfile P] [--dry-run]``: make the
  cgroups and set the limit when they differ; say whether the postmaster of
  ``P`` (postmaster.pid) runs in them (``confined``). lab_up starts PostgreSQL
  from a shell that writes its own pid into every ``procs_files`` first.
- ``status --name N [--pidfile P] [--netns]``: the cgroups of that name found
  anywhere in the cgroup mounts, their freezer state, limit and processes; the
  postmaster's cgroups; with --netns also every process in the caller's network
  namespace (run over SSH on a lab host: that host's processes).
- ``mounts`` / ``exec --mounts JSON -- ARGV``: the cgroup mounts of the caller
  (lab_up, in the root mount namespace), and making them again before running
  ARGV: ``ip netns exec`` gives a lab host a fresh /sys without any cgroup
  mount, so lab_up starts each host's sshd through ``exec`` and the faults run
  over SSH see (and can join) the hosts' cgroups.
- ``thaw --regex R`` / ``remove --regex R [--timeout S]``: every cgroup whose
  name matches R, in every cgroup mount: thaw it (a frozen process cannot die),
  kill every process left in it (they are the lab's own) and rmdir it, deepest
  first. lab_down and pggit_lab_reap.py use these.

Only names matching NAME_RE are ever made; remove only touches directories
under a cgroup mount whose base name matches the regex given, which lab_down
builds from the lab name (lab names hold no dash, so no lab's regex matches
another lab's cgroups). Errors: {"failed": true, "msg": ...} and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import time

PROC = '/proc'
SYS = '/sys/fs/cgroup'
NAME_RE = re.compile(r'^pggit-lab-[a-z0-9]{1,10}-lab-[0-9]$')
V1_WANTED = ('memory', 'cpu', 'cpuacct', 'freezer')
V1_REQUIRED = ('memory', 'cpu', 'freezer')
V2_CONTROLLERS = ('memory', 'cpu')
_UNITS = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}


class CgroupError(Exception):
    pass


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _write(path, text):
    with open(path, 'w') as handle:
        handle.write(text)


def parse_size(text):
    """Bytes of '512M', '512m', '1g', '65536' (binary units); CgroupError naming the option otherwise."""
    match = re.match(r'^\s*([0-9]+)\s*([kKmMgG]?)[bB]?\s*$', str(text))
    value = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if value < (16 << 20):
        raise CgroupError('pggit_lab_memory_limit must be a size of at least 16M such as 512M, got %r' % (text,))
    return value


def mounts():
    """[(mount root, mount point, fstype, super options)] of the cgroup mounts of this process."""
    found = []
    for line in (_read(os.path.join(PROC, 'self', 'mountinfo')) or '').splitlines():
        if ' - ' not in line:
            continue
        before, after = line.split(' - ', 1)
        before, after = before.split(), after.split()
        if len(before) < 5 or len(after) < 3 or after[0] not in ('cgroup', 'cgroup2'):
            continue
        found.append((before[3], before[4].replace('\\040', ' '), after[0], set(after[2].split(','))))
    return found


def _dir(mount_root, mount_point, path):
    if mount_root != '/' and (path == mount_root or path.startswith(mount_root.rstrip('/') + '/')):
        path = path[len(mount_root.rstrip('/')):]
    return os.path.normpath(os.path.join(mount_point, path.lstrip('/')))


def of_pid(pid='self'):
    """(version, {controller: cgroup dir}) of a process: v1 controllers (V1_WANTED) when memory is a v1
    hierarchy, else {'unified': dir} on cgroup v2; (None, {}) when neither is visible."""
    text = _read(os.path.join(PROC, str(pid), 'cgroup'))
    if text is None:
        return None, {}
    found = mounts()
    v1, unified = {}, None
    for line in text.splitlines():
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        hier, names, path = parts
        if hier == '0' and names == '':
            for root, point, fstype, _opts in found:
                if fstype == 'cgroup2':
                    unified = _dir(root, point, path)
                    break
            continue
        wanted = set(n for n in names.split(',') if n in V1_WANTED)
        for root, point, fstype, opts in found:
            if wanted and fstype == 'cgroup' and wanted <= opts:
                for name in wanted:
                    v1[name] = _dir(root, point, path)
                break
    if 'memory' in v1:
        return 1, v1
    if unified is not None:
        return 2, {'unified': unified}
    return None, {}


def targets(name, base=None):
    """(version, {controller: dir}) of the lab cgroups `name`: children of the caller's own cgroups."""
    if not NAME_RE.match(name or ''):
        raise CgroupError('pggit_lab_cgroup_name must match %s, got %r' % (NAME_RE.pattern, name))
    version, own = base if base is not None else of_pid('self')
    if version is None:
        raise CgroupError('no cgroup v1 memory hierarchy and no cgroup v2 mount is visible in %s/self/cgroup' % PROC)
    if version == 1:
        missing = [c for c in V1_REQUIRED if c not in own]
        if missing:
            raise CgroupError('the cgroup v1 controllers %s are not mounted (the lab needs memory, cpu and freezer)'
                              % ', '.join(missing))
    return version, dict((ctrl, os.path.join(path, name)) for ctrl, path in own.items())


def _pid_of(pidfile):
    """The postmaster pid of a postmaster.pid, when that process is alive; else None."""
    text = _read(pidfile) if pidfile else None
    try:
        pid = int((text or '').split('\n', 1)[0].strip())
    except ValueError:
        return None
    return pid if pid > 0 and os.path.exists(os.path.join(PROC, str(pid))) else None


def confined(pid, wanted):
    """Whether process pid runs in every cgroup dir of wanted ({controller: dir})."""
    if pid is None:
        return False
    _version, cgroups = of_pid(pid)
    return all(cgroups.get(ctrl) == path for ctrl, path in wanted.items())


def _limit_file(version):
    return 'memory.limit_in_bytes' if version == 1 else 'memory.max'


def ensure(name, limit, pidfile=None, dry_run=False, base=None):
    version, wanted = targets(name, base)
    limit_bytes = parse_size(limit)
    changed = []
    dirs = sorted(set(wanted.values()))
    for path in dirs:
        if not os.path.isdir(path):
            changed.append('mkdir ' + path)
            if not dry_run:
                if version == 2:
                    _enable_v2(os.path.dirname(path))
                os.mkdir(path, 0o755)
    memory_dir = wanted['memory' if version == 1 else 'unified']
    current = _read(os.path.join(memory_dir, _limit_file(version)))
    if current is None or current.strip() != str(limit_bytes):
        changed.append('%s=%d' % (_limit_file(version), limit_bytes))
        if not dry_run:
            _write(os.path.join(memory_dir, _limit_file(version)), str(limit_bytes))
    pid = _pid_of(pidfile)
    return {'changed': bool(changed), 'actions': changed, 'version': version, 'cgroups': wanted,
            'procs_files': [os.path.join(path, 'cgroup.procs') for path in dirs],
            'memory_limit_bytes': limit_bytes, 'postmaster_pid': pid, 'confined': confined(pid, wanted)}


def _enable_v2(parent):
    """Enable the memory and cpu controllers for the children of the v2 cgroup parent."""
    enabled = set((_read(os.path.join(parent, 'cgroup.subtree_control')) or '').split())
    available = set((_read(os.path.join(parent, 'cgroup.controllers')) or '').split())
    for ctrl in V2_CONTROLLERS:
        if ctrl in enabled:
            continue
        if ctrl not in available:
            raise CgroupError('the cgroup v2 controller %s is not available in %s (cgroup.controllers: %s)'
                              % (ctrl, parent, ' '.join(sorted(available)) or 'none'))
        try:
            _write(os.path.join(parent, 'cgroup.subtree_control'), '+' + ctrl)
        except OSError as exc:
            raise CgroupError('cannot enable the cgroup v2 controller %s for the children of %s: %s%s' % (
                ctrl, parent, exc.strerror,
                ' (cgroup v2 allows no controllers below a cgroup that holds processes: run the lab from a cgroup of '
                'its own, e.g. systemd-run --scope)' if exc.errno == errno.EBUSY else ''))


def find(regex):
    """Every cgroup directory whose base name matches regex, in every cgroup mount: [(fstype, dir)]."""
    pattern = re.compile(regex)
    seen, found = set(), []
    for _root, point, fstype, _opts in mounts():
        real = os.path.realpath(point)
        if real in seen or not real.startswith(os.path.normpath(SYS)):
            continue
        seen.add(real)
        for here, subdirs, _files in os.walk(point):
            keep = []
            for sub in subdirs:
                if pattern.match(sub):
                    found.append((fstype, os.path.join(here, sub)))
                else:
                    keep.append(sub)
            subdirs[:] = keep
    return found


def _subtree(path):
    """path and every cgroup below it, deepest first."""
    below = [here for here, _subdirs, _files in os.walk(path)]
    return sorted(below, key=lambda p: p.count('/'), reverse=True)


def _procs(path):
    pids = []
    for word in (_read(os.path.join(path, 'cgroup.procs')) or '').split():
        try:
            pids.append(int(word))
        except ValueError:
            pass
    return pids


def freezer_state(path):
    """'THAWED', 'FROZEN' or 'FREEZING' (v1 freezer.state, v2 cgroup.freeze/events); None without a freezer."""
    state = _read(os.path.join(path, 'freezer.state'))
    if state is not None:
        return state.strip()
    freeze = _read(os.path.join(path, 'cgroup.freeze'))
    if freeze is None:
        return None
    if freeze.strip() == '0':
        return 'THAWED'
    events = _read(os.path.join(path, 'cgroup.events')) or ''
    return 'FROZEN' if re.search(r'^frozen 1$', events, re.M) else 'FREEZING'


def thaw(paths):
    """Thaw every frozen cgroup in paths and below; the list of those thawed."""
    thawed = []
    for top in paths:
        for path in _subtree(top):
            state = freezer_state(path)
            if state in (None, 'THAWED'):
                continue
            try:
                if os.path.exists(os.path.join(path, 'freezer.state')):
                    _write(os.path.join(path, 'freezer.state'), 'THAWED')
                else:
                    _write(os.path.join(path, 'cgroup.freeze'), '0')
                thawed.append(path)
            except OSError:
                pass
    return thawed


def _comm(pid):
    return (_read(os.path.join(PROC, str(pid), 'comm')) or '?').strip()


def remove(regex, timeout=10.0, spare=()):
    """Thaw, empty (SIGKILL) and rmdir every cgroup matching regex. {'removed', 'killed', 'thawed', 'left'}."""
    tops = [path for _fstype, path in find(regex)]
    thawed = thaw(tops)
    killed = {}
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for top in tops:
            for path in _subtree(top):
                for pid in _procs(path):
                    if pid in spare:
                        continue
                    busy = True
                    killed.setdefault(pid, _comm(pid))
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        if not busy or time.monotonic() > deadline:
            break
        thaw(tops)  # a process moved in meanwhile may have been frozen again
        time.sleep(0.1)
    removed, left = [], []
    for top in tops:
        for path in _subtree(top):
            for _attempt in range(20):
                try:
                    os.rmdir(path)
                    removed.append(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while the last killed processes finish exiting
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline + 5:
                        left.append('%s (%s)' % (path, exc.strerror))
                        break
                    time.sleep(0.1)
            else:
                left.append('%s (busy)' % path)
    return {'removed': removed, 'killed': killed, 'thawed': thawed, 'left': left}


def _process(pid):
    stat = _read(os.path.join(PROC, str(pid), 'stat')) or ''
    try:
        state = stat[stat.rindex(')') + 2:].split()[0]
    except (ValueError, IndexError):
        return None
    cmdline = (_read(os.path.join(PROC, str(pid), 'cmdline')) or '').replace('\0', ' ').strip()
    return {'pid': pid, 'comm': _comm(pid), 'state': state, 'cmdline': cmdline}


def _netns_processes():
    """Every process in the caller's network namespace, but the caller itself and its ancestors."""
    try:
        own = os.stat(os.path.join(PROC, 'self', 'ns', 'net')).st_ino
    except OSError:
        return []
    spare = _spare()
    found = []
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) in spare:
            continue
        try:
            if os.stat(os.path.join(PROC, entry, 'ns', 'net')).st_ino != own:
                continue
        except OSError:
            continue
        info = _process(int(entry))
        if info and info['cmdline']:
            found.append(info)
    return found


def status(name, pidfile=None, netns=False):
    """What the cgroups `name` are and hold, wherever they are, and where the postmaster runs."""
    if not NAME_RE.match(name or ''):
        raise CgroupError('pggit_lab_cgroup_name must match %s, got %r' % (NAME_RE.pattern, name))
    cgroups = []
    for fstype, path in find('^%s$' % re.escape(name)):
        limit = None
        for limit_name in ('memory.limit_in_bytes', 'memory.max'):
            text = _read(os.path.join(path, limit_name))
            if text is not None:
                limit = text.strip()
        cgroups.append({'path': path, 'fstype': fstype, 'freezer': freezer_state(path), 'memory_limit': limit,
                        'processes': [p for p in (_process(pid) for pid in _procs(path)) if p]})
    pid = _pid_of(pidfile)
    version, pm_cgroups = of_pid(pid) if pid else (None, {})
    in_own = bool(pm_cgroups) and all(os.path.basename(pm_cgroups[c]) == name
                                      for c in (V1_REQUIRED if version == 1 else ('unified',)) if c in pm_cgroups)
    result = {'name': name, 'cgroups': cgroups, 'postmaster_pid': pid, 'postmaster_cgroups': pm_cgroups,
              'postmaster_confined': in_own,
              'freezer_states': sorted(set(c['freezer'] for c in cgroups if c['freezer'] is not None))}
    if netns:
        result['netns_processes'] = _netns_processes()
    result['problems'] = baseline_problems(result, pidfile)
    return result


def baseline_problems(result, pidfile=None):
    """What keeps a lab host from its baseline, as sentences (empty: at baseline): the postmaster down or outside
    its cgroups, a cgroup missing or not THAWED, a stress-ng process, a stopped postgres process."""
    problems = []
    if pidfile and result['postmaster_pid'] is None:
        problems.append('PostgreSQL is not running (no live postmaster in %s)' % pidfile)
    elif pidfile and not result['postmaster_confined']:
        problems.append('the postmaster %s runs in %s, not in its cgroups %s' % (
            result['postmaster_pid'], result['postmaster_cgroups'], result['name']))
    if not result['cgroups']:
        problems.append('no cgroup named %s' % result['name'])
    for group in result['cgroups']:
        if group['freezer'] not in (None, 'THAWED'):
            problems.append('the cgroup %s is %s' % (group['path'], group['freezer']))
    processes = dict((p['pid'], p) for group in result['cgroups'] for p in group['processes'])
    processes.update((p['pid'], p) for p in result.get('netns_processes', []))
    for pid in sorted(processes):
        proc = processes[pid]
        words = proc['cmdline'].split()
        program = os.path.basename(words[0]) if words else proc['comm']
        if proc['comm'].startswith('stress-ng') or program.startswith('stress-ng'):
            problems.append('a stress-ng process is left: %d %s' % (pid, proc['cmdline']))
        elif proc['state'] in ('T', 't') and (proc['comm'] == 'postgres' or program == 'postgres' or
                                              proc['cmdline'].startswith('postgres:')):
            problems.append('the postgres process %d is stopped (state %s): %s' % (pid, proc['state'],
                                                                                   proc['cmdline']))
    return problems


def mount_spec():
    """The cgroup mounts this process sees under SYS, to be made again in a lab host's own mount namespace:
    {'root': 'tmpfs'|'cgroup2'|None, 'mounts': [[fstype, point, options]], 'links': [[name, target]]}."""
    root_fstype, found = None, []
    for line in (_read(os.path.join(PROC, 'self', 'mountinfo')) or '').splitlines():
        if ' - ' not in line:
            continue
        before, after = line.split(' - ', 1)
        before, after = before.split(), after.split()
        if len(before) < 5 or len(after) < 3:
            continue
        point = before[4].replace('\\040', ' ')
        if point == SYS:
            root_fstype = after[0]
        if after[0] in ('cgroup', 'cgroup2') and (point == SYS or point.startswith(SYS + '/')):
            options = [o for o in after[2].split(',') if o not in ('rw', 'ro') and not o.startswith('release_agent=')]
            found.append([after[0], point, ','.join(options)])
    links = []
    if root_fstype == 'tmpfs':
        for name in sorted(os.listdir(SYS)):
            if os.path.islink(os.path.join(SYS, name)):
                links.append([name, os.readlink(os.path.join(SYS, name))])
    return {'root': root_fstype, 'mounts': found, 'links': links}


def mount_again(spec, run=None):
    """Make the cgroup mounts of spec (from mount_spec) here. `ip netns exec` gives a lab host a fresh /sys
    without them; sshd started after this lets the faults run over SSH see and join the hosts' cgroups
    (mounting a v1 hierarchy with the same controllers attaches the same hierarchy)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    run = run or (lambda argv: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL))
    done = []
    if any(point == SYS for _fstype, point, _opts in spec['mounts']):
        pass  # cgroup v2 mounted on SYS itself: mounted below, no tmpfs under it
    elif spec.get('root') == 'tmpfs':
        run(['mount', '-t', 'tmpfs', '-o', 'mode=755,nosuid,nodev,noexec', 'tmpfs', SYS])
        done.append(SYS)
    for fstype, point, options in spec['mounts']:
        if not (point == SYS or point.startswith(SYS + '/')) or '..' in point.split('/'):
            raise CgroupError('refusing to mount a cgroup on %r: not under %s' % (point, SYS))
        if not os.path.isdir(point):
            os.makedirs(point)
        try:
            run(['mount', '-t', fstype] + (['-o', options] if options else []) + [fstype, point])
        except Exception as exc:  # pylint: disable=broad-except
            # the lab needs its own controllers (and v2's root); a hierarchy it does not use may stay missing
            if fstype == 'cgroup2' and point != SYS or not set(options.split(',')) & set(V1_WANTED):
                sys.stderr.write('pggit_lab_cgroup: not mounted %s on %s: %s\n' % (fstype, point, exc))
                continue
            raise CgroupError('cannot mount the %s hierarchy %s on %s: %s' % (fstype, options, point, exc))
        done.append(point)
    for name, target in spec.get('links', []):
        path = os.path.join(SYS, name)
        if '/' not in name and not os.path.lexists(path):
            os.symlink(target, path)
    return done


def _spare():
    spare, pid = set(), os.getpid()
    while pid > 0 and pid not in spare:
        spare.add(pid)
        stat = _read(os.path.join(PROC, str(pid), 'stat')) or ''
        try:
            pid = int(stat[stat.rindex(')') + 2:].split()[1])
        except (ValueError, IndexError):
            break
    return spare


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    one = sub.add_parser('ensure')
    one.add_argument('--name', required=True)
    one.add_argument('--memory-limit', required=True)
    one.add_argument('--pidfile')
    one.add_argument('--dry-run', action='store_true')
    two = sub.add_parser('status')
    two.add_argument('--name', required=True)
    two.add_argument('--pidfile')
    two.add_argument('--netns', action='store_true')
    for cmd in ('thaw', 'remove'):
        three = sub.add_parser(cmd)
        three.add_argument('--regex', required=True)
        three.add_argument('--timeout', type=float, default=10.0)
    sub.add_parser('mounts')
    four = sub.add_parser('exec')
    four.add_argument('--mounts', required=True, help='JSON from the mounts sub-command')
    four.add_argument('argv', nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == 'exec':
            mount_again(json.loads(args.mounts))
            command = args.argv[1:] if args.argv[:1] == ['--'] else args.argv
            if not command:
                raise CgroupError('exec needs a command after --')
            os.execvp(command[0], command)
        if args.command == 'mounts':
            result = mount_spec()
        elif args.command == 'ensure':
            result = ensure(args.name, args.memory_limit, args.pidfile, args.dry_run)
        elif args.command == 'status':
            result = status(args.name, args.pidfile, args.netns)
        else:
            if not args.regex.startswith('^pggit-lab-'):
                raise CgroupError('--regex must start with ^pggit-lab- (the lab cgroups only), got %r' % (args.regex,))
            try:
                re.compile(args.regex)
            except re.error as exc:
                raise CgroupError('--regex %r: %s' % (args.regex, exc))
            if args.command == 'thaw':
                thawed = thaw([path for _fstype, path in find(args.regex)])
                result = {'changed': bool(thawed), 'thawed': thawed}
            else:
                result = remove(args.regex, args.timeout, _spare())
                result['changed'] = bool(result['removed'] or result['killed'])
                if result['left']:
                    json.dump(dict(result, failed=True, msg='cgroups left: %s' % ', '.join(result['left'])),
                              sys.stdout)
                    return 1
    except (CgroupError, OSError) as exc:
        json.dump({'failed': True, 'msg': str(exc)}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
