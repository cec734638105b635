# Copyright: pggit.chaos contributors
# MIT License
"""Undo steps: the data a ledger record holds, and the code that carries each out.

A record's ``undo`` is a list of typed steps written before its fault is
applied.  A record is data that the reaper and the red button act on as root,
so it is never trusted as code: :func:`check_steps` refuses any step that is
not something our faults write (known types, our own chains, qdisc handle,
process tags, schemas and files), and :func:`run_steps` checks before it runs
anything.  Handlers find their binaries themselves; a record names no program.

Every handler is idempotent and decides "already gone" by *looking* (listing
the chain, the qdisc, the schema), never from an exit code, and looks again
afterwards: a thing still there is an :class:`UndoError` naming the command,
its exit code and its output.  ``run_steps`` runs every step, in reverse order
of application, even when one fails, then reports every failure at once; the
record then stays for the reaper to retry.  The lifecycle that calls them
(lock, record, reaper) is in ``_undo``.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

STEP_HANDLERS = {}
STEP_CHECKS = {}
_TRIGGER_MODES = {'O': 'ENABLE', 'R': 'ENABLE REPLICA', 'A': 'ENABLE ALWAYS', 'D': 'DISABLE'}

# Where handlers look for iptables, tc and ip: never a path from the record.
BIN_DIRS = ('/usr/sbin', '/sbin', '/usr/bin', '/bin')
PROC_TAG_PREFIX = 'pggit-chaos-'
CHAIN_PREFIX = 'pggit-chaos-'
CHAIN_HOOKS = ('INPUT', 'OUTPUT', 'FORWARD')
# The handle of every root qdisc pggit.chaos adds (_netcmd.OUR_HANDLE).
TC_HANDLE = '7a3c:'
PROTECTED_SCHEMAS = ('pggit', 'public', 'information_schema')
TRIGGER_PREFIX = 'pggit'
# What a kill_process step with group: true may kill in its group (by command line).
GROUP_MEMBERS = ('stress-ng',)
# Disk-fill files: the only files outside the state dir an undo may remove.
FILL_FILE_RE = re.compile(r'^\.pggit-chaos-fill-[A-Za-z0-9_.-]+$')
_CHAIN_RE = re.compile(r'^pggit-chaos-[A-Za-z0-9_-]+$')
_INTERFACE_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}$')
# A revert must not wait forever on a busy table (it holds the ledger lock).
REVERT_SQL_SETTINGS = ("SET lock_timeout = '5s'", "SET statement_timeout = '60s'")


def _handler(name, check):
    def register(func):
        STEP_HANDLERS[name] = func
        STEP_CHECKS[name] = check
        return func
    return register


def default_runner(argv):
    """Run argv without a shell (used by the reaper; modules pass run_command)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def find_bin(name):
    """The path of a system binary, searched in BIN_DIRS only."""
    for folder in BIN_DIRS:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise UndoError('%s not found in %s' % (name, ':'.join(BIN_DIRS)))


def _run(ctx, argv):
    return (ctx.get('runner') or default_runner)(argv)


def _said(argv, rc, out, err):
    return '%s exited %s: %s' % (' '.join(argv), rc, ' '.join(((err or '') + ' ' + (out or '')).split()) or '(no output)')


def protected_schema(name):
    """True for schemas a fault may never drop: pggit, public, information_schema, pg_*, or a blank name.

    Names are compared exactly, as PostgreSQL stores them: the revert drops
    the schema whose nspname is exactly this (quoted), so a scratch schema
    literally named "PGGIT" is not pggit and may be dropped."""
    text = str(name)
    return not text.strip() or text in PROTECTED_SCHEMAS or text.startswith('pg_')


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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_kill_process(step, state_dir):
    match = step.get('match')
    if not isinstance(match, str) or not match.startswith(PROC_TAG_PREFIX) or match == PROC_TAG_PREFIX:
        return "match must be one of our process tags ('%s...'), got %r" % (PROC_TAG_PREFIX, match)
    if not _is_int(step.get('pid')) or step['pid'] <= 1:
        return 'pid must be an integer above 1, got %r' % (step.get('pid'),)
    if not _is_int(step.get('starttime')):
        return 'starttime must be the integer start time of the process, got %r' % (step.get('starttime'),)
    if 'group' not in step and 'members_match' not in step:
        return None
    if step.get('group') is not True:
        return 'group must be true when given (with members_match), got %r' % (step.get('group'),)
    if step.get('members_match') not in GROUP_MEMBERS:
        return 'members_match must be one of %s, got %r' % (', '.join(GROUP_MEMBERS), step.get('members_match'))
    return None


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state is [0], pgrp [2], starttime [19]), or None."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            fields = handle.read().rsplit(')', 1)[-1].split()
    except (IOError, OSError, ValueError):
        return None
    return fields if len(fields) > 19 else None


def group_members(pgid, members_match, since=None):
    """[(pid, starttime)] of live processes in process group pgid whose command line holds members_match.

    ``since``: the group leader's start time; a member never started before its
    leader, so older processes in a group of that id (pid reuse) are not ours."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue  # never itself: the stress program sweeps its own group with this
        fields = _stat_fields(entry)
        if fields is None or fields[0] in ('Z', 'X') or int(fields[2]) != int(pgid):
            continue
        if since is not None and int(fields[19]) < int(since):
            continue
        if members_match in proc_cmdline(int(entry)):
            found.append((int(entry), int(fields[19])))
    return found


def stop_group(pgid, members_match, since=None, grace=3.0):
    """SIGTERM every matching member of process group pgid, wait, SIGKILL the rest; look again after.

    Members are signalled one by one (never killpg): a process of the group
    that does not match is left alone.  Members started meanwhile (a parent
    respawning its workers) are found by each new look.  Returns True when
    something was stopped; UndoError when a member survives SIGKILL."""
    members = group_members(pgid, members_match, since)
    if not members:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid, starttime in members:
            if same_process(pid, starttime):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.time() + wait
        while True:
            members = group_members(pgid, members_match, since)
            if not members or time.time() >= deadline:
                break
            time.sleep(0.05)
        if not members:
            return True
    raise UndoError('process group %s: %s still running after SIGKILL (pids %s)'
                    % (pgid, members_match, ' '.join(str(pid) for pid, _ in members)))


@_handler('kill_process', _check_kill_process)
def _undo_kill_process(step, ctx):
    stopped = stop_process(step['pid'], step.get('starttime'), step.get('match'))
    if step.get('group'):
        # The leader may be gone (SIGKILLed, OOM-killed) while its group lives on.
        stopped = stop_group(step['pid'], step['members_match'], step.get('starttime')) or stopped
    return stopped


# -- files ----------------------------------------------------------------
def _resolved(path):
    """The folder resolved, not the file: a link is removed, never its target."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _check_remove_path(step, state_dir):
    path = step.get('path')
    if not isinstance(path, str) or not os.path.isabs(path):
        return 'path must be an absolute path, got %r' % (path,)
    name = os.path.basename(path)
    if name in ('', '.', '..'):
        return 'path must name a file, got %r' % (path,)
    if FILL_FILE_RE.match(name):
        return None
    if not state_dir:
        return 'refusing to remove %s: no state dir to check it against, and it is not a .pggit-chaos-fill-<id> file' % path
    top = os.path.realpath(state_dir).rstrip('/') + '/'
    if not _resolved(path).startswith(top):
        return 'refusing to remove %s: outside the state dir %s, and not a .pggit-chaos-fill-<id> file' % (path, state_dir)
    return None


@_handler('remove_path', _check_remove_path)
def _undo_remove_path(step, ctx):
    path = _resolved(step['path'])
    if step.get('root'):
        root = os.path.realpath(step['root'])
        if not path.startswith(root.rstrip('/') + '/'):
            raise UndoError('refusing to remove %s: outside its recorded root %s' % (path, root))
    if not os.path.lexists(path):
        return False
    os.unlink(path)
    return True


# -- iptables -------------------------------------------------------------
def parse_iptables(text):
    """(user chains, {chain: [rule tokens after '-A chain']}) from ``iptables -S``."""
    chains, rules = set(), {}
    for line in text.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        if len(tokens) >= 2 and tokens[0] == '-N':
            chains.add(tokens[1])
        elif len(tokens) >= 2 and tokens[0] == '-A':
            rules.setdefault(tokens[1], []).append(tokens[2:])
    return chains, rules


def _targets(rule, chain):
    return any(rule[i] in ('-j', '-g') and rule[i + 1] == chain for i in range(len(rule) - 1))


def _check_iptables_chain(step, state_dir):
    chain = step.get('chain')
    if not isinstance(chain, str) or not _CHAIN_RE.match(chain) or len(chain) > 28:
        return "chain must be one of ours ('%s...'), got %r" % (CHAIN_PREFIX, chain)
    if step.get('hook') not in CHAIN_HOOKS:
        return 'hook must be one of %s, got %r' % (', '.join(CHAIN_HOOKS), step.get('hook'))
    return None


@_handler('iptables_chain', _check_iptables_chain)
def _undo_iptables_chain(step, ctx):
    """Remove our jump(s) from the hook, flush and delete the chain; confirm by listing again.

    Looking is listing: ``iptables -S <hook>`` for the jumps, ``iptables -S
    <chain>`` for the chain and, when that lists nothing, the whole table (a
    rule iptables cannot parse elsewhere makes only the whole-table listing
    fail).  A chain is gone only when a listing that worked does not show it.
    """
    iptables = find_bin('iptables')
    chain, hook = step['chain'], step['hook']
    jump = ['-j', chain]

    def listing(*chain_args):
        argv = [iptables, '-w', '-S'] + list(chain_args)
        rc, out, err = _run(ctx, argv)
        return argv, rc, out, err

    def look():
        argv, rc, out, err = listing(hook)
        if rc != 0:
            raise UndoError('cannot look for the jumps from %s to %s: %s' % (hook, chain, _said(argv, rc, out, err)))
        jumps = sum(1 for rule in parse_iptables(out)[1].get(hook, []) if rule == jump)
        argv, rc, out, err = listing(chain)
        if rc == 0 and chain in parse_iptables(out)[0]:
            return True, jumps
        whole = listing()
        if whole[1] != 0:
            raise UndoError('cannot look for chain %s: %s; %s' % (chain, _said(argv, rc, out, err), _said(*whole)))
        return chain in parse_iptables(whole[2])[0], jumps

    def users():
        """Rules we did not make that still jump to the chain (for the message), when they can be listed."""
        _argv, rc, out, _err = listing()
        rules = parse_iptables(out)[1] if rc == 0 else {}
        return ['-A %s %s' % (name, ' '.join(rule)) for name, found in sorted(rules.items()) for rule in found
                if _targets(rule, chain) and not (name == hook and rule == jump)]

    present, jumps = look()
    if not present and not jumps:
        return False
    failed = []
    commands = [[iptables, '-w', '-D', hook] + jump for _n in range(jumps)]
    if present:
        commands += [[iptables, '-w', '-F', chain], [iptables, '-w', '-X', chain]]
    for argv in commands:
        rc, out, err = _run(ctx, argv)
        if rc != 0:
            failed.append(_said(argv, rc, out, err))
    present, jumps = look()
    if present or jumps:
        what = ('chain %s' % chain) if present else ('%d jump(s) from %s to %s' % (jumps, hook, chain))
        why = '; '.join(failed) or 'every command exited 0'
        others = users()
        if others:
            why += '; rules we did not make still use it: %s' % ' | '.join(others)
        raise UndoError('%s is still there after the revert: %s' % (what, why))
    return True


# -- tc -------------------------------------------------------------------
def parse_root_qdisc(text):
    """(kind, handle) of the root qdisc from `tc qdisc show dev X` output."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == 'qdisc' and 'root' in fields:
            return fields[1], fields[2]
    return None, None


def parse_links(text):
    """Interface names from ``ip -o link show`` (a veth's ``@ifN`` suffix dropped)."""
    names = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].endswith(':'):
            names.add(fields[1].rstrip(':').split('@')[0])
    return names


def _check_tc_qdisc(step, state_dir):
    interface = step.get('interface')
    if not isinstance(interface, str) or not _INTERFACE_RE.match(interface) or interface in ('.', '..'):
        return 'interface must be an interface name, got %r' % (interface,)
    if step.get('handle') != TC_HANDLE:
        return 'handle must be ours (%s), got %r' % (TC_HANDLE, step.get('handle'))
    return None


@_handler('tc_qdisc', _check_tc_qdisc)
def _undo_tc_qdisc(step, ctx):
    """Delete the root qdisc if its handle is ours; a vanished interface is gone; confirm after."""
    tc, ip = find_bin('tc'), find_bin('ip')
    interface, handle = step['interface'], step['handle']

    def exists():
        argv = [ip, '-o', 'link', 'show']
        rc, out, err = _run(ctx, argv)
        if rc != 0:
            raise UndoError('cannot list interfaces to find %s: %s' % (interface, _said(argv, rc, out, err)))
        return interface in parse_links(out)

    def ours():
        if not exists():
            return False
        argv = [tc, 'qdisc', 'show', 'dev', interface]
        rc, out, err = _run(ctx, argv)
        if rc != 0:
            if not exists():
                return False
            raise UndoError('cannot read the qdiscs of %s: %s' % (interface, _said(argv, rc, out, err)))
        return parse_root_qdisc(out)[1] == handle

    if not ours():
        return False
    argv = [tc, 'qdisc', 'del', 'dev', interface, 'root', 'handle', handle]
    rc, out, err = _run(ctx, argv)
    if ours():
        raise UndoError('root qdisc %s on %s is still there after the revert: %s' % (handle, interface, _said(argv, rc, out, err)))
    return True


# -- PostgreSQL -----------------------------------------------------------
def _pg_connect(step, ctx):
    params = dict(step.get('conn') or {})
    params.update(ctx.get('secret') or {})
    conn = _pgconn.connect(params, application_name='pggit-chaos-revert')
    cur = conn.cursor()
    for setting in REVERT_SQL_SETTINGS:
        cur.execute(setting)
    return conn, cur


def _check_conn(step):
    if step.get('conn') is not None and not isinstance(step.get('conn'), dict):
        return 'conn must be a dictionary of connection options, got %r' % (step.get('conn'),)
    return None


def _check_event_triggers(step, state_dir):
    triggers = step.get('triggers')
    if not isinstance(triggers, list) or not triggers:
        return 'triggers must be a non-empty list, got %r' % (triggers,)
    for trig in triggers:
        if not isinstance(trig, dict) or not isinstance(trig.get('name'), str) or not trig['name'].startswith(TRIGGER_PREFIX):
            return "every trigger must be a pgGit event trigger named '%s%%', got %r" % (TRIGGER_PREFIX, trig)
        if trig.get('mode') not in _TRIGGER_MODES:
            return 'trigger %s: mode must be one of %s, got %r' % (trig['name'], '/'.join(sorted(_TRIGGER_MODES)), trig.get('mode'))
    return _check_conn(step)


@_handler('pg_event_trigger_enable', _check_event_triggers)
def _undo_event_triggers(step, ctx):
    """Put event triggers back in their recorded mode (O, R, A or D); every trigger is tried."""
    conn, cur = _pg_connect(step, ctx)
    changed, failed = False, []
    try:
        for trig in step['triggers']:
            try:
                cur.execute('SELECT evtenabled FROM pg_event_trigger WHERE evtname = %s', (trig['name'],))
                row = cur.fetchone()
                if row is None or row[0] == trig['mode']:
                    continue
                cur.execute(_pgconn.sql.SQL('ALTER EVENT TRIGGER {} ' + _TRIGGER_MODES[trig['mode']]).format(
                    _pgconn.sql.Identifier(trig['name'])))
                changed = True
            except _pgconn.psycopg2.Error as exc:
                failed.append('%s: %s' % (trig['name'], _pgconn.one_line(exc)))
    finally:
        conn.close()
    if failed:
        raise UndoError('event triggers not put back: %s' % '; '.join(failed))
    return changed


def _check_drop_schema(step, state_dir):
    schema = step.get('schema')
    if not isinstance(schema, str) or protected_schema(schema):
        return 'refusing to drop schema %r: not a scratch schema (pggit, public, information_schema and pg_* never are)' % (schema,)
    marker = step.get('only_if_comment')
    if marker is not None and not (isinstance(marker, str) and marker.startswith('pggit.chaos ')):
        return 'only_if_comment must be a pggit.chaos mark, got %r' % (marker,)
    return _check_conn(step)


@_handler('pg_drop_schema', _check_drop_schema)
def _undo_drop_schema(step, ctx):
    """Drop a schema of objects created during the fault, found by its exact name.

    With ``only_if_comment`` the schema is dropped only while its comment is
    exactly that mark (a workload run's schema): one that is not this run's
    (any more) counts as gone and is left alone."""
    exists_sql = 'SELECT 1 FROM pg_namespace WHERE nspname = %s'
    conn, cur = _pg_connect(step, ctx)
    try:
        cur.execute(exists_sql, (step['schema'],))
        if cur.fetchone() is None:
            return False
        marker = step.get('only_if_comment')
        if marker:
            cur.execute("SELECT coalesce(obj_description(oid, 'pg_namespace'), '') FROM pg_namespace WHERE nspname = %s",
                        (step['schema'],))
            row = cur.fetchone()
            if row is None or row[0] != marker:
                return False
        drop = _pgconn.sql.SQL('DROP SCHEMA {} CASCADE').format(_pgconn.sql.Identifier(step['schema']))
        try:
            cur.execute(drop)
        except _pgconn.psycopg2.Error as exc:
            raise UndoError('%s failed: %s' % (drop.as_string(cur), _pgconn.one_line(exc)))
        cur.execute(exists_sql, (step['schema'],))
        if cur.fetchone() is not None:
            raise UndoError('schema %s is still there after %s' % (step['schema'], drop.as_string(cur)))
        return True
    finally:
        conn.close()


# -- PostgreSQL processes: pause and start (pggit_chaos_process, pggit_chaos_disk) --
# The only signal an undo sends (a STOP's undo), and what a paused process's command line holds.
SIGNAL_UNDO = ('CONT',)
PG_PROCESS_MATCHES = ('postgres', 'postmaster')
PG_START_METHODS = ('pg_ctl', 'systemd')
_UNIT_RE = re.compile(r'^[A-Za-z0-9@._:\\-]+\.service$')
# What a postmaster says while the old one's children still hold its shared memory or lock file.
_START_BUSY = ('pre-existing shared memory block', 'is still in use', 'lock file', 'another server might be running')
PG_START_WAIT_MAX = 3600


def proc_state(pid):
    """The state letter of a process (R, S, D, T, t, Z...), or None when it is gone."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            fields = handle.read().rsplit(')', 1)[-1].split()
    except (IOError, OSError, ValueError):
        return None
    return fields[0] if fields else None


def _check_signal_process(step, state_dir):
    if step.get('signal') not in SIGNAL_UNDO:
        return 'signal must be one of %s (an undo only resumes), got %r' % (', '.join(SIGNAL_UNDO), step.get('signal'))
    if not _is_int(step.get('pid')) or step['pid'] <= 1:
        return 'pid must be an integer above 1, got %r' % (step.get('pid'),)
    if not _is_int(step.get('starttime')):
        return 'starttime must be the integer start time of the process, got %r' % (step.get('starttime'),)
    if step.get('match') not in PG_PROCESS_MATCHES:
        return 'match must be one of %s (only PostgreSQL processes are paused), got %r' % (
            ', '.join(PG_PROCESS_MATCHES), step.get('match'))
    return None


@_handler('signal_process', _check_signal_process)
def _undo_signal_process(step, ctx):
    """SIGCONT to that very process (pid, start time and command line), only while it is stopped; confirm it runs."""
    pid = step['pid']
    if not same_process(pid, step['starttime'], step['match']) or proc_state(pid) != 'T':
        return False
    try:
        os.kill(pid, getattr(signal, 'SIG' + step['signal']))
    except OSError as exc:
        if same_process(pid, step['starttime'], step['match']):
            raise UndoError('kill -%s %s failed: %s' % (step['signal'], pid, exc))
        return False
    deadline = time.time() + 2.0
    while proc_state(pid) == 'T' and same_process(pid, step['starttime']) and time.time() < deadline:
        time.sleep(0.02)
    if proc_state(pid) == 'T' and same_process(pid, step['starttime']):
        raise UndoError('process %s is still stopped after SIGCONT' % pid)
    return True


def _plain_path(value):
    return isinstance(value, str) and os.path.isabs(value) and '..' not in value.split('/') and '\x00' not in value


def _safe_options(options):
    """True when options is what _server.start_options writes: shell-quoted literal arguments, nothing else."""
    if options is None:
        return True
    if not isinstance(options, str) or '\n' in options or '\x00' in options:
        return False
    try:
        return ' '.join(shlex.quote(arg) for arg in shlex.split(options)) == options
    except ValueError:
        return False


def _check_pg_start(step, state_dir):
    method = step.get('method')
    if method not in PG_START_METHODS:
        return 'method must be one of %s, got %r' % (', '.join(PG_START_METHODS), method)
    if method == 'systemd':
        unit = step.get('unit')
        return None if isinstance(unit, str) and _UNIT_RE.match(unit) else 'unit must be a systemd .service name, got %r' % (unit,)
    pgdata = step.get('pgdata')
    if not _plain_path(pgdata) or os.path.normpath(pgdata) == '/':
        return 'pgdata must be an absolute data directory, got %r' % (pgdata,)
    pg_ctl = step.get('pg_ctl')
    if not _plain_path(pg_ctl) or os.path.basename(pg_ctl) != 'pg_ctl':
        return 'pg_ctl must be an absolute path to a program named pg_ctl, got %r' % (pg_ctl,)
    folder = os.path.dirname(pg_ctl)
    try:
        info = os.stat(folder)
    except OSError as exc:
        return 'pg_ctl %s: cannot look at its folder: %s' % (pg_ctl, exc)
    if info.st_uid != 0 or info.st_mode & 0o022:
        return 'pg_ctl %s must be in a folder owned by root and writable only by root (%s is not)' % (pg_ctl, folder)
    user = step.get('user')
    if not isinstance(user, str) or not user or user == 'root' or ':' in user or '/' in user:
        return 'user must name the data directory owner (never root), got %r' % (user,)
    log = step.get('log')
    if log is not None and not _plain_path(log):
        return 'log must be an absolute path or null, got %r' % (log,)
    if not _safe_options(step.get('options')):
        return 'options must be shell-quoted literal postmaster arguments (as in postmaster.opts) or null, got %r' % (step.get('options'),)
    wait = step.get('wait_s')
    if not _is_int(wait) or not 1 <= wait <= PG_START_WAIT_MAX:
        return 'wait_s must be an integer from 1 to %d, got %r' % (PG_START_WAIT_MAX, wait)
    cgroups = step.get('cgroups')
    if cgroups:
        from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup  # pylint: disable=import-outside-toplevel
        return _cgroup.check_paths(cgroups)
    return None


def _log_size(path):
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _log_since(path, offset, size=1500):
    """What a log got after offset (the last size bytes of it), as one line."""
    if not path:
        return ''
    try:
        with open(path, 'rb') as handle:
            handle.seek(max(offset, _log_size(path) - size))
            return ' '.join(handle.read().decode('utf-8', 'replace').split())
    except (IOError, OSError):
        return ''


def _as_user(argv, account, cgroups, timeout):
    """Run argv as `account`, inside `cgroups` (joined in the child before exec); (rc, output)."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup  # pylint: disable=import-outside-toplevel
    if os.geteuid() not in (0, account.pw_uid):
        raise UndoError('starting the server needs root or its owner %s; running as uid %d' % (account.pw_name, os.geteuid()))

    def prepare():  # pragma: no cover - runs in the child
        if cgroups:
            _cgroup.join(cgroups, os.getpid())
        if os.geteuid() != account.pw_uid:
            os.setgid(account.pw_gid)
            os.initgroups(account.pw_name, account.pw_gid)
            os.setuid(account.pw_uid)

    env = {'PATH': '/usr/bin:/bin', 'HOME': account.pw_dir or '/', 'USER': account.pw_name, 'LOGNAME': account.pw_name}
    for name in ('LANG', 'LC_ALL', 'TZ'):
        if os.environ.get(name):
            env[name] = os.environ[name]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/', env=env,
                              preexec_fn=prepare, close_fds=True, timeout=timeout, universal_newlines=True, check=False)
    except subprocess.TimeoutExpired as exc:
        return None, '%s (timed out after %ss)' % (exc.output or '', timeout)
    except subprocess.SubprocessError as exc:
        raise UndoError('could not join the cgroups %s or become %s before %s: %s'
                        % (', '.join(sorted(set(cgroups.values()))) if cgroups else '(none)', account.pw_name, argv[0], exc))
    return proc.returncode, proc.stdout


def _start_systemd(step, ctx):
    systemctl = find_bin('systemctl')
    unit = step['unit']

    def active():
        rc, out, _err = _run(ctx, [systemctl, 'is-active', unit])
        return rc == 0 and out.strip() == 'active'

    if active():
        return False
    argv = [systemctl, 'start', unit]
    rc, out, err = _run(ctx, argv)
    if not active():
        raise UndoError('server unit %s is not active after %s' % (unit, _said(argv, rc, out, err)))
    return True


def _start_pg_ctl(step, ctx):
    """pg_ctl start as the data directory's owner, in the recorded cgroups, when the server is down; confirm it runs."""
    import pwd  # pylint: disable=import-outside-toplevel
    from ansible_collections.pggit.chaos.plugins.module_utils import _server  # pylint: disable=import-outside-toplevel
    pgdata = step['pgdata']
    if _server.running(pgdata):
        return False
    if not os.path.isfile(os.path.join(pgdata, 'PG_VERSION')):
        raise UndoError('%s is not a PostgreSQL data directory (no PG_VERSION): the server was not started' % pgdata)
    try:
        account = pwd.getpwnam(step['user'])
    except KeyError:
        raise UndoError('user %s does not exist: the server in %s was not started' % (step['user'], pgdata))
    owner = os.stat(pgdata).st_uid
    if account.pw_uid == 0 or owner != account.pw_uid:
        raise UndoError('%s belongs to uid %d, not to %s: the server was not started' % (pgdata, owner, step['user']))
    pg_ctl = step['pg_ctl']
    if not (os.path.isfile(pg_ctl) and os.access(pg_ctl, os.X_OK)) or os.stat(pg_ctl).st_uid != 0:
        raise UndoError('%s is not a root-owned program: the server in %s was not started' % (pg_ctl, pgdata))
    cgroups = dict((k, v) for k, v in (step.get('cgroups') or {}).items() if os.path.isfile(os.path.join(v, 'cgroup.procs')))
    wait = step.get('wait_s') or 60
    deadline = time.time() + wait
    argv = [pg_ctl, 'start', '-D', pgdata, '-w', '-t', str(wait), '-l', step.get('log') or os.devnull]
    if step.get('options'):
        argv += ['-o', step['options']]
    while True:
        offset = _log_size(step.get('log'))
        # The old postmaster's children exit once they see it gone; until then its shared memory is in use.
        while _server.leftovers(pgdata) and time.time() < deadline:
            time.sleep(0.1)
        rc, out = _as_user(argv, account, cgroups, wait + 15)
        if _server.running(pgdata):
            return True
        said = ' '.join((out or '').split()) or '(no output)'
        logged = _log_since(step.get('log'), offset)
        if time.time() < deadline and any(mark in said + logged for mark in _START_BUSY):
            time.sleep(0.5)
            continue
        raise UndoError('the server in %s did not start: as %s: %s exited %s: %s%s' % (
            pgdata, account.pw_name, ' '.join(shlex.quote(a) for a in argv), rc, said,
            '; its log says: %s' % logged if logged else ''))


@_handler('pg_start', _check_pg_start)
def _undo_pg_start(step, ctx):
    """Start the PostgreSQL server again when it is down (pg_ctl or systemd); never when it runs."""
    if step['method'] == 'systemd':
        return _start_systemd(step, ctx)
    return _start_pg_ctl(step, ctx)


# -- lock holders (pggit_chaos_lock) ---------------------------------------
# The application_name of every lock holder session; the step ends no other backend.
LOCKER_APP_PREFIX = 'pggit-chaos-locker-'
TERMINATE_WAIT = 5.0


def _check_pg_terminate_backend(step, state_dir):
    app = step.get('application_name')
    if not isinstance(app, str) or not app.startswith(LOCKER_APP_PREFIX) or app == LOCKER_APP_PREFIX:
        return "application_name must be a lock holder's ('%s...'), got %r" % (LOCKER_APP_PREFIX, app)
    if not _is_int(step.get('pid')) or step['pid'] <= 0:
        return 'pid must be a backend pid (an integer above 0), got %r' % (step.get('pid'),)
    return _check_conn(step)


@_handler('pg_terminate_backend', _check_pg_terminate_backend)
def _undo_pg_terminate_backend(step, ctx):
    """End a lock holder's backend, found by pid, only while that pid still carries the holder's application_name.

    A pid that is gone, or now serves another session, is left alone (looked
    up in pg_stat_activity before and after)."""
    look = 'SELECT 1 FROM pg_stat_activity WHERE pid = %s AND application_name = %s'
    args = (step['pid'], step['application_name'])
    conn, cur = _pg_connect(step, ctx)
    try:
        cur.execute(look, args)
        if cur.fetchone() is None:
            return False
        cur.execute('SELECT pg_terminate_backend(%s)', (step['pid'],))
        deadline = time.time() + TERMINATE_WAIT
        while True:
            cur.execute(look, args)
            if cur.fetchone() is None:
                return True
            if time.time() > deadline:
                raise UndoError('backend %s (%s) is still there %gs after pg_terminate_backend'
                                % (step['pid'], step['application_name'], TERMINATE_WAIT))
            time.sleep(0.05)
    finally:
        conn.close()


# -- clock and settings (pggit_chaos_clock, pggit_chaos_setting) -----------
# What a pg_restart step may drop from the server's environment: the preload and libfaketime's variables only.
RESTART_DROP_RE = re.compile(r'^(LD_PRELOAD|FAKETIME[A-Z_]*)$')
SETTING_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$')


def _check_pg_restart(step, state_dir):
    names = step.get('unless_env_clean')
    if (not isinstance(names, list) or 'LD_PRELOAD' not in names or
            not all(isinstance(n, str) and RESTART_DROP_RE.match(n) for n in names)):
        return 'unless_env_clean must list LD_PRELOAD and FAKETIME* variable names only, got %r' % (names,)
    return _check_pg_start(step, state_dir)


@_handler('pg_restart', _check_pg_restart)
def _undo_pg_restart(step, ctx):
    """Restart the server without the faketime preload, only while its postmaster's environment holds it; start it when down.

    Decided by looking at /proc/<postmaster>/environ before and after: a
    server without a libfaketime LD_PRELOAD is left alone."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _restart, _server  # pylint: disable=import-outside-toplevel
    names = tuple(step['unless_env_clean'])
    if step['method'] == 'systemd':
        pid = _restart._server_pid_systemd(step)  # pylint: disable=protected-access
        if not pid:
            return _start_systemd(step, ctx)
        if not _restart.faketime_preload(_restart.environ_of(pid)):
            return False
        _restart.restart_step(step, None, names)
        return True
    pgdata = step['pgdata']
    if not _server.running(pgdata):
        return _start_pg_ctl(step, ctx)
    pid = _server.postmaster_pid(pgdata)
    env = _restart.environ_of(pid)
    if env is None:
        raise UndoError('cannot read /proc/%s/environ of the postmaster of %s: run as root or as its owner' % (pid, pgdata))
    if not _restart.faketime_preload(env):
        return False
    new_pid = _restart.restart_step(step, None, names, step.get('wait_s') or _restart.RESTART_WAIT_S)
    left = _restart.faketime_preload(_restart.environ_of(new_pid))
    if left:
        raise UndoError('postmaster %s of %s still has LD_PRELOAD %s after the restart' % (new_pid, pgdata, left))
    return True


def _check_pg_setting_restore(step, state_dir):
    settings = step.get('settings')
    if not isinstance(settings, dict) or not settings:
        return 'settings must be a non-empty dictionary of setting name -> previous value or null, got %r' % (settings,)
    for name, value in settings.items():
        if not isinstance(name, str) or not SETTING_NAME_RE.match(name):
            return 'setting names must be plain PostgreSQL setting names, got %r' % (name,)
        if value is not None and (not isinstance(value, str) or '\x00' in value):
            return 'setting %s: the previous value must be a string or null, got %r' % (name, value)
    return _check_conn(step)


AUTO_CONF_SQL = ("SELECT setting FROM pg_file_settings WHERE name = %s AND sourcefile LIKE '%%/postgresql.auto.conf' "
                 "ORDER BY seqno DESC LIMIT 1")


def auto_conf_value(cur, name):
    """The value ALTER SYSTEM holds for a setting (postgresql.auto.conf, via pg_file_settings), or None."""
    cur.execute(AUTO_CONF_SQL, (name,))
    row = cur.fetchone()
    return row[0] if row else None


def alter_system(cur, name, value):
    """ALTER SYSTEM SET name = 'value' (or RESET name when value is None); the name quoted as an identifier."""
    if value is None:
        cur.execute(_pgconn.sql.SQL('ALTER SYSTEM RESET {}').format(_pgconn.sql.Identifier(name)))
    else:
        cur.execute(_pgconn.sql.SQL('ALTER SYSTEM SET {} = {}').format(_pgconn.sql.Identifier(name), _pgconn.sql.Literal(value)))


@_handler('pg_setting_restore', _check_pg_setting_restore)
def _undo_pg_setting_restore(step, ctx):
    """Put the recorded ALTER SYSTEM values back (SET, or RESET for null), only where they differ; then reload."""
    conn, cur = _pg_connect(step, ctx)
    changed, failed = False, []
    try:
        for name in sorted(step['settings']):
            want = step['settings'][name]
            try:
                if auto_conf_value(cur, name) == want:
                    continue
                alter_system(cur, name, want)
                changed = True
                if auto_conf_value(cur, name) != want:
                    failed.append('%s: postgresql.auto.conf does not hold %r after ALTER SYSTEM' % (name, want))
            except _pgconn.psycopg2.Error as exc:
                failed.append('%s: %s' % (name, _pgconn.one_line(exc)))
        if changed:
            cur.execute('SELECT pg_reload_conf()')
    finally:
        conn.close()
    if failed:
        raise UndoError('settings not put back: %s' % '; '.join(failed))
    return changed


# -- records written by 0.1.0 ---------------------------------------------
def upgrade_steps(steps):
    """Translate the argv ``run`` steps of records written by release 0.1.0 into typed steps.

    0.1.0 recorded its iptables and tc undo as command lines (``-X``/``-F``/``-D``
    of a pggit-chaos chain, ``tc qdisc del ... root handle 7a3c:``). Such a record
    may still be on a host after an upgrade, a partition whose old reaper gave
    up, say; it must still revert.  Exactly those command lines become
    ``iptables_chain`` and ``tc_qdisc`` steps; any other ``run`` step is left as
    it is, and check_steps refuses it."""
    if not isinstance(steps, list) or not any(isinstance(s, dict) and s.get('type') == 'run' for s in steps):
        return steps
    upgraded, hooks, chains = [], {}, []
    for step in steps:
        argv = step.get('argv') if isinstance(step, dict) and step.get('type') == 'run' else None
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or not argv:
            upgraded.append(step)
            continue
        tool, args = os.path.basename(argv[0]), argv[1:]
        if tool == 'iptables' and args[:1] == ['-w'] and len(args) == 3 and args[1] in ('-X', '-F'):
            if args[2] not in chains:
                chains.append(args[2])
        elif tool == 'iptables' and args[:2] == ['-w', '-D'] and len(args) == 5 and args[3] == '-j':
            hooks[args[4]] = args[2]
            if args[4] not in chains:
                chains.append(args[4])
        elif tool == 'tc' and len(args) == 7 and args[:3] == ['qdisc', 'del', 'dev'] and args[4:6] == ['root', 'handle']:
            upgraded.append({'type': 'tc_qdisc', 'interface': args[3], 'handle': args[6]})
        else:
            upgraded.append(step)
    for chain in chains:
        upgraded.append({'type': 'iptables_chain', 'chain': chain, 'hook': hooks.get(chain, 'INPUT' if chain.endswith('-in') else 'OUTPUT')})
    return upgraded


# -- checking and running -------------------------------------------------
def describe_step(step):
    """A short name for a step in messages: its type and what it acts on."""
    if not isinstance(step, dict):
        return repr(step)
    what = (step.get('chain') or step.get('interface') or step.get('schema') or step.get('path') or step.get('pgdata') or
            step.get('unit') or step.get('match') or '')
    return ('%s %s' % (step.get('type'), what)).strip()


def check_steps(steps, state_dir):
    """Raise UndoError unless every step is something our faults write.

    A record is data run as root by the reaper and the red button: a forged
    or damaged one must never run.  ``state_dir`` is the ledger's state dir
    (files inside it may be removed).
    """
    if steps is None:
        return
    if not isinstance(steps, list):
        raise UndoError('undo must be a list of steps, got %r' % (steps,))
    for number, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise UndoError('undo step %d is not a step: %r' % (number, step))
        kind = step.get('type')
        if not isinstance(kind, str) or kind not in STEP_HANDLERS:
            raise UndoError('undo step %d: unknown type %r; known types: %s' % (number, kind, ', '.join(sorted(STEP_HANDLERS))))
        check = STEP_CHECKS.get(kind)
        problem = check(step, state_dir) if check else None
        if problem:
            raise UndoError('undo step %d (%s) refused: %s' % (number, kind, problem))


def _reason(exc):
    text = _pgconn.one_line(exc)
    return text if isinstance(exc, UndoError) else '%s: %s' % (exc.__class__.__name__, text)


def run_steps(steps, ctx):
    """Check every step, then run them all in reverse order of application.

    A failing step does not stop the others (triggers come back even when a
    schema cannot be dropped); every failure is then raised as one
    UndoError.  Returns changed.
    """
    ctx = ctx or {}
    check_steps(steps, ctx.get('state_dir'))
    steps = steps or []
    changed, failures = False, []
    for number in range(len(steps), 0, -1):
        step = steps[number - 1]
        try:
            changed = bool(STEP_HANDLERS[step['type']](step, ctx)) or changed
        except Exception as exc:  # pylint: disable=broad-except
            failures.append('step %d (%s): %s' % (number, describe_step(step), _reason(exc)))
    if failures:
        raise UndoError('%d of %d undo steps failed (the others ran): %s' % (len(failures), len(steps), '; '.join(failures)))
    return changed
