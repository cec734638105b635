# Copyright: pggit.chaos contributors
# MIT License
"""Restart this host's PostgreSQL server with a changed environment (the clock fault's preload).

A restart is the server stopped (``pg_ctl stop -m fast`` as the data
directory's owner) and started again the way ``_server.start_step`` records:
``pg_ctl start`` as the owner, with the options of ``postmaster.opts``, its
log, inside the postmaster's cgroups.  The environment of the new postmaster
is the one it had (read from ``/proc/<postmaster>/environ``) without the
names in ``drop_env``, plus ``env``: a restart changes nothing else.

A server that systemd manages is restarted with ``systemctl restart``; it
cannot be given an environment this way (its unit owns that), so ``env`` is
refused there.

Standard library only: the reaper imports this file through ``_steps``.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError

RESTART_WAIT_S = 60
# Names of environment variables a restart may set or drop.
_ENV_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
# Never carried over from an old postmaster's environment: pg_ctl and the postmaster decide these themselves.
_NEVER_KEPT = ('PG_GRANDPARENT_PID', 'PGDATA')
FAKETIME_MARK = 'libfaketime'
FAKETIME_VARS = ('LD_PRELOAD', 'FAKETIME_TIMESTAMP_FILE', 'FAKETIME_NO_CACHE', 'FAKETIME', 'FAKETIME_DONT_RESET')


def parse_environ(data):
    """The NUL-separated text of /proc/<pid>/environ as a dict (later duplicates win, unparsable bits skipped)."""
    if isinstance(data, bytes):
        data = data.decode('utf-8', 'replace')
    env = {}
    for item in data.split('\0'):
        name, sep, value = item.partition('=')
        if sep and _ENV_NAME_RE.match(name):
            env[name] = value
    return env


def environ_of(pid):
    """The environment a process started with (/proc/<pid>/environ), or None when it cannot be read."""
    try:
        with open('/proc/%d/environ' % int(pid), 'rb') as handle:
            return parse_environ(handle.read())
    except (IOError, OSError, ValueError):
        return None


def faketime_preload(env):
    """The LD_PRELOAD entry of an environment that names libfaketime, or None."""
    for entry in re.split(r'[:\s]+', (env or {}).get('LD_PRELOAD') or ''):
        if FAKETIME_MARK in os.path.basename(entry):
            return entry
    return None


def maps_faketime(pid):
    """True when libfaketime is mapped into the process (/proc/<pid>/maps), None when that cannot be read."""
    try:
        with open('/proc/%d/maps' % int(pid)) as handle:
            return any(FAKETIME_MARK in line for line in handle)
    except (IOError, OSError, ValueError):
        return None


def start_env(base, env=None, drop_env=()):
    """The environment of the new postmaster: base without drop_env (and PGDATA/PG_GRANDPARENT_PID), plus env.

    ``base`` is the old postmaster's environment, or None (then the plain
    environment pg_start uses: PATH, HOME, USER, LOGNAME and the locale)."""
    for name in list(env or {}) + list(drop_env or ()):
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise ChaosError('environment variable names must be plain names, got %r' % (name,))
    result = dict(base or {})
    for name in tuple(drop_env or ()) + _NEVER_KEPT:
        result.pop(name, None)
    for name, value in (env or {}).items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = str(value)
    return result


def _account(step):
    try:
        account = pwd.getpwnam(step['user'])
    except KeyError:
        raise UndoError('user %s does not exist: the server in %s was not restarted' % (step['user'], step['pgdata']))
    owner = os.stat(step['pgdata']).st_uid
    if account.pw_uid == 0 or owner != account.pw_uid:
        raise UndoError('%s belongs to uid %d, not to %s: the server was not restarted' % (step['pgdata'], owner, step['user']))
    return account


def _run_as(argv, account, cgroups, env, timeout):
    """argv as the owner, in cgroups, with env added to the plain environment; (rc, output)."""
    return _steps._as_user(argv, account, cgroups, timeout, env)  # pylint: disable=protected-access


def stop_argv(step, wait_s=RESTART_WAIT_S):
    return [step['pg_ctl'], 'stop', '-D', step['pgdata'], '-m', 'fast', '-w', '-t', str(int(wait_s))]


def start_argv(step, wait_s=RESTART_WAIT_S):
    argv = [step['pg_ctl'], 'start', '-D', step['pgdata'], '-w', '-t', str(int(wait_s)), '-l', step.get('log') or os.devnull]
    if step.get('options'):
        argv += ['-o', step['options']]
    return argv


def stop(step, wait_s=RESTART_WAIT_S):
    """pg_ctl stop -m fast as the owner; True when it stopped a running server.  Waits until its children are gone."""
    pgdata = step['pgdata']
    if not _server.running(pgdata):
        return False
    account = _account(step)
    argv = stop_argv(step, wait_s)
    rc, out = _run_as(argv, account, None, None, wait_s + 15)
    deadline = time.time() + wait_s
    while (_server.running(pgdata) or _server.leftovers(pgdata)) and time.time() < deadline:
        time.sleep(0.05)
    if _server.running(pgdata):
        raise UndoError('the server in %s is still running after: as %s: %s exited %s: %s' % (
            pgdata, account.pw_name, ' '.join(shlex.quote(a) for a in argv), rc, ' '.join((out or '').split()) or '(no output)'))
    return True


def start(step, env, wait_s=RESTART_WAIT_S):
    """pg_ctl start as the owner, in the recorded cgroups, with env; the pg_start step's own start.  True when started."""
    return _steps._start_pg_ctl(dict(step, wait_s=int(wait_s)), {}, env)  # pylint: disable=protected-access


def _restart_systemd(step, env, drop_env):
    if env:
        raise ChaosError('the server is managed by systemd unit %s: its environment belongs to the unit, so it cannot be '
                         'restarted with %s' % (step['unit'], ', '.join(sorted(env))))
    systemctl = _steps.find_bin('systemctl')
    argv = [systemctl, 'restart', step['unit']]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120, check=False)
    if proc.returncode:
        raise UndoError('%s exited %s: %s' % (' '.join(argv), proc.returncode, ' '.join(proc.stdout.split()) or '(no output)'))


def restart_step(step, env=None, drop_env=(), wait_s=RESTART_WAIT_S):
    """Restart (or start, when it is down) the server a pg_start step describes; returns the new postmaster pid.

    The new environment is the old postmaster's (when it runs and can be read)
    without drop_env, plus env."""
    if step.get('method') == 'systemd':
        _restart_systemd(step, env, drop_env)
        return _server_pid_systemd(step)
    pgdata = step['pgdata']
    old_pid = _server.postmaster_pid(pgdata) if _server.running(pgdata) else None
    base = environ_of(old_pid) if old_pid else None
    new_env = start_env(base, env, drop_env)
    stop(step, wait_s)
    start(step, new_env, wait_s)
    pid = _server.postmaster_pid(pgdata)
    if not _server.works_in(pid, pgdata):
        raise UndoError('the server in %s is not running after the restart' % pgdata)
    return pid


def _server_pid_systemd(step):
    try:
        out = subprocess.run([_steps.find_bin('systemctl'), 'show', '--property=MainPID', '--value', step['unit']],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10,
                             check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) if out.isdigit() and int(out) > 0 else None


def restart(info, env=None, drop_env=(), wait_s=RESTART_WAIT_S):
    """Stop the server of ``info`` (from _server.server_info) and start it the recorded way, with env added and drop_env removed.

    Inside its cgroups, as its owner.  Returns the new postmaster pid."""
    step = _server.start_step(info, wait_s)
    problem = _steps.STEP_CHECKS['pg_start'](step, None)
    if problem:
        raise ChaosError('cannot restart the server in %s: %s' % (info.get('data_directory'), problem))
    return restart_step(step, env, drop_env, wait_s)
