"""pggit_chaos_disk: the refusals that protect the machine (root filesystem, the ledger's filesystem)."""
from __future__ import annotations

import os
import time
from collections import namedtuple

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _fill
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_disk as disk

FS = {'mount': '/srv/pg', 'device': 'tmpfs'}
MIB = _fill.MIB
Statvfs = namedtuple('Statvfs', 'f_bsize f_frsize f_blocks f_bavail')


@pytest.fixture
def devices(monkeypatch):
    """Pretend filesystems: each path's device is the first key that is a prefix of it."""
    table = {}

    def same(a, b):
        def dev(p):
            return next(v for k, v in sorted(table.items(), key=lambda kv: -len(kv[0])) if p == k or p.startswith(k.rstrip('/') + '/'))
        return dev(a) == dev(b)
    monkeypatch.setattr(_fill, 'same_filesystem', same)
    monkeypatch.setattr(_fill, 'existing_ancestor', lambda p: p)
    return table


def test_root_filesystem_is_refused_unless_allowed(devices):
    devices.update({'/': 1, '/srv/pg': 1, '/var/lib/state': 2})
    msg = disk.protected_problem(FS, '/var/lib/state', False, 'data /srv/pg/data')
    assert 'root filesystem' in msg and 'allow_root_fs' in msg and '/srv/pg' in msg
    assert disk.protected_problem(FS, '/var/lib/state', True, 'data /srv/pg/data') is None


def test_state_dir_filesystem_is_refused_unless_allowed(devices):
    devices.update({'/': 1, '/srv/pg': 2, '/srv/pg/state': 2})
    msg = disk.protected_problem(FS, '/srv/pg/state', False, 'data /srv/pg/data')
    assert 'state dir /srv/pg/state' in msg and 'allow_root_fs' in msg
    assert disk.protected_problem(FS, '/srv/pg/state', True, 'data /srv/pg/data') is None


def test_a_filesystem_of_its_own_is_fine(devices):
    devices.update({'/': 1, '/srv/pg': 2, '/var/lib/state': 1})
    assert disk.protected_problem(FS, '/var/lib/state', False, 'data /srv/pg/data') is None


@pytest.mark.parametrize('params, word', [
    (dict(rate_mb_s=-1.0, target='data', path=None), 'rate_mb_s'),
    (dict(rate_mb_s=None, target='wal', path='/srv'), 'target=wal'),
])
def test_option_problem(params, word):
    assert word in disk.option_problem(params)


def test_option_problem_none_for_good_options():
    assert disk.option_problem(dict(rate_mb_s=5.0, target='path', path='/srv')) is None


def test_path_problem(tmp_path):
    assert disk.path_problem(str(tmp_path)) is None
    assert 'absolute' in disk.path_problem('x/y')
    assert 'on no filesystem' in disk.path_problem(str(tmp_path / 'gone'))


# -- the mount point must not be the data directory or pg_wal ---------------------------
INFO = {'data_directory': '/srv/pg/data', 'pg_wal': '/srv/wal/pg_wal'}


@pytest.mark.parametrize('mount, folder', [
    ('/srv/pg/data', 'data directory /srv/pg/data'),
    ('/srv/wal/pg_wal', 'pg_wal directory /srv/wal/pg_wal'),
    ('/srv/pg/data/base', 'data directory /srv/pg/data'),  # a mount inside it: the fill file lands in base/
])
def test_a_mount_on_the_data_directory_or_pg_wal_is_refused(mount, folder):
    msg = disk.placement_problem(mount, INFO, 'data')
    assert msg and 'target=data' in msg and mount in msg and folder in msg, msg
    assert 'pg_basebackup' in msg and os.path.join(mount, '.pggit-chaos-fill-') in msg


@pytest.mark.parametrize('mount', ['/srv/pg', '/srv/wal', '/', '/srv/pg/dat'])
def test_a_mount_above_them_is_fine(mount):
    assert disk.placement_problem(mount, INFO, 'wal') is None


def test_pg_wal_defaults_to_the_one_inside_the_data_directory():
    assert 'pg_wal directory /srv/pg/data/pg_wal' in disk.placement_problem('/srv/pg/data/pg_wal', {'data_directory': '/srv/pg/data'}, 'wal')


# -- apply: a fill that did not take fails (the lifecycle then rolls it back) ---------------
BASE_FREE = 40 * MIB
SIZE = 64 * MIB


class Module(object):
    def __init__(self):
        self.params = {'rate_mb_s': None}
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)


@pytest.fixture
def fault(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, 'SETTLE_S', 0.0)
    fault = disk.DiskFault(Module())
    fault.fs = {'mount': str(tmp_path), 'device': 'pool/pg', 'fstype': 'zfs'}
    fault.deadline = time.time() + 60
    path = str(tmp_path / _fill.fill_name('disk--full'))
    detail = {'fill_file': path, 'asked_free_bytes': 8 * MIB, 'filesystem': {'mount': str(tmp_path)}}
    return fault, detail


def statvfs_counting(path, stores):
    """A pretend 64 MiB filesystem whose free space goes down by stores(fill file) bytes."""
    def statvfs(_mount):
        taken = stores(path) if os.path.exists(path) else 0
        return Statvfs(4096, 4096, SIZE // 4096, (BASE_FREE - taken) // 4096)
    return statvfs


def test_a_fill_the_filesystem_does_not_store_fails_with_asked_and_measured(fault, monkeypatch):
    """Compression stores the blocks in nothing: statvfs shows the same free space after the fill as before."""
    fault, detail = fault
    monkeypatch.setattr(os, 'statvfs', statvfs_counting(detail['fill_file'], lambda p: 0))
    with pytest.raises(ChaosError) as exc:
        fault.apply(detail)
    msg = str(exc.value)
    assert 'did not take' in msg and '%d bytes free after' % (8 * MIB) in msg and 'measures %d bytes free' % BASE_FREE in msg, msg
    assert 'zfs' in msg
    assert fault.module.warnings and 'writing blocks instead' in fault.module.warnings[0]


def test_a_fallocate_that_reserves_nothing_falls_back_to_writing(fault, monkeypatch):
    """glibc's posix_fallocate emulation on ZFS says yes and reserves nothing: the fill is written instead, and then takes."""
    fault, detail = fault
    monkeypatch.setattr(os, 'posix_fallocate', lambda fd, offset, length: None)
    monkeypatch.setattr(os, 'statvfs', statvfs_counting(detail['fill_file'], lambda p: os.stat(p).st_blocks * 512))
    out = fault.apply(detail)
    assert out['fill_method'] == 'write' and out['fill_complete'] and out['fill_bytes'] == BASE_FREE - 8 * MIB
    assert out['filesystem']['free_bytes_after'] <= 8 * MIB + 64 * 1024
    assert 'writing blocks instead' in fault.module.warnings[0]


def test_a_fill_that_takes_passes_without_a_second_pass(fault, monkeypatch):
    fault, detail = fault
    monkeypatch.setattr(os, 'statvfs', statvfs_counting(detail['fill_file'], lambda p: os.stat(p).st_blocks * 512))
    out = fault.apply(detail)
    assert out['fill_method'] == 'fallocate' and out['fill_complete'] and fault.module.warnings == []


def test_enospc_is_the_point_not_a_shortfall(fault, monkeypatch):
    fault, detail = fault
    monkeypatch.setattr(os, 'statvfs', statvfs_counting(detail['fill_file'], lambda p: 0))
    full = {'bytes': MIB, 'enospc': True, 'method': 'write', 'complete': False, 'stopped': 'enospc', 'seconds': 0.0}
    monkeypatch.setattr(_fill, 'fill_fd', lambda fd, n, **kw: full)
    assert fault.apply(detail)['enospc'] is True
