"""pggit_chaos_clock against a real PostgreSQL of its own: now() really moves by the offset, a new offset needs no
restart (same postmaster), the revert (and the TTL reaper alone) restarts the server without the preload, so that
its environment is clean and now() is true again.  The machine's clock is never touched.

The server is private to this file (module scope): these tests restart it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from background import ledger_ids
from modrun import run_module
from pgtools import Postgres, connection, kill_reapers, query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _restart, _server
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_clock


@pytest.fixture(scope='module')
def server():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def state_dir():
    """A state dir whose parents the server's user may search (pytest's tmp_path is private to root)."""
    top = tempfile.mkdtemp(prefix='pggit-chaos-clock-it-')
    os.chmod(top, 0o711)
    path = os.path.join(top, 'state')
    yield path
    kill_reapers(path)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def pg(server, state_dir):
    """The private server with a true clock before and after each test (whatever the test left)."""
    params = server.params('postgres')
    yield params
    if ledger_ids(state_dir):
        run_module(pggit_chaos_clock.main, dict(params, name='skew', state='absent', state_dir=state_dir))
    assert preload_of(server) is None


def skew(params):
    """now() on the server minus the real time, in seconds."""
    before = time.time()
    stamp = query(params, 'SELECT extract(epoch FROM now())::float8')[0][0]
    return stamp - (before + time.time()) / 2.0


def postmaster(server):
    return _server.postmaster_pid(server.data)


def preload_of(server):
    return _restart.faketime_preload(_restart.environ_of(postmaster(server)))


def test_offset_moves_now_a_new_offset_needs_no_restart_and_the_revert_restarts_clean(server, pg, state_dir):
    args = dict(pg, name='skew', ttl=120, offset_s=-3600, state_dir=state_dir)
    first_pid = postmaster(server)
    os.makedirs(state_dir, 0o700)
    os.chmod(state_dir, 0o700)
    assert abs(skew(pg)) < 1.0 and preload_of(server) is None

    result, failed = run_module(pggit_chaos_clock.main, args)
    assert not failed, result.get('msg')
    assert result['changed'] and result['restarted']
    assert abs(skew(pg) + 3600) < 1.0
    assert abs(result['measured_offset_s'] + 3600) < 1.0
    skewed_pid = postmaster(server)
    assert skewed_pid != first_pid and result['postmaster_pid_before'] == first_pid and result['postmaster_pid_after'] == skewed_pid
    env = _restart.environ_of(skewed_pid)
    assert preload_of(server) == result['preload'] and env['FAKETIME_TIMESTAMP_FILE'] == result['timestamp_file']
    assert env['FAKETIME_NO_CACHE'] == '1'
    with open(result['timestamp_file']) as handle:
        assert handle.read() == '-3600\n'
    assert oct(os.stat(result['timestamp_file']).st_mode & 0o777) == '0o644'
    # Which clock each part of the server used, as measured: client backends and the checkpointer follow the file, the
    # walwriter and the autovacuum launcher keep the real clock (lab-notes); without the preload all would be real.
    clocks = result['clocks']
    assert clocks['client_backend'] == 'fake' and clocks['postmaster'] == 'fake' and clocks['checkpointer'] == 'fake', clocks
    assert clocks['walwriter'] == 'real' and clocks['autovacuum_launcher'] == 'real', clocks
    # The state dir got the search bit, so that the server's user reaches the timestamp file.
    assert oct(os.stat(state_dir).st_mode & 0o777) == '0o711'

    again, failed = run_module(pggit_chaos_clock.main, dict(args, offset_s=1800))
    assert not failed, again.get('msg')
    assert again['changed'] and not again['restarted']
    assert postmaster(server) == skewed_pid == again['postmaster_pid_after']
    assert abs(skew(pg) - 1800) < 1.0 and abs(again['measured_offset_s'] - 1800) < 1.0

    same, failed = run_module(pggit_chaos_clock.main, dict(args, offset_s=1800))
    assert not failed and not same['changed'] and postmaster(server) == skewed_pid

    reverted, failed = run_module(pggit_chaos_clock.main, dict(args, state='absent'))
    assert not failed and reverted['changed'], reverted.get('msg')
    assert postmaster(server) != skewed_pid
    assert preload_of(server) is None
    assert not any(k.startswith('FAKETIME') for k in _restart.environ_of(postmaster(server)))
    assert abs(skew(pg)) < 1.0
    assert not os.path.exists(result['timestamp_file'])
    assert ledger_ids(state_dir) == []
    # The last clock fault gone: the state dir has its own mode back, and clock/ is gone.
    assert oct(os.stat(state_dir).st_mode & 0o777) == '0o700'
    assert not os.path.exists(os.path.join(state_dir, 'clock'))


def test_the_servers_own_ld_preload_stays_during_the_fault_and_after_the_revert(server, pg, state_dir):
    """A server started with an LD_PRELOAD of its own (libz here, which PostgreSQL links anyway: harmless) keeps it."""
    own = os.path.realpath('/lib/x86_64-linux-gnu/libz.so.1')
    assert os.path.isfile(own)
    with connection(pg) as conn:
        info = _server.server_info(conn.cursor())
    _restart.restart(info, env={'LD_PRELOAD': own})
    try:
        assert _restart.environ_of(postmaster(server))['LD_PRELOAD'] == own
        args = dict(pg, name='skew', ttl=120, offset_s=-3600, state_dir=state_dir)
        result, failed = run_module(pggit_chaos_clock.main, args)
        assert not failed, result.get('msg')
        assert _restart.environ_of(postmaster(server))['LD_PRELOAD'] == result['preload'] + ':' + own
        assert abs(skew(pg) + 3600) < 1.0
        reverted, failed = run_module(pggit_chaos_clock.main, dict(args, state='absent'))
        assert not failed and reverted['changed'], reverted.get('msg')
        env = _restart.environ_of(postmaster(server))
        assert env.get('LD_PRELOAD') == own and not any(k.startswith('FAKETIME') for k in env)
        assert abs(skew(pg)) < 1.0
    finally:
        with connection(pg) as conn:
            info = _server.server_info(conn.cursor())
        _restart.restart(info, drop_env=['LD_PRELOAD'])
    assert 'LD_PRELOAD' not in _restart.environ_of(postmaster(server))


def test_the_ttl_reaper_alone_restarts_the_server_without_the_preload(server, pg, state_dir):
    result, failed = run_module(pggit_chaos_clock.main, dict(pg, name='skew', ttl=5, offset_s=7200, state_dir=state_dir))
    assert not failed, result.get('msg')
    skewed_pid = postmaster(server)
    assert abs(skew(pg) - 7200) < 1.0 and preload_of(server)
    assert wait_for(lambda: ledger_ids(state_dir) == [], 25), 'the reaper did not revert the clock fault'
    assert postmaster(server) != skewed_pid and preload_of(server) is None
    assert abs(skew(pg)) < 1.0
    assert not os.path.exists(result['timestamp_file'])


def test_drift_makes_the_offset_grow_with_time(server, pg, state_dir):
    result, failed = run_module(pggit_chaos_clock.main, dict(pg, name='skew', ttl=20, offset_s=40, mode='drift', state_dir=state_dir))
    assert not failed, result.get('msg')
    assert ' x' in result['timestamp'] and abs(result['measured_offset_s']) < 1.0
    early = skew(pg)
    time.sleep(2.5)
    later = skew(pg)
    # 40 s over what was left of 20 s: about 2 s of skew per real second.
    assert later - early > 3.0, (early, later)


def test_strobe_is_refused_before_anything_is_touched(server, pg, state_dir):
    pid = postmaster(server)
    result, failed = run_module(pggit_chaos_clock.main, dict(pg, name='skew', offset_s=60, mode='strobe', state_dir=state_dir))
    assert failed and 'mode=strobe' in result['msg']
    assert postmaster(server) == pid and not os.path.exists(state_dir)
