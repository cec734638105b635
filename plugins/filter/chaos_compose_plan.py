# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_compose_plan
short_description: Check a composed chaos run and refuse members that touch the same owned object
version_added: 0.1.0
description:
  - Takes C(chaos_compose), two or more experiments (a list or a comma-separated string), and returns the
    composed experiment's name (for example C(compose(network_latency+kill_connections))) and its members,
    each with its role and the objects its fault owns on the target host (for example C(latency@lab-1)).
  - Fails, naming both experiments and the object, when two members own the same object on the host (two
    latency faults on one host, V(network_latency) with V(packet_loss)); fails on an unknown or repeated
    member, on fewer than two, and on a member whose role has no C(tasks/inject.yml). Decided before anything
    is injected.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description: The members, a list or a comma-separated string.
    type: raw
    required: true
  host:
    description: The target host (its inventory name), which the owned objects are keyed by.
    type: str
    required: true
  experiments:
    description: C(chaos_experiments) when the user set it; it must then name the same experiments.
    type: raw
'''

EXAMPLES = r'''
- name: Plan the composed run
  ansible.builtin.set_fact:
    compose: "{{ 'network_latency,kill_connections' | pggit.chaos.chaos_compose_plan(host=inventory_hostname) }}"
'''

RETURN = r'''
_value:
  description: C(name) and C(members), one C({experiment, role, owns}) per member in the order given.
  type: dict
'''

from ansible.errors import AnsibleFilterError

from ansible_collections.pggit.chaos.plugins.plugin_utils._ramp import RampError, compose_plan


def chaos_compose_plan(members, host, experiments=None):
    try:
        return compose_plan(members, host, experiments=experiments)
    except RampError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule(object):
    def filters(self):
        return {'chaos_compose_plan': chaos_compose_plan}
