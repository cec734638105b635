"""The chaos monitor (pggit_verify watch samples) against a real PostgreSQL with the pgGit fixture."""
from __future__ import annotations

import threading
import time

import psycopg2

from modrun import run_module
from pgtools import query
from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._probe import AsyncSampler, Monitor
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify


def history_rows(params):
    return query(params, 'SELECT count(*) FROM pggit.history')[0][0]


def catalog_state(params):
    """Everything a monitor could leave behind: objects, extensions, functions, event triggers."""
    return query(params, "SELECT (SELECT count(*) FROM pg_class), (SELECT count(*) FROM pg_extension), "
                 "(SELECT count(*) FROM pg_proc), (SELECT count(*) FROM pg_event_trigger)")[0]


def test_watch_samples_every_second_and_sees_history_grow_and_lock_waits(pgdb):
    before_rows, before_catalog = history_rows(pgdb), catalog_state(pgdb)
    holder = _pgconn.connect(pgdb, autocommit=False)
    waiter = _pgconn.connect(pgdb, autocommit=True)

    def traffic():
        time.sleep(0.8)
        for n in range(3):  # three tracked DDL, one history row each
            query(pgdb, 'CREATE TABLE public.monitor_t%d (id int)' % n)
            time.sleep(0.5)
        holder.cursor().execute('LOCK TABLE public.monitor_t0 IN ACCESS EXCLUSIVE MODE')
        try:
            waiter.cursor().execute("SET statement_timeout = 1800; SELECT count(*) FROM public.monitor_t0")
        except psycopg2.Error:
            pass  # the wait was the point
        holder.rollback()

    thread = threading.Thread(target=traffic)
    thread.start()
    started = time.time()
    result, failed = run_module(pggit_verify.main, dict(pgdb, watch_duration=5, watch_interval=2, abort_after=0))
    thread.join()
    holder.close()
    waiter.close()
    assert not failed and result['healthy'], result['findings']
    series = result['series']
    # Every second: 5 s of watch, at least 5 samples, spaced about one second apart.
    assert len(series) >= 5, series
    gaps = [b['t'] - a['t'] for a, b in zip(series, series[1:])]
    assert all(0.7 < gap < 1.6 for gap in gaps), gaps
    assert series[0]['t'] >= started - 1
    for sample in series:
        assert sample['phase'] == 'window' and sample['pggit_health'] == 'ok', sample
        assert sample['connections'] >= 0 and sample['lag_bytes'] == {} and sample['in_recovery'] is False
    rows = [s['history_rows'] for s in series]
    assert rows[0] == before_rows and rows[-1] == before_rows + 3, rows
    assert max(s['lock_waits'] for s in series) >= 1, 'the waiting SELECT must show as a lock wait'
    assert result['monitor_cost']['samples'] == len(series)
    # Read-only: nothing created by the monitor (the three tables are the test's own).
    after_catalog = catalog_state(pgdb)
    assert after_catalog[1:] == before_catalog[1:]


def test_single_probe_takes_one_sample_with_its_phase(pgdb):
    result, failed = run_module(pggit_verify.main, dict(pgdb, monitor_phase='before'))
    assert not failed
    assert [s['phase'] for s in result['series']] == ['before']
    assert result['series'][0]['history_rows'] == history_rows(pgdb)


def test_monitor_off_returns_no_series(pgdb):
    result, failed = run_module(pggit_verify.main, dict(pgdb, monitor=False, watch_duration=1))
    assert not failed and 'series' not in result


def test_tracking_off_and_missing_pggit_show_in_health(pgdb):
    sampler = AsyncSampler(pgdb, 1000)
    monitor = Monitor(sampler, phase='window')
    assert monitor.sample()['pggit_health'] == 'ok'
    query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
    assert monitor.sample()['pggit_health'] == 'degraded'
    query(pgdb, "SELECT 1")
    for (name,) in query(pgdb, "SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"):
        query(pgdb, 'ALTER EVENT TRIGGER %s DISABLE' % name)
    sampler = AsyncSampler(pgdb, 1000)
    monitor = Monitor(sampler, phase='window')
    sample = monitor.sample()
    assert sample['pggit_health'] == 'untracked', sample
    query(pgdb, 'DROP SCHEMA pggit CASCADE')
    sample = monitor.sample()
    assert sample['pggit_health'] == 'absent' and sample['history_rows'] is None, sample
    monitor.stop()


def test_a_server_that_never_answers_is_down_within_the_timeout():
    """A listening socket that accepts and never answers (a frozen server): the sample gives up at its timeout."""
    import socket
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    try:
        monitor = Monitor(AsyncSampler({'login_host': '127.0.0.1', 'login_port': port, 'db': 'x', 'login_user': 'x'}, 300))
        started = time.time()
        sample = monitor.sample()
        elapsed = time.time() - started
        monitor.stop()
    finally:
        listener.close()
    assert sample['pggit_health'] == 'down' and sample['error'], sample
    assert elapsed < 1.0, elapsed


def test_kill_connections_never_takes_the_monitor_connection(pgdb):
    """The monitor's kept connection carries a name pggit_chaos_connections excludes by default.

    Before this, the lab's kill_connections spent its three kills on the monitor and failed
    ("3 backend(s) terminated, 0 workload reconnect(s)")."""
    from ansible_collections.pggit.chaos.plugins.module_utils._probe import MONITOR_APPLICATION_NAME
    from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_connections
    import yaml
    # The documented default (test_module_args keeps documentation and argspec equal).
    excluded = yaml.safe_load(pggit_chaos_connections.DOCUMENTATION)['options']['exclude_application_names']['default']
    monitor = Monitor(AsyncSampler(pgdb, 1000))
    monitor.sample()
    names = [r[0] for r in query(pgdb, "SELECT application_name FROM pg_stat_activity WHERE application_name = %s",
                                 (MONITOR_APPLICATION_NAME,))]
    protected = query(pgdb, 'SELECT %s LIKE ANY(%s)', (MONITOR_APPLICATION_NAME, excluded))[0][0]
    monitor.stop()
    assert names == [MONITOR_APPLICATION_NAME] and protected is True, (names, excluded)


def test_a_locked_history_still_gives_the_rest_of_the_sample(pgdb):
    """lock_contention holds ACCESS EXCLUSIVE on pggit.history: the sample keeps connections and lock waits, without the count."""
    holder = _pgconn.connect(pgdb, autocommit=False)
    try:
        holder.cursor().execute('LOCK TABLE pggit.history IN ACCESS EXCLUSIVE MODE')
        monitor = Monitor(AsyncSampler(pgdb, 1000))
        sample = monitor.sample()
        monitor.stop()
    finally:
        holder.rollback()
        holder.close()
    assert sample['history_locked'] is True and sample['history_rows'] is None, sample
    assert sample['pggit_health'] == 'ok' and sample['connections'] >= 1 and 'error' not in sample, sample


def test_a_history_too_large_to_count_still_gives_the_rest_of_every_sample(pgdb):
    """The row count of a huge pggit.history outlasts the sample's statement timeout: the sample must still read
    connections, lock waits and health (not be recorded as a server that did not answer), within its budget, and the
    later samples must stop paying for the count. A view that sleeps stands in for a table too large to count."""
    admin = _pgconn.connect(pgdb, autocommit=True)
    try:
        cur = admin.cursor()
        cur.execute('ALTER TABLE pggit.history RENAME TO history_real')
        cur.execute('CREATE VIEW pggit.history AS SELECT 1 AS id FROM pg_sleep(5)')
    finally:
        admin.close()
    sampler = AsyncSampler(pgdb, 1000)
    monitor = Monitor(sampler)
    started = time.time()
    first = monitor.sample()
    second = monitor.sample()
    elapsed = time.time() - started
    monitor.stop()
    for sample in (first, second):
        assert sample['pggit_health'] != 'down' and 'error' not in sample, sample
        assert sample['history_rows'] is None and sample['history_slow'] is True and sample['connections'] >= 0, sample
    assert first['probe_ms'] < 1000 and second['probe_ms'] < 300, (first['probe_ms'], second['probe_ms'])
    assert elapsed < 2.0 and sampler.count_history is False
