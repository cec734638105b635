"""The opt-in rule: the host's own inventory says true, and nothing this run sees says otherwise."""
from __future__ import annotations

import pytest

from inventory_fixture import Inventory, hosts

from ansible_collections.pggit.chaos.plugins.plugin_utils import _optin
from ansible_collections.pggit.chaos.plugins.plugin_utils._optin import UNDEFINED, decide, inventory_vars, judge, opted_in


class Templar(object):
    """Resolves '{{ name }}' from its variables, like the real templar; copy_with_new_env swaps them."""

    def __init__(self, variables=None):
        self.variables = variables or {}

    def template(self, value):
        if isinstance(value, str) and value.startswith('{{'):
            name = value.strip('{} ')
            if name not in self.variables:
                raise KeyError("'%s' is undefined" % name)
            return self.variables[name]
        return value

    def copy_with_new_env(self, available_variables=None):
        return Templar(available_variables)


@pytest.mark.parametrize('value', [True, 'true', 'True', 'yes', 'on', 1, '1'])
def test_strict_true_values(value):
    assert opted_in(value) is True


@pytest.mark.parametrize('value', [None, UNDEFINED, False, 'false', 'no', 'maybe', '', 'true please', 0, 2, [], {}])
def test_everything_else_refuses(value):
    assert opted_in(value) is False


# -- the rule on resolved values -------------------------------------------------------------
@pytest.mark.parametrize('inventory, effective, allowed', [
    (True, True, True),
    ('yes', 'true', True),
    (True, False, False),       # a play/extra var lowers it
    (True, 'no', False),
    (True, 'maybe', False),
    (False, True, False),       # -e pggit_chaos_allowed=true on a host whose inventory says false
    (UNDEFINED, True, False),   # ... or says nothing
    ('maybe', True, False),
    (False, False, False),
    (UNDEFINED, UNDEFINED, False),
])
def test_rule(inventory, effective, allowed):
    assert judge('pg1', inventory, effective).allowed is allowed


def test_an_override_is_refused_and_says_so():
    decision = judge('pg1', False, True)
    assert decision.msg.startswith('host pg1 has not opted in to chaos in its inventory (pggit_chaos_allowed is false there); '
                                   'an extra-var or play var cannot override it; set pggit_chaos_allowed: true in the inventory')
    assert decision.details() == {'host': 'pg1', 'inventory': False, 'effective': True, 'allowed': False}
    assert 'is not set there' in judge('pg1', UNDEFINED, 'yes').msg


def test_no_opt_in_anywhere_names_the_value():
    assert judge('pg1', UNDEFINED, UNDEFINED).msg.startswith(
        'host pg1 has not opted in to chaos: pggit_chaos_allowed is not set in its inventory; set pggit_chaos_allowed: true')
    assert "pggit_chaos_allowed is 'maybe' in its inventory" in judge('pg1', 'maybe', 'maybe').msg


def test_a_lowered_opt_in_says_who_lowered_it():
    expected = ('host pg1 opted in to chaos in its inventory, but pggit_chaos_allowed is false for this run '
                '(a play, task or extra var lowered it); refusing')
    assert judge('pg1', True, False).msg == expected


def test_a_host_outside_the_inventory_is_refused():
    assert judge('ghost', UNDEFINED, True, in_inventory=False).msg.startswith('host ghost is not in the inventory')


# -- reading the inventory -----------------------------------------------------------------------
def test_inventory_vars_merge_inventory_file_and_vars_files_and_nothing_else(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'from_file': 'host'}, pg2={}), files={
        'group_vars/all.yml': {'pggit_chaos_allowed': False, 'level': 'all'},
        'group_vars/db.yml': {'pggit_chaos_allowed': True, 'level': 'db'},
        'host_vars/pg2.yml': {'pggit_chaos_allowed': False},
    })
    pg1 = inventory_vars(inv.inventory, inv.loader, inv.inventory.get_host('pg1'))
    assert (pg1['pggit_chaos_allowed'], pg1['level'], pg1['from_file']) == (True, 'db', 'host')
    pg2 = inventory_vars(inv.inventory, inv.loader, inv.inventory.get_host('pg2'))
    assert pg2['pggit_chaos_allowed'] is False, 'host_vars beat group_vars'


def test_inventory_host_var_beats_group_var(tmp_path):
    inv = Inventory(tmp_path, {'all': {'children': {'db': {'vars': {'pggit_chaos_allowed': True},
                                                           'hosts': {'pg1': {'pggit_chaos_allowed': False}, 'pg2': {}}}}}})
    assert decide(inv.task_vars('pg1', pggit_chaos_allowed=True), 'pg1', True).allowed is False
    assert decide(inv.task_vars('pg2'), 'pg2', True).allowed is True


@pytest.mark.parametrize('inventory_value, effective, allowed, text', [
    (False, True, False, 'an extra-var or play var cannot override it'),
    (None, True, False, 'an extra-var or play var cannot override it'),
    (True, False, False, 'lowered it'),
    (True, True, True, None),
])
def test_decide_reads_the_inventory_not_the_task_vars(tmp_path, inventory_value, effective, allowed, text):
    host_vars = {} if inventory_value is None else {'pggit_chaos_allowed': inventory_value}
    inv = Inventory(tmp_path, hosts(pg1=host_vars))
    task_vars = inv.task_vars('pg1', pggit_chaos_allowed=effective)  # effective as -e or vars: would make it
    decision = decide(task_vars, 'pg1', task_vars['pggit_chaos_allowed'])
    assert decision.allowed is allowed
    assert text is None or text in decision.msg


def test_templated_inventory_value_resolves_from_inventory_vars_only(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': '{{ is_test_env }}', 'is_test_env': True},
                                    pg2={'pggit_chaos_allowed': '{{ from_extra_vars }}'}))
    templar = Templar()
    assert decide(inv.task_vars('pg1'), 'pg1', True, templar).allowed is True
    refused = decide(inv.task_vars('pg2', from_extra_vars=True), 'pg2', True, templar)
    assert not refused.allowed and 'unresolved' in refused.msg and 'from_extra_vars' in refused.msg


def test_effective_value_is_templated_in_the_task_context(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    assert decide(inv.task_vars('pg1'), 'pg1', '{{ off }}', Templar({'off': False})).allowed is False
    assert decide(inv.task_vars('pg1'), 'pg1', '{{ undefined }}', Templar()).allowed is False


def test_host_found_by_address_like_delegation_does(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    parsed = _optin.pristine_inventory(inv.inventory, inv.loader)
    parsed.get_host('pg1').address = '198.18.0.11'  # as inventory plugins that set an address do
    assert decide(inv.task_vars('pg1'), '198.18.0.11', True).allowed is True
    assert _optin.find_host(parsed, '198.18.0.99') is None


def test_unknown_host_and_missing_inventory_refuse(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    assert decide(inv.task_vars('pg1'), 'ghost', True).msg.startswith('host ghost is not in the inventory')
    no_inventory = decide({'pggit_chaos_allowed': True}, 'pg1', True)
    assert not no_inventory.allowed and no_inventory.msg == 'cannot read the inventory to check the opt-in of host pg1; refusing'


# -- the inventory as parsed from its sources, not the live object run-time changes write into ----------
def test_add_host_cannot_raise_a_host_whose_inventory_says_false(tmp_path):
    inv = Inventory(tmp_path, hosts(**{'prod-db': {'pggit_chaos_allowed': False}}))
    inv.add_host('prod-db', pggit_chaos_allowed=True)  # add_host: {name: prod-db, pggit_chaos_allowed: true}
    task_vars = inv.task_vars('prod-db')
    assert task_vars['pggit_chaos_allowed'] is True, 'the live inventory took the raise'
    decision = decide(task_vars, 'prod-db', True)
    assert not decision.allowed and decision.inventory is False
    assert 'prod-db has not opted in to chaos in its inventory (pggit_chaos_allowed is false there)' in decision.msg


def test_add_host_cannot_join_a_host_to_an_opted_in_group(tmp_path):
    inv = Inventory(tmp_path, {'all': {'children': {
        'chaos': {'vars': {'pggit_chaos_allowed': True}, 'hosts': {'pg1': {}}},
        'prod': {'hosts': {'prod-db': {}}}}}})
    inv.add_host('prod-db', groups=['chaos'])  # add_host: {name: prod-db, groups: chaos}
    assert inv.task_vars('prod-db')['pggit_chaos_allowed'] is True, 'the live inventory took the raise'
    assert decide(inv.task_vars('prod-db'), 'prod-db', True).allowed is False
    assert decide(inv.task_vars('pg1'), 'pg1', True).allowed is True


def test_a_host_added_at_run_time_is_not_in_the_inventory(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    inv.add_host('new-db', groups=['db'], pggit_chaos_allowed=True)
    decision = decide(inv.task_vars('new-db'), 'new-db', True)
    assert not decision.allowed and decision.msg.startswith('host new-db is not in the inventory')


def test_runtime_group_vars_do_not_count(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={}))
    inv.inventory.groups['db'].set_variable('pggit_chaos_allowed', True)
    assert decide(inv.task_vars('pg1'), 'pg1', True).allowed is False


def test_the_pristine_inventory_is_parsed_once_per_live_inventory(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    first = _optin.pristine_inventory(inv.inventory, inv.loader)
    assert first is not inv.inventory and first.get_host('pg1') is not inv.inventory.get_host('pg1')
    assert _optin.pristine_inventory(inv.inventory, inv.loader) is first


def test_no_loader_refuses(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    task_vars = inv.task_vars('pg1')
    task_vars['hostvars']._loader = None
    decision = decide(task_vars, 'pg1', True)
    assert not decision.allowed and decision.msg.startswith('cannot read the inventory')


# -- the implicit localhost is no inventory host ----------------------------------------------------
@pytest.mark.parametrize('name', ['localhost', '127.0.0.1'])
def test_the_implicit_localhost_does_not_take_the_all_groups_opt_in(tmp_path, name):
    inv = Inventory(tmp_path, {'all': {'vars': {'pggit_chaos_allowed': True}, 'children': {'db': {'hosts': {'pg1': {}}}}}})
    assert decide(inv.task_vars('pg1'), 'pg1', True).allowed is True
    task_vars = inv.task_vars('pg1')
    decision = decide(task_vars, name, True)
    assert not decision.allowed
    assert decision.msg.startswith('host %s has not opted in to chaos: it is not in the inventory' % name)
    assert "Ansible's implicit localhost" in decision.msg


@pytest.mark.parametrize('name', ['localhost', '127.0.0.1'])
def test_localhost_listed_in_the_inventory_with_the_opt_in_is_allowed(tmp_path, name):
    inv = Inventory(tmp_path, {'all': {'hosts': {'localhost': {'pggit_chaos_allowed': True, 'ansible_connection': 'local'}},
                                       'children': {'db': {'hosts': {'pg1': {}}}}}})
    assert decide(inv.task_vars('pg1'), name, True).allowed is True


# -- the opt-in belongs to the inventory's host: the connection must go where the inventory says ----------
def address_inventory(tmp_path, **pg1):
    return Inventory(tmp_path, hosts(pg1=dict({'pggit_chaos_allowed': True, 'ansible_host': '198.18.0.11'}, **pg1)))


def test_a_redirected_ansible_host_is_refused_naming_both_values(tmp_path):
    inv = address_inventory(tmp_path)
    task_vars = inv.task_vars('pg1', ansible_host='prod')  # -e ansible_host=prod
    decision = decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars))
    assert not decision.allowed
    assert decision.msg == ("host pg1: ansible_host is 'prod' here but '198.18.0.11' in the inventory: the opt-in belongs to "
                            "the inventory's host; refusing")
    assert decision.details()['connection'] == {'variable': 'ansible_host', 'here': 'prod', 'inventory': '198.18.0.11'}


def test_the_inventorys_own_address_passes(tmp_path):
    inv = address_inventory(tmp_path)
    task_vars = inv.task_vars('pg1')
    assert decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars)).allowed is True
    same = inv.task_vars('pg1', ansible_host='198.18.0.11')  # agreeing with the inventory is fine
    assert decide(same, 'pg1', True, landing=_optin.Landing(same)).allowed is True


def test_without_an_inventory_address_the_host_is_reached_by_its_name(tmp_path):
    inv = Inventory(tmp_path, hosts(pg1={'pggit_chaos_allowed': True}))
    named = inv.task_vars('pg1', ansible_host='pg1')  # what Ansible fills in
    assert decide(named, 'pg1', True, landing=_optin.Landing(named)).allowed is True
    moved = inv.task_vars('pg1', ansible_host='prod')
    decision = decide(moved, 'pg1', True, landing=_optin.Landing(moved))
    assert not decision.allowed
    assert "ansible_host is 'prod' here but not set in the inventory (Ansible connects to 'pg1')" in decision.msg


@pytest.mark.parametrize('override, text', [
    ({'ansible_ssh_host': 'prod'}, "ansible_ssh_host is 'prod' here but not set in the inventory"),
    ({'ansible_port': '2222'}, "ansible_port is '2222' here but not set in the inventory"),
    ({'ansible_ssh_port': 2222}, "ansible_ssh_port is 2222 here but not set in the inventory"),
    ({'ansible_connection': 'ssh'}, "ansible_connection is 'ssh' here but 'local' in the inventory"),
])
def test_other_connection_variables_are_checked_too(tmp_path, override, text):
    inv = address_inventory(tmp_path)
    task_vars = inv.task_vars('pg1', **override)
    decision = decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars))
    assert not decision.allowed and text in decision.msg


def test_ports_compare_as_text_and_connections_by_short_name(tmp_path):
    inv = address_inventory(tmp_path, ansible_port=2222)
    task_vars = inv.task_vars('pg1', ansible_port='2222', ansible_connection='ansible.builtin.local')
    assert decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars)).allowed is True


def test_the_connection_plugin_in_use_counts_when_no_variable_names_it(tmp_path):
    inv = Inventory(tmp_path, {'all': {'hosts': {'pg1': {'pggit_chaos_allowed': True}}}})  # no ansible_connection: the default
    task_vars = inv.task_vars('pg1')
    assert decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars, transport='ssh')).allowed is True
    decision = decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars, transport='local'))  # -c local
    assert not decision.allowed
    assert "ansible_connection is 'local' here but not set in the inventory (Ansible's default: 'ssh')" in decision.msg


def test_a_templated_inventory_address_is_resolved_from_inventory_variables(tmp_path):
    inv = address_inventory(tmp_path, ansible_host='{{ pggit_login_host }}', pggit_login_host='198.18.0.11')
    task_vars = inv.task_vars('pg1')
    resolved = dict(task_vars, ansible_host='198.18.0.11')  # as the connection fills it in
    assert decide(resolved, 'pg1', True, Templar(), landing=_optin.Landing(resolved, Templar(resolved))).allowed is True
    moved = dict(task_vars, ansible_host='{{ elsewhere }}', elsewhere='prod')
    decision = decide(moved, 'pg1', True, Templar(), landing=_optin.Landing(moved, Templar(moved)))
    assert not decision.allowed and "ansible_host is 'prod' here but '198.18.0.11' in the inventory" in decision.msg


def test_the_connection_is_judged_only_after_the_opt_in(tmp_path):
    inv = address_inventory(tmp_path, pggit_chaos_allowed=False)
    task_vars = inv.task_vars('pg1', ansible_host='prod')
    decision = decide(task_vars, 'pg1', True, landing=_optin.Landing(task_vars))
    assert 'has not opted in' in decision.msg and 'connection' not in decision.details()
