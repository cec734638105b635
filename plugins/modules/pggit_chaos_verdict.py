#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_verdict
short_description: The verdict of one chaos experiment, for the report
version_added: 0.1.0
description:
  - Takes the raw record of one experiment on one host (steady-state results,
    fault and revert results, workload check, timings) and judges it on the
    controller as V(passed), V(failed), V(aborted) or V(skipped), with the
    reasons.
  - Returns the judged entry as RV(pggit_chaos_entry); the
    P(pggit.chaos.chaos_report#callback) callback collects these entries and
    writes JSON, JUnit XML and Markdown reports at the end of the play.
  - Status precedence is skipped, aborted, failed, passed. An experiment is
    V(failed) when O(error) is set, the steady state before or after the fault
    is not healthy or was not checked, the steady state during the fault is
    not met, the fault was not confirmed reverted, or the workload check found
    lost, duplicated or unexpected operations. An experiment that was not
    reverted is never V(passed).
  - The task never fails because an experiment failed; check RV(status) to
    decide.
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
  diff_mode:
    support: none
  platform:
    platforms: all
options:
  experiment:
    description: Name of the experiment, for example V(tracking-off).
    type: str
    required: true
  host:
    description:
      - Host the experiment ran against.
      - Defaults to the task's C(inventory_hostname).
    type: str
  target_role:
    description: Role of the host in the experiment, for example V(primary).
    type: str
  experiment_id:
    description: Unique id of this run of the experiment, as recorded in the fault ledger.
    type: str
  steady_state:
    description: Results of P(pggit.chaos.pggit_verify#module) around the fault.
    type: dict
    default: {}
    suboptions:
      before:
        description:
          - Steady state before the fault. Must be C(healthy); missing means
            not checked, which fails the experiment.
        type: dict
      during:
        description:
          - Steady state during the fault. Fails the experiment when present
            and not C(healthy).
        type: dict
      after:
        description:
          - Steady state after the revert. Must be C(healthy); missing means
            not checked, which fails the experiment.
        type: dict
  fault:
    description: Result of the module that injected the fault.
    type: dict
    default: {}
  revert:
    description:
      - Result of P(pggit.chaos.pggit_chaos_revert#module) or of the fault
        module with C(state=absent). A non-empty C(failed) list means the
        revert failed.
    type: dict
    default: {}
  reverted:
    description: Whether the fault was confirmed reverted.
    type: bool
    default: false
  workload:
    description:
      - Result of the workload check, with C(ops), C(ok), C(failed),
        C(unknown), C(lost), C(duplicated), C(unexpected) and C(valid).
      - Omit when the experiment ran no workload.
    type: dict
  drift:
    description: Names of objects whose tracked state drifted; reported, not judged.
    type: list
    elements: str
    default: []
  error:
    description: Error that stopped the experiment; fails it (or explains the abort).
    type: str
  aborted:
    description: Whether the experiment was aborted before it completed.
    type: bool
    default: false
  skipped_reason:
    description: Why the experiment was skipped; when set the experiment is V(skipped).
    type: str
  parameters:
    description: Parameters of the experiment (duration, ttl, ...), reported as given.
    type: dict
    default: {}
  timings:
    description: Epoch timestamps (seconds, float) of the experiment's phases; any may be omitted.
    type: dict
    default: {}
    suboptions:
      started_at:
        description: Start of the experiment, before the first steady-state check.
        type: float
      inject_start:
        description: Start of the fault injection.
        type: float
      inject_end:
        description: End of the fault injection; the fault window starts.
        type: float
      window_end:
        description: End of the fault window.
        type: float
      revert_start:
        description: Start of the revert.
        type: float
      revert_end:
        description: End of the revert.
        type: float
      finished_at:
        description: End of the experiment, after the last steady-state check.
        type: float
seealso:
  - plugin: pggit.chaos.chaos_report
    plugin_type: callback
'''

EXAMPLES = r'''
- name: Record the tracking-off experiment
  pggit.chaos.pggit_chaos_verdict:
    experiment: tracking-off
    experiment_id: "{{ pggit_experiment_id }}"
    target_role: primary
    steady_state:
      before: "{{ verify_before }}"
      during: "{{ verify_during }}"
      after: "{{ verify_after }}"
    fault: "{{ inject }}"
    revert: "{{ revert }}"
    reverted: "{{ revert.failed | length == 0 }}"
    workload: "{{ workload_check | default(omit) }}"
    parameters:
      duration: 30
      ttl: 300
    timings:
      started_at: "{{ t_started }}"
      inject_start: "{{ t_inject_start }}"
      inject_end: "{{ t_inject_end }}"
      window_end: "{{ t_window_end }}"
      revert_start: "{{ t_revert_start }}"
      revert_end: "{{ t_revert_end }}"
      finished_at: "{{ t_finished }}"
  register: record

- name: Fail the play when the experiment did not pass
  ansible.builtin.assert:
    that: record.status in ['passed', 'skipped']
    fail_msg: "{{ record.pggit_chaos_entry.reasons | join('; ') }}"
'''

RETURN = r'''
status:
  description: Verdict of the experiment.
  returned: always
  type: str
  sample: failed
pggit_chaos_entry:
  description:
    - The judged report entry. Carries the input record (C(experiment),
      C(experiment_id), C(host), C(target_role), C(steady_state), C(fault),
      C(revert), C(workload), C(drift), C(error), C(aborted),
      C(skipped_reason), C(parameters)) plus the keys below.
  returned: always
  type: dict
  contains:
    status:
      description: One of V(passed), V(failed), V(aborted), V(skipped).
      type: str
      returned: always
    reasons:
      description: Why the experiment did not pass; empty when it passed.
      type: list
      elements: str
      returned: always
    reverted:
      description: Whether the fault was confirmed reverted with no revert failures.
      type: bool
      returned: always
    timings:
      description: C(inject_s), C(window_s), C(revert_s) and C(total_s) in seconds, rounded to ms; null when unknown.
      type: dict
      returned: always
    timeline:
      description: The epoch timestamps given in O(timings); null when unknown.
      type: dict
      returned: always
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils._verdict_spec import verdict_argument_spec


def main():
    module = AnsibleModule(argument_spec=verdict_argument_spec(), supports_check_mode=True)
    module.fail_json(msg='pggit_chaos_verdict must run via its action plugin; call it as pggit.chaos.pggit_chaos_verdict from a playbook')


if __name__ == '__main__':
    main()
