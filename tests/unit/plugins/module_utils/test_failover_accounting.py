"""The failover workload (multi-host client) and the RTO/RPO accounting, without a database."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _workload
from ansible_collections.pggit.chaos.plugins.module_utils._checker import check, failover_accounting

OLD, NEW = '198.18.0.11:5432', '198.18.0.12:5432'


def op(token, outcome, server, ended, in_catalog=True):
    return dict(token=token, outcome=outcome, server=server, started=ended - 0.05, ended=ended, in_catalog=in_catalog)


def test_rto_runs_from_the_fault_to_the_first_ddl_the_new_primary_acknowledged():
    ops = [op('r_1', 'ok', OLD, 99.0), op('r_2', 'ok', OLD, 100.0), op('r_3', 'unknown', OLD, 104.0, False),
           op('r_4', 'fail', '', 105.0, False), op('r_5', 'ok', NEW, 108.5), op('r_6', 'ok', NEW, 109.0)]
    acc = failover_accounting(ops, 100.5, [NEW], [OLD])
    assert acc['rto_s'] == 8.0 and acc['first_on_new'] == dict(token='r_5', ended=108.5)
    assert acc['write_pause_s'] == 8.5  # last acknowledgement by the old primary at 100.0
    assert acc['rpo_lost_ddl'] == 0 and acc['rpo_lost'] == []
    assert acc['committed_by'] == {OLD: 2, NEW: 2}
    assert acc['indeterminate']['not_committed'] == [dict(token='r_3', outcome='unknown', server=OLD)]


def test_no_ddl_on_the_new_primary_means_no_rto():
    acc = failover_accounting([op('r_1', 'ok', OLD, 99.0), op('r_2', 'fail', '', 101.0, False)], 100.0, [NEW], [OLD])
    assert acc['rto_s'] is None and acc['write_pause_s'] is None and acc['first_on_new'] is None


def test_a_ddl_the_client_saw_committed_before_the_fault_and_missing_on_the_new_primary_is_lost_by_token():
    ops = [op('r_1', 'ok', OLD, 98.0), op('r_2', 'ok', OLD, 99.0, in_catalog=False), op('r_3', 'ok', NEW, 110.0)]
    acc = failover_accounting(ops, 100.0, [NEW], [OLD])
    assert acc['rpo_lost_ddl'] == 1 and acc['rpo_lost'] == [dict(token='r_2', server=OLD, ended=99.0)]
    assert acc['lost_after_fault_ddl'] == 0


def test_committed_locally_not_replicated_is_a_maybe_resolved_on_the_new_primary_and_never_a_loss():
    # The old primary committed r_2 locally; its wait for the synchronous standby was cancelled (maybe) and the new
    # primary never got it: the client was never told it committed, so it is resolved not committed, not lost.
    ops = [op('r_1', 'ok', OLD, 98.0), op('r_2', 'maybe', OLD, 101.0, in_catalog=False),
           op('r_3', 'maybe', OLD, 101.5, in_catalog=True), op('r_4', 'ok', NEW, 107.0)]
    acc = failover_accounting(ops, 100.0, [NEW], [OLD])
    assert acc['rpo_lost_ddl'] == 0
    assert [i['token'] for i in acc['indeterminate']['not_committed']] == ['r_2']
    assert [i['token'] for i in acc['indeterminate']['committed']] == ['r_3']
    # The checker over the new primary's history agrees: exactly once, nothing lost.
    verdict = check(ops, {'r_1': 1, 'r_3': 1, 'r_4': 1}, catalog={'r_1', 'r_3', 'r_4'})
    assert verdict['valid'] and verdict['maybe_resolved'] == {'committed': 1, 'not_committed': 1}


def test_an_acknowledgement_after_the_fault_that_the_new_primary_lacks_is_counted_apart():
    # A frozen old leader that resumes and acknowledges a write before it learns it lost the lock.
    ops = [op('r_1', 'ok', OLD, 98.0), op('r_2', 'ok', NEW, 106.0), op('r_3', 'ok', OLD, 121.0, in_catalog=False)]
    acc = failover_accounting(ops, 100.0, [NEW], [OLD])
    assert acc['rpo_lost_ddl'] == 0 and acc['lost_after_fault_ddl'] == 1
    assert acc['lost_after_fault'][0]['token'] == 'r_3' and acc['acknowledged_by_old_after_fault'] == 1
    assert not check(ops, {'r_1': 1, 'r_2': 1}, catalog={'r_1', 'r_2'})['valid']


def test_an_unresolved_outcome_stays_unresolved():
    acc = failover_accounting([op('r_1', 'unknown', OLD, 101.0, in_catalog=None)], 100.0, [NEW])
    assert acc['indeterminate']['unresolved'] == [dict(token='r_1', outcome='unknown', server=OLD)]


def test_the_multi_host_client_names_every_host_and_wants_a_writable_server():
    params = {'login_host': '198.18.0.11', 'login_port': 5432, 'db': 'pggit', 'hosts': ['198.18.0.11', '198.18.0.12'],
              'target_session_attrs': 'read-write', 'connect_params': {'keepalives': 1}}
    multi = _workload.multi_host_params(params)
    kwargs = _pgconn.conn_kwargs(multi)
    assert kwargs['host'] == '198.18.0.11,198.18.0.12' and kwargs['port'] == 5432
    assert kwargs['target_session_attrs'] == 'read-write' and kwargs['keepalives'] == 1
    assert kwargs['connect_timeout'] == _workload.MULTI_CONNECT_TIMEOUT
    assert _workload.multi_host_params(multi) == multi, 'applied twice (module, then program) it changes nothing'
    # The record's connection (what the reaper's drop uses) holds the host list too.
    assert _pgconn.stored_conn(multi)['login_host'] == '198.18.0.11,198.18.0.12'
    single = {'login_host': 'a', 'hosts': []}
    assert _workload.multi_host_params(single) is single


class Info(object):
    host, port = '198.18.0.12', 5432


class SockConn(object):
    """A connection whose commit blocks on a socket that never answers, as one to a frozen server does."""

    closed = False
    autocommit = False
    info = Info()
    notices = []

    def __init__(self):
        self.ours, self.peer = socket.socketpair()

    def fileno(self):
        return self.ours.fileno()

    def cursor(self):
        conn = self

        class Cur(object):
            def execute(self, query, args=None):
                pass
        return Cur() if conn else None

    def commit(self):
        if self.ours.recv(1) == b'':  # blocks until the socket is shut down
            raise _pgconn.psycopg2.OperationalError('server closed the connection unexpectedly')

    def cancel(self):
        pass  # a frozen server never reads a cancel request

    def rollback(self):
        pass

    def close(self):
        self.closed = True


@pytest.mark.skipif(not _pgconn.HAS_PSYCOPG2, reason='psycopg2 is required for its error classes')
def test_a_ddl_that_a_frozen_server_never_answers_is_cut_off_and_unknown():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'statement_timeout_ms': 100, 'hosts': ['a', 'b']})
    conn = SockConn()
    work.conn, work.server = conn, _workload.server_of(conn)
    started = time.time()
    result = []
    thread = threading.Thread(target=lambda: result.append(work.one_op('r_000001')))
    thread.daemon = True
    thread.start()
    thread.join(10)
    try:
        assert not thread.is_alive(), 'the DDL to a frozen server was never cut off'
        assert result[0]['outcome'] == 'unknown' and result[0]['server'] == '198.18.0.12:5432'
        assert 1.0 <= time.time() - started < 5 and result[0]['ended'] >= result[0]['started']
    finally:
        conn.ours.close()
        conn.peer.close()


def test_server_of_names_the_server_libpq_reached():
    assert _workload.server_of(SockConn.__new__(SockConn)) == '198.18.0.12:5432'
    assert _workload.server_of(object()) == ''


def test_the_server_log_holds_each_ddl_with_its_server_and_catalog_fate():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'hosts': ['a', 'b'], 'target_session_attrs': 'read-write'})
    work.ops = [dict(token='r_1', outcome='ok', server=OLD, started=1.0, ended=1.1),
                dict(token='r_2', outcome='maybe', server=OLD, started=2.0, ended=2.1)]
    work.observed_on = NEW
    log = work.server_log({'r_1'})
    assert log['observed_on'] == NEW and log['target_session_attrs'] == 'read-write'
    assert log['ops'] == [['r_1', 'ok', OLD, 1.0, 1.1, True], ['r_2', 'maybe', OLD, 2.0, 2.1, False]]
    assert _workload.Workload({'schema': 's', 'run_id': 'r'}).server_log(set()) is None


def test_the_client_tries_the_server_it_lost_last():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'hosts': ['10.0.0.1', '10.0.0.2', '10.0.0.3'],
                               'login_host': '10.0.0.1'})
    assert work.reconnect_params()['login_host'] == '10.0.0.1,10.0.0.2,10.0.0.3'
    work.server = '10.0.0.1:5432'
    assert work.reconnect_params()['login_host'] == '10.0.0.2,10.0.0.3,10.0.0.1'
    assert work.reconnect_params()['connect_params']['target_session_attrs'] == 'read-write'
    single = _workload.Workload({'schema': 's', 'run_id': 'r', 'login_host': 'a'})
    single.server = 'a:5432'
    assert single.reconnect_params()['login_host'] == 'a'


def test_the_final_check_reads_the_server_that_acknowledged_last_first():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'hosts': ['10.0.0.1', '10.0.0.2', '10.0.0.3']})
    assert work.observe_params()['login_host'] == '10.0.0.1,10.0.0.2,10.0.0.3'

    class Conn(SockConn):
        def commit(self):
            pass
    conn = Conn()
    conn.info = type('I', (), {'host': '10.0.0.2', 'port': 5432})()
    work.conn, work.server = conn, '10.0.0.2:5432'
    work.params['statement_timeout_ms'] = 1000
    try:
        assert work.one_op('r_000001')['outcome'] == 'ok'
    finally:
        conn.ours.close()
        conn.peer.close()
    assert work.acked_by == '10.0.0.2:5432'
    assert work.observe_params()['login_host'] == '10.0.0.2,10.0.0.1,10.0.0.3'


def test_an_acknowledged_ddl_never_read_on_the_new_primary_is_unchecked_not_kept():
    # Review: an ok op with in_catalog None was neither lost nor listed: the RPO silently left it out.
    acc = failover_accounting([op('r_1', 'ok', OLD, 99.0, in_catalog=None), op('r_2', 'ok', NEW, 104.0)], 100.0, [NEW])
    assert acc['rpo_lost_ddl'] == 0 and acc['unchecked_ok'] == [dict(token='r_1', server=OLD, ended=99.0)]
