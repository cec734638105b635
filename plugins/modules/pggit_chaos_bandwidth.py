#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_bandwidth
short_description: Limit the rate of traffic toward selected peers
version_added: 0.1.0
description:
  - Shapes egress traffic toward O(peers) (and/or from a local O(port)) to
    O(rate_kbit) with an C(htb) root qdisc whose default class passes every
    other packet through unshaped.
  - The qdisc carries the handle C(7a3c:) that marks it as ours. A root qdisc
    that the kernel did not install by default and that we did not create is
    never replaced.
  - A revert deletes the root qdisc only while its handle is ours, and looks
    again to confirm. An interface that is gone, or a root qdisc someone else
    has put in its place, counts as reverted; a qdisc of ours that stays keeps
    the ledger record and is reported with the command and its output.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  rate_kbit:
    description:
      - Rate limit in kbit/s, from 8 to 10000000. Required with O(state=present).
    type: int
  peers:
    description:
      - Addresses or networks (IPv4) whose traffic is shaped. Empty means any
        (then O(port) selects the traffic).
    type: list
    elements: str
    default: []
  port:
    description:
      - Only traffic from this local TCP port.
    type: int
  interface:
    description:
      - Interface to shape. By default the one that routes to the first peer.
    type: str
requirements:
  - tc (iproute2) on the target
'''

EXAMPLES = r'''
- name: 1 Mbit/s toward region_b for a minute
  pggit.chaos.pggit_chaos_bandwidth:
    name: thin-pipe
    rate_kbit: 1000
    peers: ["198.18.0.13"]
    ttl: 60
'''

RETURN = r'''
interface:
  description: The shaped interface.
  returned: when state=present
  type: str
applied:
  description: The tc commands run, in order.
  returned: when state=present and changed
  type: list
  elements: list
'''

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _netcmd
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.network import NetworkFault


class BandwidthFault(NetworkFault):
    kind = 'bandwidth'

    def validate(self):
        try:
            _netcmd.check_range('rate_kbit', self.params['rate_kbit'], 8, 10000000)
            _netcmd.check_range('port', self.params['port'], 1, 65535)
            self.peers = _netcmd.parse_networks(self.params['peers'], 'peers')
        except _netcmd.SelectorError as exc:
            self.fail(str(exc))
        if not self.peers and not self.params['port']:
            self.fail('select the traffic: give peers or a port (got neither)')

    def observe(self):
        self.fid = _ledger.fault_id(self.kind, self.params['name'])
        self.interface = self.interface_for(_netcmd.parse_networks(self.params['peers'], 'peers'))
        kind, handle = self.root_qdisc(self.interface)
        return {'interface': self.interface, 'root_qdisc': kind, 'handle': handle}

    def in_place(self, record, current):
        return current['handle'] == _netcmd.OUR_HANDLE

    def plan(self, current):
        self.refuse_foreign_qdisc(self.interface, self.module_record())
        apply, undo = _netcmd.htb_plan(self.interface, self.peers, self.params['port'], self.params['rate_kbit'],
                                       tc=self.bin('tc'))
        detail = {'interface': self.interface, 'apply': apply}
        return undo, detail, dict(current, root_qdisc='htb', handle=_netcmd.OUR_HANDLE)

    def apply(self, detail):
        self.run_all(detail['apply'])
        return {'interface': detail['interface'], 'applied': detail['apply']}


def main():
    ChaosModule(dict(
        rate_kbit=dict(type='int'),
        peers=dict(type='list', elements='str', default=[]),
        port=dict(type='int'),
        interface=dict(type='str'),
    ), required_if=[('state', 'present', ['rate_kbit'])]).run(BandwidthFault)


if __name__ == '__main__':
    main()
