# Copyright: pggit.chaos contributors
# MIT License
"""The PostgreSQL server on this host: where it lives, how it was started, its processes.

Everything here is read from the server itself (``data_directory``,
``pg_stat_activity``) and from ``/proc``: nothing is guessed from paths or
package layouts.  A fault that may stop the server records
:func:`start_step` before it acts, so that the one revert (``state: absent``,
``pggit_chaos_revert``, the TTL reaper) can start it again the way it was
started: ``pg_ctl`` as the data directory's owner, with the options of
``postmaster.opts``, inside the postmaster's cgroups; or the systemd unit when
systemd manages it.  A server another program runs (Patroni, pg_autoctl...:
the postmaster's parent, see :func:`manager_of`) is never started by us: its
step only looks whether it is back.

Files of the data directory belong to the server's owner and are read as
root: only regular files of that owner, never through a link, never
blocking, at most ``_steps.DATA_FILE_MAX`` bytes (``_steps.read_regular``).

Standard library only (plus the cursor the caller passes): the reaper imports
this file through ``_steps``.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError

ROLES = ('postmaster', 'backend', 'walsender', 'walreceiver', 'checkpointer', 'autovacuum', 'archiver')
# pg_stat_activity.backend_type -> role.
BACKEND_TYPES = {
    'client backend': 'backend',
    'walsender': 'walsender',
    'walreceiver': 'walreceiver',
    'checkpointer': 'checkpointer',
    'autovacuum launcher': 'autovacuum',
    'autovacuum worker': 'autovacuum',
    'archiver': 'archiver',
}
# Roles whose processes are connections, so application_name, user and pid filters mean something.
FILTERED_ROLES = ('backend', 'walsender')
# Our own sessions are never signalled: the probe, the revert, the process fault's own look.
OWN_APPLICATIONS = ('pggit-chaos-probe%', 'pggit-chaos-revert%', 'pggit-chaos-process%')
START_WAIT_S = 60
SYSTEMD_RUN = '/run/systemd/system'
_UNIT_RE = re.compile(r'^[A-Za-z0-9@._:\\-]+\.service$')
INFO_SQL = ("SELECT current_setting('data_directory'), current_setting('server_version_num')::int, pg_is_in_recovery()")


# Programs that run PostgreSQL themselves and restart it (or fail over) on their own, by the name of the
# postmaster's parent: such a server is theirs to start, never ours.  Anything else as the parent (PID 1, an init,
# systemd --user or another subreaper that adopted a daemonized pg_ctl server, a shell) is not a manager.
MANAGERS = ('patroni', 'pg_autoctl', 'repmgrd', 'stolon-keeper', 'supervisord', 'runsv', 's6-supervise')
MANAGER_SHOWN = 120


def _read(path):
    with open(path) as handle:
        return handle.read()


def _data_file(pgdata, name):
    """The text of a file of the data directory owned by the directory's owner (see read_regular), or None."""
    try:
        owner = os.stat(pgdata).st_uid
    except (OSError, TypeError, ValueError):
        return None
    data = _steps.read_regular(os.path.join(pgdata, name), _steps.DATA_FILE_MAX, owner)
    return None if data is None else data.decode('utf-8', 'replace')


def postmaster_pid(pgdata):
    """The pid on the first line of <pgdata>/postmaster.pid, or None when there is no such file (or it is not a plain file)."""
    text = _data_file(pgdata, 'postmaster.pid')
    if text is None:
        return None
    first = text.split('\n', 1)[0].strip()
    return int(first) if first.isdigit() else None


def _cwd(pid):
    try:
        return os.path.realpath(os.readlink('/proc/%d/cwd' % pid))
    except (IOError, OSError):
        return None


def works_in(pid, pgdata):
    """True when pid is alive (not a zombie) and is a PostgreSQL process working in pgdata.

    A postmaster works in its data directory (it chdir()s there); a pid reused
    by another program does not.  When /proc/<pid>/cwd cannot be read (not
    root, another user), its command line must at least name postgres."""
    if not pid or _steps.proc_starttime(pid) is None:
        return False
    cwd = _cwd(pid)
    if cwd is not None:
        return cwd == os.path.realpath(pgdata)
    return 'postgres' in _steps.proc_cmdline(pid) or 'postmaster' in _steps.proc_cmdline(pid)


def running(pgdata):
    """True when the postmaster named by <pgdata>/postmaster.pid is alive."""
    return works_in(postmaster_pid(pgdata), pgdata)


def leftovers(pgdata):
    """Pids of live processes working in pgdata (an old postmaster's children still exiting)."""
    real = os.path.realpath(pgdata)
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit() and _cwd(int(entry)) == real and _steps.proc_starttime(int(entry)) is not None:
            found.append(int(entry))
    return found


def start_options(pgdata):
    """The postmaster's options from <pgdata>/postmaster.opts, without the binary and -D, shell-quoted; or None.

    ``postmaster.opts`` holds the command line the running server was started
    with, each argument in double quotes (``/usr/lib/.../postgres "-D" "/data"
    "-p" "5433"``).  pg_ctl passes ``-o`` to a shell, so each argument is
    quoted again with shlex.quote: what the record holds can only ever be
    literal arguments."""
    text = _data_file(pgdata, 'postmaster.opts')
    if text is None:
        return None
    try:
        args = shlex.split(text)[1:]
    except ValueError:
        return None
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == '-D':
            skip = True
            continue
        if arg.startswith('-D') or arg.startswith('--pgdata'):
            continue
        kept.append(arg)
    return ' '.join(shlex.quote(arg) for arg in kept) or None


def unit_of(cgroup_text):
    """The systemd .service unit named in the text of /proc/<pid>/cgroup (its systemd or v2 line), else None."""
    for line in cgroup_text.splitlines():
        parts = line.split(':', 2)
        if len(parts) == 3 and parts[1] in ('name=systemd', ''):
            for name in reversed(parts[2].split('/')):
                if _UNIT_RE.match(name):
                    return name
    return None


def _main_pid(unit):
    """The MainPID systemd records for a unit, or None."""
    for folder in ('/usr/bin', '/bin'):
        systemctl = os.path.join(folder, 'systemctl')
        if os.access(systemctl, os.X_OK):
            break
    else:
        return None
    try:
        out = subprocess.run([systemctl, 'show', '--property=MainPID', '--value', unit], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) if out.isdigit() else None


def systemd_unit(pid, main_pid=_main_pid):
    """The systemd service unit whose main process is this postmaster, when systemd runs this host; else None.

    A postmaster merely started from a shell inside some unit (ssh, cron, a
    user@ manager) is not managed by it: the unit's MainPID must be the postmaster."""
    if not os.path.isdir(SYSTEMD_RUN):
        return None
    try:
        unit = unit_of(_read('/proc/%d/cgroup' % pid))
    except (IOError, OSError):
        return None
    return unit if unit and main_pid(unit) == pid else None


def manager_of(parent_argv):
    """The parent's command line (shortened) when it is a program that manages PostgreSQL (MANAGERS), else None.

    Decided by the first two words of the parent's argv (a program, or an
    interpreter and its script: ``python3 /usr/bin/patroni``), by their file
    names up to a ':' or space (``pg_autoctl: start/stop postgres``)."""
    words = [w for w in (parent_argv or []) if w][:2]
    for word in words:
        name = os.path.basename(word.split(' ', 1)[0].rstrip(':')).lower()
        if any(name == mark or name.startswith(mark + '-') or name.startswith(mark + '.') for mark in MANAGERS):
            shown = ' '.join(' '.join(parent_argv).split())
            return shown if len(shown) <= MANAGER_SHOWN else shown[:MANAGER_SHOWN - 3] + '...'
    return None


def parent_manager(pid):
    """What manages the postmaster pid, by its parent (see manager_of); None when nothing does (or it cannot be read)."""
    fields = _steps._stat_fields(pid)  # pylint: disable=protected-access
    if fields is None or not fields[1].isdigit() or int(fields[1]) < 1:
        return None
    try:
        with open('/proc/%d/cmdline' % int(fields[1]), 'rb') as handle:
            raw = handle.read(4096)
    except (IOError, OSError):
        return None
    return manager_of(raw.decode('utf-8', 'replace').split('\x00'))


def stdout_log(pid):
    """The file fd 1 of a process writes to, when it is a regular file (pg_ctl -l); else None."""
    try:
        target = os.readlink('/proc/%d/fd/1' % pid)
    except (IOError, OSError):
        return None
    if not os.path.isabs(target) or target.endswith(' (deleted)'):
        return None
    return target if os.path.isfile(target) else None


def server_info(cursor):
    """What this host's PostgreSQL server is and how to start it again (see the module docs).

    ``cursor``: a cursor on the server (a superuser or pg_read_all_settings
    member: it reads data_directory).  Raises ChaosError when the server's data
    directory is not on this host, or its postmaster is not alive here."""
    cursor.execute(INFO_SQL)
    data_directory, version_num, in_recovery = cursor.fetchone()
    if not data_directory or not os.path.isdir(data_directory):
        raise ChaosError('the server reports data_directory %s, which is not a folder on this host: run the task on the '
                         "database server's own host" % data_directory)
    pid = postmaster_pid(data_directory)
    if pid is None:
        raise ChaosError('cannot read the postmaster pid from %s/postmaster.pid (run as root, or as the owner of the data '
                         'directory)' % data_directory)
    if not works_in(pid, data_directory):
        raise ChaosError('postmaster pid %s from %s/postmaster.pid is not a live process working in that data directory: '
                         'is the server on another host?' % (pid, data_directory))
    try:
        exe = os.path.realpath(os.readlink('/proc/%d/exe' % pid))
    except (IOError, OSError) as exc:
        raise ChaosError('cannot read the binary of postmaster %s (/proc/%s/exe: %s); run as root' % (pid, pid, exc))
    owner_uid = os.stat(data_directory).st_uid
    unit = systemd_unit(pid)
    try:
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        owner = str(owner_uid)
    return {
        'data_directory': data_directory,
        'pg_wal': os.path.realpath(os.path.join(data_directory, 'pg_wal')),
        'postmaster_pid': pid,
        'postmaster_starttime': _steps.proc_starttime(pid),
        'version_num': int(version_num),
        'in_recovery': bool(in_recovery),
        'owner': owner,
        'bin_dir': os.path.dirname(exe),
        'cgroups': _cgroup.of_pid(pid),
        'log': stdout_log(pid),
        'options': start_options(data_directory),
        'systemd_unit': unit,
        'manager': None if unit else parent_manager(pid),
    }


def start_step(info, wait_s=START_WAIT_S):
    """The ``pg_start`` undo step that starts this server again when it is down (see _steps).

    A server another program manages (``info['manager']``) gets a step that
    starts nothing (method ``manager``): that program starts it, or fails over."""
    if info.get('systemd_unit'):
        return {'type': 'pg_start', 'method': 'systemd', 'unit': info['systemd_unit']}
    if info.get('manager'):
        return {'type': 'pg_start', 'method': 'manager', 'manager': info['manager'], 'pgdata': info['data_directory']}
    return {'type': 'pg_start', 'method': 'pg_ctl', 'pgdata': info['data_directory'],
            'pg_ctl': os.path.join(info['bin_dir'], 'pg_ctl'), 'user': info['owner'], 'log': info.get('log'),
            'options': info.get('options'), 'cgroups': dict(info.get('cgroups') or {}), 'wait_s': int(wait_s)}


def start_command(step):
    """How a pg_start step starts the server, as one line (for reports)."""
    if step.get('method') == 'systemd':
        return 'systemctl start %s' % step['unit']
    if step.get('method') == 'manager':
        return 'nothing: %s manages the server and starts it' % step['manager']
    argv = [step['pg_ctl'], 'start', '-D', step['pgdata'], '-w', '-t', str(step.get('wait_s') or START_WAIT_S)]
    if step.get('log'):
        argv += ['-l', step['log']]
    if step.get('options'):
        argv += ['-o', step['options']]
    return 'as %s: %s' % (step['user'], ' '.join(shlex.quote(a) for a in argv))


def summary(info, step=None):
    """The server keys a fault returns."""
    step = step or start_step(info)
    return {'data_directory': info['data_directory'], 'postmaster_pid': info['postmaster_pid'],
            'version_num': info['version_num'], 'in_recovery': info['in_recovery'],
            'start_method': step['method'], 'start_command': start_command(step), 'manager': step.get('manager')}


def _process_row(pid, role, backend_type, application_name=None, usename=None):
    starttime = _steps.proc_starttime(pid)
    if starttime is None:
        return None
    return {'pid': pid, 'starttime': starttime, 'role': role, 'backend_type': backend_type,
            'cmdline': _steps.proc_cmdline(pid), 'application_name': application_name, 'usename': usename}


def activity_query(role, application_name=None, user=None, pid=None):
    """(query, args) listing the processes of one role (not postmaster) from pg_stat_activity, oldest first."""
    types = sorted(t for t, r in BACKEND_TYPES.items() if r == role)
    where = ['backend_type = ANY(%s)', 'pid <> pg_backend_pid()']
    args = [types]
    if role in FILTERED_ROLES:
        where.append('NOT (coalesce(application_name, \'\') LIKE ANY(%s))')
        args.append(list(OWN_APPLICATIONS))
    if application_name is not None:
        where.append('application_name LIKE %s')
        args.append(application_name)
    if user is not None:
        where.append('usename = %s')
        args.append(user)
    if pid is not None:
        where.append('pid = %s')
        args.append(int(pid))
    query = ('SELECT pid, backend_type, application_name, usename::text FROM pg_stat_activity WHERE %s '
             'ORDER BY backend_start NULLS FIRST, pid' % ' AND '.join(where))
    return query, args


def processes(cursor, info, role, application_name=None, user=None, pid=None):
    """The live processes of this server in one role: [{pid, starttime, role, backend_type, cmdline, application_name, usename}]."""
    if role not in ROLES:
        raise ChaosError('role must be one of %s, got %r' % (', '.join(ROLES), role))
    if role == 'postmaster':
        row = _process_row(info['postmaster_pid'], 'postmaster', 'postmaster')
        return [row] if row and row['starttime'] == info.get('postmaster_starttime', row['starttime']) else []
    query, args = activity_query(role, application_name, user, pid)
    cursor.execute(query, args)
    found = []
    for row_pid, backend_type, app, usename in cursor.fetchall():
        row = _process_row(int(row_pid), role, backend_type, app, usename)
        if row is not None and works_in(row['pid'], info['data_directory']):
            found.append(row)
    return found
