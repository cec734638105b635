"""manual_failover on the plain lab (no HA manager): kill, promote, repoint, rejoin with pg_rewind, fail back.

The experiment must pass with RTO and RPO in its report entry, the new leader
must be another member on a newer timeline, and the lab must end as it began:
the original primary out of recovery, every other member streaming from it,
every member's pggit.history equal, every ledger empty and no engine program
left.
"""
from __future__ import annotations

import time

import pytest
from waiting import wait_until
from labtools import _inventory, chaos_processes, ledger, load_report, query, run_playbook

DIGEST = "SELECT count(*), md5(string_agg(id::text || sql_executed, ',' ORDER BY id)) FROM pggit.history"


@pytest.fixture(scope='module')
def plain(lab):
    ha = _inventory()['vars']['pggit_lab'].get('ha', 'none')
    if ha != 'none':
        pytest.fail('manual_failover needs the plain lab (make lab without LAB_HA); this lab runs %s' % ha)
    return lab


def in_recovery(host):
    return query(host, 'SELECT pg_is_in_recovery()')[0][0]


# The primary's timeline from its current WAL file: pg_control_checkpoint() lags until the next checkpoint.
TIMELINE = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


def streaming_from(primary):
    return sorted(row[0] for row in query(primary, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"))


def test_manual_failover_passes_and_ends_with_the_original_primary(plain, primary, tmp_path):
    replicas = [h for h in plain.values() if h is not primary]
    assert not in_recovery(primary) and all(in_recovery(h) for h in replicas), 'the lab must start at baseline'
    streaming_before = streaming_from(primary)
    assert len(streaming_before) == len(replicas)
    timeline_before = query(primary, TIMELINE)[0][0]

    started = time.time()
    proc = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=manual_failover', 'chaos_duration=6', 'chaos_ttl=300',
                        timeout=600)
    took = time.time() - started
    report = load_report(tmp_path)
    entry = next(e for e in report['entries'] if e['experiment'] == 'manual_failover')
    assert proc.returncode == 0 and entry['status'] == 'passed', (entry['reasons'], proc.stdout[-3000:], proc.stderr[-2000:])

    # The failover happened: another member led on a newer timeline and acknowledged tracked DDL (the RTO).
    assert entry['new_leader'] and entry['new_leader'] != entry['old_leader'], entry
    assert entry['pg_timeline']['after'] > entry['pg_timeline']['before'] == timeline_before
    assert isinstance(entry['rto_s'], (int, float)) and entry['rto_s'] > 0
    assert entry['rpo_lost_ddl'] is not None and entry['rejoin_method'] in ('pg_rewind', 'none')
    assert entry['workload'] and entry['workload']['valid'], entry['workload']

    # Back at baseline: the original primary leads, every other member streams from it, history equal everywhere.
    assert not in_recovery(primary) and all(in_recovery(h) for h in replicas)
    assert wait_until(lambda: streaming_from(primary) == streaming_before, time.time() + 30), streaming_from(primary)
    assert query(primary, TIMELINE)[0][0] > timeline_before
    assert wait_until(lambda: all(query(h, DIGEST) == query(primary, DIGEST) for h in replicas), time.time() + 30)
    assert not any(ledger(h) for h in plain.values()), [ledger(h) for h in plain.values()]
    assert wait_until(lambda: not chaos_processes(), time.time() + 30), chaos_processes()
    print('manual_failover: RTO %.2f s, RPO %s DDL, rejoin %s s (%s), whole run %.0f s'
          % (entry['rto_s'], entry['rpo_lost_ddl'], entry['rejoin_s'], entry['rejoin_method'], took))
