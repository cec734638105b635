"""pggit_chaos_connections really terminates backends, and only the chosen ones."""
from __future__ import annotations

import psycopg2
import pytest

from modrun import run_module
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_connections


@pytest.fixture
def victims(pgdb):
    conns = [psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'],
                              application_name='victim-%d' % i) for i in range(4)]
    bystander = psycopg2.connect(host='127.0.0.1', port=pgdb['login_port'], user='postgres', dbname=pgdb['db'],
                                 application_name='bystander')
    yield conns, bystander
    for conn in conns + [bystander]:
        conn.close()


def alive(conn):
    try:
        conn.cursor().execute('SELECT 1')
        conn.rollback()
        return True
    except psycopg2.Error:
        return False


def test_kills_exactly_count_matching_backends(pgdb, victims):
    conns, bystander = victims
    by_conn = [(c, c.get_backend_pid()) for c in conns]
    pids = sorted(pid for _c, pid in by_conn)
    result, failed = run_module(pggit_chaos_connections.main, dict(pgdb, count=2, application_name='victim-%'))
    assert not failed and result['changed']
    killed = sorted(t['pid'] for t in result['terminated'])
    assert killed == pids[:2], 'oldest first by default'
    assert all(t['application_name'].startswith('victim-') for t in result['terminated'])
    assert [alive(c) for c, _pid in by_conn] == [pid not in killed for _c, pid in by_conn]
    assert alive(bystander)


def test_percent_rounds_up_and_check_mode_kills_nothing(pgdb, victims):
    conns, _ignored = victims
    result, failed = run_module(pggit_chaos_connections.main, dict(pgdb, percent=50, application_name='victim-%'), check_mode=True)
    assert not failed and len(result['terminated']) == 2 and result['changed']
    assert all(alive(c) for c in conns)
    result, failed = run_module(pggit_chaos_connections.main, dict(pgdb, percent=30, application_name='victim-%'))
    assert len(result['terminated']) == 2  # ceil(4 * 0.3)


def test_no_match_is_not_a_change(pgdb):
    result, failed = run_module(pggit_chaos_connections.main, dict(pgdb, count=5, application_name='nobody-%'))
    assert not failed and result['changed'] is False and result['terminated'] == []


@pytest.mark.parametrize('extra, msg', [
    ({'count': 0}, 'count must be between 1 and 10000, got 0'),
    ({'percent': 101}, 'percent must be between 1 and 100, got 101'),
    ({'count': 1, 'rounds': 0}, 'rounds must be between 1 and 100, got 0'),
    ({'count': 1, 'interval': -1}, 'interval must be between 0 and 600 seconds, got -1.0'),
    ({'count': 1, 'percent': 5}, 'parameters are mutually exclusive: count|percent'),
])
def test_bad_input(pgdb, extra, msg):
    result, failed = run_module(pggit_chaos_connections.main, dict(pgdb, **extra))
    assert failed and msg in result['msg']
