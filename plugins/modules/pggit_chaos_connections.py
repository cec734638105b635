#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_connections
short_description: Kill PostgreSQL backends on the target database, in rounds
version_added: 0.1.0
description:
  - Terminates N backends, or P percent of them, on the target database with
    C(pg_terminate_backend()), optionally in several rounds spread over a
    window, and returns the pids and queries it terminated.
  - Only client backends are candidates. The rounds' own connection,
    walsenders, autovacuum and other background workers are never killed
    unless O(include_walsenders) or O(include_autovacuum) say so.
  - The rounds run in a detached program on the target, C(pggit-chaos-killer),
    recorded in the fault ledger before it may terminate anything, like every
    other fault. Reverting the fault (O(state=absent), C(pggit_chaos_revert),
    the red button) or its TTL stops it, so no round starts after a revert.
    The password reaches it through the ledger's 0600 secret file, never its
    command line or environment.
  - With O(wait=true) the module waits for the last round, returns what was
    terminated and removes the record; run it with C(async) to keep the
    playbook going meanwhile.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Lists the backends the first round would terminate, and terminates none.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  count:
    description:
      - Number of backends to terminate each round, from 1 to 10000.
      - Mutually exclusive with O(percent); one of them is required with O(state=present).
    type: int
  percent:
    description:
      - Percentage of the candidate backends to terminate each round, from 1 to
        100, rounded up.
      - Mutually exclusive with O(count).
    type: int
  application_name:
    description:
      - Only backends whose C(application_name) matches this SQL C(LIKE) pattern.
      - Omit it to match every application; an empty value is refused.
    type: str
  user:
    description:
      - Only backends of this role.
      - Omit it to match every role; an empty value is refused.
    type: str
  backend_state:
    description:
      - Only backends in one of these C(pg_stat_activity.state) values.
    type: list
    elements: str
    choices: [active, idle, idle in transaction, idle in transaction (aborted), fastpath function call, disabled]
    default: []
  exclude_application_names:
    description:
      - Never terminate backends whose C(application_name) matches one of
        these C(LIKE) patterns. By default this spares the collection's own
        probes and reverts, so the experiment keeps its eyes and its brakes.
    type: list
    elements: str
    default: [pggit-chaos-probe%, pggit-chaos-revert%]
  all_databases:
    description:
      - Consider backends of every database, not only O(db).
    type: bool
    default: false
  include_walsenders:
    description:
      - Also consider walsender backends (replication connections).
    type: bool
    default: false
  include_autovacuum:
    description:
      - Also consider autovacuum workers.
    type: bool
    default: false
  order:
    description:
      - Which candidates go first.
    type: str
    default: oldest
    choices: [oldest, newest, random]
  rounds:
    description:
      - How many times to select and terminate, from 1 to 100.
    type: int
    default: 1
  interval:
    description:
      - Seconds between rounds, from 0 to 600. All rounds must fit in O(ttl).
    type: float
    default: 0
  wait:
    description:
      - V(true) waits for the last round, returns every terminated backend
        and removes the fault's record.
      - V(false) returns once the rounds have started; they end by
        themselves, or with the revert or the TTL.
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Kill half of the application's connections, three times in 30 seconds
  pggit.chaos.pggit_chaos_connections:
    name: billing-kills
    ttl: 60
    db: app
    percent: 50
    application_name: 'billing-%'
    rounds: 3
    interval: 10
  async: 90
  poll: 0
  register: kills

- name: Stop the rounds at once (what an abort does)
  pggit.chaos.pggit_chaos_connections:
    name: billing-kills
    state: absent
'''

RETURN = r'''
terminated:
  description: Backends that were terminated, per round (empty in check mode, see RV(would_terminate)).
  returned: always
  type: list
  elements: dict
  sample: [{round: 1, pid: 4242, usename: app, application_name: billing-api, state: active, backend_type: client backend,
            query: CREATE TABLE t (id int)}]
would_terminate:
  description: In check mode, the backends the first round would terminate.
  returned: check mode
  type: list
  elements: dict
candidates:
  description: Number of candidate backends seen in each round.
  returned: always
  type: list
  elements: int
rounds:
  description: Rounds run.
  returned: always
  type: int
stopped:
  description: Why the rounds ended before the last one (the record was reverted, the TTL passed), when they did.
  returned: when the rounds were stopped early
  type: str
killer:
  description: Pid and start time of the C(pggit-chaos-killer) program.
  returned: when the rounds were started
  type: dict
fault_id:
  description: Ledger id of the fault, C(connections--<name>).
  returned: always
  type: str
'''

from ansible_collections.pggit.chaos.plugins.module_utils import _killer, _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, connect_or_fail, exec_sql
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import postgres_argument_spec

RANGES = (('count', 1, 10000), ('percent', 1, 100), ('rounds', 1, 100), ('interval', 0, 600, ' seconds'))
SELECT_KEYS = ('count', 'percent', 'application_name', 'user', 'backend_state', 'exclude_application_names', 'all_databases',
               'include_walsenders', 'include_autovacuum', 'order')
# How long after the last round the module keeps waiting for the program to report.
WAIT_MARGIN = 30.0


def filter_problem(params):
    """An empty filter would silently mean 'no filter': refuse it, naming the option."""
    for option, what in (('application_name', 'application'), ('user', 'role')):
        value = params.get(option)
        if value is not None and not value.strip():
            return "%s must not be empty, got '%s'; omit it to match every %s" % (option, value, what)
    return None


def window_problem(params):
    span = (params['rounds'] - 1) * params['interval']
    if span >= params['ttl']:
        return ('the kill rounds last (rounds - 1) x interval = %gs, which does not fit in ttl=%ss; '
                'raise ttl or shorten the rounds' % (span, params['ttl']))
    return None


def check_options(module):
    """Refuse bad options of state=present, naming the option and the value."""
    fail_on_ranges(module, RANGES)
    for problem in (filter_problem(module.params), window_problem(module.params)):
        if problem:
            module.fail_json(msg=problem, changed=False)
    check_postgres_params(module)


class ConnectionsFault(BackgroundFault):
    kind = 'connections'
    volatile_options = ('wait',)
    program = _killer.PROC_TAG

    def __init__(self, module):
        super(ConnectionsFault, self).__init__(module)
        self.victims = []

    def validate(self):
        check_options(self.module)

    def selection(self):
        return dict((k, self.params[k]) for k in SELECT_KEYS)

    def observe(self):
        """The candidates of a first round now (what check mode reports)."""
        conn = connect_or_fail(self.module, application_name='pggit-chaos-connections')
        try:
            query, args = _killer.build_query(self.selection())
            rows = exec_sql(self.module, conn, query, args, what='listing the candidate backends').fetchall()
        finally:
            conn.close()
        self.victims = [_killer.as_victim(row, 1) for row in _killer.choose(rows, self.selection())]
        return {'candidates': len(rows), 'killer': 'not running'}

    def in_place(self, record, current):
        return self.program_in_place(record)

    def plan(self, current):
        detail = {'conn': _pgconn.stored_conn(self.params), 'select': self.selection(),
                  'rounds': self.params['rounds'], 'interval': self.params['interval']}
        return [self.results_undo()], detail, dict(current, killer='running')

    def secret(self):
        return _pgconn.secret_conn(self.params)

    def apply(self, detail):
        return {'killer': self.start_program(ready_timeout=self.params['connect_timeout'] + 5)}

    def finish(self, result):
        result.setdefault('terminated', [])
        result.setdefault('candidates', [])
        result.setdefault('rounds', 0)
        if self.params['state'] != 'present' or 'planned' not in result:
            return
        if self.module.check_mode:
            result.update(would_terminate=self.victims, candidates=[result['current']['candidates']],
                          changed=bool(self.victims),
                          msg='would terminate %d of %d candidate backend(s) in the first of %d round(s); terminated none'
                              % (len(self.victims), result['current']['candidates'], self.params['rounds']))
            return
        if not self.params['wait']:
            result['msg'] = ('started %d kill round(s), %gs apart (pggit-chaos-killer pid %s); they stop with the revert '
                             'or the TTL' % (self.params['rounds'], self.params['interval'], self.started['pid']))
            return
        span = (self.params['rounds'] - 1) * self.params['interval']
        events, running = self.wait(min(span, self.params['ttl']) + WAIT_MARGIN)
        self.summarize(events, result)
        if running:
            result['msg'] = ('the kill rounds are still running after %gs; they stop with the revert or the TTL: '
                             'terminated %d backend(s) so far' % (span + WAIT_MARGIN, len(result['terminated'])))
            return
        done = next((e for e in events if e.get('event') in ('done', 'error')), None)
        if done is not None:  # it ended by itself: nothing is left to undo
            result['closed'] = self.close_record()
        if done is not None and done['event'] == 'error':
            raise ChaosError(done.get('msg'))
        if done is None or done.get('reason') != 'rounds done':
            result['stopped'] = (done or {}).get('reason') or 'the program was stopped (revert or TTL)'
        result['changed'] = bool(result['terminated'])
        result['msg'] = 'terminated %d backend(s) in %d round(s)%s' % (
            len(result['terminated']), result['rounds'], '; stopped early: %s' % result['stopped'] if 'stopped' in result else '')

    @staticmethod
    def summarize(events, result):
        result['terminated'] = [dict((k, v) for k, v in e.items() if k not in ('event', 'at'))
                                for e in events if e.get('event') == 'terminated']
        rounds = [e for e in events if e.get('event') == 'round']
        result['candidates'] = [e.get('candidates') for e in rounds]
        result['rounds'] = len(rounds)
        errors = [e for e in events if e.get('event') == 'round_error' or (e.get('event') == 'round' and e.get('error'))]
        if errors:
            result['round_errors'] = ['round %s: %s' % (e.get('round'), e.get('error')) for e in errors]


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        count=dict(type='int'),
        percent=dict(type='int'),
        application_name=dict(type='str'),
        user=dict(type='str'),
        exclude_application_names=dict(type='list', elements='str', default=['pggit-chaos-probe%', 'pggit-chaos-revert%']),
        backend_state=dict(type='list', elements='str', default=[],
                           choices=['active', 'idle', 'idle in transaction', 'idle in transaction (aborted)',
                                    'fastpath function call', 'disabled']),
        all_databases=dict(type='bool', default=False),
        include_walsenders=dict(type='bool', default=False),
        include_autovacuum=dict(type='bool', default=False),
        order=dict(type='str', default='oldest', choices=['oldest', 'newest', 'random']),
        rounds=dict(type='int', default=1),
        interval=dict(type='float', default=0),
        wait=dict(type='bool', default=True),
    )
    chaos = ChaosModule(argument_spec, mutually_exclusive=[('count', 'percent')],
                        required_if=[('state', 'present', ('count', 'percent'), True)])
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(ConnectionsFault)


if __name__ == '__main__':
    main()
