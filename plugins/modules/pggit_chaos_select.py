#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_select
short_description: Choose chaos targets by each host's own opt-in and a blast radius
version_added: 0.1.0
description:
  - Runs on the controller for each host of the play and splits O(hosts) into
    V(selected), V(refused) and V(spared), the same way on every host.
  - A host is refused unless C(pggit_chaos_allowed) is true in its own
    inventory (the inventory file's host and group variables, and the
    C(host_vars)/C(group_vars) next to the inventory) and also true for this
    run. An extra var (C(-e)), a play or task C(vars:) entry, C(set_fact),
    C(include_vars) or C(host_vars)/C(group_vars) next to the playbook can
    lower the opt-in to false, never raise it. A templated inventory value is
    resolved from inventory variables alone.
  - The task fails on a refused host with a message that says why, including
    when an extra var or play var tried to override the inventory.
  - Of the hosts that opted in, at most O(max_hosts) are selected, in the
    order of O(hosts); the others are spared.
  - The fault modules' action plugins apply the same opt-in rule again before
    anything reaches a target, to the delegate when C(delegate_to) is used.
  - This module runs on the controller through its action plugin and contacts
    no host.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Reads the inventory only, so it runs in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: all
options:
  hosts:
    description:
      - Candidate hosts, in order. Defaults to C(ansible_play_hosts_all).
    type: list
    elements: str
  max_hosts:
    description:
      - Blast radius, as a count such as V(2), a percentage such as V(50%) of
        the hosts that opted in (at least one), or V(all).
      - A bad value fails every host with a message that names the option as
        the task spelled it.
    type: raw
    default: all
    aliases: [chaos_max_hosts]
seealso:
  - module: pggit.chaos.pggit_chaos_trigger
'''

EXAMPLES = r'''
- name: Pick the hosts for this run
  pggit.chaos.pggit_chaos_select:
    chaos_max_hosts: "{{ chaos_max_hosts | default('all') }}"
  register: selection

- name: Group the hosts inside the blast radius
  ansible.builtin.group_by:
    key: chaos_targets
  when: inventory_hostname in selection.selected
'''

RETURN = r'''
selected:
  description: Hosts inside the blast radius, in order.
  returned: unless max_hosts is bad
  type: list
  elements: str
refused:
  description: Hosts that have not opted in (or whose opt-in this run lowered).
  returned: unless max_hosts is bad
  type: list
  elements: str
spared:
  description: Hosts that opted in but fall outside the blast radius.
  returned: unless max_hosts is bad
  type: list
  elements: str
limit:
  description: Number of hosts the blast radius allows.
  returned: unless max_hosts is bad
  type: int
destructive:
  description: >-
    The selected hosts that also set C(pggit_chaos_destructive=true) in their own inventory, judged by
    the same rule. Experiments that write data files (C(index_corruption)) skip the other hosts,
    saying why.
  returned: unless max_hosts is bad
  type: list
  elements: str
reasons:
  description: For each refused host, why it was refused.
  returned: unless max_hosts is bad
  type: dict
opt_in:
  description: On a refused host, its inventory value, the value this run sees, and the decision.
  returned: when this host is refused
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils._select_spec import select_argument_spec


def main():
    module = AnsibleModule(argument_spec=select_argument_spec(), supports_check_mode=True)
    module.fail_json(msg='pggit_chaos_select must run via its action plugin; call it as pggit.chaos.pggit_chaos_select from a playbook')


if __name__ == '__main__':
    main()
