"""pggit_chaos_disk against a real PostgreSQL whose data directory is on its own 64 MB tmpfs.

Nothing but that tmpfs is ever filled: it is mounted under the throwaway
server's temporary directory and unmounted when the module's tests end (and at
exit, should the run be interrupted).
"""
from __future__ import annotations

import atexit
import json
import os
import pwd
import shutil
import stat
import subprocess
import time

import psycopg2
import pytest

from modrun import run_module
from pgtools import PG_BIN, Postgres, kill_reapers
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _fill, _server
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_disk

MIB = 1024 * 1024
TMPFS_SIZE = '64m'
# statvfs may move by a few blocks while the server writes its own files (stats, WAL).
SLACK = 64 * 4096


def _umount(path):
    if os.path.ismount(path):
        if subprocess.run(['umount', path], capture_output=True, check=False).returncode:
            subprocess.run(['umount', '-l', path], capture_output=True, check=False)


def _stop(pg):
    subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(PG_BIN, 'pg_ctl'), '-D', pg.data, '-m', 'immediate', 'stop'],
                   capture_output=True, check=False)


@pytest.fixture(scope='module')
def tmpfs_pg():
    """A throwaway server with its data directory alone on a 64 MB tmpfs."""
    pg = Postgres()
    mount = os.path.join(pg.base, 'fs')
    os.mkdir(mount)
    pw = pwd.getpwnam('postgres')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0700,uid=%d,gid=%d' % (TMPFS_SIZE, pw.pw_uid, pw.pw_gid),
                    'pggit-chaos-it-disk', mount], check=True, capture_output=True)
    atexit.register(_umount, mount)
    pg.data = os.path.join(mount, 'data')
    pg.mount = mount
    try:
        pg.start()
        # Old WAL is removed at a checkpoint, never kept as recycled segments: each test starts with the
        # room that a server needs to start again (a new 16 MB segment) once the fill is gone.
        pg.psql('postgres', '-c', 'ALTER SYSTEM SET wal_recycle = off', '-c', 'SELECT pg_reload_conf()')
        yield pg
    finally:
        _stop(pg)
        pg.started = False
        _umount(mount)
        assert not os.path.ismount(mount)
        shutil.rmtree(pg.base, ignore_errors=True)


@pytest.fixture
def params(tmpfs_pg):
    """Connection options for the server, which is up (a test before may have left it down: start it)."""
    if not _server.running(tmpfs_pg.data):
        subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(PG_BIN, 'pg_ctl'), '-D', tmpfs_pg.data,
                        '-l', os.path.join(tmpfs_pg.base, 'log'), '-w', 'start'], capture_output=True, check=False)
    params = tmpfs_pg.params('postgres')
    assert wait_for(lambda: answers(params), 10), log_tail(tmpfs_pg)
    tmpfs_pg.psql('postgres', '-c', 'CHECKPOINT')  # the WAL of the test before goes
    room = free_bytes(tmpfs_pg.mount)
    assert room > 20 * MIB, 'the 64 MB tmpfs has only %d bytes free: too little for these tests' % room
    return params


@pytest.fixture
def state_dir(tmp_path):
    path = str(tmp_path / 'state')
    yield path
    kill_reapers(path)


def log_tail(pg, lines=15):
    try:
        with open(os.path.join(pg.base, 'log')) as handle:
            return ''.join(handle.readlines()[-lines:])
    except OSError as exc:
        return str(exc)


def records(state_dir):
    faults = os.path.join(state_dir, 'faults')
    found = {}
    for name in sorted(os.listdir(faults)) if os.path.isdir(faults) else []:
        if name.endswith('.json'):
            with open(os.path.join(faults, name)) as handle:
                record = json.load(handle)
            found[name] = {'status': record.get('status'), 'last_error': record.get('last_error')}
    return found


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_files(mount):
    return sorted(f for f in os.listdir(mount) if f.startswith('.pggit-chaos-fill-'))


def disk(params, state_dir, check_mode=False, **extra):
    args = dict(params, name='full', state_dir=state_dir, ttl=60)
    args.update(extra)
    return run_module(pggit_chaos_disk.main, args, check_mode=check_mode)


def answers(params):
    try:
        conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user='postgres', dbname=params['db'],
                                connect_timeout=3)
    except psycopg2.Error:
        return False
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute('CREATE TABLE IF NOT EXISTS disk_probe (id int)')
        cur.execute('INSERT INTO disk_probe VALUES (1)')
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def write_wal_until_panic(params, data, limit_mb=200):
    """pg_logical_emit_message writes WAL alone: at 0 bytes free, the next new segment is a PANIC."""
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user='postgres', dbname=params['db'])
    conn.autocommit = True
    error = None
    try:
        cur = conn.cursor()
        for _round in range(limit_mb // 4):
            cur.execute("SELECT pg_logical_emit_message(false, 'pggit-chaos', repeat('x', 1000000)) FROM generate_series(1, 4)")
    except psycopg2.Error as exc:
        error = str(exc)
    finally:
        conn.close()
    assert error is not None, 'writing %d MB of WAL on a full filesystem did not fail' % limit_mb
    assert wait_for(lambda: not _server.running(data), 20), 'the server did not stop after: %s' % error
    return error


def test_check_mode_writes_nothing(tmpfs_pg, params, state_dir):
    before = free_bytes(tmpfs_pg.mount)
    result, failed = disk(params, state_dir, check_mode=True, free_mb=4)
    assert not failed, result
    assert result['changed'] is True and 'would fill' in result['msg']
    assert result['fill_file'] == os.path.join(tmpfs_pg.mount, '.pggit-chaos-fill-disk--full')
    assert result['fill_bytes'] > 10 * MIB and result['filesystem']['mount'] == tmpfs_pg.mount
    assert fill_files(tmpfs_pg.mount) == []
    assert abs(free_bytes(tmpfs_pg.mount) - before) < SLACK
    assert not os.path.exists(os.path.join(state_dir, 'faults')) or os.listdir(os.path.join(state_dir, 'faults')) == []


def test_fill_leaves_free_mb_and_revert_gives_it_back(tmpfs_pg, params, state_dir):
    before = free_bytes(tmpfs_pg.mount)
    assert before > 12 * MIB, 'the tmpfs has too little room for this test: %d' % before
    result, failed = disk(params, state_dir, free_mb=8)
    assert not failed, result
    measured = free_bytes(tmpfs_pg.mount)
    assert abs(measured - 8 * MIB) <= SLACK, 'asked 8 MiB free, statvfs says %d' % measured
    path = result['fill_file']
    assert os.path.dirname(path) == tmpfs_pg.mount and os.path.basename(path) == '.pggit-chaos-fill-disk--full'
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == result['fill_bytes']
    assert st.st_blocks * 512 >= result['fill_bytes'], 'the fill file is sparse'
    assert result['enospc'] is False and result['asked_free_bytes'] == 8 * MIB and result['target'] == 'data'
    assert result['target_path'] == os.path.realpath(tmpfs_pg.data)
    fs = result['filesystem']
    assert fs['fstype'] == 'tmpfs' and fs['size_bytes'] == 64 * MIB
    assert abs(fs['free_bytes_before'] - before) <= SLACK and abs(fs['free_bytes_after'] - measured) <= SLACK
    assert result['server']['data_directory'] == tmpfs_pg.data and result['server']['start_method'] == 'pg_ctl'
    with open(os.path.join(state_dir, 'faults', 'disk--full.json')) as handle:
        undo = json.load(handle)['undo']
    assert [s['type'] for s in undo] == ['pg_start', 'remove_path'] and undo[1]['path'] == path
    assert answers(params), 'the server should still work with 8 MiB free'

    again, failed = disk(params, state_dir, free_mb=8)
    assert not failed and again['changed'] is False, again
    assert fill_files(tmpfs_pg.mount) == ['.pggit-chaos-fill-disk--full'], 'a fault in place must not stack'

    reverted, failed = disk(params, state_dir, state='absent')
    assert not failed and reverted['changed'], reverted
    assert fill_files(tmpfs_pg.mount) == []
    assert abs(free_bytes(tmpfs_pg.mount) - before) <= 2 * SLACK
    assert os.listdir(os.path.join(state_dir, 'faults')) == [] or not any(
        f.endswith('.json') for f in os.listdir(os.path.join(state_dir, 'faults')))


def test_full_disk_panics_and_the_revert_starts_the_server(tmpfs_pg, params, state_dir):
    old_pid = _server.postmaster_pid(tmpfs_pg.data)
    result, failed = disk(params, state_dir, free_mb=0)
    assert not failed, result
    assert free_bytes(tmpfs_pg.mount) <= SLACK
    error = write_wal_until_panic(params, tmpfs_pg.data)
    assert not answers(params)

    again, failed = disk(params, state_dir, free_mb=0)
    assert not failed and again['changed'] is False, 'the fault is in place while the server is down: %s' % again
    assert fill_files(tmpfs_pg.mount) == ['.pggit-chaos-fill-disk--full']

    started = time.time()
    reverted, failed = disk(params, state_dir, state='absent')
    assert not failed and reverted['changed'], reverted
    assert fill_files(tmpfs_pg.mount) == []
    assert _server.running(tmpfs_pg.data), 'the revert did not start the server (it stopped with: %s)' % error
    assert _server.postmaster_pid(tmpfs_pg.data) != old_pid
    assert wait_for(lambda: answers(params), 10), 'the restarted server does not take writes: %s' % log_tail(tmpfs_pg)
    assert time.time() - started < 30


def test_reaper_removes_the_file_and_starts_the_server_by_the_ttl(tmpfs_pg, params, state_dir):
    result, failed = disk(params, state_dir, name='ttl-full', free_mb=0, ttl=5)
    assert not failed, result
    write_wal_until_panic(params, tmpfs_pg.data)
    assert fill_files(tmpfs_pg.mount) == ['.pggit-chaos-fill-disk--ttl-full']
    # No module call from here on: only the target-side reaper.
    assert wait_for(lambda: fill_files(tmpfs_pg.mount) == [] and _server.running(tmpfs_pg.data), 30), \
        'by the TTL the fill file should be gone and the server started: %s, running=%s, ledger %s, log: %s' % (
            fill_files(tmpfs_pg.mount), _server.running(tmpfs_pg.data), records(state_dir), log_tail(tmpfs_pg))
    assert wait_for(lambda: answers(params), 10), log_tail(tmpfs_pg)
    assert wait_for(lambda: not any(f.endswith('.json') for f in os.listdir(os.path.join(state_dir, 'faults'))), 10)


def test_fill_pct_at_a_rate(tmpfs_pg, params, state_dir):
    before = free_bytes(tmpfs_pg.mount)
    result, failed = disk(params, state_dir, name='pct', fill_pct=90, rate_mb_s=40)
    assert not failed, result
    st = os.statvfs(tmpfs_pg.mount)
    full = 1.0 - float(st.f_bavail) / st.f_blocks
    assert abs(full - 0.90) < 0.01, 'asked 90%% full, statvfs says %.4f' % full
    assert result['fill_complete'] and result['fill_method'] == 'fallocate'
    # 40 MiB/s: the fill took about fill_bytes / 40 MiB seconds, not an instant.
    assert result['fill_seconds'] >= result['fill_bytes'] / (40.0 * MIB) - 0.15, result
    reverted, failed = disk(params, state_dir, name='pct', state='absent')
    assert not failed and fill_files(tmpfs_pg.mount) == []
    assert abs(free_bytes(tmpfs_pg.mount) - before) <= 2 * SLACK


def test_a_planted_link_is_refused_and_never_followed(tmpfs_pg, params, state_dir, tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('keep me')
    link = os.path.join(tmpfs_pg.mount, '.pggit-chaos-fill-disk--full')
    os.symlink(str(victim), link)
    try:
        result, failed = disk(params, state_dir, free_mb=8)
        assert failed and link in result['msg'] and 'already exists' in result['msg'], result
        assert victim.read_text() == 'keep me' and os.path.islink(link)
        assert records(state_dir) == {}
    finally:
        os.unlink(link)


def test_a_fill_the_filesystem_does_not_store_fails_and_is_rolled_back(tmpfs_pg, params, state_dir, monkeypatch):
    """statvfs shows the fill file taking nothing (as zero blocks on a compressing filesystem): the inject fails, nothing stays."""
    before = free_bytes(tmpfs_pg.mount)
    fill = os.path.join(tmpfs_pg.mount, '.pggit-chaos-fill-disk--full')
    real = os.statvfs

    def stores_nothing(path):
        st = real(path)
        if os.path.realpath(path) != tmpfs_pg.mount or not os.path.lexists(fill):
            return st
        given_back = os.lstat(fill).st_blocks * 512 // st.f_frsize
        fields = list(st)
        fields[4] = st.f_bavail + given_back  # f_bavail
        return os.statvfs_result(fields)
    monkeypatch.setattr(os, 'statvfs', stores_nothing)
    monkeypatch.setattr(pggit_chaos_disk, 'SETTLE_S', 0.5)
    result, failed = disk(params, state_dir, free_mb=8)
    assert failed, result
    msg = result['msg']
    assert 'did not take' in msg and '%d bytes free after' % (8 * MIB) in msg and tmpfs_pg.mount in msg, msg
    assert result['rollback']['result'] == 'reverted', result
    monkeypatch.undo()
    assert fill_files(tmpfs_pg.mount) == [] and records(state_dir) == {}
    assert abs(free_bytes(tmpfs_pg.mount) - before) <= 2 * SLACK
    assert answers(params)


def test_a_mount_inside_the_data_directory_is_refused(tmpfs_pg, params, state_dir):
    """The fill file goes at the root of the mount: inside the data directory it would break pg_basebackup and friends."""
    inner = os.path.join(tmpfs_pg.data, 'pggit_it_mnt')
    os.mkdir(inner)
    try:
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'pggit-chaos-it-inner', inner], check=True, capture_output=True)
        try:
            result, failed = disk(params, state_dir, target='path', path=inner, free_mb=0)
            assert failed, result
            msg = result['msg']
            assert 'target=path' in msg and inner in msg and "data directory %s" % tmpfs_pg.data in msg and 'pg_basebackup' in msg, msg
            assert fill_files(inner) == [] and not os.path.exists(state_dir)
        finally:
            _umount(inner)
    finally:
        os.rmdir(inner)


def test_a_link_planted_after_the_record_fails_the_inject_and_only_the_link_goes(tmpfs_pg, params, state_dir, monkeypatch, tmp_path):
    """Someone plants a link at the fill file's name between the record and the open: the open refuses it (O_EXCL,
    O_NOFOLLOW), the rollback's remove_path unlinks the link, and the file it points to is never touched."""
    victim = tmp_path / 'victim'
    victim.write_text('keep me')
    victim.chmod(0o644)
    seen = {}
    real_open = _fill.open_fill_file

    def plant_then_open(path):
        with open(os.path.join(state_dir, 'faults', 'disk--full.json')) as handle:
            seen['undo'] = json.load(handle)['undo']  # the record is there before the file
        os.symlink(str(victim), path)
        seen['link'] = path
        return real_open(path)
    monkeypatch.setattr(_fill, 'open_fill_file', plant_then_open)
    result, failed = disk(params, state_dir, free_mb=8)
    assert failed and 'File exists' in result['msg'], result
    assert seen['undo'][-1] == {'type': 'remove_path', 'path': seen['link'], 'root': tmpfs_pg.mount}
    assert result['rollback']['result'] == 'reverted', result
    assert not os.path.lexists(seen['link']), 'the rollback left the planted link'
    assert victim.read_text() == 'keep me' and stat.S_IMODE(victim.stat().st_mode) == 0o644 and victim.stat().st_size == 7
    assert records(state_dir) == {} and fill_files(tmpfs_pg.mount) == []
    assert answers(params)
