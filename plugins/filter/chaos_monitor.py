# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_monitor
short_description: Attach the chaos monitor's series to an experiment's window probe result
version_added: 0.1.0
description:
  - Takes the window's P(pggit.chaos.pggit_verify#module) watch result and returns it with its
    C(series) replaced by C(monitor), the experiment's whole monitor, which
    P(pggit.chaos.pggit_chaos_verdict#module) keeps in the entry and the report writer shows.
  - C(monitor) is C(series) (the samples of the probes before, during and after the window, oldest
    first), C(interval_s), C(cost) and C(ddl_ops). Each sample gets C(ddl_p50_ms), C(ddl_p95_ms) and
    C(ddl_count) when the workload completed DDL in the second before it.
  - An empty input (no window probe ran) stays empty.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description: The window's probe result (a dict, possibly empty).
    type: dict
    required: true
  before:
    description: The probe result before the fault.
    type: dict
  after:
    description: The probe result after the revert.
    type: dict
  workload:
    description: The workload result (with C(op_times)), when the experiment ran one.
    type: dict
'''

EXAMPLES = r'''
- name: Window probe with the monitor attached
  ansible.builtin.set_fact:
    during: "{{ pggit_experiment_during | pggit.chaos.chaos_monitor(before=pggit_experiment_before, after=pggit_experiment_after) }}"
'''

RETURN = r'''
_value:
  description: The window's probe result without C(series), with C(monitor).
  type: dict
'''

from collections.abc import Mapping

from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import build_monitor


def _plain(value):
    return dict(value) if isinstance(value, Mapping) else None


def chaos_monitor(during, before=None, after=None, workload=None):
    if not isinstance(during, Mapping):
        return during  # not a probe result: the verdict judges it as it is
    during = dict(during)
    if not during:
        return during
    monitor = build_monitor(_plain(before), during, _plain(after), _plain(workload))
    during.pop('series', None)
    during['monitor'] = monitor
    return during


class FilterModule(object):
    def filters(self):
        return {'chaos_monitor': chaos_monitor}
