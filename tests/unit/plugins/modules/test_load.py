"""load_spike without a database: the multi-worker checker merge (maybe outcomes included), the workers and the
tracking-cost measure with fake connections, pgbench's command lines, output and logs, the load module's plan and bad
input, and the judge rule with its Markdown lines."""
from __future__ import annotations

import os
import threading

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _pgbench, _pgconn, _server, _steps, _workload
from ansible_collections.pggit.chaos.plugins.module_utils._checker import check, merge_workers, worker_prefix
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError
from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_load
from ansible_collections.pggit.chaos.plugins.plugin_utils import _report


# -- the checker: several workers merged --------------------------------------------------------
def ops(worker, outcomes):
    return [{'token': '%s%06d' % (worker_prefix('r', worker), i), 'outcome': o} for i, o in enumerate(outcomes, 1)]


def test_each_worker_is_judged_on_its_own_tokens_and_the_total_adds_them_up():
    w0 = ops(0, ['ok', 'ok', 'fail', 'maybe'])
    w1 = ops(1, ['ok', 'unknown', 'maybe', 'maybe'])
    history = {'r_w0_000001': 1, 'r_w0_000002': 1, 'r_w0_000004': 1,
               'r_w1_000001': 1, 'r_w1_000002': 1, 'r_w1_000003': 1}
    # w0's maybe committed (in the catalog, tracked); w1's unknown and first maybe committed, its last maybe did not.
    catalog = {'r_w0_000001', 'r_w0_000002', 'r_w0_000004', 'r_w1_000001', 'r_w1_000002', 'r_w1_000003'}
    total, workers = merge_workers([w0, w1], history, catalog, prefixes=['r_w0_', 'r_w1_'])
    assert total['valid'] is True and total['workers'] == 2
    assert (total['ops'], total['ok'], total['failed'], total['unknown'], total['maybe']) == (8, 3, 1, 1, 3)
    assert total['maybe_resolved'] == {'committed': 2, 'not_committed': 1}
    assert [w['worker'] for w in workers] == [0, 1]
    assert workers[0]['check']['maybe_resolved'] == {'committed': 1, 'not_committed': 0}
    assert workers[1]['check']['maybe_resolved'] == {'committed': 1, 'not_committed': 1}
    assert workers[1]['check']['unknown_resolved'] == {'committed': 1, 'not_committed': 0}
    assert all(w['check']['valid'] for w in workers)


def test_an_anomaly_shows_in_its_worker_and_in_the_total_only_once():
    w0 = ops(0, ['ok', 'ok'])
    w1 = ops(1, ['ok', 'maybe', 'fail'])
    # w0's second DDL lost; w1's maybe was not committed but tracked; w1's first tracked twice.
    history = {'r_w0_000001': 1, 'r_w1_000001': 2, 'r_w1_000002': 1}
    catalog = {'r_w0_000001', 'r_w0_000002', 'r_w1_000001'}
    total, workers = merge_workers([w0, w1], history, catalog, prefixes=['r_w0_', 'r_w1_'])
    assert total['lost'] == ['r_w0_000002'] and total['duplicated'] == ['r_w1_000001']
    assert total['unexpected'] == ['r_w1_000002'] and total['valid'] is False
    assert workers[0]['check']['lost'] == ['r_w0_000002'] and workers[0]['check']['unexpected'] == []
    assert workers[1]['check']['lost'] == [] and workers[1]['check']['duplicated'] == ['r_w1_000001']
    assert workers[1]['check']['unexpected'] == ['r_w1_000002']


def test_a_history_row_no_worker_issued_is_unexpected_in_its_token_space_and_in_the_total():
    w0, w1 = ops(0, ['ok']), ops(1, ['ok'])
    history = {'r_w0_000001': 1, 'r_w1_000001': 1, 'r_w1_000099': 1, 'r_zz_000001': 1}
    total, workers = merge_workers([w0, w1], history, {'r_w0_000001', 'r_w1_000001'}, prefixes=['r_w0_', 'r_w1_'])
    assert total['unexpected'] == ['r_w1_000099', 'r_zz_000001']
    assert workers[0]['check']['unexpected'] == [] and workers[1]['check']['unexpected'] == ['r_w1_000099']


def test_one_worker_merges_to_the_plain_check():
    w0 = ops(0, ['ok', 'maybe', 'fail'])
    history = {'r_w0_000001': 1}
    total, workers = merge_workers([w0], history, {'r_w0_000001'})
    plain = check(w0, history, {'r_w0_000001'})
    assert dict((k, v) for k, v in total.items() if k != 'workers') == plain
    assert workers == [{'worker': 0, 'check': plain}]


# -- the workers ----------------------------------------------------------------------------------
class Conn(object):
    closed = False
    autocommit = False

    def close(self):
        self.closed = True


def test_workers_have_their_own_token_spaces_and_run_at_once():
    params = {'schema': 's', 'run_id': 'r', 'duration': 100, 'max_ops': 3, 'interval': 0}
    started = threading.Barrier(3, timeout=5)
    crew = _workload.Crew([_workload.Workload(params, connect=Conn, worker=k) for k in range(3)])

    def make_one(worker):
        seen = []

        def one(token):
            if not seen:
                seen.append(token)
                started.wait()  # all three are in their first DDL at once, or this times out
            worker.latencies.append(1.0)
            return 'ok'
        return one
    for worker in crew.workers:
        worker.one = make_one(worker)
    crew.run()
    assert [[op['token'] for op in w.ops] for w in crew.workers] == [
        ['r_w%d_%06d' % (k, i) for i in (1, 2, 3)] for k in range(3)]
    assert crew.count() == 9


def test_a_stop_of_one_worker_stops_the_run():
    params = {'schema': 's', 'run_id': 'r', 'duration': 100, 'max_ops': 50, 'interval': 0}
    stop = {'why': None}
    crew = _workload.Crew([_workload.Workload(params, connect=Conn, worker=k, should_stop=lambda: stop['why'])
                           for k in range(2)])

    def one(token):
        if token.endswith('_000005'):
            stop['why'] = 'record gone'
        return 'ok'
    for worker in crew.workers:
        worker.one = one
    with pytest.raises(_workload.Stopped, match='record gone'):
        crew.run()
    assert all(len(w.ops) < 50 for w in crew.workers)


def test_the_result_adds_every_worker_up():
    params = {'schema': 's', 'run_id': 'r'}
    a, b = _workload.Workload(params, worker=0), _workload.Workload(params, worker=1)
    a.ops, b.ops = ops(0, ['ok']), ops(1, ['ok', 'fail'])
    a.latencies, b.latencies = [1.0, 2.0], [3.0]
    a.op_times, b.op_times = [[2.0, 1.0, 'ok']], [[1.0, 3.0, 'ok'], [3.0, 9.0, 'fail']]
    a.errors, b.errors = {'OperationalError': 1}, {'OperationalError': 2, 'QueryCanceled': 1}
    result = a.result({'valid': True}, set(), 0.0, crew=[a, b])
    assert result['tables'] == ['s.t_r_w0_000001', 's.t_r_w1_000001']
    assert result['latency_ms'] == {'p50': 2.0, 'p95': 3.0, 'p99': 3.0, 'max': 3.0}
    assert [item[0] for item in result['op_times']] == [1.0, 2.0, 3.0]
    assert result['errors'] == {'OperationalError': 3, 'QueryCanceled': 1}


# -- pgGit's own cost ------------------------------------------------------------------------------
class CostCursor(object):
    def __init__(self, conn):
        self.conn = conn

    def execute(self, query, args=None):
        text = query if isinstance(query, str) else repr(query)
        self.conn.log.append((self.conn.name, text, args))
        if 'session_replication_role' in text:
            self.conn.replica = True
            if self.conn.refuse:
                raise _pgconn.psycopg2.Error('permission denied to set parameter "session_replication_role"')
        if args and 'pggit.objects' in text:
            self.row = (self.conn.tracked[args[1]],)

    def fetchone(self):
        return self.row


class CostConn(object):
    def __init__(self, name, log, tracked, refuse=False):
        self.name, self.log, self.tracked, self.refuse = name, log, tracked, refuse
        self.replica = False
        self.closed = False

    def cursor(self):
        return CostCursor(self)

    def commit(self):
        pass

    def close(self):
        self.closed = True


def test_the_cost_alternates_on_and_off_in_two_sessions_and_reads_back_what_was_tracked():
    log, conns = [], []
    tracked = {'c_r_on_': 4, 'c_r_off_': 0}
    names = iter(['on', 'off'])

    def connect():
        conns.append(CostConn(next(names), log, tracked))
        return conns[-1]
    clock = iter([0.0, 0.010, 1.0, 1.002, 2.0, 2.003, 3.0, 3.012, 4.0, 4.011, 5.0, 5.002, 6.0, 6.002, 7.0, 7.013])
    cost = _workload.measure_tracking_cost({'schema': 's', 'run_id': 'r'}, 4, clock=lambda: next(clock), connect=connect)
    assert [c.replica for c in conns] == [False, True] and all(c.closed for c in conns)
    creates = [(entry[0], entry[1]) for entry in log if 'CREATE TABLE' in entry[1]]
    assert [entry[0] for entry in creates] == ['on', 'off', 'off', 'on', 'on', 'off', 'off', 'on']
    assert all(("'c_r_%s_" % name) in text for name, text in creates)
    assert cost['n'] == 4 and cost['on_tracked'] == 4 and cost['off_tracked'] == 0 and cost['valid'] is True
    assert cost['on_p50_ms'] > cost['off_p50_ms'] and cost['overhead_ms'] == round(cost['on_p50_ms'] - cost['off_p50_ms'], 3)


def test_a_cost_whose_off_side_was_tracked_is_not_valid():
    assert _workload.cost_figures([5.0, 6.0], [2.0, 2.0], {'on': 2, 'off': 1})['valid'] is False
    assert _workload.cost_figures([5.0, 6.0], [2.0, 2.0], {'on': 1, 'off': 0})['valid'] is False
    figures = _workload.cost_figures([5.0, 6.0], [2.0, 2.0], {'on': 2, 'off': 0})
    assert figures['valid'] is True and figures['overhead_ms'] == 3.0 and figures['overhead_pct'] == 150.0


def test_no_superuser_means_no_cost_never_a_failed_run():
    log = []
    conns = iter([CostConn('on', log, {}), CostConn('off', log, {}, refuse=True)])
    cost = _workload.measure_tracking_cost({'schema': 's', 'run_id': 'r'}, 3, connect=lambda: next(conns))
    assert cost['n'] == 0 and 'session_replication_role' in cost['error']
    assert not [entry for entry in log if 'CREATE TABLE' in entry[1]]


# -- pgbench --------------------------------------------------------------------------------------
SPEC = dict(binary='/pg/bin/pgbench', clients=8, rate=0, mode='tpcb', duration=30)


def test_the_run_argv():
    assert _pgbench.run_argv('/pg/bin/pgbench', SPEC, 30) == [
        '/pg/bin/pgbench', '-c', '8', '-j', '4', '-T', '30', '-P', '1', '-n', 'pggit_chaos_load']
    argv = _pgbench.run_argv('/pg/bin/pgbench', dict(SPEC, clients=2, rate=150, mode='select'), 7.6, '/s/log/tx')
    assert argv == ['/pg/bin/pgbench', '-c', '2', '-j', '2', '-T', '8', '-P', '1', '-n', '-S', '-R', '150',
                    '-l', '--log-prefix', '/s/log/tx', 'pggit_chaos_load']
    assert _pgbench.init_argv('/pg/bin/pgbench', 3) == ['/pg/bin/pgbench', '-i', '-s', '3', '-q', '-n', 'pggit_chaos_load']
    with pytest.raises(ValueError, match="mode must be one of tpcb, select, got 'tpcc'"):
        _pgbench.run_argv('/pg/bin/pgbench', dict(SPEC, mode='tpcc'), 5)


def test_the_password_goes_in_the_environment_never_on_argv():
    env = _pgbench.libpq_env({'host': '198.18.0.11', 'port': 5433, 'user': 'postgres', 'password': 'pw', 'dbname': 'pggit'})
    assert env == {'PGHOST': '198.18.0.11', 'PGPORT': '5433', 'PGUSER': 'postgres', 'PGPASSWORD': 'pw',
                   'PGAPPNAME': 'pggit-chaos-load', 'PGDATABASE': 'pggit_chaos_load'}


OUTPUT = '''pgbench (15.8 (Debian 15.8-0+deb12u1))
starting vacuum...end.
progress: 1.0 s, 512.3 tps, lat 7.8 ms stddev 3.1, 0 failed
progress: 2.0 s, 498.0 tps, lat 8.0 ms stddev 3.0, 0 failed
progress: 3.0 s, 0.0 tps, lat 0.000 ms stddev 0.000, 0 failed
transaction type: <builtin: TPC-B (sort of)>
number of transactions actually processed: 1010
number of failed transactions: 0 (0.000%)
latency average = 7.9 ms
tps = 503.456789 (without initial connection time)
'''


def test_pgbench_output_gives_tps_per_second_and_in_total():
    tps, series, processed, failed = _pgbench.parse_output(OUTPUT.splitlines())
    assert tps == 503.456789 and processed == 1010 and failed == 0
    assert series == [[1.0, 512.3], [2.0, 498.0], [3.0, 0.0]]
    assert _pgbench.parse_output(['connection to server failed']) == (None, [], None, None)


def test_latency_percentiles_from_the_transaction_logs(tmp_path):
    (tmp_path / 'tx.1').write_text(''.join('0 %d %d 0 1700000000 %d\n' % (i, 1000 * i, i) for i in range(1, 101)))
    (tmp_path / 'tx.1.1').write_text('garbage\n1 1 x 0 1 1\n1 2 500000 0 1700000000 1\n')
    values = _pgbench.log_latencies([str(tmp_path / 'tx.1'), str(tmp_path / 'tx.1.1'), str(tmp_path / 'missing')])
    figures = _pgbench.latency_figures(values)
    assert figures['transactions'] == 101 and figures['max'] == 500.0
    assert figures['p50'] == 51.0 and figures['p95'] == 96.0 and figures['p99'] == 100.0


def test_pgbench_is_found_next_to_the_server_first(tmp_path):
    assert _pgbench.candidates(150004, '/srv/pg/bin')[:3] == [
        '/srv/pg/bin/pgbench', '/usr/lib/postgresql/15/bin/pgbench', '/usr/pgsql-15/bin/pgbench']
    binary = tmp_path / 'pgbench'
    binary.write_text('#!/bin/sh\n')
    binary.chmod(0o755)
    assert _pgbench.find_pgbench(150004, str(tmp_path)) == str(binary)


def test_the_program_the_group_undo_and_the_kind_are_registered():
    assert _daemon.PROGRAMS[_pgbench.PROC_TAG] == '_pgbench' and '_pgbench' in _daemon.ENGINE
    assert _pgbench.MEMBERS in _steps.GROUP_MEMBERS and 'load' in FAULT_KINDS
    # The group undo matches pgbench by command line; the program's own must never match, or it would kill itself.
    assert _pgbench.MEMBERS not in _pgbench.PROC_TAG


# -- the module ------------------------------------------------------------------------------------
@pytest.mark.parametrize('params, option, value', [
    (dict(clients=0), 'clients', '0'),
    (dict(rate=-1), 'rate', '-1'),
    (dict(duration=0), 'duration', '0'),
    (dict(scale=1001), 'scale', '1001'),
    (dict(duration=60, ttl=64), 'duration', 'ttl=64'),
])
def test_bad_options_are_named(params, option, value):
    base = dict(clients=4, rate=0, duration=30, scale=1, ttl=300)
    problem = pggit_chaos_load.option_problem(dict(base, **params))
    assert problem and problem.startswith(option) and value in problem


def test_a_database_of_that_name_that_is_not_ours_is_refused():
    assert pggit_chaos_load.database_problem(False, None) is None
    assert pggit_chaos_load.database_problem(True, _pgbench.MARK) is None
    problem = pggit_chaos_load.database_problem(True, 'the shop')
    assert 'pggit_chaos_load' in problem and "'the shop'" in problem and 'not the load' in problem


class ServerCursor(object):
    def __init__(self, server):
        self.server = server
        self.connection = server

    def execute(self, query, args=None):
        text = str(query)
        self.server.statements.append(text)
        if 'CREATE DATABASE' in text:
            raise AssertionError('a database was created')
        self.row = ('150004',) if 'server_version_num' in text else self.server.database

    def fetchone(self):
        return self.row


class Server(object):
    def __init__(self, database):
        self.database = database
        self.statements = []
        self.closed = False
        self.autocommit = True

    def cursor(self):
        return ServerCursor(self)

    def rollback(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def server(monkeypatch, tmp_path):
    state = {'server': Server(None)}
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', lambda **kwargs: state['server'])

    def not_here(cursor):
        raise ChaosError('not on this host')
    monkeypatch.setattr(_server, 'server_info', not_here)
    monkeypatch.setattr(_pgbench, 'find_pgbench', lambda version, server_bin=None: '/usr/lib/postgresql/15/bin/pgbench')
    monkeypatch.chdir(tmp_path)
    return state


def test_a_foreign_database_fails_before_anything_is_written(server, tmp_path):
    server['server'] = Server(('the shop',))
    result, failed = run_module(pggit_chaos_load.main, dict(name='l', state_dir=str(tmp_path / 'state')))
    assert failed and 'pggit_chaos_load' in result['msg'] and "'the shop'" in result['msg']
    assert not os.path.exists(str(tmp_path / 'state'))


def test_check_mode_shows_the_plan_and_runs_nothing(server, tmp_path):
    args = dict(name='l', clients=3, rate=100, mode='select', duration=20, state_dir=str(tmp_path / 'state'))
    result, failed = run_module(pggit_chaos_load.main, args, check_mode=True)
    assert not failed, result.get('msg')
    load = result['load']
    assert load['argv'] == ['/usr/lib/postgresql/15/bin/pgbench', '-c', '3', '-j', '3', '-T', '20', '-P', '1', '-n',
                            '-S', '-R', '100', 'pggit_chaos_load']
    assert load['init_argv'][:2] == ['/usr/lib/postgresql/15/bin/pgbench', '-i'] and load['database_exists'] is False
    assert 'would run' in result['msg'] and result['changed'] is True
    assert not any('CREATE' in s for s in server['server'].statements)
    assert not os.path.exists(str(tmp_path / 'state'))


def test_the_record_keeps_no_password(server):
    class Module(object):
        params = dict(name='l', clients=2, rate=0, mode='tpcb', duration=10, scale=1, ttl=60, login_user='postgres',
                      login_password='pw', login_host='h', login_port=5432, db='pggit', state='present', state_dir='/x')
        check_mode = False
    fault = pggit_chaos_load.LoadFault(Module())
    fault.binary = '/pg/pgbench'
    fault.spec = dict(binary='/pg/pgbench', clients=2, rate=0, mode='tpcb', duration=10)
    undo, detail, after = fault.plan({})
    assert 'pw' not in repr(detail) and 'pw' not in repr(undo) and fault.secret() == {'login_password': 'pw'}
    assert detail['conn']['db'] == 'pggit' and detail['load']['clients'] == 2
    assert after['load']['argv'][-1] == 'pggit_chaos_load'
    # The record also ends a cut initialisation's sessions (after the program, before the results file: undone in
    # reverse), in the load's database, by this fault's own application name; it connects as the fault did.
    assert [s['type'] for s in undo] == ['remove_path', 'pg_end_load_init']
    assert undo[1] == {'type': 'pg_end_load_init', 'conn': detail['conn'], 'application_name': _pgbench.init_app('load--l')}
    assert _pgbench.check_init_step(undo[1], '/x') is None


@pytest.mark.parametrize('step, reason', [
    ({'application_name': 'pggit-chaos-load-init-', 'conn': {'db': 'pggit_chaos_load'}}, 'application_name'),
    ({'application_name': 'pggit-chaos-locker-x', 'conn': {'db': 'pggit_chaos_load'}}, 'application_name'),
    ({'application_name': 'psql', 'conn': {'db': 'pggit_chaos_load'}}, 'application_name'),
    ({'application_name': 'pggit-chaos-load-init-' + 'x' * 60, 'conn': {'db': 'pggit_chaos_load'}}, 'application_name'),
    ({'application_name': None, 'conn': {'db': 'pggit_chaos_load'}}, 'application_name'),
    ({'application_name': 'pggit-chaos-load-init-load--l', 'conn': 'host=x'}, 'conn must be'),
])
def test_the_init_step_refuses_what_a_load_never_writes(step, reason):
    assert reason in (_pgbench.check_init_step(dict(step, type='pg_end_load_init'), '/x') or '')


# -- the judge ------------------------------------------------------------------------------------
def raw(**fault):
    load = dict(tps=400.0, transactions=3200, started_at=100.0, ended_at=108.0, tps_series=[[1.0, 390.0], [2.0, 410.0]],
                latency_ms={'p50': 5.0, 'p95': 12.0, 'p99': 20.0})
    load.update(fault.pop('load', {}))
    workers = [dict(worker=k, check=dict(ops=3, ok=3, failed=0, unknown=0, maybe=0, lost=[], duplicated=[],
                                         unexpected=[], phantom=[], valid=True), latency_ms={'p50': 3.0}) for k in range(2)]
    workload = dict(check=dict(ops=6, ok=6, failed=0, unknown=0, maybe=0, lost=[], duplicated=[], unexpected=[],
                               phantom=[], valid=True, workers=2),
                    workers=workers,
                    op_times=[[98.0, 2.0, 'ok'], [99.0, 4.0, 'ok'], [101.0, 30.0, 'ok'], [105.0, 50.0, 'ok'],
                              [106.0, 900.0, 'fail'], [109.0, 3.0, 'ok'], [110.0, 3.0, 'ok']],
                    tracking_cost=dict(n=20, on_p50_ms=6.0, off_p50_ms=2.0, overhead_ms=4.0, overhead_pct=200.0,
                                       on_tracked=20, off_tracked=0, valid=True))
    workload.update(fault.pop('workload', {}))
    return dict(experiment='load_spike', fault=dict(dict(load=load, baseline=dict(tps=800.0), ddl_workers=2), **fault),
                workload=workload, steady_state={})


def test_the_rule_gives_tps_latency_by_phase_workers_and_cost():
    reasons, evidence = _report.FAULT_CHECKS['load'](raw())
    assert reasons == []
    assert evidence['tps_before'] == 800.0 and evidence['tps_during'] == 400.0 and evidence['tps_change_pct'] == -50.0
    assert evidence['latency_ms']['before'] == {'p50': 2.0, 'p95': 4.0, 'p99': 4.0, 'n': 2}
    assert evidence['latency_ms']['during'] == {'p50': 30.0, 'p95': 50.0, 'p99': 50.0, 'n': 2}  # the fail is no latency
    assert evidence['latency_ms']['after']['n'] == 2
    assert [w['worker'] for w in evidence['workers']] == [0, 1] and evidence['total']['ok'] == 6
    assert evidence['tracking_cost']['overhead_ms'] == 4.0


def test_the_rule_fails_when_pgbench_never_ran_or_the_workers_never_met_it():
    reasons = _report.FAULT_CHECKS['load'](raw(load=dict(tps=0.0, transactions=0)))[0]
    assert reasons[0].startswith('the fault did not happen: pgbench ran 0 transaction(s)')
    reasons = _report.FAULT_CHECKS['load'](raw(load=dict(started_at=200.0, ended_at=208.0)))[0]
    assert any('never met the load' in r for r in reasons)
    reasons = _report.FAULT_CHECKS['load'](raw(ddl_workers=8))[0]
    assert reasons == ['8 DDL worker(s) were asked for, the workload reports 2']
    bad_cost = dict(n=20, on_tracked=20, off_tracked=3, valid=False)
    reasons = _report.FAULT_CHECKS['load'](raw(workload=dict(tracking_cost=bad_cost)))[0]
    assert reasons == ['the tracking-cost measure is not valid: 20 of 20 DDL with tracking on were tracked, 3 with it off']


def test_a_lost_ddl_of_one_worker_fails_the_experiment():
    record = raw()
    record['workload']['check'].update(lost=['r_w1_000002'], valid=False)
    entry = _report.judge(dict(record, revert_results=[]))
    assert any('lost 1' in r for r in entry['reasons'])


def test_the_ramp_reads_the_window_p95_where_the_rule_puts_it():
    from ansible_collections.pggit.chaos.plugins.plugin_utils import _ramp  # pylint: disable=import-outside-toplevel
    reasons, evidence = _report.FAULT_CHECKS['load'](raw())
    assert _ramp.window_p95({'evidence': evidence}) == 50.0


def test_the_markdown_shows_the_load_and_each_worker():
    reasons, evidence = _report.FAULT_CHECKS['load'](raw())
    entry = dict(experiment='load_spike', host='lab-1', status='passed', reverted=True, reasons=[], evidence=evidence,
                 workload=None, timings={}, timeline={})
    text = _report.render_markdown([entry], {'playbook': 'chaos.yml'}, generated_at='now')
    section = text.split('## Load')[1]
    assert '| lab-1 | 800.0 | 400.0 | 2.0 / 4.0 / 4.0 (2) | 30.0 / 50.0 / 50.0 (2) |' in section
    assert '6.0 / 2.0 ms, +4.0 ms (200.0%), n=20' in section
    assert 'Workers of load\\_spike@lab-1' in section or 'Workers of load_spike@lab-1' in section
    assert section.count('| 3 / 0 / 0 / 0 / 0 |') == 2


def test_many_op_times_are_thinned_evenly_never_cut_at_the_end():
    items = [[float(i), 1.0, 'ok'] for i in range(12001)]
    kept = _workload.thin(items, 5000)
    assert len(kept) <= 5000 and kept[0][0] == 0.0 and kept[-1][0] >= 11997.0
    assert _workload.thin(items[:10], 5000) == items[:10]


def test_a_long_multi_worker_run_keeps_every_failure_when_its_op_times_are_thinned():
    # 8 workers x 3000 DDL: the acknowledged ones are thinned to 5000, the 40 failures (late in the run, when a loss
    # verdict counts them by the revert) all stay.
    items = sorted([float(w * 0.01 + i), 2.0, 'fail' if i >= 2995 else 'ok'] for w in range(8) for i in range(3000))
    kept = _workload.thin_op_times(items)
    assert [k for k in kept if k[2] == 'fail'] == [k for k in items if k[2] == 'fail']
    assert len([k for k in kept if k[2] == 'ok']) <= 5000
    assert kept == sorted(kept) and kept[-1][0] >= 2999.0
    assert len([k for k in _workload.thin(items, 5000) if k[2] == 'fail']) < 40  # what the plain thinning did


# -- review fixes --------------------------------------------------------------------------------
class Killed(BaseException):
    """The module dies (the controller is gone) right before it sends the next statement."""


class DbCursor(object):
    def __init__(self, server):
        self.server = server
        self.connection = server
        self.row = None

    def execute(self, query, args=None):
        text = str(query)
        self.server.statements.append(text)
        if 'CREATE DATABASE' in text:
            assert not self.server.exists
            self.server.exists = True
        elif 'COMMENT ON DATABASE' in text:
            if self.server.kill_before_comment:
                raise Killed()
            self.server.comment = _pgbench.MARK
        elif 'server_version_num' in text:
            self.row = ('150004',)
        elif 'pg_database' in text:
            self.row = (self.server.comment,) if self.server.exists else None
        elif 'to_regclass' in text:
            self.row = (True,)
        elif 'count(*)' in text:
            self.row = (1,)

    def fetchone(self):
        return self.row


class DbServer(Server):
    def __init__(self):
        super(DbServer, self).__init__(None)
        self.exists, self.comment, self.kill_before_comment = False, None, False

    def cursor(self):
        return DbCursor(self)


class Failed(Exception):
    pass


class LoadModule(object):
    check_mode = False

    def __init__(self, state_dir):
        self.params = dict(name='l', clients=2, rate=0, mode='tpcb', duration=10, scale=1, ttl=60, login_user='postgres',
                           login_password=None, login_host='h', login_port=5432, db='pggit', state='present',
                           state_dir=state_dir)

    def fail_json(self, msg, **kwargs):
        raise Failed(msg)


def test_a_module_killed_between_create_and_mark_leaves_a_database_the_next_run_takes_not_refuses(monkeypatch, tmp_path):
    """CREATE DATABASE cannot share a transaction with its COMMENT: the state dir says our creation was under way."""
    db = DbServer()
    monkeypatch.setattr(pggit_chaos_load, 'connect_or_fail', lambda module, **kwargs: db)
    monkeypatch.setattr(_pgconn, 'connect', lambda params, **kwargs: db)
    monkeypatch.setattr(_server, 'server_info', lambda cursor: {'bin_dir': None})
    monkeypatch.setattr(_pgbench, 'find_pgbench', lambda version, server_bin=None: '/pg/pgbench')
    state_dir = str(tmp_path / 'state')
    os.mkdir(state_dir)
    first = pggit_chaos_load.LoadFault(LoadModule(state_dir))
    first.validate()
    db.kill_before_comment = True
    with pytest.raises(Killed):
        first.ensure_database()
    assert db.exists and db.comment is None
    # The next run recognises its own unmarked database, marks it, and creates nothing.
    db.kill_before_comment = False
    db.statements = []
    again = pggit_chaos_load.LoadFault(LoadModule(state_dir))
    again.validate()
    assert again.initialise is True  # an unmarked database of ours was never known to be initialised
    again.ensure_database()
    assert db.comment == _pgbench.MARK and not any('CREATE DATABASE' in s for s in db.statements)
    assert os.listdir(state_dir) == []
    # Without our note in the state dir, an unmarked database of that name is a stranger's: refused.
    db.comment = None
    with pytest.raises(Failed, match="not the load's own"):
        pggit_chaos_load.LoadFault(LoadModule(state_dir)).validate()


class Events(object):
    def __init__(self):
        self.events = []

    def write(self, event, **fields):
        self.events.append(dict(fields, event=event))


class LoadProgram(object):
    fid = 'load--x'

    def __init__(self, state_dir, recorded, expires_in=60.0):
        self.detail = {'load': {'binary': '/bin/true', 'clients': 1, 'mode': 'tpcb', 'duration': 5, 'rate': 0}}
        self.out = Events()
        self.ledger = type('Ledger', (), {'state_dir': state_dir})()
        self.record = {'expires_at': __import__('time').time() + expires_in}
        self._recorded = recorded

    def recorded(self):
        return self._recorded

    def log(self, text):
        pass


@pytest.mark.parametrize('recorded, expires_in', [(False, 60.0), (True, 0.5)])
def test_a_load_that_never_ran_leaves_no_scratch_folder(monkeypatch, tmp_path, recorded, expires_in):
    """Never recorded, or the TTL already over: pgbench never ran, and its log folder is not left in the state dir."""
    import signal as signal_module
    monkeypatch.setattr(signal_module, 'signal', lambda *args: None)
    monkeypatch.setattr(_pgbench.os, 'setsid', lambda: None)
    monkeypatch.setattr(_pgbench, '_stop_group', lambda program, me: False)
    program = LoadProgram(str(tmp_path), recorded, expires_in)
    assert _pgbench.run_load(program) == 1
    assert program.out.events[-1]['event'] == 'done' and 'never' in program.out.events[-1]['reason'] or \
        'TTL' in program.out.events[-1]['reason']
    assert not os.path.exists(_pgbench.log_dir(str(tmp_path), program.fid)), 'the scratch folder was left'


def test_the_default_ttl_covers_the_tracking_cost_measure_before_the_run():
    """The measure runs before the workers: a TTL of duration + margins alone would stop a long measure's run midway."""
    from ansible_collections.pggit.chaos.plugins.modules import pggit_workload
    plain = dict(duration=60, settle_timeout=30, tracking_cost=0)
    assert pggit_workload.default_ttl(dict(plain, tracking_cost=1000)) >= pggit_workload.default_ttl(plain) + 1000


# -- the initialisation belongs to the recorded program -----------------------------------------------
class ReadyCursor(object):
    """The catalog of a load database: tables present, primary keys present, and the row counts."""

    def __init__(self, tables=4, keys=3, branches=2, tellers=20):
        self.answers = {'relkind': tables, 'indisprimary': keys}
        self.counts = (branches, tellers)
        self.row = None

    def execute(self, query, args=None):
        for word, value in self.answers.items():
            if word in query:
                self.row = (value,)
                return
        self.row = self.counts

    def fetchone(self):
        return self.row


@pytest.mark.parametrize('cursor, ready', [
    (ReadyCursor(), True),
    (ReadyCursor(tables=3), False),  # cut while creating the tables
    (ReadyCursor(keys=2), False),  # cut before the accounts' primary key: the old count-only check said ready
    (ReadyCursor(branches=0, tellers=0), False),  # cut while loading the rows (one transaction: none are left)
    (ReadyCursor(branches=1, tellers=10), False),  # another scale
])
def test_a_database_is_ready_only_with_every_table_key_and_row_of_the_scale(cursor, ready):
    assert _pgbench.ready(cursor, 2) is ready


def test_the_record_tells_the_program_whether_to_initialise_and_the_plan_shows_it_only_then(server):
    fault = pggit_chaos_load.LoadFault(LoadModule('/x'))
    fault.binary = '/pg/pgbench'
    for initialise in (True, False):
        fault.initialise = initialise
        fault.spec = dict(binary='/pg/pgbench', clients=2, rate=0, mode='tpcb', duration=10, scale=3, initialise=initialise)
        undo, detail, after = fault.plan({})
        assert detail['load']['initialise'] is initialise and detail['load']['scale'] == 3
        assert ('init_argv' in after['load']) is initialise
    fault.initialised, fault.init_s = True, 4.5
    assert fault.plan_result(ran=True)['initialised'] is True and fault.plan_result(ran=True)['init_s'] == 4.5


def test_the_module_runs_no_pgbench_itself(server, monkeypatch, tmp_path):
    """pgbench -i used to run here, through run_command, outside the recorded program: nothing may run it now."""
    db = DbServer()
    monkeypatch.setattr(pggit_chaos_load, 'connect_or_fail', lambda module, **kwargs: db)
    fault = pggit_chaos_load.LoadFault(LoadModule(str(tmp_path)))
    fault.module.run_command = lambda *args, **kwargs: pytest.fail('the module ran %r' % (args,))
    fault.exists, fault.unmarked = False, False
    fault.ensure_database()
    assert db.exists and db.comment == _pgbench.MARK


FAKE_PGBENCH = '''#!/bin/sh
echo "$PGAPPNAME $*" >> "%s"
case "$*" in
  *" -i "*) sleep 0.3; echo "done in 0.30 s" ;;
  *) sleep 0.5; echo "progress: 1.0 s, 10.0 tps, lat 1.0 ms stddev 0.1, 0 failed"; echo "tps = 10.000000 (without initial connection time)" ;;
esac
'''


def test_the_program_initialises_first_in_its_own_group_then_runs(monkeypatch, tmp_path):
    """The program, not the module, runs pgbench -i (named for its sessions), then the run, and reports both."""
    import signal as signal_module
    calls = tmp_path / 'calls'
    binary = tmp_path / 'pgbench'
    binary.write_text(FAKE_PGBENCH % calls)
    binary.chmod(0o755)
    monkeypatch.setattr(signal_module, 'signal', lambda *args: None)
    monkeypatch.setattr(_pgbench.os, 'setsid', lambda: None)
    monkeypatch.setattr(_pgbench, '_stop_group', lambda program, me: False)
    monkeypatch.setattr(_pgbench, '_end_init_sessions', lambda program: pytest.fail('nothing was cut short'))
    program = LoadProgram(str(tmp_path), True)
    program.detail['load'].update(binary=str(binary), duration=2, scale=3, initialise=True)
    program.conn_params = lambda: {'login_host': 'h', 'login_user': 'postgres', 'db': 'pggit'}
    program.stop_condition = lambda: (lambda: None)
    assert _pgbench.run_load(program) == 0
    lines = calls.read_text().splitlines()
    assert lines[0] == '%s -i -s 3 -q -n pggit_chaos_load' % _pgbench.init_app(program.fid)
    assert lines[1].startswith('%s -c 1 -j 1 -T ' % _pgbench.APP) and len(lines) == 2
    names = [e['event'] for e in program.out.events]
    assert names[:2] == ['initialising', 'initialised'] and names.index('started') > 1 and names[-1] == 'done'
    assert program.out.events[-1]['init_s'] >= 0.3 and program.out.events[-1]['tps'] == 10.0


class TerminatingConn(object):
    """The admin connection of _end_init_sessions: records the statement and its arguments."""

    def __init__(self):
        self.calls = []

    def cursor(self):
        return self

    def execute(self, query, args=None):
        self.calls.append((query, args))

    def fetchone(self):
        return (1,)

    def close(self):
        pass


def test_a_cut_initialisation_ends_only_its_own_sessions_never_another_runs(monkeypatch):
    """Two load faults (two names) each name their initialisation's sessions: the revert of one must not end the
    sessions of the other's initialisation (the old code ended every 'pggit-chaos-load-init' session)."""
    conn = TerminatingConn()
    monkeypatch.setattr(_pgbench._pgconn, 'connect', lambda params, application_name=None: conn)
    mine, other = LoadProgram('/s', True), LoadProgram('/s', True)
    other.fid = 'load--y'
    for program in (mine, other):
        program.conn_params = lambda: {'login_user': 'postgres'}
    assert _pgbench.init_app(mine.fid) != _pgbench.init_app(other.fid)
    assert _pgbench._end_init_sessions(mine) == 1
    (query, args), = conn.calls
    assert 'pg_terminate_backend' in query and args == (_pgbench.init_app(mine.fid), _pgbench.DATABASE)
    # Within PostgreSQL's 63 bytes of application_name, and still apart for long names that share a prefix.
    long_a, long_b = 'load--' + 'a' * 100 + '1', 'load--' + 'a' * 100 + '2'
    assert len(_pgbench.init_app(long_a)) <= 63 and _pgbench.init_app(long_a) != _pgbench.init_app(long_b)


@pytest.mark.parametrize('message, gone', [
    ('connection to server at "198.18.0.2", port 5432 failed: Connection refused\n\tIs the server running on that host?', True),
    ('connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: No such file or directory', True),
    ('connection to server at "198.18.0.2", port 5432 failed: FATAL:  the database system is starting up', True),
    ('connection to server at "198.18.0.2", port 5432 failed: FATAL:  the database system is shutting down', False),
    ('connection to server at "198.18.0.2", port 5432 failed: timeout expired', False),
    ('connection to server at "198.18.0.2", port 5432 failed: FATAL:  password authentication failed', False),
])
def test_the_init_step_of_a_server_that_is_not_running_is_done_not_retried_for_ever(monkeypatch, message, gone):
    """Review (stop 15): the normal end of every load closes its record through pg_end_load_init; a server that is down
    (stopped, killed by another fault, its host gone) has no session left, yet its refused connection failed the close
    and kept the record due for a reaper retrying until the server came back, if ever. A time-out proves nothing."""
    def refuse(params, application_name=None):
        raise _pgconn.psycopg2.OperationalError(message)
    monkeypatch.setattr(_pgbench._pgconn, 'connect', refuse)
    step = _pgbench.init_step({'login_host': '198.18.0.2', 'db': 'pggit'}, 'load--l')
    if gone:
        assert _pgbench.end_init(step, {}, sleep=lambda s: None) is False
    else:
        with pytest.raises(_pgconn.psycopg2.OperationalError):
            _pgbench.end_init(step, {}, sleep=lambda s: None)


class CountingConn(TerminatingConn):
    """end_init's connection: one session ended, then none left."""

    def fetchone(self):
        return (1,) if len(self.calls) <= len(_pgconn.REVERT_SQL_SETTINGS) + 1 else (0,)


def test_the_init_step_runs_under_the_revert_sessions_time_limits(monkeypatch):
    """Review (stop 16): pg_end_load_init opened its own session without the revert's lock and statement time-outs that
    every other undo step sets, so a hung pg_terminate_backend could block the record's close for ever."""
    conn = CountingConn()
    monkeypatch.setattr(_pgbench._pgconn, 'connect', lambda params, application_name=None: conn)
    step = _pgbench.init_step({'login_host': '198.18.0.2', 'db': 'pggit'}, 'load--l')
    assert _pgbench.end_init(step, {}, sleep=lambda s: None) is True
    queries = [query for query, args in conn.calls]
    assert queries[:2] == list(_pgconn.REVERT_SQL_SETTINGS) and "statement_timeout" in queries[1]
    assert 'pg_terminate_backend' in queries[2]
