# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  peers:
    description:
      - Addresses or networks (IPv4) whose traffic with the target is hit.
        Empty means any peer (then O(port) selects the traffic).
    type: list
    elements: str
    default: []
  port:
    description:
      - Only TCP traffic to this local port (inbound) or from it (outbound),
        such as the PostgreSQL port.
    type: int
  direction:
    description:
      - V(in) hits traffic arriving at the target, V(out) traffic leaving it,
        V(both) both.
    type: str
    default: both
    choices: [in, out, both]
  exclude_peers:
    description:
      - Addresses or networks never hit, such as the replicas, so that
        replication traffic stays out of a client-side fault.
    type: list
    elements: str
    default: []
  include_loopback:
    description:
      - Also hit loopback traffic. Off by default.
    type: bool
    default: false
  full_isolation:
    description:
      - Also hit SSH (port 22). Ansible then loses the host until the
        target-side TTL heals it.
    type: bool
    default: false
requirements:
  - iptables on the target
'''
