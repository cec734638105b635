# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-holder``: the idle-session holder of ``pggit_chaos_sessions``, as a ledger-recorded program.

The module makes sure the holder's role exists (a LOGIN role without
superuser, created by us and marked with :data:`ROLE_MARK` as its comment; a
role without that mark is never touched), writes the fault's record (the
connection as that role, without secrets; how many sessions to hold), then
starts this program.  It reports ``ready``, waits until its record names it in
a ``kill_process`` undo step, and only then opens idle sessions, each with
``application_name`` ``pggit-chaos-holder-<fault id>``, until it holds its
target or the server refuses it (``53300``, too many connections: the
non-reserved slots of ``max_connections`` are full, since the role is no
superuser the ``superuser_reserved_connections`` stay free).  It reports
``filled`` (held, the refusal message) and then keeps the slots full: every
:data:`REFILL` seconds it tries to take one more slot, up to its target, so a
slot another client frees is taken back at once.

It closes every session and exits when its record is gone or reverted, at
``expires_at`` (no grace: the sessions must not outlive their TTL), or on
SIGTERM (the revert, the reaper; the default action, so the kernel closes the
sockets and every backend ends at once).  A killed holder (SIGKILL) frees its
sessions the same way: they are its sockets.
"""
from __future__ import annotations

import re
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _program

PROC_TAG = 'pggit-chaos-holder'
APP_PREFIX = 'pggit-chaos-holder-'
APP_MAX = 63
ROLE_MARK = 'pggit.chaos sessions role'
ROLE_RE = re.compile(r'^[a-z_][a-z0-9_]{0,62}$')
TOO_MANY = '53300'
# The upper bound of ``count`` and of what a fill may hold.
MAX_SESSIONS = 5000
STEP = 0.2
REFILL = 0.5

# The server's slots: max_connections, superuser_reserved_connections, client backends now.
SLOTS_SQL = ("SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
             "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int")
ROLE_SQL = "SELECT rolsuper, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s"
# Sessions of one application_name (what the tests and the check read).
HELD_SQL = 'SELECT count(*) FROM pg_stat_activity WHERE application_name = %s'


def application_name(fid):
    return (APP_PREFIX + fid)[:APP_MAX]


def role_problem(role):
    """Why ``role`` cannot be the holder's role, or None (checked before anything connects)."""
    if not isinstance(role, str) or not ROLE_RE.match(role):
        return "role must be 1 to 63 characters of [a-z0-9_] not starting with a digit, got %r" % (role,)
    if role.startswith('pg_') or role in ('postgres', 'public'):
        return "role %r is refused: name a role of the collection's own, such as pggit_chaos_client" % (role,)
    return None


def count_problem(count):
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SESSIONS):
        return 'count must be an integer from 1 to %d, got %r' % (MAX_SESSIONS, count)
    return None


def plan_sessions(max_connections, reserved, used, count=None):
    """How many sessions the holder means to hold, and the free non-reserved slots now.

    ``count`` None means every non-reserved slot: the holder takes what is free
    now and then each slot another client frees (it stops at the server's
    refusal, so it never holds more than there is room for); a count is held as
    asked (the server refuses what does not fit)."""
    free = max(0, int(max_connections) - int(reserved) - int(used))
    target = max(0, int(max_connections) - int(reserved)) if count is None else int(count)
    return {'max_connections': int(max_connections), 'superuser_reserved_connections': int(reserved),
            'client_backends': int(used), 'free_slots': free, 'target': min(target, MAX_SESSIONS),
            'would_hold': min(target, free, MAX_SESSIONS)}


def holder_conn(params, role):
    """The holder's connection options: the target's, as ``role`` (the password, if any, goes to the secret file)."""
    conn = _pgconn.stored_conn(params)
    conn['login_user'] = role
    return conn


def password_hash(cur, role, password):
    """The password as the server stores it (SCRAM or md5, per its password_encryption), hashed here: the
    cleartext never goes into a statement, so never into the server's log (log_statement) or pg_stat_statements."""
    extensions = _pgconn.psycopg2.extensions
    conn = getattr(cur, 'connection', None)
    if conn is not None:
        return extensions.encrypt_password(password, role, conn)
    return extensions.encrypt_password(password, role, None, 'md5')


def ensure_role(cur, role, password=None):
    """Create the holder's role (LOGIN, no superuser, marked), or reuse it when it carries our mark: 'created'|'kept'.

    A role of that name without our mark is never touched: ValueError names it.
    The role, its mark and its password are set by one statement list, so in
    one transaction: a module killed in between leaves either no role or a
    marked one, never an unmarked role that every later run would refuse."""
    ident = _pgconn.sql.Identifier(role)
    cur.execute(ROLE_SQL, (role,))
    row = cur.fetchone()
    if row is not None and row[1] != ROLE_MARK:
        raise ValueError("role %r exists and is not ours (its comment is %r, not %r); the holder only uses a role it "
                         "created: choose another role" % (role, row[1], ROLE_MARK))
    if row is not None and row[0]:
        raise ValueError('role %r is a superuser; the holder must not take the reserved slots' % (role,))
    statements = []
    if row is None:
        statements.append(_pgconn.sql.SQL('CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION').format(ident))
        statements.append(_pgconn.sql.SQL('COMMENT ON ROLE {} IS {}').format(ident, _pgconn.sql.Literal(ROLE_MARK)))
    if password:
        statements.append(_pgconn.sql.SQL('ALTER ROLE {} PASSWORD {}').format(
            ident, _pgconn.sql.Literal(password_hash(cur, role, password))))
    if statements:
        # One simple query: PostgreSQL runs its statements in one implicit transaction, even in autocommit.
        cur.execute(_pgconn.sql.SQL('; ').join(statements))
    return 'kept' if row is not None else 'created'


def is_refusal(exc):
    """True when a connection failed because the server has no slot left for this role."""
    code = getattr(exc, 'pgcode', None)
    text = str(exc)
    return code == TOO_MANY or 'too many clients' in text or 'remaining connection slots are reserved' in text


class Holder(object):
    """The sessions held: open up to the target, stop at the first refusal, close them all."""

    def __init__(self, params, target, app, connect=None, clock=time.time):
        self.params = params
        self.target = target
        self.app = app
        self._connect = connect or (lambda: _pgconn.connect(self.params, application_name=self.app, autocommit=True))
        self.clock = clock
        self.conns = []
        self.refusals = 0
        self.refusal = None
        self.errors = 0
        self.error = None

    def take_one(self):
        """Open one more session: True when held, False when refused or failed."""
        try:
            self.conns.append(self._connect())
            return True
        except Exception as exc:  # pylint: disable=broad-except
            if is_refusal(exc):
                self.refusals += 1
                self.refusal = self.refusal or _pgconn.one_line(exc)
            else:
                self.errors += 1
                self.error = _pgconn.one_line(exc)
            return False

    def fill(self):
        """Open sessions until the target is held or the server refuses one; the count held."""
        while len(self.conns) < self.target:
            if not self.take_one():
                break
        return len(self.conns)

    def refill(self):
        """Try to take one slot back (another client freed it); True when one more is held."""
        if len(self.conns) >= self.target:
            return False
        return self.take_one()

    def release(self):
        for conn in self.conns:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        count = len(self.conns)
        self.conns = []
        return count


def hold(program):
    """The program's body: pass the gate, fill the slots, keep them, release them when told to stop."""
    spec = program.detail
    params = program.conn_params()
    holder = Holder(params, int(spec['target']), application_name(program.fid))
    if not program.recorded():
        program.out.write('done', reason='never recorded in the ledger; held nothing')
        program.log('never recorded in the ledger; exiting without holding')
        return 1
    started = time.time()
    held = holder.fill()
    if not held and holder.error:
        program.out.write('error', msg='the holder could not connect as role %r to %s: %s'
                          % (params.get('login_user'), _pgconn.describe(params), holder.error))
        return 1
    program.out.write('filled', held=held, target=holder.target, refused=holder.refusals, refusal=holder.refusal,
                      error=holder.error, seconds=round(time.time() - started, 3))
    program.log('holding %d idle session(s) (target %d); refusal: %s' % (held, holder.target, holder.refusal))
    should_stop = program.stop_condition(grace=0)
    reason, tried, peak = None, time.monotonic(), held
    while reason is None:
        time.sleep(STEP)
        reason = should_stop()
        if reason is None and time.monotonic() - tried >= REFILL:
            tried = time.monotonic()
            if holder.refill():
                peak = max(peak, len(holder.conns))
    released = holder.release()
    program.out.write('released', reason=reason, held=released, peak=peak, refused=holder.refusals)
    program.log('released %d session(s) (%s)' % (released, reason))
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, hold, argv)
