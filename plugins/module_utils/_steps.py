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
from stat import S_ISREG

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
GROUP_MEMBERS = ('stress-ng', 'pgbench')
# Disk-fill files: the only files outside the state dir an undo may remove.
FILL_FILE_RE = re.compile(r'^\.pggit-chaos-fill-[A-Za-z0-9_.-]+$')
_CHAIN_RE = re.compile(r'^pggit-chaos-[A-Za-z0-9_-]+$')
_INTERFACE_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}$')


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
    """The fields of /proc/<pid>/stat after the command name (state [0], ppid [1], pgrp [2], session [3], starttime [19]), or None."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            fields = handle.read().rsplit(')', 1)[-1].split()
    except (IOError, OSError, ValueError):
        return None
    return fields if len(fields) > 19 else None


def proc_real_uid(pid):
    """The real uid of a process (the first figure of the Uid line of /proc/<pid>/status), or None."""
    try:
        with open('/proc/%d/status' % int(pid)) as handle:
            for line in handle:
                if line.startswith('Uid:'):
                    return int(line.split()[1])
    except (IOError, OSError, ValueError, IndexError):
        return None
    return None


def group_members(pgid, members_match, since=None):
    """[(pid, starttime)] of live processes in process group pgid whose command line holds members_match.

    ``since``: the group leader's start time; a member never started before its
    leader, so older processes in a group of that id (pid reuse) are not ours.
    A member must also run as root (real uid 0: our stress program does) and
    be in the session the group leads (session id == pgid: the program is a
    session leader), so a user's process in a group of a recycled id, even one
    named like stress-ng (``exec -a``), is never one."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue  # never itself: the stress program sweeps its own group with this
        fields = _stat_fields(entry)
        if fields is None or fields[0] in ('Z', 'X') or int(fields[2]) != int(pgid) or int(fields[3]) != int(pgid):
            continue
        if since is not None and int(fields[19]) < int(since):
            continue
        if members_match in proc_cmdline(int(entry)) and proc_real_uid(int(entry)) == 0:
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
                    % (pgid, members_match, ' '.join(str(member[0]) for member in members)))


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
    return _pgconn.revert_session(params)  # a revert must not wait forever on a busy table (it holds the ledger lock)


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
# How a pg_start step starts a server; 'manager' (Patroni and the like run it) starts nothing, it only looks.
PG_START_METHODS = ('pg_ctl', 'systemd')
PG_START_MANAGER = 'manager'
MANAGER_MAX = 200
# Files of a data directory (postmaster.pid, postmaster.opts, the log) are read at most this much.
DATA_FILE_MAX = 65536
_UNIT_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9@._:\\-]*\.service$')
# What a postmaster says while the old one's children still hold its shared memory or lock file.
_START_BUSY = ('pre-existing shared memory block', 'is still in use', 'lock file', 'another server might be running')
PG_START_WAIT_MAX = 3600


def proc_state(pid):
    """The state letter of a process (R, S, D, T, t, Z...), or None when it is gone."""
    fields = _stat_fields(pid)
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


def read_regular(path, limit=DATA_FILE_MAX, owner_uid=None, offset=None):
    """Bytes of a regular file (at most limit), or None when it is missing or refused; never blocks, never follows a link.

    Files in a data directory (postmaster.pid, postmaster.opts, the server's
    log) belong to the server's owner, while root reads them holding the
    ledger lock: a FIFO planted there would block the reaper forever, a link
    to /etc/shadow would leak it into messages.  So it opens with O_NOFOLLOW
    and O_NONBLOCK, and reads only a regular file (owned by ``owner_uid`` when
    given).  ``offset``: read the end of the file after offset (a log's
    tail: the last ``limit`` bytes); None reads from the start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0))
    except (OSError, TypeError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not S_ISREG(info.st_mode) or (owner_uid is not None and info.st_uid != owner_uid):
            return None
        if offset is not None:
            os.lseek(fd, max(int(offset), info.st_size - limit, 0), os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b''.join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _check_pg_start_step(step, state_dir):
    """pg_start's own check: the restartable methods, or 'manager' (start nothing, look whether the server is back)."""
    if step.get('method') != PG_START_MANAGER:
        return _check_pg_start(step, state_dir)
    manager = step.get('manager')
    if not isinstance(manager, str) or not manager.strip() or len(manager) > MANAGER_MAX or '\n' in manager or '\x00' in manager:
        return 'manager must name the program that manages the server (one line, at most %d characters), got %r' % (MANAGER_MAX, manager)
    pgdata = step.get('pgdata')
    if not _plain_path(pgdata) or os.path.normpath(pgdata) == '/':
        return 'pgdata must be an absolute data directory, got %r' % (pgdata,)
    return None


def _check_pg_start(step, state_dir):
    """A step that starts (or restarts) a server: pg_ctl or systemd; never a server another program manages."""
    method = step.get('method')
    if method == PG_START_MANAGER:
        return ('the server in %s is managed by %s: pggit.chaos never starts or restarts it itself'
                % (step.get('pgdata'), step.get('manager')))
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
        info = os.lstat(path) if path else None
    except OSError:
        return 0
    return info.st_size if info is not None and S_ISREG(info.st_mode) else 0


def _log_since(path, offset, owner_uid=None, size=1500):
    """What a log got after offset (the last size bytes of it), as one line.

    Only a regular file of the server's owner (``owner_uid``), read without
    following links or blocking (:func:`read_regular`): a log swapped for a
    link or a FIFO says nothing."""
    if not path:
        return ''
    data = read_regular(path, size, owner_uid, offset=offset)
    return ' '.join(data.decode('utf-8', 'replace').split()) if data else ''


def _as_user(argv, account, cgroups, timeout, env=None):
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

    full = {'PATH': '/usr/bin:/bin', 'HOME': account.pw_dir or '/', 'USER': account.pw_name, 'LOGNAME': account.pw_name}
    for name in ('LANG', 'LC_ALL', 'TZ'):
        if os.environ.get(name):
            full[name] = os.environ[name]
    full.update(env or {})
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd='/', env=full,
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


def _start_pg_ctl(step, ctx, env=None):
    """pg_ctl start as the data directory's owner, in the recorded cgroups, when the server is down; confirm it runs.

    ``env`` is added to the plain environment (the clock fault's restart passes its preload, or the old one's)."""
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
        rc, out = _as_user(argv, account, cgroups, wait + 15, env)
        if _server.running(pgdata):
            return True
        said = ' '.join((out or '').split()) or '(no output)'
        logged = _log_since(step.get('log'), offset, account.pw_uid)
        if time.time() < deadline and any(mark in said + logged for mark in _START_BUSY):
            time.sleep(0.5)
            continue
        raise UndoError('the server in %s did not start: as %s: %s exited %s: %s%s' % (
            pgdata, account.pw_name, ' '.join(shlex.quote(a) for a in argv), rc, said,
            '; its log says: %s' % logged if logged else ''))


def _start_manager(step, ctx):
    """A server another program manages (Patroni...): start nothing; say whether it is back. Never an error."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _server  # pylint: disable=import-outside-toplevel
    back = _server.running(step['pgdata'])
    ctx.setdefault('notes', []).append('the server in %s is %s; %s manages it: pggit.chaos started nothing' % (
        step['pgdata'], 'running' if back else 'not running (yet)', step['manager']))
    return False


@_handler('pg_start', _check_pg_start_step)
def _undo_pg_start(step, ctx):
    """Start the PostgreSQL server again when it is down (pg_ctl or systemd); never when it runs, never a managed one."""
    if step['method'] == PG_START_MANAGER:
        return _start_manager(step, ctx)
    if step['method'] == 'systemd':
        return _start_systemd(step, ctx)
    return _start_pg_ctl(step, ctx)


# -- manual failover (pggit_chaos_failover) -------------------------------
def _check_pg_converge(step, state_dir):
    from ansible_collections.pggit.chaos.plugins.module_utils import _failover  # pylint: disable=import-outside-toplevel
    return _failover.check_step(step, state_dir)


@_handler('pg_converge', _check_pg_converge)
def _undo_pg_converge(step, ctx):
    """Converge a (half-done) manual failover: one primary, every other member streaming from it (see _failover)."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _failover  # pylint: disable=import-outside-toplevel
    return _failover.undo_converge(step, ctx)


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
    original = step.get('ld_preload')
    if original is not None and (not isinstance(original, str) or '\x00' in original or any(
            not os.path.isabs(e) or 'libfaketime' in os.path.basename(e) for e in re.split(r'[:\s]+', original) if e)):
        return 'ld_preload must be the original LD_PRELOAD (absolute paths, no libfaketime) or null, got %r' % (original,)
    return _check_pg_start(step, state_dir)


def _restore_env(step):
    """(env, drop): the recorded original LD_PRELOAD put back, the faketime variables dropped."""
    names = tuple(step['unless_env_clean'])
    if step.get('ld_preload'):
        return {'LD_PRELOAD': step['ld_preload']}, names
    return None, names


@_handler('pg_restart', _check_pg_restart)
def _undo_pg_restart(step, ctx):
    """Restart the server without the faketime preload, only while its postmaster's environment holds it; start it when down.

    Decided by looking at /proc/<postmaster>/environ before and after: a
    server without a libfaketime LD_PRELOAD is left alone.  An LD_PRELOAD the
    server had before the fault (``ld_preload``) is put back as it was."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _restart, _server  # pylint: disable=import-outside-toplevel
    restore, names = _restore_env(step)
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
    new_pid = _restart.restart_step(step, restore, names, step.get('wait_s') or _restart.RESTART_WAIT_S)
    left = _restart.faketime_preload(_restart.environ_of(new_pid))
    if left:
        raise UndoError('postmaster %s of %s still has LD_PRELOAD %s after the restart' % (new_pid, pgdata, left))
    return True


def _check_clock_dir_restore(step, state_dir):
    mode = step.get('mode')
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        return 'mode must be a file mode (0 to 0o7777), got %r' % (mode,)
    if not state_dir or not isinstance(step.get('state_dir'), str) or os.path.normpath(step['state_dir']) != os.path.normpath(state_dir):
        return 'state_dir must be the ledger\'s state dir %r, got %r' % (state_dir, step.get('state_dir'))
    return None


@_handler('clock_dir_restore', _check_clock_dir_restore)
def _undo_clock_dir_restore(step, ctx):
    """Once no clock fault's timestamp file is left: remove <state_dir>/clock and give the state dir its mode back.

    The mode comes back only while the state dir has the recorded mode plus
    the search bits the clock fault added (nobody changed it since)."""
    state_dir = step['state_dir']
    folder = os.path.join(state_dir, 'clock')
    changed = False
    if os.path.isdir(folder) and not os.path.islink(folder):
        if os.listdir(folder):
            return False  # another clock fault still needs the folder and the search bit
        os.rmdir(folder)
        changed = True
    try:
        now = os.stat(state_dir).st_mode & 0o7777
    except OSError:
        return changed
    if now != step['mode'] and now == step['mode'] | 0o011:
        os.chmod(state_dir, step['mode'])
        changed = True
    return changed


def _check_pg_setting_restore(step, state_dir):
    settings = step.get('settings')
    if not isinstance(settings, dict) or not settings:
        return 'settings must be a non-empty dictionary of setting name -> previous value or null, got %r' % (settings,)
    for name, value in settings.items():
        if not isinstance(name, str) or not SETTING_NAME_RE.match(name):
            return 'setting names must be plain PostgreSQL setting names, got %r' % (name,)
        if value is not None and (not isinstance(value, str) or '\x00' in value):
            return 'setting %s: the previous value must be a string or null, got %r' % (name, value)
    applied = step.get('applied')
    if applied is not None and (not isinstance(applied, dict) or set(applied) - set(settings) or not all(
            isinstance(v, str) and '\x00' not in v for v in applied.values())):
        return "applied must map the step's settings to the fault's own values (strings), got %r" % (applied,)
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
    """Put the recorded ALTER SYSTEM values back (SET, or RESET for null), only where they differ; then reload.

    Only while postgresql.auto.conf still holds the fault's own value
    (``applied``): a value someone set during the fault is left, with a note."""
    conn, cur = _pg_connect(step, ctx)
    changed, failed = False, []
    applied = step.get('applied') or {}
    try:
        for name in sorted(step['settings']):
            want = step['settings'][name]
            try:
                now = auto_conf_value(cur, name)
                if now == want:
                    continue
                if name in applied and now != applied[name]:
                    ctx.setdefault('notes', []).append(
                        '%s: postgresql.auto.conf holds %r, not the fault\'s %r: someone set it during the fault, so it was left '
                        'as it is (not put back to %r)' % (name, now, applied[name], want))
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


# -- index pages (pggit_chaos_corrupt) ------------------------------------
PAGE_SIZE = 8192
SEGMENT_BLOCKS = 131072
# Where saved pages live, inside the state dir.
PAGES_DIR = 'pages'
# Scratch tablespaces a corrupt fault creates (in place, inside the data directory) to make the server read a page from disk.
SCRATCH_TABLESPACE_PREFIX = 'pggit_chaos_'
# The only schema whose indexes a corrupt fault damages, restores or rebuilds.
CORRUPT_SCHEMA = 'pggit'
# A relation file under a data directory: base/<db>/<filenode>[.<segment>], or pg_tblspc/<oid>/PG_<version>/<db>/<filenode>
# [.<segment>] of an in-place tablespace.  Never global/ (the shared catalogs).
RELATION_FILE_RE = re.compile(r'^(?:base/\d+|pg_tblspc/\d+/PG_[0-9A-Za-z_.]+/\d+)/(\d+)(?:\.(\d+))?$')
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_PG_NAME_RE = re.compile(r'^[^\x00]{1,63}$')
REINDEX_TIMEOUT_S = 3600
# How long REINDEX INDEX CONCURRENTLY (and a corrupt fault's lock waits) may wait for one lock.
REINDEX_LOCK_TIMEOUT_S = 120


def relation_file_problem(relative, block=None, offset=None):
    """None when ``relative`` (relative to a data directory) names a relation file and, when given, ``offset`` in it is where
    ``block`` of the relation lives; else why not."""
    match = RELATION_FILE_RE.match(relative) if isinstance(relative, str) else None
    if not match:
        return ('%r is not a relation file under the data directory (base/<db>/<filenode> or pg_tblspc/<oid>/PG_*/<db>/<filenode>)'
                % (relative,))
    if block is None:
        return None
    segment = int(match.group(2) or 0)
    if block // SEGMENT_BLOCKS != segment or offset != (block % SEGMENT_BLOCKS) * PAGE_SIZE:
        return 'block %s is not at offset %s of segment %s (%s)' % (block, offset, segment, relative)
    return None


def _inside(path, folder):
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip('/') + '/')


def _check_index_name(step):
    index = step.get('index')
    if not isinstance(index, str) or not index.startswith(CORRUPT_SCHEMA + '.') or not _PG_NAME_RE.match(index[len(CORRUPT_SCHEMA) + 1:]):
        return "index must be an index of schema %s ('%s.<name>'), got %r" % (CORRUPT_SCHEMA, CORRUPT_SCHEMA, index)
    return _check_conn(step)


def _index_ident(step):
    return _pgconn.sql.Identifier(CORRUPT_SCHEMA, step['index'][len(CORRUPT_SCHEMA) + 1:])


def _check_restore_page(step, state_dir):
    data = step.get('data_directory')
    if not _plain_path(data) or os.path.normpath(data) == '/':
        return 'data_directory must be an absolute data directory, got %r' % (data,)
    path = step.get('path')
    if not _plain_path(path):
        return 'path must be an absolute path, got %r' % (path,)
    relative = os.path.relpath(os.path.normpath(path), os.path.normpath(data))
    for name in ('block', 'offset'):
        if not _is_int(step.get(name)) or step[name] < 0:
            return '%s must be an integer >= 0, got %r' % (name, step.get(name))
    if step['block'] < 1:
        return 'block must be 1 or more (block 0 is the metapage, never damaged), got %r' % (step['block'],)
    if step['offset'] % PAGE_SIZE:
        return 'offset must be a multiple of %d, got %r' % (PAGE_SIZE, step['offset'])
    problem = relation_file_problem(relative, step['block'], step['offset'])
    if problem:
        return 'refusing to write into %s: %s' % (path, problem)
    if not _inside(path, data):
        return 'refusing to write into %s: it is not under the data directory %s once links are resolved' % (path, data)
    saved = step.get('saved')
    if not _plain_path(saved):
        return 'saved must be an absolute path, got %r' % (saved,)
    if not state_dir or not _inside(saved, os.path.join(state_dir, PAGES_DIR)):
        return 'saved %s must be in the state dir (%s/%s)' % (saved, state_dir, PAGES_DIR)
    for name in ('sha256', 'damaged_sha256'):
        if not isinstance(step.get(name), str) or not _SHA256_RE.match(step[name]):
            return '%s must be a sha256 in lowercase hex, got %r' % (name, step.get(name))
    if step['sha256'] == step['damaged_sha256']:
        return 'sha256 and damaged_sha256 are the same: nothing was damaged'
    file_id = step.get('file_id')
    if file_id is not None and (not isinstance(file_id, list) or len(file_id) != 2 or not all(_is_int(v) and v >= 0 for v in file_id)):
        return 'file_id must be [st_dev, st_ino] of the damaged file, got %r' % (file_id,)
    if not isinstance(step.get('standby', False), bool):
        return 'standby must be true or false, got %r' % (step.get('standby'),)
    start = step.get('start')
    if not isinstance(start, dict) or start.get('type') != 'pg_start':
        return 'start must be a pg_start step, got %r' % (start,)
    problem = _check_pg_start(start, state_dir)
    if problem:
        return 'start: %s' % problem
    return _check_index_name(step)


def _open_data_file(path, flags, owner_uid=None, file_id=None):
    """(fd, fstat) of a regular file under a data directory, opened never through a link and never blocking (a FIFO
    planted by the server's owner must not hang the revert with the ledger lock held); UndoError when it is not a
    regular file, not owned by ``owner_uid`` or, when ``file_id`` ([st_dev, st_ino]) is given, not that very file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0))
    try:
        info = os.fstat(fd)
        if not S_ISREG(info.st_mode):
            raise UndoError('%s is not a regular file: not used' % path)
        if owner_uid is not None and info.st_uid != owner_uid:
            raise UndoError('%s belongs to uid %d, not to the data directory owner (uid %d): not used' % (path, info.st_uid, owner_uid))
        if file_id is not None and [info.st_dev, info.st_ino] != list(file_id):
            raise UndoError('%s is not the file the fault damaged (device/inode %s, recorded %s): it was replaced; not written'
                            % (path, [info.st_dev, info.st_ino], list(file_id)))
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def file_identity(path, owner_uid=None):
    """[st_dev, st_ino] of a regular data file (checked as _open_data_file does), or None when it is gone or refused."""
    try:
        fd, info = _open_data_file(path, os.O_RDONLY, owner_uid)
    except (OSError, UndoError):
        return None
    os.close(fd)
    return [info.st_dev, info.st_ino]


def data_owner(data_directory):
    """The uid owning a data directory, from lstat (a link there is not followed)."""
    return os.lstat(data_directory).st_uid


def read_page(path, offset, owner_uid=None):
    """The 8 kB at offset of a regular file, or None when the file is gone, too short or refused (not a regular file,
    another owner); never through a link, never blocking."""
    try:
        fd, _info = _open_data_file(path, os.O_RDONLY, owner_uid)
    except (OSError, UndoError):
        return None
    try:
        page = os.pread(fd, PAGE_SIZE, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    return page if len(page) == PAGE_SIZE else None


def write_page(path, offset, page, owner_uid=None, file_id=None):
    """Write 8 kB at offset of an existing regular file (never created, never through a link, never blocking on a FIFO;
    only the very file ``file_id`` names when given), fsync, read back through the same descriptor."""
    import fcntl  # pylint: disable=import-outside-toplevel
    if len(page) != PAGE_SIZE:
        raise UndoError('refusing to write %d bytes: a page is %d' % (len(page), PAGE_SIZE))
    fd, info = _open_data_file(path, os.O_RDWR, owner_uid, file_id)
    try:
        if info.st_size < offset + PAGE_SIZE:
            raise UndoError('%s holds %d bytes: no page at offset %d to write' % (path, info.st_size, offset))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if os.pwrite(fd, page, offset) != PAGE_SIZE:
            raise UndoError('short write into %s at offset %d' % (path, offset))
        os.fsync(fd)
        if os.pread(fd, PAGE_SIZE, offset) != page:
            raise UndoError('%s at offset %d does not hold the written page afterwards' % (path, offset))
    finally:
        os.close(fd)


def same_damage(page, damaged):
    """True when ``page`` is the ``damaged`` page, pd_lsn and pd_checksum aside (a copy by ALTER INDEX ... SET TABLESPACE
    gives the page a new LSN and checksum)."""
    return page is not None and damaged is not None and len(page) == len(damaged) == PAGE_SIZE and page[10:] == damaged[10:]


def _sha(data):
    import hashlib  # pylint: disable=import-outside-toplevel
    return hashlib.sha256(data).hexdigest()


def _read_saved(path):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0))
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, PAGE_SIZE + 1)
    finally:
        os.close(fd)


def server_stop(start, ctx):
    """Stop the server a pg_start step describes (pg_ctl stop -m fast as its owner, or systemctl stop); returns
    (stopped, environment of the old postmaster or None)."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _restart, _server  # pylint: disable=import-outside-toplevel
    if start['method'] == 'systemd':
        systemctl = find_bin('systemctl')
        rc, out, err = _run(ctx, [systemctl, 'is-active', start['unit']])
        if rc != 0 or out.strip() != 'active':
            return False, None
        argv = [systemctl, 'stop', start['unit']]
        rc, out, err = _run(ctx, argv)
        if rc != 0:
            raise UndoError('could not stop the server: %s' % _said(argv, rc, out, err))
        return True, None
    pgdata = start['pgdata']
    pid = _server.postmaster_pid(pgdata) if _server.running(pgdata) else None
    env = _restart.environ_of(pid) if pid else None
    return _restart.stop(start, start.get('wait_s') or _restart.RESTART_WAIT_S), env


def server_start(start, env, ctx):
    """Start it again, as pg_start does, with the environment it had (a clock fault's preload stays)."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _restart  # pylint: disable=import-outside-toplevel
    if start['method'] == 'systemd' or env is None:
        return _undo_pg_start(start, ctx)
    return _restart.start(start, _restart.start_env(env), start.get('wait_s') or _restart.RESTART_WAIT_S)


# Leftovers of a failed REINDEX INDEX CONCURRENTLY of <index>: invalid indexes <index>_ccnew[N] and <index>_ccold[N].
LEFTOVER_INDEXES_SQL = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND NOT i.indisvalid AND (left(c.relname, length(%s) + 6) IN (%s || '_ccnew', %s || '_ccold')) "
    "AND i.indrelid = (SELECT x.indrelid FROM pg_index x JOIN pg_class xc ON xc.oid = x.indexrelid "
    "JOIN pg_namespace xn ON xn.oid = xc.relnamespace WHERE xn.nspname = %s AND xc.relname = %s)")


def drop_reindex_leftovers(cur, name):
    """DROP INDEX CONCURRENTLY of the invalid <name>_ccnew*/_ccold* indexes a failed REINDEX CONCURRENTLY of pgGit index
    ``name`` left on its table; returns (dropped names, failures)."""
    cur.execute(LEFTOVER_INDEXES_SQL, (CORRUPT_SCHEMA, name, name, name, CORRUPT_SCHEMA, name))
    dropped, failed = [], []
    for (leftover,) in cur.fetchall():
        drop = _pgconn.sql.SQL('DROP INDEX CONCURRENTLY IF EXISTS {}').format(_pgconn.sql.Identifier(CORRUPT_SCHEMA, leftover))
        try:
            cur.execute(drop)
            dropped.append(leftover)
        except _pgconn.psycopg2.Error as exc:
            failed.append('%s: %s' % (drop.as_string(cur), _pgconn.one_line(exc)))
    return dropped, failed


def reindex(step, ctx, timeout_s=REINDEX_TIMEOUT_S):
    """REINDEX INDEX CONCURRENTLY of the step's pgGit index, as a DBA would; False when the index is gone.

    Its lock waits (behind long transactions) are bounded by REINDEX_LOCK_TIMEOUT_S, not the 5 s of other revert steps;
    when it fails, the invalid <index>_ccnew*/_ccold* it left are dropped (each retry would add one more)."""
    conn, cur = _pg_connect(step, ctx)
    try:
        name = step['index'][len(CORRUPT_SCHEMA) + 1:]
        cur.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                    "AND c.relkind = 'i'", (CORRUPT_SCHEMA, name))
        if cur.fetchone() is None:
            return False
        cur.execute('SET statement_timeout = %s', (int(timeout_s) * 1000,))
        cur.execute('SET lock_timeout = %s', (REINDEX_LOCK_TIMEOUT_S * 1000,))
        statement = _pgconn.sql.SQL('REINDEX INDEX CONCURRENTLY {}').format(_index_ident(step))
        try:
            cur.execute(statement)
        except _pgconn.psycopg2.Error as exc:
            why = _pgconn.one_line(exc)
            try:
                dropped, failed = drop_reindex_leftovers(cur, name)
            except _pgconn.psycopg2.Error as exc2:
                dropped, failed = [], ['listing them: %s' % _pgconn.one_line(exc2)]
            raise UndoError('%s failed: %s; invalid leftovers dropped: %s%s' % (
                statement.as_string(cur), why, ', '.join(dropped) or 'none',
                '; not dropped: %s' % '; '.join(failed) if failed else ''))
        return True
    finally:
        conn.close()


@_handler('restore_page', _check_restore_page)
def _undo_restore_page(step, ctx):
    """Put the saved original bytes of a damaged index page back, byte for byte, and make the server read them.

    Decided by looking at the page in the file: the original already -> done;
    the damaged page we wrote -> stop the server (a fast stop writes what it
    holds), look again, write the original while it is down (only into the very
    file recorded, ``file_id``), start it again (a server that reads from disk
    again forgets the damage).  A page that is neither (written into since, or
    the file replaced by a rebuild or a move) cannot take the old bytes without
    losing what was written since: the index is rebuilt instead (REINDEX INDEX
    CONCURRENTLY); on a standby (``standby``), where nothing can be rebuilt, such
    a page was changed by the replay of the primary's WAL, which is the
    primary's page: done, with a note.  The saved file goes last, once the page
    is right."""
    path, offset = step['path'], step['offset']
    owner = data_owner(step['data_directory'])
    page = read_page(path, offset, owner)
    standby = bool(step.get('standby'))
    saved = _read_saved(step['saved'])
    if saved is None:
        if page is None or _sha(page) != step['damaged_sha256']:
            return False  # never written (the damage follows the save), or already restored
        if standby:
            raise UndoError('%s still holds the damaged page and the saved original %s is gone; on a standby nothing can '
                            'rebuild the index: rebuild it on the primary, or re-create the standby' % (path, step['saved']))
        reindex(step, ctx)  # the original bytes are lost (removed by hand?): a rebuild is right whatever the index holds
        return True
    if len(saved) != PAGE_SIZE or _sha(saved) != step['sha256']:
        raise UndoError('the saved page %s is not the recorded original (sha256 %s): nothing was written; rebuild the index '
                        'with REINDEX INDEX %s' % (step['saved'], step['sha256'], step['index']))
    file_id = step.get('file_id')
    changed, rebuild = False, False
    if page is not None and _sha(page) == step['sha256']:
        pass
    elif page is not None and _sha(page) == step['damaged_sha256']:
        stopped, env = server_stop(step['start'], ctx)
        try:
            page = read_page(path, offset, owner)  # after the stop: what the server held is on disk now
            if page is not None and _sha(page) == step['damaged_sha256']:
                write_page(path, offset, saved, owner, file_id)
            elif page is None or _sha(page) != step['sha256']:
                rebuild = True
        finally:
            if stopped:
                server_start(step['start'], env, ctx)
        changed = True
    else:
        rebuild = True
    if rebuild and standby:
        ctx.setdefault('notes', []).append(
            'block %s of %s on this standby is no longer the damaged page (the replay of the primary\'s WAL wrote it since): '
            'left as the primary made it' % (step['block'], step['index']))
    elif rebuild:
        reindex(step, ctx)
        changed = True
    try:
        os.unlink(step['saved'])
    except FileNotFoundError:
        pass
    return changed


def _check_pg_reindex(step, state_dir):
    return _check_index_name(step)


@_handler('pg_reindex', _check_pg_reindex)
def _undo_pg_reindex(step, ctx):
    """REINDEX INDEX CONCURRENTLY of a damaged pgGit index while it exists.

    A rebuild from the table is right whatever the index holds, so running it
    again (a retried revert) only costs its time; the file that was damaged
    cannot tell whether it was rebuilt since, because a reveal by tablespace
    gives the index a new file too."""
    return reindex(step, ctx)


def _check_pg_scratch_tablespace(step, state_dir):
    name = step.get('tablespace')
    if not isinstance(name, str) or not name.startswith(SCRATCH_TABLESPACE_PREFIX) or not _PG_NAME_RE.match(name) \
            or name == SCRATCH_TABLESPACE_PREFIX:
        return "tablespace must be a scratch tablespace of ours ('%s...'), got %r" % (SCRATCH_TABLESPACE_PREFIX, name)
    home = step.get('home')
    if not isinstance(home, str) or not _PG_NAME_RE.match(home) or home.startswith(SCRATCH_TABLESPACE_PREFIX):
        return 'home must name the tablespace the index lives in, got %r' % (home,)
    return _check_index_name(step)


@_handler('pg_scratch_tablespace', _check_pg_scratch_tablespace)
def _undo_pg_scratch_tablespace(step, ctx):
    """Move the index back home when it is in the scratch tablespace, then drop the scratch tablespace when it exists."""
    conn, cur = _pg_connect(step, ctx)
    changed = False
    try:
        cur.execute('SET statement_timeout = %s', (REINDEX_TIMEOUT_S * 1000,))
        cur.execute("SELECT t.spcname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE n.nspname = %s AND c.relname = %s",
                    (CORRUPT_SCHEMA, step['index'][len(CORRUPT_SCHEMA) + 1:]))
        row = cur.fetchone()
        if row is not None and row[0] == step['tablespace']:
            move = _pgconn.sql.SQL('ALTER INDEX {} SET TABLESPACE {}').format(_index_ident(step), _pgconn.sql.Identifier(step['home']))
            try:
                cur.execute(move)
            except _pgconn.psycopg2.Error as exc:
                raise UndoError('%s failed: %s' % (move.as_string(cur), _pgconn.one_line(exc)))
            changed = True
        cur.execute('SELECT 1 FROM pg_tablespace WHERE spcname = %s', (step['tablespace'],))
        if cur.fetchone() is not None:
            drop = _pgconn.sql.SQL('DROP TABLESPACE {}').format(_pgconn.sql.Identifier(step['tablespace']))
            try:
                cur.execute(drop)
            except _pgconn.psycopg2.Error as exc:
                raise UndoError('%s failed: %s' % (drop.as_string(cur), _pgconn.one_line(exc)))
            changed = True
    finally:
        conn.close()
    return changed


# -- host loss (pggit_chaos_host): thaw a frozen host, start its manager again --
def _check_cgroup_thaw(step, state_dir):
    from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss  # pylint: disable=import-outside-toplevel
    return _hostloss.check_thaw_step(step)


@_handler('cgroup_thaw', _check_cgroup_thaw)
def _undo_cgroup_thaw(step, ctx):
    """Thaw the recorded freezer cgroups (v1 freezer.state THAWED, v2 cgroup.freeze 0) that are not thawed; confirm."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss  # pylint: disable=import-outside-toplevel
    return _hostloss.thaw(step['version'], step['paths'])


def _check_manager_start(step, state_dir):
    from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss  # pylint: disable=import-outside-toplevel
    return _hostloss.check_manager_start(step)


@_handler('manager_start', _check_manager_start)
def _undo_manager_start(step, ctx):
    """Start a killed manager (Patroni...) again as it ran, unless it is back; see _hostloss.manager_start."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss  # pylint: disable=import-outside-toplevel
    return _hostloss.manager_start(step, ctx)


# -- connection_exhaustion (pggit_chaos_sessions): its role may log in only inside a fault's life --
def _check_role_nologin(step, state_dir):
    from ansible_collections.pggit.chaos.plugins.module_utils import _holder  # pylint: disable=import-outside-toplevel
    return _holder.check_nologin_step(step, state_dir)


@_handler('pg_role_nologin', _check_role_nologin)
def _undo_role_nologin(step, ctx):
    """Set our marked role NOLOGIN (password dropped) once no other fault in the ledger uses it; see _holder.role_nologin."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _holder  # pylint: disable=import-outside-toplevel
    return _holder.role_nologin(step, ctx)


# -- load_spike (pggit_chaos_load): a cut initialisation's sessions end with the fault -------------------
def _check_load_init(step, state_dir):
    from ansible_collections.pggit.chaos.plugins.module_utils import _pgbench  # pylint: disable=import-outside-toplevel
    return _pgbench.check_init_step(step, state_dir)


@_handler('pg_end_load_init', _check_load_init)
def _undo_load_init(step, ctx):
    """End what is left of a load's initialisation in the server (its primary keys' index build); see _pgbench.end_init."""
    from ansible_collections.pggit.chaos.plugins.module_utils import _pgbench  # pylint: disable=import-outside-toplevel
    return _pgbench.end_init(step, ctx)


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
