"""pggit_cluster_info through main(), against a real HTTP server serving recorded Patroni and etcd answers."""
from __future__ import annotations

import copy
import socket

import pytest

from fakehttp import CLUSTER, CONFIG, HISTORY, MEMBER_LIST, Fake
from modrun import run_module

from ansible_collections.pggit.chaos.plugins.modules import pggit_cluster_info


@pytest.fixture
def patroni():
    fake = Fake()
    fake.answers.update({'/cluster': (200, CLUSTER), '/config': (200, CONFIG), '/history': (200, HISTORY)})
    yield fake
    fake.close()


@pytest.fixture
def etcd():
    """Three etcd members: lab-1 (region_a), lab-3 (region_b), the witness (region_c)."""
    fakes = [Fake() for _member in range(3)]
    listing = copy.deepcopy(MEMBER_LIST)
    for fake, member in zip(fakes, listing['members']):
        member['clientURLs'] = [fake.url]
        fake.answers['/health'] = (200, {'health': 'true'})
        fake.answers['/v3/cluster/member/list'] = (200, listing)
    yield fakes
    for fake in fakes:
        fake.close()


def regions(etcd):
    return dict(zip([f.url for f in etcd], ['region_a', 'region_b', 'region_c']))


@pytest.mark.parametrize('check_mode', [False, True])
def test_finds_the_leader_read_only(patroni, check_mode):
    result, failed = run_module(pggit_cluster_info.main, dict(patroni_urls=[patroni.url]), check_mode=check_mode)
    assert not failed, result['msg']
    assert result['changed'] is False and result['ha'] == 'patroni'
    assert result['leader'] == 'lab-1' and result['sync_standbys'] == ['lab-2'] and result['settings']['ttl'] == 10
    assert 'dcs' not in result
    assert all(method == 'GET' for method, _p, _b in patroni.requests)  # it only reads


def test_a_rest_endpoint_that_does_not_answer_fails_naming_the_url():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        url = 'http://127.0.0.1:%d' % sock.getsockname()[1]
    result, failed = run_module(pggit_cluster_info.main, dict(patroni_urls=[url], timeout=1))
    assert failed and url in result['msg'] and result['changed'] is False


def test_dcs_members_health_and_quorum(patroni, etcd):
    etcd[1].answers['/health'] = (503, {'health': 'false'})
    args = dict(patroni_urls=[patroni.url], etcd_urls=[f.url for f in etcd], etcd_regions=regions(etcd))
    result, failed = run_module(pggit_cluster_info.main, args)
    assert not failed, result['msg']
    assert [m['region'] for m in result['dcs']['members']] == ['region_a', 'region_b', 'region_c']
    assert result['dcs']['healthy'] == 2 and result['dcs']['quorum'] == 2


def test_lost_region_with_a_quorum_left_passes(patroni, etcd):
    args = dict(patroni_urls=[patroni.url], etcd_urls=[etcd[0].url], etcd_regions=regions(etcd), lost_region='region_a')
    result, failed = run_module(pggit_cluster_info.main, args)
    assert not failed, result['msg']
    assert result['dcs']['after_loss']['ok'] is True and result['dcs']['after_loss']['surviving'] == ['lab-3', 'hlb-w']


def test_lost_region_without_a_quorum_fails_before_any_fault(patroni, etcd):
    placed = dict(zip([f.url for f in etcd], ['region_a', 'region_a', 'region_c']))  # 2 of 3 in region_a
    args = dict(patroni_urls=[patroni.url], etcd_urls=[etcd[0].url], etcd_regions=placed, lost_region='region_a')
    result, failed = run_module(pggit_cluster_info.main, args)
    assert failed and 'lost_region=region_a' in result['msg'] and 'fewer than the quorum of 2' in result['msg']
    assert 'region_a: lab-1 lab-3' in result['msg']


def test_plain_mode_reports_an_unreachable_member():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    result, failed = run_module(pggit_cluster_info.main, dict(members=[{'name': 'gone', 'host': '127.0.0.1', 'port': port}],
                                                              connect_timeout=2))
    assert not failed, result['msg']
    assert result['ha'] == 'none' and result['leader'] is None and result['members'][0]['state'] == 'unreachable'
