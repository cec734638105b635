#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_partition
short_description: Cut traffic between the target and a set of peers
version_added: 0.1.0
description:
  - Drops traffic between the target and O(peers) (and/or a O(port)) with
    iptables, one way or both ways.
  - Rules live in chains that pggit.chaos owns and names,
    C(pggit-chaos-<hash>-in) and C(-out), jumped to from C(INPUT) and C(OUTPUT),
    so a revert removes ours and never touches anyone else's. A chain of that
    name that no ledger record owns is refused.
  - A revert lists the rules to decide what is left and lists them again to
    confirm it is gone; it never takes an exit code for "already gone". A
    chain that a rule we did not make still jumps to stays (flushed, so it
    cuts nothing), and so does the ledger record, with a message that names
    the command, its output and that rule; the reaper keeps retrying.
  - SSH (port 22) and loopback stay open by default so Ansible keeps control.
    With O(full_isolation=true) SSH is cut too and only the target-side TTL
    heals the partition.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.fault
  - pggit.chaos.network
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
'''

EXAMPLES = r'''
- name: Partition region_b from region_a for two minutes
  pggit.chaos.pggit_chaos_partition:
    name: region-split
    peers: "{{ groups['region_a'] | map('extract', hostvars, 'ansible_host') | list }}"
    direction: both
    ttl: 120
'''

RETURN = r'''
chains:
  description: The iptables chains of this fault.
  returned: when state=present
  type: list
  elements: str
  sample: [pggit-chaos-1a2b3c4d-in, pggit-chaos-1a2b3c4d-out]
applied:
  description: The iptables commands run, in order.
  returned: when state=present and changed
  type: list
  elements: list
record:
  description: The ledger record.
  returned: when a fault is in place or was reverted
  type: dict
'''

from ansible_collections.pggit.chaos.plugins.module_utils import _netcmd
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.network import NetworkFault, selector_argument_spec


class PartitionFault(NetworkFault):
    kind = 'partition'

    def observe(self):
        return self.observe_chains()

    def in_place(self, record, current):
        return all(current['chains'].get(c) for c in record['detail'].get('chains', []))

    def plan(self, current):
        record = self.module_record()
        self.refuse_foreign_chains(self.fid, record)
        selector = self.selector()
        apply, undo = _netcmd.chain_plan(self.fid, selector, ['-j', 'DROP'], iptables=self.bin('iptables'))
        chains = [_netcmd.chains(self.fid)[d] for d in selector['directions']]
        detail = {'chains': chains, 'apply': apply, 'selector': selector}
        return undo, detail, {'chains': dict((c, True) for c in chains)}

    def apply(self, detail):
        self.run_all(detail['apply'])
        return {'chains': detail['chains'], 'applied': detail['apply'],
                'isolation': 'full' if self.params['full_isolation'] else 'ssh and loopback kept open'}


def main():
    ChaosModule(selector_argument_spec()).run(PartitionFault)


if __name__ == '__main__':
    main()
