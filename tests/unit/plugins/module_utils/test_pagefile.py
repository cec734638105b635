"""Page logic of the index corruption fault on synthetic pages, and its undo steps (restore_page, pg_reindex,
pg_scratch_tablespace): the checks that refuse forged records, and the restore decided by looking at the page."""
from __future__ import annotations

import hashlib
import os
import signal
import struct

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _pagefile as P
from ansible_collections.pggit.chaos.plugins.module_utils import _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError

PAGE = 8192


def leaf(keys=(1, 2, 3), rightmost=True, flags=P.BTP_LEAF, block=1, checksums=False, special=PAGE - 16):
    """A btree leaf page whose tuples are 16-byte index tuples holding the keys (a high key first when not rightmost)."""
    page = bytearray(PAGE)
    items = ([99] if not rightmost else []) + list(keys)
    upper = special
    pointers = []
    for key in items:
        upper -= 16
        struct.pack_into('<HHHHi', page, upper, 0, 0, key, 16, key)  # t_tid (block hi/lo, offset), t_info, key
        pointers.append(upper | (P.LP_NORMAL << 15) | (16 << 17))
    for number, raw in enumerate(pointers):
        struct.pack_into('<I', page, 24 + 4 * number, raw)
    lower = 24 + 4 * len(pointers)
    struct.pack_into('<IIHHHHHHI', page, 0, 0, 0x1770750, 0, 0, lower, upper, special, PAGE | 4, 0)
    struct.pack_into('<IIIHH', page, special, 0, 0 if rightmost else 7, 0, flags, 0)
    data = bytes(page)
    return P.with_checksum(data, block) if checksums else data


def keys_in_order(page):
    return [struct.unpack_from('<i', page, P.line_pointer(page, n)[0] + 8)[0] for n in P.data_items(page)]


# -- page logic --------------------------------------------------------------------------------
def test_a_synthetic_leaf_is_a_leaf():
    page = leaf()
    assert P.leaf_problem(page, 1) is None
    assert P.item_count(page) == 3 and P.data_items(page) == [1, 2, 3] and keys_in_order(page) == [1, 2, 3]
    assert P.header(page)['special'] == PAGE - 16 and P.btree_opaque(page)['flags'] == P.BTP_LEAF


@pytest.mark.parametrize('page, block, why', [
    (leaf(), 0, 'block 0 is the btree metapage'),
    (leaf(flags=P.BTP_META), 3, 'is a btree metapage'),
    (leaf(flags=0), 3, 'internal btree page'),
    (leaf(flags=P.BTP_LEAF | P.BTP_DELETED), 3, 'deleted or half-dead'),
    (leaf(keys=(5,)), 3, 'fewer than two data items'),
    (leaf(keys=(5,), rightmost=False), 3, 'fewer than two data items'),  # the high key is not a data item
    (leaf(special=PAGE - 32), 3, 'not the btree one'),
    (bytes(PAGE), 3, 'empty (all-zero) page'),
    (leaf()[:4096], 3, 'not a whole 8192-byte page'),
])
def test_what_is_not_a_leaf_is_refused(page, block, why):
    assert why in P.leaf_problem(page, block)
    with pytest.raises(ValueError):
        P.scramble(page, block, False)


def test_scramble_swaps_the_first_two_data_items_and_nothing_else():
    page = leaf(keys=(10, 20, 30), rightmost=False)
    damaged = P.scramble(page, 1, False)
    assert keys_in_order(page) == [10, 20, 30] and keys_in_order(damaged) == [20, 10, 30]  # out of order
    assert P.first_data_item(page) == 2  # the high key stays first
    changed = [i for i in range(PAGE) if page[i] != damaged[i]]
    assert changed and min(changed) >= 24 + 4 and max(changed) < 24 + 12  # only the line pointers of items 2 and 3
    assert damaged[P.header(page)['upper']:] == page[P.header(page)['upper']:]  # tuples untouched


def test_with_checksums_the_damaged_page_carries_a_right_checksum():
    page = leaf(checksums=True, block=5)
    assert P.checksum_ok(page, 5) and not P.checksum_ok(page, 6)  # the block number is part of it
    damaged = P.scramble(page, 5, True)
    assert P.checksum_ok(damaged, 5) and P.header(damaged)['checksum'] != P.header(page)['checksum']
    stale = P.scramble(page, 5, False)
    assert not P.checksum_ok(stale, 5)


def test_checksum_is_postgresqls():
    # PostgreSQL 15's own answer for these very bytes: pageinspect's page_checksum(page, 1) and (page, 77) gave
    # -27652 and -27592 (a smallint: 37884 and 37944 as the uint16 in pd_checksum).
    page = leaf(keys=(10, 20, 30), rightmost=False)
    assert (P.checksum(page, 1), P.checksum(page, 77)) == (37884, 37944)
    assert P.checksum(page[:8] + b'\xff\xff' + page[10:], 1) == 37884  # pd_checksum itself is left out


def test_zero_gives_a_new_page_and_damage_picks_the_mode():
    page = leaf()
    assert P.zero(page, 1) == bytes(PAGE) and P.is_new(P.damage(page, 1, 'zero', True)) and P.checksum_ok(bytes(PAGE), 1)
    assert P.damage(page, 1, 'scramble', False) == P.scramble(page, 1, False)
    with pytest.raises(ValueError, match="mode must be one of scramble, zero, got 'shred'"):
        P.damage(page, 1, 'shred', False)


@pytest.mark.parametrize('block, path, offset', [
    (1, 'base/5/100', 8192), (131071, 'base/5/100', 131071 * 8192), (131072, 'base/5/100.1', 0), (262145, 'base/5/100.2', 8192),
])
def test_location_of_a_block_follows_the_segments(block, path, offset):
    assert P.location('base/5/100', block) == (path, offset)
    assert _steps.relation_file_problem(path, block, offset) is None


@pytest.mark.parametrize('relative, block, offset', [
    ('global/1262', 1, 8192), ('base/5/../../etc/passwd', 1, 8192), ('pg_wal/000000010000000000000001', 1, 8192),
    ('base/5/100', 1, 16384), ('base/5/100.1', 1, 8192), ('base/5/100_fsm', 1, 8192), ('/etc/shadow', 1, 8192),
])
def test_only_relation_files_at_the_blocks_place_pass(relative, block, offset):
    assert _steps.relation_file_problem(relative, block, offset) is not None


# -- undo steps --------------------------------------------------------------------------------
def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def world(tmp_path):
    data = tmp_path / 'data'
    (data / 'base' / '5').mkdir(parents=True)
    state = tmp_path / 'state'
    (state / 'pages').mkdir(parents=True)
    original, path = leaf(), data / 'base' / '5' / '100'
    damaged = P.scramble(original, 1, False)
    path.write_bytes(bytes(PAGE) + damaged + bytes(PAGE))
    saved = state / 'pages' / 'corrupt--x-block1.page'
    saved.write_bytes(original)
    pg_ctl = '/usr/lib/postgresql/15/bin/pg_ctl'
    step = {'type': 'restore_page', 'path': str(path), 'data_directory': str(data), 'block': 1, 'offset': PAGE, 'saved': str(saved),
            'sha256': sha(original), 'damaged_sha256': sha(damaged), 'index': 'pggit.history_pkey', 'conn': {'db': 'app'},
            'start': {'type': 'pg_start', 'method': 'systemd', 'unit': 'postgresql@15-main.service'}}
    return {'step': step, 'state': str(state), 'path': path, 'original': original, 'damaged': damaged, 'saved': saved,
            'pg_ctl': pg_ctl}


def test_a_recorded_restore_step_passes_its_check(world):
    _steps.check_steps([world['step']], world['state'])


@pytest.mark.parametrize('change, why', [
    (dict(path='/etc/passwd'), 'not a relation file'),
    (dict(block=0, offset=0), 'block must be 1 or more'),
    (dict(offset=100), 'offset must be a multiple of 8192'),
    (dict(offset=3 * PAGE), 'is not at offset'),
    (dict(saved='/tmp/elsewhere.page'), 'must be in the state dir'),
    (dict(sha256='abc'), 'sha256 must be a sha256'),
    (dict(damaged_sha256=None), 'damaged_sha256 must be a sha256'),
    (dict(index='public.users_pkey'), 'index must be an index of schema pggit'),
    (dict(start={'type': 'pg_start', 'method': 'sh'}), 'start: method must be one of'),
    (dict(data_directory='/'), 'data_directory must be an absolute data directory'),
])
def test_a_forged_restore_step_is_refused(world, change, why):
    step = dict(world['step'], **change)
    with pytest.raises(UndoError, match=why):
        _steps.check_steps([step], world['state'])


def test_a_data_file_reached_through_a_link_out_of_the_data_directory_is_refused(world, tmp_path):
    outside = tmp_path / 'outside'
    (outside / '5').mkdir(parents=True)
    os.symlink(str(outside / '5'), str(tmp_path / 'data' / 'base' / '6'))
    step = dict(world['step'], path=str(tmp_path / 'data' / 'base' / '6' / '100'))
    with pytest.raises(UndoError, match='not under the data directory'):
        _steps.check_steps([step], world['state'])


@pytest.fixture
def server(monkeypatch, world):
    """Fake stop/start/reindex; each stop and start notes the sha256 of the page in the file at that moment."""
    calls, seen = [], []

    def page_now():
        try:
            return sha(world['path'].read_bytes()[PAGE:2 * PAGE])
        except OSError:
            return None

    monkeypatch.setattr(_steps, 'server_stop', lambda start, ctx: calls.append('stop') or seen.append(('stop', page_now())) or (True, {'LANG': 'C'}))
    monkeypatch.setattr(_steps, 'server_start', lambda start, env, ctx: calls.append(('start', env)) or seen.append(('start', page_now())))
    monkeypatch.setattr(_steps, 'reindex', lambda step, ctx: calls.append(('reindex', step['index'])) or True)
    world['seen'] = seen
    return calls


def test_the_damaged_page_is_restored_byte_for_byte_while_the_server_is_down(world, server):
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is True
    assert world['path'].read_bytes()[PAGE:2 * PAGE] == world['original']
    assert server == ['stop', ('start', {'LANG': 'C'})]  # stopped before the write, started with its environment after
    # The write happened while the server was down: still damaged when it stopped, already the original when it started.
    assert world['seen'] == [('stop', sha(world['damaged'])), ('start', sha(world['original']))]
    assert not world['saved'].exists()
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is False  # idempotent: nothing left to do
    assert server == ['stop', ('start', {'LANG': 'C'})]


def test_an_original_page_is_left_alone_and_the_server_is_not_restarted(world, server):
    world['path'].write_bytes(bytes(PAGE) + world['original'])
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is False
    assert server == [] and not world['saved'].exists()


def test_a_page_written_into_since_is_rebuilt_not_overwritten(world, server):
    newer = P.scramble(leaf(keys=(1, 2, 3, 4)), 1, False)
    world['path'].write_bytes(bytes(PAGE) + newer)
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is True
    assert world['path'].read_bytes()[PAGE:] == newer  # the later writes are not lost
    assert server == [('reindex', 'pggit.history_pkey')] and not world['saved'].exists()


def test_a_saved_file_that_is_not_the_original_writes_nothing(world, server):
    world['saved'].write_bytes(world['damaged'])
    with pytest.raises(UndoError, match='is not the recorded original'):
        _steps.run_steps([world['step']], {'state_dir': world['state']})
    assert world['path'].read_bytes()[PAGE:2 * PAGE] == world['damaged'] and server == [] and world['saved'].exists()


@pytest.mark.parametrize('step, why', [
    ({'type': 'pg_reindex', 'index': 'public.t_pkey'}, 'index must be an index of schema pggit'),
    ({'type': 'pg_reindex', 'index': 'pggit.'}, 'index must be an index of schema pggit'),
    ({'type': 'pg_scratch_tablespace', 'tablespace': 'pg_default', 'home': 'pg_default', 'index': 'pggit.h'}, 'scratch tablespace of ours'),
    ({'type': 'pg_scratch_tablespace', 'tablespace': 'pggit_chaos_1', 'home': 'pggit_chaos_2', 'index': 'pggit.h'}, 'home must name'),
])
def test_forged_index_steps_are_refused(step, why):
    with pytest.raises(UndoError, match=why):
        _steps.check_steps([step], '/state')


def test_write_page_refuses_links_and_short_files(tmp_path):
    target = tmp_path / 'file'
    target.write_bytes(bytes(PAGE))
    link = tmp_path / 'link'
    os.symlink(str(target), str(link))
    with pytest.raises(OSError):
        _steps.write_page(str(link), 0, leaf())
    with pytest.raises(UndoError, match='no page at offset'):
        _steps.write_page(str(target), PAGE, leaf())
    _steps.write_page(str(target), 0, leaf())
    assert target.read_bytes() == leaf()


# -- files the server's owner can plant or swap under the data directory -------------------------
@pytest.fixture
def deadline():
    """Fail (instead of hanging the test run) when something blocks: an open of a FIFO would wait for a writer forever."""
    def hung(_signum, _frame):
        raise AssertionError('blocked: a FIFO was opened without O_NONBLOCK')
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_planted_as_the_relation_file_never_hangs_the_restore(world, server, deadline):
    world['path'].unlink()
    os.mkfifo(str(world['path']))
    assert _steps.read_page(str(world['path']), PAGE) is None
    with pytest.raises(UndoError, match='not a regular file'):
        _steps.write_page(str(world['path']), PAGE, world['original'])
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is True
    assert server == [('reindex', 'pggit.history_pkey')]  # not the damaged page: rebuilt, nothing written, no restart


def test_a_relation_file_swapped_after_the_inject_is_not_written(world, server):
    path = world['path']
    step = dict(world['step'], file_id=_steps.file_identity(str(path)))
    _steps.check_steps([step], world['state'])
    content = path.read_bytes()
    os.rename(str(path), str(path) + '.old')
    path.write_bytes(content)  # the same bytes, another file (a hard link to somewhere else would be the same)
    with pytest.raises(UndoError, match='is not the file the fault damaged'):
        _steps.run_steps([step], {'state_dir': world['state']})
    assert path.read_bytes()[PAGE:2 * PAGE] == world['damaged'] and world['saved'].exists()
    assert server == ['stop', ('start', {'LANG': 'C'})]  # the server is started again all the same


def test_a_relation_file_of_another_owner_is_neither_read_nor_written(world, server):
    os.chown(str(world['path']), 4242, 4242)
    assert _steps.read_page(str(world['path']), PAGE) is not None and _steps.read_page(str(world['path']), PAGE, os.getuid()) is None
    with pytest.raises(UndoError, match='belongs to uid 4242'):
        _steps.write_page(str(world['path']), PAGE, world['original'], os.getuid())
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is True
    assert server == [('reindex', 'pggit.history_pkey')] and world['path'].read_bytes()[PAGE:2 * PAGE] == world['damaged']


def test_the_owner_is_the_data_directorys_own_not_a_links_target(world, tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    os.chown(str(elsewhere), 4242, 4242)
    link = tmp_path / 'datalink'
    os.symlink(str(elsewhere), str(link))
    assert _steps.data_owner(str(link)) == os.lstat(str(link)).st_uid != 4242


def test_a_forged_file_id_is_refused(world):
    with pytest.raises(UndoError, match=r'file_id must be \[st_dev, st_ino\]'):
        _steps.check_steps([dict(world['step'], file_id='1:2')], world['state'])


def test_on_a_standby_a_page_changed_by_replay_is_done_with_a_note(world, server):
    newer = P.scramble(leaf(keys=(1, 2, 3, 4)), 1, False)
    world['path'].write_bytes(bytes(PAGE) + newer)
    ctx = {'state_dir': world['state']}
    assert _steps.run_steps([dict(world['step'], standby=True)], ctx) is False
    assert server == [] and world['path'].read_bytes()[PAGE:] == newer and not world['saved'].exists()
    assert 'replay' in ctx['notes'][0]


def test_a_damaged_page_whose_saved_original_is_gone_is_rebuilt_not_left(world, server):
    world['saved'].unlink()  # e.g. removed by the plan's remove_path step after a failed restore
    assert _steps.run_steps([world['step']], {'state_dir': world['state']}) is True
    assert server == [('reindex', 'pggit.history_pkey')]


def test_same_damage_ignores_only_the_lsn_and_the_checksum():
    damaged = P.scramble(leaf(checksums=True), 1, True)
    moved = bytes(b'\x01' * 10) + damaged[10:]
    assert _steps.same_damage(moved, damaged) and not _steps.same_damage(leaf(checksums=True), damaged)
    assert not _steps.same_damage(None, damaged) and not _steps.same_damage(damaged[:PAGE - 1] + b'\x07', damaged)


class FakeRevertCursor(object):
    def __init__(self, fail_reindex=True, leftovers=('history_pkey_ccnew', 'history_pkey_ccnew1')):
        self.executed, self.rows, self.fail, self.leftovers = [], [], fail_reindex, list(leftovers)

    def execute(self, query, params=None):
        text = query if isinstance(query, str) else repr(query)
        self.executed.append((text, params))
        if 'REINDEX' in text and self.fail:
            raise _steps._pgconn.psycopg2.errors.LockNotAvailable('canceling statement due to lock timeout')
        self.rows = [(1,)] if 'relkind' in text else [(n,) for n in self.leftovers] if '_ccnew' in text else []

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows


def test_a_failed_reindex_drops_its_invalid_leftovers_and_waits_longer_than_5s(monkeypatch):
    cur = FakeRevertCursor()
    conn = type('C', (), {'close': lambda self: None})()
    monkeypatch.setattr(_steps, '_pg_connect', lambda step, ctx: (conn, cur))
    monkeypatch.setattr(_steps._pgconn.sql.Composed, 'as_string', lambda self, ctx: repr(self))
    with pytest.raises(UndoError, match='invalid leftovers dropped: history_pkey_ccnew, history_pkey_ccnew1'):
        _steps.reindex({'index': 'pggit.history_pkey', 'conn': {}}, {})
    texts = [t for t, _p in cur.executed]
    assert ('SET lock_timeout = %s', (_steps.REINDEX_LOCK_TIMEOUT_S * 1000,)) in cur.executed and _steps.REINDEX_LOCK_TIMEOUT_S > 5
    drops = [t for t in texts if 'DROP INDEX CONCURRENTLY' in t]
    assert len(drops) == 2 and "Identifier('pggit', 'history_pkey_ccnew1')" in drops[1]
