#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_sessions
short_description: Fill max_connections with idle sessions held by a ledger-recorded program
version_added: 0.1.0
description:
  - Opens idle sessions to the target server until the non-reserved slots of
    C(max_connections) are full, and keeps them full for the fault's life, so
    that new clients are refused with C(too many connections) while the
    C(superuser_reserved_connections) stay free for superuser probes.
  - The sessions are held by a detached program on the target,
    C(pggit-chaos-holder), recorded in the fault ledger before it opens any
    session. Reverting the fault (O(state=absent), C(pggit_chaos_revert),
    the red button) or its TTL stops it, and every session it held ends with
    it (they are its sockets), even when it is killed.
  - The holder connects as O(role), a role without superuser that the
    module creates and marks with the comment C(pggit.chaos sessions role). A
    role of that name without the mark is never used nor changed.
  - The role may log in only inside the life of a fault of ours that uses it.
    The fault's record holds an undo step, written before the role may log
    in, that sets the role C(NOLOGIN) and drops its password again; the
    revert and the TTL reaper run it once no other fault in the ledger still
    uses the role, and it also ends every session still logged in as the role
    (C(NOLOGIN) only refuses new logins). The role itself stays (the workload
    may have granted it privileges) and the next run gives it the login back.
  - The connection options (O(login_user) and the rest) are the administrator
    connection that reads the slots and creates the role; the holder uses the
    same server and database as O(role).
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Reads the slots and returns how many sessions would be held; creates nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  count:
    description:
      - Number of idle sessions to hold, from 1 to 5000.
      - Omit it to fill every non-reserved slot, then take each slot another
        client frees while the fault lasts.
    type: int
  role:
    description:
      - The role the holder connects as, 1 to 63 characters of C(a-z),
        C(0-9) and C(_), not starting with a digit; C(pg_*), C(postgres) and
        C(public) are refused.
    type: str
    default: pggit_chaos_client
  role_password:
    description:
      - Password set on O(role) and used by the holder, for servers that do
        not trust local connections. It reaches the holder through the
        ledger's 0600 secret file, never its command line or the record.
    type: str
  hold:
    description:
      - V(false) starts no holder; it records a fault whose only effect is
        that O(role) exists (created and marked by us, or already ours) and
        may log in, with O(role_password) if given, until that fault is
        reverted or its TTL ends. This is what clients that connect as
        O(role) need before the fault; give it a O(name) of its own.
      - C(changed) is true when the role was created, or its login or its
        password was set; a second call inside the fault's life changes
        nothing.
    type: bool
    default: true
  fill_timeout:
    description:
      - Seconds to wait for the holder to report the slots it holds, from 1 to 600.
    type: float
    default: 30
'''

EXAMPLES = r'''
- name: Fill the non-reserved connection slots for a minute
  pggit.chaos.pggit_chaos_sessions:
    name: exhaust
    ttl: 60
    db: app
  register: exhaust

- name: Free them at once
  pggit.chaos.pggit_chaos_sessions:
    name: exhaust
    state: absent
'''

RETURN = r'''
slots:
  description:
    - The server's slots when the fault was planned. C(target) is what the
      holder may hold, C(would_hold) what is free for it now.
  returned: with state=present
  type: dict
  sample: {max_connections: 100, superuser_reserved_connections: 3, client_backends: 4, free_slots: 93, target: 97, would_hold: 93}
held:
  description: Idle sessions the holder holds once it filled the slots (0 in check mode and with O(hold=false)).
  returned: with state=present
  type: int
sessions_after_fill:
  description:
    - The holder's sessions that C(pg_stat_activity) showed right after the
      fill, read apart from the holder (null when it could not be read).
    - It is read when the module returns, at the start of the window, not
      during it; the refused DDL clients are the evidence of the window.
  returned: when the holder was started
  type: int
refusal:
  description: The server's message when it refused the holder one more session (the slots are full), if it did.
  returned: when the holder was refused
  type: str
holder:
  description: Pid and start time of the C(pggit-chaos-holder) program, its role and C(application_name).
  returned: when the holder was started
  type: dict
role:
  description:
    - The role the holder connects as, and whether it was C(created),
      C(altered) (its login or password set) or C(kept) as it was.
  returned: with state=present
  type: dict
fault_id:
  description: Ledger id of the fault, C(sessions--<name>).
  returned: always
  type: str
'''


from ansible_collections.pggit.chaos.plugins.module_utils import _holder, _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, connect_or_fail, exec_sql
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import postgres_argument_spec

RANGES = (('fill_timeout', 1, 600, ' seconds'),)


def option_problem(params):
    """Why the options cannot work (checked before anything connects), naming the option and the value; or None."""
    return _holder.role_problem(params['role']) or _holder.count_problem(params['count'])


def check_options(module):
    fail_on_ranges(module, RANGES)
    problem = option_problem(module.params)
    if problem:
        module.fail_json(msg=problem, changed=False)
    if module.params['role'] == module.params.get('login_user'):
        module.fail_json(msg="role must not be login_user (%r): the holder's role is a non-superuser of its own, the "
                             "probes' login_user keeps the reserved slots" % module.params['role'], changed=False)
    check_postgres_params(module)


class SessionsFault(BackgroundFault):
    kind = 'sessions'
    volatile_options = ('fill_timeout',)
    program = _holder.PROC_TAG

    def __init__(self, module):
        super(SessionsFault, self).__init__(module)
        self.slots = None

    def validate(self):
        check_options(self.module)

    def app(self):
        return _holder.application_name(self.fid())

    def observe(self):
        """The role's state (refused at once when it is not ours), and with hold the slots and the holder's sessions."""
        role, password = self.params['role'], self.params['role_password']
        conn = connect_or_fail(self.module, application_name='pggit-chaos-sessions')
        try:
            cur = conn.cursor()
            row = exec_sql(self.module, cur, _holder.ROLE_SQL, (role,), what='looking up the role', option='role').fetchone()
            problem = _holder.role_refusal(role, row)
            if problem:
                raise ChaosError('role: %s' % problem)
            current = {'role_exists': row is not None, 'role_can_login': bool(row and row[2])}
            if password:
                current['role_password_set'] = bool(row) and _holder.password_matches(cur, role, password)
            if self.params['hold']:
                slots = exec_sql(self.module, cur, _holder.SLOTS_SQL, what='reading the connection slots').fetchone()
                held = exec_sql(self.module, cur, _holder.HELD_SQL, (self.app(),), what="counting the holder's sessions").fetchone()[0]
                self.slots = _holder.plan_sessions(slots[0], slots[1], slots[2], self.params['count'])
                current.update(held_sessions=int(held), free_slots=self.slots['free_slots'])
        finally:
            conn.close()
        return current

    def in_place(self, record, current):
        # The record's undo covers the role it names, and only that one: asked for another role, it is injected again.
        if (record.get('detail') or {}).get('role') != self.params['role']:
            return False
        if not self.params['hold']:
            return current['role_can_login'] and current.get('role_password_set') is not False
        return self.program_in_place(record)

    def role_undo(self):
        """Written before the role may log in: the revert and the TTL reaper take the login away again."""
        return _holder.nologin_step(self.fid(), self.params['role'], _pgconn.stored_conn(self.params))

    def plan(self, current):
        after = dict(current, role_exists=True, role_can_login=True)
        if 'role_password_set' in after:
            after['role_password_set'] = True
        if not self.params['hold']:
            return [self.role_undo()], {'role': self.params['role'], 'hold': False}, after
        detail = {'conn': _holder.holder_conn(self.params, self.params['role']), 'role': self.params['role'],
                  'target': self.slots['target'], 'slots': self.slots}
        return [self.results_undo(), self.role_undo()], detail, dict(after, held_sessions=self.slots['would_hold'])

    def secret(self):
        """The holder's password (its connection), and the administrator's secret for the role's undo step."""
        secret = {'login_password': self.params['role_password']} if self.params['role_password'] and self.params['hold'] else {}
        admin = _pgconn.secret_conn(self.params)
        if admin:
            secret[_holder.ADMIN_SECRET] = admin
        return secret

    def ensure_role(self):
        conn = connect_or_fail(self.module, application_name='pggit-chaos-sessions', autocommit=True)
        try:
            return _holder.ensure_role(conn.cursor(), self.params['role'], self.params['role_password'])
        except ValueError as exc:
            raise ChaosError('role: %s' % exc)
        except _pgconn.psycopg2.Error as exc:
            raise ChaosError('making sure role %s exists and may log in failed (option role=%r): %s'
                             % (self.params['role'], self.params['role'], _pgconn.one_line(exc)))
        finally:
            conn.close()

    def apply(self, detail):
        role = self.ensure_role()
        if not self.params['hold']:
            return {'held': 0, 'role': {'name': self.params['role'], 'state': role}}
        started = self.start_program(ready_timeout=self.params['connect_timeout'] + 5)
        event = self.await_event(('filled', 'error', 'done'), self.params['fill_timeout'])
        if event is None:
            raise ChaosError('the session holder (pid %s) did not report its sessions within fill_timeout=%gs'
                             % (started['pid'], self.params['fill_timeout']))
        if event['event'] != 'filled':
            raise ChaosError(event.get('msg') or event.get('reason') or 'the session holder exited without holding')
        return {'held': event['held'], 'refusal': event.get('refusal'), 'fill_seconds': event.get('seconds'),
                'sessions_after_fill': self.sessions_after_fill(),
                'role': {'name': self.params['role'], 'state': role},
                'holder': dict(started, application_name=self.app(), role=self.params['role'])}

    def sessions_after_fill(self):
        """The holder's sessions as pg_stat_activity shows them right after the fill (when the module returns, not
        during the window), read apart from the holder; None when it cannot be read: the fault stays."""
        try:
            conn = _pgconn.connect(self.params, application_name='pggit-chaos-sessions', autocommit=True)
        except _pgconn.psycopg2.Error:
            return None
        try:
            cur = conn.cursor()
            cur.execute(_holder.HELD_SQL, (self.app(),))
            return int(cur.fetchone()[0])
        except _pgconn.psycopg2.Error:
            return None
        finally:
            conn.close()

    def planned_role_state(self, current):
        if not current.get('role_exists'):
            return 'would be created'
        if not current.get('role_can_login') or current.get('role_password_set') is False:
            return 'would be altered'
        return 'kept'

    def finish(self, result):
        if self.params['state'] != 'present':
            return
        if self.slots is not None:
            result['slots'] = self.slots
        result.setdefault('held', 0)
        current = result.get('current') or {}
        if self.module.check_mode and 'planned' in result:
            result['role'] = {'name': self.params['role'], 'state': self.planned_role_state(current)}
        result.setdefault('role', {'name': self.params['role'], 'state': 'kept'})
        role = self.params['role']
        if not self.params['hold']:
            if self.module.check_mode and 'planned' in result:
                result['msg'] = ('role %s %s and may log in until the fault is reverted (hold=false: no holder)'
                                 % (role, result['role']['state']))
            elif 'record' in result and 'planned' in result:
                result['msg'] = ('role %s %s; it may log in until fault %s is reverted or expires (hold=false: no '
                                 'holder), then it is NOLOGIN again' % (role, result['role']['state'], result['fault_id']))
            return
        if self.module.check_mode and 'planned' in result:
            result['msg'] = ('would hold up to %d idle session(s) as role %s (%d non-reserved slot(s) free now of '
                             'max_connections=%d, superuser_reserved_connections=%d kept for superusers); held none'
                             % (self.slots['target'], role, self.slots['free_slots'],
                                self.slots['max_connections'], self.slots['superuser_reserved_connections']))
        elif 'holder' in result:
            refused = '; the server refused more: %s' % result['refusal'] if result.get('refusal') else ''
            result['msg'] = ('holding %d idle session(s) as role %s (pggit-chaos-holder pid %s)%s; they end, and the role '
                             'loses its login, with the revert or the TTL' % (result['held'], role, result['holder']['pid'], refused))
        elif 'current' in result:
            result['held'] = current.get('held_sessions', 0)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        count=dict(type='int'),
        role=dict(type='str', default='pggit_chaos_client'),
        role_password=dict(type='str', no_log=True),
        fill_timeout=dict(type='float', default=30),
        hold=dict(type='bool', default=True),
    )
    chaos = ChaosModule(argument_spec)
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(SessionsFault)


if __name__ == '__main__':
    main()
