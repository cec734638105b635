"""pggit_chaos_disk: the refusals that protect the machine (root filesystem, the ledger's filesystem)."""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _fill
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_disk as disk

FS = {'mount': '/srv/pg', 'device': 'tmpfs'}


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
