"""Target selection on the controller: each host's opt-in from its own inventory, then the blast radius."""
from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from inventory_fixture import Inventory, hosts

from ansible_collections.pggit.chaos.plugins.action.pggit_chaos_select import ActionModule
from ansible_collections.pggit.chaos.plugins.plugin_utils._targets import blast_limit, select

HOSTS = ['pg1', 'pg2', 'pg3', 'pg4', 'pg5']


# -- the blast radius (pure) ---------------------------------------------------------------------
def everyone(names=None):
    return dict((h, True) for h in (HOSTS if names is None else names))


@pytest.mark.parametrize('max_hosts, selected', [
    ('all', HOSTS),
    (None, HOSTS),
    ('', HOSTS),
    (2, ['pg1', 'pg2']),
    ('2', ['pg1', 'pg2']),
    (' 3 ', ['pg1', 'pg2', 'pg3']),
    (50, HOSTS),
    ('50%', ['pg1', 'pg2']),  # 2.5 floors to 2
    (' 50 % ', ['pg1', 'pg2']),
    ('10%', ['pg1']),  # 0.5 floors to 0, but at least one
    ('33.4%', ['pg1']),
    ('100%', HOSTS),
    ('99.9%', ['pg1', 'pg2', 'pg3', 'pg4']),
])
def test_blast_radius(max_hosts, selected):
    result = select(HOSTS, everyone(), max_hosts)
    assert result['selected'] == selected
    assert result['spared'] == HOSTS[len(selected):]
    assert result['refused'] == []
    assert result['limit'] == len(selected)


def test_blast_radius_counts_only_opted_in_hosts_in_order():
    result = select(HOSTS, everyone(['pg2', 'pg4', 'pg5']), '2')
    assert result == {'selected': ['pg2', 'pg4'], 'refused': ['pg1', 'pg3'], 'spared': ['pg5'], 'limit': 2}


@pytest.mark.parametrize('max_hosts', ['50%', 1, 'all'])
def test_nobody_opted_in_selects_nobody(max_hosts):
    assert select(HOSTS, {}, max_hosts) == {'selected': [], 'refused': HOSTS, 'spared': [], 'limit': 0}


@pytest.mark.parametrize('max_hosts, shown', [
    (0, "'0'"),
    ('-1', "'-1'"),
    ('0%', "'0%'"),
    ('150%', "'150%'"),
    ('half', "'half'"),
    ('2.5', "'2.5'"),
    ('all hosts', "'all hosts'"),
    ('50%%', "'50%%'"),
])
def test_bad_blast_radius_names_the_variable_and_value(max_hosts, shown):
    with pytest.raises(ValueError) as err:
        blast_limit(max_hosts, 5)
    assert 'chaos_max_hosts' in str(err.value)
    assert 'got %s' % shown in str(err.value)


# -- the action: the inventory decides, for every host the same way -----------------------------------
def run(inventory, me, args=None, overrides=None, extra_vars=None):
    """Run the action for host ``me``; ``extra_vars`` reach every host (as -e does), ``overrides`` only ``me`` (play/task vars)."""
    task = MagicMock(args=dict(args or {'chaos_max_hosts': 'all'}), async_val=0, check_mode=False, action='pggit.chaos.pggit_chaos_select')
    action = ActionModule(task, MagicMock(), MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    if extra_vars:
        inventory.variable_manager._extra_vars = dict(extra_vars)
    task_vars = inventory.task_vars(me, **dict(extra_vars or {}, **(overrides or {})))
    task_vars['ansible_play_hosts_all'] = sorted(inventory.inventory.hosts)  # the live inventory: hosts added at run time too
    return action.run(task_vars=task_vars)


@pytest.fixture
def lab(tmp_path):
    return Inventory(tmp_path / 'inventory', hosts(pg1={'pggit_chaos_allowed': True}, pg2={'pggit_chaos_allowed': False},
                                                   pg3={'pggit_chaos_allowed': True}, pg4={}))


def test_selection_follows_the_inventory(lab):
    result = run(lab, 'pg1')
    assert 'failed' not in result and result['changed'] is False
    assert (result['selected'], result['refused'], result['spared'], result['limit']) == (['pg1', 'pg3'], ['pg2', 'pg4'], [], 2)
    assert result['msg'] == 'pg1 selected (2 of 2 opted-in host(s), limit 2)'
    assert result['reasons']['pg2'].startswith('host pg2 has not opted in to chaos: pggit_chaos_allowed is false in its inventory')
    assert 'is not set in its inventory' in result['reasons']['pg4']


def test_a_refused_host_fails_with_the_reason(lab):
    result = run(lab, 'pg2')
    assert result['failed'] and result['msg'].startswith('host pg2 has not opted in to chaos')
    assert result['selected'] == ['pg1', 'pg3'] and result['opt_in']['inventory'] is False


@pytest.mark.parametrize('me', ['pg1', 'pg2', 'pg3', 'pg4'])
def test_extra_vars_cannot_raise_any_host(lab, me):
    result = run(lab, me, extra_vars={'pggit_chaos_allowed': True})
    assert result['selected'] == ['pg1', 'pg3'] and result['refused'] == ['pg2', 'pg4']
    if me in ('pg2', 'pg4'):
        assert result['failed']
        assert 'has not opted in to chaos in its inventory' in result['msg'] and 'cannot override it' in result['msg']


def test_play_vars_cannot_raise_this_host(lab):
    result = run(lab, 'pg2', overrides={'pggit_chaos_allowed': 'yes'})
    assert result['failed'] and 'an extra-var or play var cannot override it' in result['msg']


def test_extra_vars_can_lower_every_host(lab):
    result = run(lab, 'pg1', extra_vars={'pggit_chaos_allowed': False})
    assert result['failed'] and 'lowered it' in result['msg']
    assert result['selected'] == [] and result['refused'] == ['pg1', 'pg2', 'pg3', 'pg4']


def test_blast_radius_applies_to_opted_in_hosts(lab):
    first, second = run(lab, 'pg1', {'chaos_max_hosts': 1}), run(lab, 'pg3', {'chaos_max_hosts': 1})
    assert first['selected'] == second['selected'] == ['pg1']
    assert second['spared'] == ['pg3'] and second['msg'] == 'pg3 spared by the blast radius (limit 1)'
    assert 'failed' not in second


@pytest.mark.parametrize('args, message', [
    ({'chaos_max_hosts': 0}, "chaos_max_hosts must be at least 1, got '0'"),
    ({'max_hosts': '150%'}, "max_hosts must be a percentage in (0, 100], got '150%'"),
])
def test_bad_blast_radius_fails_every_host_naming_the_option(lab, args, message):
    for me in ('pg1', 'pg2'):
        result = run(lab, me, args)
        assert result['failed'] and result['msg'] == message


def test_explicit_hosts_keep_their_order(lab):
    result = run(lab, 'pg3', {'hosts': ['pg3', 'pg2', 'pg1'], 'max_hosts': 1})
    assert (result['selected'], result['refused'], result['spared']) == (['pg3'], ['pg2'], ['pg1'])


# -- the inventory as parsed, and where the fault lands ----------------------------------------------
def test_add_host_cannot_raise_a_host_or_add_one(lab):
    lab.add_host('pg2', pggit_chaos_allowed=True)  # add_host: {name: pg2, pggit_chaos_allowed: true}
    lab.add_host('prod-db', groups=['db'], pggit_chaos_allowed=True, ansible_connection='local')
    result = run(lab, 'pg1')
    assert result['selected'] == ['pg1', 'pg3'] and result['refused'] == ['pg2', 'pg4', 'prod-db']
    assert result['reasons']['prod-db'].startswith('host prod-db is not in the inventory')
    assert 'pggit_chaos_allowed is false there' in run(lab, 'pg2')['msg']
    refused = run(lab, 'prod-db')
    assert refused['failed'] and refused['msg'].startswith('host prod-db is not in the inventory')


def test_an_extra_var_redirecting_ansible_host_refuses_every_host(lab):
    result = run(lab, 'pg1', extra_vars={'ansible_host': 'prod'})
    assert result['failed'] and result['selected'] == [] and result['refused'] == ['pg1', 'pg2', 'pg3', 'pg4']
    assert result['msg'] == ("host pg1: ansible_host is 'prod' here but not set in the inventory (Ansible connects to 'pg1'): "
                             "the opt-in belongs to the inventory's host; refusing")
    assert result['reasons']['pg3'].startswith("host pg3: ansible_host is 'prod' here")


def test_a_play_var_redirecting_this_host_refuses_it(lab):
    result = run(lab, 'pg3', overrides={'ansible_connection': 'ssh'})
    assert result['failed'] and "host pg3: ansible_connection is 'ssh' here but 'local' in the inventory" in result['msg']


def test_destructive_opt_in_is_reported_per_selected_host_from_the_inventory(tmp_path):
    inventory = Inventory(tmp_path / 'inventory', hosts(pg1={'pggit_chaos_allowed': True, 'pggit_chaos_destructive': True},
                                                        pg2={'pggit_chaos_allowed': True},
                                                        pg3={'pggit_chaos_allowed': False, 'pggit_chaos_destructive': True}))
    result = run(inventory, 'pg1')
    assert result['selected'] == ['pg1', 'pg2'] and result['destructive'] == ['pg1']
    # -e can lower it, never raise it, as for the first opt-in.
    assert run(inventory, 'pg1', extra_vars={'pggit_chaos_destructive': True})['destructive'] == ['pg1']
    assert run(inventory, 'pg1', extra_vars={'pggit_chaos_destructive': False})['destructive'] == []
