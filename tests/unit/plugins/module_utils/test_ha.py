"""_ha against a real HTTP server on 127.0.0.1 that serves recorded Patroni 4 and etcd 3.4 answers."""
from __future__ import annotations

import copy
import json
import socket

import pytest

from fakehttp import CLUSTER, CONFIG, HISTORY, MEMBER_LIST, Fake

from ansible_collections.pggit.chaos.plugins.module_utils import _ha
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError


@pytest.fixture
def patroni():
    fake = Fake()
    fake.answers.update({'/cluster': (200, CLUSTER), '/config': (200, CONFIG), '/history': (200, HISTORY)})
    yield fake
    fake.close()


@pytest.fixture
def dead_url():
    """A URL where nothing listens (a port bound and closed)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return 'http://127.0.0.1:%d' % port


def test_cluster_state_finds_the_leader_sync_standbys_and_settings(patroni):
    state = _ha.cluster_state([patroni.url])
    assert state['leader'] == 'lab-1'
    assert state['scope'] == 'pggit-lab'
    assert state['sync_standbys'] == ['lab-2']
    assert state['timeline'] == 3
    assert state['settings']['synchronous_mode'] is True and state['settings']['ttl'] == 10
    assert state['source'] == patroni.url
    assert state['history'][-1][0] == 2
    assert [m['role'] for m in state['members']] == ['leader', 'sync_standby', 'replica']
    lab3 = state['members'][2]
    assert lab3 == {'name': 'lab-3', 'host': '198.18.0.13', 'port': 5432, 'role': 'replica', 'state': 'streaming', 'timeline': 3,
                    'lag': None, 'api_url': 'http://198.18.0.13:8008/patroni', 'tags': {'nofailover': True}}
    assert state['members'][1]['lag'] == 0


def test_cluster_state_skips_a_dead_url_and_names_the_one_that_answered(patroni, dead_url):
    state = _ha.cluster_state([dead_url, patroni.url + '/'])
    assert state['source'] == patroni.url and state['leader'] == 'lab-1'


def test_no_leader_during_an_election(patroni):
    cluster = copy.deepcopy(CLUSTER)
    cluster['members'][0].update(role='replica', state='stopped')
    patroni.answers['/cluster'] = (200, cluster)
    state = _ha.cluster_state([patroni.url])
    assert state['leader'] is None and state['timeline'] == 3


def test_an_old_patroni_master_is_the_leader(patroni):
    cluster = copy.deepcopy(CLUSTER)
    cluster['members'][0]['role'] = 'master'
    patroni.answers['/cluster'] = (200, cluster)
    assert _ha.cluster_state([patroni.url])['leader'] == 'lab-1'


def test_a_rest_endpoint_that_does_not_answer_is_named(dead_url):
    with pytest.raises(ChaosError) as caught:
        _ha.cluster_state([dead_url], timeout=1)
    assert dead_url in str(caught.value) and 'no Patroni REST API answered' in str(caught.value)


@pytest.mark.parametrize('status, body, said', [
    (503, {'state': 'stopped'}, 'HTTP 503'),
    (200, b'<html>not patroni</html>', 'did not answer JSON'),
    (200, {'scope': 'x'}, 'no members list'),
])
def test_bad_answers_are_errors_naming_the_url(patroni, status, body, said):
    patroni.answers['/cluster'] = (status, body)
    with pytest.raises(ChaosError) as caught:
        _ha.cluster_state([patroni.url])
    assert said in str(caught.value) and patroni.url in str(caught.value)


def test_a_missing_config_tries_the_next_url(patroni):
    other = Fake()
    try:
        other.answers.update({'/cluster': (200, CLUSTER)})  # /config: 404
        state = _ha.cluster_state([other.url, patroni.url])
        assert state['source'] == patroni.url
    finally:
        other.close()


def test_history_is_optional(patroni):
    del patroni.answers['/history']
    state = _ha.cluster_state([patroni.url])
    assert 'history' not in state and state['leader'] == 'lab-1'


@pytest.mark.parametrize('url', ['', 'ftp://x', 'lab-1:8008', 'http://', 'http://x:99999'])
def test_bad_urls_are_refused_before_any_request(url):
    with pytest.raises(ChaosError) as caught:
        _ha.cluster_state([url])
    assert 'patroni_urls' in str(caught.value) and repr(url) in str(caught.value)


def test_patroni_get_names_the_url_on_404(patroni):
    with pytest.raises(ChaosError) as caught:
        _ha.patroni_get(patroni.url, '/nothing')
    assert patroni.url + '/nothing' in str(caught.value) and 'HTTP 404' in str(caught.value)


# -- etcd -------------------------------------------------------------------------------
@pytest.fixture
def etcd():
    fakes = [Fake() for _member in range(3)]
    listing = copy.deepcopy(MEMBER_LIST)
    for fake, member in zip(fakes, listing['members']):
        member['clientURLs'] = [fake.url]
        fake.answers['/health'] = (200, {'health': 'true', 'reason': ''})
    fakes[0].answers['/v3/cluster/member/list'] = (200, listing)
    yield fakes
    for fake in fakes:
        fake.close()


def test_etcd_members_lists_through_the_v3_gateway_with_health(etcd, dead_url):
    etcd[2].answers['/health'] = (503, {'health': 'false', 'reason': 'RAFT NO LEADER'})
    members = _ha.etcd_members([dead_url, etcd[0].url], timeout=1)
    assert [m['name'] for m in members] == ['lab-1', 'lab-3', 'hlb-w']
    assert [m['healthy'] for m in members] == [True, True, False]
    assert 'RAFT NO LEADER' in members[2]['error']
    method, path, body = etcd[0].requests[0]
    assert (method, path, json.loads(body)) == ('POST', '/v3/cluster/member/list', {})


def test_etcd_that_does_not_answer_is_named(dead_url):
    with pytest.raises(ChaosError) as caught:
        _ha.etcd_members([dead_url], timeout=1)
    assert dead_url in str(caught.value)


def test_regions_by_client_url_or_name(etcd):
    members = _ha.etcd_members([etcd[0].url])
    placed = _ha.with_regions(members, {etcd[0].url + '/': 'region_a', 'lab-3': 'region_b', etcd[2].url: 'region_c'})
    assert [m['region'] for m in placed] == ['region_a', 'region_b', 'region_c']


@pytest.mark.parametrize('regions, lost, ok, surviving', [
    (['region_a', 'region_b', 'region_c'], 'region_a', True, ['m2', 'm3']),
    (['region_a', 'region_b', 'region_c'], 'region_b', True, ['m1', 'm3']),
    (['region_a', 'region_a', 'region_b'], 'region_a', False, ['m3']),  # 2 of 3 in region_a: no failover at all
    (['region_a', 'region_a', 'region_b'], 'region_b', True, ['m1', 'm2']),
])
def test_dcs_quorum_after_losing_a_region(regions, lost, ok, surviving):
    members = [{'name': 'm%d' % (i + 1), 'region': r, 'healthy': True} for i, r in enumerate(regions)]
    result = _ha.dcs_quorum(members, lost)
    assert result['ok'] is ok and result['surviving'] == surviving and result['quorum'] == 2 and result['members'] == 3


def test_an_unhealthy_member_counts_as_lost():
    members = [{'name': 'a', 'region': 'region_a', 'healthy': True}, {'name': 'b', 'region': 'region_b', 'healthy': True},
               {'name': 'c', 'region': 'region_c', 'healthy': False}]
    assert _ha.dcs_quorum(members, 'region_a')['ok'] is False
    assert _ha.dcs_quorum([], 'region_a')['ok'] is False


# -- conninfo -------------------------------------------------------------------------------
def test_conninfo_is_a_multi_host_string_libpq_parses():
    from psycopg2.extensions import parse_dsn
    text = _ha.conninfo(['198.18.0.11', '198.18.0.12', 'lab-3'], 5432, 'pggit', 'postgres', application_name="it's me")
    assert text.startswith("host='198.18.0.11,198.18.0.12,lab-3' port='5432,5432,5432' ")
    assert parse_dsn(text) == {'host': '198.18.0.11,198.18.0.12,lab-3', 'port': '5432,5432,5432', 'dbname': 'pggit',
                               'user': 'postgres', 'target_session_attrs': 'read-write', 'connect_timeout': '3',
                               'application_name': "it's me"}


def test_conninfo_ports_per_host_and_quoting_of_odd_values():
    from psycopg2.extensions import parse_dsn
    text = _ha.conninfo(['a', 'b'], [5432, 5433], "db name", 'u\\x', target_session_attrs='any', connect_timeout=None,
                        password="p'w d")
    assert parse_dsn(text) == {'host': 'a,b', 'port': '5432,5433', 'dbname': 'db name', 'user': 'u\\x', 'target_session_attrs': 'any',
                               'password': "p'w d"}


@pytest.mark.parametrize('kwargs, said', [
    (dict(hosts=[], port=5432), 'hosts'),
    (dict(hosts=['a,b'], port=5432), 'hosts'),
    (dict(hosts=['a'], port=0), 'port'),
    (dict(hosts=['a', 'b'], port=[1]), 'port'),
    (dict(hosts=['a'], port=5432, target_session_attrs='rw'), "'rw'"),
    (dict(hosts=['a'], port=5432, host='x'), 'host is not'),
])
def test_conninfo_refuses_bad_input(kwargs, said):
    with pytest.raises(ChaosError) as caught:
        _ha.conninfo(dbname='d', user='u', **kwargs)
    assert said in str(caught.value)


# -- plain mode (no HA manager): the judgement from what members said -----------------------------
MEMBERS = [{'name': 'lab-1', 'host': '198.18.0.11', 'port': 5432}, {'name': 'lab-2', 'host': '198.18.0.12', 'port': 5432},
           {'name': 'lab-3', 'host': '198.18.0.13', 'port': 5432}]


def test_plain_state_from_what_the_members_said():
    answers = {
        'lab-1': {'in_recovery': False, 'timeline': 1, 'receiver': None, 'replication': [
            {'application_name': 'lab-2', 'client_addr': '198.18.0.12', 'state': 'streaming', 'sync_state': 'sync', 'lag': 0},
            {'application_name': 'walreceiver', 'client_addr': '198.18.0.13', 'state': 'streaming', 'sync_state': 'async', 'lag': 120}]},
        'lab-2': {'in_recovery': True, 'timeline': 1, 'replication': [], 'receiver': {'status': 'streaming'}},
        'lab-3': {'in_recovery': True, 'timeline': 1, 'replication': [], 'receiver': None},
    }
    state = _ha.from_plain(MEMBERS, answers)
    assert state['leader'] == 'lab-1' and state['primaries'] == ['lab-1'] and state['sync_standbys'] == ['lab-2']
    assert [(m['role'], m['state'], m['lag']) for m in state['members']] == [
        ('leader', 'running', 0), ('sync_standby', 'streaming', 0), ('replica', 'in archive recovery', 120)]
    assert state['source'] == 'sql' and state['timeline'] == 1


def test_plain_state_reports_an_unreachable_member_and_two_primaries():
    answers = {'lab-1': {'in_recovery': False, 'timeline': 1, 'replication': [], 'receiver': None},
               'lab-2': {'in_recovery': False, 'timeline': 2, 'replication': [], 'receiver': None},
               'lab-3': {'error': '198.18.0.13:5432: connection refused'}}
    state = _ha.from_plain(MEMBERS, answers)
    assert state['leader'] is None and state['primaries'] == ['lab-1', 'lab-2']
    assert state['members'][2]['state'] == 'unreachable' and 'refused' in state['members'][2]['error']


def test_plain_state_asks_every_member_and_names_the_unreachable(dead_url):
    port = int(dead_url.rsplit(':', 1)[1])
    state = _ha.plain_state([{'name': 'gone', 'host': '127.0.0.1', 'port': port}], {'login_user': 'postgres', 'db': 'postgres'},
                            timeout=2)
    assert state['members'][0]['state'] == 'unreachable' and str(port) in state['members'][0]['error']
    assert state['leader'] is None


@pytest.mark.parametrize('members, said', [
    ([], 'members'),
    ([{'name': 'a'}], 'a name and a host'),
    ([{'name': 'a', 'host': 'h', 'port': 0}], 'port'),
    ([{'name': 'a', 'host': 'h'}, {'name': 'a', 'host': 'i'}], 'twice'),
])
def test_plain_members_problems(members, said):
    assert said in _ha.plain_members_problem(members)


def test_a_member_of_unknown_region_is_never_counted_as_surviving():
    """etcd_regions missed one member (a URL spelled otherwise): it may be in the lost region; no quorum is assumed."""
    members = [{'name': 'a', 'region': 'region_a', 'healthy': True}, {'name': 'b', 'region': None, 'healthy': True},
               {'name': 'c', 'region': 'region_c', 'healthy': True}]
    result = _ha.dcs_quorum(members, 'region_a')
    assert result['ok'] is False and result['surviving'] == ['c'] and result['unplaced'] == ['b']
    members[1]['region'] = 'region_b'
    assert _ha.dcs_quorum(members, 'region_a')['ok'] is True


def test_credentials_in_a_url_are_refused_and_never_echoed():
    problem = _ha.check_url('http://admin:s3cret@10.0.0.1:8008', 'patroni_urls')
    assert problem and 'patroni_urls' in problem and '10.0.0.1:8008' in problem and 's3cret' not in problem
    with pytest.raises(ChaosError) as caught:
        _ha.cluster_state(['http://admin:s3cret@10.0.0.1:8008'])
    assert 's3cret' not in str(caught.value)
