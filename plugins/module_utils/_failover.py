# Copyright: pggit.chaos contributors
# MIT License
"""Manual failover of a streaming cluster that no HA manager runs: promote, repoint, rejoin, fail back, converge.

``pggit_chaos_failover`` runs on the OLD primary's host, whose ledger holds the
record; its one undo step, ``pg_converge``, is run by the revert and by the
TTL reaper from that host, without the controller.  From there the other
members are reached with SQL only (libpq): a promotion is ``pg_promote()``, a
repoint ``ALTER SYSTEM SET primary_conninfo`` plus ``pg_reload_conf()``.  The
old primary's own server is handled on disk: ``pg_rewind`` as the data
directory's owner (never root), ``standby.signal`` and ``primary_conninfo``
written as the owner, started the way it was started (``_steps`` pg_start).

A planned switchover whose current primary is another host (the failback)
demotes it with SQL too: ``primary_conninfo`` (ALTER SYSTEM), ``standby.signal``
(``COPY ... TO``) and ``pg_ctl restart`` through ``COPY ... TO PROGRAM``
(:func:`server_program`; a restart that never starts has its standby.signal
removed the same way); that needs a superuser (or pg_write_server_files plus
pg_execute_server_program).

Safety: never two primaries.  A server is started as a primary (or promoted)
only after every other member was reached and found in recovery; when a peer
cannot be reached, nothing is started and the convergence fails, naming it
(the record stays, and the reaper retries).

:func:`converge` is the decision logic, over a small set of operations
(:class:`Cluster`), so that every half-done state is unit-tested with a fake.

Standard library plus psycopg2 (through ``_pgconn``): the reaper imports this
file through ``_steps``.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

APP = 'pggit-chaos-failover'
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')
HOST_RE = re.compile(r'^[A-Za-z0-9_.:%-]{1,253}$')
REGION_RE = re.compile(r'^[A-Za-z0-9_.-]{1,63}$')
CONF_FILES = ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf', 'pg_ident.conf')
# conninfo keys a repointed primary_conninfo never keeps: they would send it elsewhere than the new primary.
DROPPED_KEYS = ('hostaddr', 'service', 'target_session_attrs')
PROMOTE_WAIT_S = 60
STREAM_WAIT_S = 60
RESTART_WAIT_S = 60
LAUNCH_GRACE_S = 5  # a restart whose launch reported an error must have begun by then
PENDING_PROMOTE_WAIT_S = 15
CONN_TIMEOUT_S = 3
DEAD_LOCK_WAIT_S = 10

STATUS_SQL = (
    "SELECT pg_is_in_recovery(), current_setting('data_directory'), pg_postmaster_start_time()::text, "
    "(SELECT system_identifier::text FROM pg_control_system()), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END, "
    "pg_last_wal_receive_lsn()::text, "
    "CASE WHEN pg_is_in_recovery() THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), "
    "(SELECT timeline_id FROM pg_control_checkpoint())) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "(SELECT status FROM pg_stat_wal_receiver), (SELECT sender_host FROM pg_stat_wal_receiver), "
    "(SELECT sender_port FROM pg_stat_wal_receiver), current_setting('primary_conninfo')")
STATUS_KEYS = ('in_recovery', 'data_directory', 'started', 'system_identifier', 'lsn', 'receive_lsn', 'timeline',
               'wr_status', 'sender_host', 'sender_port', 'primary_conninfo')


# -- pure helpers ------------------------------------------------------------------------------------------------
def parse_lsn(text):
    """'16/B374D848' -> int; None for None or ''."""
    if not text:
        return None
    high, _sep, low = str(text).partition('/')
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(value):
    return None if value is None else '%X/%X' % (value >> 32, value & 0xFFFFFFFF)


def parse_conninfo(text):
    """A libpq key=value connection string as an ordered list of (key, value); ValueError when it cannot be parsed."""
    pairs, i, text = [], 0, text or ''
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return pairs
        match = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*').match(text, i)
        if not match:
            raise ValueError('cannot parse the connection string at %r' % text[i:i + 20])
        key, i = match.group(1), match.end()
        value = []
        if i < len(text) and text[i] == "'":
            i += 1
            while True:
                if i >= len(text):
                    raise ValueError('unterminated quoted value of %s' % key)
                char = text[i]
                if char == '\\' and i + 1 < len(text):
                    value.append(text[i + 1])
                    i += 2
                    continue
                i += 1
                if char == "'":
                    break
                value.append(char)
        else:
            while i < len(text) and not text[i].isspace():
                if text[i] == '\\' and i + 1 < len(text):
                    value.append(text[i + 1])
                    i += 2
                    continue
                value.append(text[i])
                i += 1
        pairs.append((key, ''.join(value)))


def format_conninfo(pairs):
    """An ordered list of (key, value) as a libpq connection string, every value quoted."""
    return ' '.join("%s='%s'" % (key, str(value).replace('\\', '\\\\').replace("'", "\\'")) for key, value in pairs)


def conninfo_with(text, keep_application_name=True, **values):
    """The connection string ``text`` pointed elsewhere: keys of ``values`` replaced (or added), DROPPED_KEYS removed.

    ``application_name`` is only added when missing, unless keep_application_name is false."""
    pairs = [(k, v) for k, v in parse_conninfo(text) if k not in DROPPED_KEYS]
    present = dict(pairs)
    out = []
    for key, value in pairs:
        if key in values and not (key == 'application_name' and keep_application_name):
            value = values[key]
        out.append((key, value))
    for key, value in values.items():
        if key not in present and value not in (None, ''):
            out.append((key, value))
    return format_conninfo([(k, v) for k, v in out if v is not None])


SECRET_KEYS = ('password', 'sslpassword')


def redact_conninfo(text):
    """A connection string for messages: the values of password keys replaced by ``********``."""
    text = re.sub(r'(://[^:/@\s]*:)[^@\s]*@', r'\1********@', text or '')  # a URI's user:password@
    return re.sub(r"\b(%s)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)" % '|'.join(SECRET_KEYS), r'\1\2********', text)


def conninfo_target(text):
    """(host, port) a connection string points to; port defaults to 5432."""
    try:
        pairs = dict(parse_conninfo(text))
    except ValueError:
        return None, None
    port = pairs.get('port') or '5432'
    return pairs.get('host'), int(port) if str(port).isdigit() else None


def auto_conf_with(text, name, value):
    """postgresql.auto.conf text with ``name = 'value'`` set (other lines kept), as ALTER SYSTEM writes it.

    A value with a line break (or another control character) is refused, as ALTER SYSTEM refuses it: written raw, it
    would add lines of its own to the server's configuration (``archive_command = ...``)."""
    if re.search(r'[\x00-\x1f\x7f]', str(value)):
        raise UndoError('%s: refusing a value with a line break or control character: %r' % (name, redact_conninfo(str(value))))
    quoted = "'%s'" % str(value).replace('\\', '\\\\').replace("'", "''")
    line_re = re.compile(r'^\s*%s\s*=' % re.escape(name), re.IGNORECASE)
    out, done = [], False
    for line in (text or '').splitlines():
        if line_re.match(line):
            if not done:
                out.append('%s = %s' % (name, quoted))
                done = True
            continue
        out.append(line)
    if not done:
        if not out:
            out.append('# Do not edit this file manually!')
            out.append('# It will be overwritten by the ALTER SYSTEM command.')
        out.append('%s = %s' % (name, quoted))
    return '\n'.join(out) + '\n'


def check_members(members):
    """Why a members list is unusable (names, hosts, ports), or None."""
    if not isinstance(members, list) or len(members) < 2:
        return 'members must list at least 2 servers of the cluster (the primary and a replica), got %r' % (members,)
    seen, where = set(), set()
    for number, member in enumerate(members, 1):
        if not isinstance(member, dict):
            return 'members[%d] must be a dictionary {name, host, port}, got %r' % (number, member)
        name, host, port = member.get('name'), member.get('host'), member.get('port', 5432)
        if not isinstance(name, str) or not NAME_RE.match(name):
            return 'members[%d].name must be 1 to 63 characters of A-Z, a-z, 0-9, _, . and -, got %r' % (number, name)
        if name in seen:
            return 'members: name %s appears twice' % name
        if not isinstance(host, str) or not HOST_RE.match(host):
            return 'members[%d].host (%s) must be a host name or address, got %r' % (number, name, host)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return 'members[%d].port (%s) must be a port from 1 to 65535, got %r' % (number, name, port)
        if (host, port) in where:
            return 'members: %s:%s appears twice' % (host, port)
        region = member.get('region')
        if region is not None and (not isinstance(region, str) or not REGION_RE.match(region)):
            return 'members[%d].region (%s) must be a plain name, got %r' % (number, name, region)
        seen.add(name)
        where.add((host, port))
    return None


def normalize_members(members):
    return [dict(name=m.get('name'), host=m.get('host'), port=5432 if m.get('port') is None else m['port'], region=m.get('region'))
            for m in members]


def choose_candidate(statuses, old_region=None, prefer=None):
    """The replica to promote: the highest replayed LSN; on a tie ``prefer``, then the old primary's region, then the name.

    ``statuses``: {name: {up, in_recovery, lsn (int), region}}.  None when no replica is up."""
    eligible = [(name, st) for name, st in statuses.items() if st.get('up') and st.get('in_recovery') and st.get('lsn') is not None]
    if not eligible:
        return None
    eligible.sort(key=lambda item: (-item[1]['lsn'], item[0] != prefer,
                                    not (old_region and item[1].get('region') == old_region), item[0]))
    return eligible[0][0]


def streams_from(status, primary, primary_status=None):
    """True when a standby's walreceiver streams from ``primary`` (a member dict), on the primary's timeline when known."""
    if not status or not status.get('up') or not status.get('in_recovery') or status.get('wr_status') != 'streaming':
        return False
    if status.get('sender_host') != primary['host'] or status.get('sender_port') != primary['port']:
        return False
    return primary_status is None or primary_status.get('timeline') is None or status.get('timeline') == primary_status['timeline']


def points_to(status, primary):
    """True when a standby's primary_conninfo names ``primary`` (host and port)."""
    host, port = conninfo_target((status or {}).get('primary_conninfo') or '')
    return host == primary['host'] and port == primary['port']


# -- the decision logic ------------------------------------------------------------------------------------------
def _primaries(statuses):
    return sorted(name for name, st in statuses.items() if st.get('up') and not st.get('in_recovery'))


def bring_all(ops, primary):
    """Point every other member at ``primary`` and wait until each streams from it.  Returns a list of problems."""
    statuses = ops.look()
    problems, waiting = [], []
    for name in ops.names:
        if name == primary:
            continue
        status = statuses[name]
        if name == ops.local and not status.get('up'):
            try:
                ops.rejoin_local(primary)
            except UndoError as exc:  # the others are still repointed: the cluster keeps its primary and its replicas
                problems.append('%s could not rejoin: %s' % (name, exc))
                continue
        elif not status.get('up'):
            problems.append('%s cannot be reached (%s): it is left as it is' % (name, status.get('error') or 'down'))
            continue
        elif not status.get('in_recovery'):
            problems.append('%s is a primary too: refusing to touch either' % name)
            continue
        elif not points_to(status, ops.member(primary)):
            ops.repoint(name, primary)
        waiting.append(name)
    for name in ops.wait_streaming(primary, waiting):
        problems.append('%s is not streaming from %s' % (name, primary))
    return problems


def converge(ops, notes):
    """Bring the cluster to exactly one primary with every other member streaming from it (and, with failback, that
    primary is the original one).  Safe to run at any point of a half-done failover; raises UndoError when it cannot
    finish (the record then stays and the reaper retries).  Returns the primary's name."""
    statuses = ops.look()
    primaries = _primaries(statuses)
    if len(primaries) > 1:
        raise UndoError('%s are all primaries: refusing to touch a split cluster; fix it by hand' % ' and '.join(primaries))
    if not primaries and ops.promoting and statuses.get(ops.promoting, {}).get('up'):
        # A promotion that was asked for may still be finishing: give it a moment before deciding anything.
        deadline = time.time() + PENDING_PROMOTE_WAIT_S
        while time.time() < deadline and statuses[ops.promoting].get('in_recovery') and statuses[ops.promoting].get('up'):
            ops.sleep(0.5)
            statuses = ops.look()
        primaries = _primaries(statuses)
    if not primaries:
        unreachable = [n for n in ops.names if n != ops.local and not statuses[n].get('up')]
        if unreachable:
            raise UndoError('no member is a primary and %s cannot be reached (it may have been promoted): nothing was '
                            'started, the cluster has no primary; the revert tries again' % ', '.join(unreachable))
        local = statuses[ops.local]
        others = [n for n in ops.names if n != ops.local]
        newest = max([statuses[n].get('timeline') or 0 for n in others])
        pending = ops.promoting if (ops.promoting in others and getattr(ops, 'promoted', None) != ops.promoting
                                    and statuses[ops.promoting].get('in_recovery')) else None
        if pending:
            # A pg_promote() was asked of it (the record says so, and not that it finished): its promote.signal is written,
            # it promotes once it has replayed what it received, however long that takes.  Starting the old primary now
            # would make two primaries: finish that very promotion instead.
            ops.promote(pending)
            notes.append('the promotion of %s that was asked for was finished' % pending)
        elif not local.get('up') and not local.get('standby_configured') and (local.get('timeline') or 0) >= newest:
            ops.start_local_primary()
            notes.append('no other member was promoted: %s was started again as the primary' % ops.local)
        else:
            pool = dict((n, statuses[n]) for n in ops.names if statuses[n].get('up'))
            best = choose_candidate(pool, prefer=ops.original)
            if best is None:
                raise UndoError('no member is a primary and none can be promoted: nothing was started')
            ops.promote(best)
            notes.append('no member was a primary: %s (the most advanced) was promoted' % best)
        primaries = _primaries(ops.look())
        if len(primaries) != 1:
            raise UndoError('after starting a primary, the primaries are %s' % (primaries or 'none'))
    primary = primaries[0]
    problems = bring_all(ops, primary)
    if ops.failback and primary != ops.original and not problems:
        done = ops.switchover(ops.original)
        notes.append('failed back to %s (%s)' % (ops.original, done.get('method')))
        primary = ops.original
        problems = bring_all(ops, primary)
    if problems:
        raise UndoError('the cluster did not converge on %s: %s' % (primary, '; '.join(problems)))
    return primary


# -- the real operations -------------------------------------------------------------------------------------------
def _account(user, pgdata):
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise UndoError('user %s does not exist: %s was not touched' % (user, pgdata))
    if account.pw_uid == 0 or os.stat(pgdata).st_uid != account.pw_uid:
        raise UndoError('%s does not belong to %s (or that is root): it was not touched' % (pgdata, user))
    return account


def _as_account(account, action):
    """Run action() in a forked child that becomes ``account`` (never root acting in a folder its owner controls).

    Returns None, or what went wrong (text)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 0
        try:
            if os.geteuid() != account.pw_uid:
                os.setgid(account.pw_gid)
                os.initgroups(account.pw_name, account.pw_gid)
                os.setuid(account.pw_uid)
            action()
        except BaseException as exc:  # pylint: disable=broad-except
            os.write(write_end, (str(exc) or exc.__class__.__name__).encode('utf-8', 'replace')[:500])
            code = 1
        finally:
            os._exit(code)  # pylint: disable=protected-access
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as handle:
        said = handle.read().decode('utf-8', 'replace')
    _pid, status = os.waitpid(pid, 0)
    return (said or 'exit status %s' % status) if status != 0 else None


def write_as(account, path, data, mode=0o600):
    """Write a file atomically as ``account`` (a forked child that becomes it): never root writing in its folder."""
    def write():  # pragma: no cover - runs in the child
        tmp = '%s.pggit-chaos.%d' % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data.encode('utf-8'))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    said = _as_account(account, write)
    if said is not None:
        raise UndoError('could not write %s as %s: %s' % (path, account.pw_name, said))


def unlink_as(account, path):
    """Remove a file as ``account``; True when it was removed, False when it was not there (or could not be)."""
    return _as_account(account, lambda: os.unlink(path)) is None


def controldata(output):
    """The fields of pg_controldata's output as a dict."""
    found = {}
    for line in (output or '').splitlines():
        key, sep, value = line.partition(':')
        if sep:
            found[key.strip()] = value.strip()
    return found


class Cluster(object):
    """The operations converge() uses, on the real cluster: SQL to every member, files and pg_ctl for the local one."""

    def __init__(self, step, secret=None, ctx=None, clock=time.time, sleep=time.sleep):
        self.step = step
        self.secret = dict(secret or {})
        self.ctx = ctx or {}
        self.members = dict((m['name'], m) for m in step['members'])
        self.names = [m['name'] for m in step['members']]
        self.local = step['local']
        self.original = step['original_primary']
        self.failback = bool(step.get('failback', True))
        self.promoting = step.get('promoting')
        self.promoted = step.get('promoted')
        self.clock = clock
        self.sleep = sleep
        self.log = []

    def member(self, name):
        return self.members[name]

    # -- SQL ---------------------------------------------------------------------------------------------------------
    def params(self, name):
        member = self.members[name]
        params = dict(self.step.get('conn') or {})
        params.update(login_host=member['host'], login_port=member['port'], login_unix_socket='')
        params['connect_timeout'] = min(int(params.get('connect_timeout') or CONN_TIMEOUT_S), CONN_TIMEOUT_S)
        for key in ('login_password', 'connect_secrets'):
            if self.secret.get(key):
                params[key] = self.secret[key]
        return params

    def connect(self, name):
        return _pgconn.connect(self.params(name), application_name=APP)

    def sql(self, name, query, args=None, fetch=True):
        conn = self.connect(name)
        try:
            cur = conn.cursor()
            cur.execute(query, args)
            return cur.fetchall() if fetch and cur.description else None
        finally:
            conn.close()

    def status(self, name):
        member = self.members[name]
        try:
            row = self.sql(name, STATUS_SQL)[0]
        except Exception as exc:  # pylint: disable=broad-except
            status = {'up': False, 'error': _pgconn.one_line(exc), 'region': member.get('region')}
        else:
            status = dict(zip(STATUS_KEYS, row), up=True, region=member.get('region'))
            status['lsn'] = parse_lsn(status['lsn'])
            status['receive_lsn'] = parse_lsn(status['receive_lsn'])
        if name == self.local and not status['up']:
            status.update(self.local_state())
        return status

    def look(self):
        return dict((name, self.status(name)) for name in self.names)

    # -- the local server --------------------------------------------------------------------------------------------
    @property
    def pgdata(self):
        return self.step['pgdata']

    def account(self):
        return _account(self.step['owner'], self.pgdata)

    def run_as(self, argv, timeout=120, env=None):
        return _steps._as_user(argv, self.account(), None, timeout, env)  # pylint: disable=protected-access

    def local_running(self):
        from ansible_collections.pggit.chaos.plugins.module_utils import _server  # pylint: disable=import-outside-toplevel
        return _server.running(self.pgdata)

    def controldata(self):
        argv = [os.path.join(self.step['bin_dir'], 'pg_controldata'), '-D', self.pgdata]
        rc, out = self.run_as(argv, 30, {'LC_ALL': 'C'})
        if rc != 0:
            raise UndoError('%s exited %s: %s' % (' '.join(argv), rc, ' '.join((out or '').split())))
        return controldata(out)

    def local_state(self):
        """What the local data directory says while its server is down."""
        state = {'local_down': not self.local_running(),
                 'standby_configured': os.path.exists(os.path.join(self.pgdata, 'standby.signal'))}
        try:
            data = self.controldata()
            state['timeline'] = int(data.get("Latest checkpoint's TimeLineID") or 0)
            state['cluster_state'] = data.get('Database cluster state')
        except (UndoError, ValueError) as exc:
            state['controldata_error'] = str(exc)
        return state

    def clear_dead_lock(self, wait_s=DEAD_LOCK_WAIT_S):
        """Wait until the killed postmaster's children are gone; drop a postmaster.pid that names a dead (zombie) process.

        A SIGKILLed postmaster whose parent does not reap it stays a zombie, and a pid may be reused: PostgreSQL (and
        pg_rewind's single-user crash recovery) then takes the lock file for a live server's.  Returns True when a stale
        lock file was removed."""
        from ansible_collections.pggit.chaos.plugins.module_utils import _server  # pylint: disable=import-outside-toplevel
        deadline = self.clock() + wait_s
        while _server.leftovers(self.pgdata) and self.clock() < deadline:
            self.sleep(0.1)
        if _server.running(self.pgdata):
            raise UndoError('the server in %s runs: it is not touched' % self.pgdata)
        pid = _server.postmaster_pid(self.pgdata)
        if not pid:
            return False
        if _server.running(self.pgdata) or _server.leftovers(self.pgdata):
            raise UndoError('the server in %s runs (or its processes are still exiting): it is not touched' % self.pgdata)
        # The pid is gone, a zombie, or another program's (not working in this directory): the lock file is stale.
        return unlink_as(self.account(), os.path.join(self.pgdata, 'postmaster.pid'))

    def start_local(self):
        self.clear_dead_lock()
        handler = _steps.STEP_HANDLERS['pg_start']
        return handler(self.step['start'], self.ctx)

    def stop_local(self):
        from ansible_collections.pggit.chaos.plugins.module_utils import _restart  # pylint: disable=import-outside-toplevel
        start = self.step['start']
        if start.get('method') == 'systemd':
            proc = subprocess.run([_steps.find_bin('systemctl'), 'stop', start['unit']], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=120, check=False)
            if proc.returncode:
                raise UndoError('systemctl stop %s failed: %s' % (start['unit'], ' '.join(proc.stdout.split())))
            return True
        return _restart.stop(start, RESTART_WAIT_S)

    def start_local_primary(self):
        """Start the local server as a primary, after checking (again, now) that no other member is a primary."""
        statuses = dict((n, self.status(n)) for n in self.names if n != self.local)
        bad = [n for n, st in statuses.items() if not st.get('up') or not st.get('in_recovery')]
        if bad:
            raise UndoError('%s not starting as a primary: %s is a primary or cannot be reached' % (self.local, ', '.join(bad)))
        self.start_local()

    def conninfo_to(self, primary, base=None, application_name=None):
        """primary_conninfo for a standby of ``primary``: ``base`` (or the recorded template) pointed at it."""
        target = self.members[primary]
        base = base if base is not None else (self.secret.get('conninfo_template') or self.step.get('conninfo_template') or '')
        if not base:
            conn = self.step.get('conn') or {}
            base = format_conninfo([('user', conn.get('login_user') or 'postgres')])
        return conninfo_with(base, keep_application_name=application_name is None, host=target['host'],
                             port=str(target['port']), application_name=application_name)

    def make_local_standby(self, primary):
        """standby.signal and primary_conninfo in the local data directory (server down), written as its owner."""
        account = self.account()
        auto = os.path.join(self.pgdata, 'postgresql.auto.conf')
        data = _steps.read_regular(auto, 1 << 20, account.pw_uid)
        text = auto_conf_with(data.decode('utf-8', 'replace') if data else '', 'primary_conninfo',
                              self.conninfo_to(primary, application_name=self.local))
        write_as(account, auto, text)
        write_as(account, os.path.join(self.pgdata, 'standby.signal'), '')

    def rewind_local(self, primary):
        """pg_rewind the local data directory from ``primary``, keeping its own configuration files; 'pg_rewind' or 'none'."""
        account = self.account()
        self.clear_dead_lock()
        saved = {}
        for name in CONF_FILES:
            data = _steps.read_regular(os.path.join(self.pgdata, name), 1 << 20, account.pw_uid)
            if data is not None:
                saved[name] = data.decode('utf-8', 'replace')
        # A newly promoted source still has its old timeline in pg_control until its first checkpoint: pg_rewind would
        # then say "same timeline, no rewind required" and the old primary could never follow the new timeline.
        self.sql(primary, 'CHECKPOINT', fetch=False)
        params = self.params(primary)
        source = format_conninfo([('host', params['login_host']), ('port', str(params['login_port'])),
                                  ('user', params.get('login_user') or 'postgres'), ('dbname', params.get('db') or 'postgres'),
                                  ('connect_timeout', str(params['connect_timeout']))]
                                 + ([('sslmode', params['ssl_mode'])] if params.get('ssl_mode') else []))
        env = {'PGPASSWORD': params['login_password']} if params.get('login_password') else {}
        argv = [os.path.join(self.step['bin_dir'], 'pg_rewind'), '--target-pgdata', self.pgdata, '--source-server', source]
        rc, out = self.run_as(argv, 600, env)
        said = ' '.join((out or '').split())
        for name, text in saved.items():  # pg_rewind copies the source's configuration: this server keeps its own
            write_as(account, os.path.join(self.pgdata, name), text)
        if rc != 0:
            raise UndoError('pg_rewind of %s from %s failed (exit %s): %s' % (self.pgdata, primary, rc, said[-800:] or '(no output)'))
        return 'none' if 'no rewind required' in said else 'pg_rewind'

    def rejoin_local(self, primary):
        """The local server, down, rejoins as a standby of ``primary``: rewind when needed, configure, start."""
        if self.local_running():
            return None
        method = self.rewind_local(primary)
        self.make_local_standby(primary)
        self.start_local()
        self.log.append('%s rejoined as a standby of %s (%s)' % (self.local, primary, method))
        return method

    # -- remote members ----------------------------------------------------------------------------------------------
    def promote(self, name):
        """pg_promote() on a member in recovery; returns its new timeline."""
        rows = self.sql(name, 'SELECT pg_promote(true, %s)', (PROMOTE_WAIT_S,))
        if not rows or not rows[0][0]:
            raise UndoError('pg_promote() on %s did not finish within %ss' % (name, PROMOTE_WAIT_S))
        self.log.append('promoted %s' % name)
        # A primary has no use for the primary_conninfo it followed as a standby: dropped (postgresql.auto.conf only),
        # so that the declared primary, promoted back by the failback, ends with the settings it began with.
        self.sql(name, 'ALTER SYSTEM RESET primary_conninfo', fetch=False)
        self.sql(name, 'SELECT pg_reload_conf()', fetch=False)
        return self.status(name).get('timeline')

    def repoint(self, name, primary):
        """ALTER SYSTEM SET primary_conninfo on a standby (remote or local) to ``primary``, then reload."""
        current = self.status(name).get('primary_conninfo') or ''
        if name == self.local and not current:
            value = self.conninfo_to(primary, application_name=self.local)
        else:
            value = self.conninfo_to(primary, base=current or None, application_name=None if current else name)
        conn = self.connect(name)
        try:
            cur = conn.cursor()
            cur.execute('ALTER SYSTEM SET primary_conninfo = %s', (value,))
            cur.execute('SELECT pg_reload_conf()')
        finally:
            conn.close()
        self.log.append('repointed %s to %s' % (name, primary))
        return True

    def wait_streaming(self, primary, names, timeout=STREAM_WAIT_S):
        """Wait until every named standby streams from ``primary`` on its timeline; returns those that do not."""
        deadline = self.clock() + timeout
        while True:
            pstatus = self.status(primary)
            missing = [n for n in names if not streams_from(self.status(n), self.members[primary], pstatus)]
            if not missing or self.clock() >= deadline:
                return missing
            self.sleep(0.25)

    def demote_remote(self, name, to):
        """Make the remote primary ``name`` a standby of ``to``: primary_conninfo, standby.signal, pg_ctl restart (SQL only).

        Returns its shutdown checkpoint LSN (int) once it is back in recovery, or None when it did not come back."""
        conn = self.connect(name)
        try:
            cur = conn.cursor()
            cur.execute("SELECT rolsuper OR (pg_has_role(current_user, 'pg_write_server_files', 'MEMBER') AND "
                        "pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')) FROM pg_roles WHERE rolname = current_user")
            if not cur.fetchone()[0]:
                raise UndoError('demoting %s needs a superuser (or pg_write_server_files and pg_execute_server_program): '
                                'it writes standby.signal and runs pg_ctl restart there' % name)
            cur.execute("SELECT current_setting('data_directory'), (SELECT setting FROM pg_config WHERE name = 'BINDIR'), "
                        "pg_postmaster_start_time()::text")
            datadir, bindir, started = cur.fetchone()
            cur.execute('CHECKPOINT')
            cur.execute('ALTER SYSTEM SET primary_conninfo = %s', (self.conninfo_to(to, application_name=name),))
            sql = _pgconn.sql
            cur.execute(sql.SQL('COPY (SELECT 1 WHERE false) TO {}').format(sql.Literal(os.path.join(datadir, 'standby.signal'))))
            command = 'setsid -f %s restart -D %s -m fast -w -t %d -l %s </dev/null >/dev/null 2>&1' % (
                shlex.quote(os.path.join(bindir, 'pg_ctl')), shlex.quote(datadir), RESTART_WAIT_S,
                shlex.quote(os.path.join(datadir, 'pggit-chaos-restart.log')))
            launch_error = None
            try:
                server_program(cur, command)
            except Exception as exc:  # pylint: disable=broad-except
                # The shutdown pg_ctl starts may win the race against the shell that launched it: the postmaster
                # signals each backend's whole process group, and that shell is in ours. Its SIGTERM fails this COPY
                # ("program ... failed") or ends our session, while the restart goes on. Whether the server goes down
                # decides, below.
                launch_error = _pgconn.one_line(exc)
        finally:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        return self._wait_demoted(name, started, launch_error, os.path.join(datadir, 'standby.signal'))

    def _wait_demoted(self, name, started, launch_error, signal_file=None):
        """The demoted server's shutdown checkpoint LSN once it is back in recovery; None when it did not come back.

        When launching pg_ctl failed and the server stays up as it was for LAUNCH_GRACE_S, no restart is coming: the
        standby.signal written for it is removed (else the primary's next restart, for whatever reason, would bring it
        back as a standby of a server that was never promoted) and an UndoError names the launch error."""
        now = self.clock()
        deadline, grace = now + RESTART_WAIT_S + 15, now + LAUNCH_GRACE_S
        went_down = False
        while self.clock() < deadline:
            status = self.status(name)
            if status.get('up') and status.get('started') != started and status.get('in_recovery'):
                rows = self.sql(name, 'SELECT checkpoint_lsn::text FROM pg_control_checkpoint()')
                return parse_lsn(rows[0][0])
            went_down = went_down or not status.get('up') or status.get('started') != started
            if launch_error and not went_down and self.clock() >= grace:
                raise UndoError('pg_ctl restart did not start on %s (it is still the primary it was): %s; %s'
                                % (name, launch_error, self._disarm_demote(name, signal_file)))
            self.sleep(0.25)
        return None

    def _disarm_demote(self, name, signal_file):
        """Remove the standby.signal a demote wrote on ``name`` whose restart never came; says what became of it."""
        if not signal_file:
            return 'its standby.signal was not looked at'
        try:
            conn = self.connect(name)
            try:
                server_program(conn.cursor(), 'rm -f -- %s' % shlex.quote(signal_file))
            finally:
                conn.close()
        except Exception as exc:  # pylint: disable=broad-except
            return ('%s stays (removing it failed: %s): remove it before %s restarts, or it comes back as a standby'
                    % (signal_file, _pgconn.one_line(exc), name))
        return '%s was removed, so a later restart keeps it the primary' % signal_file

    def switchover(self, to):
        """Planned switchover from the current primary to ``to``; returns {at, method, rto_s, from}."""
        statuses = self.look()
        primaries = _primaries(statuses)
        if len(primaries) != 1:
            raise UndoError('a switchover needs exactly one primary, found %s' % (primaries or 'none'))
        current = primaries[0]
        if current == to:
            return {'method': 'none', 'at': None, 'rto_s': 0.0, 'from': current}
        if self.wait_streaming(current, [to]):
            raise UndoError('%s is not streaming from %s: no switchover to it' % (to, current))
        started = self.clock()
        if current == self.local:
            self.sql(current, 'CHECKPOINT', fetch=False)
            self.stop_local()
            checkpoint = parse_lsn(self.controldata().get('Latest checkpoint location'))
            self.make_local_standby(to)
            self.start_local()
        else:
            checkpoint = self.demote_remote(current, to)
            if checkpoint is None:
                raise UndoError('%s did not come back as a standby within %ss: %s is not promoted (no primary now; '
                                'the revert decides again)' % (current, RESTART_WAIT_S + 15, to))
        deadline = self.clock() + STREAM_WAIT_S
        while True:
            lsn = self.status(to).get('lsn')
            if lsn is not None and lsn > checkpoint:
                break
            if self.clock() >= deadline:
                raise UndoError('%s did not replay %s (the shutdown checkpoint of %s) within %ss: it is not promoted'
                                % (to, format_lsn(checkpoint), current, STREAM_WAIT_S))
            self.sleep(0.1)
        self.promote(to)
        done = self.clock()
        return {'method': 'switchover', 'at': done, 'rto_s': round(done - started, 3), 'from': current,
                'checkpoint_lsn': format_lsn(checkpoint)}


def server_program(cur, command):
    """Run the shell ``command`` on the database host as the server's user (COPY ... TO PROGRAM), with a plain PATH."""
    sql = _pgconn.sql
    cur.execute(sql.SQL('COPY (SELECT 1 WHERE false) TO PROGRAM {}').format(sql.Literal('PATH=/usr/bin:/bin:$PATH ' + command)))


# -- the undo step ---------------------------------------------------------------------------------------------------
STEP_KEYS = ('members', 'local', 'original_primary', 'pgdata', 'bin_dir', 'owner', 'start', 'conn', 'failback')


def check_step(step, state_dir):
    """pg_converge's check: a record is data run as root, so only what the module writes is accepted."""
    problem = check_members(step.get('members'))
    if problem:
        return problem
    names = [m['name'] for m in step['members']]
    for key in ('local', 'original_primary'):
        if step.get(key) not in names:
            return '%s must name a member, got %r' % (key, step.get(key))
    for key in ('promoting', 'promoted'):
        if step.get(key) is not None and step.get(key) not in names:
            return '%s must name a member, got %r' % (key, step.get(key))
    if not isinstance(step.get('failback', True), bool):
        return 'failback must be true or false, got %r' % (step.get('failback'),)
    pgdata = step.get('pgdata')
    if not isinstance(pgdata, str) or not os.path.isabs(pgdata) or '..' in pgdata.split('/') or os.path.normpath(pgdata) == '/':
        return 'pgdata must be an absolute data directory, got %r' % (pgdata,)
    user = step.get('owner')
    if not isinstance(user, str) or not user or user == 'root' or ':' in user or '/' in user:
        return 'owner must name the data directory owner (never root), got %r' % (user,)
    bin_dir = step.get('bin_dir')
    if not isinstance(bin_dir, str) or not os.path.isabs(bin_dir) or '..' in bin_dir.split('/'):
        return 'bin_dir must be an absolute folder, got %r' % (bin_dir,)
    try:
        info = os.stat(bin_dir)
    except OSError as exc:
        return 'bin_dir %s: %s' % (bin_dir, exc)
    if info.st_uid != 0 or info.st_mode & 0o022:
        return 'bin_dir %s must be owned by root and writable only by root' % bin_dir
    start = step.get('start')
    if not isinstance(start, dict) or start.get('type') != 'pg_start':
        return 'start must be a pg_start step, got %r' % (start,)
    problem = _steps._check_pg_start(start, state_dir)  # pylint: disable=protected-access  # never a managed server
    if problem:
        return 'start: %s' % problem
    if start.get('method') == 'systemd' and str(start.get('unit')).startswith('-'):
        return 'start.unit %r starts with -: systemctl would read it as an option' % (start.get('unit'),)
    if start.get('method') == 'pg_ctl' and start.get('pgdata') != pgdata:
        return 'start.pgdata %r is not pgdata %r' % (start.get('pgdata'), pgdata)
    conn = step.get('conn')
    if not isinstance(conn, dict) or any(k not in _pgconn.CONN_KEYS for k in conn):
        return 'conn must hold connection options (%s), got %r' % (', '.join(_pgconn.CONN_KEYS), conn)
    template = step.get('conninfo_template')
    if template is not None:
        try:
            parse_conninfo(template)
        except (ValueError, TypeError) as exc:
            return 'conninfo_template: %s' % exc
    return None


def undo_converge(step, ctx):
    """The one revert of a failover: converge() on the real cluster; notes say what it did."""
    notes = ctx.setdefault('notes', [])
    cluster = Cluster(step, ctx.get('secret'), ctx)
    before = cluster.look()
    primary = converge(cluster, notes)
    notes.extend(cluster.log)
    changed = bool(cluster.log)
    notes.append('the cluster has one primary, %s, and every other member streams from it' % primary)
    return changed or any(not st.get('up') for st in before.values())
