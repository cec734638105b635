from __future__ import annotations

import random

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_connections as mod

DEFAULTS = dict(include_walsenders=False, include_autovacuum=False, all_databases=False,
                exclude_application_names=['pggit-chaos-probe%', 'pggit-chaos-revert%'],
                application_name=None, user=None, backend_state=[], order='oldest', count=None, percent=None)
HOSTILE = "x'; DROP TABLE t; --"


@pytest.fixture
def no_database(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the module connected to PostgreSQL')
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', refuse)


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
    query, got = mod.build_query(dict(DEFAULTS, **options))
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
    mod.build_query(params)
    mod.build_query(params)
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
    assert [r[0] for r in mod.choose(rows, dict(DEFAULTS, **options))] == victims
    assert rows == ROWS  # candidates are not reordered in place


@pytest.mark.parametrize('rows', [[], ROWS[:1]])
def test_choose_from_few_candidates(rows):
    assert mod.choose(rows, dict(DEFAULTS, percent=50)) == rows


def test_choose_random_is_the_seeded_shuffle():
    expected = list(ROWS)
    random.Random(7).shuffle(expected)
    chosen = mod.choose(ROWS, dict(DEFAULTS, count=3, order='random'), rng=random.Random(7))
    assert chosen == expected[:3]
    assert chosen != list(ROWS[:3])  # seed 7 really reorders


@pytest.mark.parametrize('args, msg', [
    ({'count': 0}, 'count must be between 1 and 10000, got 0'),
    ({'count': 10001}, 'count must be between 1 and 10000, got 10001'),
    ({'percent': 0}, 'percent must be between 1 and 100, got 0'),
    ({'percent': 101}, 'percent must be between 1 and 100, got 101'),
    ({'count': 1, 'percent': 50}, 'parameters are mutually exclusive: count|percent'),
    ({}, 'one of the following is required: count, percent'),
    ({'count': 1, 'rounds': 0}, 'rounds must be between 1 and 100, got 0'),
    ({'count': 1, 'interval': 601}, 'interval must be between 0 and 600 seconds, got 601'),
    ({'count': 1, 'order': 'youngest'}, 'value of order must be one of: oldest, newest, random, got: youngest'),
    ({'count': 1, 'backend_state': ['sleeping']}, 'value of backend_state must be one or more of'),
    ({'count': 1, 'login_port': 0}, 'login_port must be between 1 and 65535, got 0'),
])
def test_bad_arguments_fail_before_connecting(no_database, args, msg):
    result, failed = run_module(mod.main, args)
    assert failed
    assert msg in result['msg']
