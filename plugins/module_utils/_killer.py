# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-killer``: the kill rounds of ``pggit_chaos_connections``, as a ledger-recorded program.

The module writes the fault's record (connection without secrets, the
selection, rounds and interval), then starts this program.  It connects
(password from the record's 0600 secret side file, never argv or the
environment), reports ``ready``, and waits until the record holds the
``kill_process`` undo naming its own pid before it terminates anything.
Each round selects candidate backends again and terminates the chosen ones,
reporting every terminated backend to the results file at once.

It stops after its last round, as soon as its record is gone, and at
``expires_at`` plus a grace (a backstop: the TTL reaper stops it at
``expires_at``).  SIGTERM (the revert, the reaper) ends it at once, with the
default action, so no round starts after a revert.
"""
from __future__ import annotations

import math
import random
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _program

PROC_TAG = 'pggit-chaos-killer'
APP = 'pggit-chaos-killer'
BACKEND_TYPES = {'client backend'}
KEYS = ('pid', 'usename', 'application_name', 'state', 'backend_type', 'query')
STEP = 0.1


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
    if params['application_name'] is not None:
        where.append('application_name LIKE %s')
        args.append(params['application_name'])
    if params['user'] is not None:
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


def as_victim(row, number):
    victim = dict(zip(KEYS, row))
    victim['round'] = number
    return victim


class Killer(object):
    """The rounds, with the database, the clock and the stop condition passed in (unit-testable)."""

    def __init__(self, spec, connect, out, should_stop, clock=time.time, sleep=time.sleep, rng=None):
        self.spec = spec
        self.connect = connect
        self.out = out
        self.should_stop = should_stop
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.conn = None
        self.query, self.args = build_query(spec['select'])

    def _pause(self, seconds):
        """Sleep between rounds in small steps; True when told to stop meanwhile."""
        end = self.clock() + seconds
        while True:
            reason = self.should_stop()
            if reason:
                return reason
            left = end - self.clock()
            if left <= 0:
                return None
            self.sleep(min(STEP, left))

    def _cursor(self):
        if self.conn is None or self.conn.closed:
            self.conn = self.connect()
        return self.conn.cursor()

    def _drop(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self.conn = None

    def one_round(self, number):
        try:
            cur = self._cursor()
            cur.execute(self.query, self.args)
            rows = cur.fetchall()
        except _pgconn.psycopg2.Error as exc:
            self._drop()
            self.out.write('round', round=number, candidates=None, error=_pgconn.one_line(exc))
            return
        victims = choose(rows, self.spec['select'], self.rng)
        self.out.write('round', round=number, candidates=len(rows), chosen=len(victims))
        for row in victims:
            try:
                cur.execute('SELECT pg_terminate_backend(%s)', (row[0],))
                done = cur.fetchone()[0]
            except _pgconn.psycopg2.Error as exc:
                self._drop()
                self.out.write('round_error', round=number, pid=row[0], error=_pgconn.one_line(exc))
                return
            if done:
                self.out.write('terminated', **as_victim(row, number))

    def run(self):
        """Run the rounds; return (rounds started, why it stopped)."""
        started = 0
        reason = 'rounds done'
        for number in range(1, self.spec['rounds'] + 1):
            why = self._pause(self.spec['interval'] if number > 1 else 0)
            if why:
                reason = why
                break
            started = number
            self.one_round(number)
        self._drop()
        return started, reason


def kill_rounds(program):
    """The program's body: connect, pass the gate, run the rounds, report."""
    spec = program.detail
    params = program.conn_params()

    def connect():
        return _pgconn.connect(params, application_name=APP)

    try:
        first = connect()
    except Exception as exc:  # pylint: disable=broad-except
        program.out.write('error', msg='kill rounds could not connect to %s: %s' % (_pgconn.describe(params), _pgconn.one_line(exc)))
        return 1
    if not program.recorded():
        first.close()
        program.out.write('done', rounds=0, reason='never recorded in the ledger; terminated nothing')
        program.log('never recorded in the ledger; exiting without killing')
        return 1
    killer = Killer(spec, connect, program.out, program.stop_condition())
    killer.conn = first
    try:
        rounds, reason = killer.run()
    except Exception as exc:  # pylint: disable=broad-except
        program.out.write('error', msg='kill rounds failed: %s: %s' % (exc.__class__.__name__, exc))
        raise
    program.out.write('done', rounds=rounds, reason=reason)
    program.log('%d round(s), %s' % (rounds, reason))
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, kill_rounds, argv)
