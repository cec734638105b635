#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_lock
short_description: Hold locks on pgGit's tables, for real, until the revert or the TTL
version_added: 0.2.0
description:
  - Starts a detached lock holder on the target, C(pggit-chaos-locker),
    recorded in the fault ledger before it takes any lock. It opens a session
    (C(application_name) C(pggit-chaos-locker-<fault id>)), runs
    C(LOCK TABLE ... IN <mode> MODE) on O(tables) and
    C(pg_advisory_xact_lock()) for each of O(advisory_keys), and keeps that
    transaction open until the fault is reverted or its TTL passes.
  - The module returns once the locks are granted, with the holder's backend
    pid and the locks it holds, read from C(pg_locks). A holder that cannot
    take its locks within O(acquire_timeout_ms) (another session holds a
    conflicting lock) fails the task and leaves nothing behind.
  - The undo stops the holder (C(kill_process)) and also ends its backend by
    pid with C(pg_terminate_backend()), but only while that pid still carries
    the holder's C(application_name); so the locks go even when the holder
    process is gone or hangs. O(state=absent), C(pggit_chaos_revert), the red
    button and the TTL reaper all run that undo.
  - In production this blocks every session that needs a conflicting lock
    on those tables. With the default V(ACCESS EXCLUSIVE) on C(pggit.history)
    and C(pggit.objects), every tracked DDL waits (or fails with its own
    C(lock_timeout)) for the whole window, and so does any read of them.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Checks the tables and reports the locks it would take; takes none and starts nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  tables:
    description:
      - Tables to lock, as C(pggit.<table>) or C(<table>) (schema C(pggit) is
        implied). Each must exist and be a table of schema C(pggit); any other
        is refused, naming it.
    type: list
    elements: str
    default: [pggit.history, pggit.objects]
  mode:
    description:
      - The table lock mode, any of PostgreSQL's eight, case-insensitive
        (C(ACCESS SHARE), C(ROW SHARE), C(ROW EXCLUSIVE), C(SHARE UPDATE EXCLUSIVE),
        C(SHARE), C(SHARE ROW EXCLUSIVE), C(EXCLUSIVE), C(ACCESS EXCLUSIVE)); the
        C(pg_locks) spelling such as C(RowExclusiveLock) is accepted too.
    type: str
    default: ACCESS EXCLUSIVE
  advisory_keys:
    description:
      - Transaction-level advisory locks (C(pg_advisory_xact_lock(bigint)))
        to hold in the same transaction, one per key.
    type: list
    elements: int
    default: []
  acquire_timeout_ms:
    description:
      - How long the holder waits for its locks, from 0 to 60000 ms
        (C(lock_timeout)); V(0) means C(NOWAIT). When a conflicting lock is
        held longer, the fault fails and is rolled back.
    type: int
    default: 5000
  then_tables:
    description:
      - The deadlock phase. Once the holder has its locks, it watches for a
        session waiting on them; O(then_after_ms) after it first sees one, it
        asks for O(then_mode) on these tables too, in the same transaction. A
        tracked DDL holds C(ROW EXCLUSIVE) on C(pggit.objects) while it waits to
        insert into C(pggit.history), so C(tables=[pggit.history]), C(mode=SHARE),
        C(then_tables=[pggit.objects]) and C(then_mode=SHARE) close a cycle, and
        PostgreSQL's deadlock detector cancels one side (SQLSTATE C(40P01)).
      - The side whose C(deadlock_timeout) (1 s by default) runs out first after
        the cycle closed loses. With O(then_after_ms) under C(deadlock_timeout)
        the waiting session loses and the holder gets its lock; above it the
        holder loses, which ends its transaction and frees every lock it held
        (the waiting session must then still be waiting, its C(lock_timeout)
        longer than O(then_after_ms) plus C(deadlock_timeout)).
      - The second lock waits at most until the TTL. What happened is in
        RV(then_lock); read it by running the task again (the fault is in
        place, nothing changes). Empty (the default), there is no deadlock phase.
    type: list
    elements: str
    default: []
  then_mode:
    description:
      - The table lock mode of the second lock, as O(mode).
    type: str
    default: SHARE
  then_after_ms:
    description:
      - How long after the holder first sees a session waiting on its locks it
        asks for the second lock, from 0 to 600000 ms.
    type: int
    default: 200
'''

EXAMPLES = r'''
- name: Hold ACCESS EXCLUSIVE on pgGit's history and objects for a minute
  pggit.chaos.pggit_chaos_lock:
    name: lock-contention
    ttl: 60
    db: app
  register: held

- name: ROW EXCLUSIVE on the history only, plus an advisory lock
  pggit.chaos.pggit_chaos_lock:
    name: deadlock-side-a
    ttl: 30
    db: app
    tables: [pggit.history]
    mode: row exclusive
    advisory_keys: [4242]

- name: Deadlock, SHARE on the history, then SHARE on the objects once a DDL waits
  pggit.chaos.pggit_chaos_lock:
    name: deadlock
    ttl: 30
    db: app
    tables: [pggit.history]
    mode: SHARE
    then_tables: [pggit.objects]
    then_mode: SHARE
    then_after_ms: 200

- name: Read which side the deadlock detector cancelled
  pggit.chaos.pggit_chaos_lock:
    name: deadlock
    ttl: 30
    db: app
    tables: [pggit.history]
    mode: SHARE
    then_tables: [pggit.objects]
  register: deadlock
  until: deadlock.then_lock.result not in ['pending', 'waiting']
  retries: 20
  delay: 1

- name: Release the locks
  pggit.chaos.pggit_chaos_lock:
    name: lock-contention
    state: absent
'''

RETURN = r'''
holder:
  description: The lock holder, V(pid) and V(starttime) of the C(pggit-chaos-locker) process, V(backend_pid) and V(application_name) of its session.
  returned: when the locks were taken, or are already held
  type: dict
  sample: {pid: 31337, starttime: 123456, backend_pid: 4242, application_name: pggit-chaos-locker-lock--lock-contention}
locks:
  description: The table locks the holder's backend holds, read from C(pg_locks), each with V(relation), V(mode) and V(granted).
  returned: when the locks were taken, or are already held
  type: list
  elements: dict
  sample: [{relation: pggit.history, mode: AccessExclusiveLock, granted: true}]
advisory_keys:
  description: The advisory keys the holder's backend holds, read from C(pg_locks).
  returned: when the locks were taken, or are already held
  type: list
  elements: int
mode:
  description: The lock mode, spelled as C(LOCK TABLE) takes it.
  returned: with state=present
  type: str
  sample: ACCESS EXCLUSIVE
tables:
  description: The tables locked, or to lock in check mode.
  returned: with state=present
  type: list
  elements: str
then_lock:
  description:
    - The deadlock phase (O(then_tables)). V(result) is V(pending) (no session
      waited on the holder yet), V(waiting) (the second lock is asked for),
      V(granted), V(deadlock) (the detector cancelled the holder, SQLSTATE
      C(40P01)), V(timeout) (the TTL came first) or V(error).
    - V(lost) is V(holder), V(waiter) (the holder got its lock once the waiting
      session's transaction had aborted) or null. V(waited_ms) is how long the
      second lock waited, V(after_ms) how long after the first waiter was seen it
      was asked for. Each of V(waiters) (the sessions waiting on the holder then)
      has V(pid), V(xid), V(query), V(waited_ms) (how long it had waited when
      the holder asked), V(xact_status) (C(txid_status()) once decided, so
      V(committed) or V(aborted)) and V(history_rows) and V(objects_rows), the
      rows of C(pggit.history) and C(pggit.objects) its transaction left.
  returned: with then_tables, when the locks were taken or are already held
  type: dict
  sample: {result: granted, lost: waiter, sqlstate: null, waited_ms: 807.3, after_ms: 201.2,
           waiters: [{pid: 5150, xid: '1234', query: CREATE TABLE s.t (id int), waited_ms: 230.1,
                      xact_status: aborted, history_rows: 0, objects_rows: 0}]}
fault_id:
  description: Ledger id of the fault, C(lock--<name>).
  returned: always
  type: str
'''


from ansible_collections.pggit.chaos.plugins.module_utils import _locker, _pgconn, _results
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, exec_sql, postgres_argument_spec

RANGES = (('acquire_timeout_ms', 0, 60000), ('then_after_ms', 0, 600000))
# How long past acquire_timeout_ms the module waits for the holder to say it holds its locks.
LOCKED_MARGIN = 10.0


def check_options(module):
    """Refuse bad options of state=present before anything connects, naming the option and the value."""
    fail_on_ranges(module, RANGES)
    params = module.params
    for problem in (_locker.tables_problem(params['tables']), _locker.mode_problem(params['mode']),
                    _locker.keys_problem(params['advisory_keys']), _locker.then_problem(params)):
        if problem:
            module.fail_json(msg=problem, changed=False)


def then_lock(reader):
    """The deadlock phase as the holder reported it so far (RETURN then_lock)."""
    then = reader.first('then')
    if then is not None:
        return dict((k, v) for k, v in then.items() if k != 'event')
    asking = reader.first('then_asking')
    if asking is not None:
        return {'result': 'waiting', 'asked_at': asking.get('asked_at'), 'waiters': asking.get('waiters')}
    return {'result': 'pending'}


class LockFault(BackgroundFault):
    kind = 'lock'
    volatile_options = ('acquire_timeout_ms',)
    program = _locker.PROC_TAG

    def __init__(self, module):
        super(LockFault, self).__init__(module)
        self.held = None

    def validate(self):
        check_options(self.module)

    def tables(self):
        return ['%s.%s' % pair for pair in _locker.qualified(self.params['tables'])]

    def then_tables(self):
        return ['%s.%s' % pair for pair in _locker.qualified(self.params['then_tables'])]

    def app(self):
        return _locker.application_name(self.fid())

    def observe(self):
        """The tables as the catalog knows them (a missing one fails, naming it), and the holder's session if any."""
        conn = connect_or_fail(self.module, application_name='pggit-chaos-lock')
        try:
            for option in ('tables', 'then_tables'):
                asked = self.params[option]
                if not asked:
                    continue
                rows = exec_sql(self.module, conn, _locker.FIND_TABLES, _locker.find_tables_args(asked),
                                what='looking for the tables to lock', option=option).fetchall()
                missing = _locker.missing_tables(asked, rows)
                if missing:
                    self.module.fail_json(msg='%s: %s %s not a table of schema pggit (got %s=%s)' % (
                        option, ', '.join(missing), 'is' if len(missing) == 1 else 'are', option, asked), changed=False)
            sessions = exec_sql(self.module, conn, 'SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid',
                                (self.app(),), what="looking for the lock holder's session").fetchall()
        finally:
            conn.close()
        return {'tables': self.tables(), 'holder_backends': [r[0] for r in sessions]}

    def in_place(self, record, current):
        return self.program_in_place(record) and bool(current['holder_backends'])

    def plan(self, current):
        detail = {'conn': _pgconn.stored_conn(self.params), 'tables': self.tables(),
                  'mode': _locker.normalize_mode(self.params['mode']), 'advisory_keys': list(self.params['advisory_keys']),
                  'acquire_timeout_ms': self.params['acquire_timeout_ms']}
        if self.params['then_tables']:
            detail.update(then_tables=self.then_tables(), then_mode=_locker.normalize_mode(self.params['then_mode']),
                          then_after_ms=self.params['then_after_ms'])
        return [self.results_undo()], detail, dict(current, locked=detail['tables'], mode=detail['mode'],
                                                   advisory_keys=detail['advisory_keys'])

    def secret(self):
        return _pgconn.secret_conn(self.params)

    def apply(self, detail):
        started = self.start_program(ready_timeout=self.params['connect_timeout'] + 5)
        connected = self.reader.first('connected')  # written before ready
        if connected is None:
            raise ChaosError('the lock holder said ready without naming its backend')
        backend_pid = connected['backend_pid']
        # Recorded before the holder may lock: it waits for this very step.
        self.add_undo_last({'type': 'pg_terminate_backend', 'pid': backend_pid, 'application_name': self.app(),
                            'conn': _pgconn.stored_conn(self.params)})
        event = self.await_event(('locked', 'error', 'done'), detail['acquire_timeout_ms'] / 1000.0 + LOCKED_MARGIN)
        if event is None:
            raise ChaosError('the lock holder (pid %s) did not report its locks within %gs' % (
                started['pid'], detail['acquire_timeout_ms'] / 1000.0 + LOCKED_MARGIN))
        if event['event'] != 'locked':
            raise ChaosError(event.get('msg') or event.get('reason') or 'the lock holder exited without locking')
        holder = dict(started, backend_pid=backend_pid, application_name=self.app())
        done = {'holder': holder, 'locks': event['locks'], 'advisory_keys': event['advisory_keys']}
        if detail.get('then_tables'):
            done['then_lock'] = then_lock(self.reader)
        return done

    def finish(self, result):
        if self.params['state'] != 'present':
            return
        result.update(mode=_locker.normalize_mode(self.params['mode']), tables=self.tables())
        if 'holder' in result or self.module.check_mode or 'record' not in result:
            if self.module.check_mode and 'planned' in result:
                result['msg'] = 'would lock %s IN %s MODE%s%s; locked nothing' % (
                    ', '.join(self.tables()), result['mode'],
                    ' and advisory keys %s' % self.params['advisory_keys'] if self.params['advisory_keys'] else '',
                    ', then %s IN %s MODE %s ms after a session waits on them' % (
                        ', '.join(self.then_tables()), _locker.normalize_mode(self.params['then_mode']), self.params['then_after_ms'])
                    if self.params['then_tables'] else '')
            return
        self.report_held(result)

    def report_held(self, result):
        """Already in place: what the holder reported when it took its locks."""
        try:
            reader = _results.Reader(_results.path_for(self.state_ledger(), self.fid()))
        except (OSError, _results.ResultsError):
            return
        try:
            connected, locked = reader.first('connected'), reader.first('locked')
            then = then_lock(reader) if self.params['then_tables'] else None
        finally:
            reader.close()
        steps = [s for s in result.get('record', {}).get('undo') or [] if s.get('type') == 'kill_process'] or [{}]
        if locked:
            result.update(holder={'pid': steps[0].get('pid'), 'starttime': steps[0].get('starttime'),
                                  'backend_pid': (connected or {}).get('backend_pid'), 'application_name': self.app()},
                          locks=locked['locks'], advisory_keys=locked['advisory_keys'])
            if then is not None:
                result['then_lock'] = then


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        tables=dict(type='list', elements='str', default=['pggit.history', 'pggit.objects']),
        mode=dict(type='str', default='ACCESS EXCLUSIVE'),
        advisory_keys=dict(type='list', elements='int', default=[], no_log=False),
        acquire_timeout_ms=dict(type='int', default=5000),
        then_tables=dict(type='list', elements='str', default=[]),
        then_mode=dict(type='str', default='SHARE'),
        then_after_ms=dict(type='int', default=200),
    )
    chaos = ChaosModule(argument_spec)
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(LockFault)


if __name__ == '__main__':
    main()
