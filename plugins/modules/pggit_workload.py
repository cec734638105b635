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
  - Meant to run with C(async) while a fault is in place; it always stops by
    O(duration) or O(max_ops), whichever comes first.
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
      - Schema that holds the workload's tables; created when missing.
    type: str
    default: pggit_chaos_workload
  statement_timeout_ms:
    description:
      - C(statement_timeout) of each DDL, from 100 to 600000 ms.
    type: int
    default: 10000
  settle_timeout:
    description:
      - Seconds to keep trying to reconnect for the final check, from 1 to 600.
    type: float
    default: 60
  cleanup:
    description:
      - Drop the workload schema after the check (the drop is tracked too,
        unless tracking is off).
    type: bool
    default: true
  expect_tracking:
    description:
      - V(true) checks that every committed DDL has exactly one history row.
      - V(false) is for windows where tracking is deliberately off; every
        committed DDL must have none, and one that has a row is unexpected.
    type: bool
    default: true
  state:
    description:
      - V(present) runs the workload and checks it.
      - V(absent) only drops the workload schema, for example tables a run
        with O(cleanup=false) left for a drift check.
    type: str
    default: present
    choices: [present, absent]
'''

EXAMPLES = r'''
- name: DDL workload during the fault window
  pggit.chaos.pggit_workload:
    db: app
    run_id: exp42
    duration: 30
  async: 120
  poll: 0
  register: workload_job
'''

RETURN = r'''
check:
  description: >-
    Checker verdict with V(ops), V(ok), V(failed), V(unknown), V(tracked) and
    the token lists V(lost), V(duplicated), V(unexpected) and V(phantom)
    (acknowledged but absent from the catalog); V(valid) is true when all four
    lists are empty.
  returned: always
  type: dict
tables:
  description: Up to 50 tables the run created and committed, as C(schema.table).
  returned: when state=present
  type: list
  elements: str
reconnects:
  description: Connections the workload had to open again.
  returned: always
  type: int
errors:
  description: Count of errors by class, such as C(OperationalError).
  returned: always
  type: dict
latency_ms:
  description: DDL latency (statement plus commit) of acknowledged statements, V(p50), V(p95) and V(max).
  returned: always
  type: dict
'''

import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._checker import check, percentile
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, ensure_psycopg2, postgres_argument_spec

RUN_ID_RE = re.compile(r'^[a-z0-9_]{1,24}$')
APP = 'pggit-chaos-workload'


class RunIdUsed(RuntimeError):
    pass


class Workload(object):
    def __init__(self, params, connect=None, clock=time.time, sleep=time.sleep):
        self.params = params
        self._connect = connect or (lambda: _pgconn.connect(params, application_name=APP, autocommit=False))
        self.clock = clock
        self.sleep = sleep
        self.conn = None
        self.reconnects = -1
        self.errors = {}
        self.ops = []
        self.latencies = []

    def _error(self, exc):
        name = exc.__class__.__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def _ensure_conn(self):
        if self.conn is not None and not self.conn.closed:
            return True
        try:
            self.conn = self._connect()
            self.conn.autocommit = False
            self.reconnects += 1
            return True
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self.conn = None
            return False

    def _drop_conn(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except _pgconn.psycopg2.Error:
                pass
        self.conn = None

    def one(self, token):
        """Issue one tracked DDL; return its outcome."""
        ident = _pgconn.sql.Identifier(self.params['schema'], 't_' + token)
        started = self.clock()
        try:
            cur = self.conn.cursor()
            cur.execute('SET LOCAL statement_timeout = %s', (int(self.params['statement_timeout_ms']),))
            cur.execute(_pgconn.sql.SQL('CREATE TABLE {} (id int)').format(ident))
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self._rollback_or_drop()
            return 'fail'
        try:
            self.conn.commit()
        except _pgconn.psycopg2.OperationalError as exc:
            self._error(exc)
            self._drop_conn()
            return 'unknown'
        except _pgconn.psycopg2.Error as exc:
            self._error(exc)
            self._rollback_or_drop()
            return 'fail'
        self.latencies.append((self.clock() - started) * 1000.0)
        return 'ok'

    def _rollback_or_drop(self):
        try:
            self.conn.rollback()
        except _pgconn.psycopg2.Error:
            self._drop_conn()

    def _prepare(self):
        deadline = self.clock() + self.params['settle_timeout']
        while self.clock() < deadline:
            if self._ensure_conn():
                try:
                    cur = self.conn.cursor()
                    cur.execute('SELECT count(*) FROM pggit.objects WHERE starts_with(object_name, %s)',
                                ('t_%s_' % self.params['run_id'],))
                    used = cur.fetchone()[0]
                    if used:
                        raise RunIdUsed("run_id '%s' was already used in this database (%d pggit.objects rows); "
                                        "every run needs a new one" % (self.params['run_id'], used))
                    cur.execute(_pgconn.sql.SQL('CREATE SCHEMA IF NOT EXISTS {}').format(_pgconn.sql.Identifier(self.params['schema'])))
                    self.conn.commit()
                    return
                except _pgconn.psycopg2.Error as exc:
                    self._error(exc)
                    self._rollback_or_drop()
            self.sleep(0.5)
        raise RuntimeError('could not prepare schema %s within %ss' % (self.params['schema'], self.params['settle_timeout']))

    def run(self):
        self._prepare()
        deadline = self.clock() + self.params['duration']
        seq = 0
        while self.clock() < deadline and seq < self.params['max_ops']:
            if not self._ensure_conn():
                self.sleep(0.2)
                continue
            seq += 1
            token = '%s_%06d' % (self.params['run_id'], seq)
            self.ops.append({'token': token, 'outcome': self.one(token)})
            if self.params['interval']:
                self.sleep(self.params['interval'])
        self._drop_conn()

    def observe(self):
        """History CREATE rows per token, and tokens present in the catalog."""
        deadline = self.clock() + self.params['settle_timeout']
        last = None
        while self.clock() < deadline:
            try:
                conn = _pgconn.connect(self.params, application_name=APP + '-check')
            except _pgconn.psycopg2.Error as exc:
                last = exc
                self.sleep(0.5)
                continue
            try:
                return self._observe(conn)
            except _pgconn.psycopg2.Error as exc:
                last = exc
                self.sleep(0.5)
            finally:
                conn.close()
        raise RuntimeError('final check could not read history: %s' % _pgconn.one_line(last))

    def _observe(self, conn):
        prefix = 't_%s_' % self.params['run_id']
        cur = conn.cursor()
        cur.execute("SELECT o.object_name, count(h.id) FROM pggit.objects o "
                    "LEFT JOIN pggit.history h ON h.object_id = o.id AND h.change_type::text = 'CREATE' "
                    "WHERE o.schema_name = %s AND starts_with(o.object_name, %s) GROUP BY o.object_name",
                    (self.params['schema'], prefix))
        history = dict((name[2:], int(n)) for name, n in cur.fetchall())
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND starts_with(c.relname, %s)", (self.params['schema'], prefix))
        catalog = set(row[0][2:] for row in cur.fetchall())
        return history, catalog

    def cleanup(self, only_if_exists=False):
        try:
            conn = _pgconn.connect(self.params, application_name=APP + '-cleanup')
        except _pgconn.psycopg2.Error as exc:
            return 'cleanup skipped: %s' % _pgconn.one_line(exc)
        try:
            cur = conn.cursor()
            cur.execute('SELECT to_regnamespace(%s) IS NOT NULL', (self.params['schema'],))
            if only_if_exists and not cur.fetchone()[0]:
                return 'schema %s is not there' % self.params['schema']
            cur.execute(_pgconn.sql.SQL('DROP SCHEMA IF EXISTS {} CASCADE').format(_pgconn.sql.Identifier(self.params['schema'])))
            return 'dropped schema %s' % self.params['schema']
        finally:
            conn.close()


RANGES = (('duration', 1, 3600), ('interval', 0, 60), ('max_ops', 1, 100000),
          ('statement_timeout_ms', 100, 600000), ('settle_timeout', 1, 600))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        run_id=dict(type='str', required=True),
        duration=dict(type='float', default=30),
        interval=dict(type='float', default=0.1),
        max_ops=dict(type='int', default=5000),
        schema=dict(type='str', default='pggit_chaos_workload'),
        statement_timeout_ms=dict(type='int', default=10000),
        settle_timeout=dict(type='float', default=60),
        cleanup=dict(type='bool', default=True),
        expect_tracking=dict(type='bool', default=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    if not RUN_ID_RE.match(params['run_id']):
        module.fail_json(msg="run_id must be 1 to 24 characters of [a-z0-9_], got '%s'" % params['run_id'])
    fail_on_ranges(module, RANGES)
    check_postgres_params(module)
    ensure_psycopg2(module)
    if params['state'] == 'absent':
        if module.check_mode:
            module.exit_json(changed=True, msg='would drop schema %s' % params['schema'])
        dropped = Workload(params).cleanup(only_if_exists=True)
        module.exit_json(changed=dropped.startswith('dropped'), msg=dropped)
    if module.check_mode:
        module.exit_json(changed=False, msg='would run DDL for %ss (at most %d statements) in schema %s'
                         % (params['duration'], params['max_ops'], params['schema']),
                         check={}, reconnects=0, errors={}, latency_ms={})
    workload = Workload(params)
    started = time.time()
    try:
        workload.run()
        history, catalog = workload.observe()
    except RuntimeError as exc:
        module.fail_json(msg=str(exc), errors=workload.errors)
    verdict = check(workload.ops, history, catalog, expect_tracked=params['expect_tracking'])
    result = dict(
        changed=bool(workload.ops), check=verdict, reconnects=max(0, workload.reconnects), errors=workload.errors,
        latency_ms=dict(p50=percentile(workload.latencies, 50), p95=percentile(workload.latencies, 95),
                        max=max(workload.latencies) if workload.latencies else None),
        seconds=round(time.time() - started, 3),
    )
    if params['cleanup']:
        result['cleanup'] = workload.cleanup()
    result['tables'] = ['%s.t_%s' % (params['schema'], op['token']) for op in workload.ops if op['outcome'] == 'ok'][:50]
    result['msg'] = '%d DDL: %d ok, %d failed, %d unknown, %d tracked; lost %d, duplicated %d, unexpected %d' % (
        verdict['ops'], verdict['ok'], verdict['failed'], verdict['unknown'], verdict['tracked'],
        len(verdict['lost']), len(verdict['duplicated']), len(verdict['unexpected']))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
