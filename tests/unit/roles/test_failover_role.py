"""The failover role's own expressions, read from roles/pggit_chaos_failover/tasks/main.yml and templated by
ansible-core (no lab): the preflight refuses before any fault, and the verdict is told when a failback was asked for."""
from __future__ import annotations

import os

import pytest
import yaml

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'roles', 'pggit_chaos_failover', 'tasks', 'main.yml')


def _tasks(items):
    for item in items or []:
        yield item
        for key in ('block', 'rescue', 'always'):
            yield from _tasks(item.get(key))


def task(name):
    with open(ROLE) as handle:
        found = [t for t in _tasks(yaml.safe_load(handle)) if t.get('name') == name]
    assert len(found) == 1, name
    return found[0]


def templar(**variables):
    return Templar(loader=DataLoader(), variables=variables)


MEMBERS = ['lab-1', 'lab-2', 'lab-3']


def not_allowed(hostvars):
    expr = task('Find the members that did not opt in')['ansible.builtin.set_fact']['pggit_chaos_failover_not_allowed']
    return templar(_pggit_failover_members=MEMBERS, hostvars=hostvars).template(trust_as_template(expr))


def preflight(experiment='primary_failover', lost=('lab-1',), client='lab-2', hostvars=None):
    hostvars = hostvars or dict((m, dict(pggit_chaos_allowed=True)) for m in MEMBERS)
    facts = dict(_pggit_failover_members=MEMBERS, _pggit_failover_x=experiment, inventory_hostname='lab-1',
                 pggit_chaos_failover_before=dict(leader='lab-1'), pggit_chaos_failover_streaming=['lab-2', 'lab-3'],
                 pggit_chaos_failover_client=client, pggit_chaos_failover_lost=list(lost), hostvars=hostvars)
    facts['pggit_chaos_failover_not_allowed'] = not_allowed(hostvars)
    checks = task('Check the leader, a replica to fail over to, and the opt-in of every host touched')
    t = templar(**facts)
    return [c for c in checks['ansible.builtin.assert']['that'] if not t.evaluate_conditional(trust_as_template(c))]


def test_a_clean_preflight_passes():
    assert preflight() == []
    assert preflight('region_failover', lost=['lab-1', 'lab-3']) == []


@pytest.mark.parametrize('allowed', [False, 'no', None])
def test_every_member_must_opt_in_not_only_the_lost_host_and_the_client(allowed):
    # Review: lab-3 is promoted (or repointed, or switched back) without having opted in: it was not checked.
    hostvars = dict((m, dict(pggit_chaos_allowed=True)) for m in MEMBERS)
    hostvars['lab-3'] = {} if allowed is None else dict(pggit_chaos_allowed=allowed)
    assert not_allowed(hostvars) == ['lab-3']
    assert preflight(hostvars=hostvars) == ['pggit_chaos_failover_not_allowed | length == 0']
    assert preflight('switchover', lost=[], hostvars=hostvars) != []


def test_a_region_failover_that_keeps_the_leader_is_refused_before_any_fault():
    # Review: chaos_lost_region naming a region without the leader froze replicas and only failed after the fault.
    assert preflight('region_failover', lost=['lab-3']) == [
        "_pggit_failover_x != 'region_failover' or inventory_hostname in pggit_chaos_failover_lost"]


def test_the_opt_in_message_names_the_members_that_did_not_opt_in():
    msg = task('Check the leader, a replica to fail over to, and the opt-in of every host touched')[
        'ansible.builtin.assert']['fail_msg']
    assert 'pggit_chaos_allowed=true' in msg and '{{ pggit_chaos_failover_not_allowed }}' in msg
    assert 'pggit_chaos_failover_lost_region=' in msg


@pytest.mark.parametrize('failback, check_mode, expected', [(True, False, True), (False, False, False),
                                                            (True, True, False)])
def test_the_verdict_is_told_that_a_failback_was_asked_for(failback, check_mode, expected):
    # Review: the role passed failback false whatever was asked, so a failback left undone passed unsaid.
    experiment = task('Experiment {{ pggit_chaos_failover_experiment }}')
    finish = [t for t in experiment['always'] if t.get('name') == 'Finish the experiment'][0]
    expr = finish['vars']['pggit_experiment_fault']['failback']
    value = templar(pggit_chaos_failover_failback=failback, ansible_check_mode=check_mode).template(trust_as_template(expr))
    assert value is expected


def test_the_manual_failover_records_the_failback_the_run_asked_for():
    # Review: kill recorded the module's default failback=true, so the revert failed back even with chaos_failback=false.
    kill = task('Crash the primary with SIGKILL (the record with the undo is written first) (in check mode, show the plan)')
    expr = kill['pggit.chaos.pggit_chaos_failover']['failback']
    for wanted in (True, False):
        assert templar(pggit_chaos_failover_failback=wanted).template(trust_as_template(expr)) is wanted
