# Copyright: pggit.chaos contributors
# MIT License
"""Host loss: freeze (or kill) every process of this host's PostgreSQL and of the program that manages it.

- **freeze**: the freezer cgroups of the postmaster and of its manager (Patroni,
  found as the postmaster's parent with :func:`_server.parent_manager`) are
  frozen (v1 ``freezer.state`` FROZEN, v2 ``cgroup.freeze`` 1): a hung host.
  (The manager is the postmaster's parent, or the one manager program in the
  postmaster's freezer cgroup: Patroni 4 double-forks the postmaster.)
  Refused, before anything is recorded, for a cgroup that holds a process
  that is neither in the postmaster's tree nor in the manager's (named by pid
  and command line), for the root cgroup, and for a cgroup that holds (at or
  above) this module or the TTL reaper: the reaper must never sit inside what
  it froze.  The undo, ``cgroup_thaw``, thaws exactly those paths.
- **kill**: SIGKILL of the manager and of the postmaster's tree: a power cut.
  The undo, ``manager_start``, starts the manager again the way it ran (its
  argv, as its user, in its cgroups, from its folder, with its environment,
  kept in the record's secret side file), or ``systemctl start`` of its unit;
  a server without a manager gets ``pg_start`` (see ``_server.start_step``).

Standard library only: the reaper imports this file through ``_steps``.
"""
from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError

FREEZE_WAIT_S = 5.0
THAW_WAIT_S = 5.0
KILL_WAIT_S = 5.0
# A started manager must still run this long after its exec to count as started.
MANAGER_SETTLE_S = 2.0
MANAGER_SERVER_WAIT_MAX = 30
# A killed postmaster's parent (PID 1 when the manager died too) reaps it in its own time.
ZOMBIE_WAIT_S = 20
ARGV_MAX = 64
ARG_MAX_LEN = 4096
# The states of a frozen task (v1 freezer: D; a stopped task caught by it: T or t).
FROZEN_TASK_STATES = ('D', 'T', 't')
# Never a leading '-': systemctl would read the unit as an option.
_UNIT_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9@._:\\-]*\.service$')
_USER_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_.-]{0,31}$')


# -- processes ---------------------------------------------------------------------------
def _children():
    """{ppid: [pid]} of every live process."""
    found = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        fields = _steps._stat_fields(int(entry))  # pylint: disable=protected-access
        if fields is None or fields[0] in ('Z', 'X'):
            continue
        found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def tree(pid, children=None):
    """pid and every live descendant of it (a set)."""
    children = _children() if children is None else children
    seen, todo = set(), [int(pid)]
    while todo:
        here = todo.pop()
        if here in seen:
            continue
        seen.add(here)
        todo.extend(children.get(here, []))
    return seen


def argv_of(pid):
    """The argv of a process (/proc/<pid>/cmdline split at NUL), or []."""
    try:
        with open('/proc/%d/cmdline' % int(pid), 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError, ValueError):
        return []
    return [part.decode('utf-8', 'replace') for part in raw.split(b'\0')[:-1]] if raw.endswith(b'\0') else \
        [part.decode('utf-8', 'replace') for part in raw.split(b'\0')]


def proc_uid(pid):
    return _steps.proc_real_uid(pid)


# Options of a Python interpreter that take no argument: skipped to find its script (``python3 -S /x/patroni conf``).
PYTHON_FLAGS = ('-B', '-E', '-I', '-O', '-OO', '-P', '-R', '-S', '-b', '-bb', '-d', '-q', '-s', '-u', '-v')


def manager_name(argv):
    """_server.manager_of for an argv whose Python interpreter has options (``/usr/bin/python3 -S /x/patroni conf``)."""
    argv = list(argv or [])
    if argv and os.path.basename(argv[0]).startswith('python'):
        argv = argv[:1] + [word for word in argv[1:] if word not in PYTHON_FLAGS]
    return _server.manager_of(argv)


def manager_pid(postmaster):
    """The pid of the program that manages the postmaster, or None.

    Its parent when that is a manager (_server.parent_manager); else the one
    manager (by its argv, see manager_name) among the processes of the
    postmaster's own freezer cgroup outside the postmaster's tree: Patroni 4
    double-forks the postmaster (its parent is PID 1) but runs in the same
    cgroup (a systemd unit, the lab host's cgroups).  A root cgroup is never
    searched (it holds every host's programs)."""
    if _server.parent_manager(postmaster) is not None:
        fields = _steps._stat_fields(postmaster)  # pylint: disable=protected-access
        return int(fields[1]) if fields else None
    where = freezer_of(postmaster)
    if where is None or is_root_cgroup(*where):
        return None
    children = _children()
    ours = tree(postmaster, children)
    found = [pid for pid in cgroup_pids(where[1]) if pid not in ours and manager_name(argv_of(pid))]
    # Keep the outermost: a manager's own helpers (a forked worker of the same program) are in its tree.
    top = [pid for pid in found if not any(other != pid and pid in tree(other, children) for other in found)]
    if len(top) > 1:
        shown = '; '.join('%s (%s)' % (p, _steps.proc_cmdline(p)[:80]) for p in top)
        raise ChaosError('the cgroup %s of the postmaster (pid %s) holds several programs that manage PostgreSQL: %s; cannot tell '
                         'which one runs this server' % (where[1], postmaster, shown))
    return top[0] if top else None


# Managers that supervise any program, not just PostgreSQL: their other children are not ours (frozen or orphaned by a kill).
GENERIC_SUPERVISORS = ('supervisord', 'runsv', 's6-supervise')


def generic_supervisor(pid):
    """True when pid is a general process supervisor (supervisord, runsv...) rather than a PostgreSQL HA manager."""
    argv = argv_of(pid)
    if argv and os.path.basename(argv[0]).startswith('python'):
        argv = argv[:1] + [word for word in argv[1:] if word not in PYTHON_FLAGS]
    names = [os.path.basename(word.split(' ', 1)[0].rstrip(':')).lower() for word in argv[:2] if word]
    return any(name == mark or name.startswith(mark + '-') or name.startswith(mark + '.') for name in names for mark in GENERIC_SUPERVISORS)


def foreign_children(postmaster, manager, children=None):
    """Processes a general supervisor runs besides the postmaster's tree (a kill would orphan them): [pid]."""
    if not manager or not generic_supervisor(manager):
        return []
    children = _children() if children is None else children
    return sorted(tree(manager, children) - {manager} - tree(postmaster, children))


def member(pid, role):
    return {'pid': pid, 'starttime': _steps.proc_starttime(pid), 'cmd': _steps.proc_cmdline(pid)[:200], 'role': role}


# -- cgroups -----------------------------------------------------------------------------
def freezer_of(pid):
    """(version, path) of the freezer cgroup of pid: v1 'freezer', else v2 'unified'; None when it has none."""
    paths = _cgroup.of_pid(pid)
    if paths.get('freezer'):
        return 1, paths['freezer']
    if paths.get('unified'):
        return 2, paths['unified']
    return None


def state_file(version):
    return 'freezer.state' if version == 1 else 'cgroup.freeze'


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


def freezer_state(version, path):
    """'THAWED', 'FROZEN' or 'FREEZING'; None when the cgroup (or its freezer) is gone."""
    if version == 1:
        return _read(os.path.join(path, 'freezer.state'))
    want = _read(os.path.join(path, 'cgroup.freeze'))
    if want is None:
        return None
    events = _read(os.path.join(path, 'cgroup.events')) or ''
    frozen = any(line.split() == ['frozen', '1'] for line in events.splitlines())
    if frozen:
        return 'FROZEN'
    return 'FREEZING' if want == '1' else 'THAWED'


def inside(path, outer):
    """True when cgroup path is outer or below it."""
    path, outer = os.path.normpath(path), os.path.normpath(outer)
    return path == outer or path.startswith(outer.rstrip('/') + '/')


def path_problem(version, path):
    """None when path is a freezer cgroup we may freeze or thaw (not the root, under /sys/fs/cgroup after realpath)."""
    if version not in (1, 2):
        return 'version must be 1 or 2 (cgroup v1 freezer or v2), got %r' % (version,)
    problem = _cgroup.check_paths({'freezer': path}) if isinstance(path, str) else 'cgroup path must be a string, got %r' % (path,)
    if problem:
        return problem
    root = os.path.realpath(_cgroup.SYS)
    real = os.path.realpath(path)
    if real == root or not real.startswith(root + '/'):
        return 'cgroup %s is not below %s once links are resolved (%s)' % (path, _cgroup.SYS, real)
    parts = os.path.normpath(path).split('/')
    depth = len(os.path.normpath(_cgroup.SYS).split('/'))
    if version == 1 and (len(parts) <= depth or parts[depth] != 'freezer'):
        return 'cgroup %s is not in the v1 freezer hierarchy (%s/freezer/...)' % (path, _cgroup.SYS)
    if version == 1 and os.path.normpath(path) == os.path.join(os.path.normpath(_cgroup.SYS), 'freezer'):
        return 'cgroup %s is the root of the freezer hierarchy: never frozen' % path
    return None


def is_root_cgroup(version, path):
    """True for a hierarchy's root (no freezer file there: the kernel never freezes a root)."""
    mount_points = [point for _root, point, fstype, opts in _cgroup._mounts()  # pylint: disable=protected-access
                    if (version == 1 and fstype == 'cgroup' and 'freezer' in opts) or (version == 2 and fstype == 'cgroup2')]
    if os.path.normpath(path) in [os.path.normpath(p) for p in mount_points]:
        return True
    return not os.path.isfile(os.path.join(path, state_file(version)))


def cgroup_pids(path):
    """Pids in the cgroup path and every cgroup below it (links never followed)."""
    found = []
    for folder, dirs, files in os.walk(path, followlinks=False):
        if 'cgroup.procs' in files:
            text = _read(os.path.join(folder, 'cgroup.procs')) or ''
            found.extend(int(line) for line in text.split() if line.isdigit())
        dirs.sort()
    return sorted(set(found))


def freeze_plan(postmaster, manager, own_pids):
    """What a freeze would freeze: {version, paths, members} (members: every process in the paths, each in an allowed tree).

    Raises ChaosError naming the pid and command of a foreign process, the root
    cgroup, or the cgroup that holds one of ``own_pids`` (this module, the reaper)."""
    roots = [('postmaster', postmaster)] + ([('manager', manager)] if manager else [])
    found = {}
    for role, pid in roots:
        where = freezer_of(pid)
        if where is None:
            raise ChaosError('the %s (pid %s, %s) is in no freezer cgroup we can see (no v1 freezer, no v2 cgroup): run it in a '
                             'cgroup of its own (a systemd unit) to freeze it' % (role, pid, _steps.proc_cmdline(pid)[:120]))
        version, path = where
        if is_root_cgroup(version, path):
            raise ChaosError('the %s (pid %s, %s) runs in the root cgroup %s: freezing it would freeze the whole host. Run '
                             'PostgreSQL (and its manager) in a cgroup of its own (a systemd unit)' % (
                                 role, pid, _steps.proc_cmdline(pid)[:120], path))
        problem = path_problem(version, path)
        if problem:
            raise ChaosError('the %s (pid %s): %s' % (role, pid, problem))
        found.setdefault((version, path), []).append(role)
    versions = set(v for v, _p in found)
    if len(versions) != 1:
        raise ChaosError('the postmaster and its manager are in freezers of different cgroup versions: %s' % sorted(found))
    version = versions.pop()
    paths = sorted(p for _v, p in found)
    # A path inside another is frozen with it: keep the outer one only.
    paths = [p for p in paths if not any(o != p and inside(p, o) for o in paths)]
    for pid in own_pids:
        if not pid:
            continue
        mine = freezer_of(pid)
        for path in paths:
            if mine is not None and inside(mine[1], path):
                raise ChaosError('cgroup %s holds pid %s (%s), which must stay awake (this module or the TTL reaper that thaws the '
                                 'cgroup): run the task from outside the server\'s cgroups (over SSH, not from inside its unit)'
                                 % (path, pid, _steps.proc_cmdline(pid)[:120]))
    for path in paths:
        now = freezer_state(version, path)
        if now != 'THAWED':
            # Frozen (or freezing) by someone else, or by another fault: our thaw would undo their freeze.
            raise ChaosError('cgroup %s is %s already (not by this fault): it is not frozen again, and never thawed by us'
                             % (path, now or 'unreadable'))
    children = _children()
    allowed = tree(postmaster, children)
    if manager:
        allowed |= {manager} if generic_supervisor(manager) else tree(manager, children)
    members = []
    for path in paths:
        for pid in cgroup_pids(path):
            if pid not in allowed:
                if _steps.proc_starttime(pid) is None:
                    continue  # gone meanwhile (or a zombie)
                raise ChaosError('cgroup %s holds pid %s (%s), which is neither the postmaster\'s nor its manager\'s: freezing the '
                                 'cgroup would freeze it too. Move it out, or run PostgreSQL in a cgroup of its own'
                                 % (path, pid, _steps.proc_cmdline(pid)[:120] or '?'))
            role = 'manager' if pid == manager else 'postmaster' if pid == postmaster else 'child'
            members.append(member(pid, role))
    return {'version': version, 'paths': paths, 'members': members}


def _write(path, text):
    with open(path, 'w') as handle:
        handle.write(text)


def freeze(version, paths, members, wait=FREEZE_WAIT_S):
    """Freeze every path, then prove it: the freezer says FROZEN and every member's task state is frozen (v1: D/T)."""
    for path in paths:
        _write(os.path.join(path, state_file(version)), 'FROZEN' if version == 1 else '1')
    deadline = time.time() + wait
    while True:
        states = dict((path, freezer_state(version, path)) for path in paths)
        if all(s == 'FROZEN' for s in states.values()) or time.time() >= deadline:
            break
        time.sleep(0.01)
    if not all(s == 'FROZEN' for s in states.values()):
        raise ChaosError('the freezer did not freeze within %gs: %s' % (wait, ', '.join('%s %s' % i for i in sorted(states.items()))))
    awake = []
    for proc in members:
        if not _steps.same_process(proc['pid'], proc['starttime']):
            continue
        state = _steps.proc_state(proc['pid'])
        if version == 1 and state not in FROZEN_TASK_STATES:
            awake.append('%s (%s) is %s' % (proc['pid'], proc['cmd'][:60], state))
    if awake:
        raise ChaosError('the freezer says FROZEN but these processes are not frozen: %s' % '; '.join(awake))
    return states


def thaw(version, paths, wait=THAW_WAIT_S):
    """Thaw every path that is not THAWED; a cgroup that is gone is nothing to thaw.  Confirms; True when it changed one."""
    changed = False
    for path in paths:
        now = freezer_state(version, path)
        if now is None or now == 'THAWED':
            continue
        _write(os.path.join(os.path.realpath(path), state_file(version)), 'THAWED' if version == 1 else '0')
        changed = True
    deadline = time.time() + wait
    while True:
        left = [p for p in paths if freezer_state(version, p) not in (None, 'THAWED')]
        if not left or time.time() >= deadline:
            break
        time.sleep(0.01)
    if left:
        raise UndoError('still frozen after the thaw: %s' % ', '.join('%s (%s)' % (p, freezer_state(version, p)) for p in left))
    return changed


def check_thaw_step(step):
    """cgroup_thaw's check: {paths: [freezer cgroups below /sys/fs/cgroup, never a root], version: 1|2}."""
    paths = step.get('paths')
    if not isinstance(paths, list) or not paths or len(paths) > 16:
        return 'paths must be a list of 1 to 16 freezer cgroup folders, got %r' % (paths,)
    for path in paths:
        problem = path_problem(step.get('version'), path)
        if problem:
            return problem
    return None


# -- kill ---------------------------------------------------------------------------------
def kill_targets(postmaster, manager):
    """[member] of the manager (itself, not its other children) and the postmaster's tree, manager first."""
    children = _children()
    found = [member(manager, 'manager')] if manager else []
    found.append(member(postmaster, 'postmaster'))
    found += [member(pid, 'child') for pid in sorted(tree(postmaster, children) - {postmaster})]
    return [t for t in found if t['starttime'] is not None]


def kill(targets, wait=KILL_WAIT_S):
    """SIGKILL each target (pid and start time checked), manager first; confirm every one is gone.  Returns the pids killed."""
    killed = []
    for proc in targets:
        if not _steps.same_process(proc['pid'], proc['starttime']):
            continue
        try:
            os.kill(proc['pid'], signal.SIGKILL)
            killed.append(proc['pid'])
        except OSError as exc:
            if _steps.same_process(proc['pid'], proc['starttime']):
                raise ChaosError('kill -KILL %s (%s) failed: %s' % (proc['pid'], proc['cmd'][:80], exc))
    deadline = time.time() + wait
    while True:
        alive = [p for p in targets if _steps.same_process(p['pid'], p['starttime'])]
        if not alive or time.time() >= deadline:
            break
        time.sleep(0.02)
    if alive:
        raise ChaosError('still alive %gs after SIGKILL: %s' % (wait, ', '.join('%s (%s)' % (p['pid'], p['cmd'][:60]) for p in alive)))
    return killed


# -- manager_start ---------------------------------------------------------------------------
def _plain(value):
    return isinstance(value, str) and os.path.isabs(value) and '..' not in value.split('/') and '\x00' not in value


def manager_step(pid, pgdata, wait_s=60):
    """The manager_start step that starts the manager pid again (recorded before it is killed), and its environment (secret)."""
    unit = _server.systemd_unit(pid)
    if unit:
        return {'type': 'manager_start', 'method': 'systemd', 'unit': unit, 'pgdata': pgdata}, None
    uid = proc_uid(pid)
    try:
        user = pwd.getpwuid(uid).pw_name
    except (KeyError, TypeError):
        raise ChaosError('the manager (pid %s) runs as uid %s, which has no name on this host: it could not be started again' % (pid, uid))
    try:
        cwd = os.readlink('/proc/%d/cwd' % pid)
    except OSError:
        cwd = None
    from ansible_collections.pggit.chaos.plugins.module_utils import _restart  # pylint: disable=import-outside-toplevel
    step = {'type': 'manager_start', 'method': 'exec', 'argv': argv_of(pid), 'user': user, 'cwd': cwd if _plain(cwd) else None,
            'cgroups': _cgroup.of_pid(pid), 'log': _server.stdout_log(pid), 'pgdata': pgdata, 'wait_s': int(wait_s),
            'manager': manager_name(argv_of(pid)), 'netns': netns_of(pid)}
    mine = netns_of(os.getpid())
    if step['netns'] != mine:
        raise ChaosError('the manager (pid %s) runs in another network namespace (%s) than this task (%s): it could not be started '
                         'again where it ran. Run the task inside the host\'s namespace (over SSH to the host)' % (pid, step['netns'], mine))
    return step, _restart.environ_of(pid)


def netns_of(pid):
    """The network namespace of a process ('net:[4026531840]'), or None when it cannot be read."""
    try:
        return os.readlink('/proc/%d/ns/net' % int(pid))
    except (OSError, ValueError):
        return None


def program_problem(argv, uid):
    """None when the program of argv (and its script, for an interpreter) may be run as uid, else why not.

    Regular files, not writable by group or others, in folders (every one up to /)
    owned by root (or by uid when uid is not root) and not writable by group or
    others: root runs only a root-owned program under a root-only path."""
    files = [argv[0]]
    if _server.manager_of(argv[:1]) is None:
        # An interpreter (python3, sh, perl, env...) runs the manager: its script is checked as the program is.  A
        # relative script would be looked up in the folder (or PATH) it is started from: refused.
        words = [word for word in argv[1:] if word not in PYTHON_FLAGS] if os.path.basename(argv[0]).startswith('python') else argv[1:]
        script = words[:1]
        if not script or not os.path.isabs(script[0]):
            return '%s runs %r, not a program named by an absolute path: it is not started' % (argv[0], script[0] if script else None)
        files.append(script[0])
    owners = (0,) if uid == 0 else (0, uid)
    for name in files:
        real = os.path.realpath(name)
        try:
            info = os.stat(real)
        except OSError as exc:
            return '%s: %s' % (name, exc)
        if not stat.S_ISREG(info.st_mode):
            return '%s (%s) is not a regular file' % (name, real)
        if info.st_uid not in owners or info.st_mode & 0o022:
            return '%s (%s) must belong to %s and be writable by its owner only' % (name, real, 'root' if uid == 0 else 'root or the manager\'s user')
        folder = os.path.dirname(real)
        while True:
            info = os.stat(folder)
            if info.st_uid not in owners or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
                return '%s (%s): the folder %s must belong to %s and be writable by its owner only' % (
                    name, real, folder, 'root' if uid == 0 else 'root or the manager\'s user')
            if folder == '/':
                break
            folder = os.path.dirname(folder)
    return None


def check_manager_start(step):
    """manager_start's check: a systemd unit, or the argv of a known manager with its user, folder, cgroups and log."""
    method = step.get('method')
    pgdata = step.get('pgdata')
    if not _plain(pgdata) or os.path.normpath(pgdata) == '/':
        return 'pgdata must be an absolute data directory, got %r' % (pgdata,)
    if method == 'systemd':
        unit = step.get('unit')
        return None if isinstance(unit, str) and _UNIT_RE.match(unit) else 'unit must be a systemd .service name, got %r' % (unit,)
    if method != 'exec':
        return 'method must be exec or systemd, got %r' % (method,)
    argv = step.get('argv')
    if (not isinstance(argv, list) or not 1 <= len(argv) <= ARGV_MAX
            or not all(isinstance(a, str) and '\x00' not in a and len(a) <= ARG_MAX_LEN for a in argv)):
        return 'argv must be a list of 1 to %d strings, got %r' % (ARGV_MAX, argv)
    if not _plain(argv[0]):
        return 'argv[0] must be an absolute path to the manager program, got %r' % (argv[0],)
    if manager_name(argv) is None:
        return 'argv %r is not a program that manages PostgreSQL (%s)' % (' '.join(argv)[:120], ', '.join(_server.MANAGERS))
    user = step.get('user')
    if not isinstance(user, str) or not _USER_RE.match(user):
        return 'user must name the account the manager ran as, got %r' % (user,)
    for key in ('cwd', 'log'):
        if step.get(key) is not None and not _plain(step[key]):
            return '%s must be an absolute path or null, got %r' % (key, step[key])
    wait = step.get('wait_s')
    if not isinstance(wait, int) or isinstance(wait, bool) or not 1 <= wait <= 3600:
        return 'wait_s must be an integer from 1 to 3600, got %r' % (wait,)
    netns = step.get('netns')
    if netns is not None and (not isinstance(netns, str) or not re.match(r'^net:\[\d+\]$', netns)):
        return "netns must be a network namespace as /proc/<pid>/ns/net names it ('net:[<inode>]') or null, got %r" % (netns,)
    cgroups = step.get('cgroups')
    if cgroups:
        return _cgroup.check_paths(cgroups)
    return None


def running_manager(argv, uid):
    """Pid of a live process running exactly argv as uid (the manager already back), else None."""
    for entry in os.listdir('/proc'):
        if entry.isdigit() and argv_of(int(entry)) == argv and proc_uid(int(entry)) == uid and _steps.proc_starttime(int(entry)):
            return int(entry)
    return None


def _spawn(step, account, env, fallback_log=None):
    """Start argv detached (own session), as account, in its cgroups, in its folder, output to its log; the pid.

    The log is opened as the account (a path it may not write is never written as root); when it cannot be,
    the output goes to ``fallback_log`` (opened here, as root, in the state dir)."""
    argv = step['argv']
    spare = None
    if fallback_log:
        from ansible_collections.pggit.chaos.plugins.module_utils import _ledger  # pylint: disable=import-outside-toplevel
        try:
            spare = _ledger.open_private(fallback_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.set_inheritable(spare, True)
        except OSError:
            spare = None
    cgroups = dict((k, v) for k, v in (step.get('cgroups') or {}).items() if os.path.isfile(os.path.join(v, 'cgroup.procs')))
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the child
        code = 127
        try:
            os.close(read_end)
            os.setsid()
            if os.fork():
                os._exit(0)
            if cgroups:
                _cgroup.join(cgroups, os.getpid())
            if os.geteuid() != account.pw_uid:
                os.setgid(account.pw_gid)
                os.initgroups(account.pw_name, account.pw_gid)
                os.setuid(account.pw_uid)
            cwd = step.get('cwd')
            os.chdir(cwd if cwd and os.path.isdir(cwd) else '/')
            null = os.open(os.devnull, os.O_RDWR)
            out = spare if spare is not None else null
            if step.get('log'):
                try:
                    out = os.open(step['log'], os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    pass
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, 65536)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(code)
    os.close(write_end)
    if spare is not None:
        os.close(spare)
    os.waitpid(first, 0)
    data = b''
    while True:
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if not data:
        raise UndoError('the manager could not be started: joining its cgroups %s or becoming %s failed' % (
            ', '.join(sorted(set(cgroups.values()))) or '(none)', account.pw_name))
    return int(data)


def _zombie(pid):
    """True when pid exists only as a zombie (killed, not yet reaped: PostgreSQL's lock file check still sees it)."""
    return bool(pid) and os.path.exists('/proc/%d' % pid) and _steps.proc_starttime(pid) is None


def manager_start(step, ctx):
    """Start the manager again unless it (or a server it runs) is back; confirm it runs.  See the module docs."""
    pgdata = step['pgdata']
    if step['method'] == 'systemd':
        return _steps._start_systemd(step, ctx)  # pylint: disable=protected-access
    argv = step['argv']
    try:
        account = pwd.getpwnam(step['user'])
    except KeyError:
        raise UndoError('user %s does not exist: the manager %s was not started' % (step['user'], argv[0]))
    if running_manager(argv, account.pw_uid):
        return False
    if _server.running(pgdata):
        try:
            back = manager_pid(_server.postmaster_pid(pgdata))
        except ChaosError:
            back = True  # several managers: one of them runs it
        if back:
            return False  # another instance of the manager runs the server already
    if os.geteuid() not in (0, account.pw_uid):
        raise UndoError('starting the manager needs root or its user %s; running as uid %d' % (account.pw_name, os.geteuid()))
    problem = program_problem(argv, account.pw_uid)
    if problem:
        raise UndoError('the manager was not started: %s' % problem)
    here = netns_of(os.getpid())
    if step.get('netns') and here != step['netns']:
        raise UndoError('the manager ran in network namespace %s, this revert runs in %s: it was not started here (run the revert '
                        'over SSH to the host, as the fault was)' % (step['netns'], here))
    env = dict((ctx.get('secret') or {}).get('manager_env') or {}) or {
        'PATH': '/usr/bin:/bin', 'HOME': account.pw_dir or '/', 'USER': account.pw_name, 'LOGNAME': account.pw_name}
    # The old postmaster's children exit once they see it gone; a manager started before would find its lock file busy.
    deadline = time.time() + ZOMBIE_WAIT_S
    while (_server.leftovers(pgdata) or _zombie(_server.postmaster_pid(pgdata))) and time.time() < deadline:
        time.sleep(0.1)
    old = _server.postmaster_pid(pgdata)
    if _zombie(old):
        fields = _steps._stat_fields(old)  # pylint: disable=protected-access
        raise UndoError('the old postmaster (pid %s, named in %s/postmaster.pid) is a zombie its parent (pid %s) has not reaped '
                        'after %ss: PostgreSQL refuses to start while it exists; the manager was not started'
                        % (old, pgdata, fields[1] if fields else '?', ZOMBIE_WAIT_S))
    fallback = os.path.join(ctx['state_dir'], 'manager.log') if ctx.get('state_dir') else None
    pid = _spawn(step, account, env, fallback)
    started = _steps.proc_starttime(pid)
    settle = time.time() + MANAGER_SETTLE_S
    while time.time() < settle:
        if not _steps.same_process(pid, started):
            break
        time.sleep(0.05)
    if not _steps.same_process(pid, started) or argv_of(pid) != argv:
        raise UndoError('the manager exited within %gs of its start: as %s: %s; see its log (%s)' % (
            MANAGER_SETTLE_S, account.pw_name, ' '.join(argv)[:200], ' or '.join(p for p in (step.get('log'), fallback) if p) or 'none'))
    wait = min(step.get('wait_s') or 60, MANAGER_SERVER_WAIT_MAX)
    deadline = time.time() + wait
    while not _server.running(pgdata) and time.time() < deadline and _steps.same_process(pid, started):
        time.sleep(0.2)
    if not _server.running(pgdata):
        ctx.setdefault('notes', []).append('the manager %s (pid %s) was started again; the server in %s is not running yet after %ss: '
                                           'the manager starts it (or rebuilds it) in its own time' % (argv[0], pid, pgdata, wait))
    return True
