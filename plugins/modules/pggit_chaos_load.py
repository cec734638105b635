#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_load
short_description: Put a pgbench load on PostgreSQL, in a database of its own, as a ledger-recorded fault
version_added: 0.3.0
description:
  - Runs C(pgbench) on the database host for O(duration) seconds, TPC-B-like
    (O(mode=tpcb)) or select-only (O(mode=select)), with O(clients) clients,
    unthrottled or at O(rate) transactions per second, and returns its TPS
    (whole run and per second) and its transaction latency.
  - C(pgbench) always runs against the load's own database,
    C(pggit_chaos_load), never against the database of the connection
    options, so that its tables never meet the users' schemas and pgGit's
    triggers never see its statements. The module creates that database when
    it is missing and marks it with the comment C(pggit.chaos load database);
    a database of that name without that comment is refused, before anything
    runs. It initialises it (C(pgbench -i -s <scale>)) when it is not ready
    and reuses it afterwards. Ready means the pgbench tables with their primary
    keys, O(scale) branches and 10 times O(scale) tellers, so an initialisation
    cut short is started over by the next run. The database is kept after the
    run, for the next one.
  - Like every fault, the load is a detached program on the target,
    C(pggit-chaos-load), recorded in the fault ledger before C(pgbench) may
    run. The initialisation and the run both happen inside that program, in
    its process group, and the undo step kills every C(pgbench) process of the
    group, even when the program itself is gone. The revert (O(state=absent),
    C(pggit_chaos_revert), the red button) and the TTL reaper leave no
    C(pgbench) process behind, at any moment, also during a long
    initialisation whose controller died. The program then also ends the
    server sessions of the initialisation it cut short. C(pgbench) gets C(-T)
    bounded by what is left of the TTL, after the initialisation.
  - The O(ttl) must cover the initialisation too; at a large O(scale), run a
    short load first with a long O(ttl) to initialise the database.
  - The module waits for the run to end and returns its figures; run it with
    C(async) to put the load under other work. A run stopped before its end
    (revert, TTL) fails the task, with the figures so far.
  - C(pgbench) is taken from the server's own binary folder when the server
    runs on this host, else from C(/usr/lib/postgresql/<major>/bin),
    C(/usr/pgsql-<major>/bin) or the system folders. The password goes to
    C(pgbench) in its environment, never on its command line.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Checks the database and pgbench, and returns the pgbench command lines it would run; runs nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  clients:
    description:
      - Concurrent pgbench clients (C(-c)), from 1 to 1000. pgbench runs up to 4 threads.
    type: int
    default: 4
  rate:
    description:
      - Target transactions per second (C(-R)), from 0 to 1000000; V(0) is unthrottled.
    type: int
    default: 0
  mode:
    description:
      - V(tpcb) runs pgbench's built-in TPC-B-like script, V(select) its select-only one (C(-S)).
    type: str
    default: tpcb
    choices: [tpcb, select]
  duration:
    description:
      - Seconds the load runs (C(-T)), from 1 to 86400; must be less than O(ttl) minus 5.
    type: int
    default: 30
  scale:
    description:
      - pgbench scale factor of the load's database (C(-s)), from 1 to 1000. Each unit is about 15 MB.
    type: int
    default: 1
'''

EXAMPLES = r'''
- name: Two minutes of TPC-B-like load at 200 tps with 8 clients, in the background
  pggit.chaos.pggit_chaos_load:
    name: spike
    experiment: "{{ pggit_experiment_id }}"
    clients: 8
    rate: 200
    duration: 120
    ttl: 180
  async: 240
  poll: 0
  register: load_job

- name: A short select-only baseline, waited for
  pggit.chaos.pggit_chaos_load:
    name: baseline
    mode: select
    duration: 3
    ttl: 60
  register: baseline

- name: Stop the load (no pgbench process is left)
  pggit.chaos.pggit_chaos_load:
    name: spike
    state: absent
'''

RETURN = r'''
tps:
  description: Transactions per second of the whole run, as pgbench reports it (null when it reported none).
  returned: when the load ran
  type: float
  sample: 812.4
tps_series:
  description: C([t, tps]) for each second of the run, from pgbench's progress reports (C(-P 1)).
  returned: when the load ran
  type: list
  elements: list
latency_ms:
  description: >-
    Transaction latency from pgbench's per-transaction log, V(p50), V(p95), V(p99), V(max) (ms) and
    V(transactions), the number of transactions logged.
  returned: when the load ran
  type: dict
transactions:
  description: Transactions pgbench processed.
  returned: when the load ran
  type: int
failed_transactions:
  description: Transactions that failed, as pgbench counts them.
  returned: when the load ran
  type: int
started_at:
  description: Epoch when pgbench started (on the target's clock).
  returned: when the load ran
  type: float
ended_at:
  description: Epoch when the run ended.
  returned: when the load ran
  type: float
load:
  description: >-
    The plan, V(pgbench) (its path), V(argv) (the run), V(init_argv) (the initialisation, when it is needed),
    V(database), V(database_exists), V(initialised) (whether this run initialised the database) and
    V(init_s) (the seconds the initialisation took, null when there was none).
  returned: with state=present
  type: dict
fault_id:
  description: Ledger id of the fault, C(load--<name>).
  returned: always
  type: str
'''

import os
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgbench, _pgconn, _server
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._validate import range_error
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

RANGES = (('clients', 1, 1000), ('rate', 0, 1000000, ' tps'), ('duration', 1, 86400, ' seconds'), ('scale', 1, 1000))
# The TTL must cover the run, its start and its initialisation.
TTL_MARGIN = 5
START_TIMEOUT = 10.0
WAIT_MARGIN = 30.0
DB_SQL = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
# CREATE DATABASE cannot share a transaction with the COMMENT that marks it ours: this file in the state dir says a
# creation was under way, so that a database a killed module created but could not mark yet is recognised, not refused.
CREATING = 'load-database-creating'


def option_problem(params):
    """The first bad option of state=present, as a message naming it and its value; None when all are fine."""
    for bounds in RANGES:
        msg = range_error(bounds[0], params[bounds[0]], *bounds[1:])
        if msg:
            return msg
    if params['duration'] > params['ttl'] - TTL_MARGIN:
        return ('duration must be at most ttl - %d, or the TTL stops the load before it ends: got duration=%s and ttl=%s'
                % (TTL_MARGIN, params['duration'], params['ttl']))
    return None


def database_problem(exists, comment, creating=False):
    """Why the load's database may not be used (it is not ours), or None.

    ``creating``: our own creation was cut between CREATE DATABASE and the
    COMMENT that marks it (the state dir says so): an unmarked database of that
    name, without any comment, is then ours to mark."""
    if exists and comment is None and creating:
        return None
    if exists and comment != _pgbench.MARK:
        return ("database %s exists and is not the load's own (its comment is %r, not %r): pggit_chaos_load runs only "
                "in a database it created; drop or rename that database yourself if it is a leftover"
                % (_pgbench.DATABASE, comment, _pgbench.MARK))
    return None


class LoadFault(BackgroundFault):
    kind = 'load'
    program = _pgbench.PROC_TAG

    def __init__(self, module):
        super(LoadFault, self).__init__(module)
        self.binary = None
        self.exists = False
        self.initialise = True
        self.initialised = None
        self.init_s = None
        self.spec = None
        self.unmarked = False

    def creating_path(self):
        return os.path.join(self.params.get('state_dir') or '', CREATING)

    # -- before anything is touched -----------------------------------------------
    def validate(self):
        problem = option_problem(self.params)
        if problem:
            self.module.fail_json(msg=problem, changed=False)
        conn = connect_or_fail(self.module, application_name=_pgbench.APP)
        try:
            cur = conn.cursor()
            cur.execute('SHOW server_version_num')
            version = int(cur.fetchone()[0])
            cur.execute(DB_SQL, (_pgbench.DATABASE,))
            row = cur.fetchone()
            server_bin = self.server_bin(cur)
        finally:
            conn.close()
        self.exists = row is not None
        self.unmarked = self.exists and row[0] is None and os.path.isfile(self.creating_path())
        problem = database_problem(self.exists, row[0] if row else None, self.unmarked)
        if problem:
            self.module.fail_json(msg=problem, changed=False)
        self.binary = _pgbench.find_pgbench(version, server_bin)
        if self.binary is None:
            self.module.fail_json(msg='pgbench is not installed on this host (looked in %s): install the PostgreSQL client '
                                      'tools of the server (apt-get install postgresql-%d or postgresql-contrib)'
                                      % (', '.join(_pgbench.candidates(version, server_bin)), version // 10000), changed=False)
        self.initialise = not self.exists or self.unmarked or not self.database_ready()
        self.spec = dict(binary=self.binary, clients=self.params['clients'], rate=self.params['rate'],
                         mode=self.params['mode'], duration=self.params['duration'], scale=self.params['scale'],
                         initialise=self.initialise)

    def database_ready(self):
        """Whether the load's (existing, ours) database is initialised at the asked scale; read only."""
        try:
            conn = _pgconn.connect(dict(self.params, db=_pgbench.DATABASE), application_name=_pgbench.APP)
            try:
                return _pgbench.ready(conn.cursor(), self.params['scale'])
            finally:
                conn.close()
        except _pgconn.psycopg2.Error as exc:
            self.module.fail_json(msg='cannot read whether database %s is initialised at scale %s: %s'
                                      % (_pgbench.DATABASE, self.params['scale'], _pgconn.one_line(exc)), changed=False)
        return False

    def server_bin(self, cur):
        """The server's own binary folder when it runs on this host (and we may read it), else None."""
        try:
            return _server.server_info(cur)['bin_dir']
        except (ChaosError, _pgconn.psycopg2.Error, OSError):
            try:
                cur.connection.rollback()
            except _pgconn.psycopg2.Error:
                pass
            return None

    def plan_result(self, ran=False):
        load = dict(pgbench=self.binary, argv=_pgbench.run_argv(self.binary, self.spec, self.params['duration']),
                    database=_pgbench.DATABASE, database_exists=self.exists)
        if self.initialise:
            load['init_argv'] = _pgbench.init_argv(self.binary, self.params['scale'])
        if ran:
            load.update(initialised=bool(self.initialised), init_s=self.init_s)
        return load

    # -- the lifecycle ----------------------------------------------------------
    def observe(self):
        return {'load': 'not running'}

    def in_place(self, record, current):
        return self.program_in_place(record)

    def secret(self):
        return _pgconn.secret_conn(self.params)

    def plan(self, current):
        detail = {'conn': _pgconn.stored_conn(self.params), 'load': self.spec}
        # Undone in reverse: the program (and pgbench, its group) first, then what is left of a cut initialisation in
        # the server, then the results file.
        steps = [self.results_undo(), _pgbench.init_step(detail['conn'], self.fid())]
        return steps, detail, dict(current, load=self.plan_result())

    def add_undo_last(self, step):
        """The program's kill_process step also kills its whole process group: pgbench is in it."""
        if step.get('type') == 'kill_process' and step.get('match') == self.program:
            step = dict(step, group=True, members_match=_pgbench.MEMBERS)
        super(LoadFault, self).add_undo_last(step)

    def ensure_database(self):
        """Create and mark the load's database when it is missing (fast); its initialisation is the program's."""
        if self.exists and not self.unmarked:
            return
        marker = self.creating_path()
        with open(marker, 'w') as handle:  # before CREATE DATABASE: a kill in between leaves it, not a stranger
            handle.write('%s\n' % time.time())
        conn = connect_or_fail(self.module, application_name=_pgbench.APP)
        try:
            cur = conn.cursor()
            if not self.unmarked:
                try:
                    cur.execute(_pgconn.sql.SQL('CREATE DATABASE {}').format(_pgconn.sql.Identifier(_pgbench.DATABASE)))
                except _pgconn.psycopg2.Error:
                    os.unlink(marker)  # not created by us (it appeared meanwhile): never ours to mark
                    raise
            cur.execute(_pgconn.sql.SQL('COMMENT ON DATABASE {} IS {}').format(
                _pgconn.sql.Identifier(_pgbench.DATABASE), _pgconn.sql.Literal(_pgbench.MARK)))
        finally:
            conn.close()
        os.unlink(marker)

    def apply(self, detail):
        self.ensure_database()
        program = self.start_program()
        # The initialisation runs in the program before pgbench starts: it may take up to what is left of the TTL.
        timeout = START_TIMEOUT
        if self.initialise:
            timeout += max(0.0, float(self.record['expires_at']) - time.time())
        event = self.await_event(('started', 'error', 'done', 'stopped'), timeout)
        if event is None:
            raise ChaosError('pgbench did not start within %gs (see %s)' % (timeout, self.params['state_dir']))
        self.init_s = event.get('init_s')
        if event['event'] != 'started':
            raise ChaosError(event.get('msg') or event.get('reason') or 'pgbench did not start')
        self.initialised = self.reader.first('initialised') is not None
        return {'pgbench': {'pid': event['pid'], 'argv': event['argv'], 'program': program}}

    def finish(self, result):
        if self.params['state'] != 'present' or 'planned' not in result:
            return
        result['load'] = self.plan_result(ran=not self.module.check_mode)
        if self.module.check_mode:
            result['msg'] = 'would run %s for %ss' % (' '.join(result['load']['argv']), self.params['duration'])
            return
        events, running = self.wait(max(0.0, self.record['expires_at'] - time.time()) + WAIT_MARGIN)
        if running:
            raise ChaosError('pgbench is still running past its ttl of %ss; it stops with the revert or the TTL' % self.params['ttl'])
        last = next((e for e in reversed(events) if e.get('event') in ('done', 'error', 'stopped')), None)
        if last is not None and last['event'] in ('done', 'stopped'):
            # Its last word comes after its own clean-up, which ended what was left of a cut initialisation: the step
            # was only for a program killed before it could (as a workload's schema drop), and the close needs no server.
            self.forget_undo(_pgbench.INIT_STEP)
        result['closed'] = self.close_record()
        if last is None:
            raise ChaosError('the load program ended without a result; see %s/load.log' % self.params['state_dir'])
        if last['event'] == 'error':
            raise ChaosError(last.get('msg'))
        keys = ('tps', 'tps_series', 'latency_ms', 'transactions', 'failed_transactions', 'started_at', 'ended_at')
        result.update((key, last.get(key)) for key in keys)
        if last['event'] == 'stopped':
            raise ChaosError('the load was stopped before it ended (%s); output: %s'
                             % (last.get('reason'), ' | '.join(last.get('output_tail') or [])))
        shown = (self.params['mode'], last.get('tps'), self.params['duration'], last.get('transactions'))
        result['msg'] = 'pgbench %s: %s tps over %ss, %s transactions' % shown


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        clients=dict(type='int', default=4),
        rate=dict(type='int', default=0),
        mode=dict(type='str', default='tpcb', choices=['tpcb', 'select']),
        duration=dict(type='int', default=30),
        scale=dict(type='int', default=1),
    )
    chaos = ChaosModule(argument_spec)
    chaos.run(LoadFault)


if __name__ == '__main__':
    main()
