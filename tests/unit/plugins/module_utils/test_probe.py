from __future__ import annotations

import psycopg2
import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._probe import Probe, summarize

TARGET = dict(login_host='db1', login_port=5433, login_user='app', db='shop')
TRIGGERS = [('pggit_ddl_trigger', 'ddl_command_end', 'O'), ('pggit_drop_trigger', 'sql_drop', 'O')]


def primary(**overrides):
    """SQL substring -> rows (or an exception to raise), first match wins."""
    answers = {
        'pg_is_in_recovery()': [(False, '16.2', 'shop')],
        "to_regnamespace('pggit')": [(True, True, True)],
        'FROM pg_event_trigger': TRIGGERS,
        'SET LOCAL': [],
        'CREATE TABLE': [],
        'DROP TABLE': [],
        'FROM pggit.history h JOIN pggit.objects': [(1,)],
        "to_regprocedure('pggit.health_check()')": [(True,)],
        'FROM pggit.health_check()': [('objects', 'healthy', 'fine')],
        'pg_last_wal_receive_lsn()': [(0, 0.2, 'streaming')],
        'FROM pg_stat_replication': [],
        'FROM pg_stat_activity': [(5, 100)],
    }
    answers.update(overrides)
    return answers


class FakeConn(object):
    def __init__(self, answers):
        self.answers = answers
        self.executed = []
        self.unmatched = []
        self.log = []
        self.autocommit = False

    def cursor(self):
        return FakeCursor(self)

    def commit(self):
        self.log.append('commit')

    def rollback(self):
        self.log.append('rollback')

    def close(self):
        self.log.append('close')

    def ran(self, needle):
        return any(needle in q for q in self.executed)


class FakeCursor(object):
    def __init__(self, conn):
        self.conn = conn
        self.rows = []

    def execute(self, query, params=None):
        text = query if isinstance(query, str) else repr(query)  # psycopg2.sql objects show their parts
        self.conn.executed.append(text)
        for needle, answer in self.conn.answers.items():
            if needle in text:
                if isinstance(answer, Exception):
                    raise answer
                self.rows = list(answer)
                return
        self.conn.unmatched.append(text)
        raise AssertionError('unexpected SQL: %s' % text)

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows


def probe(answers=None, **params):
    conn = FakeConn(primary() if answers is None else answers)
    return Probe(dict(TARGET, **params), connect=lambda: conn), conn


def by_name(result):
    return dict((c['name'], c) for c in result['checks'])


def test_healthy_primary_runs_every_check_and_leaves_no_footprint():
    p, conn = probe()
    result = p.run_once()
    assert result['healthy'] is True and result['failed_checks'] == [] and result['findings'] == []
    assert [c['name'] for c in result['checks']] == [
        'connect', 'pggit_present', 'event_triggers', 'canary', 'health_check', 'replication', 'connections']
    assert all(c['status'] == 'ok' for c in result['checks'])
    assert result['in_recovery'] is False
    assert conn.unmatched == []
    assert conn.log == ['rollback', 'close']  # zero footprint: the canary is rolled back
    assert not conn.ran('DROP TABLE')
    assert conn.autocommit is True


def test_committed_canary_is_dropped():
    p, conn = probe(zero_footprint=False)
    assert by_name(p.run_once())['canary']['status'] == 'ok'
    assert conn.log == ['commit', 'commit', 'close'] and conn.ran('DROP TABLE')


def test_connect_failure_is_unhealthy_and_names_the_target():
    def refuse():
        raise psycopg2.OperationalError('connection refused\n\tIs the server running?')
    result = Probe(dict(TARGET), connect=refuse).run_once()
    assert result['healthy'] is False
    assert result['failed_checks'] == ['connect']
    assert [c['name'] for c in result['checks']] == ['connect']
    assert result['checks'][0]['message'] == "cannot connect to database 'shop' at db1:5433 as 'app': connection refused"
    assert result['in_recovery'] is None


@pytest.mark.parametrize('mode, critical, healthy', [('auto', False, True), ('require', True, False)])
def test_raising_health_check_is_a_finding(mode, critical, healthy):
    p, conn = probe(primary(**{'FROM pggit.health_check()': psycopg2.errors.UndefinedColumn('column "x" does not exist')}),
                    health_check=mode)
    result = p.run_once()
    check = by_name(result)['health_check']
    assert (check['status'], check['critical'], check['data']) == ('error', critical, {'raised': True})
    assert check['message'].startswith('pggit.health_check() raised: column "x" does not exist')
    assert result['healthy'] is healthy
    assert result['failed_checks'] == ([] if healthy else ['health_check'])
    assert any(f.startswith('health_check: pggit.health_check() raised') for f in result['findings'])


@pytest.mark.parametrize('rows, status, message', [
    ([('a', 'healthy', ''), ('b', 'healthy', '')], 'ok', 'all 2 checks healthy'),
    ([('a', 'healthy', ''), ('b', 'warning', '')], 'warning', 'warnings: b'),
    ([('a', 'critical', ''), ('b', 'unhealthy', ''), ('c', 'warning', '')], 'failed', 'unhealthy: a, b'),
    ([], 'warning', 'no rows'),
])
@pytest.mark.parametrize('mode', ['auto', 'require'])
def test_health_check_rows(rows, status, message, mode):
    p, _ignored = probe(primary(**{'FROM pggit.health_check()': rows}), health_check=mode)
    result = p.run_once()
    check = by_name(result)['health_check']
    assert (check['status'], check['message'], check['critical']) == (status, message, mode == 'require')
    assert result['healthy'] is not (mode == 'require' and status == 'failed')


@pytest.mark.parametrize('mode, status, critical', [('auto', 'skipped', False), ('require', 'failed', True)])
def test_missing_health_check(mode, status, critical):
    p, conn = probe(primary(**{"to_regprocedure('pggit.health_check()')": [(False,)]}), health_check=mode)
    check = by_name(p.run_once())['health_check']
    assert (check['status'], check['critical']) == (status, critical)
    assert not conn.ran('FROM pggit.health_check()')


def test_health_check_skip_does_not_call_it():
    p, conn = probe(health_check='skip')
    assert by_name(p.run_once())['health_check']['status'] == 'skipped'
    assert not conn.ran('health_check')


def test_standby_skips_the_canary_and_checks_replay():
    p, conn = probe(primary(**{'pg_is_in_recovery()': [(True, '16.2', 'shop')],
                               'pg_last_wal_receive_lsn()': [(4096, 30.0, 'streaming')]}),
                    max_replication_lag_bytes=1024)
    result = p.run_once()
    checks = by_name(result)
    assert (checks['canary']['status'], checks['canary']['critical']) == ('skipped', False)
    assert 'standby' in checks['canary']['message']
    assert not conn.ran('CREATE TABLE')
    assert checks['replication']['status'] == 'failed'
    assert checks['replication']['message'] == 'replay lag 4096 bytes > 1024'
    assert result['failed_checks'] == ['replication'] and result['in_recovery'] is True


@pytest.mark.parametrize('expect_tracking, rows, status', [
    (True, 1, 'ok'), (True, 0, 'failed'), (True, 2, 'failed'), (False, 0, 'ok'), (False, 1, 'failed')])
def test_canary_expects_one_row_or_none(expect_tracking, rows, status):
    triggers = TRIGGERS if expect_tracking else [(n, e, 'D') for n, e, _ignored in TRIGGERS]
    fake = primary(**{'FROM pggit.history h JOIN pggit.objects': [(rows,)], 'FROM pg_event_trigger': triggers})
    p, _ignored = probe(fake, expect_tracking=expect_tracking)
    result = p.run_once()
    canary = by_name(result)['canary']
    assert canary['status'] == status
    assert canary['data']['history_rows'] == rows
    assert result['healthy'] is (status == 'ok')


def test_missing_pggit_skips_the_pggit_checks():
    p, conn = probe(primary(**{"to_regnamespace('pggit')": [(True, False, True)]}))
    result = p.run_once()
    assert [c['name'] for c in result['checks']] == ['connect', 'pggit_present', 'replication', 'connections']
    assert by_name(result)['pggit_present']['message'] == 'pgGit is not installed here: missing pggit.objects'
    assert result['failed_checks'] == ['pggit_present']
    assert not conn.ran('CREATE TABLE')


def test_a_crashing_check_is_an_error_and_the_rest_still_run():
    p, conn = probe(primary(**{'FROM pg_event_trigger': psycopg2.errors.QueryCanceled('canceling statement due to statement timeout')}))
    result = p.run_once()
    checks = by_name(result)
    assert (checks['event_triggers']['status'], checks['event_triggers']['message']) == (
        'error', "listing event triggers failed: canceling statement due to statement timeout; "
                 "statement: SELECT evtname, evtevent, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%' ORDER BY evtname")
    assert checks['event_triggers']['data'] == {
        'statement': "SELECT evtname, evtevent, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%' ORDER BY evtname",
        'option': None}
    assert result['failed_checks'] == ['event_triggers']
    assert checks['connections']['status'] == 'ok'
    assert conn.log[0] == 'rollback'


def test_a_failing_canary_names_its_option_and_statement():
    error = psycopg2.errors.InvalidSchemaName('schema "nope" does not exist')
    p, conn = probe(primary(**{'CREATE TABLE': error}), canary_schema='nope')
    result = p.run_once()
    canary = by_name(result)['canary']
    assert canary['status'] == 'error' and result['failed_checks'] == ['canary']
    assert canary['message'].startswith("creating the canary table failed (option canary_schema='nope'): "
                                        'schema "nope" does not exist; statement: ')
    assert canary['data']['option'] == 'canary_schema' and 'CREATE TABLE' in canary['data']['statement']
    assert 'rollback' in conn.log and 'commit' not in conn.log


def test_a_non_database_crash_is_still_an_error_finding():
    p, dummy = probe(primary(**{'FROM pg_stat_activity': ZeroDivisionError('division by zero')}))
    result = p.run_once()
    assert by_name(result)['connections']['status'] == 'error'
    assert by_name(result)['connections']['message'] == 'division by zero'


def _c(name, status, critical=True, data=None):
    return {'name': name, 'status': status, 'critical': critical, 'message': 'm-' + name, 'data': data or {}}


@pytest.mark.parametrize('checks, healthy, failed, findings', [
    ([_c('a', 'ok'), _c('b', 'skipped')], True, [], []),
    ([_c('a', 'ok'), _c('b', 'warning')], True, [], ['b: m-b']),
    ([_c('a', 'failed'), _c('b', 'error')], False, ['a', 'b'], ['a: m-a', 'b: m-b']),
    ([_c('a', 'error', critical=False), _c('b', 'failed', critical=False)], True, [], ['a: m-a', 'b: m-b']),
])
def test_summarize(checks, healthy, failed, findings):
    result = summarize(checks, False, 0.01234, 42.0)
    assert (result['healthy'], result['failed_checks'], result['findings']) == (healthy, failed, findings)
    assert (result['elapsed_ms'], result['at'], result['drift']) == (12.34, 42.0, None)


def test_summarize_reports_drift():
    result = summarize([_c('drift', 'warning', False, {'drift': ['public.t']})], False, 0, 0)
    assert result['drift'] == ['public.t'] and result['healthy']


# -- watch --------------------------------------------------------------------
class Clock(object):
    def __init__(self):
        self.now = 500.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def watch(pattern, duration=10, interval=2, abort_after=2):
    """Run watch() where round i is healthy when pattern[i] == 'g' (the last repeats)."""
    clock = Clock()
    p = Probe(dict(TARGET), connect=None, clock=clock)
    rounds = []

    def run_once():
        good = pattern[min(len(rounds), len(pattern) - 1)] == 'g'
        rounds.append(clock.now)
        return {'healthy': good, 'failed_checks': [] if good else ['canary'], 'findings': [], 'at': clock.now,
                'round': len(rounds)}
    p.run_once = run_once
    return p.watch(duration, interval, abort_after, sleep=clock.sleep), rounds


def test_watch_all_good_runs_for_the_duration():
    result, rounds = watch('g')
    assert rounds == [500.0, 502.0, 504.0, 506.0, 508.0, 510.0]
    assert result['healthy'] is True and result['aborted'] is False
    assert len(result['rounds']) == 6


@pytest.mark.parametrize('abort_after, pattern, rounds_run', [
    (2, 'gbb', 3),
    (1, 'gb', 2),
    (3, 'bbgbbb', 6),
])
def test_watch_aborts_after_consecutive_bad_rounds(abort_after, pattern, rounds_run):
    result, rounds = watch(pattern, duration=100, abort_after=abort_after)
    assert len(rounds) == rounds_run
    assert result['aborted'] is True and result['healthy'] is False
    assert result['abort_reason'] == '%d consecutive unhealthy probe(s): canary' % abort_after
    assert result['round'] == pattern.index('b') + 1  # the first bad round is the one reported


@pytest.mark.parametrize('abort_after, pattern', [(2, 'bgbgbg'), (0, 'b')])
def test_watch_without_a_bad_streak_does_not_abort_but_is_unhealthy(abort_after, pattern):
    result, rounds = watch(pattern, abort_after=abort_after)
    assert len(rounds) == 6
    assert result['aborted'] is False and result['healthy'] is False
    assert [r['healthy'] for r in result['rounds']] == [pattern[min(i, len(pattern) - 1)] == 'g' for i in range(6)]


def test_watch_covers_the_whole_window_even_with_a_long_interval():
    result, rounds = watch('gg', duration=1, interval=5)
    assert len(rounds) == 2 and result['healthy'] is True  # at the start and at the end of the window


REPLICAS = [('r1', '10.0.0.2', 'streaming', 0), ('r2', '10.0.0.3', 'catchup', 5000)]


@pytest.mark.parametrize('params, status, critical, message', [
    ({}, 'ok', False, 'observed (no thresholds set)'),
    ({'min_replicas': 1}, 'ok', True, 'within thresholds'),
    ({'min_replicas': 2}, 'failed', True, '1 streaming replicas < 2'),
    ({'max_replication_lag_bytes': 1000}, 'failed', True, 'r2 lags 5000 bytes > 1000'),
    ({'max_replication_lag_bytes': 1000, 'min_replicas': 3}, 'failed', True,
     '1 streaming replicas < 3; r2 lags 5000 bytes > 1000'),
])
def test_replication_on_a_primary(params, status, critical, message):
    p, _ignored = probe(primary(**{'FROM pg_stat_replication': REPLICAS}), **params)
    check = by_name(p.run_once())['replication']
    assert (check['status'], check['critical'], check['message']) == (status, critical, message)
    assert [r['state'] for r in check['data']['replicas']] == ['streaming', 'catchup']


@pytest.mark.parametrize('used, limit, status, critical', [(50, None, 'ok', False), (50, 60, 'ok', True), (70, 60, 'failed', True)])
def test_connections_threshold(used, limit, status, critical):
    p, _ignored = probe(primary(**{'FROM pg_stat_activity': [(used, 100)]}), max_connections_pct=limit)
    check = by_name(p.run_once())['connections']
    assert (check['status'], check['critical'], check['data']) == (status, critical, {'used': used, 'max': 100, 'pct': float(used)})
