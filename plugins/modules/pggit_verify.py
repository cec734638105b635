#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_verify
short_description: Steady-state probe for pgGit DDL tracking
version_added: 0.1.0
description:
  - Checks that a database is reachable and that pgGit tracks DDL, and reports
    each check with a status and its elapsed time.
  - Checks are C(connect), C(pggit_present) (schema and tables),
    C(event_triggers) (every C(pggit%) trigger and whether it is enabled),
    C(canary) (a uniquely named table is created and exactly one history row
    must appear, or none when tracking is expected off), C(health_check)
    (C(pggit.health_check()) when it exists), C(replication),
    C(connections) and, on request, C(drift) and C(amcheck).
  - With O(amcheck) the probe verifies every btree index of the C(pggit)
    schema with the contrib module amcheck, on a primary and on replicas,
    and reports each corrupt index with amcheck's own error text.
  - C(pggit.health_check()) is never trusted. On pgGit v0.2.1 it raises; the
    error is reported as a finding with status V(error) and the probe relies on
    its own checks. It never makes a probe healthy on its own.
  - With O(watch_duration) the probe repeats for a window and stops early when
    O(abort_after) rounds in a row are unhealthy, which is how experiments
    implement abort conditions.
  - The module reads and, unless O(zero_footprint=false) or
    O(amcheck_create=true), leaves no trace; the canary runs in a transaction
    that is rolled back, and amcheck runs in read-only transactions. It
    reports C(changed) only when it created the amcheck extension (in check
    mode, when it would have).
  - The probe never fails on a database error; each one is a finding with
    status V(error) whose message names what failed, the option behind it
    and the statement (also in the check's C(data.statement) and
    C(data.option)). Bad option values fail the task before anything
    connects.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
attributes:
  check_mode:
    support: full
    details: The probe only reads (its canary is rolled back, and the amcheck extension is never created), so it runs in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  expect_tracking:
    description:
      - Whether pgGit tracking is expected on (a canary DDL adds exactly one
        history row) or off (it adds none).
    type: bool
    default: true
  canary:
    description:
      - Run the canary DDL. Skipped by itself on a standby.
    type: bool
    default: true
  zero_footprint:
    description:
      - Run the canary in a transaction that is rolled back, so probing never
        adds rows to C(pggit.history). With V(false) the canary table is
        committed, checked and dropped, both changes tracked.
    type: bool
    default: true
  canary_schema:
    description:
      - Schema for the canary table. It must exist; a missing schema or a
        missing privilege is reported as an V(error) finding of the
        C(canary) check that names this option and the statement. System
        schemas (C(pg_*), C(information_schema)) and C(pggit) are refused.
    type: str
    default: public
  canary_timeout_ms:
    description:
      - C(statement_timeout) and C(lock_timeout) of the canary, from 100 to
        600000 ms, so a blocked DDL is a finding, not a hang.
    type: int
    default: 5000
  health_check:
    description:
      - V(auto) calls C(pggit.health_check()) when it exists and reports its
        outcome as a non-critical finding; V(require) makes it critical;
        V(skip) does not call it.
    type: str
    default: auto
    choices: [auto, require, skip]
  check_drift:
    description:
      - List catalog relations that C(pggit.objects) does not know (drift).
    type: bool
    default: false
  drift_schemas:
    description:
      - Schemas to check for drift. Empty means every non-system schema.
    type: list
    elements: str
    default: []
  history_digest:
    description:
      - Also return the row count, last id and an md5 digest of
        C(pggit.history) in RV(history), so a replica can be compared with its
        primary row for row.
    type: bool
    default: false
  amcheck:
    description:
      - V(none) does not check indexes (the default, so existing experiments
        keep their cost).
      - V(check) runs C(bt_index_check(index, heapallindexed => true)) on every
        btree index of the C(pggit) schema. It takes only an AccessShareLock,
        so it also runs on a standby and does not block DDL; it reads the whole
        index and its table, which costs I/O on large histories.
      - V(parent) runs C(bt_index_parent_check(index, heapallindexed => true)),
        which also checks the parent/child links but takes a ShareLock that
        blocks writes to the table while it runs. A standby cannot take it, so
        there the parent check is skipped (the check says so and why) and
        C(bt_index_check) runs instead.
      - Every index is checked in a read-only transaction of its own, committed
        before the next index, so its lock is never held beyond that index's
        check and one corrupt index does not hide the others. A corrupt index makes the
        critical check C(amcheck) fail; an index that could not be checked (a
        lock or statement timeout) is an V(error).
      - The extension C(amcheck) must exist in the database. The probe never
        creates it unless O(amcheck_create=true); where it is missing the check
        is an V(error) that says so and names the contrib package.
    type: str
    default: none
    choices: [none, check, parent]
  amcheck_create:
    description:
      - Create the extension with C(CREATE EXTENSION amcheck) where it is
        missing (on a primary, never in check mode, where C(changed) says it
        would) and report C(changed).
        pgGit's event triggers record that DDL in C(pggit.history), so this
        leaves a trace even with O(zero_footprint=true); create it before a
        history baseline is taken.
      - With V(false) (the default) the probe never creates it, and a missing
        extension is an V(error) finding of the C(amcheck) check.
      - Only with O(amcheck=check) or O(amcheck=parent).
    type: bool
    default: false
  amcheck_timeout_ms:
    description:
      - C(statement_timeout) and C(lock_timeout) of each index's check, from
        100 to 3600000 ms, so a check blocked by a lock is an V(error) finding,
        not a hang.
    type: int
    default: 30000
  max_replication_lag_bytes:
    description:
      - Fail the C(replication) check when a replica (on a primary) or the
        replay (on a standby) lags by more bytes than this.
    type: int
  max_replay_delay_seconds:
    description:
      - On a standby, fail when the last replayed transaction is older than this.
    type: float
  min_replicas:
    description:
      - On a primary, fail when fewer replicas are streaming.
    type: int
  max_connections_pct:
    description:
      - Fail the C(connections) check when more than this percentage of
        C(max_connections) is in use.
    type: float
  watch_duration:
    description:
      - Seconds to keep probing, from 0 (probe once) to 3600, counted from the module's start on the target (its
        Python start-up, by that host's clock, is part of them). At least one probe runs.
    type: float
    default: 0
  watch_interval:
    description:
      - Seconds between health probes in watch mode, from 0.2 to 600.
        Experiments pass their own (C(pggit_experiment_probe_interval)).
    type: float
    default: 1
  monitor:
    description:
      - The chaos monitor. In watch mode a thread samples the target every
        O(monitor_interval) seconds beside the health probes, with one
        read-only statement on one kept connection (application name
        C(pggit-chaos-probe-monitor), which M(pggit.chaos.pggit_chaos_connections)
        never kills by default) reading client connections, lock waits, pgGit presence and tracking triggers, the
        row count of C(pggit.history), replication lag per replica in bytes
        from LSN differences), and returns them in RV(series). A single probe
        takes one sample. It creates nothing and never calls
        C(pggit.health_check()).
      - A sample that gets no answer within O(monitor_timeout_ms) is recorded
        with C(pggit_health=down) and its error, and the next one reconnects.
    type: bool
    default: true
  monitor_interval:
    description:
      - Seconds between monitor samples in watch mode, from 0.2 to 60.
    type: float
    default: 1
  monitor_timeout_ms:
    description:
      - Client-side limit of one sample (connect included), from 100 to
        60000 ms; the sample's C(statement_timeout) is half of it. A frozen
        server never blocks the watch. When the row count of C(pggit.history)
        outlasts the statement timeout (a very large history), the sample
        keeps everything else and the count is left out for the rest of the
        watch (V(history_slow)).
    type: int
    default: 1000
  monitor_phase:
    description:
      - The phase label of the samples (V(before), V(window), V(after), ...),
        as the experiment lifecycle names its phases.
    type: str
    default: window
  abort_after:
    description:
      - In watch mode, stop after this many unhealthy probes in a row and
        report RV(aborted). V(0) never stops early.
    type: int
    default: 2
  wait_for_digest:
    description:
      - Probe until the digest of C(pggit.history) here equals this one (the
        primary's digest in RV(history)), for a replica catching up after a fault,
        probing every 0.2 s, at most O(wait_timeout) seconds. Needs O(history_digest=true). The
        last probe is returned with RV(converged); the caller compares the
        digests itself. Not with O(watch_duration).
    type: str
  wait_timeout:
    description:
      - Seconds O(wait_for_digest) waits at most, from 0 to 3600.
    type: float
    default: 120
  jobs:
    description:
      - Background jobs of this host to collect with the probe, each the registered result of a task started with
        C(async) and C(poll=0) on this host (its C(ansible_job_id) and C(results_file)).
      - Once the probe (or its watch) ended, it waits at most O(jobs_timeout) seconds for them to finish and returns
        their results in RV(jobs), as M(ansible.builtin.async_status) would, in the same order, so that no task of its
        own collects them. After an abort they are read once, as they are, without waiting.
      - Only the async wrapper's results files (C(<async dir>/<job id>)) are read; nothing is written or removed.
    type: list
    elements: raw
    default: []
  jobs_timeout:
    description:
      - Seconds O(jobs) are waited for at most, from 0 to 3600.
    type: float
    default: 60
  fail_on_unhealthy:
    description:
      - Fail the task when the probe is not healthy. By default the result is
        returned and the caller decides.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Steady state, tracking on
  pggit.chaos.pggit_verify:
    login_host: db1.example.com
    db: app
    fail_on_unhealthy: true

- name: During a trigger fault, tracking must be off; abort after two bad probes
  pggit.chaos.pggit_verify:
    db: app
    expect_tracking: false
    check_drift: true
    watch_duration: 30
    watch_interval: 5
    abort_after: 2
  register: during

- name: Create amcheck once, before any history baseline (reports changed when it did)
  pggit.chaos.pggit_verify:
    db: app
    canary: false
    amcheck: check
    amcheck_create: true

- name: Every pgGit btree index must be clean (parent check on the primary); creates nothing
  pggit.chaos.pggit_verify:
    db: app
    amcheck: parent
  register: indexes

- name: A replica must not lag more than 16 MiB
  pggit.chaos.pggit_verify:
    login_host: replica1
    max_replication_lag_bytes: 16777216

- name: Watch a window, then bring back the workload started with async and poll 0 (no async_status task)
  pggit.chaos.pggit_verify:
    db: app
    watch_duration: 30
    jobs: ["{{ workload_job }}"]
  register: during
'''

RETURN = r'''
healthy:
  description: True when no critical check failed (in watch mode, in every round).
  returned: always
  type: bool
checks:
  description: Each check with V(name), V(status) (ok, warning, failed, error, skipped), V(critical), V(elapsed_ms), V(message) and V(data).
  returned: always
  type: list
  elements: dict
failed_checks:
  description: Names of critical checks that failed or errored.
  returned: always
  type: list
  elements: str
findings:
  description: One line per check that was neither ok nor skipped, including a raising C(pggit.health_check()).
  returned: always
  type: list
  elements: str
in_recovery:
  description: Whether the server is a standby; V(null) when it could not be reached.
  returned: always
  type: bool
drift:
  description: Catalog relations unknown to C(pggit.objects), when O(check_drift=true).
  returned: when check_drift
  type: list
  elements: str
history:
  description: V(rows), V(max_id) and V(digest) of C(pggit.history), when O(history_digest=true).
  returned: when history_digest
  type: dict
amcheck:
  description:
    - With O(amcheck), the data of the C(amcheck) check, also in that check's C(data).
    - V(function) run, V(indexes) listed, V(indexes_checked), V(corrupt) (a list of V(index), V(error) with
      amcheck's own text, V(sqlstate), V(detail)), V(errors) (indexes that could not be checked, same keys),
      V(not_checked_invalid), V(extension_created) and, on a standby asked for V(parent), V(parent_check).
  returned: when amcheck is not none and pgGit is present
  type: dict
  sample: {function: bt_index_check, indexes_checked: 7, corrupt: [{index: pggit.history_pkey,
           error: item order invariant violated for index "history_pkey", sqlstate: XX002}]}
converged:
  description: With O(wait_for_digest), whether the digest of C(pggit.history) came to equal it.
  returned: when wait_for_digest
  type: bool
waited_s:
  description: With O(wait_for_digest), seconds spent probing until it converged or O(wait_timeout) ran out.
  returned: when wait_for_digest
  type: float
history_rounds:
  description: With O(wait_for_digest), how many probes it took.
  returned: when wait_for_digest
  type: int
aborted:
  description: In watch mode, whether the abort condition fired.
  returned: always
  type: bool
jobs:
  description:
    - The result of each of O(jobs), in the same order, as M(ansible.builtin.async_status) returns it once the job
      ended (C(started) and C(finished) true); V(null) for a job still running (after an abort, or past
      O(jobs_timeout)).
  returned: when O(jobs) is given
  type: list
  elements: raw
jobs_waited_s:
  description:
    - Seconds this task waited for O(jobs) after the probe (or its watch) ended. The window ended that long before the
      task did, so a caller that marks the window's end after the task takes them off.
  returned: when O(jobs) is given
  type: float
jobs_failed:
  description: One line per job of O(jobs) that failed, or did not finish within O(jobs_timeout) (not after an abort).
  returned: when O(jobs) is given
  type: list
  elements: str
rounds:
  description: In watch mode, one summary per probe.
  returned: always
  type: list
  elements: dict
series:
  description:
    - The chaos monitor's samples, oldest first, each with V(t) (epoch seconds, this module's clock, when the sample
      began), V(server_t) (the server's C(clock_timestamp()), which clock_skew fakes), V(phase), V(connections)
      (client backends, the monitor's own not counted), V(active), V(pggit_health) (ok, degraded, untracked, tracking, absent or down), V(tracking_triggers),
      V(history_rows), V(lag_bytes) (replica name to bytes; on a standby V(replay)), V(lock_waits)
      (pg_locks not granted), V(in_recovery), V(probe_ms) (the cost of the sample) and, when it got no
      answer, V(error); V(history_locked) or V(history_slow) when pggit.history could not be counted.
    - The experiment lifecycle adds V(ddl_p50_ms), V(ddl_p95_ms) and V(ddl_count) from the workload.
  returned: when monitor
  type: list
  elements: dict
  sample: [{t: 1764284400.12, phase: window, connections: 4, active: 1, pggit_health: ok, history_rows: 120,
            lag_bytes: {lab-2: 0}, lock_waits: 0, probe_ms: 1.8}]
monitor_cost:
  description: V(samples), V(p50_ms) and V(max_ms) of the monitor's samples.
  returned: when monitor
  type: dict
elapsed_ms:
  description: Time taken by the (worst) probe.
  returned: always
  type: float
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils._clock import process_age
from ansible_collections.pggit.chaos.plugins.module_utils._probe import AsyncSampler, Monitor, Probe, collect_jobs, job_problem
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import (
    check_postgres_params, ensure_psycopg2, postgres_argument_spec, sql_failures,
)

RANGES = (
    ('canary_timeout_ms', 100, 600000),
    ('watch_duration', 0, 3600),
    ('watch_interval', 0.2, 600),
    ('abort_after', 0, 1000),
    ('max_replication_lag_bytes', 0, None),
    ('max_replay_delay_seconds', 0, None),
    ('min_replicas', 0, 1000),
    ('max_connections_pct', 0, 100),
    ('amcheck_timeout_ms', 100, 3600000),
    ('monitor_interval', 0.2, 60),
    ('monitor_timeout_ms', 100, 60000),
    ('wait_timeout', 0, 3600),
    ('jobs_timeout', 0, 3600),
)
# Never a canary here: system catalogs, and pgGit's own schema (not tracked).
FORBIDDEN_CANARY_SCHEMAS = ('information_schema', 'pggit')


def check_canary_schema(module):
    schema = module.params['canary_schema']
    if not schema or not schema.strip() or schema.lower() in FORBIDDEN_CANARY_SCHEMAS or schema.lower().startswith('pg_'):
        module.fail_json(msg="canary_schema must name an existing user schema for the canary table, not %r" % schema)


def main(as_program=False):
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        expect_tracking=dict(type='bool', default=True),
        canary=dict(type='bool', default=True),
        zero_footprint=dict(type='bool', default=True),
        canary_schema=dict(type='str', default='public'),
        canary_timeout_ms=dict(type='int', default=5000),
        health_check=dict(type='str', default='auto', choices=['auto', 'require', 'skip']),
        check_drift=dict(type='bool', default=False),
        drift_schemas=dict(type='list', elements='str', default=[]),
        history_digest=dict(type='bool', default=False),
        amcheck=dict(type='str', default='none', choices=['none', 'check', 'parent']),
        amcheck_timeout_ms=dict(type='int', default=30000),
        amcheck_create=dict(type='bool', default=False),
        max_replication_lag_bytes=dict(type='int'),
        max_replay_delay_seconds=dict(type='float'),
        min_replicas=dict(type='int'),
        max_connections_pct=dict(type='float'),
        watch_duration=dict(type='float', default=0),
        watch_interval=dict(type='float', default=1),
        monitor=dict(type='bool', default=True),
        monitor_interval=dict(type='float', default=1),
        monitor_timeout_ms=dict(type='int', default=1000),
        monitor_phase=dict(type='str', default='window'),
        abort_after=dict(type='int', default=2),
        wait_for_digest=dict(type='str'),
        wait_timeout=dict(type='float', default=120),
        jobs=dict(type='list', elements='raw', default=[]),
        jobs_timeout=dict(type='float', default=60),
        fail_on_unhealthy=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    fail_on_ranges(module, RANGES)
    check_canary_schema(module)
    if module.params['amcheck_create'] and module.params['amcheck'] == 'none':
        module.fail_json(msg='amcheck_create=true needs amcheck=check or amcheck=parent, got amcheck=none')
    if module.params['wait_for_digest'] is not None:
        if not module.params['history_digest']:
            module.fail_json(msg='wait_for_digest needs history_digest=true, got history_digest=false')
        if module.params['watch_duration'] > 0:
            module.fail_json(msg='wait_for_digest cannot be combined with watch_duration, got watch_duration=%s'
                             % module.params['watch_duration'])
    for job in module.params['jobs']:
        problem = job_problem(job)
        if problem:
            module.fail_json(msg=problem)
    check_postgres_params(module)
    ensure_psycopg2(module)
    params = dict(module.params)
    params['drift_schemas'] = params['drift_schemas'] or None
    if not params['zero_footprint'] and module.check_mode:
        params['zero_footprint'] = True  # check mode never commits a canary
    params['check_mode'] = module.check_mode  # nor creates the amcheck extension
    probe = Probe(params)
    monitor = None
    if params['monitor']:
        monitor = Monitor(AsyncSampler(params, params['monitor_timeout_ms']), params['monitor_interval'],
                          params['monitor_phase'], params['expect_tracking'])
    # The probe reports database errors as findings; this only guards against one escaping it.
    with sql_failures(module, what='the steady-state probe'):
        if params['watch_duration'] > 0:
            # Counted from the module's start on the target (run by Ansible, as a program): its Python start-up is part
            # of the window, not added to it.
            watch = params['watch_duration'] - (process_age(params['watch_duration']) if as_program else 0.0)
            result = probe.watch(watch, params['watch_interval'], params['abort_after'], monitor=monitor)
        else:
            if params['wait_for_digest'] is not None:
                result = probe.wait_history(params['wait_for_digest'], params['wait_timeout'])
            else:
                result = probe.run_once()
            result.update(aborted=False, rounds=[{'at': result['at'], 'healthy': result['healthy'], 'failed': result['failed_checks']}])
            if monitor is not None:
                monitor.sample()
                monitor.stop()
                result.update(series=monitor.series, monitor_cost=monitor.cost())
    if params['jobs']:
        waiting = time.time()
        result['jobs'], result['jobs_failed'] = collect_jobs(params['jobs'], params['jobs_timeout'],
                                                             wait=not result.get('aborted'))
        # The window ended before this wait: a caller that marks the window's end after the task takes this off.
        result['jobs_waited_s'] = round(time.time() - waiting, 3)
    result['changed'] = probe.changed  # only the amcheck extension, with amcheck_create=true
    if params['fail_on_unhealthy'] and not result['healthy']:
        module.fail_json(msg='steady state not met: %s' % '; '.join(result['findings'] or result['failed_checks']), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main(as_program=True)
