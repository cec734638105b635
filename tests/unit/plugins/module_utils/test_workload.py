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


class CommitConn(object):
    """A connection whose commit answers with ``notices`` (as psycopg2 keeps the server's warnings)."""

    closed = False
    autocommit = False

    def __init__(self, notices):
        self.answer = list(notices)
        self.notices = ['WARNING:  left over from an earlier statement\n']

    def cursor(self):
        return Cursor('missing')

    def commit(self):
        self.notices.extend(self.answer)

    def rollback(self):
        pass

    def close(self):
        self.closed = True


SYNC_WARNINGS = [
    'WARNING:  canceling wait for synchronous replication due to user request\n'
    'DETAIL:  The transaction has already committed locally, but might not have been replicated to the standby.\n',
    'WARNING:  canceling wait for synchronous replication due to statement timeout\n'
    'DETAIL:  The transaction has already committed locally, but might not have been replicated to the standby.\n',
]


@pytest.mark.parametrize('notices, outcome', [
    ([], 'ok'),
    (['NOTICE:  relation "x" already exists, skipping\n'], 'ok'),
    (SYNC_WARNINGS[:1], 'maybe'),
    (SYNC_WARNINGS[1:], 'maybe'),
])
def test_a_commit_whose_synchronous_wait_was_cancelled_is_maybe(notices, outcome):
    clock = iter([10.0, 12.0, 12.0])
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'statement_timeout_ms': 2000}, clock=lambda: next(clock))
    work.conn = CommitConn(notices)
    assert work.one('r_000001') == outcome
    # Only this commit's warnings count (the old one was cleared), and each DDL keeps its start and duration.
    assert work.op_times == [[10.0, 2000.0, outcome]]
    assert work.errors == ({'SyncRepCancelled': 1} if outcome == 'maybe' else {})
    assert len(work.latencies) == (1 if outcome == 'ok' else 0), 'a maybe is not an acknowledged commit'


def test_maybe_tables_count_as_committed_when_the_catalog_has_them():
    work = _workload.Workload({'schema': 's', 'run_id': 'r'})
    work.ops = [{'token': 'r_000001', 'outcome': 'maybe'}, {'token': 'r_000002', 'outcome': 'maybe'}]
    assert work.committed(catalog={'r_000002'}) == ['s.t_r_000002']


class AuditCursor(object):
    def __init__(self, row):
        self.row, self.args = row, None

    def execute(self, query, args=None):
        self.query, self.args = query, args

    def fetchone(self):
        return self.row


def test_the_ordering_audit_reads_rows_after_the_start():
    cur = AuditCursor((12, 5, 3600.5, 40, 4, 0))
    audit = _workload.Workload({})._audit(cur, 35)
    assert audit == dict(since_id=35, rows=12, backwards=5, max_backwards_s=3600.5, first_backwards_id=40,
                         missed_by_time_filter=4, in_the_future=0)
    assert cur.args['start'] == 35 and 'created_at < latest' in cur.query


def test_the_server_clock_is_compared_with_this_hosts():
    cur = AuditCursor((1000.0 - 3600.0,))
    ticks = iter([999.9, 1000.1])
    real = _workload.time.time
    try:
        _workload.time.time = lambda: next(ticks)
        clock = _workload.Workload({})._server_clock(cur)
    finally:
        _workload.time.time = real
    assert clock == dict(offset_s=-3600.0, at=1000.0, uncertainty_s=0.1)


class SyncWaitConn(CommitConn):
    """A commit that waits (for a standby) until it is cancelled, then answers as PostgreSQL does."""

    def __init__(self):
        super(SyncWaitConn, self).__init__([])
        self.cancelled = _workload.threading.Event()

    def cancel(self):
        self.cancelled.set()

    def commit(self):
        assert self.cancelled.wait(5), 'the workload never cancelled the waiting commit'
        self.notices.append(SYNC_WARNINGS[0])


def test_the_workload_cancels_a_commit_that_outlasts_its_timeout_and_calls_it_maybe():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'statement_timeout_ms': 100})
    work.conn = SyncWaitConn()
    assert work.one('r_000001') == 'maybe'
    assert work.conn.cancelled.is_set() and work.op_times[0][1] >= 100


def test_a_quick_commit_is_never_cancelled():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'statement_timeout_ms': 100})
    conn = work.conn = CommitConn([])
    cancels = []
    conn.cancel = lambda: cancels.append(1)
    assert work.one('r_000001') == 'ok'
    _workload.time.sleep(0.2)  # past the timeout: the timer was stopped with the commit
    assert cancels == []


def _timed_run(params, now=100.0, step=1.0):
    """Run a workload whose DDL each take ``step`` s on a fake clock from ``now``; the tokens it issued."""
    issued, clock = [], [now]

    def tick():
        return clock[0]

    def one(token):
        issued.append(token)
        clock[0] += step
        return 'ok'

    work = _workload.Workload(dict({'schema': 's', 'run_id': 'r', 'max_ops': 100, 'interval': 0}, **params),
                              connect=lambda *a, **k: None, clock=tick)
    work._ensure_conn = lambda: True
    work.one_op = one
    work.run()
    return issued


def test_count_from_start_stops_the_ddl_at_the_modules_deadline():
    # duration 10 s from the first DDL, but the module started 3 s before the preparation ended: 7 DDL, not 10.
    assert len(_timed_run({'duration': 10, 'stop_at': 107.0})) == 7
    assert len(_timed_run({'duration': 10, 'stop_at': None})) == 10
    assert len(_timed_run({'duration': 10})) == 10
    # A deadline later than the duration never lengthens the run.
    assert len(_timed_run({'duration': 10, 'stop_at': 200.0})) == 10


def test_a_preparation_past_the_deadline_leaves_no_ddl():
    assert _timed_run({'duration': 10, 'stop_at': 99.5}) == []
