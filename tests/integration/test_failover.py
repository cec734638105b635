"""pggit_chaos_failover on a real streaming cluster of three private servers (m1 the primary, m2 and m3 replicas).

The whole manual failover, action by action (kill, promote, repoint, rejoin, failback, revert), each checked with
SQL on the real servers; then a half-done failover (killed and promoted) whose controller is gone: the TTL reaper
alone converges it back to m1 as the one primary with both others streaming from it.
"""
from __future__ import annotations

import os
import time

import psycopg2
import pytest

from background import ledger_ids, record
from modrun import run_module
from pgtools import kill_reapers
from streaming import StreamingCluster
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _server
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_failover

FID = 'failover--fo'


@pytest.fixture(scope='module')
def cluster():
    made = StreamingCluster(['m1', 'm2', 'm3'])
    try:
        made.start()
        assert made.wait_converged('m1'), 'the test cluster did not start streaming'
        yield made
    finally:
        made.stop()


@pytest.fixture
def ledger_dir(tmp_path, cluster):
    path = str(tmp_path / 'state')
    yield path
    if ledger_ids(path):  # a failed test left its fault: the one revert brings m1 back, so the next test starts clean
        run(cluster, path, state='absent')
    kill_reapers(path)


def run(cluster, state_dir, **args):
    full = dict(cluster['m1'].params(), name='fo', state_dir=state_dir, members=cluster.members(), ttl=args.pop('ttl', 300))
    full.update(args)
    return run_module(pggit_chaos_failover.main, full)


def count(node):
    """Rows of t on a node; -1 while it is not there (yet)."""
    try:
        return node.query('SELECT count(*) FROM t')[0][0]
    except psycopg2.Error:
        return -1


def tail(path, size=3000):
    with open(path) as handle:
        text = handle.read()[-size:]
    return text


def timeline(node):
    """The timeline a primary writes, or a standby receives."""
    return node.query("SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) "
                      "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END")[0][0]


def test_full_manual_failover_then_failback(cluster, ledger_dir):
    m1, m2, m3 = cluster['m1'], cluster['m2'], cluster['m3']
    m1.query('CREATE TABLE IF NOT EXISTS t (id int)')
    m1.query('INSERT INTO t SELECT generate_series(1, 100)')
    assert wait_for(lambda: count(m3) == 100, 10)

    result, failed = run(cluster, ledger_dir, action='kill')
    assert not failed, result['msg']
    assert result['old_primary'] == 'm1' and result['changed']
    assert not _server.running(m1.data), 'the old primary still runs after the kill'
    assert ledger_ids(ledger_dir) == [FID]
    step = record(ledger_dir, FID)['undo'][0]
    assert step['type'] == 'pg_converge' and step['local'] == 'm1' and step['original_primary'] == 'm1'
    assert sorted(m['name'] for m in step['members']) == ['m1', 'm2', 'm3']

    again, failed = run(cluster, ledger_dir, action='kill')
    assert not failed and not again['changed'], 'a second kill must see the fault in place'

    result, failed = run(cluster, ledger_dir, action='promote')
    assert not failed, result['msg']
    assert result['promoted'] == 'm2', 'equal LSNs: the first name wins'
    assert result['timeline'] == 2
    assert cluster.roles() == {'m1': None, 'm2': False, 'm3': True}
    assert record(ledger_dir, FID)['undo'][0]['promoted'] == 'm2'
    m2.query('INSERT INTO t VALUES (101)')

    result, failed = run(cluster, ledger_dir, action='repoint')
    assert not failed, result['msg']
    assert result['repointed'] == ['m3']
    assert cluster.streaming_to('m2') == ['m3']
    assert wait_for(lambda: count(m3) == 101, 10)

    result, failed = run(cluster, ledger_dir, action='rejoin')
    assert not failed, (result['msg'], tail(m1.log))
    assert result['rejoin_method'] in ('pg_rewind', 'none') and result['rejoin_s'] > 0
    assert cluster.converged_on('m2')
    assert wait_for(lambda: count(m1) == 101, 10)
    assert m1.query('SELECT pg_is_in_recovery()')[0][0] is True
    assert os.path.isfile(os.path.join(m1.data, 'postgresql.conf'))

    result, failed = run(cluster, ledger_dir, action='failback')
    assert not failed, result['msg']
    assert result['failback']['method'] == 'switchover' and result['failback']['from'] == 'm2'
    assert 0 < result['failback']['rto_s'] < 60
    assert result['primary'] == 'm1' and result['timeline'] == 3
    assert cluster.wait_converged('m1'), cluster.roles()
    m1.query('INSERT INTO t VALUES (102)')
    assert wait_for(lambda: count(m2) == 102 and count(m3) == 102, 10)

    result, failed = run(cluster, ledger_dir, state='absent')
    assert not failed, result['msg']
    assert result['revert']['result'] == 'reverted'
    assert ledger_ids(ledger_dir) == []
    assert cluster.converged_on('m1')
    assert [timeline(n) for n in (m1, m2, m3)] == [3, 3, 3]


def test_ttl_reaper_converges_a_half_done_failover(cluster, ledger_dir):
    """Killed and promoted, then the controller is gone: the reaper alone brings m1 back as the one primary."""
    assert cluster.wait_converged('m1')
    before = timeline(cluster['m1'])
    result, failed = run(cluster, ledger_dir, action='kill', ttl=10)
    assert not failed, result['msg']
    result, failed = run(cluster, ledger_dir, action='promote', candidate='m3', ttl=10)
    assert not failed, result['msg']
    assert result['promoted'] == 'm3'
    assert cluster.roles() == {'m1': None, 'm2': True, 'm3': False}
    started = time.time()
    assert wait_for(lambda: ledger_ids(ledger_dir) == [], 90, 0.5), record(ledger_dir, FID).get('last_error')
    assert cluster.wait_converged('m1'), cluster.roles()
    assert cluster.roles() == {'m1': False, 'm2': True, 'm3': True}
    assert cluster.streaming_to('m1') == ['m2', 'm3']
    assert [timeline(cluster[n]) for n in ('m1', 'm2', 'm3')] == [before + 2] * 3
    assert time.time() - started < 90


def test_bad_clusters_are_refused_before_any_fault(cluster, ledger_dir, postgres):
    """A member of another cluster, or no replica that answers: a clear error, nothing recorded, nothing killed."""
    assert cluster.wait_converged('m1')
    pid = _server.postmaster_pid(cluster['m1'].data)
    stranger = {'name': 'other', 'host': '127.0.0.1', 'port': postgres.port}
    result, failed = run(cluster, ledger_dir, members=cluster.members() + [stranger])
    assert failed and 'other are not in the cluster of m1' in result['msg'], result['msg']
    free = {'name': 'gone', 'host': '127.0.0.1', 'port': 1}
    result, failed = run(cluster, ledger_dir, members=[cluster['m1'].member(), free])
    assert failed and 'no replica to fail over to' in result['msg'] and 'gone' in result['msg'], result['msg']
    # Replicas answer but one member does not: the revert could never restart m1 (the member may have been promoted).
    result, failed = run(cluster, ledger_dir, members=cluster.members() + [free])
    assert failed and 'gone cannot be reached' in result['msg'] and 'not killed' in result['msg'], result['msg']
    result, failed = run(cluster, ledger_dir, candidate='m1')
    assert failed and 'candidate=m1 is not a replica' in result['msg'], result['msg']
    assert ledger_ids(ledger_dir) == []
    assert _server.postmaster_pid(cluster['m1'].data) == pid and _server.running(cluster['m1'].data)
    result, failed = run(cluster, ledger_dir, action='promote')
    assert failed and 'run action=kill first' in result['msg'], result['msg']
    assert cluster.converged_on('m1')
