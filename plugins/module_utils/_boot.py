# Copyright: pggit.chaos contributors
# MIT License
"""The boot hook: faults that outlive a reboot are reverted, or their reapers re-armed.

A disabled event trigger (or a fill file, a changed setting) survives a
reboot; the detached reaper does not.  While a state dir holds fault
records, it has a boot hook that runs ``pggit-chaos-reaper --boot``:

- where systemd runs (``/run/systemd/system`` exists): a oneshot unit
  ``pggit-chaos-boot-<hash>.service`` in ``/etc/systemd/system``, wanted by
  ``multi-user.target`` (``KillMode=process``, so the reapers it re-arms
  outlive it);
- else, where a cron daemon and ``/etc/cron.d`` exist: an ``@reboot`` entry
  ``/etc/cron.d/pggit-chaos-boot-<hash>``;
- else none, and the fault module says so: after a reboot mid-fault, run
  ``playbooks/revert.yml``.

The hook is installed when a fault is armed and removed when the ledger is
empty again, so a host at baseline carries no hook.  Standard library only:
the reaper imports this file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import stat
import sys

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _ledger

SYSTEMD_RUN = '/run/systemd/system'
SYSTEMD_DIR = '/etc/systemd/system'
CRON_DIR = '/etc/cron.d'
CRON_DAEMONS = ('/usr/sbin/cron', '/usr/sbin/crond', '/usr/bin/crond', '/sbin/crond')
REAPER_TAG = 'pggit-chaos-reaper'
HOOK_NOTE = 'boot-hook.json'  # in the state dir: where this state dir's hook was installed
NO_HOOK = ('no systemd and no cron daemon on this host: a reboot while the fault is in place leaves it there '
           'until playbooks/revert.yml (or pggit_chaos_revert) runs')


def hook_name(state_dir):
    return 'pggit-chaos-boot-' + hashlib.sha1(state_dir.encode('utf-8')).hexdigest()[:10]


def boot_argv(state_dir, python=None):
    """The command a boot runs: the reaper program in boot mode, isolated."""
    script = _daemon.install_engine(state_dir)[REAPER_TAG]
    return _daemon.argv_for(script, ['--boot', '--state-dir', state_dir], python)


def _systemd_quote(arg):
    return '"%s"' % arg.replace('\\', '\\\\').replace('"', '\\"').replace('%', '%%')


def unit_text(state_dir, argv):
    return ('# Written by pggit.chaos; removed when the ledger in %s is empty.\n'
            '[Unit]\n'
            'Description=pggit.chaos: revert expired chaos faults and re-arm their reapers after boot\n'
            'After=network-online.target postgresql.service\n'
            'ConditionPathIsDirectory=%s\n'
            '\n'
            '[Service]\n'
            'Type=oneshot\n'
            'KillMode=process\n'
            'ExecStart=%s\n'
            '\n'
            '[Install]\n'
            'WantedBy=multi-user.target\n') % (state_dir, os.path.join(state_dir, _ledger.FAULTS_DIR).replace('%', '%%'),
                                               ' '.join(_systemd_quote(a) for a in argv))


def cron_text(state_dir, argv):
    return ('# Written by pggit.chaos; removed when the ledger in %s is empty.\n'
            '@reboot root [ -d %s ] && %s\n') % (state_dir, shlex.quote(os.path.join(state_dir, _ledger.FAULTS_DIR)),
                                                 ' '.join(shlex.quote(a) for a in argv))


def unsafe_for_boot(state_dir):
    """Why a boot hook must not run this state dir's code, or None.

    At boot the hook runs, as root, the engine copy in <state_dir>/lib before
    anything can check it. That is safe only where no other user can ever
    put a file on the path: no folder on the way (sticky ones included, like
    /tmp, which boot may empty) may be writable by others or owned by them,
    and no part of it may be a link."""
    path = os.path.abspath(state_dir)
    parts = path.strip('/').split('/')
    for depth in range(len(parts) + 1):
        here = '/' + '/'.join(parts[:depth])
        try:
            st = os.lstat(here)
        except OSError:
            return '%s does not exist' % here
        if stat.S_ISLNK(st.st_mode):
            return '%s is a symbolic link' % here
        if st.st_uid not in (0, os.geteuid()):
            return '%s is owned by uid %d' % (here, st.st_uid)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return '%s is writable by group or others (mode %04o)' % (here, stat.S_IMODE(st.st_mode))
    return None


def _paths(state_dir):
    name = hook_name(state_dir)
    unit = os.path.join(SYSTEMD_DIR, name + '.service')
    return {'unit': unit, 'wants': os.path.join(SYSTEMD_DIR, 'multi-user.target.wants', name + '.service'),
            'cron': os.path.join(CRON_DIR, name)}


def _note(state_dir):
    return os.path.join(state_dir, HOOK_NOTE)


def _remember(state_dir, paths):
    _ledger.write_atomic(_note(state_dir), json.dumps(paths))


def _installed(state_dir):
    """The hook files this state dir installed (as noted at install time), plus where they would be now."""
    paths = set(_paths(state_dir).values())
    try:
        with os.fdopen(_ledger.open_private(_note(state_dir), os.O_RDONLY)) as handle:
            noted = json.load(handle)
    except (IOError, OSError, ValueError):
        noted = []
    name = hook_name(state_dir)
    # Only ever remove files named after this state dir's hook.
    paths.update(p for p in noted if isinstance(p, str) and os.path.basename(p) in (name, name + '.service'))
    return sorted(paths)


def install(state_dir, python=None):
    """Install the boot hook for a state dir (idempotent). Returns {kind, path} or {kind: none, why}.

    A host where the hook cannot be written (not root) or must not be (see
    :func:`unsafe_for_boot`) gets none, and says why: the fault itself is not
    refused for it."""
    problem = unsafe_for_boot(state_dir)
    if problem:
        why = ('no boot hook for state dir %s: %s, so another user could put code where root would run it at boot. '
               'After a reboot mid-fault run playbooks/revert.yml' % (state_dir, problem))
        return {'kind': 'none', 'why': why}
    try:
        return _install(state_dir, python)
    except OSError as exc:
        why = ('no boot hook: %s (%s). After a reboot mid-fault run playbooks/revert.yml'
               % (exc.strerror or exc, getattr(exc, 'filename', None) or 'the hook folder'))
        return {'kind': 'none', 'why': why}


def _install(state_dir, python):
    paths = _paths(state_dir)
    if os.path.isdir(SYSTEMD_RUN):
        argv = boot_argv(state_dir, python or sys.executable)
        _remember(state_dir, [paths['unit'], paths['wants']])
        _ledger.write_atomic(paths['unit'], unit_text(state_dir, argv), 0o644)
        wants = os.path.dirname(paths['wants'])
        if not os.path.isdir(wants):
            os.makedirs(wants, 0o755)
        if not os.path.lexists(paths['wants']):
            os.symlink(paths['unit'], paths['wants'])
        return {'kind': 'systemd', 'path': paths['unit']}
    if os.path.isdir(CRON_DIR) and any(os.path.exists(d) for d in CRON_DAEMONS):
        argv = boot_argv(state_dir, python or sys.executable)
        _remember(state_dir, [paths['cron']])
        _ledger.write_atomic(paths['cron'], cron_text(state_dir, argv), 0o644)
        return {'kind': 'cron', 'path': paths['cron']}
    return {'kind': 'none', 'why': NO_HOOK}


def remove(state_dir):
    """Remove the boot hook of a state dir. Returns the paths removed."""
    removed = []
    for path in _installed(state_dir):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_note(state_dir))
    return removed


def remove_if_idle(ledger):
    """No record left: the host is at baseline, and carries no hook."""
    if not ledger.list():
        return remove(ledger.state_dir)
    return []
