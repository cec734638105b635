# Copyright: pggit.chaos contributors
# MIT License
"""The steady-state probe behind ``pggit_verify``.

Each check returns ``{name, status, critical, elapsed_ms, message, data}``
with status one of ok, warning, failed, error or skipped.  The probe is
healthy when no critical check failed or errored.  ``pggit.health_check()`` is
never trusted: on pgGit v0.2.1 it raises, which is reported as a finding while
the probe falls back on its own checks.
"""
from __future__ import annotations

import json
import math
import re
import select
import threading
import time
import uuid

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn

OK, WARNING, FAILED, ERROR, SKIPPED = 'ok', 'warning', 'failed', 'error', 'skipped'
BAD = (FAILED, ERROR)
CANARY_PREFIX = 'pggit_chaos_canary_'
RELKINDS = {'r': 'TABLE', 'p': 'TABLE', 'v': 'VIEW', 'm': 'MATERIALIZED_VIEW', 'S': 'SEQUENCE'}
SYSTEM_SCHEMAS = ('pg_catalog', 'information_schema', 'pg_toast', 'pggit')

DEFAULTS = dict(
    expect_tracking=True, canary=True, zero_footprint=True, canary_schema='public', canary_timeout_ms=5000,
    health_check='auto', check_drift=False, drift_schemas=None, max_replication_lag_bytes=None,
    max_replay_delay_seconds=None, min_replicas=None, max_connections_pct=None, history_digest=False,
    amcheck='none', amcheck_timeout_ms=30000, amcheck_create=False, check_mode=False,
)
AMCHECK_MODES = ('none', 'check', 'parent')
# Where amcheck comes from when it is not installed (it is a contrib module).
AMCHECK_PACKAGE = ('the PostgreSQL contrib modules: postgresql-contrib (Debian/Ubuntu packages it in postgresql-<major>; '
                   'RHEL: postgresql<major>-contrib)')
# Every pgGit btree index, valid or not (amcheck refuses an invalid one: it is listed as not checked).
AMCHECK_INDEXES = ("SELECT c.oid::int, quote_ident(n.nspname) || '.' || quote_ident(c.relname), i.indisvalid AND i.indisready "
                   "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "JOIN pg_am a ON a.oid = c.relam WHERE n.nspname = 'pggit' AND a.amname = 'btree' "
                   "AND c.relpersistence <> 't' ORDER BY c.relname")
AMCHECK_CALLS = {
    # heapallindexed: also every heap tuple must have its index entry.
    'check': 'SELECT bt_index_check(%s::oid::regclass, true)',
    'parent': 'SELECT bt_index_parent_check(%s::oid::regclass, true)',
}


def is_corruption(exc):
    """True for the errors amcheck raises on damage (SQLSTATE class XX: index_corrupted, data_corrupted)."""
    code = getattr(exc, 'pgcode', None) or ''
    return code.startswith('XX')


def _check(name, status, message='', critical=True, data=None, elapsed=0.0):
    return {'name': name, 'status': status, 'critical': critical, 'message': message,
            'elapsed_ms': round(elapsed * 1000.0, 2), 'data': data or {}}


class Probe(object):
    def __init__(self, params, connect=None, clock=time.time):
        self.params = dict(DEFAULTS)
        self.params.update(params)
        self._connect = connect or (lambda: _pgconn.connect(params, application_name='pggit-chaos-probe'))
        self.clock = clock
        self.changed = False  # True once the probe created the amcheck extension (amcheck_create), or would have in check mode

    def _timed(self, func, *args):
        started = self.clock()
        try:
            check = func(*args)
        except Exception as exc:  # pylint: disable=broad-except
            check = self._error_check(func.__name__.lstrip('_').replace('check_', ''), exc)
            if getattr(self, 'conn', None) is not None:
                try:
                    self.conn.rollback()
                except Exception:  # pylint: disable=broad-except
                    pass
        check['elapsed_ms'] = round((self.clock() - started) * 1000.0, 2)
        return check

    def _error_check(self, name, exc):
        """An error finding; a database error names its statement and the option behind it."""
        is_db = isinstance(exc, _pgconn.SQLError) or (_pgconn.HAS_PSYCOPG2 and isinstance(exc, _pgconn.psycopg2.Error))
        if not is_db:
            return _check(name, ERROR, _pgconn.one_line(exc))
        error = _pgconn.sql_error(exc)
        value = self.params.get(error.option) if error.option else None
        return _check(name, ERROR, error.message(value, show_value=value is not None),
                      data={'statement': error.statement, 'option': error.option})

    # -- the checks -----------------------------------------------------
    def check_connect(self):
        try:
            self.conn = self._connect()
        except Exception as exc:  # pylint: disable=broad-except
            self.conn = None
            return _check('connect', FAILED, 'cannot connect to %s: %s' % (_pgconn.describe(self.params), _pgconn.one_line(exc)))
        self.conn.autocommit = True
        cur = _pgconn.execute(self.conn.cursor(), "SELECT pg_is_in_recovery(), current_setting('server_version'), current_database()",
                              what='reading the server role')
        self.in_recovery, version, dbname = cur.fetchone()
        return _check('connect', OK, 'connected to %s' % dbname,
                      data={'in_recovery': self.in_recovery, 'server_version': version})

    def check_pggit_present(self):
        cur = _pgconn.execute(self.conn.cursor(), "SELECT to_regnamespace('pggit') IS NOT NULL, to_regclass('pggit.objects') IS NOT NULL, "
                              "to_regclass('pggit.history') IS NOT NULL", what='looking for pgGit')
        schema, objects, history = cur.fetchone()
        missing = [n for n, ok in (('schema pggit', schema), ('pggit.objects', objects), ('pggit.history', history)) if not ok]
        if missing:
            return _check('pggit_present', FAILED, 'pgGit is not installed here: missing %s' % ', '.join(missing))
        return _check('pggit_present', OK, 'schema pggit with objects and history')

    def check_event_triggers(self):
        cur = _pgconn.execute(self.conn.cursor(), "SELECT evtname, evtevent, evtenabled FROM pg_event_trigger "
                              "WHERE evtname LIKE 'pggit%' ORDER BY evtname", what='listing event triggers')
        triggers = [{'name': n, 'event': e, 'enabled': m != 'D', 'mode': m} for n, e, m in cur.fetchall()]
        recording = [t['name'] for t in triggers if t['enabled'] and t['event'] == 'ddl_command_end']
        disabled = [t['name'] for t in triggers if not t['enabled']]
        data = {'triggers': triggers, 'recording': recording, 'disabled': disabled}
        if not triggers:
            return _check('event_triggers', FAILED, 'no pgGit event triggers (pggit%) exist', data=data)
        if self.params['expect_tracking']:
            if not recording:
                return _check('event_triggers', FAILED, 'no pgGit ddl_command_end trigger is enabled; disabled: %s'
                              % ', '.join(disabled), data=data)
            if disabled:
                return _check('event_triggers', WARNING, 'tracking on, but disabled: %s' % ', '.join(disabled), data=data)
            return _check('event_triggers', OK, '%d pgGit triggers enabled' % len(triggers), data=data)
        if recording:
            # Not every ddl_command_end trigger records history (pggit_metrics_trigger
            # does not): the canary is the proof, this is a hint.
            return _check('event_triggers', WARNING, 'tracking expected off; still enabled: %s (the canary decides)'
                          % ', '.join(recording), data=data)
        return _check('event_triggers', OK, 'every pgGit ddl_command_end trigger is disabled', data=data)

    def check_canary(self):
        if not self.params['canary']:
            return _check('canary', SKIPPED, 'canary disabled', critical=False)
        if self.in_recovery:
            return _check('canary', SKIPPED, 'standby: read-only, canary DDL not possible', critical=False)
        name = CANARY_PREFIX + uuid.uuid4().hex[:16]
        schema = self.params['canary_schema']
        ident = _pgconn.sql.Identifier(schema, name)
        expected = 1 if self.params['expect_tracking'] else 0
        conn = self.conn
        conn.autocommit = False
        try:
            cur = conn.cursor()
            timeout = int(self.params['canary_timeout_ms'])
            _pgconn.execute(cur, 'SET LOCAL statement_timeout = %s', (timeout,), what='bounding the canary', option='canary_timeout_ms')
            _pgconn.execute(cur, 'SET LOCAL lock_timeout = %s', (timeout,), what='bounding the canary', option='canary_timeout_ms')
            _pgconn.execute(cur, _pgconn.sql.SQL('CREATE TABLE {} (id int)').format(ident), what='creating the canary table',
                            option='canary_schema')
            _pgconn.execute(cur, "SELECT count(*) FROM pggit.history h JOIN pggit.objects o ON o.id = h.object_id "
                            "WHERE o.schema_name = %s AND o.object_name = %s AND h.change_type::text = 'CREATE'", (schema, name),
                            what='counting the canary in pggit.history')
            rows = cur.fetchone()[0]
            if self.params['zero_footprint']:
                conn.rollback()
            else:
                conn.commit()
                _pgconn.execute(cur, _pgconn.sql.SQL('DROP TABLE {}').format(ident), what='dropping the canary table',
                                option='canary_schema')
                conn.commit()
        except Exception:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
        data = {'object': '%s.%s' % (schema, name), 'history_rows': rows, 'expected_rows': expected,
                'zero_footprint': self.params['zero_footprint']}
        if rows == expected:
            return _check('canary', OK, 'canary DDL produced %d history row(s), as expected' % rows, data=data)
        return _check('canary', FAILED, 'canary DDL produced %d history row(s), expected %d' % (rows, expected), data=data)

    def check_health_check(self):
        mode = self.params['health_check']
        critical = mode == 'require'
        if mode == 'skip':
            return _check('health_check', SKIPPED, 'not asked for', critical=False)
        cur = _pgconn.execute(self.conn.cursor(), "SELECT to_regprocedure('pggit.health_check()') IS NOT NULL",
                              what='looking for pggit.health_check()')
        if not cur.fetchone()[0]:
            status = FAILED if critical else SKIPPED
            return _check('health_check', status, 'pggit.health_check() does not exist', critical=critical)
        try:
            cur.execute('SELECT check_name::text, status::text, message::text FROM pggit.health_check()')
            rows = cur.fetchall()
        except _pgconn.psycopg2.Error as exc:
            return _check('health_check', ERROR, 'pggit.health_check() raised: %s; relying on own probes' % _pgconn.one_line(exc),
                          critical=critical, data={'raised': True})
        results = [{'check': c, 'status': s, 'message': m} for c, s, m in rows]
        statuses = set(r['status'] for r in results)
        bad = [r['check'] for r in results if r['status'] in ('unhealthy', 'critical')]
        warn = [r['check'] for r in results if r['status'] == 'warning']
        status = FAILED if bad else WARNING if warn or not results else OK
        message = 'unhealthy: %s' % ', '.join(bad) if bad else 'warnings: %s' % ', '.join(warn) if warn else \
            'no rows' if not results else 'all %d checks healthy' % len(results)
        return _check('health_check', status, message, critical=critical, data={'results': results, 'statuses': sorted(statuses)})

    def check_replication(self):
        cur = self.conn.cursor()
        limit_bytes = self.params['max_replication_lag_bytes']
        limit_delay = self.params['max_replay_delay_seconds']
        min_replicas = self.params['min_replicas']
        critical = any(v is not None for v in (limit_bytes, limit_delay, min_replicas))
        if self.in_recovery:
            _pgconn.execute(cur, 'SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '
                            'EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), '
                            '(SELECT status FROM pg_stat_wal_receiver)', what='reading the replay position')
            lag, delay, receiver = cur.fetchone()
            data = {'role': 'standby', 'replay_lag_bytes': int(lag or 0), 'replay_delay_seconds': float(delay) if delay is not None else None,
                    'wal_receiver': receiver}
            problems = []
            if limit_bytes is not None and data['replay_lag_bytes'] > limit_bytes:
                problems.append('replay lag %s bytes > %s' % (data['replay_lag_bytes'], limit_bytes))
            if limit_delay is not None and (delay is None or delay > limit_delay):
                problems.append('replay delay %s s > %s' % (delay, limit_delay))
            if critical and receiver != 'streaming':
                problems.append('wal receiver is %s' % (receiver or 'not running'))
        else:
            _pgconn.execute(cur, 'SELECT application_name, client_addr::text, state, '
                            'pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication ORDER BY application_name',
                            what='reading pg_stat_replication')
            replicas = [{'name': n, 'addr': a, 'state': s, 'lag_bytes': int(lag) if lag is not None else None}
                        for n, a, s, lag in cur.fetchall()]
            data = {'role': 'primary', 'replicas': replicas}
            problems = []
            streaming = len([r for r in replicas if r['state'] == 'streaming'])
            if min_replicas is not None and streaming < min_replicas:
                problems.append('%s streaming replicas < %s' % (streaming, min_replicas))
            if limit_bytes is not None:
                problems += ['%s lags %s bytes > %s' % (r['name'], r['lag_bytes'], limit_bytes)
                             for r in replicas if r['lag_bytes'] is None or r['lag_bytes'] > limit_bytes]
        if problems:
            return _check('replication', FAILED, '; '.join(problems), critical=critical, data=data)
        return _check('replication', OK, 'within thresholds' if critical else 'observed (no thresholds set)', critical=critical, data=data)

    def check_connections(self):
        limit = self.params['max_connections_pct']
        cur = self.conn.cursor()
        _pgconn.execute(cur, "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend'", what='counting connections')
        used, maximum = cur.fetchone()
        pct = round(100.0 * used / maximum, 1)
        data = {'used': used, 'max': maximum, 'pct': pct}
        if limit is not None and pct > limit:
            return _check('connections', FAILED, '%s%% of max_connections in use > %s%%' % (pct, limit), critical=True, data=data)
        return _check('connections', OK, '%d of %d connections' % (used, maximum), critical=limit is not None, data=data)

    def check_drift(self):
        cur = self.conn.cursor()
        schemas = self.params['drift_schemas']
        _pgconn.execute(cur, "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind = ANY(%s) AND NOT n.nspname = ANY(%s) AND n.nspname NOT LIKE 'pg_temp%%' "
                        "AND n.nspname NOT LIKE 'pg_toast%%' AND (%s::text[] IS NULL OR n.nspname = ANY(%s::text[])) "
                        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('i', 'a', 'e')) "
                        "ORDER BY 1, 2", (list(RELKINDS), list(SYSTEM_SCHEMAS), schemas, schemas),
                        what='listing catalog relations', option='drift_schemas')
        catalog = cur.fetchall()
        _pgconn.execute(cur, 'SELECT schema_name, object_name FROM pggit.objects WHERE is_active', what='reading pggit.objects')
        known = set(cur.fetchall())
        drift = ['%s.%s' % (s, n) for s, n, _kind in catalog if (s, n) not in known]
        data = {'drift': drift, 'catalog_objects': len(catalog)}
        if drift:
            return _check('drift', WARNING, '%d catalog object(s) unknown to pggit.objects: %s'
                          % (len(drift), ', '.join(drift[:10])), critical=False, data=data)
        return _check('drift', OK, 'every catalog relation is known to pggit.objects', critical=False, data=data)

    def check_history(self):
        """Row count and digest of pggit.history, to compare a replica with its primary."""
        cur = self.conn.cursor()
        _pgconn.execute(cur, "SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(concat_ws('|', id, object_id, change_type, "
                        "change_severity, sql_executed), E'\\n' ORDER BY id), '')) FROM pggit.history", what='digesting pggit.history')
        rows, max_id, digest = cur.fetchone()
        return _check('history', OK, '%d history rows, last id %d' % (rows, max_id), critical=False,
                      data={'rows': rows, 'max_id': max_id, 'digest': digest})

    def _amcheck_extension(self, cur):
        """(None, created) when amcheck is usable here, else (the error check, False).

        The extension is created only when asked for (amcheck_create), on a
        primary, outside check mode: CREATE EXTENSION is DDL that pgGit's event
        triggers record in pggit.history, so the probe never does it by itself."""
        mode = self.params['amcheck']
        _pgconn.execute(cur, "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'amcheck'), "
                        "EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')", what='looking for amcheck')
        version, available = cur.fetchone()
        if version is not None:
            return None, False
        missing = {'extension': None, 'available': bool(available)}
        if not available:
            return _check('amcheck', ERROR, 'amcheck is not installed on this server (option amcheck=%s): install %s, '
                          'then create the extension (CREATE EXTENSION amcheck, or amcheck_create=true)'
                          % (mode, AMCHECK_PACKAGE), data=missing), False
        if self.in_recovery:
            return _check('amcheck', ERROR, 'extension amcheck is not created in this database, and a standby cannot create it '
                          '(option amcheck=%s): run CREATE EXTENSION amcheck on the primary (or amcheck_create=true there), '
                          'it replicates' % mode, data=missing), False
        if not self.params['amcheck_create']:
            return _check('amcheck', ERROR, 'extension amcheck is not created in this database (option amcheck=%s) and '
                          'amcheck_create=false: creating it is DDL that pgGit records in pggit.history, so the probe does not; '
                          'set amcheck_create=true, or run CREATE EXTENSION amcheck before the baseline (amcheck comes with %s)'
                          % (mode, AMCHECK_PACKAGE), data=missing), False
        if self.params['check_mode']:
            self.changed = True  # it would create it
            return _check('amcheck', ERROR, 'extension amcheck is not created in this database and check mode does not create '
                          'it (option amcheck=%s, amcheck_create=true)' % mode, data=missing), False
        _pgconn.execute(cur, 'CREATE EXTENSION IF NOT EXISTS amcheck', what='creating extension amcheck', option='amcheck_create')
        self.changed = True
        return None, True

    def check_amcheck(self):
        """amcheck on every pgGit btree index, each in a read-only transaction of its own.

        One transaction per index, committed before the next: nothing the check
        takes (bt_index_parent_check's ShareLock blocks tracked DDL writing
        pggit.history) can outlive that index's check.  amcheck itself also
        releases its locks when a check ends (PostgreSQL 15 does; the
        integration test asserts it)."""
        mode = self.params['amcheck']
        cur = self.conn.cursor()
        problem, created = self._amcheck_extension(cur)
        if problem:
            return problem
        function = 'bt_index_parent_check' if mode == 'parent' else 'bt_index_check'
        parent_skipped = None
        if mode == 'parent' and self.in_recovery:
            # bt_index_parent_check takes a ShareLock, which recovery forbids.
            function = 'bt_index_check'
            parent_skipped = ('bt_index_parent_check skipped: this is a standby, where its ShareLock cannot be taken; '
                              'ran bt_index_check instead')
        call = AMCHECK_CALLS['parent' if function == 'bt_index_parent_check' else 'check']
        timeout = int(self.params['amcheck_timeout_ms'])
        corrupt, errors, checked, invalid = [], [], [], []
        _pgconn.execute(cur, AMCHECK_INDEXES, what='listing the pgGit btree indexes')
        indexes = cur.fetchall()
        conn = self.conn
        conn.autocommit = False
        try:
            for oid, index, valid in indexes:
                if not valid:
                    invalid.append(index)
                    continue
                _pgconn.execute(cur, 'SET TRANSACTION READ ONLY', what='starting the read-only amcheck transaction')
                _pgconn.execute(cur, 'SET LOCAL statement_timeout = %s', (timeout,), what='bounding amcheck', option='amcheck_timeout_ms')
                _pgconn.execute(cur, 'SET LOCAL lock_timeout = %s', (timeout,), what='bounding amcheck', option='amcheck_timeout_ms')
                try:
                    cur.execute(call, (oid,))
                except _pgconn.psycopg2.Error as exc:
                    conn.rollback()
                    diag = getattr(exc, 'diag', None)
                    entry = {'index': index, 'error': _pgconn.one_line(exc), 'sqlstate': exc.pgcode,
                             'detail': getattr(diag, 'message_detail', None)}
                    if is_corruption(exc):
                        corrupt.append(entry)
                        checked.append(index)
                    else:
                        errors.append(entry)
                else:
                    conn.commit()  # read-only: ends the transaction and frees this index's locks
                    checked.append(index)
        finally:
            conn.rollback()  # nothing open unless a statement above raised
            conn.autocommit = True
        data = {'function': function, 'heapallindexed': True, 'indexes': [i for _o, i, _v in indexes],
                'indexes_checked': len(checked), 'corrupt': corrupt, 'errors': errors,
                'not_checked_invalid': invalid, 'extension_created': created}
        if parent_skipped:
            data['parent_check'] = parent_skipped
        note = ' (%s)' % parent_skipped if parent_skipped else ''
        if corrupt:
            return _check('amcheck', FAILED, '%d of %d pgGit btree index(es) corrupt: %s%s' % (
                len(corrupt), len(indexes), '; '.join('%s: %s' % (c['index'], c['error']) for c in corrupt), note), data=data)
        if errors:
            return _check('amcheck', ERROR, '%d pgGit btree index(es) could not be checked: %s%s' % (
                len(errors), '; '.join('%s: %s' % (e['index'], e['error']) for e in errors), note), data=data)
        if not checked:
            return _check('amcheck', WARNING, 'no valid pgGit btree index to check%s%s' % (
                ' (%d invalid, not checked: %s)' % (len(invalid), ', '.join(invalid)) if invalid else '', note),
                critical=False, data=data)
        if invalid:  # amcheck cannot check an invalid index (a failed CREATE INDEX / REINDEX CONCURRENTLY): say so, never a silent OK
            return _check('amcheck', WARNING, '%d pgGit btree index(es) invalid, not checked: %s (a failed CREATE INDEX or REINDEX '
                          'CONCURRENTLY leaves them; drop them); %s found no corruption in the other %d%s' % (
                              len(invalid), ', '.join(invalid), function, len(checked), note), critical=False, data=data)
        return _check('amcheck', OK, '%s found no corruption in %d pgGit btree index(es)%s' % (function, len(checked), note), data=data)

    # -- orchestration ----------------------------------------------------
    def run_once(self):
        self.conn = None
        self.in_recovery = None
        started = self.clock()
        checks = [self._timed(self.check_connect)]
        if self.conn is not None:
            try:
                checks.append(self._timed(self.check_pggit_present))
                if checks[-1]['status'] == OK:
                    steps = [self.check_event_triggers, self.check_canary, self.check_health_check]
                    if self.params['check_drift']:
                        steps.append(self.check_drift)
                    if self.params['history_digest']:
                        steps.append(self.check_history)
                    if self.params['amcheck'] != 'none':
                        steps.append(self.check_amcheck)
                else:
                    steps = []
                steps += [self.check_replication, self.check_connections]
                checks.extend(self._timed(step) for step in steps)
            finally:
                try:
                    self.conn.close()
                except Exception:  # pylint: disable=broad-except
                    pass
        return summarize(checks, self.in_recovery, self.clock() - started, self.clock())

    def wait_history(self, digest, timeout, interval=0.2, sleep=time.sleep):
        """Probe until pggit.history's digest equals ``digest`` (a replica catching up with its primary), at most
        ``timeout`` seconds; the last probe is returned with ``converged``, ``waited_s`` and ``history_rounds``.

        One module run polls every ``interval`` seconds, instead of a task retried every few seconds over SSH."""
        started = self.clock()
        deadline = started + timeout
        rounds = 0
        while True:
            result = self.run_once()
            rounds += 1
            converged = (result.get('history') or {}).get('digest') == digest
            remaining = deadline - self.clock()
            if converged or remaining <= 0:
                break
            sleep(min(interval, remaining))
        result.update(converged=converged, waited_s=round(self.clock() - started, 3), history_rounds=rounds)
        return result

    def watch(self, duration, interval, abort_after, sleep=time.sleep, monitor=None):
        """Probe repeatedly; stop early after ``abort_after`` bad rounds in a row.

        A ``Monitor`` samples beside the rounds, in its own thread, until the watch ends."""
        deadline = self.clock() + duration
        rounds, streak, worst = [], 0, None
        if monitor is not None:
            monitor.start()
        try:
            result = self._watch(deadline, interval, abort_after, sleep, rounds, streak, worst)
        finally:
            if monitor is not None:
                monitor.stop()
        if monitor is not None:
            result['series'] = monitor.series
            result['monitor_cost'] = monitor.cost()
        return result

    def _watch(self, deadline, interval, abort_after, sleep, rounds, streak, worst):
        last = False
        while True:
            started = self.clock()
            outcome = self.run_once()
            took = self.clock() - started
            latest = outcome
            rounds.append({'at': outcome['at'], 'healthy': outcome['healthy'], 'failed': outcome['failed_checks']})
            streak = 0 if outcome['healthy'] else streak + 1
            if worst is None or (not outcome['healthy'] and worst['healthy']):
                worst = outcome
            if abort_after and streak >= abort_after:
                worst['aborted'] = True
                worst['abort_reason'] = '%d consecutive unhealthy probe(s): %s' % (streak, ', '.join(outcome['failed_checks']))
                break
            remaining = deadline - self.clock()
            if remaining <= 0 or last:
                break
            gap, last = round_gap(remaining, interval, took)
            sleep(gap)
        # The first unhealthy round explains a failure; when all were healthy the
        # latest round is the freshest picture (history at the window's end).
        result = dict(worst if not worst['healthy'] else latest)
        result.setdefault('aborted', False)
        result['rounds'] = rounds
        result['healthy'] = all(r['healthy'] for r in rounds)
        return result


def round_gap(remaining, interval, took):
    """(seconds to wait before the next round of a watch, whether that round is the last one).

    The rounds still to come (each as long as the latest one, ``took``) are spread at most ``interval`` apart so that
    the last one ENDS at the deadline: a watch no longer overruns its window by one round, which a slowed target
    (latency, loss, a busy host) makes seconds long, and it still reads the state at the window's end. The round
    planned as the last one is the last (no burst of rounds when one ends early). With instant rounds this is
    min(interval, remaining), the plain schedule."""
    rounds = max(1, int(math.ceil(remaining / (interval + took))))
    return max(0.0, min(interval, (remaining - rounds * took) / rounds)), rounds == 1


# -- the chaos monitor: one cheap read-only sample per second -------------------
#
# One statement per sample, on one connection the monitor keeps: client connections
# (all, and active; the monitor's own is not counted), lock waits, pgGit presence and
# tracking triggers, the row count of pggit.history and the replication lag per replica
# in bytes (LSN differences: the *_lag interval columns are NULL when a replica is idle,
# which is normal).  Nothing is created in the database; pggit.health_check() is never
# called here.
# pggit.history's row count, through query_to_xml so that a database without pgGit answers too.
MONITOR_HISTORY_SQL = """ CASE WHEN to_regclass('pggit.history') IS NOT NULL THEN
   (xpath('/row/n/text()', query_to_xml('SELECT count(*) AS n FROM pggit.history', false, true, '')))[1]::text::bigint END,"""
MONITOR_SQL = """SELECT extract(epoch FROM clock_timestamp())::float8, pg_is_in_recovery(),
 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()),
 (SELECT count(*) FROM pg_locks WHERE NOT granted),
 to_regclass('pggit.history') IS NOT NULL AND to_regclass('pggit.objects') IS NOT NULL,
 (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pggit%' AND evtevent = 'ddl_command_end' AND evtenabled <> 'D'),
 (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pggit%' AND evtenabled = 'D'),
 CASE WHEN to_regclass('pggit.history') IS NOT NULL THEN
   (xpath('/row/n/text()', query_to_xml('SELECT count(*) AS n FROM pggit.history', false, true, '')))[1]::text::bigint END,
 CASE WHEN pg_is_in_recovery() THEN
   json_build_array(json_build_array('replay', NULL, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())))::text
 ELSE (SELECT coalesce(json_agg(json_build_array(application_name, client_addr::text,
   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) ORDER BY application_name, client_addr::text), '[]')::text
   FROM pg_stat_replication) END"""
# When pggit.history is locked (an ACCESS EXCLUSIVE holder, as lock_contention does), the sample
# still reads everything else: the same statement without the row count.
MONITOR_SQL_UNLOCKED = MONITOR_SQL.replace(MONITOR_HISTORY_SQL, ' NULL::bigint,')
LOCK_NOT_AVAILABLE = '55P03'
QUERY_CANCELED = '57014'
# A sample never waits long for a lock (pggit.history under an ACCESS EXCLUSIVE) or a busy server. The statement gets
# half the sample's budget, so that when the row count of a large pggit.history outlasts it, the same sample still
# has the time to read everything else (MONITOR_SQL_UNLOCKED), and the count is left out for the rest of the watch
# rather than cost the server a full scan every second.
MONITOR_SETUP_SQL = "SET statement_timeout = %d; SET lock_timeout = %d"
# Under pggit-chaos-probe%, which pggit_chaos_connections never kills (exclude_application_names), so the
# monitor's kept connection never takes a kill meant for the workload.
MONITOR_APPLICATION_NAME = 'pggit-chaos-probe-monitor'


def lag_by_replica(rows):
    """{replica: bytes or None} from [application_name, client_addr, lag] rows; the address is added only to tell twins apart."""
    rows = [r for r in rows or [] if isinstance(r, (list, tuple)) and len(r) == 3]
    names = [r[0] or r[1] or 'replica' for r in rows]
    lags = {}
    for name, (app, addr, lag) in zip(names, rows):
        key = name if names.count(name) == 1 else '%s@%s' % (name, addr or 'local')
        lags[key] = int(lag) if lag is not None else None
    return lags


def health_of(present, tracking, disabled, expect_tracking=True):
    """pgGit health from the sample's own checks (the probe's event_triggers rule, without the canary).

    ok; untracked (tracking expected on, but no pgGit ddl_command_end trigger
    enabled); degraded (on, but some pgGit trigger disabled); tracking (expected
    off, every one still enabled); absent (no pgGit); down (no answer)."""
    if present is None:
        return 'down'
    if not present:
        return 'absent'
    if expect_tracking:
        return 'untracked' if not tracking else 'degraded' if disabled else 'ok'
    return 'tracking' if tracking and not disabled else 'ok'


def sample_from_row(row, phase, expect_tracking=True):
    """One monitor sample from MONITOR_SQL's row."""
    at, recovery, connections, active, lock_waits, present, tracking, disabled, history, lag = row
    try:
        lag_rows = json.loads(lag) if isinstance(lag, str) else lag
    except ValueError:
        lag_rows = []
    sample = {'t': round(float(at), 3), 'phase': phase, 'connections': int(connections), 'active': int(active),
              'pggit_health': health_of(bool(present), int(tracking or 0), int(disabled or 0), expect_tracking),
              'tracking_triggers': int(tracking or 0), 'history_rows': int(history) if history not in (None, 'locked', 'slow') else None,
              'lag_bytes': lag_by_replica(lag_rows), 'lock_waits': int(lock_waits), 'in_recovery': bool(recovery)}
    if history == 'locked':
        sample['history_locked'] = True  # pggit.history was locked past lock_timeout: no row count this second
    elif history == 'slow':
        sample['history_slow'] = True  # counting pggit.history outlasted the statement timeout: no row count
    return sample


def down_sample(at, phase, error):
    return {'t': round(at, 3), 'phase': phase, 'connections': None, 'active': None, 'pggit_health': 'down',
            'tracking_triggers': None, 'history_rows': None, 'lag_bytes': {}, 'lock_waits': None, 'in_recovery': None,
            'error': error}


class _Timeout(Exception):
    pass


def _wait(conn, deadline):
    """Drive an asynchronous psycopg2 connection to completion, never past ``deadline`` (a frozen server never answers)."""
    extensions = _pgconn.psycopg2.extensions
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        remaining = deadline - time.time()
        if remaining <= 0:
            raise _Timeout('no answer within the sample timeout')
        if state == extensions.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        elif state == extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], remaining)
        else:
            raise _pgconn.psycopg2.OperationalError('bad poll state %r' % state)


class AsyncSampler(object):
    """Runs MONITOR_SQL on one kept asynchronous connection with a client-side timeout.

    ``count_history`` turns false (for this sampler's life, one watch) once the row count of pggit.history
    outlasted the statement timeout; the samples then carry ``history_rows`` None and ``history_slow``."""

    def __init__(self, params, timeout_ms):
        self.params = params
        self.timeout = timeout_ms / 1000.0
        self.conn = None
        self.connects = 0
        self.count_history = True

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self.conn = None

    def __call__(self):
        deadline = time.time() + self.timeout
        try:
            if self.conn is None or self.conn.closed:
                kwargs = _pgconn.conn_kwargs(self.params, MONITOR_APPLICATION_NAME)
                self.conn = _pgconn.psycopg2.connect(async_=True, **kwargs)
                self.connects += 1
                _wait(self.conn, deadline)
                cur = self.conn.cursor()
                ms = max(1, int(self.timeout * 1000) // 2)
                cur.execute(MONITOR_SETUP_SQL % (ms, min(ms, 200)))
                _wait(self.conn, deadline)
            cur = self.conn.cursor()
            if not self.count_history:
                cur.execute(MONITOR_SQL_UNLOCKED)
                _wait(self.conn, deadline)
                row = cur.fetchone()
                return row[:-2] + ('slow',) + row[-1:]
            try:
                cur.execute(MONITOR_SQL)
                _wait(self.conn, deadline)
            except _pgconn.psycopg2.Error as exc:
                code = getattr(exc, 'pgcode', None)
                if code not in (LOCK_NOT_AVAILABLE, QUERY_CANCELED):
                    raise
                if code == QUERY_CANCELED:
                    self.count_history = False
                cur = self.conn.cursor()
                cur.execute(MONITOR_SQL_UNLOCKED)
                _wait(self.conn, deadline)
                row = cur.fetchone()
                return row[:-2] + ('locked' if code == LOCK_NOT_AVAILABLE else 'slow',) + row[-1:]
            return cur.fetchone()
        except Exception:
            self.close()  # a timed-out or broken connection is never reused
            raise


class Monitor(object):
    """Samples one target every ``interval`` seconds, in a thread of its own while a watch runs.

    ``sampler`` returns MONITOR_SQL's row (AsyncSampler on a real server);
    the health rounds of the watch run beside it, unchanged."""

    def __init__(self, sampler, interval=1.0, phase='window', expect_tracking=True, clock=time.time):
        self.sampler = sampler
        self.interval = float(interval)
        self.phase = phase
        self.expect_tracking = expect_tracking
        self.clock = clock
        self.series = []
        self._stop = threading.Event()
        self._thread = None

    def sample(self):
        started = self.clock()
        try:
            row = self.sampler()
            sample = sample_from_row(row, self.phase, self.expect_tracking)
            # The sample's time is this process's clock, as the experiment's timeline marks and the workload's
            # op_times are: the server's own clock is the one clock_skew fakes (and may drift on a real host).
            sample['server_t'], sample['t'] = sample['t'], round(started, 3)
        except Exception as exc:  # pylint: disable=broad-except
            sample = down_sample(started, self.phase, _pgconn.one_line(exc) if not isinstance(exc, _Timeout) else str(exc))
        sample['probe_ms'] = round((self.clock() - started) * 1000.0, 2)
        self.series.append(sample)
        return sample

    def _run(self):
        tick = self.clock()
        while not self._stop.is_set():
            self.sample()
            tick += self.interval
            delay = tick - self.clock()
            if delay < 0:  # a slow sample: start again from now rather than catch up in a burst
                tick, delay = self.clock(), 0
            if self._stop.wait(delay):
                break

    def start(self):
        self._thread = threading.Thread(target=self._run, name='pggit-chaos-monitor')
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        close = getattr(self.sampler, 'close', None)
        if close:
            close()
        return self.series

    def cost(self):
        """p50 and max time of one sample, in ms."""
        times = sorted(s['probe_ms'] for s in self.series)
        if not times:
            return None
        return {'samples': len(times), 'p50_ms': times[len(times) // 2], 'max_ms': times[-1]}


def summarize(checks, in_recovery, elapsed, now):
    failed = [c['name'] for c in checks if c['critical'] and c['status'] in BAD]
    findings = []
    for c in checks:
        if c['status'] in (OK, SKIPPED):
            continue
        corrupt = c['data'].get('corrupt') if c['name'] == 'amcheck' else None
        if corrupt:  # one finding per corrupt index, with amcheck's own words
            findings.extend('amcheck: index %s is corrupt: %s' % (e['index'], e['error']) for e in corrupt)
            findings.extend('amcheck: index %s could not be checked: %s' % (e['index'], e['error']) for e in c['data']['errors'])
            findings.extend('amcheck: index %s is invalid, not checked' % i for i in c['data'].get('not_checked_invalid') or [])
        else:
            findings.append('%s: %s' % (c['name'], c['message']))
    by_name = dict((c['name'], c) for c in checks)
    return {
        'healthy': not failed,
        'failed_checks': failed,
        'findings': findings,
        'checks': checks,
        'in_recovery': in_recovery,
        'drift': by_name.get('drift', {}).get('data', {}).get('drift'),
        'history': by_name.get('history', {}).get('data') or None,
        'amcheck': by_name.get('amcheck', {}).get('data') or None,
        'elapsed_ms': round(elapsed * 1000.0, 2),
        'at': now,
    }


# -- background jobs collected with the window's probe ---------------------------------------------------------------
JOB_POLL = 0.05
JOB_ID_RE = re.compile(r'j?[0-9]+\.[0-9]+')  # ansible-core's async wrapper: j<random digits>.<its pid>


def job_problem(job):
    """Why a job item (the registered result of an async start with poll 0) cannot be collected, or None."""
    if not isinstance(job, dict):
        return 'each of jobs must be the registered result of a task started with async and poll 0, got %r' % (job,)
    jid, path = job.get('ansible_job_id'), job.get('results_file')
    if not isinstance(jid, str) or not jid or not isinstance(path, str) or not path:
        return ('each of jobs needs the ansible_job_id and results_file of an async start, got keys %s'
                % ', '.join(sorted(str(k) for k in job)))
    # The async wrapper's job ids are 'j<digits>.<its pid>': a name such as 'shadow' or 'id_rsa.json' is no job id, so
    # that results_file cannot name any other file of the host (this module returns what it reads).
    if not JOB_ID_RE.fullmatch(jid):
        return 'ansible_job_id must be an async job id (j<digits>.<pid>), got %r' % (jid,)
    # The async wrapper's layout, <async dir>/<job id>: nothing else is read.
    if not path.startswith('/') or path.rstrip('/').rsplit('/', 1)[-1] != jid:
        return 'results_file of job %s must be an absolute path ending in the job id, got %r' % (jid, path)
    return None


def _job_state(job):
    """What async_status would say of the job now: its result once it ended, else started and not finished."""
    jid = job['ansible_job_id']
    try:
        with open(job['results_file']) as handle:
            data = json.loads(handle.read())
    except (IOError, OSError) as exc:
        return {'ansible_job_id': jid, 'started': True, 'finished': True, 'failed': True,
                'msg': 'could not find job %s: %s' % (jid, exc)}
    except ValueError:
        # the wrapper writes the file whole, by a rename: only a file being created reads empty
        return {'ansible_job_id': jid, 'started': True, 'finished': False}
    if not isinstance(data, dict):
        return {'ansible_job_id': jid, 'started': True, 'finished': True, 'failed': True,
                'msg': 'job %s wrote %r, not a result' % (jid, data)}
    if 'started' in data:  # still running: the wrapper's first line
        return {'ansible_job_id': jid, 'started': True, 'finished': bool(data.get('finished'))}
    data.update(ansible_job_id=jid, started=True, finished=True)
    return data


def collect_jobs(jobs, timeout, wait=True, clock=time.time, sleep=time.sleep):
    """Each job's result (as async_status returns it once the job ended; None while it runs), in order, and the
    problems: a job that failed or did not end within ``timeout`` seconds. Without ``wait`` the jobs are read once, as
    they are (after an abort: the experiment's finish stops them and collects the workload)."""
    deadline = clock() + max(float(timeout), 0.0)
    results = [None] * len(jobs)
    while True:
        for index, job in enumerate(jobs):
            if results[index] is None or not results[index]['finished']:
                results[index] = _job_state(job)
        if not wait or all(r['finished'] for r in results) or clock() >= deadline:
            break
        sleep(JOB_POLL)
    problems = []
    for result in results:
        if not result['finished']:
            if wait:
                problems.append('job %s did not finish within %s s of the window' % (result['ansible_job_id'], timeout))
        elif result.get('failed'):
            problems.append('job %s failed: %s' % (result['ansible_job_id'], result.get('msg') or 'failed'))
    return [r if r['finished'] else None for r in results], problems
