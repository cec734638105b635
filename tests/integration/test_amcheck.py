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


def test_a_clean_server_reports_no_corruption_and_the_extension_is_made_once(pgdb):
    assert not has_amcheck(pgdb)
    result, failed = verify(pgdb)  # amcheck: none (the default) costs nothing and creates nothing
    assert not failed and 'amcheck' not in [c['name'] for c in result['checks']] and not has_amcheck(pgdb)
    planned, failed = verify(pgdb, check_mode=True, amcheck='check')
    assert not failed and amcheck_of(planned)['status'] == 'error' and 'check mode does not create it' in amcheck_of(planned)['message']
    assert not has_amcheck(pgdb)
    result, failed = verify(pgdb, amcheck='check')
    assert not failed and result['healthy'], result['findings']
    check = amcheck_of(result)
    assert check['status'] == 'ok' and check['data']['corrupt'] == [] and check['data']['errors'] == []
    assert check['data']['extension_created'] is True and has_amcheck(pgdb)
    assert INDEX in check['data']['indexes'] and check['data']['indexes_checked'] == len(check['data']['indexes']) >= 3
    again, _failed = verify(pgdb, amcheck='parent')
    assert amcheck_of(again)['status'] == 'ok' and amcheck_of(again)['data']['function'] == 'bt_index_parent_check'
    assert amcheck_of(again)['data']['extension_created'] is False


@pytest.mark.parametrize('mode, function', [('check', 'bt_index_check'), ('parent', 'bt_index_parent_check')])
def test_a_really_corrupted_pggit_index_is_reported_with_amchecks_text(postgres, pgdb, tablespace, mode, function):
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
