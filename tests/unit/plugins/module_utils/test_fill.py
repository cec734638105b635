"""The disk fill: where the filesystem is, how much to write, and the writer (ENOSPC, no fallocate, rate, deadline)."""
from __future__ import annotations

import errno
import os
import stat
import zlib
from collections import namedtuple

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _fill, _steps

MIB = _fill.MIB
Statvfs = namedtuple('Statvfs', 'f_bsize f_frsize f_blocks f_bavail')

MOUNTINFO = '\n'.join([
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '25 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw',
    '40 22 0:35 / /srv/pg\\040data rw,relatime shared:20 - tmpfs tmpfs rw,size=65536k',
    '41 40 0:36 / /srv/pg\\040data/wal rw,relatime shared:21 - tmpfs walfs rw,size=32768k',
    '42 40 0:37 / /srv/pg\\040data/wal rw,relatime shared:22 - tmpfs stacked rw,size=16384k',
    'garbage line',
])


def test_fill_name_matches_the_undo_check():
    name = _fill.fill_name('disk--full.wal_1')
    assert name == '.pggit-chaos-fill-disk--full.wal_1'
    assert _steps.FILL_FILE_RE.match(name)
    assert _steps.FILL_FILE_RE.match(_fill.fill_name('disk/odd'))
    assert _steps.STEP_CHECKS['remove_path']({'type': 'remove_path', 'path': '/srv/' + name}, None) is None


def test_parse_mountinfo_unescapes_and_skips_garbage():
    mounts = _fill.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 5
    assert mounts[2] == {'mount': '/srv/pg data', 'dev_id': '0:35', 'fstype': 'tmpfs', 'device': 'tmpfs'}


@pytest.mark.parametrize('path, mount, device', [
    ('/', '/', '/dev/vda'),
    ('/var/lib/x', '/', '/dev/vda'),
    ('/srv/pg data', '/srv/pg data', 'tmpfs'),
    ('/srv/pg data/base/1', '/srv/pg data', 'tmpfs'),
    ('/srv/pg datab', '/', '/dev/vda'),  # a prefix of the name is not a parent
    ('/srv/pg data/wal/0001', '/srv/pg data/wal', 'stacked'),  # stacked mounts: the last one wins
])
def test_mount_entry_is_the_longest_parent(path, mount, device):
    entry = _fill.mount_entry(path, _fill.parse_mountinfo(MOUNTINFO))
    assert (entry['mount'], entry['device']) == (mount, device)


def test_mount_by_dev_walks_up_until_the_device_changes():
    devs = {'/': 1, '/srv': 1, '/srv/pg': 2, '/srv/pg/data': 2, '/srv/pg/data/base': 2}

    def fake(path):
        return os.stat_result((0, 0, devs[path], 0, 0, 0, 0, 0, 0, 0))
    assert _fill.mount_by_dev('/srv/pg/data/base', stat=fake) == '/srv/pg'
    assert _fill.mount_by_dev('/srv', stat=fake) == '/'


def test_filesystem_of_a_real_path(tmp_path):
    fs = _fill.filesystem(str(tmp_path))
    assert fs['path'] == os.path.realpath(str(tmp_path))
    assert os.stat(fs['mount']).st_dev == os.stat(str(tmp_path)).st_dev
    st = os.statvfs(str(tmp_path))
    assert fs['size_bytes'] == st.f_blocks * st.f_frsize and fs['block_size'] == st.f_frsize
    with pytest.raises(OSError):
        _fill.filesystem(str(tmp_path / 'missing'))


def test_filesystem_without_mountinfo_walks_st_dev(tmp_path):
    fs = _fill.filesystem(str(tmp_path), mountinfo='')
    assert fs['fstype'] is None and os.stat(fs['mount']).st_dev == os.stat(str(tmp_path)).st_dev


def test_figures_use_what_an_unprivileged_user_may_write():
    fig = _fill.figures('/x', statvfs=lambda p: Statvfs(4096, 4096, 1000, 400))
    assert fig == {'size_bytes': 4096000, 'free_bytes': 1638400, 'block_size': 4096}


def test_existing_ancestor(tmp_path):
    assert _fill.existing_ancestor(str(tmp_path / 'a' / 'b')) == str(tmp_path)
    assert _fill.existing_ancestor(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize('size, pct, free_mb, asked', [
    (100 * MIB, 95, None, 5 * MIB),
    (100 * MIB, 100, None, 0),
    (100 * MIB, 1, None, 99 * MIB),
    (100 * MIB, 50.5, None, int(100 * MIB * 0.495)),
    (100 * MIB, None, 0, 0),
    (100 * MIB, None, 7, 7 * MIB),
])
def test_asked_free_bytes(size, pct, free_mb, asked):
    assert _fill.asked_free_bytes(size, fill_pct=pct, free_mb=free_mb) == asked


@pytest.mark.parametrize('free, asked, block, size', [
    (10 * MIB, 4 * MIB, 4096, 6 * MIB),
    (10 * MIB + 100, 4 * MIB, 4096, 6 * MIB),  # rounded down: never less free than asked
    (10 * MIB, 10 * MIB, 4096, 0),
    (3 * MIB, 4 * MIB, 4096, 0),  # already fuller than asked
    (10 * MIB, 0, 0, 10 * MIB),
])
def test_fill_size(free, asked, block, size):
    assert _fill.fill_size(free, asked, block) == size


# -- the file ----------------------------------------------------------------------
def test_open_fill_file_is_0600_and_exclusive(tmp_path):
    path = str(tmp_path / _fill.fill_name('disk--x'))
    old = os.umask(0)
    try:
        fd = _fill.open_fill_file(path)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(OSError) as exc:
        _fill.open_fill_file(path)
    assert exc.value.errno == errno.EEXIST


def test_open_fill_file_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('keep me')
    link = tmp_path / _fill.fill_name('disk--x')
    os.symlink(str(victim), str(link))
    with pytest.raises(OSError):
        _fill.open_fill_file(str(link))
    dangling = tmp_path / _fill.fill_name('disk--y')
    os.symlink(str(tmp_path / 'nowhere'), str(dangling))
    with pytest.raises(OSError):
        _fill.open_fill_file(str(dangling))
    assert victim.read_text() == 'keep me' and not (tmp_path / 'nowhere').exists()


@pytest.fixture
def fill_fd(tmp_path):
    fd = _fill.open_fill_file(str(tmp_path / _fill.fill_name('disk--t')))
    yield fd
    os.close(fd)


def allocated(fd):
    st = os.fstat(fd)
    return st.st_size, st.st_blocks * 512


def test_fallocate_really_allocates(fill_fd):
    out = _fill.fill_fd(fill_fd, 3 * MIB)
    assert out['bytes'] == 3 * MIB and out['complete'] and not out['enospc']
    size, blocks = allocated(fill_fd)
    assert size == 3 * MIB and blocks >= 3 * MIB  # allocated, not a sparse file


def test_no_fallocate_writes_blocks(fill_fd):
    calls = []

    def refuse(fd, offset, length):
        calls.append((offset, length))
        raise OSError(errno.EOPNOTSUPP, 'Operation not supported')
    out = _fill.fill_fd(fill_fd, 2 * MIB + 4096, fallocate=refuse)
    assert calls == [(0, 2 * MIB + 4096)]
    assert out['method'] == 'write' and out['bytes'] == 2 * MIB + 4096 and out['complete']
    size, blocks = allocated(fill_fd)
    assert size == 2 * MIB + 4096 and blocks >= size


def test_enospc_half_way_stops_and_says_so(fill_fd):
    """fallocate refuses (not all fits), then the writes stop at ENOSPC: what was written stays, and is reported."""
    room = [int(1.5 * MIB)]

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, 'No space left on device')

    def pwrite(fd, data, offset):
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, 'No space left on device')
        n = min(len(data), room[0])
        room[0] -= n
        return os.pwrite(fd, data[:n], offset)
    out = _fill.fill_fd(fill_fd, 4 * MIB, fallocate=no_room, pwrite=pwrite)
    assert out['enospc'] is True and out['complete'] is False and out['stopped'] == 'enospc'
    assert out['bytes'] == int(1.5 * MIB) == allocated(fill_fd)[0]


def test_enospc_on_the_first_write(fill_fd):
    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, 'x')

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, 'No space left on device')
    out = _fill.fill_fd(fill_fd, MIB, fallocate=no_room, pwrite=full)
    assert out['bytes'] == 0 and out['enospc'] is True


def test_other_errors_are_raised(fill_fd):
    def broken(fd, offset, length):
        raise OSError(errno.EIO, 'I/O error')
    with pytest.raises(OSError):
        _fill.fill_fd(fill_fd, MIB, fallocate=broken)


class Clock(object):
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rate_fills_in_chunks_at_that_pace(fill_fd):
    clock, chunks = Clock(), []

    def fallocate(fd, offset, length):
        chunks.append((offset, length))
        os.posix_fallocate(fd, offset, length)
    out = _fill.fill_fd(fill_fd, 4 * MIB, rate_mb_s=20, clock=clock, sleep=clock.sleep, fallocate=fallocate)
    assert out['complete'] and out['bytes'] == 4 * MIB
    assert chunks == [(i * 2 * MIB, 2 * MIB) for i in range(2)]  # a tenth of a second's worth, in whole blocks
    assert abs(out['seconds'] - 0.1) < 1e-6, out  # 4 MiB at 20 MiB/s: it sleeps after each chunk but the last
    assert sum(clock.slept) == pytest.approx(0.1)


def test_deadline_stops_a_slow_fill(fill_fd):
    clock = Clock()
    out = _fill.fill_fd(fill_fd, 100 * MIB, rate_mb_s=10, deadline=clock.now + 0.35, clock=clock, sleep=clock.sleep)
    assert out['stopped'] == 'deadline' and not out['complete'] and not out['enospc']
    assert 3 * MIB <= out['bytes'] <= 5 * MIB
    assert clock.now <= 1000.35 + 1e-9


def test_deadline_already_past_writes_nothing(fill_fd):
    out = _fill.fill_fd(fill_fd, MIB, deadline=0)
    assert out['bytes'] == 0 and out['stopped'] == 'deadline' and allocated(fill_fd)[0] == 0


# -- what is written, and whether it took ------------------------------------------
def test_written_blocks_are_incompressible_and_never_repeat(fill_fd):
    """A compressing (ZFS, btrfs) or deduplicating filesystem stores zero or repeated blocks in nothing: write neither."""
    out = _fill.fill_fd(fill_fd, 3 * MIB + 2 * _fill.PAGE, use_fallocate=False)
    assert out['method'] == 'write' and out['complete'] and out['bytes'] == 3 * MIB + 2 * _fill.PAGE
    with open('/proc/self/fd/%d' % fill_fd, 'rb') as handle:
        data = handle.read()
    assert len(data) == out['bytes']
    assert len(zlib.compress(data, 6)) > 0.99 * len(data), 'the fill compresses'
    pages = [data[i:i + _fill.PAGE] for i in range(0, len(data), _fill.PAGE)]
    assert len(set(pages)) == len(pages), 'pages repeat: a deduplicating filesystem would store them once'


def test_two_fills_do_not_write_the_same_blocks():
    first, second = _fill.Blocks(MIB), _fill.Blocks(MIB)
    assert bytes(first.at(0, MIB)) != bytes(second.at(0, MIB))
    assert bytes(first.at(0, MIB)) != bytes(first.at(MIB, MIB))


@pytest.mark.parametrize('before, after, asked, written, short', [
    (60 * MIB, 8 * MIB, 8 * MIB, 52 * MIB, False),  # took
    (60 * MIB, 8 * MIB + 300 * 1024, 8 * MIB, 52 * MIB, False),  # within 1% of the 64 MiB
    (60 * MIB, 60 * MIB, 8 * MIB, 52 * MIB, True),  # stored nothing (zero blocks on ZFS, glibc's fallocate emulation)
    (60 * MIB, 30 * MIB, 8 * MIB, 52 * MIB, True),  # half of it
    (60 * MIB, 40 * MIB, 8 * MIB, 20 * MIB, False),  # a deadline cut it at 20 MiB: 40 free is what is expected
    (60 * MIB, 2 * MIB, 8 * MIB, 52 * MIB, False),  # the server wrote meanwhile: less free is never a shortfall
])
def test_shortfall(before, after, asked, written, short):
    extra = _fill.shortfall(before, after, asked, written, 64 * MIB, 4096)
    assert (extra is not None) is short
    if short:
        assert extra == after - max(asked, before - written)


def test_tolerance_is_one_percent_or_sixteen_blocks():
    assert _fill.tolerance(64 * MIB, 4096) == 64 * MIB // 100
    assert _fill.tolerance(MIB, 4096) == 16 * 4096
