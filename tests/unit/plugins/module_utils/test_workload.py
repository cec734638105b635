"""The workload's own-schema rule and its stop, without a database."""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _workload
from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS


@pytest.mark.parametrize('schema', ['public', 'Public', 'PUBLIC', 'pggit', 'PGGIT', 'pg_catalog', 'pg_toast', 'PG_TEMP_3',
                                    'information_schema', 'Information_Schema', '', '  ', None])
def test_protected_schemas_are_refused_in_any_case(schema):
    problem = _workload.schema_problem(schema)
    assert problem and problem.startswith('schema') and ("'%s'" % (schema,)) in problem


@pytest.mark.parametrize('schema', ['pggit_chaos_workload', 'pggit_chaos_drift', 'Scratch', 'pggitx', 'publicity', 'a"b'])
def test_scratch_schemas_pass_the_name_check(schema):
    assert _workload.schema_problem(schema) is None


@pytest.mark.parametrize('comment, ours', [
    ('pggit.chaos workload run abc', True), (None, False), ('', False), ('billing', False),
    ('pggit.chaos workload', False), ('PGGIT.CHAOS workload run x', False),
])
def test_the_mark(comment, ours):
    assert _workload.is_ours(comment) is ours
    assert _workload.is_ours(_workload.mark('r1'))


def test_committed_tables_are_all_of_them():
    work = _workload.Workload({'schema': 's', 'run_id': 'r'})
    work.ops = [{'token': 'r_%06d' % i, 'outcome': outcome}
                for i, outcome in enumerate(['ok'] * 120 + ['fail', 'unknown', 'unknown'], 1)]
    tables = work.committed(catalog={'r_000122'})
    assert len(tables) == 121 and tables[0] == 's.t_r_000001' and tables[-1] == 's.t_r_000122'


def test_a_stop_ends_the_run_before_the_next_statement():
    issued = []
    clock = iter(range(1000))

    class Conn(object):
        closed = False
        autocommit = False

        def close(self):
            self.closed = True

    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'duration': 100, 'max_ops': 100, 'interval': 0},
                              connect=Conn, clock=lambda: next(clock),
                              should_stop=lambda: 'record gone' if len(issued) >= 3 else None)
    work.one = lambda token: issued.append(token) or 'ok'
    with pytest.raises(_workload.Stopped, match='record gone'):
        work.run()
    assert issued == ['r_000001', 'r_000002', 'r_000003']
    assert work.conn is None


def test_the_kind_is_known():
    assert 'workload' in FAULT_KINDS and 'connections' in FAULT_KINDS
