"""connection_exhaustion without a database: the holder's plan and role rule, its fill, the module's program and
bad input, the workload's refused connections (a definite fail), and the judge rule with its Markdown lines."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _holder, _ledger, _pgconn, _steps, _workload
from ansible_collections.pggit.chaos.plugins.module_utils._checker import check
from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_sessions
from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

MSG = 'remaining connection slots are reserved for non-replication superuser connections'
REFUSAL = 'FATAL:  ' + MSG


# -- the plan ----------------------------------------------------------------------------------
def test_a_fill_targets_every_non_reserved_slot_and_says_what_is_free_now():
    plan = _holder.plan_sessions(100, 3, 7)
    assert plan == {'max_connections': 100, 'superuser_reserved_connections': 3, 'client_backends': 7,
                    'free_slots': 90, 'target': 97, 'would_hold': 90}


def test_a_count_is_held_as_asked_and_capped():
    assert _holder.plan_sessions(100, 3, 7, count=5)['target'] == 5
    assert _holder.plan_sessions(100, 3, 7, count=5)['would_hold'] == 5
    assert _holder.plan_sessions(10000, 3, 0)['target'] == _holder.MAX_SESSIONS
    full = _holder.plan_sessions(20, 3, 30)
    assert full['free_slots'] == 0 and full['would_hold'] == 0


@pytest.mark.parametrize('role', ['pggit_chaos_client', 'chaos_1', '_x'])
def test_good_roles(role):
    assert _holder.role_problem(role) is None


@pytest.mark.parametrize('role', ['', 'Bad', '1abc', 'pg_monitor', 'postgres', 'public', 'a-b', 'a' * 64, None, 3])
def test_bad_roles_are_named(role):
    problem = _holder.role_problem(role)
    assert problem and problem.startswith('role') and repr(role) in problem


@pytest.mark.parametrize('count', [0, -1, 5001, True, 'x'])
def test_bad_counts_are_named(count):
    problem = _holder.count_problem(count)
    assert problem and problem.startswith('count') and repr(count) in problem


def test_the_holder_connects_as_its_role_never_with_a_password_in_the_record():
    conn = _holder.holder_conn({'login_host': 'h', 'login_user': 'postgres', 'login_password': 'secret', 'db': 'pggit'}, 'r1')
    assert conn['login_user'] == 'r1' and conn['login_host'] == 'h' and 'login_password' not in conn


# -- the role: ours or never touched -----------------------------------------------------------
class Cursor(object):
    def __init__(self, row):
        self.row = row
        self.statements = []

    def execute(self, query, args=None):
        self.statements.append(repr(query))

    def fetchone(self):
        return self.row


def test_a_missing_role_is_created_without_superuser_and_marked():
    cur = Cursor(None)
    assert _holder.ensure_role(cur, 'r1', 'pw') == 'created'
    text = ' '.join(cur.statements[1:])
    assert 'CREATE ROLE' in text and 'NOSUPERUSER' in text and "Literal('pggit.chaos sessions role')" in text
    assert 'PASSWORD' in cur.statements[-1]


def test_our_role_is_kept():
    cur = Cursor((False, _holder.ROLE_MARK, True))
    assert _holder.ensure_role(cur, 'r1') == 'kept'
    assert len(cur.statements) == 1


class ScriptedCursor(object):
    """Answers the role lookup, the pg_authid privilege and the stored password; records every statement."""

    def __init__(self, role_row, readable=True, stored=None):
        self.answers = {'pg_roles': role_row, 'has_table_privilege': (readable,), 'rolpassword': (stored,)}
        self.statements = []
        self.row = None

    def execute(self, query, args=None):
        text = repr(query)
        self.statements.append(text)
        self.row = next((row for key, row in self.answers.items() if key in text), None)

    def fetchone(self):
        return self.row


def test_our_role_without_login_gets_it_back_and_says_altered():
    """Fails on the old code: it said 'kept' (changed=false) whatever it did to the role."""
    cur = ScriptedCursor((False, _holder.ROLE_MARK, False))
    assert _holder.ensure_role(cur, 'r1') == 'altered'
    assert "SQL(' LOGIN')" in cur.statements[-1] and 'PASSWORD' not in cur.statements[-1]


def test_a_password_already_stored_is_not_set_again_and_a_new_one_is_altered():
    stored = 'md5' + hashlib.md5(b'pwr1').hexdigest()
    same = ScriptedCursor((False, _holder.ROLE_MARK, True), stored=stored)
    assert _holder.ensure_role(same, 'r1', 'pw') == 'kept' and not any('ALTER' in t for t in same.statements)
    other = ScriptedCursor((False, _holder.ROLE_MARK, True), stored=stored)
    assert _holder.ensure_role(other, 'r1', 'new-pw') == 'altered' and 'PASSWORD' in other.statements[-1]
    unreadable = ScriptedCursor((False, _holder.ROLE_MARK, True), readable=False, stored=stored)
    assert _holder.ensure_role(unreadable, 'r1', 'pw') == 'altered', 'a password it cannot compare is set: changed'
    assert not any('rolpassword' in t for t in unreadable.statements), 'pg_authid is not read without the privilege'


def _scram(password, salt=b'0123456789abcdef', iterations=4096):
    salted = hashlib.pbkdf2_hmac('sha256', password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b'Client Key', hashlib.sha256).digest()).digest()
    server = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    keys = [base64.b64encode(value).decode() for value in (salt, stored, server)]
    return 'SCRAM-SHA-256$%d:%s$%s:%s' % (iterations, keys[0], keys[1], keys[2])


@pytest.mark.parametrize('stored, password, same', [
    (_scram('pw'), 'pw', True), (_scram('pw'), 'px', False), ('md5' + hashlib.md5(b'pwr1').hexdigest(), 'pw', True),
    ('md5' + hashlib.md5(b'pwr1').hexdigest(), 'pw2', False), (None, 'pw', False), ('SCRAM-SHA-256$junk', 'pw', False),
    ('pw', 'pw', True),
])
def test_the_stored_password_is_compared_as_the_server_does(stored, password, same):
    assert _holder.password_matches_stored(stored, 'r1', password) is same


@pytest.mark.parametrize('row', [(False, None, True), (False, 'billing', True), (True, _holder.ROLE_MARK, True)])
def test_a_role_not_ours_or_superuser_is_never_touched(row):
    cur = Cursor(row)
    with pytest.raises(ValueError, match="role 'r1'"):
        _holder.ensure_role(cur, 'r1', 'pw')
    assert len(cur.statements) == 1, 'nothing but the lookup'


# -- the holder's fill -------------------------------------------------------------------------
class Refused(Exception):
    pgcode = None


class Conn(object):
    closed = 0

    def close(self):
        Conn.closed += 1


def connector(room):
    state = {'open': 0}

    def connect():
        if state['open'] >= room:
            raise Refused(REFUSAL)
        state['open'] += 1
        return Conn()
    return state, connect


def test_the_holder_fills_until_refused_then_takes_freed_slots_back():
    state, connect = connector(4)
    holder = _holder.Holder({}, 10, 'app', connect=connect)
    assert holder.fill() == 4
    assert holder.refusals == 1 and holder.refusal == MSG and holder.error is None
    assert holder.refill() is False
    state['open'] -= 1  # another client's slot... ours takes it back
    holder.conns.pop()
    assert holder.refill() is True and len(holder.conns) == 4
    Conn.closed = 0
    assert holder.release() == 4 and Conn.closed == 4 and holder.conns == []


def test_the_holder_stops_at_its_count():
    _state, connect = connector(100)
    holder = _holder.Holder({}, 3, 'app', connect=connect)
    assert holder.fill() == 3 and holder.refusals == 0 and holder.refill() is False


def test_a_connection_error_is_not_a_refusal():
    def connect():
        raise Refused('FATAL:  role "r1" does not exist')
    holder = _holder.Holder({}, 3, 'app', connect=connect)
    assert holder.fill() == 0 and holder.refusals == 0 and 'does not exist' in holder.error


@pytest.mark.parametrize('msg, refusal', [(REFUSAL, True), ('FATAL:  sorry, too many clients already', True),
                                          ('could not connect to server: Connection refused', False)])
def test_refusal_words(msg, refusal):
    assert _holder.is_refusal(Refused(msg)) is refusal


# -- the module: its program, kind and bad input -----------------------------------------------
def test_the_holder_is_an_engine_program_of_kind_sessions():
    assert _daemon.PROGRAMS[_holder.PROC_TAG] == '_holder' and '_holder' in _daemon.ENGINE
    assert pggit_chaos_sessions.SessionsFault.kind == 'sessions' and 'sessions' in FAULT_KINDS
    assert pggit_chaos_sessions.SessionsFault.program == _holder.PROC_TAG
    script = os.path.join('/lib', _holder.PROC_TAG + '.py')
    argv = _daemon.argv_for(script, ['--state-dir', '/s', '--fault-id', 'sessions--e1'], python='/py')
    assert argv == ['/py', '-I', script, '--state-dir', '/s', '--fault-id', 'sessions--e1']
    assert _holder.application_name('sessions--e1') == 'pggit-chaos-holder-sessions--e1'
    assert len(_holder.application_name('sessions--' + 'x' * 100)) == 63


def test_the_plan_records_the_role_and_target_never_the_password(monkeypatch):
    class Module(object):
        params = dict(name='e1', role='r1', role_password='pw', count=None, login_user='postgres', login_host='',
                      login_port=5432, db='pggit', state='present', state_dir='/nonexistent', hold=True)
        check_mode = False
    fault = pggit_chaos_sessions.SessionsFault(Module())
    fault.slots = _holder.plan_sessions(50, 3, 5)
    undo, detail, after = fault.plan({'held_sessions': 0, 'free_slots': 42})
    assert detail['target'] == 47 and detail['role'] == 'r1' and detail['conn']['login_user'] == 'r1'
    assert 'pw' not in repr(detail) and 'pw' not in repr(undo)
    assert after['held_sessions'] == 42
    assert fault.secret() == {'login_password': 'pw'}
    # The role's undo is recorded with the plan, before the role may log in; it connects as the administrator.
    step = undo[-1]
    assert step == {'type': 'pg_role_nologin', 'role': 'r1', 'fault_id': 'sessions--e1',
                    'conn': {'login_user': 'postgres', 'login_port': 5432, 'db': 'pggit'}}
    assert _steps.STEP_CHECKS['pg_role_nologin'](step, '/s') is None
    Module.params = dict(Module.params, login_password='admin-pw', hold=False)
    fault = pggit_chaos_sessions.SessionsFault(Module())
    undo, detail, after = fault.plan({'role_exists': True, 'role_can_login': False})
    assert [s['type'] for s in undo] == ['pg_role_nologin'] and detail == {'role': 'r1', 'hold': False}
    assert after['role_can_login'] is True and 'admin-pw' not in repr(undo)
    assert fault.secret() == {_holder.ADMIN_SECRET: {'login_password': 'admin-pw'}}, 'no holder: no role password for it'


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the module connected to PostgreSQL')
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize('args, option, value', [
    (dict(name='s', count=0), 'count', '0'),
    (dict(name='s', role='pg_read_all_data'), 'role', "'pg_read_all_data'"),
    (dict(name='s', role='r1', login_user='r1'), 'login_user', "'r1'"),
    (dict(name='s', fill_timeout=601), 'fill_timeout', '601'),
    (dict(name='s', role='pg_x', hold=False), 'role', "'pg_x'"),
])
def test_bad_input_names_the_option_and_leaves_nothing(workdir, args, option, value):
    result, failed = run_module(pggit_chaos_sessions.main, args)
    assert failed and option in result['msg'] and value in result['msg'], result['msg']
    assert os.listdir(str(workdir)) == []


# -- the workload: a refused connection is a definite fail -------------------------------------
def test_a_refused_connection_is_a_fail_with_time_and_message_never_lost():
    clock = iter(range(100, 200)).__next__
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'connect_per_op': True, 'op_login_user': 'r1'},
                              clock=lambda: float(clock()))

    def refuse():
        raise _pgconn.psycopg2.OperationalError(REFUSAL)
    work._connect_op = refuse
    op = work.fresh_op('r_000001')
    assert op['outcome'] == 'fail' and op['token'] == 'r_000001'
    assert work.refused == [[100.0, MSG]] and work.op_times[0][2] == 'fail'
    verdict = check([op], {}, set(), expect_tracked=True)
    assert verdict['lost'] == [] and verdict['failed'] == 1 and verdict['unknown'] == 0
    summary = _workload.refused_summary(work.refused + [[90.0, MSG], [95.0, 'other']])
    assert summary['count'] == 3 and summary['first_at'] == 90.0 and summary['last_at'] == 100.0
    assert summary['messages'][0] == {'msg': MSG, 'count': 2}


def test_the_op_connection_is_the_op_role():
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'login_user': 'postgres', 'login_password': 'su',
                               'op_login_user': 'r1', 'op_login_password': 'pw'})
    params = work.op_params()
    assert params['login_user'] == 'r1' and params['login_password'] == 'pw'
    assert _workload.Workload({'schema': 's', 'run_id': 'r', 'login_user': 'postgres'}).op_params()['login_user'] == 'postgres'


def test_the_op_role_may_create_in_the_workloads_schema_only():
    cur = Cursor(None)
    _workload.Workload({'schema': 's', 'run_id': 'r', 'op_login_user': 'r1'})._grant_op_user(cur)
    assert len(cur.statements) == 1 and 'GRANT USAGE, CREATE ON SCHEMA' in cur.statements[0]
    assert "Identifier('s')" in cur.statements[0] and "Identifier('r1')" in cur.statements[0]
    cur = Cursor(None)
    _workload.Workload({'schema': 's', 'run_id': 'r'})._grant_op_user(cur)
    assert cur.statements == []


# -- the judge ---------------------------------------------------------------------------------
def raw(held=40, seen=40, refused=None):
    refused = {'count': 12, 'first_at': 1000.5, 'last_at': 1007.25, 'messages': [{'msg': REFUSAL, 'count': 12}]} \
        if refused is None else refused
    return {'experiment': 'connection_exhaustion', 'host': 'lab-1', 'fault': {'held': held, 'sessions_after_fill': seen},
            'workload': {'check': {'lost': [], 'duplicated': [], 'unexpected': [], 'valid': True}, 'refused': refused},
            'steady_state': {'before': {'healthy': True}, 'during': {'healthy': True}, 'after': {'healthy': True}}}


def test_the_rule_passes_with_sessions_held_seen_and_refusals():
    reasons, evidence = _report._sessions_exhausted(raw())
    assert reasons == []
    assert evidence['sessions_held'] == 40 and evidence['refused'] == 12 and evidence['refusal_message'] == REFUSAL
    assert evidence['first_refused_at'] == 1000.5 and evidence['last_refused_at'] == 1007.25
    assert _report.EXPERIMENT_FAULT_CHECKS['connection_exhaustion'] == 'sessions'


@pytest.mark.parametrize('kwargs, words', [
    (dict(held=0), 'held 0 session'),
    (dict(seen=0), "pg_stat_activity showed 0 of the holder's sessions right after the fill"),
    (dict(seen=None), 'pg_stat_activity showed ?'),
    (dict(refused={'count': 0, 'messages': []}), 'no DDL client was refused'),
    (dict(refused={'count': 3, 'messages': [{'msg': 'FATAL:  role "r1" does not exist', 'count': 3}]}), 'no DDL client'),
    (dict(refused={}), 'no DDL client was refused'),
])
def test_the_rule_fails_when_the_fault_never_happened(kwargs, words):
    reasons, _evidence = _report._sessions_exhausted(raw(**kwargs))
    assert any(words in r for r in reasons), reasons


def test_the_report_shows_the_refusals():
    entry = _report.judge(dict(raw(), fault_check='auto'))
    assert entry['evidence']['fault_check'] == 'sessions'
    text = _report.render_markdown([entry], {'playbook': 'chaos.yml'})
    assert '## Connection exhaustion' in text
    row = next(line for line in text.splitlines() if line.startswith('| connection_exhaustion | lab-1 | 40 | 40 | 12 |'))
    assert 'remaining connection slots are reserved' in row and '00:16:40.500' in row and '00:16:47.250' in row


def test_the_rule_reads_the_look_right_after_the_fill_and_calls_it_that():
    """The module counts the holder's sessions when it returns (the start of the window), not during it: the
    evidence and the report say 'after the fill', never 'during the window'."""
    record = raw()
    record['fault'] = {'held': 40, 'sessions_after_fill': 39}
    reasons, evidence = _report._sessions_exhausted(record)
    assert reasons == [] and evidence['sessions_seen_after_fill'] == 39 and 'sessions_seen_during' not in evidence
    text = _report.render_markdown([_report.judge(dict(record, fault_check='auto'))], {'playbook': 'chaos.yml'})
    assert '| Seen after the fill |' in text and 'during window' not in text


# -- review fixes --------------------------------------------------------------------------------
def test_the_role_password_never_goes_into_a_statement_in_clear():
    """The server logs DDL (log_statement=ddl) and keeps statements (pg_stat_statements): only a hash may be sent."""
    cur = Cursor(None)
    assert _holder.ensure_role(cur, 'r1', 'Sup3r-Secret') == 'created'
    sent = ' '.join(cur.statements)
    assert 'Sup3r-Secret' not in sent
    assert _holder.password_hash(cur, 'r1', 'Sup3r-Secret') in sent
    cur = ScriptedCursor((False, _holder.ROLE_MARK, True), readable=False)
    _holder.ensure_role(cur, 'r1', 'Sup3r-Secret')
    assert 'Sup3r-Secret' not in ' '.join(cur.statements) and 'PASSWORD' in cur.statements[-1]


def test_the_role_its_mark_and_password_go_in_one_statement_list():
    """One simple query is one transaction: a module killed between statements can never leave an unmarked role."""
    cur = Cursor(None)
    _holder.ensure_role(cur, 'r1', 'pw')
    assert len(cur.statements) == 2, cur.statements
    assert 'CREATE ROLE' in cur.statements[1] and 'COMMENT ON ROLE' in cur.statements[1] and 'PASSWORD' in cur.statements[1]


class GrantCursor(object):
    """prepare()'s statements on a server where op_login_user does not exist."""

    def __init__(self, conn):
        self.conn = conn
        self.row = None

    def execute(self, query, args=None):
        text = repr(query)
        self.conn.statements.append(text)
        if 'GRANT' in text:
            raise _pgconn.psycopg2.errors.UndefinedObject('role "nobody" does not exist')
        self.row = (0,) if 'count(*)' in text or 'max(id)' in text else None

    def fetchone(self):
        return self.row


class GrantConn(object):
    closed = False
    autocommit = False
    info = None

    def __init__(self):
        self.statements = []
        self.rollbacks = 0
        self.commits = 0

    def cursor(self):
        return GrantCursor(self)

    def rollback(self):
        self.rollbacks += 1

    def commit(self):
        self.commits += 1

    def close(self):
        self.closed = True


def test_a_missing_op_login_user_is_named_at_once_and_nothing_is_committed():
    conn = GrantConn()
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
    work = _workload.Workload({'schema': 's', 'run_id': 'r', 'op_login_user': 'nobody', 'settle_timeout': 30},
                              connect=lambda: conn, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(_workload.WorkloadError, match="op_login_user 'nobody' is not a role"):
        work.prepare()
    assert conn.commits == 0 and conn.rollbacks == 1, 'the schema is rolled back, never committed'
    assert now[0] == 0.0, 'a missing role is said at once, not after settle_timeout of retries'


def test_an_op_role_without_connect_per_op_is_refused_by_name(workdir):
    """Without connect_per_op the DDL never runs as op_login_user: silently ignoring it would prove nothing."""
    from ansible_collections.pggit.chaos.plugins.modules import pggit_workload
    args = dict(run_id='r1', op_login_user='pggit_chaos_client', state_dir=str(workdir / 'state'))
    result, failed = run_module(pggit_workload.main, args)
    assert failed and 'op_login_user' in result['msg'] and "'pggit_chaos_client'" in result['msg'], result['msg']
    assert 'connect_per_op' in result['msg'] and os.listdir(str(workdir)) == []


# -- the role's undo: NOLOGIN once no fault of ours uses it ---------------------------------------
class RoleConn(object):
    """A server with one role: its rows answer ROLE_SQL; an ALTER ... NOLOGIN takes its login away."""

    def __init__(self, row, sessions=0, may_signal=True):
        self.row = row
        self.sessions = sessions
        self.may_signal = may_signal
        self.statements = []
        self.closed = False
        self.params = None
        self.answer = None

    def cursor(self):
        return self

    def execute(self, query, args=None):
        text = repr(query)
        self.statements.append(text)
        self.answer = self.row
        if 'NOLOGIN' in text:
            self.row = (self.row[0], self.row[1], False)
        elif 'pg_terminate_backend' in text:
            if not self.may_signal:
                raise _holder._pgconn.psycopg2.Error('permission denied to terminate process')
            self.answer, self.sessions = (self.sessions,), 0
        elif 'usename' in text:
            self.answer = (self.sessions,)

    def fetchone(self):
        return self.answer

    def close(self):
        self.closed = True


@pytest.fixture
def server(monkeypatch):
    box = {'conn': RoleConn((False, _holder.ROLE_MARK, True))}

    def connect(params, application_name='x', autocommit=True):
        box['conn'].params = params
        return box['conn']
    monkeypatch.setattr(_holder._pgconn, 'connect', connect)
    return box


def _record(ledger, name, role='r1', port=5432):
    fid = _ledger.fault_id('sessions', name)
    step = _holder.nologin_step(fid, role, {'login_user': 'postgres', 'login_port': port})
    ledger.write(ledger.new_record('sessions', name, 60, [step]))
    return fid, step


def test_the_undo_sets_our_role_nologin_with_the_admin_secret_and_drops_the_password(tmp_path, server):
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    ctx = {'state_dir': ledger.state_dir, 'secret': {'login_password': 'role-pw', _holder.ADMIN_SECRET: {'login_password': 'admin'}}}
    assert _steps.run_steps([step], ctx) is True
    conn = server['conn']
    assert any("SQL(' NOLOGIN PASSWORD NULL')" in t for t in conn.statements) and conn.row[2] is False and conn.closed
    assert conn.params['login_user'] == 'postgres' and conn.params['login_password'] == 'admin', 'the admin, never the role'
    conn.statements = []
    assert _steps.run_steps([step], ctx) is False, 'idempotent: NOLOGIN already'
    assert not any('NOLOGIN' in t for t in conn.statements)


def test_the_undo_keeps_the_login_while_another_fault_uses_the_role(tmp_path, server):
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    other, _other_step = _record(ledger, 'b')
    _record(ledger, 'c', role='r2')
    _record(ledger, 'd', port=5433)
    assert _holder.role_users(ledger.state_dir, step) == [other]
    ctx = {'state_dir': ledger.state_dir}
    assert _steps.run_steps([step], ctx) is False
    assert server['conn'].statements == [] and server['conn'].row[2] is True
    assert ctx['notes'] == ['role r1 keeps LOGIN: fault(s) %s still use it' % other]
    ledger.delete(other)
    assert _steps.run_steps([step], ctx) is True and server['conn'].row[2] is False


def test_the_undo_ends_the_sessions_still_logged_in_as_the_role(tmp_path, server):
    """NOLOGIN refuses new logins only: a session opened during the fault must not outlive its revert."""
    server['conn'] = RoleConn((False, _holder.ROLE_MARK, False), sessions=2)
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    assert _steps.run_steps([step], {'state_dir': ledger.state_dir}) is True, 'already NOLOGIN, but 2 sessions ended'
    assert server['conn'].sessions == 0 and any('pg_terminate_backend' in t for t in server['conn'].statements)
    assert not any('ALTER' in t for t in server['conn'].statements)


def test_the_undo_fails_when_the_sessions_of_the_role_cannot_be_ended(tmp_path, server):
    server['conn'] = RoleConn((False, _holder.ROLE_MARK, True), sessions=1, may_signal=False)
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    with pytest.raises(_steps.UndoError, match='ending the sessions still logged in as role r1 failed'):
        _steps.run_steps([step], {'state_dir': ledger.state_dir})


def test_the_undo_keeps_the_sessions_while_another_fault_uses_the_role(tmp_path, server):
    server['conn'] = RoleConn((False, _holder.ROLE_MARK, True), sessions=3)
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    _record(ledger, 'b')
    assert _steps.run_steps([step], {'state_dir': ledger.state_dir}) is False
    assert server['conn'].sessions == 3 and server['conn'].statements == []


@pytest.mark.parametrize('row', [(False, None, True), (False, 'billing', True), None])
def test_the_undo_never_touches_a_role_not_ours_or_gone(tmp_path, server, row):
    server['conn'] = RoleConn(row)
    ledger = _ledger.Ledger(str(tmp_path / 'state'))
    _fid, step = _record(ledger, 'a')
    assert _steps.run_steps([step], {'state_dir': ledger.state_dir}) is False
    assert not any('ALTER' in t for t in server['conn'].statements)


@pytest.mark.parametrize('change, words', [
    ({'role': 'postgres'}, "role 'postgres' is refused"),
    ({'role': 'a;drop'}, 'role must be'),
    ({'fault_id': 'latency--x'}, "fault_id must be the id of a sessions fault"),
    ({'conn': 'host=x'}, 'conn must be a dictionary'),
])
def test_a_forged_role_step_is_refused(change, words):
    step = dict(_holder.nologin_step('sessions--a', 'r1', {}), **change)
    with pytest.raises(_steps.UndoError, match=words):
        _steps.check_steps([step], '/s')
