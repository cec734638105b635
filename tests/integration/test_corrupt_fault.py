"""pggit_chaos_corrupt against real PostgreSQL servers of its own: a scrambled leaf page of pggit.history_pkey is really
reported by amcheck ("item order invariant violated") and really makes index lookups wrong; the byte-exact restore
(state: absent, or the TTL reaper alone) makes amcheck clean and lookups right again; recover: reindex does too, without
a restart; a zeroed page on a cluster with data checksums makes every index read of it fail; without the second opt-in
(pggit_chaos_destructive) the real CLI refuses and nothing is written.

The servers are private to this file (module scope): these tests restart them.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import stat

import psycopg2
import pytest

from adhoc import REPO_COLLECTIONS, adhoc, write_config
from background import ledger_ids, record
from modrun import run_module
from pgtools import PG_BIN, Postgres, _as_postgres, kill_reapers, query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _server
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_corrupt

INDEX = 'pggit.history_pkey'
ORDER_ERROR = 'item order invariant violated for index "history_pkey"'
ROWS = 12


class ChecksumPostgres(Postgres):
    """A throwaway server made with initdb --data-checksums (pgtools makes its clusters without)."""

    def start(self, cgroups=()):
        _as_postgres([os.path.join(PG_BIN, 'initdb'), '-A', 'trust', '-U', 'postgres', '-D', self.data, '--no-sync', '--data-checksums'])
        opts = "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60 -c shared_buffers=16MB" % (self.port, self.base)
        _as_postgres([os.path.join(PG_BIN, 'pg_ctl'), '-D', self.data, '-o', opts, '-l', os.path.join(self.base, 'log'), '-w', 'start'])
        self.started = True
        atexit.register(self.stop)
        return self


def _server_with_history(pg):
    params = pg.create_db('corrupt')
    for n in range(ROWS):  # tracked DDL: history rows, so the leaf page of the primary key holds several keys
        query(params, 'CREATE TABLE public.corrupt_%d (id int)' % n)
    return params


@pytest.fixture(scope='module')
def plain():
    pg = Postgres().start()
    params = _server_with_history(pg)
    yield pg, params
    pg.stop()


@pytest.fixture(scope='module')
def checksummed():
    pg = ChecksumPostgres().start()
    params = _server_with_history(pg)
    yield pg, params
    pg.stop()


@pytest.fixture
def state(tmp_path):
    path = str(tmp_path / 'state')
    yield path
    kill_reapers(path)


def answers(params):
    try:
        query(params, 'SELECT 1')
        return True
    except psycopg2.Error:
        return False


def corrupt(params, state_dir, check_mode=False, **args):
    full = dict(params, state_dir=state_dir, ttl=60, name='pkey')
    full.update(args)
    return run_module(pggit_chaos_corrupt.main, full, check_mode=check_mode)


def amcheck(params):
    """[(index, error)] of the corrupt pgGit btree indexes: bt_index_check(index, heapallindexed => true) on each."""
    corrupt = []
    conn = psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname=params['db'])
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute('CREATE EXTENSION IF NOT EXISTS amcheck')
        cur.execute("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_am a ON a.oid = c.relam WHERE n.nspname = 'pggit' AND c.relkind = 'i' AND a.amname = 'btree' ORDER BY 1")
        for (index,) in cur.fetchall():
            try:
                cur.execute('SELECT bt_index_check(%s::regclass, true)', (index,))
            except psycopg2.Error as exc:
                corrupt.append((index, exc.diag.message_primary))
    finally:
        conn.close()
    return corrupt


def index_lookup(params):
    """How many of the history rows an index scan of the primary key finds (a seq scan is forbidden)."""
    with psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname=params['db']) as conn:
        cur = conn.cursor()
        cur.execute('SET enable_seqscan = off')
        cur.execute('SET enable_bitmapscan = off')
        cur.execute('SELECT id FROM pggit.history ORDER BY id')
        wanted = [row[0] for row in cur.fetchall()]
        found = 0
        for ident in wanted:
            cur.execute('SELECT count(*) FROM pggit.history WHERE id = %s', (ident,))
            found += cur.fetchone()[0]
    conn.close()
    return found, len(wanted)


def sha_of(path, offset):
    with open(path, 'rb') as handle:
        handle.seek(offset)
        return hashlib.sha256(handle.read(8192)).hexdigest()


def relation_file(pg, params):
    return os.path.join(pg.data, query(params, 'SELECT pg_relation_filepath(%s::regclass)', (INDEX,))[0][0])


def postmaster(pg):
    return _server.postmaster_pid(pg.data)


def test_check_mode_shows_the_plan_and_writes_nothing(plain, state):
    pg, params = plain
    path = relation_file(pg, params)
    early, failed = corrupt(params, state, check_mode=True)  # no CHECKPOINT: the leaf may be only in the server's memory
    assert not failed and early['block'] == 1, early['msg']
    # Either the server has not written the leaf yet (judged when the fault runs) or the plan shows the file's page: never
    # an assumption about when the checkpointer or the background writer ran.
    assert early['sha256_before'] in (None, sha_of(path, 8192)), early
    assert early['sha256_before'] is not None or 'unflushed' in early['current'], early['current']
    query(params, 'CHECKPOINT')
    before = sha_of(path, 8192)
    result, failed = corrupt(params, state, check_mode=True)
    assert not failed and result['changed'], result['msg']
    assert (result['index'], result['block'], result['offset'], result['relation_file']) == (INDEX, 1, 8192, path)
    assert result['reveal'] == 'tablespace' and result['bytes_written'] == 0 and result['checksums'] is False
    assert result['sha256_before'] == before and 'sha256_after' not in result
    assert sha_of(path, 8192) == before and not os.path.exists(result['saved_file'])
    assert ledger_ids(state) == [] and amcheck(params) == []


def test_scramble_is_reported_by_amcheck_and_the_byte_exact_restore_makes_it_clean(plain, state):
    pg, params = plain
    assert amcheck(params) == [] and index_lookup(params) == (ROWS, ROWS)
    old_pm = postmaster(pg)
    result, failed = corrupt(params, state)
    assert not failed, result['msg']
    assert result['changed'] and result['mode'] == 'scramble' and result['reveal'] == 'tablespace' and result['recover'] == 'restore'
    assert result['bytes_written'] == 8192 and result['block'] == 1 and result['offset'] == 8192
    assert postmaster(pg) == old_pm  # revealed without a restart
    # The original bytes are saved (0600) and the record names that file, with their sha256.
    saved = result['saved_file']
    assert saved.startswith(os.path.join(state, 'pages') + '/') and stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    with open(saved, 'rb') as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == result['sha256_before']
    undo = record(state, 'corrupt--pkey')['undo']
    # No pg_start: nothing stopped the server; restore_page owns the side file (it removes it once the page is back),
    # so no plain removal of it is left to run after a failed restore.
    assert [s['type'] for s in undo] == ['pg_scratch_tablespace', 'restore_page'], undo
    assert undo[-1]['saved'] == saved
    step = undo[-1]
    assert step['file_id'] == [os.stat(step['path']).st_dev, os.stat(step['path']).st_ino] and step['standby'] is False
    assert step['saved'] == saved and step['sha256'] == result['sha256_before'] and step['damaged_sha256'] == result['sha256_after']
    # The tablespace move gave the index a new file: the step follows it, and the page there is the damaged one.
    assert step['path'] == result['relation_file'] == relation_file(pg, params)
    assert sha_of(result['relation_file'], result['offset']) == result['sha256_after'] != result['sha256_before']
    assert query(params, "SELECT count(*) FROM pg_tablespace WHERE spcname LIKE 'pggit_chaos_%'")[0][0] == 0

    assert amcheck(params) == [(INDEX, ORDER_ERROR)]  # amcheck's own words
    found, total = index_lookup(params)
    assert found < total, 'the scrambled page did not change what index scans find'
    again, failed = corrupt(params, state)
    assert not failed and again['changed'] is False  # in place: faults never stack

    reverted, failed = corrupt(params, state, state='absent')
    assert not failed and reverted['changed'], reverted['msg']
    assert wait_for(lambda: answers(params), 10)
    assert postmaster(pg) != old_pm  # the restore restarts the server
    assert sha_of(relation_file(pg, params), 8192) == result['sha256_before']  # byte for byte
    assert amcheck(params) == [] and index_lookup(params) == (ROWS, ROWS)
    assert not os.path.exists(saved) and ledger_ids(state) == []


def test_recover_reindex_rebuilds_the_index_without_a_restart(plain, state):
    pg, params = plain
    old_file = relation_file(pg, params)
    result, failed = corrupt(params, state, reveal='restart', recover='reindex')
    assert not failed, result['msg']
    assert result['reveal'] == 'restart' and result['relation_file'] == old_file
    assert wait_for(lambda: answers(params), 10)
    assert amcheck(params) == [(INDEX, ORDER_ERROR)]
    assert [s['type'] for s in record(state, 'corrupt--pkey')['undo']] == ['pg_start', 'remove_path', 'pg_reindex']
    revealed_pm = postmaster(pg)
    reverted, failed = corrupt(params, state, state='absent')
    assert not failed and reverted['changed'], reverted['msg']
    assert postmaster(pg) == revealed_pm  # REINDEX CONCURRENTLY: no restart
    assert relation_file(pg, params) != old_file  # a new index, built from the table
    assert amcheck(params) == [] and index_lookup(params) == (ROWS, ROWS)
    assert not os.path.exists(result['saved_file']) and ledger_ids(state) == []


def test_the_ttl_reaper_alone_restores_the_page(plain, state):
    pg, params = plain
    result, failed = corrupt(params, state, ttl=5, reveal='restart')
    assert not failed, result['msg']
    assert wait_for(lambda: answers(params), 10)
    assert amcheck(params) == [(INDEX, ORDER_ERROR)]
    assert wait_for(lambda: ledger_ids(state) == [], 40), 'the reaper did not revert by the TTL'
    assert wait_for(lambda: answers(params), 10)
    assert sha_of(relation_file(pg, params), result['offset']) == result['sha256_before']
    assert amcheck(params) == [] and index_lookup(params) == (ROWS, ROWS)


def test_zero_with_data_checksums_makes_every_index_read_fail_and_the_restore_heals_it(checksummed, state):
    pg, params = checksummed
    assert query(params, 'SHOW data_checksums')[0][0] == 'on'
    result, failed = corrupt(params, state, mode='zero')
    assert not failed, result['msg']
    assert result['checksums'] is True and result['mode'] == 'zero'
    with open(result['relation_file'], 'rb') as handle:
        handle.seek(result['offset'])
        assert handle.read(8192) == bytes(8192)
    for _attempt in range(2):  # every read, not only the first
        with pytest.raises(psycopg2.Error) as err:
            index_lookup(params)
        assert 'contains unexpected zero page at block 1' in str(err.value)
    assert [i for i, _e in amcheck(params)] == [INDEX]
    reverted, failed = corrupt(params, state, state='absent')
    assert not failed and reverted['changed'], reverted['msg']
    assert wait_for(lambda: answers(params), 10)
    assert index_lookup(params) == (ROWS, ROWS) and amcheck(params) == []


@pytest.mark.parametrize('args, text', [
    (dict(index='history_created_at_idx_nope'), 'index=history_created_at_idx_nope: there is no relation pggit.history_created_at_idx_nope'),
    (dict(index='history'), 'index=history: pggit.history is not an index'),
    (dict(block=999), 'block=999: index pggit.history_pkey has'),
])
def test_bad_input_fails_naming_the_option_and_leaves_nothing(plain, state, args, text):
    _pg, params = plain
    result, failed = corrupt(params, state, **args)
    assert failed and text in result['msg'], result['msg']
    assert not os.path.exists(state)


def test_a_non_btree_pggit_index_is_refused_and_leaves_nothing(plain, state):
    pg, params = plain
    query(params, 'CREATE INDEX history_id_hash ON pggit.history USING hash (id)')
    try:
        result, failed = corrupt(params, state, index='pggit.history_id_hash')
        assert failed and 'index=pggit.history_id_hash: pggit.history_id_hash is a hash index, not a btree index' in result['msg'], result['msg']
        assert not os.path.exists(state)
    finally:
        query(params, 'DROP INDEX pggit.history_id_hash')


@pytest.mark.parametrize('args', [dict(), dict(reveal='restart', recover='reindex')])
def test_a_server_an_ha_manager_runs_is_refused_before_anything(plain, state, monkeypatch, args):
    pg, params = plain
    real = pggit_chaos_corrupt._server.server_info
    monkeypatch.setattr(pggit_chaos_corrupt._server, 'server_info', lambda cur: dict(real(cur), manager='/usr/bin/patroni /etc/p.yml'))
    before = sha_of(relation_file(pg, params), 8192)
    result, failed = corrupt(params, state, **args)
    assert failed and 'is managed by /usr/bin/patroni /etc/p.yml' in result['msg'], result['msg']
    assert not os.path.exists(state) and sha_of(relation_file(pg, params), 8192) == before


def test_a_writer_holding_the_table_keeps_the_reveal_out_and_the_fault_leaves_nothing(plain, state):
    """The page is damaged and revealed only under LOCK TABLE ... IN SHARE MODE: a backend that can write the table (and dirty
    the cached page, which the move would flush over the damage) keeps it out; the fault gives up by the TTL."""
    pg, params = plain
    query(params, 'CHECKPOINT')
    path = relation_file(pg, params)
    before = sha_of(path, 8192)
    writer = psycopg2.connect(host='127.0.0.1', port=params['login_port'], user='postgres', dbname=params['db'])
    try:
        writer.cursor().execute('LOCK TABLE pggit.history IN ROW EXCLUSIVE MODE')
        result, failed = corrupt(params, state, ttl=8, reveal='tablespace')
    finally:
        writer.rollback()
        writer.close()
    assert failed and 'LOCK TABLE pggit.history IN SHARE MODE: its lock was not granted before the ttl' in result['msg'], result['msg']
    assert sha_of(relation_file(pg, params), 8192) == before and relation_file(pg, params) == path
    pages = os.path.join(state, 'pages')
    assert ledger_ids(state) == [] and (not os.path.isdir(pages) or os.listdir(pages) == [])
    assert query(params, "SELECT count(*) FROM pg_tablespace WHERE spcname LIKE 'pggit_chaos_%'")[0][0] == 0
    assert amcheck(params) == [] and index_lookup(params) == (ROWS, ROWS)


def test_without_the_destructive_opt_in_the_cli_refuses_and_writes_nothing(plain, tmp_path):
    pg, params = plain
    path = relation_file(pg, params)
    before = sha_of(path, 8192)
    state_dir = str(tmp_path / 'state')
    config = write_config(tmp_path)
    args = dict(params, name='cli', ttl=30, state_dir=state_dir)
    for host_vars, extra in (({'pggit_chaos_allowed': True}, None),
                             ({'pggit_chaos_allowed': True}, {'pggit_chaos_destructive': True}),
                             ({'pggit_chaos_allowed': True, 'pggit_chaos_destructive': False}, {'pggit_chaos_destructive': True})):
        result = adhoc(REPO_COLLECTIONS, config, 'pggit.chaos.pggit_chaos_corrupt', args, extra_vars=extra, host_vars=host_vars)
        assert result['failed'] and result.get('refused'), result
        assert 'has not opted in to pggit_chaos_destructive' in result['msg'], result['msg']
    assert sha_of(path, 8192) == before and not os.path.exists(state_dir)
