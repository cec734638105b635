"""pggit_chaos_load's initialisation (``pgbench -i``) runs inside the recorded program, so the revert stops it.

Against the throwaway PostgreSQL, with the real pgbench: a load whose
database needs a long initialisation is started in a child process (an async
job), its controller is SIGKILLed while ``pgbench -i`` runs, and the revert
must leave no pgbench process and no session of the initialisation; the
database is then half-built, and the next run must see that and initialise it
again, not run on it.  A database whose initialisation was cut after its rows
but before its primary keys is not taken for a ready one either.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from background import ledger_ids, module_result, programs, start_module
from modrun import run_module
from pgtools import PG_BIN, connection
from waiting import wait_for, wait_until
from ansible_collections.pggit.chaos.plugins.module_utils import _pgbench, _pgconn, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_load

# Large enough that pgbench -i takes several seconds here (100000 accounts per unit), small enough for a test.
SCALE = 60


def pgbench_processes():
    """Pids of live pgbench processes working on the load's database (the run or the initialisation)."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                argv = handle.read().split(b'\0')
            with open('/proc/%s/stat' % entry) as handle:
                state = handle.read().rsplit(')', 1)[-1].split()[0]
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b'pgbench' and _pgbench.DATABASE.encode() in argv and state not in 'ZX':
            found.append((int(entry), b' '.join(argv).decode()))
    return found


def init_processes():
    return [p for p in pgbench_processes() if ' -i ' in p[1]]


def load_sessions(postgres):
    """Sessions of the load's database at work (pgbench's, whatever their application name)."""
    with connection(postgres.params('postgres')) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state <> 'idle'", (_pgbench.DATABASE,))
        return cur.fetchone()[0]


def ready(postgres, scale):
    with connection(postgres.params(_pgbench.DATABASE)) as conn:
        return _pgbench.ready(conn.cursor(), scale)


def drop_load_database(postgres):
    with connection(postgres.params('postgres')) as conn:
        conn.cursor().execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % _pgbench.DATABASE)


@pytest.fixture
def load_db(postgres):
    """No load database before the test, none after (the session's server is shared)."""
    drop_load_database(postgres)
    yield postgres
    for pid, _cmdline in pgbench_processes():
        os.kill(pid, signal.SIGKILL)
    drop_load_database(postgres)


@pytest.fixture
def state(state_dir):
    yield state_dir
    for pid in programs(state_dir):
        os.kill(pid, signal.SIGKILL)


def load_args(postgres, state, **extra):
    args = dict(postgres.params('postgres'), name='spike', state_dir=state, clients=2, duration=2, ttl=600, scale=SCALE)
    args.update(extra)
    return args


def test_a_revert_during_the_initialisation_stops_it_and_the_next_run_initialises_again(load_db, state):
    postgres = load_db
    job = start_module('pggit_chaos_load', load_args(postgres, state))
    try:
        assert wait_for(init_processes, 60, 0.05), 'pgbench -i never started'
        assert wait_for(lambda: load_sessions(postgres) > 0, 30, 0.05), 'the initialisation never reached the server'
        # The controller dies in the middle of the set-up: the initialisation lives on, in the recorded program.
        job.kill()
        job.wait(10)
        assert init_processes(), 'pgbench -i ended with its controller: the test would prove nothing'
        assert ledger_ids(state) == ['load--spike']
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(10)
        job.stdout.close()
        job.stderr.close()
    outcome, failed = run_module(pggit_chaos_load.main, dict(name='spike', state='absent', state_dir=state))
    assert not failed, outcome.get('msg')
    assert outcome['revert']['result'] == 'reverted' and outcome['changed'] is True
    assert pgbench_processes() == [], 'the revert left pgbench running'
    assert wait_for(lambda: load_sessions(postgres) == 0, 10), 'a session of the cut initialisation outlived the revert'
    assert programs(state) == [] and ledger_ids(state) == []
    # Cut short: not a ready database, whatever its tables hold.
    assert not ready(postgres, SCALE), 'the revert came after the initialisation had ended: the test would prove nothing'

    result, failed = run_module(pggit_chaos_load.main, load_args(postgres, state))
    assert not failed, result.get('msg')
    assert result['load']['initialised'] is True and result['load']['init_s'] > 0
    assert result['load']['init_argv'][1:4] == ['-i', '-s', str(SCALE)]
    assert result['transactions'] > 0 and result['tps'] > 0 and result['changed'] is True
    assert ready(postgres, SCALE)
    assert pgbench_processes() == [] and programs(state) == [] and ledger_ids(state) == []

    # Ready now: the next run reuses it, and says so (in check mode as well as for real).
    planned, failed = run_module(pggit_chaos_load.main, load_args(postgres, state), check_mode=True)
    assert not failed and 'init_argv' not in planned['load'], planned['load']
    again, failed = run_module(pggit_chaos_load.main, load_args(postgres, state))
    assert not failed, again.get('msg')
    assert again['load']['initialised'] is False and again['load']['init_s'] is None and again['transactions'] > 0


def test_a_database_cut_before_its_primary_keys_is_initialised_again(load_db, state):
    """Rows loaded (the scale's branches are there) but no primary keys: pgbench -i was cut in its last step."""
    postgres = load_db
    result, failed = run_module(pggit_chaos_load.main, load_args(postgres, state, scale=1, duration=1, ttl=60))
    assert not failed and result['load']['initialised'] is True, result.get('msg')
    argv = [os.path.join(PG_BIN, 'pgbench'), '-i', '-I', 'dtg', '-s', '1', '-q', '-h', '127.0.0.1', '-p', str(postgres.port),
            '-U', 'postgres', _pgbench.DATABASE]
    subprocess.run(argv, check=True, capture_output=True)
    assert not ready(postgres, 1)
    planned, failed = run_module(pggit_chaos_load.main, load_args(postgres, state, scale=1, duration=1, ttl=60),
                                 check_mode=True)
    assert not failed and planned['load']['init_argv'][1:4] == ['-i', '-s', '1']
    result, failed = run_module(pggit_chaos_load.main, load_args(postgres, state, scale=1, duration=1, ttl=60))
    assert not failed, result.get('msg')
    assert result['load']['initialised'] is True and result['transactions'] > 0
    assert ready(postgres, 1)


def test_the_ttl_stops_an_initialisation_that_outlasts_it(load_db, state):
    """No revert asked for, the controller waiting: the TTL reaper stops pgbench -i, and the module says so."""
    postgres = load_db
    ttl, scale = 6, 300  # pgbench -i -s 300 takes far longer than 6 s here
    started = time.time()
    job = start_module('pggit_chaos_load', load_args(postgres, state, ttl=ttl, duration=1, scale=scale))
    try:
        assert wait_for(init_processes, 30, 0.05), 'pgbench -i never started'
        gone = wait_until(lambda: pgbench_processes() == [], started + ttl + 12)
        assert gone, 'pgbench -i outlived the TTL by more than 12 s'
        result = module_result(job, 60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(10)
    assert result['failed'] and 'initialisation' in result['msg'], result.get('msg')
    assert wait_for(lambda: load_sessions(postgres) == 0, 10)
    assert wait_for(lambda: ledger_ids(state) == [], 10) and programs(state) == []
    assert not ready(postgres, scale)


def _session(postgres, application_name, ready):
    """A session of the load's database, named ``application_name``, busy in a long statement until it is ended (the
    index build a cut ``pgbench -i`` leaves running in the server)."""
    conn = psycopg2.connect(host='127.0.0.1', port=postgres.port, user='postgres', dbname=_pgbench.DATABASE,
                            application_name=application_name)
    conn.autocommit = True
    ready.set()
    try:
        conn.cursor().execute('SELECT pg_sleep(60)')
    except psycopg2.Error:
        pass
    finally:
        conn.close()


def test_the_records_step_ends_a_cut_initialisations_sessions_when_its_program_could_not(load_db, state):
    """SIGKILLed (the OOM killer, a clean-up past its grace), the program never ends its initialisation's sessions: the
    record's pg_end_load_init step does, those of its own fault only, and confirms they are gone."""
    postgres = load_db
    with connection(postgres.params('postgres')) as conn:
        conn.cursor().execute('CREATE DATABASE %s' % _pgbench.DATABASE)
    mine, other = _pgbench.init_app('load--spike'), _pgbench.init_app('load--another')
    threads = []
    for name in (mine, other):
        ready = threading.Event()
        thread = threading.Thread(target=_session, args=(postgres, name, ready), daemon=True)
        thread.start()
        assert ready.wait(10)
        threads.append(thread)

    def busy(name):
        with connection(postgres.params('postgres')) as conn:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'", (name,))
            return cur.fetchone()[0]

    assert wait_for(lambda: busy(mine) == 1 and busy(other) == 1, 10), 'the sessions never started: the test would prove nothing'
    step = _pgbench.init_step(_pgconn.stored_conn(postgres.params('postgres')), 'load--spike')
    _steps.check_steps([step], state)  # a step as the load writes it passes the record check
    try:
        assert step['conn']['db'] == 'postgres'  # as the fault connected: the load's database may not even exist
        assert _steps.STEP_HANDLERS[_pgbench.INIT_STEP](step, {}) is True
        assert busy(mine) == 0 and busy(other) == 1, 'the step ended the wrong sessions'
        assert _steps.STEP_HANDLERS[_pgbench.INIT_STEP](step, {}) is False, 'nothing left: no change'
    finally:
        with connection(postgres.params('postgres')) as conn:
            conn.cursor().execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s',
                                  (other,))
        for thread in threads:
            thread.join(10)


def test_a_load_that_ended_by_itself_closes_its_record_without_the_init_step(load_db, state, monkeypatch):
    """The program ends a cut initialisation's sessions itself before its last word: closing the record of a load that
    ended by itself must not need the server again (a server stopped by then would keep the record due)."""
    postgres = load_db
    calls = []

    def unreachable(step, ctx, **kwargs):
        calls.append(step['application_name'])
        raise _steps.UndoError('the server is gone')

    monkeypatch.setattr(_pgbench, 'end_init', unreachable)
    result, failed = run_module(pggit_chaos_load.main, load_args(postgres, state, scale=1, duration=1, ttl=60))
    assert not failed, result.get('msg')
    assert result['transactions'] > 0 and result['closed']['result'] == 'reverted', result['closed']
    assert calls == [] and ledger_ids(state) == [] and programs(state) == []
