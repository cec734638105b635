"""pggit_chaos_clock and pggit_chaos_setting: builders, checks and the refusals that need a patched host or server."""
from __future__ import annotations

import os

import pytest

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _clock, _pgconn, _restart, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_clock, pggit_chaos_setting

LIB = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1'


# -- _restart: environments ---------------------------------------------------------------
def test_parse_environ_and_preload():
    env = _restart.parse_environ(b'PATH=/bin\0LD_PRELOAD=/x/libjemalloc.so ' + LIB.encode() + b'\0junk\0=bad\0A=b=c\0')
    assert env == {'PATH': '/bin', 'LD_PRELOAD': '/x/libjemalloc.so ' + LIB, 'A': 'b=c'}
    assert _restart.faketime_preload(env) == LIB
    assert _restart.faketime_preload({'LD_PRELOAD': '/x/libjemalloc.so'}) is None
    assert _restart.faketime_preload({}) is None and _restart.faketime_preload(None) is None


def test_start_env_adds_drops_and_never_keeps_pgdata():
    base = {'PATH': '/bin', 'LD_PRELOAD': LIB, 'FAKETIME_NO_CACHE': '1', 'PGDATA': '/d', 'PG_GRANDPARENT_PID': '9', 'LANG': 'C'}
    assert _restart.start_env(base, drop_env=_clock.ENV_DROP) == {'PATH': '/bin', 'LANG': 'C'}
    assert _restart.start_env(None, {'LD_PRELOAD': LIB}) == {'LD_PRELOAD': LIB}
    assert _restart.start_env({'A': '1'}, {'A': None, 'B': 2}) == {'B': '2'}
    with pytest.raises(ChaosError, match='plain names'):
        _restart.start_env({}, {'BAD NAME': 'x'})


def test_pg_ctl_argv():
    step = {'pg_ctl': '/usr/lib/postgresql/15/bin/pg_ctl', 'pgdata': '/d', 'log': None, 'options': "-p 5433 -k /tmp"}
    assert _restart.stop_argv(step, 30) == ['/usr/lib/postgresql/15/bin/pg_ctl', 'stop', '-D', '/d', '-m', 'fast', '-w', '-t', '30']
    assert _restart.start_argv(step, 30) == ['/usr/lib/postgresql/15/bin/pg_ctl', 'start', '-D', '/d', '-w', '-t', '30', '-l', os.devnull,
                                             '-o', '-p 5433 -k /tmp']


# -- _clock: file content, offsets --------------------------------------------------------
@pytest.mark.parametrize('offset, rate, text', [
    (-3600, 1.0, '-3600\n'), (1.5, 1.0, '+1.5\n'), (0, 1.0, '+0\n'), (0.0, 1.02, '+0 x1.02\n'), (-12.25, 0.5, '-12.25 x0.5\n')])
def test_content_round_trips(offset, rate, text):
    assert _clock.content(offset, rate) == text
    assert _clock.parse_content(text) == (float(offset), rate)


def test_parse_content_refuses_what_is_not_ours():
    assert _clock.parse_content('@2020-01-01 00:00:00') is None
    assert _clock.parse_content('') is None


@pytest.mark.parametrize('value, ok', [(0, True), (-315576000, True), (315576000.0, True), (315576000.5, False),
                                       (-4e8, False), (float('nan'), False), (float('inf'), False), (None, False)])
def test_check_offset(value, ok):
    assert (_clock.check_offset(value) is None) is ok


def test_drift_reaches_the_offset_at_the_end():
    start, now, until = 1000.0, 1010.0, 1110.0
    base, rate = _clock.drift_file(0.0, 50.0, now, until, start)
    text = _clock.content(base, rate)
    assert abs(_clock.offset_at(text, now, start) - 0.0) < 1e-3
    assert abs(_clock.offset_at(text, until, start) - 50.0) < 1e-3
    with pytest.raises(ChaosError, match='stop or run backwards'):
        _clock.drift_file(0.0, -100.0, now, until, start)


def test_find_libfaketime_missing_names_the_package(tmp_path):
    with pytest.raises(ChaosError, match=r'install the package faketime'):
        _clock.find_libfaketime([str(tmp_path)])


def test_classify_and_summarize():
    assert _clock.classify(-3600.01, -3600.0) == 'fake'
    assert _clock.classify(-0.05, -3600.0) == 'real'
    assert _clock.classify(-0.05, 0.5) == 'unknown'
    procs = [{'kind': 'client_backend', 'clock': 'fake'}, {'kind': 'walwriter', 'clock': 'real'},
             {'kind': 'autovacuum_worker', 'clock': 'fake'}, {'kind': 'autovacuum_worker', 'clock': 'real'},
             {'kind': 'x', 'clock': 'unknown'}]
    assert _clock.summarize(procs) == {'client_backend': 'fake', 'walwriter': 'real', 'autovacuum_worker': 'mixed', 'x': 'unknown'}


# -- the steps' checks ---------------------------------------------------------------------
PG_CTL = '/usr/lib/postgresql/15/bin/pg_ctl'


def _restart_step(**changes):
    step = {'type': 'pg_restart', 'method': 'pg_ctl', 'pgdata': '/var/lib/postgresql/15/main', 'pg_ctl': PG_CTL,
            'user': 'postgres', 'log': None, 'options': None, 'cgroups': {}, 'wait_s': 60,
            'unless_env_clean': list(_clock.ENV_DROP)}
    step.update(changes)
    return step


@pytest.mark.parametrize('changes, problem', [
    ({}, None),
    ({'unless_env_clean': ['PATH']}, 'unless_env_clean'),
    ({'unless_env_clean': ['FAKETIME_NO_CACHE']}, 'unless_env_clean'),
    ({'unless_env_clean': 'LD_PRELOAD'}, 'unless_env_clean'),
    ({'user': 'root'}, 'never root'),
    ({'pg_ctl': '/tmp/pg_ctl'}, 'owned by root'),
])
def test_pg_restart_check(changes, problem):
    said = _steps.STEP_CHECKS['pg_restart'](_restart_step(**changes), '/var/lib/pggit-chaos')
    assert (said is None) if problem is None else (problem in said), said


@pytest.mark.parametrize('settings, problem', [
    ({'synchronous_standby_names': None, 'work_mem': '8MB'}, None),
    ({}, 'non-empty'),
    ({'work_mem; DROP TABLE x': '1'}, 'plain PostgreSQL setting names'),
    ({'work_mem': 8}, 'string or null'),
    ({'myext.level': 'x'}, None),
])
def test_pg_setting_restore_check(settings, problem):
    said = _steps.STEP_CHECKS['pg_setting_restore']({'type': 'pg_setting_restore', 'settings': settings, 'conn': {}}, None)
    assert (said is None) if problem is None else (problem in said), said


class FakeCursor(object):
    def __init__(self, log, rows):
        self.log, self.rows, self.result = log, rows, []

    def execute(self, query, args=None):
        text = query if isinstance(query, str) else query.as_string(None)
        self.log.append((text, args))
        self.result = self.rows.get(text.split()[0], [])

    def fetchone(self):
        return self.result[0] if self.result else None

    def fetchall(self):
        return list(self.result)


def test_alter_system_quotes_the_name(monkeypatch):
    log = []
    monkeypatch.setattr(FakeCursor, 'execute', lambda self, q, a=None: log.append(q))
    cur = FakeCursor(log, {})
    _steps.alter_system(cur, 'synchronous_standby_names', 'FIRST 1 ("r1")')
    _steps.alter_system(cur, 'work_mem', None)
    assert [type(q).__name__ for q in log] == ['Composed', 'Composed']
    first = repr(log[0])
    assert "Identifier('synchronous_standby_names')" in first and 'Literal(\'FIRST 1 ("r1")\')' in first
    assert "RESET" in repr(log[1]) and "Identifier('work_mem')" in repr(log[1])


# -- refusals that need a patched host or a fake server -------------------------------------
@pytest.fixture
def nothing_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_clock_without_libfaketime_fails_naming_the_package(nothing_left, monkeypatch):
    monkeypatch.setattr(_clock, 'LIBFAKETIME_DIRS', (str(nothing_left / 'nowhere'),))
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', lambda **kw: pytest.fail('connected'))
    result, failed = run_module(pggit_chaos_clock.main, dict(name='c', offset_s=-3600, state_dir=str(nothing_left / 'state')))
    assert failed and 'faketime' in result['msg'] and 'offset_s=-3600' in result['msg'], result['msg']
    assert os.listdir(str(nothing_left)) == []


class FakeConn(object):
    autocommit = True

    def __init__(self, rows):
        self.rows, self.log = rows, []

    def cursor(self):
        return FakeCursor(self.log, self.rows)

    def close(self):
        pass


@pytest.mark.parametrize('settings, rows, option, value', [
    ({'nope_setting': '1'}, [], 'nope_setting', 'not a setting this server knows'),
    ({'wal_decode_buffer_size': '1MB'}, [('wal_decode_buffer_size', 'postmaster', '524288', 'default')], 'wal_decode_buffer_size',
     "'postmaster'"),
    ({'server_version': '99'}, [('server_version', 'internal', '15', 'default')], 'server_version', "'internal'"),
    # A value given on the command line (-c work_mem=...) overrides ALTER SYSTEM: the fault could never take.
    ({'work_mem': '64MB'}, [('work_mem', 'user', '4096', 'command line')], 'work_mem', "command line"),
])
def test_setting_refuses_what_the_server_refuses(nothing_left, monkeypatch, settings, rows, option, value):
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', lambda **kw: FakeConn({'SELECT': rows}))
    result, failed = run_module(pggit_chaos_setting.main, dict(name='s', settings=settings, state_dir=str(nothing_left / 'state')))
    assert failed and option in result['msg'] and value in result['msg'], result['msg']
    assert os.listdir(str(nothing_left)) == []


@pytest.mark.parametrize('value, text', [(True, 'on'), (False, 'off'), (4, '4'), (2.0, '2'), (0.5, '0.5'), ('FIRST 1 (r)', 'FIRST 1 (r)')])
def test_setting_value_text(value, text):
    assert pggit_chaos_setting.value_text(value) == text


# -- the clock fault keeps the server's own LD_PRELOAD ----------------------------------------
JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'


def test_the_preload_goes_in_front_of_the_servers_own():
    assert pggit_chaos_clock.preload_value(LIB, None) == LIB
    assert pggit_chaos_clock.preload_value(LIB, JEMALLOC) == LIB + ':' + JEMALLOC


@pytest.mark.parametrize('original, ok', [
    (None, True), (JEMALLOC, True), (JEMALLOC + ' /lib/libz.so.1', True), ('/a.so:/b.so', True),
    ('libjemalloc.so.2', False), (LIB, False), (JEMALLOC + ':' + LIB, False), (5, False), ('/a.so\x00', False)])
def test_pg_restart_check_of_the_recorded_ld_preload(original, ok):
    said = _steps.STEP_CHECKS['pg_restart'](_restart_step(ld_preload=original), '/var/lib/pggit-chaos')
    assert (said is None) is ok, said
    if not ok:
        assert 'ld_preload' in said


def test_the_revert_restarts_with_the_original_ld_preload_back(monkeypatch):
    from ansible_collections.pggit.chaos.plugins.module_utils import _server
    calls = []
    monkeypatch.setattr(_server, 'running', lambda pgdata: True)
    monkeypatch.setattr(_server, 'postmaster_pid', lambda pgdata: 42)
    envs = {42: {'LD_PRELOAD': LIB + ':' + JEMALLOC, 'FAKETIME_NO_CACHE': '1', 'PATH': '/bin'}, 43: {'LD_PRELOAD': JEMALLOC}}
    monkeypatch.setattr(_restart, 'environ_of', envs.get)
    monkeypatch.setattr(_restart, 'restart_step', lambda step, env, drop, wait=60: calls.append((env, drop)) or 43)
    assert _steps.STEP_HANDLERS['pg_restart'](_restart_step(ld_preload=JEMALLOC), {}) is True
    env, drop = calls[0]
    assert env == {'LD_PRELOAD': JEMALLOC} and 'LD_PRELOAD' in drop
    # What start_env makes of it: the original back, libfaketime's variables gone.
    assert _restart.start_env(envs[42], env, drop) == {'LD_PRELOAD': JEMALLOC, 'PATH': '/bin'}
    # A record without an original LD_PRELOAD drops it entirely.
    calls[:] = []
    envs[43] = {}
    assert _steps.STEP_HANDLERS['pg_restart'](_restart_step(), {}) is True
    assert calls[0][0] is None and _restart.start_env(envs[42], None, calls[0][1]) == {'PATH': '/bin'}


# -- the clock fault's state dir: its mode back once the last clock fault is gone --------------
def test_clock_dir_restore_check(tmp_path):
    state = str(tmp_path / 'state')
    check = _steps.STEP_CHECKS['clock_dir_restore']
    assert check({'type': 'clock_dir_restore', 'state_dir': state, 'mode': 0o700}, state) is None
    assert check({'type': 'clock_dir_restore', 'state_dir': state + '/', 'mode': 0o700}, state) is None
    assert 'state_dir' in check({'type': 'clock_dir_restore', 'state_dir': '/etc', 'mode': 0o700}, state)
    assert 'mode' in check({'type': 'clock_dir_restore', 'state_dir': state, 'mode': 0o17777}, state)
    assert 'mode' in check({'type': 'clock_dir_restore', 'state_dir': state, 'mode': '0700'}, state)


def test_clock_dir_restore_only_once_no_clock_fault_is_left(tmp_path):
    state = tmp_path / 'state'
    clock = state / 'clock'
    clock.mkdir(parents=True)
    os.chmod(str(state), 0o711)
    other = clock / 'clock--other.faketime'
    other.write_text('+60\n')
    step = {'type': 'clock_dir_restore', 'state_dir': str(state), 'mode': 0o700}
    undo = _steps.STEP_HANDLERS['clock_dir_restore']
    assert undo(step, {}) is False  # another clock fault still reads its file through the state dir
    assert oct(os.stat(str(state)).st_mode & 0o777) == '0o711' and clock.is_dir()
    other.unlink()
    assert undo(step, {}) is True
    assert oct(os.stat(str(state)).st_mode & 0o777) == '0o700' and not clock.exists()
    assert undo(step, {}) is False  # idempotent
    # A mode someone changed since (not the recorded one plus the search bits) is left alone.
    os.chmod(str(state), 0o755)
    assert undo(step, {}) is False and oct(os.stat(str(state)).st_mode & 0o777) == '0o755'


# -- the setting fault's undo leaves a value someone set during the window ----------------------
def _restore_with(monkeypatch, auto_conf, step):
    log = []

    class Cur(object):
        def execute(self, query, args=None):
            log.append(query if isinstance(query, str) else repr(query))
            self.last = args

        def fetchone(self):
            value = auto_conf.get(self.last[0]) if self.last else None
            return None if value is None else (value,)

    monkeypatch.setattr(_steps, '_pg_connect', lambda step, ctx: (FakeConn({}), Cur()))
    monkeypatch.setattr(_steps, 'alter_system', lambda cur, name, value: log.append(('alter', name, value)) or auto_conf.update({name: value}))
    ctx = {}
    changed = _steps.STEP_HANDLERS['pg_setting_restore'](step, ctx)
    return changed, [e for e in log if isinstance(e, tuple)], ctx


def test_setting_restore_leaves_a_value_set_during_the_fault(monkeypatch):
    step = {'type': 'pg_setting_restore', 'settings': {'work_mem': '8MB', 'synchronous_standby_names': None},
            'applied': {'work_mem': '16MB', 'synchronous_standby_names': 'FIRST 1 (r)'}, 'conn': {}}
    assert _steps.STEP_CHECKS['pg_setting_restore'](step, None) is None
    changed, alters, ctx = _restore_with(monkeypatch, {'work_mem': '64MB', 'synchronous_standby_names': 'FIRST 1 (r)'}, step)
    assert alters == [('alter', 'synchronous_standby_names', None)] and changed
    assert len(ctx['notes']) == 1 and 'work_mem' in ctx['notes'][0] and "'64MB'" in ctx['notes'][0], ctx
    # The fault's own value still there: put back.
    changed, alters, ctx = _restore_with(monkeypatch, {'work_mem': '16MB', 'synchronous_standby_names': 'FIRST 1 (r)'}, step)
    assert alters == [('alter', 'synchronous_standby_names', None), ('alter', 'work_mem', '8MB')] and 'notes' not in ctx


@pytest.mark.parametrize('applied', [['work_mem'], {'shared_buffers': '1GB'}, {'work_mem': 16}])
def test_setting_restore_check_of_applied(applied):
    step = {'type': 'pg_setting_restore', 'settings': {'work_mem': '8MB'}, 'applied': applied, 'conn': {}}
    said = _steps.STEP_CHECKS['pg_setting_restore'](step, None)
    assert said and 'applied' in said


@pytest.mark.parametrize('shown, before, asked, source, took', [
    ('16MB', '8MB', '16MB', ('configuration file', '/d/postgresql.auto.conf'), True),
    ('16MB', '8MB', '16384kB', ('configuration file', '/d/postgresql.auto.conf'), True),
    ('on', 'off', 'true', ('configuration file', None), False),
    ('1MB', '1MB', '16MB', ('user', None), False),
    ('4MB', '4MB', '16MB', ('command line', None), False),
    ('8MB', '8MB', '16384kB', ('configuration file', '/d/postgresql.auto.conf'), False),
])
def test_a_value_counts_as_taken_only_when_the_session_shows_it(shown, before, asked, source, took):
    assert pggit_chaos_setting._took(shown, before, asked, source) is took
