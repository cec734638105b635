# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_window_latency
short_description: A workload's DDL latency over the fault only, for a workload collected after the revert
version_added: 0.1.0
description:
  - Takes a workload's result (C(pggit_workload)) and returns it with C(latency_ms) (p50, p95, p99, max) recomputed
    from its C(op_times) over the acknowledged DDL (outcome V(ok)) that ended by O(cutoff), the start of the revert.
  - A workload whose job finish collects after the revert of the target (network_latency, packet_loss) keeps
    running DDL once the delay is gone, fast and many; counted with the slow ones they pull the p50 the verdict
    compares with the baseline down, so a fault that happened could read as one that did not.
  - The whole run's figures stay in C(latency_ms_whole_run); C(latency_cutoff) and C(latency_ops_after_cutoff) say
    what was left out. C(failed_ops_by_cutoff) counts the DDL that did not succeed (outcome V(fail), V(unknown) or
    V(maybe)) and ended by O(cutoff), the errors the loss verdict may count (the run's C(errors) cover its whole
    length, after the revert too). C(open_at_cutoff_ms) is how long the longest DDL still in flight at O(cutoff) had run by
    then (null when none was), since one the loss held open until the link was clean again ends after the cut.
    A result that is not a mapping, has no C(op_times) list, or a O(cutoff) that is not a number is returned unchanged.
  - The DDL start times are the workload host's clock and O(cutoff) the controller's; the default client
    (localhost) is the controller.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description: The workload's result.
    type: raw
    required: true
  cutoff:
    description: Epoch seconds (the timeline's C(revert_start)); DDL that ended after it are left out.
    type: raw
    required: true
'''

EXAMPLES = r'''
- name: The workload as the verdict judges it
  ansible.builtin.set_fact:
    workload: "{{ pggit_experiment_workload_wait | pggit.chaos.chaos_window_latency(pggit_experiment_timeline.revert_start) }}"
'''

RETURN = r'''
_value:
  description: The workload's result, its C(latency_ms) over the DDL that ended by O(cutoff).
  type: raw
'''

from ansible_collections.pggit.chaos.plugins.module_utils._checker import percentile
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import _number


def chaos_window_latency(workload, cutoff):
    limit = _number(cutoff)
    if not isinstance(workload, dict) or not isinstance(workload.get('op_times'), list) or limit is None:
        return workload
    within, after, failed, open_ms = [], 0, 0, None
    for item in workload['op_times']:
        if not isinstance(item, (list, tuple)) or len(item) < 3:
            continue
        started, ms = _number(item[0]), _number(item[1])
        if started is None or ms is None:
            continue
        ended_by_cutoff = started + ms / 1000.0 <= limit
        if not ended_by_cutoff and started < limit:
            open_ms = max(open_ms or 0.0, round((limit - started) * 1000.0, 1))
        if item[2] != 'ok':
            failed += 1 if ended_by_cutoff else 0
        elif ended_by_cutoff:
            within.append(ms)
        else:
            after += 1
    result = dict(workload)
    result['latency_ms_whole_run'] = workload.get('latency_ms')
    result['latency_ms'] = dict(p50=percentile(within, 50), p95=percentile(within, 95), p99=percentile(within, 99),
                                max=max(within) if within else None)
    result['latency_cutoff'] = limit
    result['latency_ops_after_cutoff'] = after
    result['failed_ops_by_cutoff'] = failed
    result['open_at_cutoff_ms'] = open_ms
    return result


class FilterModule(object):
    def filters(self):
        return {'chaos_window_latency': chaos_window_latency}
