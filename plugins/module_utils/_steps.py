# Copyright: pggit.chaos contributors
# MIT License
"""Undo steps: the data a ledger record holds, and the code that carries each out.

A record's ``undo`` is a list of steps written before its fault is applied.
Each step type has one handler here; every handler is idempotent (undoing
what is already gone is a success) and reports whether it changed anything.
``run_steps`` runs them in reverse order of application.  The lifecycle that
calls them (lock, record, reaper) is in ``_undo``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

STEP_HANDLERS = {}
_TRIGGER_MODES = {'O': 'ENABLE', 'R': 'ENABLE REPLICA', 'A': 'ENABLE ALWAYS', 'D': 'DISABLE'}


def _handler(name):
    def register(func):
        STEP_HANDLERS[name] = func
        return func
    return register


def default_runner(argv):
    """Run argv without a shell (used by the reaper; modules pass run_command)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30, check=False)
    return proc.returncode, proc.stdout, proc.stderr


# -- processes ------------------------------------------------------------
def proc_starttime(pid):
    """Kernel start time of a pid (clock ticks since boot), or None if gone."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            stat = handle.read()
    except (IOError, OSError, ValueError):
        return None
    # comm may contain spaces or parens: split after the last ')'.
    fields = stat.rsplit(')', 1)[-1].split()
    if not fields or fields[0] in ('Z', 'X'):
        return None  # a zombie has exited; it only waits to be reaped
    return int(fields[19]) if len(fields) > 19 else None


def proc_cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % int(pid), 'rb') as handle:
            return handle.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
    except (IOError, OSError, ValueError):
        return ''


def same_process(pid, starttime=None, match=None):
    """True when pid still names the process we started (guards pid reuse)."""
    if not pid:
        return False
    current = proc_starttime(pid)
    if current is None:
        return False
    if starttime is not None and current != int(starttime):
        return False
    return not match or match in proc_cmdline(pid)


def stop_process(pid, starttime=None, match=None, grace=3.0):
    """SIGTERM, wait, then SIGKILL. Returns True if something was stopped."""
    if not same_process(pid, starttime, match):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(int(pid), sig)
        except OSError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline:
            if not same_process(pid, starttime, match):
                return True
            time.sleep(0.05)
    if same_process(pid, starttime, match):
        raise UndoError('process %s did not exit after SIGKILL' % pid)
    return True


@_handler('kill_process')
def _undo_kill_process(step, ctx):
    return stop_process(step['pid'], step.get('starttime'), step.get('match'))


@_handler('remove_path')
def _undo_remove_path(step, ctx):
    # Resolve the folder, not the file: a link is removed, never its target.
    path = os.path.join(os.path.realpath(os.path.dirname(step['path'])), os.path.basename(step['path']))
    root = os.path.realpath(step['root'])
    if not path.startswith(root.rstrip('/') + '/'):
        raise UndoError('refusing to remove %s: outside its recorded root %s' % (path, root))
    if not os.path.lexists(path):
        return False
    os.unlink(path)
    return True


@_handler('run')
def _undo_run(step, ctx):
    """Run an argv; rc in ``gone_rc`` means the thing was already gone."""
    rc, out, err = ctx['runner'](step['argv'])
    if rc in step.get('ok_rc', [0]):
        return True
    if rc in step.get('gone_rc', []):
        return False
    raise UndoError('%s exited %s: %s' % (' '.join(step['argv']), rc, (err or out).strip()))


@_handler('pg_event_trigger_enable')
def _undo_event_triggers(step, ctx):
    """Put event triggers back in their recorded mode (O, R or A)."""
    params = dict(step.get('conn') or {})
    params.update(ctx.get('secret') or {})
    conn = _pgconn.connect(params, application_name='pggit-chaos-revert')
    changed = False
    try:
        cur = conn.cursor()
        for trig in step['triggers']:
            cur.execute('SELECT evtenabled FROM pg_event_trigger WHERE evtname = %s', (trig['name'],))
            row = cur.fetchone()
            if row is None or row[0] == trig['mode']:
                continue
            cur.execute(_pgconn.sql.SQL('ALTER EVENT TRIGGER {} ' + _TRIGGER_MODES[trig['mode']]).format(
                _pgconn.sql.Identifier(trig['name'])))
            changed = True
    finally:
        conn.close()
    return changed


@_handler('pg_drop_schema')
def _undo_drop_schema(step, ctx):
    """Drop a schema of objects created during the fault (before tracking returns)."""
    params = dict(step.get('conn') or {})
    params.update(ctx.get('secret') or {})
    conn = _pgconn.connect(params, application_name='pggit-chaos-revert')
    try:
        cur = conn.cursor()
        cur.execute('SELECT to_regnamespace(%s) IS NOT NULL', (step['schema'],))
        if not cur.fetchone()[0]:
            return False
        cur.execute(_pgconn.sql.SQL('DROP SCHEMA {} CASCADE').format(_pgconn.sql.Identifier(step['schema'])))
        return True
    finally:
        conn.close()


def run_steps(steps, ctx):
    """Run undo steps in reverse order of application. Returns changed."""
    changed = False
    for step in reversed(steps or []):
        handler = STEP_HANDLERS.get(step.get('type'))
        if handler is None:
            raise UndoError('unknown undo step type %r' % step.get('type'))
        changed = bool(handler(step, ctx)) or changed
    return changed
