from __future__ import annotations

import random

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _killer, _pgconn
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_connections as mod

DEFAULTS = dict(include_walsenders=False, include_autovacuum=False, all_databases=False,
                exclude_application_names=['pggit-chaos-probe%', 'pggit-chaos-revert%'],
                application_name=None, user=None, backend_state=[], order='oldest', count=None, percent=None)
HOSTILE = "x'; DROP TABLE t; --"


@pytest.fixture
def no_database(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError('the module connected to PostgreSQL')
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', refuse)
    return str(tmp_path / 'state')


@pytest.mark.parametrize('options, fragments, args', [
    ({}, ['pid <> pg_backend_pid()', 'backend_type = ANY(%s)', '(datname = current_database() OR backend_type = %s)',
          'application_name NOT LIKE %s AND application_name NOT LIKE %s', 'ORDER BY backend_start, pid'],
     [['client backend'], 'walsender', 'pggit-chaos-probe%', 'pggit-chaos-revert%']),
    ({'all_databases': True, 'exclude_application_names': []}, ['WHERE pid <> pg_backend_pid() AND backend_type = ANY(%s) ORDER'],
     [['client backend']]),
    ({'include_walsenders': True, 'include_autovacuum': True, 'all_databases': True, 'exclude_application_names': []}, [],
     [['autovacuum worker', 'client backend', 'walsender']]),
    ({'application_name': 'billing-%', 'exclude_application_names': []}, ['application_name LIKE %s'],
     [['client backend'], 'walsender', 'billing-%']),
    ({'user': HOSTILE, 'all_databases': True, 'exclude_application_names': [HOSTILE]},
     ['application_name NOT LIKE %s', 'usename = %s'], [['client backend'], HOSTILE, HOSTILE]),
    ({'backend_state': ['idle', 'idle in transaction'], 'all_databases': True, 'exclude_application_names': []},
     ['state = ANY(%s)'], [['client backend'], ['idle', 'idle in transaction']]),
])
def test_build_query(options, fragments, args):
    query, got = _killer.build_query(dict(DEFAULTS, **options))
    for fragment in fragments:
        assert fragment in query
    assert got == args
    assert query.count('%s') == len(got)  # every value is a parameter
    for value in got:
        for text in (value if isinstance(value, list) else [value]):
            assert text not in query
    assert query.startswith('SELECT pid, usename, application_name, state, backend_type, left(query, 200) FROM pg_stat_activity')


def test_build_query_leaves_the_params_alone():
    params = dict(DEFAULTS)
    _killer.build_query(params)
    _killer.build_query(params)
    assert params == DEFAULTS


ROWS = [(pid,) for pid in (101, 102, 103, 104, 105)]


@pytest.mark.parametrize('options, victims', [
    ({'count': 2}, [101, 102]),
    ({'count': 2, 'order': 'newest'}, [105, 104]),
    ({'count': 50}, [101, 102, 103, 104, 105]),
    ({'percent': 50}, [101, 102, 103]),  # 2.5 rounds up
    ({'percent': 1}, [101]),
    ({'percent': 40}, [101, 102]),
    ({'percent': 100, 'order': 'newest'}, [105, 104, 103, 102, 101]),
])
def test_choose(options, victims):
    rows = list(ROWS)
    assert [r[0] for r in _killer.choose(rows, dict(DEFAULTS, **options))] == victims
    assert rows == ROWS  # candidates are not reordered in place


@pytest.mark.parametrize('rows', [[], ROWS[:1]])
def test_choose_from_few_candidates(rows):
    assert _killer.choose(rows, dict(DEFAULTS, percent=50)) == rows


def test_choose_random_is_the_seeded_shuffle():
    expected = list(ROWS)
    random.Random(7).shuffle(expected)
    chosen = _killer.choose(ROWS, dict(DEFAULTS, count=3, order='random'), rng=random.Random(7))
    assert chosen == expected[:3]
    assert chosen != list(ROWS[:3])  # seed 7 really reorders


# -- the rounds, with a fake database and clock ------------------------------------------
class FakeCursor(object):
    def __init__(self, db):
        self.db = db
        self.last = None

    def execute(self, query, args=None):
        self.db.statements.append((query, args))
        if query.startswith('SELECT pg_terminate_backend'):
            self.last = [(self.db.terminate(args[0]),)]
        else:
            self.last = [(pid, 'app', 'victim', 'idle', 'client backend', 'SELECT 1') for pid in sorted(self.db.alive)]

    def fetchall(self):
        return self.last

    def fetchone(self):
        return self.last[0]


class FakeDb(object):
    """Backends that come back with a new pid when killed, as a pool would."""

    def __init__(self, pids):
        self.alive = set(pids)
        self.next_pid = max(pids) + 1
        self.statements = []
        self.closed = False

    def terminate(self, pid):
        if pid not in self.alive:
            return False
        self.alive.discard(pid)
        self.alive.add(self.next_pid)
        self.next_pid += 1
        return True

    def cursor(self):
        return FakeCursor(self)

    def close(self):
        self.closed = True


class Out(object):
    def __init__(self):
        self.events = []

    def write(self, event, **data):
        self.events.append(dict(data, event=event))


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def killer(db, out, clock, stop, rounds=3, interval=10.0, **select):
    spec = {'select': dict(DEFAULTS, **dict({'count': 1}, **select)), 'rounds': rounds, 'interval': interval}
    return _killer.Killer(spec, lambda: db, out, stop, clock=clock, sleep=clock.sleep, rng=random.Random(1))


def test_rounds_select_again_each_time_and_report_every_kill():
    db, out, clock = FakeDb([11, 12, 13]), Out(), Clock()
    rounds, reason = killer(db, out, clock, lambda: None, rounds=3, interval=10.0).run()
    assert (rounds, reason) == (3, 'rounds done')
    terminated = [(e['round'], e['pid']) for e in out.events if e['event'] == 'terminated']
    assert terminated == [(1, 11), (2, 12), (3, 13)], 'oldest first, selected again every round'
    assert [e['candidates'] for e in out.events if e['event'] == 'round'] == [3, 3, 3]
    assert clock.now == 1020.0, 'two intervals between three rounds'
    assert db.closed


def test_a_stop_between_rounds_means_no_later_round_runs():
    db, out, clock = FakeDb([11, 12, 13]), Out(), Clock()
    stop_at = 1005.0
    rounds, reason = killer(db, out, clock, lambda: 'record gone' if clock() >= stop_at else None, rounds=5).run()
    assert (rounds, reason) == (1, 'record gone')
    assert [e['pid'] for e in out.events if e['event'] == 'terminated'] == [11]
    assert not [q for q, _a in db.statements[2:] if q.startswith('SELECT pg_terminate_backend')]


def test_stopped_before_the_first_round_kills_nothing():
    db, out, clock = FakeDb([11]), Out(), Clock()
    assert killer(db, out, clock, lambda: 'past expires_at').run() == (0, 'past expires_at')
    assert out.events == [] and db.statements == []


# -- the module refuses bad input before it connects or writes anything ------------------
@pytest.mark.parametrize('args, msg', [
    ({'count': 0}, 'count must be between 1 and 10000, got 0'),
    ({'count': 10001}, 'count must be between 1 and 10000, got 10001'),
    ({'percent': 0}, 'percent must be between 1 and 100, got 0'),
    ({'percent': 101}, 'percent must be between 1 and 100, got 101'),
    ({'count': 1, 'percent': 50}, 'parameters are mutually exclusive: count|percent'),
    ({}, 'state is present but any of the following are missing: count, percent'),
    ({'count': 1, 'rounds': 0}, 'rounds must be between 1 and 100, got 0'),
    ({'count': 1, 'interval': 601}, 'interval must be between 0 and 600 seconds, got 601'),
    ({'count': 1, 'order': 'youngest'}, 'value of order must be one of: oldest, newest, random, got: youngest'),
    ({'count': 1, 'backend_state': ['sleeping']}, 'value of backend_state must be one or more of'),
    ({'count': 1, 'login_port': 0}, 'login_port must be between 1 and 65535, got 0'),
    ({'count': 1, 'application_name': ''}, "application_name must not be empty, got ''; omit it to match every application"),
    ({'count': 1, 'application_name': '  '}, "application_name must not be empty, got '  '"),
    ({'count': 1, 'user': ''}, "user must not be empty, got ''; omit it to match every role"),
    ({'count': 1, 'rounds': 4, 'interval': 100}, 'the kill rounds last (rounds - 1) x interval = 300s, which does not fit in ttl=300s'),
    ({'count': 1, 'ttl': 2}, 'ttl must be between 5 and 86400 seconds, got 2'),
])
def test_bad_arguments_fail_before_connecting(no_database, args, msg):
    result, failed = run_module(mod.main, dict(args, name='kills', state_dir=no_database))
    assert failed
    assert msg in result['msg']
    assert result.get('changed') is not True


def test_revert_needs_no_count(no_database):
    result, failed = run_module(mod.main, dict(name='kills', state='absent', state_dir=no_database))
    assert not failed and result['changed'] is False and result['terminated'] == []


@pytest.mark.parametrize('params, problem', [
    ({'application_name': None, 'user': None}, None),
    ({'application_name': 'app%', 'user': 'bob'}, None),
    ({'application_name': '', 'user': None}, "application_name must not be empty, got ''; omit it to match every application"),
    ({'application_name': None, 'user': ' '}, "user must not be empty, got ' '; omit it to match every role"),
])
def test_filter_problem(params, problem):
    assert mod.filter_problem(params) == problem


@pytest.mark.parametrize('rounds, interval, ttl, fits', [(1, 600, 5, True), (3, 10, 21, True), (3, 10, 20, False), (100, 1, 60, False)])
def test_window_problem(rounds, interval, ttl, fits):
    assert (mod.window_problem(dict(rounds=rounds, interval=interval, ttl=ttl)) is None) == fits


def test_summarize_reads_the_program_events():
    events = [{'event': 'ready'}, {'event': 'round', 'round': 1, 'candidates': 3, 'chosen': 1},
              {'event': 'terminated', 'round': 1, 'pid': 7, 'at': 1.0, 'usename': 'u'},
              {'event': 'round', 'round': 2, 'candidates': None, 'error': 'server closed'},
              {'event': 'done', 'rounds': 2, 'reason': 'rounds done'}]
    result = {}
    mod.ConnectionsFault.summarize(events, result)
    assert result == {'terminated': [{'round': 1, 'pid': 7, 'usename': 'u'}], 'candidates': [3, None], 'rounds': 2,
                      'round_errors': ['round 2: server closed']}
