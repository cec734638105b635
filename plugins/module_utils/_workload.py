# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-workload``: the tracked-DDL workload of ``pggit_workload``, as a ledger-recorded program.

The workload issues ``CREATE TABLE <schema>.t_<run_id>_<seq>`` through
failures, reconnecting as needed, then checks pgGit's invariant with
:mod:`_checker`.  It only ever works in a schema it created itself: a schema
it creates carries the comment ``pggit.chaos workload run <run_id>``, an
existing schema without a workload mark is refused, and ``public``, ``pggit``
and system schemas are refused by name (case-insensitively) before anything
connects.  A schema marked by another run is taken over: this run marks it as
its own.  Every drop (the run's clean-up, ``state: absent``, the undo step in
its record) goes through one ``pg_drop_schema`` step that drops the schema,
found by exact ``nspname``, only while its comment is exactly this run's
mark: a run whose schema another run has since taken over leaves it alone.

As a program it prepares (run id unused, schema ours), reports ``ready``,
waits until its ledger record names it in a ``kill_process`` undo, runs, and
reports ``done`` with the whole result.  It stops early when its record is
gone, past ``expires_at`` plus a grace, or on SIGTERM (the revert, the TTL
reaper): SIGTERM is taken by a thread with ``sigwait`` that cancels the
statement in flight, so the workload reports ``stopped`` and cleans up
within the revert's grace period.

A commit whose wait for a synchronous standby is cancelled (the workload
cancels a commit that outlasts ``statement_timeout_ms``, since the server's
statement_timeout does not end that wait) is answered with the warning that the
transaction "has already committed locally, but might not have been
replicated": that DDL's outcome is ``maybe`` (Jepsen's ``:info``), resolved
against the catalog like an ``unknown`` one, never counted as acknowledged.

Besides the checker's verdict the result holds each DDL's start and duration
(``op_times``, for the blocked time of a lock window), an ordering audit of
the ``pggit.history`` rows written since the run prepared (``history_order``:
rows whose ``created_at`` runs backwards against their ids, as a skewed clock
leaves them) and the server's clock against this host's (``server_clock``).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _program, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError
from ansible_collections.pggit.chaos.plugins.module_utils._checker import INDETERMINATE, check, merge_workers, percentile, worker_prefix

PROC_TAG = 'pggit-chaos-workload'
APP = 'pggit-chaos-workload'
MARK = 'pggit.chaos workload'
RUN_ID_RE = re.compile(r'^[a-z0-9_]{1,24}$')
PROTECTED = ('public', 'pggit', 'information_schema')
# The warning of a commit whose wait for a synchronous standby was cancelled (PostgreSQL's syncrep.c).
SYNC_CANCELLED = ('already committed locally', 'canceling wait for synchronous replication')
# At most this many acknowledged DDL keep their start and duration in the result (evenly over the run), and at most
# OP_FAILS_MAX of the others (failed, uncertain): every one of those is evidence (a loss verdict counts the failures by
# the revert, a lock window its blocked time), so they are never thinned with the acknowledged ones.
OP_TIMES_MAX = 5000
OP_FAILS_MAX = 5000
# What one worker keeps before the run's result thins them (max_ops can exceed OP_TIMES_MAX).
OP_TIMES_KEPT = 50000
OPTIONS = ('run_id', 'duration', 'interval', 'max_ops', 'schema', 'statement_timeout_ms', 'settle_timeout', 'cleanup',
           'expect_tracking', 'hosts', 'target_session_attrs', 'workers', 'tracking_cost')
# A multi-host client gives up on a server that does not answer the connection within this (a frozen host's kernel
# still accepts TCP; only the startup answer never comes), and on a DDL this long past its statement timeout.
MULTI_CONNECT_TIMEOUT = 2
# connection_exhaustion (helper S): a new connection per DDL, as op_login_user (op_login_password in the secret file).
OPTIONS = OPTIONS + ('connect_per_op', 'op_login_user')
# count_from=start: the epoch (the workload host's clock) by which the DDL stop, the module's start plus its duration.
OPTIONS = OPTIONS + ('stop_at',)
# At most this many refused connections are kept by time and message.
REFUSED_MAX = 1000
# SQLSTATE undefined_object: GRANT to a role that does not exist.
UNDEFINED_OBJECT = '42704'
HARD_CLOSE_GRACE = 1.0


# Rows after %(start)s, each against the latest created_at of the rows before it (the 1000 rows before the run
# included): backwards when earlier; "missed" by a filter created_at >= the run's first row; "in the future" of
# this host's clock (%(real_now)s, in the server's TimeZone, as created_at is a timestamp without time zone).
AUDIT_SQL = (
    "WITH base AS (SELECT max(created_at) AS m FROM pggit.history WHERE id <= %(start)s AND id > %(start)s - 1000), "
    "r AS (SELECT id, created_at, max(created_at) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev "
    "FROM pggit.history WHERE id > %(start)s), "
    "first AS (SELECT created_at AS f FROM r ORDER BY id LIMIT 1), "
    "j AS (SELECT r.id, r.created_at, greatest(r.prev, base.m) AS latest, first.f FROM r CROSS JOIN base CROSS JOIN first) "
    "SELECT count(*), count(*) FILTER (WHERE created_at < latest), "
    "max(extract(epoch FROM latest - created_at)) FILTER (WHERE created_at < latest), "
    "min(id) FILTER (WHERE created_at < latest), count(*) FILTER (WHERE created_at < f), "
    "count(*) FILTER (WHERE created_at > (to_timestamp(%(real_now)s) AT TIME ZONE current_setting('TimeZone'))) FROM j")


# The rows that were there when the run prepared, digested as pggit_verify's history_digest digests the whole
# table: equal to the digest the probe took then means that history is intact.
PREFIX_SQL = ("SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(concat_ws('|', id, object_id, change_type, "
              "change_severity, sql_executed), E'\\n' ORDER BY id), '')) FROM pggit.history WHERE id <= %(start)s")


class WorkloadError(RuntimeError):
    """The workload cannot run as asked (run id used, schema not ours)."""


class Stopped(Exception):
    """The workload was told to stop (revert, TTL, record gone)."""


def multi_host_params(params):
    """Connection options of a multi-host client: ``hosts`` joined into libpq's host list (one port for all) and
    ``target_session_attrs``, so that the client follows whichever server accepts writes. Unchanged without hosts."""
    hosts = [str(h) for h in params.get('hosts') or [] if str(h).strip()]
    if not hosts:
        return params
    extra = dict(params.get('connect_params') or {})
    extra['target_session_attrs'] = params.get('target_session_attrs') or 'read-write'
    return dict(params, login_host=','.join(hosts), connect_params=extra,
                connect_timeout=params.get('connect_timeout') or MULTI_CONNECT_TIMEOUT)


def server_of(conn):
    """``host:port`` of the server a connection reached (libpq's own view of it), or '' when unknown."""
    info = getattr(conn, 'info', None)
    host, port = getattr(info, 'host', None), getattr(info, 'port', None)
    if not host:
        return ''
    return '%s:%s' % (host, port) if port else str(host)


def hard_close(conn):
    """Shut the connection's socket down: a frozen server answers neither the statement nor a cancel request, and
    its kernel keeps the TCP connection alive, so only this ends the wait (libpq then reports the loss)."""
    try:
        fd = os.dup(conn.fileno())
    except Exception:  # pylint: disable=broad-except
        return False
    try:
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
        return True
    except OSError:
        return False


def schema_problem(schema):
    """Why ``schema`` can never be the workload's, or None. Pure: checked before anything connects."""
    if schema is None or not schema.strip():
        return "schema must name a schema of the workload's own, got '%s'" % (schema,)
    low = schema.lower()
    if low in PROTECTED or low.startswith('pg_'):
        return ("schema '%s' is refused: the workload never works in public, pggit or a system schema (pg_*, "
                "information_schema); name a schema of its own, such as pggit_chaos_workload" % schema)
    return None


def mark(run_id):
    return '%s run %s' % (MARK, run_id)


def is_ours(comment):
    """A workload's mark, of any run: such a schema may be claimed (re-marked), never dropped by another run."""
    return bool(comment) and comment.startswith(MARK + ' run ')


def drop_step(conn, schema, run_id):
    """The undo step that drops a run's schema while its comment is still exactly that run's mark."""
    return {'type': 'pg_drop_schema', 'conn': conn, 'schema': schema, 'only_if_comment': mark(run_id)}


def _secret(params):
    secret = _pgconn.secret_conn(params)
    if params.get('connect_secrets'):  # in the program, the side file's secrets are already apart
        secret['connect_secrets'] = params['connect_secrets']
    return secret


def schema_comment(params):
    """(exists, comment) of ``params['schema']``, looked up by exact nspname."""
    conn = _pgconn.connect(multi_host_params(params), application_name=APP + '-cleanup')
    try:
        cur = conn.cursor()
        cur.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (params['schema'],))
        row = cur.fetchone()
        return (row is not None, row[0] if row else None)
    finally:
        conn.close()


def drop_own_schema(params, run_id):
    """Drop ``params['schema']`` only while its comment is exactly the mark of ``run_id``: (outcome, message).

    The one drop of the workload: the run's own clean-up (at its end, and when
    stopped), ``state: absent`` and the revert's undo step all run the same
    ``pg_drop_schema`` step handler.  The outcome is ``dropped``, ``kept``
    (not there, or not that run's schema) or ``failed``."""
    schema = params['schema']
    step = drop_step(_pgconn.stored_conn(multi_host_params(params)), schema, run_id)
    try:
        _steps.check_steps([step], None)
        if _steps.STEP_HANDLERS['pg_drop_schema'](step, {'secret': _secret(params)}):
            return 'dropped', 'dropped schema %s' % schema
        exists, comment = schema_comment(params)
    except (UndoError, ValueError, _pgconn.psycopg2.Error) as exc:
        return 'failed', 'cleanup of schema %s failed: %s' % (schema, _pgconn.one_line(exc))
    if not exists:
        return 'kept', 'schema %s is not there' % schema
    return 'kept', ("schema %s kept: its comment is %r, not the mark of run %s (%r); only that run's schema is dropped"
                    % (schema, comment, run_id, mark(run_id)))


class CommitTimer(object):
    """A timer that cancels the statement in flight on ``conn`` after ``seconds``; ``fired`` says whether it did."""

    def __init__(self, conn, seconds):
        self.fired = False
        self.conn = conn
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self):
        self.fired = True
        try:
            self.conn.cancel()
        except Exception:  # pylint: disable=broad-except
            pass

    def cancel(self):
        self.timer.cancel()


class OpWatchdog(object):
    """Shut a multi-host client's connection down when one DDL outlasts ``seconds`` (see :func:`hard_close`)."""

    def __init__(self, conn, seconds):
        self.fired = False
        self.conn = conn
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self):
        self.fired = hard_close(self.conn)

    def cancel(self):
        self.timer.cancel()


class Workload(object):
    def __init__(self, params, connect=None, clock=time.time, sleep=time.sleep, should_stop=None, worker=None):
        self.params = params
        # One worker of several (workers > 1) has a token space of its own: <run_id>_w<k>_<seq>.
        self.worker = worker
        self.token_prefix = (worker_prefix(params.get('run_id'), worker) if worker is not None
                             else '%s_' % params.get('run_id'))
        self.multi = bool(params.get('hosts'))
        self.conn_params = multi_host_params(params)
        self._connect = connect or (lambda: _pgconn.connect(self.reconnect_params(), application_name=APP, autocommit=False))
        self.server = ''
        self.acked_by = ''
        self.observed_on = None
        self.clock = clock
        self._sleep = sleep
        self.should_stop = should_stop or (lambda: None)
        self.conn = None
        self.reconnects = -1
        self.errors = {}
        self.ops = []
        self.latencies = []
        self.op_times = []
        self.history_start = None
        self.audit = None
        self.prefix = None
        self.server_clock = None
        self.refused = []

    def reconnect_params(self):
        """The connection options of the next connection: a multi-host client tries the server it lost last, as
        an application would, so that a hung server costs one connect timeout at most once per outage."""
        if not self.multi or not self.server:
            return self.conn_params
        lost = self.server.rsplit(':', 1)[0]
        hosts = [h for h in self.params['hosts'] if h != lost] + [h for h in self.params['hosts'] if h == lost]
        return dict(self.conn_params, login_host=','.join(hosts))

    def observe_params(self):
        """The final check of a multi-host client reads the server that acknowledged its last DDL first: another
        server that also accepts writes then (an old leader thawed before its manager demoted it) must not be
        taken for the new leader."""
        if not self.multi or not self.acked_by:
            return self.conn_params
        last = self.acked_by.rsplit(':', 1)[0]
        hosts = [h for h in self.params['hosts'] if h == last] + [h for h in self.params['hosts'] if h != last]
        return dict(self.conn_params, login_host=','.join(hosts))

    def sleep(self, seconds):
        self.check_stop()
        self._sleep(seconds)
        self.check_stop()

    def check_stop(self):
        reason = self.should_stop()
        if reason:
            raise Stopped(reason)

    def _error(self, exc):
        name = exc.__class__.__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def _ensure_conn(self):
        if self.conn is not None and not self.conn.closed:
            return True
        try:
            self.conn = self._connect()
            self.conn.autocommit = False
            self.server = server_of(self.conn)
            self.reconnects += 1
            return True
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self.conn = None
            return False

    def _drop_conn(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except _pgconn.psycopg2.Error:
                pass
        self.conn = None

    def cancel(self):
        """Cancel the statement in flight (called from another thread)."""
        conn = self.conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except Exception:  # pylint: disable=broad-except
                pass

    def one(self, token):
        """Issue one tracked DDL; return its outcome (and keep its start and duration)."""
        started = self.clock()
        outcome = self._one(token, started)
        if len(self.op_times) < OP_TIMES_KEPT:
            self.op_times.append([round(started, 3), round((self.clock() - started) * 1000.0, 1), outcome])
        return outcome

    def one_op(self, token):
        """One tracked DDL as an op of the checker: token, outcome, the server that answered and when."""
        server, started = self.server, self.clock()
        watchdog = None
        if self.multi and self.conn is not None:
            watchdog = OpWatchdog(self.conn, self.params['statement_timeout_ms'] / 1000.0 + HARD_CLOSE_GRACE)
        try:
            outcome = self.one(token)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if outcome == 'ok':
            self.acked_by = server
        return {'token': token, 'outcome': outcome, 'server': server, 'started': round(started, 3),
                'ended': round(self.clock(), 3)}

    def commit_timer(self, conn):
        """Cancel a commit that outlasts statement_timeout_ms, as a client with a timeout does.

        PostgreSQL's statement_timeout does not end a commit's wait for a
        synchronous standby (the wait only yields to a cancel or a
        termination), so the client cancels it: the server then answers the
        commit with the warning that makes its outcome ``maybe``."""
        return CommitTimer(conn, self.params['statement_timeout_ms'] / 1000.0)

    def _sync_cancelled(self):
        notices = getattr(self.conn, 'notices', None) or []
        return any(mark in str(notice) for notice in notices for mark in SYNC_CANCELLED)

    def _one(self, token, started):
        ident = _pgconn.sql.Identifier(self.params['schema'], 't_' + token)
        try:
            cur = self.conn.cursor()
            cur.execute('SET LOCAL statement_timeout = %s', (int(self.params['statement_timeout_ms']),))
            cur.execute(_pgconn.sql.SQL('CREATE TABLE {} (id int)').format(ident))
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self._rollback_or_drop()
            return 'fail'
        timer = self.commit_timer(self.conn)
        try:
            notices = getattr(self.conn, 'notices', None)
            if notices:
                del notices[:]
            self.conn.commit()
        except _pgconn.psycopg2.OperationalError as exc:
            self._error(exc)
            self._drop_conn()
            return 'unknown'
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self._rollback_or_drop()
            # Our own cancel of a commit in flight: whether it committed is for the catalog to say.
            return 'unknown' if timer.fired else 'fail'
        finally:
            timer.cancel()
        if self._sync_cancelled():
            # Committed here, perhaps not on the synchronous standby: the client cannot call it acknowledged.
            self.errors['SyncRepCancelled'] = self.errors.get('SyncRepCancelled', 0) + 1
            return 'maybe'
        self.latencies.append((self.clock() - started) * 1000.0)
        return 'ok'

    def _rollback_or_drop(self):
        try:
            self.conn.rollback()
        except _pgconn.psycopg2.Error:
            self._drop_conn()

    def op_params(self):
        """The connection of one DDL: as ``op_login_user`` when set (a client without superuser, which the
        server refuses once the non-reserved slots are full), else the workload's own."""
        params = self.reconnect_params()
        if not self.params.get('op_login_user'):
            return params
        return dict(params, login_user=self.params['op_login_user'], login_password=self.params.get('op_login_password') or '')

    def fresh_op(self, token):
        """One tracked DDL on a connection of its own (``connect_per_op``). A connection the server refuses sent no
        DDL: that op is a definite ``fail``, kept with the time and the server's message in ``refused``."""
        started = self.clock()
        self._drop_conn()
        try:
            self.conn = self._connect_op()
            self.conn.autocommit = False
            self.server = server_of(self.conn)
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self.conn = None
            if len(self.refused) < REFUSED_MAX:
                self.refused.append([round(started, 3), _pgconn.one_line(exc)])
            if len(self.op_times) < OP_TIMES_KEPT:
                self.op_times.append([round(started, 3), round((self.clock() - started) * 1000.0, 1), 'fail'])
            return {'token': token, 'outcome': 'fail', 'server': '', 'started': round(started, 3), 'ended': round(self.clock(), 3)}
        try:
            return self.one_op(token)
        finally:
            self._drop_conn()

    def _connect_op(self):
        return _pgconn.connect(self.op_params(), application_name=APP, autocommit=False)

    def _grant_op_user(self, cur):
        """Let ``op_login_user`` create its tables in the workload's own schema (nothing else is granted)."""
        if not self.params.get('op_login_user'):
            return
        try:
            cur.execute(_pgconn.sql.SQL('GRANT USAGE, CREATE ON SCHEMA {} TO {}').format(
                _pgconn.sql.Identifier(self.params['schema']), _pgconn.sql.Identifier(self.params['op_login_user'])))
        except _pgconn.psycopg2.Error as exc:
            if getattr(exc, 'pgcode', None) != UNDEFINED_OBJECT and exc.__class__.__name__ != 'UndefinedObject':
                raise
            # A missing role never appears by waiting: say so at once (prepare rolls the schema back).
            raise WorkloadError("op_login_user '%s' is not a role of this server (%s): create it first, e.g. with "
                                "pggit_chaos_sessions hold=false" % (self.params['op_login_user'], _pgconn.one_line(exc)))

    def _claim_schema(self, cur):
        """Create the schema with this run's mark, or take over one that carries a workload mark by re-marking it.

        From then on only this run's clean-up (and the undo in its record) may
        drop it: an earlier run sharing the schema finds the mark changed and
        leaves the schema, and this run's tables, alone."""
        schema = self.params['schema']
        ident = _pgconn.sql.Identifier(schema)
        own = mark(self.params['run_id'])
        cur.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (schema,))
        row = cur.fetchone()
        if row is None:
            cur.execute(_pgconn.sql.SQL('CREATE SCHEMA {}').format(ident))
        elif not is_ours(row[0]):
            raise WorkloadError("schema '%s' exists and is not the workload's own (its comment is %r, not '%s ...'); "
                                "the workload works only in schemas it created: choose another schema, or drop "
                                "this one yourself if it is a leftover" % (schema, row[0], MARK + ' run'))
        elif row[0] == own:
            return
        cur.execute(_pgconn.sql.SQL('COMMENT ON SCHEMA {} IS {}').format(ident, _pgconn.sql.Literal(own)))

    def prepare(self):
        deadline = self.clock() + self.params['settle_timeout']
        while self.clock() < deadline:
            if self._ensure_conn():
                try:
                    cur = self.conn.cursor()
                    cur.execute('SELECT count(*) FROM pggit.objects WHERE starts_with(object_name, %s)',
                                ('t_%s_' % self.params['run_id'],))
                    used = cur.fetchone()[0]
                    if used:
                        raise WorkloadError("run_id '%s' was already used in this database (%d pggit.objects rows); "
                                            "every run needs a new one" % (self.params['run_id'], used))
                    cur.execute('SELECT coalesce(max(id), 0) FROM pggit.history')
                    self.history_start = int(cur.fetchone()[0])
                    self._claim_schema(cur)
                    self._grant_op_user(cur)
                    self.conn.commit()
                    return
                except WorkloadError:
                    self._rollback_or_drop()
                    raise
                except _pgconn.psycopg2.Error as exc:
                    self._error(exc)
                    self._rollback_or_drop()
            self.sleep(0.5)
        raise RuntimeError('could not prepare schema %s within %ss' % (self.params['schema'], self.params['settle_timeout']))

    def run(self):
        deadline = self.clock() + self.params['duration']
        if self.params.get('stop_at') is not None:  # count_from=start: the preparation took part of the duration
            deadline = min(deadline, float(self.params['stop_at']))
        seq = 0
        try:
            while self.clock() < deadline and seq < self.params['max_ops']:
                self.check_stop()
                if not self.params.get('connect_per_op') and not self._ensure_conn():
                    self.sleep(0.2)
                    continue
                seq += 1
                token = '%s%06d' % (self.token_prefix, seq)
                self.ops.append(self.fresh_op(token) if self.params.get('connect_per_op') else self.one_op(token))
                if self.params['interval']:
                    self.sleep(self.params['interval'])
        finally:
            self._drop_conn()

    def observe(self):
        """History CREATE rows per token, and tokens present in the catalog."""
        deadline = self.clock() + self.params['settle_timeout']
        last = None
        while self.clock() < deadline:
            try:
                conn = _pgconn.connect(self.observe_params(), application_name=APP + '-check')
            except _pgconn.psycopg2.Error as exc:
                last = exc
                self.sleep(0.5)
                continue
            try:
                self.observed_on = server_of(conn)
                return self._observe(conn)
            except _pgconn.psycopg2.Error as exc:
                last = exc
                self.sleep(0.5)
            finally:
                conn.close()
        raise RuntimeError('final check could not read history: %s' % _pgconn.one_line(last))

    def _observe(self, conn):
        prefix = 't_%s_' % self.params['run_id']
        cur = conn.cursor()
        cur.execute("SELECT o.object_name, count(h.id) FROM pggit.objects o "
                    "LEFT JOIN pggit.history h ON h.object_id = o.id AND h.change_type::text = 'CREATE' "
                    "WHERE o.schema_name = %s AND starts_with(o.object_name, %s) GROUP BY o.object_name",
                    (self.params['schema'], prefix))
        history = dict((name[2:], int(n)) for name, n in cur.fetchall())
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND starts_with(c.relname, %s)", (self.params['schema'], prefix))
        catalog = set(row[0][2:] for row in cur.fetchall())
        if self.history_start is not None:
            self.audit = self._audit(cur, self.history_start)
            cur.execute(PREFIX_SQL, {'start': self.history_start})
            rows, max_id, digest = cur.fetchone()
            self.prefix = dict(rows=int(rows), max_id=int(max_id), digest=digest)
        self.server_clock = self._server_clock(cur)
        return history, catalog

    def _audit(self, cur, start):
        """Ordering audit of the pggit.history rows after id ``start``: rows whose created_at runs backwards."""
        cur.execute(AUDIT_SQL, {'start': start, 'real_now': time.time()})
        rows, backwards, worst, first_back, since_missed, future = cur.fetchone()
        return dict(since_id=start, rows=int(rows), backwards=int(backwards), max_backwards_s=float(worst or 0),
                    first_backwards_id=first_back, missed_by_time_filter=int(since_missed), in_the_future=int(future))

    def _server_clock(self, cur):
        """The server's clock_timestamp() against this host's clock, read around it: (offset_s, at)."""
        before = time.time()
        cur.execute('SELECT extract(epoch FROM clock_timestamp())::float8')
        server = float(cur.fetchone()[0])
        after = time.time()
        middle = (before + after) / 2.0
        return dict(offset_s=round(server - middle, 3), at=round(middle, 3), uncertainty_s=round((after - before) / 2.0, 3))

    def committed(self, catalog, ops=None):
        """Every table this run committed: acknowledged, or indeterminate (unknown, maybe) and found in the catalog."""
        return ['%s.t_%s' % (self.params['schema'], op['token']) for op in (self.ops if ops is None else ops)
                if op['outcome'] == 'ok' or (op['outcome'] in INDETERMINATE and op['token'] in catalog)]

    def cleanup(self):
        """Drop the schema while it carries this run's mark (the rule of the undo step in its record): (outcome, message)."""
        return drop_own_schema(self.params, self.params['run_id'])

    def result(self, verdict, catalog, started, crew=None):
        """The run's result; ``crew``: every worker of a multi-worker run (this one first), whose figures add up."""
        crew = crew or [self]
        ops = [op for worker in crew for op in worker.ops]
        latencies = [ms for worker in crew for ms in worker.latencies]
        op_times = thin_op_times(sorted(item for worker in crew for item in worker.op_times))
        errors = {}
        for worker in crew:
            for name, count in worker.errors.items():
                errors[name] = errors.get(name, 0) + count
        tables = self.committed(catalog, ops)
        return dict(
            changed=bool(ops), check=verdict, reconnects=sum(max(0, worker.reconnects) for worker in crew), errors=errors,
            latency_ms=latency_figures(latencies),
            seconds=round(self.clock() - started, 3), tables=tables, table_count=len(tables),
            op_times=op_times, history_order=self.audit, history_prefix=self.prefix, server_clock=self.server_clock,
            servers=self.server_log(catalog, ops),
        )

    def server_log(self, catalog, ops=None):
        """For a multi-host client: every DDL with the server that answered it, when, and whether the catalog read at
        the end (on the server that then accepted writes, ``observed_on``) holds it. None for a one-host client."""
        if not self.multi:
            return None
        return dict(observed_on=self.observed_on, acked_last_by=self.acked_by, hosts=list(self.params.get('hosts') or []),
                    target_session_attrs=self.conn_params['connect_params']['target_session_attrs'],
                    ops=[[op['token'], op['outcome'], op.get('server', ''), op.get('started'), op.get('ended'),
                          op['token'] in catalog] for op in (self.ops if ops is None else ops)[:OP_TIMES_MAX]])


def thin(items, most):
    """At most ``most`` of ``items``, taken evenly over the whole list (so that every phase of a run keeps its share)."""
    if len(items) <= most:
        return items
    step = -(-len(items) // most)
    return items[::step]


def thin_op_times(items, most_ok=OP_TIMES_MAX, most_other=OP_FAILS_MAX):
    """The acknowledged DDL thinned evenly to ``most_ok`` and the others (failed, uncertain) to ``most_other``, each
    kind over the whole run, in start order: a long multi-worker run never loses its failures to the thinning."""
    acked = [item for item in items if item[2] == 'ok']
    other = [item for item in items if item[2] != 'ok']
    return sorted(thin(acked, most_ok) + thin(other, most_other))


def latency_figures(latencies):
    """p50, p95, p99 and max of DDL latencies in ms (None each when there are none)."""
    return dict(p50=percentile(latencies, 50), p95=percentile(latencies, 95), p99=percentile(latencies, 99),
                max=max(latencies) if latencies else None)


# --- pgGit's own cost: the same DDL with its event triggers firing and not firing --------------
# The "off" side runs in a session of its own with session_replication_role = replica: event triggers
# left at their default (ENABLE, fires in origin and local) do not fire in that session, and only in
# it. Nothing is disabled for anyone else and nothing is left behind when the session ends, so this
# is no fault and needs no ledger record. Whether the triggers really stayed quiet is read back from
# pggit.objects (off_tracked must be 0), never assumed.
COST_PREFIX = 'c_'
COST_TRACKED_SQL = 'SELECT count(*) FROM pggit.objects WHERE schema_name = %s AND starts_with(object_name, %s)'


def cost_prefix(run_id, side):
    return '%s%s_%s_' % (COST_PREFIX, run_id, side)


def cost_figures(on_ms, off_ms, tracked=None):
    """The tracking cost from the DDL times with tracking on and off (ms). Pure."""
    on_p50, off_p50 = percentile(on_ms, 50), percentile(off_ms, 50)
    overhead = None if on_p50 is None or off_p50 is None else round(on_p50 - off_p50, 3)
    pct = round(100.0 * overhead / off_p50, 1) if overhead is not None and off_p50 else None
    tracked = tracked or {}
    figures = dict(n=min(len(on_ms), len(off_ms)), on_p50_ms=on_p50, off_p50_ms=off_p50, on_p95_ms=percentile(on_ms, 95),
                   off_p95_ms=percentile(off_ms, 95), overhead_ms=overhead, overhead_pct=pct,
                   on_tracked=tracked.get('on'), off_tracked=tracked.get('off'))
    # Valid only when every "on" DDL was tracked and no "off" one was: the triggers did, and did not, fire.
    figures['valid'] = bool(figures['n']) and tracked.get('on') == len(on_ms) and tracked.get('off') == 0
    return figures


def measure_tracking_cost(params, count, clock=time.time, connect=None, should_stop=None):
    """CREATE TABLE ``count`` times with pgGit's triggers firing and ``count`` times without, alternating, in the
    workload's own schema (tables ``c_<run_id>_on_<i>`` and ``c_<run_id>_off_<i>``, outside the checker's tokens);
    returns :func:`cost_figures`, or ``{'n': 0, 'error': ...}`` when it could not measure (never fails the run)."""
    connect = connect or (lambda: _pgconn.connect(multi_host_params(params), application_name=APP + '-cost',
                                                  autocommit=False))
    should_stop = should_stop or (lambda: None)
    schema, run_id = params['schema'], params['run_id']
    conns = {}
    try:
        try:
            conns['on'], conns['off'] = connect(), connect()
            cur = conns['off'].cursor()
            cur.execute('SET session_replication_role = replica')
            conns['off'].commit()
        except _pgconn.psycopg2.Error as exc:
            return {'n': 0, 'error': 'cannot open a session with the triggers off (SET session_replication_role = replica '
                                     'needs a superuser): %s' % _pgconn.one_line(exc)}
        times = {'on': [], 'off': []}
        for index in range(int(count)):
            reason = should_stop()
            if reason:
                raise Stopped(reason)
            for side in (('on', 'off') if index % 2 == 0 else ('off', 'on')):
                conn = conns[side]
                ident = _pgconn.sql.Identifier(schema, '%s%d' % (cost_prefix(run_id, side), index))
                began = clock()
                try:
                    conn.cursor().execute(_pgconn.sql.SQL('CREATE TABLE {} (id int)').format(ident))
                    conn.commit()
                except _pgconn.psycopg2.Error as exc:
                    return {'n': 0, 'error': 'the tracking-cost DDL failed: %s' % _pgconn.one_line(exc)}
                times[side].append(round((clock() - began) * 1000.0, 3))
        tracked = {}
        cur = conns['on'].cursor()
        for side in ('on', 'off'):
            cur.execute(COST_TRACKED_SQL, (schema, cost_prefix(run_id, side)))
            tracked[side] = int(cur.fetchone()[0])
        conns['on'].commit()
        return cost_figures(times['on'], times['off'], tracked)
    finally:
        for conn in conns.values():
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass


class Crew(object):
    """The workers of one run, run at once in threads (each its own connection and token space)."""

    def __init__(self, workers):
        self.workers = workers

    def cancel(self):
        for worker in self.workers:
            worker.cancel()

    def run(self):
        """Run every worker to its end; raise Stopped when any was told to stop (they all are, by the same stop)."""
        stopped, failures = [], []

        def body(worker):
            try:
                worker.run()
            except Stopped as exc:
                stopped.append(str(exc))
            except Exception as exc:  # pylint: disable=broad-except
                failures.append('worker %s: %s' % (worker.worker, exc))

        threads = [threading.Thread(target=body, args=(worker,), name='ddl-worker-%s' % worker.worker)
                   for worker in self.workers]
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            thread.join()
        if stopped:
            raise Stopped(stopped[0])
        if failures:
            raise RuntimeError('; '.join(failures))

    def ops(self):
        return [worker.ops for worker in self.workers]

    def count(self):
        return sum(len(worker.ops) for worker in self.workers)


def worker_results(crew, verdicts):
    """Per worker: its index, its checker verdict, its DDL count and latency."""
    return [dict(worker=item['worker'], check=item['check'], ops=len(worker.ops), latency_ms=latency_figures(worker.latencies))
            for worker, item in zip(crew.workers, verdicts)]


def refused_summary(refused):
    """The refused connections of a ``connect_per_op`` run: count, first and last time, the server's messages."""
    refused = sorted(refused)
    messages = {}
    for _at, msg in refused:
        messages[msg] = messages.get(msg, 0) + 1
    return dict(count=len(refused), first_at=refused[0][0] if refused else None, last_at=refused[-1][0] if refused else None,
                messages=[{'msg': m, 'count': n} for m, n in sorted(messages.items(), key=lambda item: -item[1])[:5]])


def summary(verdict):
    return '%d DDL: %d ok, %d failed, %d unknown, %d maybe, %d tracked; lost %d, duplicated %d, unexpected %d' % (
        verdict['ops'], verdict['ok'], verdict['failed'], verdict['unknown'], verdict.get('maybe', 0), verdict['tracked'],
        len(verdict['lost']), len(verdict['duplicated']), len(verdict['unexpected']))


class SignalStop(object):
    """Why to stop: SIGTERM/SIGINT, taken by a thread (sigwait) that cancels the statement in flight, or the record."""

    def __init__(self, record_check, clock=time.time):
        self.record_check = record_check
        self.clock = clock
        self.reason = None
        self.workload = None
        self.checked = 0.0

    def start(self):
        signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        thread = threading.Thread(target=self._wait, args=(signals,), name='sigwait')
        thread.daemon = True
        thread.start()

    def _wait(self, signals):
        got = signal.sigwait(signals)
        self.reason = 'signal %d' % got
        if self.workload is not None:
            self.workload.cancel()

    def __call__(self):
        if self.reason:
            return self.reason
        now = self.clock()
        if now - self.checked >= 0.5:
            self.checked = now
            return self.record_check()
        return None


def run_workload(program):
    """The program's body: prepare, pass the gate, measure the tracking cost if asked, run the workers, check,
    clean up, report."""
    out = program.out
    params = program.conn_params()
    params.update(program.detail['options'])
    count = int(params.get('workers') or 1)
    stop = SignalStop(program.stop_condition())
    stop.start()
    crew = Crew([Workload(params, should_stop=stop, worker=None if count == 1 else index) for index in range(count)])
    lead = crew.workers[0]
    stop.workload = crew
    started = time.time()
    cost = None
    try:
        lead.prepare()
        if not program.recorded():
            raise Stopped('never recorded in the ledger')
        if params.get('tracking_cost'):
            cost = measure_tracking_cost(params, params['tracking_cost'], should_stop=stop)
        crew.run()
        history, catalog = lead.observe()
    except Stopped as exc:
        cleaned = lead.cleanup()[1] if params['cleanup'] else 'schema %s kept (cleanup=false)' % params['schema']
        out.write('stopped', reason=str(exc), ops=crew.count(), cleanup=cleaned)
        program.log('stopped (%s) after %d DDL; %s' % (exc, crew.count(), cleaned))
        return 0
    except (WorkloadError, RuntimeError) as exc:
        out.write('error', msg=str(exc), errors=lead.errors)
        program.log(str(exc))
        return 1
    if count == 1:
        verdict = check(lead.ops, history, catalog, expect_tracked=params['expect_tracking'])
        per_worker = [dict(worker=0, check=verdict, ops=len(lead.ops), latency_ms=latency_figures(lead.latencies))]
    else:
        verdict, verdicts = merge_workers(crew.ops(), history, catalog, expect_tracked=params['expect_tracking'],
                                          prefixes=[worker.token_prefix for worker in crew.workers])
        per_worker = worker_results(crew, verdicts)
    result = lead.result(verdict, catalog, started, crew=crew.workers)
    result['workers'] = per_worker
    if params.get('connect_per_op'):
        result['refused'] = refused_summary([r for worker in crew.workers for r in worker.refused])
    if cost is not None:
        result['tracking_cost'] = cost
    outcome = 'kept'
    if params['cleanup']:
        outcome, result['cleanup'] = lead.cleanup()
    result['msg'] = summary(verdict) + ('' if count == 1 else ' (%d workers)' % count)
    out.write('done', result=result, cleanup_outcome=outcome)
    program.log(result['msg'])
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, run_workload, argv)
