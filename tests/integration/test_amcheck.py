"""pggit_verify's amcheck reports a really corrupted pgGit index page, with amcheck's own words, and a clean one as clean.

The corruption is real: two line pointers of a leaf page of pggit.history_pkey
are swapped in the data file (the recipe of lab-notes "Real btree
corruption"), and ALTER INDEX ... SET TABLESPACE makes the server read the
damaged page from disk (while it is cached, nothing sees the damage).
"""
from __future__ import annotations

import os
import pwd
import shutil
import struct
import uuid

import pytest

from modrun import run_module
from pgtools import query
from ansible_collections.pggit.chaos.plugins.module_utils import _probe
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify

PAGE = 8192
INDEX = 'pggit.history_pkey'


def verify(params, check_mode=False, **extra):
    args = dict(params, canary=False, health_check='skip')
    args.update(extra)
    return run_module(pggit_verify.main, args, check_mode=check_mode)


def amcheck_of(result):
    return next(c for c in result['checks'] if c['name'] == 'amcheck')


def has_amcheck(params):
    return query(params, "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")[0][0] == 1


def swap_two_items(path, block):
    """Swap the line pointers of the first two data items of a btree leaf page; return their offsets."""
    with open(path, 'r+b') as handle:
        handle.seek(block * PAGE)
        page = bytearray(handle.read(PAGE))
        lower, _upper, special = struct.unpack_from('<HHH', page, 12)
        _prev, nxt, _level, flags = struct.unpack_from('<IIIH', page, special)
        assert flags & 1, 'block %d is not a leaf page' % block
        first = 1 if nxt == 0 else 2  # a page that is not rightmost starts with its high key
        items = (lower - 24) // 4
        assert items >= first + 1, 'the leaf page holds fewer than two items'
        a, b = 24 + 4 * (first - 1), 24 + 4 * first
        page[a:a + 4], page[b:b + 4] = page[b:b + 4], page[a:a + 4]
        handle.seek(block * PAGE)
        handle.write(bytes(page))
    return first, first + 1


@pytest.fixture
def tablespace(postgres):
    """A tablespace in the throwaway server's folder; dropped (with what uses it) after the test."""
    name = 'ts_' + uuid.uuid4().hex[:8]
    path = os.path.join(postgres.base, name)
    os.mkdir(path, 0o700)
    pw = pwd.getpwnam('postgres')
    os.chown(path, pw.pw_uid, pw.pw_gid)
    postgres.psql('postgres', '-c', "CREATE TABLESPACE %s LOCATION '%s'" % (name, path))
    yield name
    users = postgres.psql('postgres', '-At', '-c', "SELECT datname FROM pg_database WHERE datname LIKE 'it_%'").split()
    for db in users:
        found = postgres.psql(db, '-At', '-c', "SELECT count(*) FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace "
                                               "WHERE t.spcname = '%s'" % name).strip()
        if found != '0':
            postgres.psql('postgres', '-c', 'DROP DATABASE "%s" WITH (FORCE)' % db)
    postgres.psql('postgres', '-c', 'DROP TABLESPACE %s' % name)
    shutil.rmtree(path, ignore_errors=True)


def history(params):
    """Row count, last id and digest of pggit.history (every row, so any DDL the probe ran would show)."""
    return query(params, "SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(concat_ws('|', id, object_id, change_type, "
                         "sql_executed), E'\\n' ORDER BY id), '')) FROM pggit.history")[0]


def test_amcheck_never_creates_the_extension_unless_amcheck_create_says_so(pgdb):
    """zero_footprint: CREATE EXTENSION is DDL pgGit records, so by default a missing amcheck is an error, not created."""
    assert not has_amcheck(pgdb)
    before = history(pgdb)
    result, failed = verify(pgdb)  # amcheck: none (the default) costs nothing and creates nothing
    assert not failed and 'amcheck' not in [c['name'] for c in result['checks']] and not has_amcheck(pgdb)
    for mode in ('check', 'parent'):
        result, failed = verify(pgdb, amcheck=mode)
        check = amcheck_of(result)
        assert not failed and check['status'] == 'error' and not result['healthy'] and result['changed'] is False
        assert 'amcheck_create=false' in check['message'] and 'postgresql-contrib' in check['message'], check['message']
    planned, failed = verify(pgdb, check_mode=True, amcheck='check', amcheck_create=True)
    assert not failed and planned['changed'] is True, 'check mode: it would create it'
    assert amcheck_of(planned)['status'] == 'error' and 'check mode does not create it' in amcheck_of(planned)['message']
    assert not has_amcheck(pgdb) and history(pgdb) == before, 'nothing created, nothing recorded'

    result, failed = verify(pgdb, amcheck='check', amcheck_create=True)
    assert not failed and result['healthy'], result['findings']
    assert result['changed'] is True and has_amcheck(pgdb)
    check = amcheck_of(result)
    assert check['status'] == 'ok' and check['data']['corrupt'] == [] and check['data']['errors'] == []
    assert check['data']['extension_created'] is True
    assert INDEX in check['data']['indexes'] and check['data']['indexes_checked'] == len(check['data']['indexes']) >= 3
    again, failed = verify(pgdb, amcheck='check', amcheck_create=True)
    assert not failed and again['changed'] is False and amcheck_of(again)['data']['extension_created'] is False


@pytest.mark.parametrize('mode, function', [('check', 'bt_index_check'), ('parent', 'bt_index_parent_check')])
def test_a_probe_with_amcheck_where_it_exists_adds_no_history_row(pgdb, mode, function):
    query(pgdb, 'CREATE EXTENSION amcheck')  # as an operator would, before the baseline
    for n in range(3):
        query(pgdb, 'CREATE TABLE public.tracked_%d (id int)' % n)
    before = history(pgdb)
    assert before[0] >= 3, 'pgGit records DDL here, so a DDL by the probe would show'
    result, failed = verify(pgdb, amcheck=mode, history_digest=True)
    assert not failed and result['healthy'] and result['changed'] is False, result['findings']
    assert amcheck_of(result)['data']['function'] == function and amcheck_of(result)['data']['extension_created'] is False
    assert history(pgdb) == before
    assert (result['history']['rows'], result['history']['max_id']) == tuple(before[:2])


# Raises (SQLSTATE P0001, so an "could not be checked" error, not corruption) when this backend holds a ShareLock on any
# relation other than the index being checked and its table: a lock left over from an earlier index's check.
NO_LEFTOVER_LOCK = """CREATE FUNCTION public.no_leftover_share_lock(idx oid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE other text;
BEGIN
  SELECT string_agg(l.relation::regclass::text, ', ') INTO other FROM pg_locks l
   WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.mode = 'ShareLock'
     AND l.relation <> idx AND l.relation <> (SELECT indrelid FROM pg_index WHERE indexrelid = idx);
  IF other IS NOT NULL THEN RAISE EXCEPTION 'still holding ShareLock on %', other; END IF;
END $$"""


def test_the_parent_check_holds_each_share_lock_for_its_own_index_only(pgdb, monkeypatch):
    """The ShareLock that blocks tracked DDL is gone before the next index is checked.

    A regression guard: amcheck releases its locks when each call ends, so this
    also held with the old single transaction; the unit test
    test_each_index_is_checked_in_a_read_only_bounded_transaction_of_its_own
    pins the one-transaction-per-index structure."""
    query(pgdb, 'CREATE EXTENSION amcheck')
    query(pgdb, NO_LEFTOVER_LOCK)
    monkeypatch.setitem(_probe.AMCHECK_CALLS, 'parent', 'SELECT bt_index_parent_check(x.o::regclass, true), '
                        'public.no_leftover_share_lock(x.o) FROM (SELECT %s::oid AS o) x')
    result, failed = verify(pgdb, amcheck='parent')
    check = amcheck_of(result)
    assert not failed and check['data']['function'] == 'bt_index_parent_check'
    assert check['data']['errors'] == [] and check['status'] == 'ok', check['data']['errors']
    tables = query(pgdb, "SELECT count(DISTINCT i.indrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                         "WHERE c.relnamespace = 'pggit'::regnamespace AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')")[0][0]
    assert tables >= 2 and check['data']['indexes_checked'] >= 3, 'indexes of several tables, so a leftover lock would show'


@pytest.mark.parametrize('mode, function', [('check', 'bt_index_check'), ('parent', 'bt_index_parent_check')])
def test_a_really_corrupted_pggit_index_is_reported_with_amchecks_text(postgres, pgdb, tablespace, mode, function):
    query(pgdb, 'CREATE EXTENSION amcheck')
    for n in range(8):  # tracked DDL: history rows, so the index's leaf page holds several keys
        query(pgdb, 'CREATE TABLE public.amcheck_%d (id int)' % n)
    clean, _failed = verify(pgdb, amcheck=mode)
    assert amcheck_of(clean)['status'] == 'ok', amcheck_of(clean)['message']
    data_dir = query(pgdb, 'SHOW data_directory')[0][0]
    relpath = query(pgdb, "SELECT pg_relation_filepath(%s)", (INDEX,))[0][0]
    query(pgdb, 'CHECKPOINT')
    swap_two_items(os.path.join(data_dir, relpath), 1)  # block 1: the first leaf, never the metapage
    cached, _failed = verify(pgdb, amcheck=mode)
    assert amcheck_of(cached)['data']['corrupt'] == [], 'while the page is cached, nothing sees the damage'
    query(pgdb, 'ALTER INDEX %s SET TABLESPACE %s' % (INDEX, tablespace))  # copied from disk: the damage is read

    result, failed = verify(pgdb, amcheck=mode)
    assert not failed
    check = amcheck_of(result)
    assert check['status'] == 'failed' and check['critical'] and not result['healthy'] and 'amcheck' in result['failed_checks']
    assert check['data']['function'] == function
    corrupt = check['data']['corrupt']
    assert [c['index'] for c in corrupt] == [INDEX]
    assert corrupt[0]['error'] == 'item order invariant violated for index "history_pkey"'
    assert corrupt[0]['sqlstate'] == 'XX002'
    assert 'amcheck: index pggit.history_pkey is corrupt: item order invariant violated for index "history_pkey"' in result['findings']
    # Its own savepoint: the other indexes were still checked, and found clean.
    assert check['data']['indexes_checked'] == len(check['data']['indexes']) >= 3
    assert result['amcheck']['corrupt'] == corrupt
