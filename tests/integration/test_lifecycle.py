"""The fault lifecycle against a real PostgreSQL: an apply blocked past its TTL, a reaper that died, a reboot."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time

import psycopg2

from modrun import run_module
from pgtools import query
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _ledger, _reaper, _steps
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_trigger


def modes(params):
    return dict(query(params, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"))


def hold_trigger_row(params, seconds):
    """Another session updates pggit_ddl_trigger's catalog row and keeps its transaction open."""
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            dbname=params['db'])
    cur = conn.cursor()
    cur.execute('ALTER EVENT TRIGGER pggit_ddl_trigger ENABLE')  # same mode: no change, but the row is locked
    timer = threading.Timer(seconds, conn.rollback)
    timer.start()
    return conn, timer


def test_an_apply_blocked_by_a_lock_gives_up_before_the_ttl_and_leaves_nothing(pgdb, state_dir):
    conn, timer = hold_trigger_row(pgdb, 20)
    try:
        started = time.time()
        result, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='blocked', state_dir=state_dir, ttl=5))
        took = time.time() - started
    finally:
        timer.cancel()
        conn.rollback()
        conn.close()
    assert failed, result
    assert 'lock timeout' in result['msg'] or 'canceling statement' in result['msg'], result['msg']
    assert took < 5, 'the apply must give up before its fault would expire (took %.1f s)' % took
    assert result['rollback']['result'] == 'reverted'
    assert set(modes(pgdb).values()) == {'O'}
    assert _ledger.Ledger(state_dir).list() == []


def test_a_reaper_killed_mid_fault_is_rearmed_and_still_reverts_at_the_ttl(pgdb, state_dir):
    result, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='orphan', state_dir=state_dir, ttl=8))
    assert not failed, result
    first = result['record']['reaper']
    os.kill(first['pid'], signal.SIGKILL)
    assert wait_for(lambda: not _steps.same_process(first['pid'], first['starttime']), 5)
    again, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='orphan', state_dir=state_dir, ttl=8))
    assert not failed and again['rearmed']['pid'] != first['pid']
    expires_at = result['record']['expires_at']
    # Only the new reaper can heal it now.
    assert wait_for(lambda: set(modes(pgdb).values()) == {'O'}, expires_at - time.time() + 5)
    assert wait_for(lambda: _ledger.Ledger(state_dir).list() == [], 5)


def test_after_a_reboot_the_boot_hook_reverts_an_expired_trigger_fault(pgdb, state_dir, tmp_path, monkeypatch):
    # A stand-in for a systemd host; the unit is run exactly as its ExecStart line says.
    for name, sub in (('SYSTEMD_RUN', 'run'), ('SYSTEMD_DIR', 'etc')):
        os.makedirs(str(tmp_path / sub))
        monkeypatch.setattr(_boot, name, str(tmp_path / sub))
    monkeypatch.setattr(_boot, 'unsafe_for_boot', lambda state_dir: None)  # tmp_path is under /tmp
    result, failed = run_module(pggit_chaos_trigger.main, dict(pgdb, name='reboot', state_dir=state_dir, ttl=60))
    assert not failed, result
    assert result['boot_hook']['kind'] == 'systemd'
    assert set(modes(pgdb).values()) == {'D'}
    # The reboot: every process is gone; the disabled triggers and the record survive. Time passes.
    reaper = result['record']['reaper']
    os.kill(reaper['pid'], signal.SIGKILL)
    ledger = _ledger.Ledger(state_dir)
    record = ledger.read('trigger--reboot')
    record['expires_at'] = time.time() - 1
    ledger.write(record)
    with open(result['boot_hook']['path']) as handle:
        line = next(text for text in handle if text.startswith('ExecStart='))
    argv = shlex.split(line[len('ExecStart='):].replace('%%', '%'))
    proc = subprocess.run(argv, cwd='/', env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(modes(pgdb).values()) == {'O'}
    assert ledger.list() == []
    assert not os.path.exists(result['boot_hook']['path']), 'a host at baseline carries no boot hook'
    assert not _reaper.alive(record)
