#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_workload
short_description: Tracked-DDL workload with a Jepsen-style exactly-once checker
version_added: 0.1.0
description:
  - Runs a bounded stream of C(CREATE TABLE) statements, each with a unique
    token in its name, through failures (killed connections, lost packets,
    lock waits), reconnecting as needed, and records the outcome of each one
    as V(ok), V(fail) or V(unknown).
  - It then checks pgGit's invariant, a history row exists if and only if the
    DDL committed, and reports tokens that were lost (committed, not tracked),
    duplicated (tracked more than once) or unexpected (tracked but never
    committed or never issued). Unknown outcomes are resolved with the catalog.
  - The statements run in a detached program, C(pggit-chaos-workload),
    recorded in the fault ledger of the host that runs it (kind V(workload))
    with its O(experiment) id, so that the experiment's revert
    (C(pggit_chaos_revert experiment=<id>)), O(state=absent) and the TTL stop
    it. The module waits for it and removes the record when it ends. Run the
    module with C(async) while a fault is in place; the workload always stops
    by O(duration) or O(max_ops), whichever comes first.
  - It works only in a schema of its own. It creates O(schema) and marks it
    with the comment C(pggit.chaos workload run <run_id>); an existing schema
    without a workload mark is refused, and so are C(public), C(pggit) and
    system schemas (C(pg_*), C(information_schema)), in any letter case. A
    schema marked by another run is taken over, marked with this run.
  - The schema is dropped (by the run's clean-up, O(state=absent) or the
    revert) only while its comment is exactly this run's mark, so a run whose
    schema another run has taken over never drops that run's tables.
  - The host whose database it loads must opt in (C(pggit_chaos_allowed)),
    also when the task is delegated to a client host.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
attributes:
  check_mode:
    support: full
    details: In check mode nothing is executed and the plan is returned.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  name:
    description:
      - Name of the workload's ledger record on the host that runs it (its id
        is C(workload--<name>)). Defaults to O(run_id).
    type: str
  experiment:
    description:
      - Experiment id recorded with the workload, so that the experiment's
        revert (C(pggit_chaos_revert experiment=<id>)) stops it with the
        experiment's faults.
    type: str
  state_dir:
    description:
      - Directory that holds the fault ledger on the host that runs the
        workload.
      - Set from that host's variable C(pggit_chaos_state_dir) when omitted and
        the variable is defined (with C(delegate_to), the delegate's).
    type: path
    default: /var/lib/pggit-chaos
  ttl:
    description:
      - Seconds after which the host stops the workload by itself, even when
        the controller is gone, from 5 to 86400; it must exceed O(duration).
      - Defaults to O(duration) + 2 x O(settle_timeout) + 60.
    type: int
  state:
    description:
      - V(present) runs the workload and checks it.
      - V(absent) stops a running workload of this O(name) (the shared revert)
        and drops O(schema) when its comment is still the mark of this
        O(run_id), for example tables a run with O(cleanup=false) left for a
        drift check. A schema another run has taken over since is kept, and
        the result says so.
    type: str
    default: present
    choices: [present, absent]
  run_id:
    description:
      - Token prefix of this run, 1 to 24 characters of C([a-z0-9_]). Tokens are
        C(<run_id>_<sequence>); tables are named C(t_<token>).
      - Must be new to the database, since history outlives the tables; a
        reused run_id is refused before any DDL runs.
    type: str
    required: true
  duration:
    description:
      - Seconds to run, from 1 to 3600.
    type: float
    default: 30
  interval:
    description:
      - Pause between statements in seconds, from 0 to 60.
    type: float
    default: 0.1
  max_ops:
    description:
      - Upper bound on statements issued, from 1 to 100000.
    type: int
    default: 5000
  schema:
    description:
      - Schema that holds the workload's tables. Created, and marked with this
        run, when missing; an existing schema must carry a workload mark, and
        is marked with this run.
      - Never C(public), C(pggit), C(information_schema) or C(pg_*), in any
        letter case.
    type: str
    default: pggit_chaos_workload
  statement_timeout_ms:
    description:
      - C(statement_timeout) of each DDL, from 100 to 600000 ms.
      - It also bounds the commit. PostgreSQL's C(statement_timeout) does not end a commit's wait for a
        synchronous standby, so the workload cancels a commit that outlasts it, as a client with a timeout would;
        the server then says the transaction was already committed locally, and the outcome is V(maybe).
    type: int
    default: 10000
  count_from:
    description:
      - When O(duration) starts.
      - V(ddl), the first DDL, once the workload has connected and prepared its schema.
      - V(start), the module's start on the host that runs it (its Python start-up included), by that host's clock.
        The preparation then takes part of O(duration), so that a workload given what is left of a fault window stops
        with that window, also when a slow link makes the preparation slow. A preparation longer than O(duration)
        leaves no time for any DDL.
    type: str
    default: ddl
    choices: [ddl, start]
  settle_timeout:
    description:
      - Seconds to keep trying to connect, to prepare and for the final check,
        from 1 to 600.
    type: float
    default: 60
  cleanup:
    description:
      - Drop the workload schema after the check, or when the workload is
        stopped (the drop is tracked too, unless tracking is off). Only a
        schema whose comment is still this run's mark is dropped.
    type: bool
    default: true
  hosts:
    description:
      - Addresses of every server of the cluster, for a client that follows the primary through a failover, as an
        application with a multi-host connection string does. They replace O(login_host) in libpq's host list (one
        O(login_port) for all), with O(target_session_attrs) and a connect timeout of 2 s per server (libpq's least) unless
        O(connect_timeout) is set.
      - The client reconnects to whichever server accepts writes, gives up on a DDL that outlasts
        O(statement_timeout_ms) by 1 s (a frozen server answers neither the statement nor a cancel request) and
        records per DDL the server that answered it and when, in RV(servers).
    type: list
    elements: str
    default: []
  target_session_attrs:
    description:
      - libpq's C(target_session_attrs) of the multi-host client (O(hosts)).
    type: str
    default: read-write
    choices: [read-write, primary, any]
  workers:
    description:
      - Number of tracked-DDL workers running at once, from 1 to 64, each with its own connection and its own tokens
        (C(<run_id>_w<k>_<seq>) when there are several). Every worker runs for O(duration), at most O(max_ops) DDL each.
      - The checker judges each worker on its own tokens and the run as a whole (RV(workers), RV(check)).
    type: int
    default: 1
  tracking_cost:
    description:
      - Measure pgGit's own cost before the run, from 0 (do not) to 1000. That many C(CREATE TABLE) with pgGit's
        event triggers firing, and as many in a second session with C(session_replication_role) set to V(replica),
        where event triggers left at their default do not fire, alternating, in the workload's own schema.
      - Only that session is affected, and only while it lasts; nothing is turned off for anyone else, so this is
        no fault. It needs a superuser (to set C(session_replication_role)); RV(tracking_cost) says so otherwise.
    type: int
    default: 0
  expect_tracking:
    description:
      - V(true) checks that every committed DDL has exactly one history row.
      - V(false) is for windows where tracking is deliberately off; every
        committed DDL must have none, and one that has a row is unexpected.
    type: bool
    default: true
  connect_per_op:
    description:
      - Open a new connection for every DDL and close it after, as short-lived clients do. A connection the server
        refuses sent no DDL, so that DDL's outcome is V(fail), with the time and the server's message in RV(refused).
    type: bool
    default: false
  op_login_user:
    description:
      - Role of the connection of each DDL with O(connect_per_op), instead of O(login_user) (which still prepares,
        checks and cleans up). The workload grants it C(USAGE) and C(CREATE) on its own schema, nothing else.
    type: str
  op_login_password:
    description:
      - Password of O(op_login_user). It reaches the workload through the ledger's 0600 secret file.
    type: str
'''

EXAMPLES = r'''
- name: DDL workload during the fault window, stopped by the experiment's revert if it aborts
  pggit.chaos.pggit_workload:
    db: app
    run_id: exp42
    experiment: exp42
    duration: 30
  async: 120
  poll: 0
  register: workload_job

- name: Drop the tables a run with cleanup=false left behind
  pggit.chaos.pggit_workload:
    db: app
    run_id: exp42
    schema: pggit_chaos_drift
    state: absent
'''

RETURN = r'''
check:
  description: >-
    Checker verdict with V(ops), V(ok), V(failed), V(unknown), V(maybe), V(tracked) and
    the token lists V(lost), V(duplicated), V(unexpected) and V(phantom)
    (acknowledged but absent from the catalog); V(valid) is true when all four
    lists are empty. V(maybe) counts commits the client cancelled while they waited
    for a synchronous standby ("already committed locally", Jepsen's C(:info));
    V(maybe_resolved) says how the catalog resolved them.
  returned: always
  type: dict
tables:
  description: >-
    Every table the run committed (acknowledged, or unknown and found in the
    catalog), as C(schema.table); at most O(max_ops).
  returned: when state=present
  type: list
  elements: str
table_count:
  description: Number of entries in RV(tables).
  returned: when state=present
  type: int
reconnects:
  description: Connections the workload had to open again.
  returned: always
  type: int
errors:
  description: Count of errors by class, such as C(OperationalError).
  returned: always
  type: dict
latency_ms:
  description: DDL latency (statement plus commit) of acknowledged statements, V(p50), V(p95), V(p99) and V(max), over every worker.
  returned: always
  type: dict
workers:
  description: >-
    Per worker (O(workers)), V(worker) (its index), V(check) (its own checker verdict, on its own tokens), V(ops) and
    V(latency_ms). RV(check) is the merged verdict of them all (its V(workers) says how many).
  returned: when state=present
  type: list
  elements: dict
tracking_cost:
  description: >-
    With O(tracking_cost), pgGit's own cost per DDL. V(n) C(CREATE TABLE) with pgGit's event triggers firing and V(n)
    without, alternating, in the workload's schema before the run. V(on_p50_ms), V(off_p50_ms), V(on_p95_ms),
    V(off_p95_ms), V(overhead_ms) (p50 on minus off), V(overhead_pct), V(on_tracked) and V(off_tracked) (read back from
    C(pggit.objects)) and V(valid) (every on DDL tracked, no off DDL tracked). V(error) instead when it could not measure.
  returned: when O(tracking_cost) is set and the run ended
  type: dict
cleanup:
  description: What happened to the schema at the end (dropped, kept, not there).
  returned: when the schema was cleaned up
  type: str
refused:
  description: >-
    With O(connect_per_op), the connections refused before any DDL was sent, V(count), V(first_at) and V(last_at)
    (epoch s) and V(messages), the server's messages with their V(count).
  returned: when O(connect_per_op) is set and the run ended
  type: dict
fault_id:
  description: Ledger id of the workload, C(workload--<name>).
  returned: always
  type: str
op_times:
  description: >-
    C([start, duration_ms, outcome]) of each DDL, for per-window latency and blocked-time figures: at most 5000
    acknowledged ones (evenly over the run when there were more) and at most 5000 others (failed or uncertain),
    thinned separately so that no failure is lost to the acknowledged ones.
  returned: when state=present
  type: list
  elements: list
history_order:
  description: >-
    Ordering audit of C(pggit.history) since the run began: rows whose timestamps run
    backwards against their ids, and rows in the future of the real clock.
  returned: when state=present
  type: dict
history_prefix:
  description: Row count and digest of the C(pggit.history) rows that existed when the run began.
  returned: when state=present
  type: dict
server_clock:
  description: The server's C(now()) against the client's clock when the run ended.
  returned: when state=present
  type: dict
servers:
  description: >-
    With O(hosts): V(observed_on), the server (C(host:port)) whose catalog the final check read, V(hosts),
    V(target_session_attrs) and V(ops), per DDL C([token, outcome, server, started, ended, in_catalog]), the server
    that answered it and the epoch times around it; the input of the failover RTO and RPO accounting. Null
    without O(hosts).
  returned: when state=present
  type: dict
'''

import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _workload
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._clock import process_age
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import TTL_MAX, ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, ensure_psycopg2, postgres_argument_spec

RANGES = (('duration', 1, 3600), ('interval', 0, 60), ('max_ops', 1, 100000),
          ('statement_timeout_ms', 100, 600000), ('settle_timeout', 1, 600), ('workers', 1, 64), ('tracking_cost', 0, 1000))
# How long past its TTL the module keeps waiting for the program's last word.
WAIT_MARGIN = 30.0
EMPTY = dict(check={}, reconnects=0, errors={}, latency_ms={})


def default_ttl(params):
    # The tracking-cost measure runs before the workers: up to a second for each of its on/off pairs.
    return int(min(TTL_MAX, params['duration'] + 2 * params['settle_timeout'] + 60 + (params.get('tracking_cost') or 0)))


class WorkloadFault(BackgroundFault):
    kind = 'workload'
    # A run is what it is: a workload in place with its run id is never replaced by one with other options.
    volatile_options = None
    program = _workload.PROC_TAG

    def validate(self):
        check_postgres_params(self.module)
        ensure_psycopg2(self.module)

    def observe(self):
        return {'workload': 'not running'}

    def in_place(self, record, current):
        return self.program_in_place(record)

    def plan(self, current):
        detail = {'conn': _pgconn.stored_conn(_workload.multi_host_params(self.params)),
                  'options': dict((k, self.params[k]) for k in _workload.OPTIONS)}
        # Should the program be killed before it cleans up, the revert drops its schema while it still carries this
        # run's mark (another run may have taken it over since).
        drop = _workload.drop_step(detail['conn'], self.params['schema'], self.params['run_id'])
        return [self.results_undo(), drop], detail, {'workload': 'running'}

    def secret(self):
        secret = _pgconn.secret_conn(self.params)
        if self.params.get('op_login_password'):
            secret['op_login_password'] = self.params['op_login_password']
        return secret

    def apply(self, detail):
        return {'program': self.start_program(ready_timeout=self.params['settle_timeout'] + 15)}

    def finish(self, result):
        params = self.params
        for key, value in EMPTY.items():
            result.setdefault(key, value)
        if params['state'] == 'absent':
            self.drop_schema(result)
            return
        if 'planned' not in result:  # already running under this name
            return
        if self.module.check_mode:
            result.update(changed=False, msg='would run DDL for %ss (at most %d statements) in schema %s'
                          % (params['duration'], params['max_ops'], params['schema']))
            return
        events, running = self.wait(max(0.0, self.record['expires_at'] - time.time()) + WAIT_MARGIN)
        if running:
            raise ChaosError('the workload is still running past its ttl of %ss; it stops with the revert or the TTL'
                             % params['ttl'])
        last = next((e for e in reversed(events) if e.get('event') in ('done', 'error', 'stopped')), None)
        if last is not None and last['event'] == 'done' and last.get('cleanup_outcome') != 'failed':
            # It ended by itself and cleaned up as asked (cleanup=false keeps the tables for a drift check):
            # the drop in the record was only for a workload killed before it could. After a failed clean-up the
            # drop stays, for the record's revert (and its reaper, should that fail too) to retry.
            self.forget_undo('pg_drop_schema')
        result['closed'] = self.close_record()
        if result['closed']['result'] == 'failed':
            self.module.warn('the record of the ended workload could not be closed: %s; it stays in the ledger and its '
                             'reaper retries' % result['closed'].get('error'))
        if last is None:
            raise ChaosError('the workload program ended without a result; see %s/workload.log' % params['state_dir'])
        if last['event'] == 'error':
            result['errors'] = last.get('errors') or {}
            raise ChaosError(last.get('msg'))
        if last['event'] == 'stopped':
            raise ChaosError('the workload was stopped before it finished (%s) after %s DDL; %s'
                             % (last.get('reason'), last.get('ops'), last.get('cleanup')))
        result.update(last['result'])

    def drop_schema(self, result):
        """After the revert of the record (if any): the run's schema goes by the rule of the record's undo step."""
        params = self.params
        if self.module.check_mode:
            result['msg'] = "%s; would drop schema %s if its comment is the mark of run %s" % (
                result.get('msg', ''), params['schema'], params['run_id'])
            return
        ensure_psycopg2(self.module)
        outcome, said = _workload.drop_own_schema(params, params['run_id'])
        result['cleanup'] = said
        if outcome == 'failed':
            raise ChaosError(said)
        result['changed'] = result['changed'] or outcome == 'dropped'
        before = 'reverted %s' % result['fault_id'] if result.get('revert') else result.get('msg') or 'no workload running'
        result['msg'] = '%s; %s' % (before, said)


def main(as_program=False):
    # The module's start (count_from=start): its process's start when Ansible runs it as a program.
    started = time.time() - (process_age(10) if as_program else 0.0)
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        name=dict(type='str'),
        ttl=dict(type='int'),
        run_id=dict(type='str', required=True),
        duration=dict(type='float', default=30),
        count_from=dict(type='str', default='ddl', choices=['ddl', 'start']),
        interval=dict(type='float', default=0.1),
        max_ops=dict(type='int', default=5000),
        schema=dict(type='str', default='pggit_chaos_workload'),
        statement_timeout_ms=dict(type='int', default=10000),
        settle_timeout=dict(type='float', default=60),
        cleanup=dict(type='bool', default=True),
        expect_tracking=dict(type='bool', default=True),
        hosts=dict(type='list', elements='str', default=[]),
        target_session_attrs=dict(type='str', default='read-write', choices=['read-write', 'primary', 'any']),
        workers=dict(type='int', default=1),
        tracking_cost=dict(type='int', default=0),
        connect_per_op=dict(type='bool', default=False),
        op_login_user=dict(type='str'),
        op_login_password=dict(type='str', no_log=True),
    )
    chaos = ChaosModule(argument_spec)
    module, params = chaos.module, chaos.params
    if not _workload.RUN_ID_RE.match(params['run_id']):
        chaos.fail("run_id must be 1 to 24 characters of [a-z0-9_], got '%s'" % params['run_id'])
    fail_on_ranges(module, RANGES)
    problem = _workload.schema_problem(params['schema'])
    if problem:
        chaos.fail(problem)
    bad = [h for h in params['hosts'] if not h or not h.strip() or ',' in h or h != h.strip()]
    if bad:
        chaos.fail('hosts must be server addresses without commas or spaces, got %r' % (bad[0],))
    if (params['op_login_user'] or params['op_login_password']) and not params['connect_per_op']:
        chaos.fail('op_login_user and op_login_password apply only with connect_per_op=true (each DDL on a new '
                   'connection as that role); got op_login_user=%r with connect_per_op=false' % (params['op_login_user'],))
    if params['name'] is None:
        params['name'] = params['run_id']
    params['stop_at'] = round(started + params['duration'], 3) if params['count_from'] == 'start' else None
    if params['ttl'] is None:
        params['ttl'] = default_ttl(params)
    elif params['state'] == 'present' and params['ttl'] <= params['duration']:
        chaos.fail('ttl must be longer than duration, or the TTL stops the workload before it ends: got ttl=%s and '
                   'duration=%s' % (params['ttl'], params['duration']))
    chaos.run(WorkloadFault)


if __name__ == '__main__':
    main(as_program=True)
