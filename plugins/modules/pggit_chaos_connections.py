#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_connections
short_description: Kill PostgreSQL backends on the target database
version_added: 0.1.0
description:
  - Terminates N backends, or P percent of them, on the target database with
    C(pg_terminate_backend()), optionally in several rounds spread over a
    window, and returns the pids and queries it terminated.
  - Only client backends are candidates. The module's own connection,
    walsenders, autovacuum and other background workers are never killed
    unless O(include_walsenders) or O(include_autovacuum) say so.
  - Killing a connection cannot be undone, so this fault writes no ledger
    record; it is bounded by O(rounds) and O(interval) instead.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
attributes:
  check_mode:
    support: full
    details: Lists the backends the first round would terminate.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  count:
    description:
      - Number of backends to terminate each round, from 1 to 10000.
      - Mutually exclusive with O(percent).
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
    type: str
  user:
    description:
      - Only backends of this role.
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
      - Seconds between rounds, from 0 to 600.
    type: float
    default: 0
'''

EXAMPLES = r'''
- name: Kill half of the application's connections, three times in 30 seconds
  pggit.chaos.pggit_chaos_connections:
    db: app
    percent: 50
    application_name: 'billing-%'
    rounds: 3
    interval: 10
'''

RETURN = r'''
terminated:
  description: Backends that were terminated, per round.
  returned: always
  type: list
  elements: dict
  sample: [{round: 1, pid: 4242, usename: app, application_name: billing-api, state: active, backend_type: client backend,
            query: CREATE TABLE t (id int)}]
candidates:
  description: Number of candidate backends seen in each round.
  returned: always
  type: list
  elements: int
rounds:
  description: Rounds run.
  returned: always
  type: int
'''

import math
import random
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

BACKEND_TYPES = {'client backend'}


def build_query(params):
    """The candidate query and its parameters (values never formatted in)."""
    types = set(BACKEND_TYPES)
    if params['include_walsenders']:
        types.add('walsender')
    if params['include_autovacuum']:
        types.add('autovacuum worker')
    where = ['pid <> pg_backend_pid()', 'backend_type = ANY(%s)']
    args = [sorted(types)]
    if not params['all_databases']:
        where.append('(datname = current_database() OR backend_type = %s)')
        args.append('walsender')
    for pattern in params['exclude_application_names']:
        where.append('application_name NOT LIKE %s')
        args.append(pattern)
    if params['application_name']:
        where.append('application_name LIKE %s')
        args.append(params['application_name'])
    if params['user']:
        where.append('usename = %s')
        args.append(params['user'])
    if params['backend_state']:
        where.append('state = ANY(%s)')
        args.append(params['backend_state'])
    query = ('SELECT pid, usename, application_name, state, backend_type, left(query, 200) '
             'FROM pg_stat_activity WHERE ' + ' AND '.join(where) + ' ORDER BY backend_start, pid')
    return query, args


def choose(rows, params, rng=random):
    """Pick the victims among candidate rows."""
    rows = list(rows)
    if params['order'] == 'newest':
        rows.reverse()
    elif params['order'] == 'random':
        rng.shuffle(rows)
    if params['percent'] is not None:
        want = int(math.ceil(len(rows) * params['percent'] / 100.0))
    else:
        want = params['count']
    return rows[:want]


RANGES = (('count', 1, 10000), ('percent', 1, 100), ('rounds', 1, 100), ('interval', 0, 600, ' seconds'))


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
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('count', 'percent')], required_one_of=[('count', 'percent')])
    fail_on_ranges(module, RANGES)
    conn = connect_or_fail(module, application_name='pggit-chaos-connections')
    query, args = build_query(module.params)
    result = dict(changed=False, terminated=[], candidates=[], rounds=0)
    cur = conn.cursor()
    keys = ('pid', 'usename', 'application_name', 'state', 'backend_type', 'query')
    for number in range(1, module.params['rounds'] + 1):
        if number > 1 and module.params['interval']:
            time.sleep(module.params['interval'])
        cur.execute(query, args)
        rows = cur.fetchall()
        result['candidates'].append(len(rows))
        victims = choose(rows, module.params)
        result['rounds'] = number
        if module.check_mode:
            result['terminated'] = [dict(zip(keys, v), round=number, would=True) for v in victims]
            result['changed'] = bool(victims)
            break
        for victim in victims:
            try:
                cur.execute('SELECT pg_terminate_backend(%s)', (victim[0],))
                done = cur.fetchone()[0]
            except _pgconn.psycopg2.Error as exc:
                module.fail_json(msg='terminating pid %s failed: %s' % (victim[0], _pgconn.one_line(exc)), **result)
            if done:
                result['terminated'].append(dict(zip(keys, victim), round=number))
    conn.close()
    result['changed'] = result['changed'] or bool(result['terminated'])
    result['msg'] = 'terminated %d backend(s) in %d round(s)' % (len(result['terminated']), result['rounds'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
