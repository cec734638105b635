#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_ramp
short_description: Plan a chaos ramp, stop it at its breaking point, and report it
version_added: 0.1.0
description:
  - Checks a ramp request (C(chaos_ramp)) and returns its levels, one full experiment per level, before
    anything is injected. Bad input (an unknown parameter, V(from) above V(to), a factor not above 1, more
    than one experiment, a parameter the experiment does not use, a parameter already set) fails with a
    message that names the option and the value.
  - Given the report entries of the steps run so far (as made by P(pggit.chaos.pggit_chaos_verdict#module)),
    applies the stop rule. The ramp stops at the first step whose verdict is not V(passed), that was not
    confirmed reverted, or whose fault window's DDL latency p95 is above the SLO. An aborted step ends the
    ramp as aborted.
  - When the ramp is done, returns its own report entry as RV(pggit_chaos_entry) (experiment
    C(ramp(<experiment>))), with the breaking point (the last passing level, the first failing one) and one
    row per step, which the P(pggit.chaos.chaos_report#callback) callback draws as a chart.
  - This module runs on the controller through its action plugin and contacts no host.
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
  diff_mode:
    support: none
  platform:
    platforms: all
options:
  ramp:
    description:
      - The ramp, a mapping or its JSON text, with C(param) (one of V(chaos_latency_ms), V(chaos_loss_pct),
        V(chaos_ddl_workers), V(chaos_memory_pct), V(chaos_fill_pct), V(chaos_cpu_load)), C(from), C(to), and
        either C(factor) (each level multiplies the last, above 1) or C(step) (each level adds to the last).
      - Optional C(slo_ms), the DDL latency p95 the fault window must stay under; it overrides O(slo_ms).
      - The last level is always C(to).
    type: raw
    required: true
  experiments:
    description: The run's experiments (a list or a comma-separated string); a ramp needs exactly one.
    type: raw
    required: true
  slo_ms:
    description: The SLO of the window's DDL latency p95, in ms (C(chaos_slo_ms)); none means the verdict alone decides.
    type: raw
  preset:
    description:
      - Variables already set before the ramp, by name; the ramped parameter must not be among them, since an
        extra variable would win over every step's level.
    type: dict
    default: {}
  steps:
    description:
      - One item per step run so far, in order (empty to plan the ramp); an item is the step's report entry, or the
        list of the report entries the step appended, of which exactly one must be of the ramped experiment.
      - A step with no entry of its own (or more than one) has no verdict, so it stops the ramp without passing.
    type: list
    elements: raw
    default: []
  host:
    description: Host of the ramp; defaults to the task's C(inventory_hostname).
    type: str
'''

EXAMPLES = r'''
- name: Plan the ramp
  pggit.chaos.pggit_chaos_ramp:
    ramp: {param: chaos_latency_ms, from: 10, to: 1000, factor: 2}
    experiments: [network_latency]
    slo_ms: 500
  register: ramp_plan

- name: Decide after a step
  pggit.chaos.pggit_chaos_ramp:
    ramp: {param: chaos_latency_ms, from: 10, to: 1000, factor: 2}
    experiments: [network_latency]
    steps: "{{ ramp_steps }}"
  register: ramp_state
'''

RETURN = r'''
levels:
  description: The levels of the ramp, in order.
  type: list
  returned: success
  sample: [10, 20, 40, 80, 160, 320, 640, 1000]
experiment:
  description: The one experiment the ramp repeats.
  type: str
  returned: success
param:
  description: The ramped parameter.
  type: str
  returned: success
slo_ms:
  description: The SLO in ms, or null.
  type: float
  returned: success
done:
  description: True when the ramp has stopped or ran every level.
  type: bool
  returned: success
stopped:
  description: True when a step broke the ramp.
  type: bool
  returned: success
next_level:
  description: The level of the next step, or null when done.
  type: raw
  returned: success
last_passing:
  description: The last level that passed, or null.
  type: raw
  returned: success
first_failing:
  description: The first level that broke the ramp, or null.
  type: raw
  returned: success
stop_reason:
  description: Why the step that stopped the ramp stopped it.
  type: str
  returned: success
inconclusive:
  description: The ramp stopped at a step that was skipped or left no verdict, so it found no breaking point there.
  type: bool
  returned: success
steps:
  description: One row per step run, with C(level), C(status), C(passed), C(p95_ms), C(reverted), C(experiment_id), timings, C(stop_reason).
  type: list
  returned: success
pggit_chaos_entry:
  description: The ramp's report entry, returned once, when the ramp is done; C(ramp) holds the breaking point and the steps.
  type: dict
  returned: when done
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils._ramp_spec import ramp_argument_spec


def main():
    module = AnsibleModule(argument_spec=ramp_argument_spec(), supports_check_mode=True)
    module.fail_json(msg='pggit_chaos_ramp must run via its action plugin; call it as pggit.chaos.pggit_chaos_ramp from a playbook')


if __name__ == '__main__':
    main()
