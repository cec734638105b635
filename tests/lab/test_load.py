"""load_spike on the lab: a real pgbench load under several tracked-DDL workers, and nothing left after it.

The experiment must pass with the fault's own evidence: pgbench ran transactions during the window (TPS > 0), its
database exists with our mark, every worker's DDL was tracked exactly once, the workers met the load, and pgGit's
tracking cost was measured with the triggers really off in the measuring session (off_tracked 0). After it no
pgbench process and no ledger record are left. A second test starts a long load, kills the controller side (the
ansible process) mid-run, and proves that the one revert stops pgbench.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from labtools import REPO, INVENTORY, BIN, chaos_processes, ledger, load_report, playbook_env, query, run_playbook, trigger_modes
from torture import leftovers
from waiting import wait_until

DATABASE = 'pggit_chaos_load'
MARK = 'pggit.chaos load database'


def _environ(pid):
    try:
        with open('/proc/%s/environ' % pid, 'rb') as handle:
            return dict(item.split(b'=', 1) for item in handle.read().split(b'\0') if b'=' in item)
    except OSError:
        return {}


def pgbench_processes(host=None):
    """pgbench processes against the load's database of this lab's hosts (other labs on this machine may run theirs):
    the load gives pgbench its server in PGHOST."""
    from labtools import lab_hosts  # pylint: disable=import-outside-toplevel
    ours = set(h['pggit_login_host'].encode() for h in lab_hosts().values())
    proc = subprocess.run(['pgrep', '-af', 'pgbench'], capture_output=True, text=True, check=False)
    found = []
    for line in proc.stdout.splitlines():
        pid = line.split(' ', 1)[0]
        if 'pgrep' not in line and DATABASE in line and _environ(pid).get(b'PGHOST') in ours:
            found.append(line)
    return found


def test_load_spike_passes_with_pgbench_and_workers(primary, tmp_path):
    result = run_playbook('chaos.yml', tmp_path, 'chaos_experiments=load_spike', 'chaos_duration=8',
                          'chaos_ddl_workers=4', 'chaos_load_clients=4', timeout=300)
    entry = load_report(tmp_path)['entries'][0]
    assert entry['status'] == 'passed', (entry['reasons'], result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:]
    ev = entry['evidence']
    assert ev['fault_check'] == 'load'
    # pgbench really ran: transactions during the window, and a baseline before.
    assert ev['tps_during'] > 0 and ev['transactions'] > 0 and len(ev['tps_series']) >= 3, ev
    assert ev['tps_before'] > 0
    # Four workers, each checked on its own tokens, and the total adds them up.
    assert len(ev['workers']) == 4 and all(w['ops'] > 0 and w['valid'] for w in ev['workers']), ev['workers']
    assert ev['total']['ops'] == sum(w['ops'] for w in ev['workers']) and ev['total']['valid'] is True
    assert entry['workload']['workers'] == 4
    # DDL met the load, and ran before and after it too.
    for phase in ('before', 'during', 'after'):
        assert ev['latency_ms'][phase]['n'] > 0 and ev['latency_ms'][phase]['p95'] is not None, (phase, ev['latency_ms'])
    # pgGit's own cost, with the triggers really off in the measuring session only.
    cost = ev['tracking_cost']
    assert cost['valid'] is True and cost['off_tracked'] == 0 and cost['on_tracked'] == cost['n'] > 0, cost
    assert set(trigger_modes(primary).values()) == {'O'}
    # The load's own database, marked as ours; nothing left running or recorded.
    assert query(primary, "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                 (DATABASE,)) == [(MARK,)]
    assert pgbench_processes() == []
    assert ledger(primary) == [] and chaos_processes() == []
    with open(os.path.join(str(tmp_path), 'chaos-report.md')) as handle:
        text = handle.read()
    assert '## Load' in text and 'Workers of load_spike' in text


def test_revert_stops_pgbench_after_the_controller_died(lab, primary, tmp_path):
    state_dir = primary['pggit_chaos_state_dir']
    argv = [os.path.join(BIN, 'ansible'), 'lab-1', '-i', INVENTORY, '-m', 'pggit.chaos.pggit_chaos_load', '-a',
            'name=orphan duration=60 ttl=90 clients=2 rate=200 mode=select db=%s login_host=%s login_user=%s state_dir=%s'
            % (primary['pggit_db'], primary['pggit_login_host'], primary['pggit_login_user'], state_dir)]
    controller = subprocess.Popen(argv, cwd=REPO, env=playbook_env(tmp_path), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 40
        while not pgbench_processes() and time.time() < deadline:
            time.sleep(0.5)
        assert pgbench_processes(), 'pgbench never started'
        # The controller side dies: its SSH session and the module go, the detached load stays, recorded.
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
        time.sleep(1)
        assert pgbench_processes(), 'pgbench should outlive the controller until its revert'
        assert [r['id'] for r in ledger(primary)] == ['load--orphan']
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
        revert = subprocess.run([os.path.join(BIN, 'ansible'), 'lab-1', '-i', INVENTORY, '-m', 'pggit.chaos.pggit_chaos_revert',
                                 '-a', 'kinds=load state_dir=%s' % state_dir], cwd=REPO, env=playbook_env(tmp_path),
                                capture_output=True, text=True, timeout=60, check=False)
    assert revert.returncode == 0, revert.stdout[-2000:]
    assert pgbench_processes() == []
    assert ledger(primary) == [] and chaos_processes() == []
    # The orphaned module ends once its pgbench is gone: nothing of ours stays on a lab host.
    assert wait_until(lambda: leftovers(lab) == [], time.time() + 60), leftovers(lab)
