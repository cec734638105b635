# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-holder``: the idle-session holder of ``pggit_chaos_sessions``, as a ledger-recorded program.

The module writes the fault's record (the connection as that role, without
secrets; how many sessions to hold; a ``pg_role_nologin`` undo step), then
makes sure the holder's role exists and may log in (a role without superuser,
created by us and marked with :data:`ROLE_MARK` as its comment; a role without
that mark is never touched), then starts this program.  The role may log in
only inside the life of a fault of ours that uses it: the undo step, run by
the revert and by the TTL reaper, sets it ``NOLOGIN`` and drops its password
again once no other fault in the ledger still uses it (:func:`role_nologin`).  It reports ``ready``, waits until its record names it in
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

import base64
import hashlib
import hmac
import re
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _pgconn, _program
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

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
ROLE_SQL = "SELECT rolsuper, shobj_description(oid, 'pg_authid'), rolcanlogin FROM pg_roles WHERE rolname = %s"
# The stored password can be compared only by who may read pg_authid (a superuser): asked first, so a
# refused SELECT never aborts the caller's transaction.
AUTHID_READABLE_SQL = "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
STORED_PASSWORD_SQL = 'SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s'
# The undo step that takes the login away again, and the secret side file's key of the administrator's secret.
NOLOGIN_STEP = 'pg_role_nologin'
ADMIN_SECRET = 'role_admin'
_FAULT_ID_RE = re.compile(r'^sessions--[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')
# The sessions logged in as the role (never the revert's own): counted, and ended once no fault of ours uses it.
ROLE_SESSIONS_SQL = ('SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s '
                     'AND pid <> pg_catalog.pg_backend_pid()')
END_ROLE_SESSIONS_SQL = ('SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity '
                         'WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()')
SESSIONS_GONE_WAIT = 5.0
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


def role_refusal(role, row):
    """Why the role row ``row`` (ROLE_SQL) must not be used nor changed, or None (also None when there is no role)."""
    if row is None:
        return None
    if row[1] != ROLE_MARK:
        return ("role %r exists and is not ours (its comment is %r, not %r); the holder only uses a role it created: "
                "choose another role" % (role, row[1], ROLE_MARK))
    if row[0]:
        return 'role %r is a superuser; the holder must not take the reserved slots' % (role,)
    return None


def password_matches_stored(stored, role, password):
    """True when ``stored`` (pg_authid.rolpassword: SCRAM-SHA-256, md5 or plain) is ``password``'s.

    SCRAM is checked as the server does (StoredKey from the stored salt and
    iterations); a password that needs SASLprep (non-ASCII) may compare as
    different, which only means it is set again."""
    if not stored or not password:
        return False
    try:
        if stored.startswith('SCRAM-SHA-256$'):
            params, keys = stored[len('SCRAM-SHA-256$'):].split('$', 1)
            iterations, salt = params.split(':', 1)
            stored_key = keys.split(':', 1)[0]
            salted = hashlib.pbkdf2_hmac('sha256', password.encode('utf-8'), base64.b64decode(salt), int(iterations))
            client_key = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
            return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))
        if stored.startswith('md5') and len(stored) == 35:
            digest = 'md5' + hashlib.md5((password + role).encode('utf-8')).hexdigest()  # nosec: PostgreSQL's md5 scheme
            return hmac.compare_digest(digest, stored)
        return hmac.compare_digest(stored.encode('utf-8'), password.encode('utf-8'))
    except (ValueError, TypeError):
        return False


def password_matches(cur, role, password):
    """True when the server already stores ``password`` for ``role``; False when it does not, or cannot be read."""
    cur.execute(AUTHID_READABLE_SQL)
    row = cur.fetchone()
    if not row or not row[0]:
        return False
    cur.execute(STORED_PASSWORD_SQL, (role,))
    row = cur.fetchone()
    return bool(row) and password_matches_stored(row[0], role, password)


def ensure_role(cur, role, password=None):
    """Make sure the holder's role exists, is ours and may log in: 'created', 'altered' or 'kept'.

    Called only inside a fault's life, once its record holds the
    ``pg_role_nologin`` undo step: the role is created LOGIN (no superuser,
    marked), or our marked role gets LOGIN back and ``password`` when the
    server does not already store it; 'altered' says something changed.
    A role of that name without our mark is never touched: ValueError names it.
    The role, its mark and its password are set by one statement list, so in
    one transaction: a module killed in between leaves either no role or a
    marked one, never an unmarked role that every later run would refuse."""
    ident = _pgconn.sql.Identifier(role)
    cur.execute(ROLE_SQL, (role,))
    row = cur.fetchone()
    problem = role_refusal(role, row)
    if problem:
        raise ValueError(problem)
    statements = []
    if row is None:
        statements.append(_pgconn.sql.SQL('CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION').format(ident))
        statements.append(_pgconn.sql.SQL('COMMENT ON ROLE {} IS {}').format(ident, _pgconn.sql.Literal(ROLE_MARK)))
    elif not row[2]:
        statements.append(_pgconn.sql.SQL('ALTER ROLE {} LOGIN').format(ident))
    if password and (row is None or not password_matches(cur, role, password)):
        statements.append(_pgconn.sql.SQL('ALTER ROLE {} PASSWORD {}').format(
            ident, _pgconn.sql.Literal(password_hash(cur, role, password))))
    if statements:
        # One simple query: PostgreSQL runs its statements in one implicit transaction, even in autocommit.
        cur.execute(_pgconn.sql.SQL('; ').join(statements))
    if row is None:
        return 'created'
    return 'altered' if statements else 'kept'


# -- the undo: the role may log in only while a fault of ours uses it ---------------------------------
def nologin_step(fid, role, admin_conn):
    """The undo step a sessions fault records before its role may log in (admin_conn: stored_conn, no secret)."""
    return {'type': NOLOGIN_STEP, 'role': role, 'fault_id': fid, 'conn': admin_conn}


def check_nologin_step(step, state_dir):
    problem = role_problem(step.get('role'))
    if problem:
        return problem
    if not isinstance(step.get('fault_id'), str) or not _FAULT_ID_RE.match(step['fault_id']):
        return "fault_id must be the id of a sessions fault ('sessions--<name>'), got %r" % (step.get('fault_id'),)
    if not isinstance(step.get('conn'), dict):
        return 'conn must be a dictionary of connection options, got %r' % (step.get('conn'),)
    return None


def _server(conn):
    conn = conn if isinstance(conn, dict) else {}
    return (conn.get('login_host') or '', str(conn.get('login_port') or 5432), conn.get('login_unix_socket') or '')


def role_users(state_dir, step):
    """The other faults in the ledger whose records let ``step``'s role log in on the same server (ids, sorted).

    Run under the ledger lock (the revert holds it): a fault recorded after
    this look sets LOGIN itself, after its record is written."""
    users = []
    for record in _ledger.Ledger(state_dir).list():
        if record.get('corrupt') or record.get('id') == step['fault_id']:
            continue
        for other in record.get('undo') or []:
            if (isinstance(other, dict) and other.get('type') == NOLOGIN_STEP and other.get('role') == step['role']
                    and _server(other.get('conn')) == _server(step.get('conn'))):
                users.append(record.get('id'))
                break
    return sorted(users)


def role_nologin(step, ctx):
    """Take the login (and the password) away from our marked role, unless another fault of ours still uses it.

    A role that is gone, or is not ours (no mark), is left alone; a role
    still able to log in after the ALTER is an UndoError.  The sessions
    still logged in as the role are ended too (:func:`end_role_sessions`)."""
    users = role_users(ctx.get('state_dir'), step) if ctx.get('state_dir') else []
    if users:
        ctx.setdefault('notes', []).append('role %s keeps LOGIN: fault(s) %s still use it' % (step['role'], ', '.join(users)))
        return False
    params = dict(step.get('conn') or {})
    params.update((ctx.get('secret') or {}).get(ADMIN_SECRET) or {})
    conn = _pgconn.connect(params, application_name='pggit-chaos-revert')
    try:
        cur = conn.cursor()
        cur.execute("SET lock_timeout = '5s'")
        cur.execute(ROLE_SQL, (step['role'],))
        row = cur.fetchone()
        if row is None:
            return False
        if row[1] != ROLE_MARK or row[0]:
            ctx.setdefault('notes', []).append('role %s is not ours (comment %r): left as it is' % (step['role'], row[1]))
            return False
        changed = False
        if row[2]:
            alter = _pgconn.sql.SQL('ALTER ROLE {} NOLOGIN PASSWORD NULL').format(_pgconn.sql.Identifier(step['role']))
            try:
                cur.execute(alter)
            except _pgconn.psycopg2.Error as exc:
                raise UndoError('%s failed: %s' % (alter.as_string(cur), _pgconn.one_line(exc)))
            cur.execute(ROLE_SQL, (step['role'],))
            row = cur.fetchone()
            if row is not None and row[2]:
                raise UndoError('role %s can still log in after %s' % (step['role'], alter.as_string(cur)))
            changed = True
        # NOLOGIN refuses new logins only: a session opened inside the fault's life would outlive it.
        return end_role_sessions(cur, step['role']) > 0 or changed
    finally:
        conn.close()


def end_role_sessions(cur, role, wait=SESSIONS_GONE_WAIT):
    """End every session logged in as ``role`` (no fault of ours uses it any more); the count ended.

    An UndoError when they cannot be ended (the administrator may not signal
    them) or are still there after ``wait`` seconds: the revert then fails
    and the reaper retries, rather than leave a login behind."""
    try:
        cur.execute(END_ROLE_SESSIONS_SQL, (role,))
        ended = int(cur.fetchone()[0] or 0)
    except _pgconn.psycopg2.Error as exc:
        raise UndoError('ending the sessions still logged in as role %s failed: %s' % (role, _pgconn.one_line(exc)))
    deadline = time.monotonic() + wait
    while True:
        cur.execute(ROLE_SESSIONS_SQL, (role,))
        left = int(cur.fetchone()[0] or 0)
        if not left:
            return ended
        if time.monotonic() >= deadline:
            raise UndoError('%d session(s) logged in as role %s still there %gs after pg_terminate_backend' % (left, role, wait))
        time.sleep(0.1)


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
