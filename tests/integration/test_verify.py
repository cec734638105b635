"""pggit_verify against a real PostgreSQL with the contract fixture."""
from __future__ import annotations

from modrun import run_module
from pgtools import BROKEN_HEALTH_SQL, query
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify


def verify(params, **extra):
    args = dict(params)
    args.update(extra)
    return run_module(pggit_verify.main, args)


def by_name(result):
    return dict((c['name'], c) for c in result['checks'])


def history_rows(params):
    return query(params, 'SELECT count(*) FROM pggit.history')[0][0]


def test_baseline_is_healthy_and_leaves_no_footprint(pgdb):
    rows = history_rows(pgdb)
    result, failed = verify(pgdb)
    assert not failed and result['healthy'], result['findings']
    checks = by_name(result)
    for name in ('connect', 'pggit_present', 'event_triggers', 'canary', 'health_check', 'replication', 'connections'):
        assert name in checks and checks[name]['elapsed_ms'] >= 0
    assert checks['canary']['status'] == 'ok' and checks['canary']['data']['history_rows'] == 1
    assert history_rows(pgdb) == rows, 'zero-footprint canary must not add history'
    assert result['changed'] is False


def test_committed_canary_is_tracked_and_dropped(pgdb):
    rows = history_rows(pgdb)
    result, failed = verify(pgdb, zero_footprint=False)
    assert not failed and result['healthy']
    assert history_rows(pgdb) == rows + 2  # CREATE and DROP


def test_raising_health_check_is_a_finding_not_a_crash(postgres, pgdb):
    postgres.psql(pgdb['db'], '-f', BROKEN_HEALTH_SQL)
    result, failed = verify(pgdb)
    assert not failed
    check = by_name(result)['health_check']
    assert check['status'] == 'error' and 'raised' in check['message']
    assert any(f.startswith('health_check:') for f in result['findings'])
    assert result['healthy'], 'own probes still pass'
    required, failed = verify(pgdb, health_check='require')
    assert not required['healthy'] and 'health_check' in required['failed_checks']


def test_tracking_off_is_detected_both_ways(pgdb):
    query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
    query(pgdb, 'ALTER EVENT TRIGGER pggit_enhanced_ddl_trigger DISABLE')
    on, _ignored = verify(pgdb)
    assert not on['healthy'] and 'canary' in on['failed_checks']
    assert by_name(on)['event_triggers']['status'] == 'warning'
    assert 'pggit_ddl_trigger' in by_name(on)['event_triggers']['data']['disabled']
    off, _ignored = verify(pgdb, expect_tracking=False)
    assert off['healthy'], off['findings']
    assert by_name(off)['canary']['data']['history_rows'] == 0
    failing, failed = verify(pgdb, fail_on_unhealthy=True)
    assert failed and 'steady state not met' in failing['msg']


def test_drift_lists_untracked_objects(pgdb):
    query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
    query(pgdb, 'ALTER EVENT TRIGGER pggit_enhanced_ddl_trigger DISABLE')
    query(pgdb, 'CREATE TABLE public.sneaky (id int)')
    result, _ignored = verify(pgdb, expect_tracking=False, check_drift=True)
    assert 'public.sneaky' in result['drift']


def test_unreachable_database_is_unhealthy_not_a_crash(pgdb):
    result, failed = verify(dict(pgdb, login_port=1, connect_timeout=2))
    assert not failed and result['healthy'] is False
    assert result['checks'][0]['name'] == 'connect' and result['checks'][0]['status'] == 'failed'
    assert "at 127.0.0.1:1" in result['checks'][0]['message']


def test_watch_aborts_after_consecutive_bad_rounds(pgdb):
    query(pgdb, 'ALTER EVENT TRIGGER pggit_ddl_trigger DISABLE')
    query(pgdb, 'ALTER EVENT TRIGGER pggit_enhanced_ddl_trigger DISABLE')
    result, _ignored = verify(pgdb, watch_duration=30, watch_interval=0.2, abort_after=2)
    assert result['aborted'] and len(result['rounds']) == 2
    assert '2 consecutive unhealthy' in result['abort_reason']


def test_bad_numbers_name_the_option(pgdb):
    result, failed = verify(pgdb, canary_timeout_ms=5)
    assert failed and result['msg'] == 'canary_timeout_ms must be between 100 and 600000, got 5'
    result, failed = verify(pgdb, login_port=70000)
    assert failed and result['msg'] == 'login_port must be between 1 and 65535, got 70000'


def test_history_digest_changes_with_history(pgdb):
    first, _failed = verify(pgdb, history_digest=True)
    query(pgdb, 'CREATE TABLE public.digested (id int)')
    second, _failed = verify(pgdb, history_digest=True)
    assert second['history']['rows'] == first['history']['rows'] + 1
    assert second['history']['digest'] != first['history']['digest']
    again, _failed = verify(pgdb, history_digest=True)
    assert again['history'] == second['history']
