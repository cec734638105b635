# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_revert_plan
short_description: Which hosts an experiment's finish reverts now, and which after its workload has ended
version_added: 0.1.0
description:
  - Takes the experiment's target host and returns C(now), the hosts whose faults finish reverts at once (the
    target, O(fault_hosts) and the workload's host), and C(later), the workload's host when its revert waits for
    the workload.
  - The revert of the workload's host waits only when that host holds no fault of the experiment (it is neither
    the target nor one of O(fault_hosts)), the workload is still to be collected (O(workload_pending)) and the
    experiment ended well (not O(stop_workload)); the fault is then undone first, and the workload's last
    statements and its exactly-once check run without it. After an abort or an error the workload is stopped
    with everything else.
  - Given O(workload_results), the results of the workload runs on that host once they ended, C(later) is empty
    when each of them closed its own ledger record (C(closed.result) V(reverted)); nothing of the experiment is
    left there to revert.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description: The target host (its inventory name).
    type: str
    required: true
  fault_hosts:
    description: Other hosts that hold faults of the experiment.
    type: list
    elements: str
    default: []
  workload_host:
    description: The host the workload runs on, when it is not the target; empty when none.
    type: str
    default: ''
  workload_pending:
    description: Whether a workload job is still to be collected by finish.
    type: bool
    default: false
  stop_workload:
    description: Whether the experiment was aborted or stopped on an error (its workload is then stopped at once).
    type: bool
    default: false
  workload_results:
    description: The ended workload runs on the workload's host (module results; C(null) items are ignored).
    type: list
    elements: raw
'''

EXAMPLES = r'''
- name: Plan the revert
  ansible.builtin.set_fact:
    plan: "{{ inventory_hostname | pggit.chaos.chaos_revert_plan(workload_host='localhost', workload_pending=true) }}"
'''

RETURN = r'''
_value:
  description: C(now) and C(later), each a list of inventory host names.
  type: dict
'''


def _closed(result):
    return isinstance(result, dict) and isinstance(result.get('closed'), dict) and result['closed'].get('result') == 'reverted'


def chaos_revert_plan(target, fault_hosts=None, workload_host='', workload_pending=False, stop_workload=False,
                      workload_results=None):
    hosts = []
    for host in [target] + list(fault_hosts or []) + ([workload_host] if workload_host else []):
        if host not in hosts:
            hosts.append(host)
    wait = bool(workload_host) and workload_host not in [target] + list(fault_hosts or []) and \
        bool(workload_pending) and not stop_workload
    deferred = [workload_host] if wait else []
    later = deferred
    if deferred and workload_results is not None:
        ended = [r for r in workload_results if r is not None]
        if ended and all(_closed(r) for r in ended):
            later = []
    return {'now': [h for h in hosts if h not in deferred], 'later': later}


class FilterModule(object):
    def filters(self):
        return {'chaos_revert_plan': chaos_revert_plan}
