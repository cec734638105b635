"""pggit_verify's wait_for_digest against a real PostgreSQL: it returns as soon as the digest matches, and gives up
at wait_timeout when it never does (the caller's judge compares the digests)."""
from __future__ import annotations

import threading
import time

from modrun import run_module
from pgtools import query
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify


def verify(params, **extra):
    args = dict(params)
    args.update(extra)
    return run_module(pggit_verify.main, args)


def test_wait_for_the_current_digest_returns_at_once(pgdb):
    now, failed = verify(pgdb, history_digest=True, monitor=False)
    assert not failed
    started = time.time()
    result, failed = verify(pgdb, history_digest=True, monitor=False, wait_for_digest=now['history']['digest'], wait_timeout=30)
    assert not failed and result['converged'] is True and result['history_rounds'] == 1
    assert time.time() - started < 10


def test_wait_sees_a_digest_the_history_reaches_while_it_waits(pgdb):
    """A DDL left uncommitted: its transaction reads the digest the history will have once it commits (the target a
    replica catches up to); the module waits, and sees it within a poll of the commit made 1.5 s later."""
    import psycopg2
    conn = psycopg2.connect(host=pgdb['login_host'], port=pgdb['login_port'], user=pgdb['login_user'], dbname=pgdb['db'])
    cur = conn.cursor()
    cur.execute('CREATE TABLE public.pggit_chaos_wait_probe (id int)')
    cur.execute(DIGEST_SQL)
    target = cur.fetchone()[0]
    committed = []

    def commit_later():
        time.sleep(1.5)
        conn.commit()
        committed.append(time.time())
    worker = threading.Thread(target=commit_later)
    worker.start()
    try:
        result, failed = verify(pgdb, history_digest=True, monitor=False, wait_for_digest=target, wait_timeout=30)
        seen = time.time()
    finally:
        worker.join()
        conn.close()
        query(pgdb, 'DROP TABLE IF EXISTS public.pggit_chaos_wait_probe')
    assert not failed and result['converged'] is True and result['history']['digest'] == target
    assert result['history_rounds'] >= 2 and seen - committed[0] < 2.0


def test_wait_gives_up_at_the_timeout(pgdb):
    started = time.time()
    result, failed = verify(pgdb, history_digest=True, monitor=False, wait_for_digest='not-a-digest', wait_timeout=1.5)
    assert not failed and result['converged'] is False and result['history_rounds'] >= 2
    assert result['waited_s'] >= 1.4 and time.time() - started < 10


# The probe's own digest of pggit.history (_probe.Probe.check_history).
DIGEST_SQL = ("SELECT md5(coalesce(string_agg(concat_ws('|', id, object_id, change_type, change_severity, sql_executed), "
              "E'\\n' ORDER BY id), '')) FROM pggit.history")
