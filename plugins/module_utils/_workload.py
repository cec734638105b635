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
from ansible_collections.pggit.chaos.plugins.module_utils._checker import INDETERMINATE, check, percentile

PROC_TAG = 'pggit-chaos-workload'
APP = 'pggit-chaos-workload'
MARK = 'pggit.chaos workload'
RUN_ID_RE = re.compile(r'^[a-z0-9_]{1,24}$')
PROTECTED = ('public', 'pggit', 'information_schema')
# The warning of a commit whose wait for a synchronous standby was cancelled (PostgreSQL's syncrep.c).
SYNC_CANCELLED = ('already committed locally', 'canceling wait for synchronous replication')
# At most this many DDL keep their start and duration in the result.
OP_TIMES_MAX = 5000
OPTIONS = ('run_id', 'duration', 'interval', 'max_ops', 'schema', 'statement_timeout_ms', 'settle_timeout', 'cleanup',
           'expect_tracking', 'hosts', 'target_session_attrs')
# A multi-host client gives up on a server that does not answer the connection within this (a frozen host's kernel
# still accepts TCP; only the startup answer never comes), and on a DDL this long past its statement timeout.
MULTI_CONNECT_TIMEOUT = 2
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
    def __init__(self, params, connect=None, clock=time.time, sleep=time.sleep, should_stop=None):
        self.params = params
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
        if len(self.op_times) < OP_TIMES_MAX:
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
        seq = 0
        try:
            while self.clock() < deadline and seq < self.params['max_ops']:
                self.check_stop()
                if not self._ensure_conn():
                    self.sleep(0.2)
                    continue
                seq += 1
                token = '%s_%06d' % (self.params['run_id'], seq)
                self.ops.append(self.one_op(token))
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

    def committed(self, catalog):
        """Every table this run committed: acknowledged, or indeterminate (unknown, maybe) and found in the catalog."""
        return ['%s.t_%s' % (self.params['schema'], op['token']) for op in self.ops
                if op['outcome'] == 'ok' or (op['outcome'] in INDETERMINATE and op['token'] in catalog)]

    def cleanup(self):
        """Drop the schema while it carries this run's mark (the rule of the undo step in its record): (outcome, message)."""
        return drop_own_schema(self.params, self.params['run_id'])

    def result(self, verdict, catalog, started):
        tables = self.committed(catalog)
        return dict(
            changed=bool(self.ops), check=verdict, reconnects=max(0, self.reconnects), errors=self.errors,
            latency_ms=dict(p50=percentile(self.latencies, 50), p95=percentile(self.latencies, 95),
                            max=max(self.latencies) if self.latencies else None),
            seconds=round(self.clock() - started, 3), tables=tables, table_count=len(tables),
            op_times=self.op_times, history_order=self.audit, history_prefix=self.prefix, server_clock=self.server_clock,
            servers=self.server_log(catalog),
        )

    def server_log(self, catalog):
        """For a multi-host client: every DDL with the server that answered it, when, and whether the catalog read at
        the end (on the server that then accepted writes, ``observed_on``) holds it. None for a one-host client."""
        if not self.multi:
            return None
        return dict(observed_on=self.observed_on, acked_last_by=self.acked_by, hosts=list(self.params.get('hosts') or []),
                    target_session_attrs=self.conn_params['connect_params']['target_session_attrs'],
                    ops=[[op['token'], op['outcome'], op.get('server', ''), op.get('started'), op.get('ended'),
                          op['token'] in catalog] for op in self.ops[:OP_TIMES_MAX]])


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
    """The program's body: prepare, pass the gate, run, check, clean up, report."""
    out = program.out
    params = program.conn_params()
    params.update(program.detail['options'])
    stop = SignalStop(program.stop_condition())
    stop.start()
    workload = Workload(params, should_stop=stop)
    stop.workload = workload
    started = time.time()
    try:
        workload.prepare()
        if not program.recorded():
            raise Stopped('never recorded in the ledger')
        workload.run()
        history, catalog = workload.observe()
    except Stopped as exc:
        cleaned = workload.cleanup()[1] if params['cleanup'] else 'schema %s kept (cleanup=false)' % params['schema']
        out.write('stopped', reason=str(exc), ops=len(workload.ops), cleanup=cleaned)
        program.log('stopped (%s) after %d DDL; %s' % (exc, len(workload.ops), cleaned))
        return 0
    except (WorkloadError, RuntimeError) as exc:
        out.write('error', msg=str(exc), errors=workload.errors)
        program.log(str(exc))
        return 1
    verdict = check(workload.ops, history, catalog, expect_tracked=params['expect_tracking'])
    result = workload.result(verdict, catalog, started)
    outcome = 'kept'
    if params['cleanup']:
        outcome, result['cleanup'] = workload.cleanup()
    result['msg'] = summary(verdict)
    out.write('done', result=result, cleanup_outcome=outcome)
    program.log(result['msg'])
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, run_workload, argv)
