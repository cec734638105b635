# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-load``: a pgbench load on the target, as a ledger-recorded program.

The module (``pggit_chaos_load``) makes sure the load's own database exists
(``pggit_chaos_load``, created by us and marked with the comment
:data:`MARK`; a database of that name without the mark is refused), looks
whether it is initialised (:func:`ready`: the pgbench tables at the asked
scale with their primary keys), writes the fault's record, then starts this
program.  Started by ``_daemon.spawn`` it leads a process group of its own,
and every pgbench it runs, the initialisation (``pgbench -i -s <scale>``, when
the module found the database not ready) as well as the run, is in that group,
so the one undo step that stops it, a ``kill_process`` step with ``group:
true`` and ``members_match: pgbench`` naming this program's pid, is in the
record before the program passes its gate (``_program.Program.recorded``),
that is before any pgbench may run.  The step kills every pgbench process of
the group even when this program is gone: a revert or the TTL reaper stops a
long initialisation at any moment, even when the controller that asked for it
is dead.  An initialisation cut short leaves the tables without their primary
keys or without their rows: :func:`ready` says no, and the next run starts the
initialisation over (``pgbench -i`` drops the tables first).

The program then runs ``pgbench -T <duration> -P 1`` (bounded by what is left
of the TTL too), writes each progress line as a ``progress`` event, and at the
end a ``done`` event with the run's figures: TPS of the whole run, TPS per
second, transaction latency p50/p95/p99 (from pgbench's per-transaction log,
written in a scratch folder inside the state dir and removed after), and the
seconds the initialisation took (``init_s``, null when there was none).  It
stops when its record is gone or reverted, past ``expires_at`` plus a grace,
or on SIGTERM (the revert, the reaper), and then kills every pgbench process
of its group, and ends the server sessions of an initialisation it cut short
(an index build goes on in the server after its client is gone).

Standard library only, plus psycopg2 (lazily, in ``_pgconn``) to end those
sessions: it runs detached, from the engine copy.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _program, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

PROC_TAG = 'pggit-chaos-load'
BINARY = 'pgbench'
# The command-line mark of the processes the group undo kills.
MEMBERS = 'pgbench'
DATABASE = 'pggit_chaos_load'
MARK = 'pggit.chaos load database'
MODES = ('tpcb', 'select')
LOG_FOLDER = 'pgbench-log'
APP = 'pggit-chaos-load'
# The prefix of the application_name of an initialisation's sessions (see init_app): the only sessions the program
# ends when it cuts one short, and only those of its own fault, never another run's.
INIT_APP = 'pggit-chaos-load-init'
APP_MAX = 63  # PostgreSQL keeps the first NAMEDATALEN - 1 bytes of application_name
# pgbench's tables; the initialisation adds the primary keys last, the accounts' after the others.
TABLES = ('pgbench_branches', 'pgbench_tellers', 'pgbench_accounts', 'pgbench_history')
KEYED = ('pgbench_branches', 'pgbench_tellers', 'pgbench_accounts')
READY_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname = ANY(%s)")
KEYS_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relname = ANY(%s) AND i.indisprimary AND i.indisvalid")
# How long pgbench must stay up after it is started to count as started (a bad option exits at once).
START_CHECK_S = 0.3
STOP_GRACE = 1.0
# Environment variables of libpq, from the connection keywords of _pgconn.conn_kwargs.
LIBPQ_ENV = (('host', 'PGHOST'), ('hostaddr', 'PGHOSTADDR'), ('port', 'PGPORT'), ('user', 'PGUSER'),
             ('password', 'PGPASSWORD'), ('sslmode', 'PGSSLMODE'), ('sslcert', 'PGSSLCERT'), ('sslkey', 'PGSSLKEY'),
             ('sslrootcert', 'PGSSLROOTCERT'), ('connect_timeout', 'PGCONNECT_TIMEOUT'), ('passfile', 'PGPASSFILE'))
PROGRESS_RE = re.compile(r'^progress: ([0-9.]+) s, ([0-9.]+) tps')
TPS_RE = re.compile(r'^tps = ([0-9.]+)')
FAILED_RE = re.compile(r'^number of failed transactions: ([0-9]+)')
PROCESSED_RE = re.compile(r'^number of transactions actually processed: ([0-9]+)')
# Per-transaction log line: client_id transaction_no time script_no time_epoch time_us [schedule_lag]
LOG_FIELDS = 6


def candidates(version_num, server_bin=None):
    """Where pgbench may be, in order: the server's own bin folder, the distribution's folders for the major, PATH's."""
    major = int(version_num) // 10000 if version_num else None
    found = []
    if server_bin:
        found.append(os.path.join(server_bin, BINARY))
    if major:
        found += ['/usr/lib/postgresql/%d/bin/%s' % (major, BINARY), '/usr/pgsql-%d/bin/%s' % (major, BINARY)]
    found += [os.path.join(folder, BINARY) for folder in _steps.BIN_DIRS]
    return found


def find_pgbench(version_num, server_bin=None):
    """The first executable pgbench of :func:`candidates`, or None."""
    for path in candidates(version_num, server_bin):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def libpq_env(kwargs, application_name=APP):
    """The libpq environment of a connection (``_pgconn.conn_kwargs`` output): the password never goes on argv."""
    env = dict((name, str(kwargs[key])) for key, name in LIBPQ_ENV if kwargs.get(key) not in (None, ''))
    env['PGAPPNAME'] = application_name
    env['PGDATABASE'] = DATABASE
    return env


def init_app(fid):
    """The application_name of the initialisation of fault ``fid``: ``pggit-chaos-load-init-<fid>``, or a digest of the
    id when that is too long (a truncated id could name another run's)."""
    name = '%s-%s' % (INIT_APP, fid)
    if len(name) <= APP_MAX:
        return name
    return '%s-%s' % (INIT_APP, hashlib.sha256(fid.encode('utf-8')).hexdigest()[:APP_MAX - len(INIT_APP) - 1])


def ready(cur, scale):
    """Whether the load's database (``cur`` is connected to it) is initialised at ``scale``: the four tables, the
    three primary keys (added last by ``pgbench -i``), ``scale`` branches and ``10 * scale`` tellers (the rows are
    loaded in one transaction: all or none).  An initialisation cut short anywhere gives False."""
    cur.execute(READY_SQL, (list(TABLES),))
    if int(cur.fetchone()[0]) != len(TABLES):
        return False
    cur.execute(KEYS_SQL, (list(KEYED),))
    if int(cur.fetchone()[0]) != len(KEYED):
        return False
    cur.execute('SELECT (SELECT count(*) FROM public.pgbench_branches), (SELECT count(*) FROM public.pgbench_tellers)')
    branches, tellers = cur.fetchone()
    return int(branches) == int(scale) and int(tellers) == 10 * int(scale)


def init_argv(binary, scale):
    """``pgbench -i`` of the load's database at ``scale`` (no vacuum: the tables are fresh)."""
    return [binary, '-i', '-s', str(int(scale)), '-q', '-n', DATABASE]


def threads_for(clients):
    return max(1, min(int(clients), 4))


def run_argv(binary, spec, duration_s, log_prefix=None):
    """The pgbench command line of a run: clients, threads, rate, mode, duration, progress every second."""
    mode = spec.get('mode')
    if mode not in MODES:
        raise ValueError('mode must be one of %s, got %r' % (', '.join(MODES), mode))
    argv = [binary, '-c', str(int(spec['clients'])), '-j', str(threads_for(spec['clients'])),
            '-T', str(max(1, int(round(duration_s)))), '-P', '1', '-n']
    if mode == 'select':
        argv.append('-S')
    if spec.get('rate'):
        argv += ['-R', str(int(spec['rate']))]
    if log_prefix:
        argv += ['-l', '--log-prefix', log_prefix]
    argv.append(DATABASE)
    return argv


def parse_output(lines):
    """(tps of the whole run or None, [[t, tps], ...] per second, transactions, failed) from pgbench's output lines."""
    tps, series, processed, failed = None, [], None, None
    for line in lines:
        line = line.strip()
        match = PROGRESS_RE.match(line)
        if match:
            series.append([float(match.group(1)), float(match.group(2))])
            continue
        match = TPS_RE.match(line)
        if match and tps is None:
            tps = float(match.group(1))
            continue
        match = PROCESSED_RE.match(line)
        if match:
            processed = int(match.group(1))
            continue
        match = FAILED_RE.match(line)
        if match:
            failed = int(match.group(1))
    return tps, series, processed, failed


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100.0 * (len(ordered) - 1)))))]


def log_latencies(paths):
    """Transaction latencies in ms from pgbench per-transaction logs (bad lines skipped)."""
    values = []
    for path in paths:
        try:
            with open(path) as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) >= LOG_FIELDS:
                        try:
                            values.append(int(fields[2]) / 1000.0)
                        except ValueError:
                            continue
        except (IOError, OSError):
            continue
    return values


def latency_figures(values):
    return dict(p50=percentile(values, 50), p95=percentile(values, 95), p99=percentile(values, 99),
                max=max(values) if values else None, transactions=len(values))


def log_dir(state_dir, fid):
    """The scratch folder of a run's per-transaction logs: inside the state dir, named after the fault id."""
    return os.path.join(state_dir, LOG_FOLDER, fid.replace('/', '_'))


class Terminated(Exception):
    pass


def _on_term(signum, frame):
    raise Terminated('signal %d' % signum)


def _stop_group(program, me):
    try:
        return _steps.stop_group(os.getpgrp(), MEMBERS, since=me, grace=STOP_GRACE)
    except UndoError as exc:
        program.log(str(exc))
        return False


def _reader(stream, lines, out):
    for raw in iter(stream.readline, ''):
        line = raw.rstrip('\n')
        lines.append(line)
        match = PROGRESS_RE.match(line.strip())
        if match and out is not None:
            out.write('progress', t=float(match.group(1)), tps=float(match.group(2)), at=time.time())


def _spawn(argv, env, folder, lines, out=None):
    """Start one pgbench in this program's group, its output read into ``lines`` (progress lines as events)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=folder, close_fds=True, env=env, universal_newlines=True)
    thread = threading.Thread(target=_reader, args=(proc.stdout, lines, out), name='pgbench-output')
    thread.daemon = True
    thread.start()
    return proc, thread


def _watch(proc, should_stop):
    """Wait for ``proc`` to end; the reason to stop it when the record says so first, else None."""
    while proc.poll() is None:
        time.sleep(0.25)
        why = should_stop()
        if why:
            return why
    return None


# The undo step that ends a cut initialisation's server sessions when the program could not (SIGKILLed, OOM, a
# clean-up past its grace): the primary key's index build of a cut ``pgbench -i`` goes on in the server without it.
INIT_STEP = 'pg_end_load_init'
END_INIT_SQL = ('SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity '
                'WHERE application_name = %s AND datname = %s AND pid <> pg_catalog.pg_backend_pid()')
INIT_LEFT_SQL = ('SELECT count(*) FROM pg_catalog.pg_stat_activity '
                 'WHERE application_name = %s AND datname = %s AND pid <> pg_catalog.pg_backend_pid()')
INIT_END_WAIT = 5.0
# libpq's words for a server that is not running (nothing listens, no socket) or is (re)starting: none of its
# sessions is left to end. A time-out (an unreachable host) is no such proof, nor is a shutdown (a smart one waits for them).
SERVER_DOWN = ('Connection refused', 'No such file or directory', 'the database system is starting up',
               'the database system is in recovery mode')


def init_step(conn, fid):
    """The record's step that ends the initialisation sessions of fault ``fid`` (:func:`init_app`) in the load's database.

    It connects as the fault did (to its own database, not the load's, which may never have been created):
    ``pg_stat_activity`` covers the whole server."""
    return {'type': INIT_STEP, 'conn': dict(conn), 'application_name': init_app(fid)}


def check_init_step(step, state_dir):
    app = step.get('application_name')
    if not isinstance(app, str) or not app.startswith(INIT_APP + '-') or len(app) > APP_MAX or len(app) == len(INIT_APP) + 1:
        return "application_name must be a load initialisation's ('%s-<fault id>'), got %r" % (INIT_APP, app)
    if not isinstance(step.get('conn'), dict):
        return 'conn must be a dictionary of connection options, got %r' % (step.get('conn'),)
    return None


def end_init(step, ctx, wait=INIT_END_WAIT, sleep=time.sleep):
    """Undo: end the sessions named ``application_name`` in the load's database, and confirm that none is left.

    Only that fault's initialisation carries the name; nothing else is touched. No session is no change."""
    params = dict(step['conn'])
    params.update(ctx.get('secret') or {})
    try:
        conn, cur = _pgconn.revert_session(params)
    except _pgconn.psycopg2.OperationalError as exc:
        # A server that is not running has no session left: the record must not wait for it (the normal end of a
        # load closes its record through this step too, and nothing would end a wait for a server gone for good).
        if any(mark in str(exc) for mark in SERVER_DOWN):
            return False
        raise
    try:
        args = (step['application_name'], DATABASE)
        cur.execute(END_INIT_SQL, args)
        ended = int(cur.fetchone()[0])
        deadline = time.time() + wait
        while True:
            cur.execute(INIT_LEFT_SQL, args)
            left = int(cur.fetchone()[0])
            if not left:
                return ended > 0
            if time.time() > deadline:
                raise UndoError('%d session(s) of %s still there %gs after pg_terminate_backend' % (left, step['application_name'], wait))
            sleep(0.05)
    finally:
        conn.close()


def _end_init_sessions(program):
    """End the server sessions of an initialisation cut short: a primary key's index build goes on in the server
    after its pgbench is gone, holding its table's lock.  Only sessions named :func:`init_app` of this fault in the load's own
    database are ended; a failure is logged, never raised (the sessions end by themselves with their statement)."""
    try:
        conn = _pgconn.connect(dict(program.conn_params(), db=DATABASE), application_name=APP)
    except Exception as exc:  # pylint: disable=broad-except
        program.log('cannot connect to end the initialisation sessions: %s' % exc)
        return 0
    try:
        cur = conn.cursor()
        cur.execute('SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity '
                    'WHERE application_name = %s AND datname = %s AND pid <> pg_catalog.pg_backend_pid()',
                    (init_app(program.fid), DATABASE))
        return int(cur.fetchone()[0])
    except Exception as exc:  # pylint: disable=broad-except
        program.log('cannot end the initialisation sessions: %s' % exc)
        return 0
    finally:
        conn.close()


def _initialise(program, binary, spec, env, folder, should_stop):
    """Run ``pgbench -i`` in this group: (None, seconds) when it succeeded, else (why, seconds); events on the way."""
    out = program.out
    argv = init_argv(binary, spec['scale'])
    init_env = dict(env, PGAPPNAME=init_app(program.fid))
    lines = []
    began = time.time()
    out.write('initialising', argv=argv, scale=int(spec['scale']), at=began)
    program.log('initialising: %s' % ' '.join(argv))
    try:
        proc, thread = _spawn(argv, init_env, folder, lines)
    except (OSError, subprocess.SubprocessError) as exc:
        out.write('error', msg='cannot start %s: %s' % (' '.join(argv), exc))
        return 'error', 0.0
    why = _watch(proc, should_stop)
    if why:
        return why, round(time.time() - began, 3)
    thread.join(5)
    seconds = round(time.time() - began, 3)
    if proc.returncode != 0:
        tail = ' | '.join(lines[-4:]) or 'no output'
        out.write('error', msg='%s failed (status %s): %s' % (' '.join(argv), proc.returncode, tail), init_s=seconds)
        return 'error', seconds
    out.write('initialised', seconds=seconds, at=time.time())
    return None, seconds


def run_load(program):
    """The program's body: pass the gate, initialise the database when asked, run pgbench in this group, report its
    figures, stop it all."""
    spec = program.detail.get('load') or {}
    out = program.out
    signal.signal(signal.SIGTERM, _on_term)
    me = _steps.proc_starttime(os.getpid())
    proc, folder, reason, lines = None, None, 'finished', []
    started_at, init_s = None, None
    initialising = False  # True while pgbench -i runs: a stop then also ends its server sessions
    ran = False  # False on every early return: the scratch folder is removed in ``finally`` then
    try:
        if os.getsid(0) != os.getpid():
            os.setsid()  # lead a session and group of our own (see _stress._prepare)
        binary = spec.get('binary')
        if not binary or not os.access(binary, os.X_OK):
            out.write('error', msg='pgbench %r is not an executable file on this host' % (binary,))
            return 1
        folder = log_dir(program.ledger.state_dir, program.fid)
        parent = os.path.dirname(folder)
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o700)
        shutil.rmtree(folder, ignore_errors=True)
        os.mkdir(folder, 0o700)
        if not program.recorded():
            out.write('done', reason='never recorded in the ledger; pgbench never ran')
            return 1
        if float(program.record['expires_at']) - time.time() < 2:
            out.write('done', reason='the TTL was over before pgbench could start')
            return 1
        env = dict(os.environ)
        env.update(libpq_env(program_kwargs(program)))
        should_stop = program.stop_condition()
        if spec.get('initialise'):
            initialising = True
            why, init_s = _initialise(program, binary, spec, env, folder, should_stop)
            if why == 'error':
                initialising = False  # pgbench -i ended by itself: its sessions with it
                return 1
            if why:
                reason = why
                raise Terminated(why)
            initialising = False
        left = float(program.record['expires_at']) - time.time()
        duration = min(float(spec['duration']), left - 1)
        if duration < 1:
            out.write('done', reason='the TTL was over before pgbench could start%s' % (
                '' if init_s is None else ' (the initialisation took %ss of it: raise ttl)' % init_s), init_s=init_s)
            return 1
        argv = run_argv(binary, spec, duration, os.path.join(folder, 'tx'))
        try:
            proc, thread = _spawn(argv, env, folder, lines, out)
        except (OSError, subprocess.SubprocessError) as exc:
            out.write('error', msg='cannot start %s: %s' % (' '.join(argv), exc))
            return 1
        started_at = time.time()
        end = time.monotonic() + START_CHECK_S
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.02)
        if proc.poll() is not None and proc.returncode != 0:
            thread.join(2)
            out.write('error', msg='%s exited at once with status %s: %s' % (' '.join(argv), proc.returncode,
                                                                             ' | '.join(lines[-4:]) or 'no output'))
            return 1
        out.write('started', pid=proc.pid, pgid=os.getpgrp(), argv=argv, at=started_at, init_s=init_s)
        program.log('started %s (pid %d)' % (' '.join(argv), proc.pid))
        why = _watch(proc, should_stop)
        if why:
            reason = why
        else:
            thread.join(5)
        ran = True
    except Terminated as exc:
        reason = reason if reason != 'finished' else str(exc)
        ran = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = _stop_group(program, me)
        if initialising:
            _end_init_sessions(program)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if not ran and folder:
            shutil.rmtree(folder, ignore_errors=True)
    ended_at = time.time()
    tps, series, processed, failed = parse_output(lines)
    latencies = log_latencies(sorted(glob.glob(os.path.join(folder, 'tx*')))) if folder else []
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    figures = dict(tps=tps, tps_series=series, latency_ms=latency_figures(latencies), transactions=processed,
                   failed_transactions=failed, started_at=started_at, ended_at=ended_at, init_s=init_s,
                   returncode=None if proc is None else proc.returncode, output_tail=lines[-6:])
    if reason == 'finished' and proc is not None and proc.returncode == 0:
        out.write('done', reason=reason, **figures)
    else:
        if proc is None and reason != 'finished':
            reason = '%s, during the initialisation' % reason
        out.write('stopped', reason=reason if reason != 'finished' else 'pgbench exited with status %s' % (
            None if proc is None else proc.returncode), killed=stopped, **figures)
    program.log('%s: tps %s over %s transactions' % (reason, tps, processed))
    return 0


def program_kwargs(program):
    """The libpq keywords of the record's connection (with its secret), as _pgconn builds them."""
    return _pgconn.conn_kwargs(program.conn_params(), APP)


def main(argv=None):
    return _program.main(PROC_TAG, run_load, argv)
