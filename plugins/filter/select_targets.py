# Copyright: pggit.chaos contributors
# MIT License
"""Target selection: opt-in and blast radius."""
from __future__ import annotations

import math
import re

from ansible.errors import AnsibleFilterError

from ansible_collections.pggit.chaos.plugins.plugin_utils._optin import OPT_IN_VAR, opted_in

DOCUMENTATION = r'''
name: select_targets
short_description: Split hosts into selected, refused and spared by opt-in and blast radius
version_added: 0.1.0
description:
  - Hosts without C(pggit_chaos_allowed=true) are refused.
  - Of the hosts that opted in, at most O(max_hosts) are selected, in the
    order given; the rest are spared.
options:
  _input:
    description: Host names, in inventory order.
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  max_hosts:
    description: A count such as V(2), a percentage such as V(50%), or V(all).
    type: raw
    default: all
'''

EXAMPLES = r'''
- name: Pick the hosts for this run
  ansible.builtin.set_fact:
    selection: "{{ ansible_play_hosts_all | pggit.chaos.select_targets(hostvars, chaos_max_hosts) }}"
'''

RETURN = r'''
_value:
  description: V(selected), V(refused) and V(spared) host lists, and V(limit).
  type: dict
'''

_PCT = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*%\s*$')


def blast_limit(max_hosts, eligible):
    """Number of hosts a blast radius allows out of ``eligible``."""
    if max_hosts in (None, '', 'all'):
        return eligible
    text = str(max_hosts)
    match = _PCT.match(text)
    if match:
        pct = float(match.group(1))
        if not 0 < pct <= 100:
            raise AnsibleFilterError("chaos_max_hosts must be a percentage in (0, 100], got '%s'" % text)
        return min(eligible, max(1, int(math.floor(eligible * pct / 100.0))))
    try:
        count = int(text)
    except ValueError:
        raise AnsibleFilterError("chaos_max_hosts must be a count such as 2, a percentage such as '50%%' or 'all', got '%s'" % text)
    if count < 1:
        raise AnsibleFilterError("chaos_max_hosts must be at least 1, got '%s'" % text)
    return min(eligible, count)


def select_targets(hosts, hostvars, max_hosts='all'):
    refused = [h for h in hosts if not opted_in(hostvars.get(h, {}).get(OPT_IN_VAR))]
    eligible = [h for h in hosts if h not in refused]
    limit = blast_limit(max_hosts, len(eligible))
    return {'selected': eligible[:limit], 'refused': refused, 'spared': eligible[limit:], 'limit': limit}


class FilterModule(object):
    def filters(self):
        return {'select_targets': select_targets}
