"""The region_bandwidth role's own expressions (roles/pggit_chaos_bandwidth), templated by ansible-core (no lab):
which hosts are the remote region's replicas, and that the role judges nothing in Jinja."""
from __future__ import annotations

import os

import pytest
import yaml

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles', 'pggit_chaos_bandwidth')
DEFAULTS = dict(pggit_chaos_bandwidth_group='region_b', pggit_chaos_bandwidth_from_group='region_a')


def _load(*parts):
    with open(os.path.join(ROLE, *parts)) as handle:
        return yaml.safe_load(handle)


def discovered(target, groups, hostvars=None, **overrides):
    """The role's vars/main.yml templated in order for ``target``."""
    hostvars = hostvars or {}
    for members in groups.values():
        for host in members:
            if host not in hostvars:
                hostvars[host] = dict(ansible_host='198.18.0.%d' % (10 + int(host.rsplit('-', 1)[-1])))
    variables = dict(DEFAULTS, inventory_hostname=target, groups=groups, hostvars=hostvars, **overrides)
    for name, expr in _load('vars', 'main.yml').items():
        variables[name] = Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expr))
    return variables


LAB = dict(all=['lab-1', 'lab-2', 'lab-3'], region_a=['lab-1', 'lab-2'], region_b=['lab-3'],
           pggit_cluster=['lab-1', 'lab-2', 'lab-3'])


def test_the_lab_throttles_toward_its_region_b_replica():
    found = discovered('lab-1', LAB)
    assert found['pggit_chaos_bandwidth_replicas'] == ['lab-3']
    assert found['pggit_chaos_bandwidth_remote_group'] == 'region_b'
    assert sorted(found['pggit_chaos_bandwidth_from']) == ['lab-1', 'lab-2']
    assert found['pggit_chaos_bandwidth_replica_ids'] == [['lab-3', '', '198.18.0.13']]


def test_several_region_b_hosts_are_all_throttled():
    groups = dict(LAB, region_b=['lab-3', 'lab-4'], pggit_cluster=['lab-1', 'lab-2', 'lab-3', 'lab-4'])
    assert discovered('lab-1', groups)['pggit_chaos_bandwidth_replicas'] == ['lab-3', 'lab-4']


def test_a_target_in_region_b_throttles_toward_region_a_not_its_own_region():
    # Review: a primary in region_b (after a failover) had its own region's hosts throttled: no link between the
    # regions at all, reported as region_bandwidth.
    groups = dict(LAB, region_b=['lab-3', 'lab-4'], pggit_cluster=['lab-1', 'lab-2', 'lab-3', 'lab-4'])
    found = discovered('lab-3', groups)
    assert found['pggit_chaos_bandwidth_replicas'] == ['lab-1', 'lab-2']
    assert found['pggit_chaos_bandwidth_remote_group'] == 'region_a'
    assert sorted(found['pggit_chaos_bandwidth_from']) == ['lab-3', 'lab-4']


def test_hosts_outside_the_cluster_are_no_replicas():
    # Review: an application server (or an etcd witness) in region_b has no replay lag: the verdict failed on it.
    groups = dict(LAB, region_b=['lab-3', 'app-1'])
    assert discovered('lab-1', groups)['pggit_chaos_bandwidth_replicas'] == ['lab-3']


def test_without_a_pggit_cluster_group_the_region_is_taken_whole():
    groups = dict(all=['lab-1', 'lab-3'], region_b=['lab-3'])
    assert discovered('lab-1', groups)['pggit_chaos_bandwidth_replicas'] == ['lab-3']


@pytest.mark.parametrize('groups', [dict(LAB, region_b=[]), dict((k, v) for k, v in LAB.items() if k != 'region_b')])
def test_no_region_b_means_no_replica_and_a_skip_reason_naming_the_group(groups):
    found = discovered('lab-1', groups)
    assert found['pggit_chaos_bandwidth_replicas'] == []
    reason = _load('tasks', 'main.yml')[0]['vars']['pggit_experiment_skip_reason']
    text = Templar(loader=DataLoader(), variables=found).template(trust_as_template(reason))
    assert 'no replica in the inventory group region_b (other than lab-1)' in text


def test_a_host_without_ansible_host_is_addressed_by_its_name():
    # Review: map('extract', hostvars, 'ansible_host') failed on a host named by its address (no ansible_host), with a
    # templating error naming no host.
    groups = dict(all=['lab-1', '198.18.0.13'], region_a=['lab-1'], region_b=['198.18.0.13'])
    found = discovered('lab-1', groups, hostvars={'lab-1': dict(ansible_host='198.18.0.11'), '198.18.0.13': {}})
    assert found['pggit_chaos_bandwidth_replica_addresses'] == ['198.18.0.13']
    assert found['pggit_chaos_bandwidth_from_addresses'] == ['198.18.0.11']
    assert found['pggit_chaos_bandwidth_replica_ids'] == [['198.18.0.13', '', '198.18.0.13']]
    inject = _load('tasks', 'inject.yml')
    assert inject[0]['pggit.chaos.pggit_chaos_bandwidth']['peers'] == '{{ pggit_chaos_bandwidth_replica_addresses }}'
    assert inject[1]['pggit.chaos.pggit_chaos_bandwidth']['peers'] == '{{ pggit_chaos_bandwidth_from_addresses }}'


def _tasks(items):
    for item in items or []:
        yield item
        for key in ('block', 'rescue', 'always'):
            yield from _tasks(item.get(key))


def test_the_role_does_not_judge_the_catch_up_in_jinja():
    # Review: a `when` read the last monitor sample's lags in Jinja to decide whether the replicas had caught up
    # (counting an unthrottled replica, and a disconnected one as caught up). The wait always runs; Python judges.
    for name in ('main.yml', 'inject.yml', 'load.yml'):
        for task in _tasks(_load('tasks', name)):
            conditions = yaml.safe_dump([task.get(k) for k in ('when', 'until', 'failed_when', 'changed_when')])
            assert 'lag_bytes' not in conditions and '.series' not in conditions, (name, task.get('name'))
    wait = [t for t in _tasks(_load('tasks', 'main.yml'))
            if t.get('name') == "Wait until every replica's replay lag is back under the threshold"]
    assert len(wait) == 1 and 'when' not in wait[0]
