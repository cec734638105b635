"""The opt-in comes from the host's own inventory: proven with the real ansible-playbook CLI.

A throwaway inventory of local hosts, the integration PostgreSQL as the target, and pggit_chaos_trigger
(an opted-in host really gets the fault, so a refusal is not a broken harness). An extra var, task or play
vars:, set_fact, add_host or host_vars next to the playbook cannot raise a host whose inventory says false; an
extra var can lower a host whose inventory says true. A host added at run time and Ansible's implicit localhost
are not in the inventory. The opt-in belongs to the inventory's host: a run that would connect elsewhere
(ansible_host, ansible_port, ansible_connection) is refused. chaos.yml's target selection obeys the same rule.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from adhoc import BIN, REPO, REPO_COLLECTIONS, write_config
from pgtools import kill_reapers, query

OVERRIDE_MSG = 'has not opted in to chaos in its inventory (pggit_chaos_allowed is false there); an extra-var or play var cannot override it'


def write_yaml(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), 'w') as handle:
        yaml.safe_dump(data, handle)


@pytest.fixture
def world(tmp_path, pgdb):
    """An inventory folder (with host_vars), a playbook folder, a state dir and the database."""
    inventory_dir = tmp_path / 'inventory'
    common = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}
    write_yaml(inventory_dir / 'hosts.yml', {'all': {'children': {'pggit_primary': {'hosts': {
        'refused': dict(common, pggit_chaos_allowed=False),
        'allowed': dict(common, pggit_chaos_allowed=True),
        'unset': dict(common),
        'by_file': dict(common),
        'addressed': dict(common, pggit_chaos_allowed=True, ansible_host='127.0.0.1'),
    }}}}})
    write_yaml(inventory_dir / 'host_vars' / 'by_file.yml', {'pggit_chaos_allowed': True})  # next to the inventory: counts
    state_dir = str(tmp_path / 'state')
    yield {'inventory': str(inventory_dir / 'hosts.yml'), 'play_dir': tmp_path / 'play', 'state_dir': state_dir, 'db': pgdb,
           'config': write_config(tmp_path)}
    kill_reapers(state_dir)


def playbook(world, host, task_vars=None, play_vars=None, pre_tasks=None):
    args = dict(world['db'], name='optin', ttl=60, state_dir=world['state_dir'])
    fault = {'name': 'Disable pgGit triggers', 'pggit.chaos.pggit_chaos_trigger': args}
    if task_vars:
        fault['vars'] = task_vars
    play = {'name': 'Opt-in test', 'hosts': host, 'gather_facts': False, 'tasks': list(pre_tasks or []) + [fault]}
    if play_vars:
        play['vars'] = play_vars
    path = world['play_dir'] / 'play.yml'
    write_yaml(path, [play])
    return str(path)


def ansible_playbook(world, path, *extra, inventory=None):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=REPO_COLLECTIONS, ANSIBLE_CONFIG=world['config'], ANSIBLE_NOCOLOR='1',
               ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default', ANSIBLE_LOCALHOST_WARNING='0')
    argv = [os.path.join(BIN, 'ansible-playbook'), path, '-i', inventory or world['inventory']] + list(extra)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(world['play_dir'].parent), env=env, check=False, timeout=180)
    return proc.returncode, proc.stdout + proc.stderr


def faults(world):
    folder = os.path.join(world['state_dir'], 'faults')
    return sorted(f for f in os.listdir(folder) if f.endswith('.json')) if os.path.isdir(folder) else []


def modes(world):
    return set(row[0] for row in query(world['db'], "SELECT evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"))


def assert_untouched(world, rc, out, needle):
    assert rc != 0, out[-3000:]
    assert needle in out, out[-3000:]
    assert faults(world) == [], 'nothing may reach a refused host'
    assert modes(world) == {'O'}, 'the triggers must still be enabled'


@pytest.mark.parametrize('how', ['extra_var_json', 'extra_var_kv', 'task_vars', 'play_vars', 'set_fact', 'playbook_host_vars'])
def test_nothing_but_the_inventory_can_raise_the_opt_in(world, how):
    extra, kwargs = [], {}
    if how == 'extra_var_json':
        extra = ['-e', json.dumps({'pggit_chaos_allowed': True})]
    elif how == 'extra_var_kv':
        extra = ['-e', 'pggit_chaos_allowed=true']
    elif how == 'task_vars':
        kwargs['task_vars'] = {'pggit_chaos_allowed': True}
    elif how == 'play_vars':
        kwargs['play_vars'] = {'pggit_chaos_allowed': True}
    elif how == 'set_fact':
        kwargs['pre_tasks'] = [{'name': 'Raise it', 'ansible.builtin.set_fact': {'pggit_chaos_allowed': True}}]
    else:  # host_vars next to the playbook are the playbook's, not the inventory's
        write_yaml(world['play_dir'] / 'host_vars' / 'refused.yml', {'pggit_chaos_allowed': True})
    rc, out = ansible_playbook(world, playbook(world, 'refused', **kwargs), *extra)
    assert_untouched(world, rc, out, 'host refused ' + OVERRIDE_MSG)


def test_a_host_without_any_opt_in_cannot_be_raised(world):
    rc, out = ansible_playbook(world, playbook(world, 'unset'), '-e', 'pggit_chaos_allowed=true')
    assert_untouched(world, rc, out, 'host unset has not opted in to chaos in its inventory (pggit_chaos_allowed is not set there)')


def test_an_extra_var_can_lower_an_opted_in_host(world):
    rc, out = ansible_playbook(world, playbook(world, 'allowed'), '-e', 'pggit_chaos_allowed=false')
    assert_untouched(world, rc, out, 'host allowed opted in to chaos in its inventory, but pggit_chaos_allowed is')


@pytest.mark.parametrize('host', ['allowed', 'by_file'])
@pytest.mark.parametrize('extra', [[], ['-e', 'pggit_chaos_allowed=true']])  # agreeing with the inventory is fine
def test_an_inventory_opt_in_lets_the_fault_through(world, host, extra):
    # The positive control: the same playbook reaches the module when the inventory (the file, or host_vars next to
    # it) says true. Check mode: the module runs and plans the fault against the real database, and changes nothing.
    rc, out = ansible_playbook(world, playbook(world, host), '--check', '-v', *extra)
    assert rc == 0, out[-3000:]
    assert 'changed: [%s]' % host in out and '"planned"' in out, out[-3000:]
    assert faults(world) == [] and modes(world) == {'O'}


def test_delegated_fault_obeys_the_delegates_inventory(world):
    path = playbook(world, 'allowed')
    with open(path) as handle:
        plays = yaml.safe_load(handle)
    plays[0]['tasks'][0]['delegate_to'] = 'refused'
    write_yaml(path, plays)
    rc, out = ansible_playbook(world, path, '-e', 'pggit_chaos_allowed=true')
    assert_untouched(world, rc, out, 'host refused ' + OVERRIDE_MSG)


# -- chaos.yml: target selection ----------------------------------------------------------------
def chaos(world, *extra):
    return ansible_playbook(world, os.path.join(REPO, 'playbooks', 'chaos.yml'), '-e', 'chaos_targets=pggit_primary',
                            '-e', 'chaos_experiments=trigger_failure', '-e', 'pggit_chaos_state_dir=%s' % world['state_dir'], *extra,
                            inventory=world['single'])


@pytest.fixture
def single(world, tmp_path):
    def make(allowed):
        path = tmp_path / ('single-%s' % allowed) / 'hosts.yml'
        write_yaml(path, {'all': {'children': {'pggit_primary': {'hosts': {'db1': {
            'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'pggit_chaos_allowed': allowed}}}}}})
        world['single'] = str(path)
        return world
    return make


def test_chaos_yml_refuses_an_extra_var_override(single):
    world = single(False)
    rc, out = chaos(world, '-e', 'pggit_chaos_allowed=true')
    assert_untouched(world, rc, out, 'host db1 ' + OVERRIDE_MSG)
    assert 'Run each experiment' not in out, 'no experiment may start'


def test_chaos_yml_lets_an_extra_var_lower_the_inventory(single):
    world = single(True)
    rc, out = chaos(world, '-e', 'pggit_chaos_allowed=false')
    assert_untouched(world, rc, out, 'host db1 opted in to chaos in its inventory, but pggit_chaos_allowed is')
    assert 'Run each experiment' not in out


def test_chaos_yml_bad_blast_radius_is_named(single):
    world = single(True)
    rc, out = chaos(world, '-e', 'chaos_max_hosts=0')
    assert_untouched(world, rc, out, "chaos_max_hosts must be at least 1, got '0'")


def test_chaos_yml_refuses_a_redirected_connection(single):
    world = single(True)
    rc, out = chaos(world, '-e', 'ansible_host=prod')
    assert_untouched(world, rc, out, "host db1: ansible_host is 'prod' here but not set in the inventory (Ansible connects to 'db1'): "
                                     "the opt-in belongs to the inventory's host")
    assert 'Run each experiment' not in out


# -- the inventory as parsed from its sources: add_host cannot raise the opt-in ------------------------------
COMMON = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}


def select_task():
    return {'name': 'Select the targets', 'pggit.chaos.pggit_chaos_select': {'chaos_max_hosts': 'all'}}


@pytest.mark.parametrize('guard', ['fault', 'select'])
def test_add_host_cannot_raise_a_host_whose_inventory_says_false(world, guard):
    raise_it = {'name': 'Raise it at run time', 'ansible.builtin.add_host': {'name': 'refused', 'pggit_chaos_allowed': True}}
    pre_tasks = [raise_it] + ([select_task()] if guard == 'select' else [])
    rc, out = ansible_playbook(world, playbook(world, 'refused', pre_tasks=pre_tasks))
    assert_untouched(world, rc, out, 'host refused ' + OVERRIDE_MSG)


@pytest.mark.parametrize('guard', ['fault', 'select'])
def test_a_host_added_at_run_time_is_not_in_the_inventory(world, guard):
    path = playbook(world, 'allowed')
    with open(path) as handle:
        fault = yaml.safe_load(handle)[0]['tasks'][-1]
    add = {'name': 'Add a host', 'ansible.builtin.add_host': dict(COMMON, name='newdb', groups='pggit_primary', pggit_chaos_allowed=True)}
    write_yaml(path, [
        {'name': 'Add a host at run time', 'hosts': 'allowed', 'gather_facts': False, 'tasks': [add]},
        {'name': 'Fault on it', 'hosts': 'newdb', 'gather_facts': False, 'tasks': ([select_task()] if guard == 'select' else []) + [fault]},
    ])
    rc, out = ansible_playbook(world, path)
    assert_untouched(world, rc, out, 'host newdb is not in the inventory, so it cannot have opted in to chaos')


# -- the implicit localhost is not in the inventory ----------------------------------------------------------
def all_group_opt_in(world, tmp_path, list_localhost):
    """An inventory whose all group opts every host in; localhost listed in it or not."""
    hosts = {'db1': dict(COMMON)}
    if list_localhost:
        hosts['localhost'] = dict(COMMON)
    path = tmp_path / ('all-group-%s' % list_localhost) / 'hosts.yml'
    write_yaml(path, {'all': {'vars': {'pggit_chaos_allowed': True}, 'hosts': hosts}})
    return str(path)


def delegated(world, host, delegate):
    path = playbook(world, host)
    with open(path) as handle:
        plays = yaml.safe_load(handle)
    plays[0]['tasks'][0]['delegate_to'] = delegate
    write_yaml(path, plays)
    return path


@pytest.mark.parametrize('delegate', ['localhost', '127.0.0.1'])
def test_the_implicit_localhost_does_not_take_the_all_groups_opt_in(world, tmp_path, delegate):
    inventory = all_group_opt_in(world, tmp_path, list_localhost=False)
    rc, out = ansible_playbook(world, delegated(world, 'db1', delegate), inventory=inventory)
    assert_untouched(world, rc, out, 'host %s has not opted in to chaos: it is not in the inventory' % delegate)


def test_localhost_listed_in_the_inventory_may_take_the_fault(world, tmp_path):
    # The positive control: the same delegation passes once the inventory lists localhost (check mode: planned only).
    inventory = all_group_opt_in(world, tmp_path, list_localhost=True)
    rc, out = ansible_playbook(world, delegated(world, 'db1', 'localhost'), '--check', '-v', inventory=inventory)
    assert rc == 0, out[-3000:]
    assert 'changed: [db1 -> localhost]' in out and '"planned"' in out, out[-3000:]
    assert faults(world) == [] and modes(world) == {'O'}


# -- the opt-in belongs to the inventory's host: the connection must go where the inventory says -----------------
@pytest.mark.parametrize('extra, needle', [
    (['-e', 'ansible_host=prod'], "host addressed: ansible_host is 'prod' here but '127.0.0.1' in the inventory: "
                                  "the opt-in belongs to the inventory's host"),
    (['-e', 'ansible_port=2222'], "host addressed: ansible_port is '2222' here but not set in the inventory"),
    (['-e', 'ansible_connection=ssh'], "host addressed: ansible_connection is 'ssh' here but 'local' in the inventory"),
])
def test_a_redirected_connection_is_refused(world, extra, needle):
    rc, out = ansible_playbook(world, playbook(world, 'addressed'), *extra)
    assert_untouched(world, rc, out, needle)


def test_a_redirected_delegate_is_refused(world):
    rc, out = ansible_playbook(world, delegated(world, 'allowed', 'addressed'), '-e', 'ansible_host=prod')
    assert_untouched(world, rc, out, "host addressed: ansible_host is 'prod' here but '127.0.0.1' in the inventory")


@pytest.mark.parametrize('extra', [[], ['-e', 'ansible_host=127.0.0.1']])  # agreeing with the inventory is fine
def test_the_inventorys_own_connection_lets_the_fault_through(world, extra):
    rc, out = ansible_playbook(world, playbook(world, 'addressed'), '--check', '-v', *extra)
    assert rc == 0, out[-3000:]
    assert 'changed: [addressed]' in out and '"planned"' in out, out[-3000:]
    assert faults(world) == [] and modes(world) == {'O'}
