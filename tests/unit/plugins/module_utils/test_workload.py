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


class Cursor(object):
    """Answers the schema lookup with ``comment`` (``missing`` for no schema); keeps every statement."""

    def __init__(self, comment):
        self.comment = comment
        self.statements = []

    def execute(self, query, args=None):
        self.statements.append(repr(query))

    def fetchone(self):
        return None if self.comment == 'missing' else (self.comment,)


@pytest.mark.parametrize('comment, statements', [
    ('missing', ["CREATE SCHEMA", "COMMENT ON SCHEMA"]),
    ('pggit.chaos workload run other', ["COMMENT ON SCHEMA"]),  # taken over: marked with this run
    ('pggit.chaos workload run r2', []),  # already this run's
])
def test_a_claimed_schema_carries_this_runs_mark(comment, statements):
    cur = Cursor(comment)
    _workload.Workload({'schema': 's', 'run_id': 'r2'})._claim_schema(cur)
    done = cur.statements[1:]
    assert [next(k for k in ('CREATE SCHEMA', 'COMMENT ON SCHEMA') if k in q) for q in done] == statements
    if statements:
        assert "Identifier('s')" in done[-1] and "Literal('pggit.chaos workload run r2')" in done[-1], done[-1]


@pytest.mark.parametrize('comment', [None, 'billing', 'pggit.chaos workload'])
def test_a_schema_without_a_workload_mark_is_refused(comment):
    cur = Cursor(comment)
    with pytest.raises(_workload.WorkloadError, match="schema 's' exists and is not the workload's own"):
        _workload.Workload({'schema': 's', 'run_id': 'r2'})._claim_schema(cur)
    assert len(cur.statements) == 1, 'nothing but the lookup'


def test_the_drop_step_is_the_one_in_the_record():
    step = _workload.drop_step({'db': 'app'}, 'scratch', 'r2')
    assert step == {'type': 'pg_drop_schema', 'conn': {'db': 'app'}, 'schema': 'scratch',
                    'only_if_comment': 'pggit.chaos workload run r2'}


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
