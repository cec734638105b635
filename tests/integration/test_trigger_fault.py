"""pggit_chaos_trigger against a real PostgreSQL: inject, no stacking, revert, TTL."""
from __future__ import annotations

import json
import os

import psycopg2
import pytest
from psycopg2 import sql

from modrun import run_module
from pgtools import connection, query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_trigger, pggit_chaos_revert


def modes(params):
    return dict(query(params, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"))


def tracked(params, name):
    """Create a table and return how many CREATE history rows it got."""
    query(params, 'CREATE TABLE public.%s (id int)' % name)
    return query(params, "SELECT count(*) FROM pggit.history h JOIN pggit.objects o ON o.id = h.object_id "
                         "WHERE o.object_name = %s AND h.change_type::text = 'CREATE'", (name,))[0][0]


def ledger_files(state_dir):
    faults = os.path.join(state_dir, 'faults')
    return sorted(f for f in os.listdir(faults) if f.endswith('.json')) if os.path.isdir(faults) else []


def inject(params, state_dir, **extra):
    args = dict(params, name='off', state_dir=state_dir, ttl=60)
    args.update(extra)
    return run_module(pggit_chaos_trigger.main, args)


def test_inject_stops_tracking_and_revert_restores_it(pgdb, state_dir):
    assert tracked(pgdb, 'before_fault') == 1
    result, failed = inject(pgdb, state_dir)
    assert not failed, result
    assert result['changed'] and result['tracking'] == 'off'
    assert set(result['disabled']) == set(modes(pgdb))
    assert set(modes(pgdb).values()) == {'D'}
    assert tracked(pgdb, 'during_fault') == 0
    assert ledger_files(state_dir) == ['trigger--off.json']
    reaper = result['record']['reaper']
    assert _steps.same_process(reaper['pid'], reaper['starttime'], 'pggit-chaos-reaper')

    again, failed = inject(pgdb, state_dir)
    assert not failed and again['changed'] is False, 'a fault in place must not stack'

    reverted, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
    assert not failed and reverted['changed']
    assert set(modes(pgdb).values()) == {'O'}
    assert tracked(pgdb, 'after_fault') == 1
    assert ledger_files(state_dir) == []
    assert wait_for(lambda: not _steps.same_process(reaper['pid'], reaper['starttime']), 5)

    gone, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
    assert not failed and gone['changed'] is False


def test_record_holds_the_undo_and_no_secret(pgdb, state_dir):
    query(pgdb, 'ALTER EVENT TRIGGER pggit_drop_trigger ENABLE ALWAYS')
    result, failed = inject(pgdb, state_dir)
    assert not failed
    with open(os.path.join(state_dir, 'faults', 'trigger--off.json')) as handle:
        record = json.load(handle)
    assert record['status'] == 'active' and record['expires_at'] - record['created_at'] == 60
    undo = dict((t['name'], t['mode']) for t in record['undo'][0]['triggers'])
    assert undo['pggit_drop_trigger'] == 'A'
    assert 'login_password' not in json.dumps(record)
    run_module(pggit_chaos_revert.main, dict(state_dir=state_dir))
    assert modes(pgdb)['pggit_drop_trigger'] == 'A', 'revert restores the recorded mode, not plain ENABLE'


def test_ttl_reverts_without_any_controller(pgdb, state_dir):
    result, failed = inject(pgdb, state_dir, ttl=5)
    assert not failed and set(modes(pgdb).values()) == {'D'}
    reaper = result['record']['reaper']
    assert wait_for(lambda: set(modes(pgdb).values()) == {'O'}, 12), 'the reaper did not re-enable the triggers'
    assert wait_for(lambda: ledger_files(state_dir) == [], 5)
    assert wait_for(lambda: not _steps.same_process(reaper['pid'], reaper['starttime']), 5), 'the reaper outlived its fault'
    with open(os.path.join(state_dir, 'reaper.log')) as handle:
        assert 'trigger--off: reverted' in handle.read()


def test_partial_selection_reports_what_stayed_on(pgdb, state_dir):
    result, failed = inject(pgdb, state_dir, triggers=['pggit_ddl_trigger'])
    assert not failed
    assert result['disabled'] == ['pggit_ddl_trigger']
    assert 'pggit_enhanced_ddl_trigger' in result['left_enabled']
    assert result['tracking'] == 'partial'
    assert tracked(pgdb, 'partial_fault') == 1, 'another ddl_command_end trigger still records'
    run_module(pggit_chaos_revert.main, dict(state_dir=state_dir))


def test_check_mode_changes_nothing(pgdb, state_dir):
    result, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir), check_mode=True, diff=True)
    assert not failed and result['changed']
    assert set(result['diff']['after'][n]['mode'] for n in result['diff']['after']) == {'D'}
    assert set(modes(pgdb).values()) == {'O'}
    assert ledger_files(state_dir) == []


@pytest.mark.parametrize('extra, needle', [
    ({'triggers': ['nope']}, "triggers: unknown event trigger 'nope'"),
    ({'ttl': 1}, 'ttl must be between 5 and 86400 seconds, got 1'),
    ({'ttl': 100000}, 'ttl must be between 5 and 86400 seconds, got 100000'),
    ({'login_port': 1}, "unable to connect to database"),
    ({'state_dir': 'relative/dir'}, "state_dir must be an absolute path, got 'relative/dir'"),
])
def test_bad_input_fails_clearly_and_leaves_nothing(pgdb, state_dir, extra, needle):
    args = dict(pgdb, name='off', state_dir=state_dir, ttl=30)
    args.update(extra)
    result, failed = run_module(pggit_chaos_trigger.main, args)
    assert failed and needle in result['msg'], result['msg']
    assert set(modes(pgdb).values()) == {'O'}
    assert ledger_files(state_dir) == []


def test_revert_selects_by_experiment(pgdb, state_dir):
    inject(pgdb, state_dir, name='a', triggers=['pggit_ddl_trigger'], experiment='exp1')
    inject(pgdb, state_dir, name='b', triggers=['pggit_drop_trigger'], experiment='exp2')
    result, failed = run_module(pggit_chaos_revert.main, dict(state_dir=state_dir, experiment='exp1'))
    assert not failed and [r['id'] for r in result['reverted']] == ['trigger--a']
    assert result['remaining'] == ['trigger--b']
    assert modes(pgdb)['pggit_ddl_trigger'] == 'O' and modes(pgdb)['pggit_drop_trigger'] == 'D'
    result, failed = run_module(pggit_chaos_revert.main, dict(state_dir=state_dir, faults=['b', 'never-was']))
    assert not failed and result['absent'] == ['never-was'] and result['remaining'] == []
    assert set(modes(pgdb).values()) == {'O'}


def test_revert_drops_untracked_objects_before_tracking_returns(pgdb, state_dir):
    history = query(pgdb, 'SELECT count(*) FROM pggit.history')[0][0]
    result, failed = inject(pgdb, state_dir, drop_schema='scratch', ttl=5)
    assert not failed
    query(pgdb, 'CREATE SCHEMA scratch')
    query(pgdb, 'CREATE TABLE scratch.untracked (id int)')
    assert wait_for(lambda: set(modes(pgdb).values()) == {'O'}, 12), 'TTL revert'
    assert query(pgdb, "SELECT to_regnamespace('scratch')")[0][0] is None
    assert query(pgdb, 'SELECT count(*) FROM pggit.history')[0][0] == history, 'the drop happened while tracking was off'


@pytest.mark.parametrize('schema', ['pggit', 'public', 'information_schema', 'pg_catalog', 'pg_toast', ' '])
def test_drop_schema_refuses_real_schemas(pgdb, state_dir, schema):
    result, failed = inject(pgdb, state_dir, drop_schema=schema)
    assert failed and result['msg'] == ("drop_schema must name a scratch schema, not '%s' (pggit, public, information_schema "
                                        "and pg_* are never dropped; names are exact, so \"PGGIT\" is a scratch schema)"
                                        % schema)
    assert ledger_files(state_dir) == [] and set(modes(pgdb).values()) == {'O'}


def schema_exists(params, name):
    return bool(query(params, 'SELECT 1 FROM pg_namespace WHERE nspname = %s', (name,)))


def create_scratch(params, name):
    with connection(params) as conn:
        cur = conn.cursor()
        cur.execute(sql.SQL('CREATE SCHEMA {}').format(sql.Identifier(name)))
        cur.execute(sql.SQL('CREATE TABLE {}.untracked (id int)').format(sql.Identifier(name)))


@pytest.mark.parametrize('schema', ['PGGIT', 'Public', 'Scratch_Mixed', 'a"b', 'with space', 'pggit_Chaos.drift'])
def test_drop_schema_is_found_by_its_exact_name(pgdb, state_dir, schema):
    """to_regnamespace() folds 'Scratch_Mixed' to scratch_mixed (so the revert saw it "gone") and rejects 'a"b' (so it failed forever)."""
    result, failed = inject(pgdb, state_dir, drop_schema=schema)
    assert not failed, result
    create_scratch(pgdb, schema)
    reverted, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
    assert not failed, reverted['msg']
    assert reverted['revert']['result'] == 'reverted' and reverted['revert']['undo_changed'] is True
    assert not schema_exists(pgdb, schema), 'the scratch schema %r must be dropped' % schema
    assert schema_exists(pgdb, 'pggit') and schema_exists(pgdb, 'public')
    assert set(modes(pgdb).values()) == {'O'} and ledger_files(state_dir) == []


def test_a_drop_that_fails_still_brings_the_triggers_back_and_is_retried(pgdb, state_dir):
    result, failed = inject(pgdb, state_dir, drop_schema='scratch')
    assert not failed, result
    create_scratch(pgdb, 'scratch')
    blocker = psycopg2.connect(host=pgdb['login_host'], port=pgdb['login_port'], user=pgdb['login_user'], dbname=pgdb['db'])
    try:
        cur = blocker.cursor()
        cur.execute("SET idle_in_transaction_session_timeout = '60s'")  # never outlives the test for long
        cur.execute('SELECT count(*) FROM scratch.untracked')  # an open transaction: DROP SCHEMA must wait for it
        reverted, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
        assert failed, 'a drop that failed must be reported'
        assert ('step 2 (pg_drop_schema scratch): DROP SCHEMA "scratch" CASCADE failed: canceling statement due to lock timeout'
                in reverted['msg']), reverted['msg']
        assert '1 of 2 undo steps failed' in reverted['msg']
        assert set(modes(pgdb).values()) == {'O'}, 'the triggers come back even though the drop failed'
        assert tracked(pgdb, 'after_failed_drop') == 1
        assert ledger_files(state_dir) == ['trigger--off.json'], 'the record stays, so the drop is retried'
        assert schema_exists(pgdb, 'scratch')
    finally:
        blocker.rollback()
        blocker.close()
    again, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
    assert not failed and again['revert']['result'] == 'reverted', again
    assert not schema_exists(pgdb, 'scratch') and ledger_files(state_dir) == []


def test_drop_schema_that_already_exists_is_refused_and_left_alone(pgdb, state_dir):
    """A typo such as drop_schema: app must never wipe app at the TTL."""
    create_scratch(pgdb, 'app')
    result, failed = inject(pgdb, state_dir, drop_schema='app')
    assert failed and "drop_schema 'app' already exists" in result['msg'], result['msg']
    assert ledger_files(state_dir) == [] and set(modes(pgdb).values()) == {'O'}
    assert schema_exists(pgdb, 'app')


def test_the_same_fault_asked_for_other_triggers_is_replaced(pgdb, state_dir):
    """In place for every trigger, then asked for pggit_ddl_trigger only: the others come back on, not left off."""
    first, failed = inject(pgdb, state_dir)
    assert not failed and set(modes(pgdb).values()) == {'D'}
    others = sorted(set(modes(pgdb)) - {'pggit_ddl_trigger'})
    assert others, 'the fixture has a single trigger: this test could not tell a replacement'
    result, failed = inject(pgdb, state_dir, triggers=['pggit_ddl_trigger'])
    assert not failed and result['changed'], result
    assert result['replaced'] == {'triggers': {'before': [], 'after': ['pggit_ddl_trigger']}}
    assert result['stale_reverted']['result'] == 'reverted'
    assert modes(pgdb) == dict([('pggit_ddl_trigger', 'D')] + [(name, 'O') for name in others])
    assert ledger_files(state_dir) == ['trigger--off.json']
    reaper = first['record']['reaper']
    assert wait_for(lambda: not _steps.same_process(reaper['pid'], reaper['starttime']), 5)
    reverted, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='off', state_dir=state_dir, state='absent'))
    assert not failed and set(modes(pgdb).values()) == {'O'}
