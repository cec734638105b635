"""Torture: kill ansible-playbook with SIGKILL at a random moment of an experiment, then prove the hosts heal.

One run: start chaos.yml with one experiment, wait for a phase of it (steady
state, inject, window or revert) to show in the controller's output, wait a
random part of that phase, SIGKILL the controller's whole process group, and
then, with no controller at all, watch every lab host until every fault
recorded on it has expired (plus a grace period) and nothing of ours is left.
What is still there then is a leftover: a permanent fault.

Shared by bench/torture.py (many runs, JSON and a table) and the lab test
tests/lab/test_torture.py (a handful of runs in make test).
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

from labtools import REPO, controller_state_dir, lab_dir, lab_hosts, playbook_argv, playbook_env, query

EXPERIMENTS = ('kill_connections', 'trigger_failure', 'network_latency', 'packet_loss', 'region_partition')
# Where in the controller's output each phase starts, and how long (s) to wait into it at most.
PHASES = {
    'steady_state': (re.compile(r'^TASK \[.*Steady state before the fault'), 1.5),
    'inject': (re.compile(r'^TASK \[.*Stamp the timeline with inject_start'), 1.0),
    'window': (re.compile(r'^TASK \[.*Stamp the timeline with inject_end'), None),  # None: up to the window
    'revert': (re.compile(r'^TASK \[.*Stamp the timeline with revert_start'), 0.6),
}
DURATION, TTL = 6, 12
GRACE = 15.0
# A module that was mid-inject when the controller died goes on on its target (no terminal, no SIGHUP) and
# may record its fault after the kill: the lab counts as healed only once it stayed clean this long after the
# kill, and past every expiry seen.
SETTLE = 8.0
ALLOWED_COMMS = ('sshd', 'sshd-session', 'postgres')


def _netns_pids(netns):
    out = subprocess.run(['ip', 'netns', 'pids', netns], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _comm(pid):
    try:
        with open('/proc/%d/comm' % pid) as handle:
            return handle.read().strip()
    except OSError:
        return ''


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return handle.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
    except OSError:
        return ''


def _state_dirs(hosts):
    return [h['pggit_chaos_state_dir'] for h in hosts.values()] + [controller_state_dir()]


def _records(state_dir):
    found = []
    for path in glob.glob(os.path.join(state_dir, 'faults', '*.json')):
        found.append(path)
    return found


def leftovers(hosts):
    """Everything of ours still on the lab: records, chains, qdiscs, processes, triggers, schemas, fill files."""
    found = []
    for name, host in sorted(hosts.items()):
        # Every file in the ledger folder: records (readable or not), password side files, program results.
        for path in sorted(glob.glob(os.path.join(host['pggit_chaos_state_dir'], 'faults', '*'))):
            found.append('%s: ledger file %s' % (name, os.path.basename(path)))
        netns = host['pggit_lab_netns']
        rules = subprocess.run(['ip', 'netns', 'exec', netns, 'iptables', '-w', '-S'], capture_output=True, text=True,
                               check=False).stdout
        found += ['%s: iptables %s' % (name, line) for line in rules.splitlines() if 'pggit-chaos' in line or 'NFQUEUE' in line]
        qdiscs = subprocess.run(['ip', 'netns', 'exec', netns, 'tc', 'qdisc', 'show'], capture_output=True, text=True,
                                check=False).stdout
        found += ['%s: qdisc %s' % (name, line) for line in qdiscs.splitlines() if '7a3c:' in line]
        for pid in _netns_pids(netns):
            comm = _comm(pid)
            if comm and comm not in ALLOWED_COMMS:
                found.append('%s: process %d %s' % (name, pid, _cmdline(pid)[:160]))
            elif comm == 'postgres' and _stopped(pid):
                found.append('%s: postgres process %d is stopped (SIGSTOP)' % (name, pid))
    for path in sorted(glob.glob(os.path.join(controller_state_dir(), 'faults', '*'))):
        found.append('controller: ledger file %s' % path)
    lab = lab_dir()
    for pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:
        cmd = _cmdline(pid)
        if 'pggit-chaos-' in cmd and (lab in cmd or controller_state_dir() in cmd) and 'pytest' not in cmd:
            found.append('process %d %s' % (pid, cmd[:160]))
    found += ['fill file %s' % p for p in glob.glob(os.path.join(lab, '**', '.pggit-chaos-fill-*'), recursive=True)]
    primary = next(h for h in hosts.values() if h.get('pggit_lab_role') == 'primary')
    try:
        modes = query(primary, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'")
        found += ['primary: event trigger %s is %s' % (n, m) for n, m in modes if m != 'O']
        schemas = query(primary, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pggit\\_chaos\\_%'")
        found += ['primary: schema %s' % s for (s,) in schemas]
    except Exception as exc:  # pylint: disable=broad-except
        found.append('primary: not answering: %s' % exc)
    return sorted(set(found))


def _stopped(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[-1].split()[0] == 'T'
    except OSError:
        return False


def latest_expiry(hosts):
    latest = 0.0
    for state_dir in _state_dirs(hosts):
        for path in _records(state_dir):
            try:
                with open(path) as handle:
                    latest = max(latest, float(json.load(handle).get('expires_at') or 0))
            except (OSError, ValueError):
                continue
    return latest


def _records_anywhere(hosts):
    return any(_records(d) for d in _state_dirs(hosts))


def _reader(proc, lines):
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip('\n')))


def one_run(experiment, phase, rng, report_dir, hosts=None, duration=DURATION, ttl=TTL):
    """Run one experiment, SIGKILL the controller in ``phase``, wait for the heal. Returns the run's record."""
    hosts = hosts or lab_hosts()
    pattern, span = PHASES[phase]
    env = dict(playbook_env(report_dir), PYTHONUNBUFFERED='1')
    argv = playbook_argv('chaos.yml', 'chaos_experiments=%s' % experiment, 'chaos_duration=%d' % duration,
                         'chaos_ttl=%d' % ttl, 'chaos_fail_on_failure=false')
    started = time.time()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    reader = threading.Thread(target=_reader, args=(proc, lines), daemon=True)
    reader.start()
    run = {'experiment': experiment, 'phase': phase, 'killed': False}
    try:
        seen = None
        deadline = started + 240
        while seen is None and time.time() < deadline and proc.poll() is None:
            seen = next((t for t, line in lines if pattern.search(line)), None)
            time.sleep(0.02)
        if seen is None:
            run['error'] = 'phase %s never showed (rc %s): %s' % (phase, proc.poll(), ' / '.join(l for _t, l in lines[-6:]))
            return run
        delay = rng.uniform(0, span if span is not None else duration)
        time.sleep(max(0.0, seen + delay - time.time()))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            run.update(killed=True, killed_after_s=round(time.time() - started, 2), delay_into_phase_s=round(delay, 2),
                       last_task=next((l for _t, l in reversed(lines) if l.startswith('TASK [')), None))
        else:
            run['error'] = 'the playbook ended before the kill (rc %s)' % proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = time.time()
    run['records_at_kill'] = sum(len(_records(d)) for d in _state_dirs(hosts))
    # No controller from here on: only the targets' reapers can heal the lab.
    clean_since = None
    while True:
        left = leftovers(hosts)
        now = time.time()
        expiry = latest_expiry(hosts)
        if left and now > killed_at + ttl + GRACE + 120:  # whatever the records say, never watch forever
            run.update(healed=False, leftovers=left)
            break
        if left:
            clean_since = None
            for item in left:
                run.setdefault('seen', {}).setdefault(item, round(now - killed_at, 1))
            if now > max(expiry, killed_at) + GRACE:
                run.update(healed=False, leftovers=left)
                break
        else:
            clean_since = clean_since or now
            if now >= max(killed_at + SETTLE, clean_since + 1.0) and not _records_anywhere(hosts):
                run.update(healed=True, healed_after_kill_s=round(clean_since - killed_at, 2),
                           watched_s=round(now - killed_at, 2))
                break
        time.sleep(0.5)
    return run


def restore_baseline(report_dir):
    """After a run that left something: the red button, so the next run starts clean."""
    subprocess.run(playbook_argv('revert.yml'), cwd=REPO, env=playbook_env(report_dir), capture_output=True, check=False,
                   timeout=300)


def plan(runs, seed):
    """Which experiment and phase each run kills: every pair covered, the order shuffled."""
    rng = random.Random(seed)
    pairs = [(e, p) for e in EXPERIMENTS for p in PHASES]
    chosen = []
    while len(chosen) < runs:
        batch = list(pairs)
        rng.shuffle(batch)
        chosen += batch
    return chosen[:runs], rng


def torture(runs, seed, report_dir, log=print, duration=DURATION, ttl=TTL):
    hosts = lab_hosts()
    before = leftovers(hosts)
    if before:
        raise RuntimeError('the lab is not at baseline before torture: %s' % before)
    chosen, rng = plan(runs, seed)
    results = []
    for number, (experiment, phase) in enumerate(chosen, 1):
        run = one_run(experiment, phase, rng, report_dir, hosts, duration, ttl)
        run['run'] = number
        results.append(run)
        note = run.get('error') or '; '.join(run.get('leftovers', []))[:200]
        log('%3d %-17s %-12s killed=%-5s healed=%-5s %s' % (number, experiment, phase, run['killed'], run.get('healed'), note))
        if run.get('healed') is False or run.get('leftovers'):
            restore_baseline(report_dir)
    killed = [r for r in results if r['killed']]
    left = [item for r in results for item in r.get('leftovers', [])]
    return {'killed_runs': len(killed), 'runs': results, 'leftovers': left,
            'permanent_faults': sum(1 for r in results if r.get('leftovers')),
            'not_killed': [r for r in results if not r['killed']], 'seed': seed,
            'duration_s': duration, 'ttl_s': ttl, 'grace_s': GRACE}
