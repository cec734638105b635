#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_verdict
short_description: The verdict of one chaos experiment, for the report
version_added: 0.1.0
description:
  - Takes the raw facts of one experiment on one host (steady-state results,
    fault, revert and replica results, workload results, timings) and judges
    it on the controller as V(passed), V(failed), V(aborted) or V(skipped),
    with the reasons. This is the one place where an experiment is judged;
    the experiment roles only gather the facts.
  - Returns the judged entry as RV(pggit_chaos_entry); the
    P(pggit.chaos.chaos_report#callback) callback collects these entries and
    writes JSON, JUnit XML and Markdown reports at the end of the play.
  - Status precedence is skipped, aborted, failed, passed. An experiment is
    V(failed) when O(error) is set, the steady state before or after the fault
    is not healthy or was not checked, the steady state during the fault is
    not met, the fault was not confirmed reverted, a replica did not converge
    to the target's C(pggit.history) after the revert, the workload failed or
    its check found lost, duplicated or unexpected operations, or the fault
    cannot be shown to have happened (see O(fault_check)). An experiment that
    was not reverted is never V(passed).
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
  fault_check:
    description:
      - How to prove that the fault really happened, checked unless O(error)
        is set. An experiment that cannot prove it has failed.
      - V(connections) needs at least one terminated backend (O(kills), else
        O(fault), with C(terminated)) and at least one reconnect of O(workload).
      - V(trigger) applies when C(tracking) of O(fault) is V(off) (or
        missing). Every table in C(tables) of O(workload) must be in O(drift);
        fewer tables than the workload committed (C(check.ok) plus the
        C(check.unknown_resolved.committed), or C(table_count) when larger),
        or none at all, fails the check.
      - V(latency) compares C(latency_ms) of O(workload) with that of
        O(workload_baseline). With C(delay_ms) in O(parameters) above 0 the
        p50 must have grown by at least C(delay_ms). With no delay (packet
        loss only) the slowest DDL must have taken at least 200 ms, the Linux
        minimum TCP retransmission timeout, or the workload must report an
        error (for a workload cut at the revert's start, C(failed_ops_by_cutoff),
        a DDL that failed before the revert); a DDL still in flight at the
        revert's start counts with the time it had run by then
        (C(open_at_cutoff_ms)).
      - V(partition) needs each replica in O(history_at_window_end) to hold
        fewer C(pggit.history) rows than the primary; not checked when
        C(full_isolation) in O(parameters) is true.
      - V(disk) needs the fill file of O(fault) to have taken space, and the
        free space measured after it near the free space asked (within the
        larger of 1 MiB and 1 % of the filesystem).
      - V(disk_full) needs the filesystem full and the full disk to have
        reached PostgreSQL, and reports the time from the revert to the first
        healthy probe.
      - V(memory) needs, in every phase of O(fault), the cgroup's peak at 90 %
        of the memory asked; V(cpu) the CPU load measured at 25 % of the load
        asked.
      - V(backend_kill) needs a SIGKILLed backend and a reconnect of
        O(workload); V(postmaster_kill) needs the server down in the window and
        tracked DDL working again after the restart; V(pause) needs each paused
        replica's C(pggit.history) not to grow in the window.
      - V(lock) needs the locks granted on every table of O(fault), and at
        least one DDL of O(workload) started while they were held that
        blocked for 250 ms or more; it reports the blocked time per DDL
        (p50, p95, max) and the count that timed out.
      - V(corrupt) needs the page written (its sha256 changed), amcheck to
        report the damaged index on the target during the window, amcheck clean
        on every host after the recovery, and the C(pggit.history) rows there
        before the fault unchanged (count, last id and digest).
      - V(clock) needs the offset measured on the server within 5 s of the one
        asked in each phase, at least one row of the ordering audit of
        C(pggit.history) running backwards, and the server's clock within 2 s of
        the host's after the revert.
      - V(dependency) needs C(synchronous_standby_names) naming the standby
        after the change, the standby cut off, and at least one commit whose
        wait was cancelled (outcome C(maybe) of the workload, resolved in the
        catalog).
      - V(failover) needs, from O(fault), a leader change to the member the mode promises (a synchronous standby
        before the fault in Patroni's synchronous mode; one outside the lost region for V(region_failover)), the
        timeline up, a DDL of the multi-host O(workload) acknowledged by the new leader (its time since the fault is
        C(rto_s)), no DDL acknowledged before the fault missing on the new leader where the mode promises RPO 0
        (C(rpo_lost_ddl), by token; with asynchronous replication counted, not failed), and after the heal one
        leader, every other member streaming, no cgroup left frozen and every member's C(pggit.history) digest
        equal. The entry then carries C(rto_s), C(rpo_lost_ddl), C(old_leader), C(new_leader), C(pg_timeline),
        C(write_pause_s), C(rejoin_s), C(rejoin_method) and C(ha_settings).
      - V(auto) picks the check from O(experiment) (V(kill_connections),
        V(trigger_failure), V(network_latency), V(packet_loss),
        V(region_partition), V(disk_pressure), V(disk_full), V(memory_pressure),
        V(cpu_pressure), V(backend_crash), V(postmaster_crash), V(process_pause),
        V(lock_contention), V(index_corruption), V(clock_skew),
        V(dependency_failure), V(primary_failover), V(region_failover), V(switchover), V(manual_failover)); any other experiment fails unless it passes
        V(none) or a check itself.
    type: str
    default: auto
    choices: [auto, none, connections, trigger, latency, partition, disk, disk_full, memory, cpu, backend_kill,
              postmaster_kill, pause, lock, corrupt, clock, dependency, failover, load, sessions, bandwidth]
  fault:
    description: Result of the module that injected the fault, reported as given.
    type: dict
    default: {}
  kills:
    description:
      - Result of the kill rounds of a connections experiment, with
        C(terminated), a list of backends or a count.
      - Defaults to O(fault).
    type: dict
  revert:
    description:
      - Result of P(pggit.chaos.pggit_chaos_revert#module) or of the fault
        module with C(state=absent), judged by the caller together with
        O(reverted). A non-empty C(failures) list means the revert failed.
      - Prefer O(revert_results); mutually exclusive with it.
    type: dict
    default: {}
  reverted:
    description:
      - Whether the caller confirmed the fault reverted.
      - Prefer O(revert_results); mutually exclusive with it.
    type: bool
    default: false
  revert_results:
    description:
      - Registered results of P(pggit.chaos.pggit_chaos_revert#module), one
        per host that may hold a fault (the C(results) of a loop, with
        C(item) naming the host), as they are.
      - The fault counts as reverted only when there is at least one result
        and no result is unreachable, failed or skipped, or lists a fault in
        C(failures).
    type: list
    elements: dict
  converge_results:
    description:
      - Registered results of P(pggit.chaos.pggit_verify#module) with
        C(history_digest) on each replica after the revert (the C(results) of
        a loop, with C(item) naming the replica), as they are.
      - Each must carry the C(history.digest) of O(steady_state.after); a
        replica that differs, gave no digest or was skipped fails the
        experiment.
    type: list
    elements: dict
  workload:
    description:
      - Result of P(pggit.chaos.pggit_workload#module) during the fault
        window, directly or through C(async_status), as it is. Its C(check)
        is the checker verdict, with C(ops), C(ok), C(failed), C(unknown),
        C(lost), C(duplicated), C(unexpected) and C(valid); a bare checker
        verdict is accepted too.
      - A failed, unreachable or unfinished workload fails the experiment; a
        skipped one counts as no workload.
      - Omit when the experiment ran no workload.
    type: dict
  workload_baseline:
    description:
      - Result of P(pggit.chaos.pggit_workload#module) run without the fault,
        for O(fault_check=latency).
    type: dict
  history_at_window_end:
    description: C(pggit.history) at the end of the fault window, for O(fault_check=partition).
    type: dict
    default: {}
    suboptions:
      primary:
        description: The target's C(history) from P(pggit.chaos.pggit_verify#module), with C(rows).
        type: dict
      replicas:
        description:
          - Registered results of P(pggit.chaos.pggit_verify#module) with
            C(history_digest) on each isolated replica (the C(results) of a
            loop, with C(item) naming the replica), as they are.
        type: list
        elements: dict
  drift:
    description:
      - Objects reported as drift during the window, as C(schema.name).
      - Judged by O(fault_check=trigger) only.
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
- name: Revert the experiment on every host that may hold one of its faults
  pggit.chaos.pggit_chaos_revert:
    experiment: "{{ pggit_experiment_id }}"
    fail_on_error: false
  delegate_to: "{{ item }}"
  loop: "{{ [inventory_hostname] + groups['region_b'] }}"
  ignore_unreachable: true
  register: revert

- name: Record the trigger_failure experiment
  pggit.chaos.pggit_chaos_verdict:
    experiment: trigger_failure
    experiment_id: "{{ pggit_experiment_id }}"
    target_role: primary
    steady_state:
      before: "{{ verify_before }}"
      during: "{{ verify_during }}"
      after: "{{ verify_after }}"
    fault: "{{ inject }}"
    revert_results: "{{ revert.results }}"
    workload: "{{ untracked_ddl }}"
    drift: "{{ verify_during.drift | default([]) }}"
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
      C(drift), C(error), C(aborted), C(skipped_reason), C(parameters)) plus
      the keys below.
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
    revert:
      description:
        - With O(revert_results), C(hosts), the C(reverted) fault ids and the
          C(failures) (unreachable hosts and failed items included); else
          O(revert) as given.
      type: dict
      returned: always
    convergence:
      description:
        - With O(converge_results), the target's C(primary) history, each
          replica's history by host, and the C(diverged) and C(unchecked)
          replicas; else null.
      type: dict
      returned: always
    evidence:
      description:
        - What O(fault_check) looked at, with C(fault_check) naming it, for
          example C(terminated) and C(workload_reconnects), the C(missing)
          drift, the requested and measured latency (C(added_p50_ms)), or
          the history rows of the primary and the replicas. Null when no
          check ran.
      type: dict
      returned: always
    workload:
      description: The workload's checker verdict (C(check) of O(workload)); null without a workload.
      type: dict
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

from ansible_collections.pggit.chaos.plugins.module_utils._verdict_spec import verdict_argument_spec, verdict_mutually_exclusive


def main():
    module = AnsibleModule(argument_spec=verdict_argument_spec(), mutually_exclusive=verdict_mutually_exclusive(),
                           supports_check_mode=True)
    module.fail_json(msg='pggit_chaos_verdict must run via its action plugin; call it as pggit.chaos.pggit_chaos_verdict from a playbook')


if __name__ == '__main__':
    main()
