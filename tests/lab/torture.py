"""Torture: kill ansible-playbook with SIGKILL at a random moment of an experiment, then prove the hosts heal.

One run: start chaos.yml with one experiment, wait for a phase of it (steady
state, inject, window or revert) to show in the controller's output, wait a
random part of that phase, SIGKILL the controller's whole process group, and
then, with no controller at all, watch every lab host until every fault
recorded on it has expired (plus a grace period) and nothing of ours is left.
What is still there then is a leftover: a permanent fault.

Every experiment of playbooks/chaos.yml is covered: the network and connection
ones, the resource and process ones (issue 7) and the database ones (issue 8).
leftovers() therefore looks at much more than records, rules and processes: at
each lab host's server (up, not stopped, not frozen, no faketime preload, its
replicas streaming) and at its database (no pggit-chaos session, no ALTER
SYSTEM setting, no scratch tablespace, no invalid or amcheck-failing index).

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

import psycopg2
import psycopg2.sql

from labtools import REPO, controller_state_dir, lab_dir, lab_hosts, playbook_argv, playbook_env

NETWORK_EXPERIMENTS = ('kill_connections', 'trigger_failure', 'network_latency', 'packet_loss', 'region_partition')
# Issue 7: resource and process faults (roles pggit_chaos_disk, pggit_chaos_stress, pggit_chaos_process).
RESOURCE_EXPERIMENTS = ('disk_pressure', 'disk_full', 'memory_pressure', 'cpu_pressure', 'backend_crash', 'postmaster_crash',
                        'process_pause')
# Issue 8: database faults (roles pggit_chaos_lock, pggit_chaos_corrupt, pggit_chaos_clock, pggit_chaos_dependency).
DATABASE_EXPERIMENTS = ('lock_contention', 'index_corruption', 'clock_skew', 'dependency_failure')
EXPERIMENTS = NETWORK_EXPERIMENTS + RESOURCE_EXPERIMENTS + DATABASE_EXPERIMENTS
# Where in the controller's output each phase starts, and how long (s) to wait into it at most.
PHASES = {
    'steady_state': (re.compile(r'^TASK \[.*Steady state before the fault'), 1.5),
    'inject': (re.compile(r'^TASK \[.*Stamp the timeline with inject_start'), 1.0),
    # None: into the first half of the window, where every fault is live. Later, a fault made of rounds
    # (kill_connections) may have ended by itself, with the workload that started before the injection.
    'window': (re.compile(r'^TASK \[.*Stamp the timeline with inject_end'), None),
    'revert': (re.compile(r'^TASK \[.*Stamp the timeline with revert_start'), 0.6),
}
DURATION, TTL = 6, 12
# How long after the last expiry seen a leftover may still go away by itself: the reaper reverts at the
# expiry, then a server it starts again needs a few seconds, and a replica reconnects to a restarted primary
# only at its next retry (wal_retrieve_retry_interval, 5 s).
GRACE = 30.0
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


# Settings a lab host's postgresql.auto.conf may hold: what pg_basebackup -R writes on a replica. Anything
# else there was written by ALTER SYSTEM, and the lab never runs it.
LAB_AUTO_CONF = {'primary': (), 'replica': ('primary_conninfo', 'primary_slot_name')}
HARNESS_APP = 'pggit-chaos-torture'
# Sessions of ours that may be connected at baseline: this harness and the lab tests' queries.
OWN_APPS = (HARNESS_APP, 'pggit-chaos-test')
_AUTO_CONF_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=')


def _connect(host):
    # Never wait on a lock a fault holds (lock_contention) or on a host that does not answer (a paused or
    # partitioned server): each look is short, and a look that times out is itself a leftover.
    conn = psycopg2.connect(host=host['pggit_login_host'], port=host['pggit_login_port'], user=host['pggit_login_user'],
                            dbname=host['pggit_db'], connect_timeout=3, application_name=HARNESS_APP,
                            options='-c statement_timeout=4000 -c lock_timeout=1000')
    conn.autocommit = True
    return conn


def _rows(cur, text, args=None):
    cur.execute(text, args)
    return cur.fetchall()


def _postmaster_pid(pgdata):
    try:
        with open(os.path.join(pgdata, 'postmaster.pid')) as handle:
            pid = int(handle.readline().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists('/proc/%d' % pid) and _comm(pid) in ('postgres', 'postmaster') else None


def _environ(pid):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as handle:
            return [item.decode('utf-8', 'replace') for item in handle.read().split(b'\0') if item]
    except OSError:
        return []


def _preloads(pid):
    """The faketime bits of a process's environment (LD_PRELOAD of libfaketime, FAKETIME* variables)."""
    found = []
    for item in _environ(pid):
        name, _sep, value = item.partition('=')
        if (name == 'LD_PRELOAD' and 'faketime' in value.lower()) or name.startswith('FAKETIME'):
            found.append(item[:120])
    return found


def _cgroup_lines(pid):
    """controller -> cgroup path of a process, from /proc/<pid>/cgroup (v1 'N:ctrl,ctrl:/path', v2 '0::/path')."""
    found = {}
    try:
        with open('/proc/%d/cgroup' % pid) as handle:
            for line in handle:
                parts = line.rstrip('\n').split(':', 2)
                if len(parts) == 3:
                    for ctrl in (parts[1] or 'unified').split(','):
                        found[ctrl] = parts[2]
    except OSError:
        pass
    return found


_FREEZERS = {}


def _lab_freezers(name):
    """The freezer cgroups named ``name`` (the lab host's own: pggit_lab_cgroup_name), v1 or v2, and their children."""
    cached = _FREEZERS.get(name)
    if cached and all(os.path.isdir(p) for p in cached):
        return cached
    found = []
    for root in ('/sys/fs/cgroup/freezer', '/sys/fs/cgroup/unified', '/sys/fs/cgroup'):
        if not os.path.isdir(root) or (root == '/sys/fs/cgroup' and found):
            continue
        for path, dirs, _files in os.walk(root):
            if path[len(root):].count('/') >= 6:
                dirs[:] = []
                continue
            if os.path.basename(path) == name:
                found.append(path)
                dirs[:] = []
            if root == '/sys/fs/cgroup' and path == root:
                dirs[:] = [d for d in dirs if d not in ('freezer', 'unified', 'memory', 'cpu', 'cpuacct', 'cpuset', 'devices',
                                                        'blkio', 'pids', 'systemd', 'net_cls', 'perf_event', 'hugetlb')]
    _FREEZERS[name] = found
    return found


def _frozen(paths):
    """The paths (and their descendants) whose freezer is not thawed: v1 freezer.state, v2 cgroup.freeze."""
    found = []
    for top in paths:
        for path, _dirs, files in os.walk(top):
            try:
                if 'freezer.state' in files:
                    with open(os.path.join(path, 'freezer.state')) as handle:
                        state = handle.read().strip()
                    if state != 'THAWED':
                        found.append('%s is %s' % (path, state))
                elif 'cgroup.freeze' in files:
                    with open(os.path.join(path, 'cgroup.freeze')) as handle:
                        if handle.read().strip() != '0':
                            found.append('%s is frozen (cgroup.freeze 1)' % path)
            except OSError:
                continue
    return found


def _auto_conf(pgdata, role):
    """Settings in postgresql.auto.conf the lab did not write (ALTER SYSTEM left behind)."""
    try:
        with open(os.path.join(pgdata, 'postgresql.auto.conf')) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        return ['postgresql.auto.conf unreadable: %s' % exc]
    allowed = LAB_AUTO_CONF.get(role, ())
    return [line.strip()[:160] for line in lines if _AUTO_CONF_RE.match(line) and _AUTO_CONF_RE.match(line).group(1) not in allowed]


def _database(name, host, replicas):
    """What the server of one lab host says about itself: up, role, sessions, settings, tablespaces, indexes, replication."""
    found = []
    role = host.get('pggit_lab_role')
    try:
        conn = _connect(host)
    except psycopg2.Error as exc:
        return ['%s: server not answering: %s' % (name, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)]
    try:
        cur = conn.cursor()
        (in_recovery,), = _rows(cur, 'SELECT pg_is_in_recovery()')
        if in_recovery != (role == 'replica'):
            found.append('%s: server is %s' % (name, 'in recovery' if in_recovery else 'not in recovery (promoted?)'))
        sessions = _rows(cur, "SELECT pid, application_name, state FROM pg_stat_activity "
                              "WHERE application_name LIKE 'pggit-chaos-%%' AND application_name <> ALL(%s)", (list(OWN_APPS),))
        found += ['%s: session %s (%s, pid %s)' % (name, app, state, pid) for pid, app, state in sessions]
        (sync,), = _rows(cur, 'SHOW synchronous_standby_names')
        if sync:
            found.append('%s: synchronous_standby_names is %r' % (name, sync))
        found += ['%s: tablespace %s' % (name, t) for (t,) in _rows(
            cur, "SELECT spcname FROM pg_tablespace WHERE spcname LIKE 'pggit\\_chaos\\_%%'")]
        found += ['%s: invalid index %s' % (name, i) for (i,) in _rows(
            cur, "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = 'pggit' AND NOT (i.indisvalid AND i.indisready AND i.indislive)")]
        if role == 'primary':
            modes = _rows(cur, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%%'")
            found += ['%s: event trigger %s is %s' % (name, n, m) for n, m in modes if m != 'O']
            found += ['%s: schema %s' % (name, s) for (s,) in _rows(
                cur, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pggit\\_chaos\\_%%'")]
            streaming = sorted(a for (a,) in _rows(cur, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"))
            missing = sorted(set(replicas) - set(streaming))
            if missing:
                found.append('%s: replica(s) %s not streaming from it (streaming: %s)' % (name, ', '.join(missing), streaming))
        else:
            status = _rows(cur, 'SELECT status FROM pg_stat_wal_receiver')
            if not status or status[0][0] != 'streaming':
                found.append('%s: replica not streaming (walreceiver %s)' % (name, status[0][0] if status else 'absent'))
        # amcheck only where it is installed: the harness never creates it (index_corruption does, on its target).
        if _rows(cur, "SELECT 1 FROM pg_extension WHERE extname = 'amcheck'"):
            indexes = _rows(cur, "SELECT c.oid, c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                 "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam "
                                 "WHERE n.nspname = 'pggit' AND a.amname = 'btree' AND i.indisvalid")
            schema = _rows(cur, "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                                "WHERE e.extname = 'amcheck'")[0][0]
            check = psycopg2.sql.SQL('SELECT {}.bt_index_check(%s::regclass)').format(psycopg2.sql.Identifier(schema))
            for oid, index in indexes:
                try:
                    cur.execute(check, (oid,))
                except psycopg2.Error as exc:
                    found.append('%s: amcheck fails on %s: %s' % (name, index, str(exc).strip().splitlines()[0]))
    except psycopg2.Error as exc:
        found.append('%s: server not answering: %s' % (name, str(exc).strip().splitlines()[0] if str(exc).strip() else exc))
    finally:
        conn.close()
    return found


def leftovers(hosts):
    """Everything of ours still on the lab, and every way a lab host is not at its baseline.

    Ledger files, chains, qdiscs, processes (engine programs, stress-ng, stopped postgres), fill files, frozen
    cgroups, faketime preloads, servers down or not streaming, sessions, settings, tablespaces, broken indexes,
    disabled triggers, schemas.
    """
    found = []
    cgroup_names = dict((host.get('pggit_lab_cgroup_name'), name) for name, host in hosts.items()
                        if host.get('pggit_lab_cgroup_name'))
    replicas = sorted(name for name, host in hosts.items() if host.get('pggit_lab_role') == 'replica')
    for name, host in sorted(hosts.items()):
        # Every file in the ledger folder: records (readable or not), password side files, program results;
        # the clock fault's timestamp files and the corrupt fault's page copies.
        for sub in ('faults', 'clock', 'pages'):
            for path in sorted(glob.glob(os.path.join(host['pggit_chaos_state_dir'], sub, '*'))):
                found.append('%s: %s file %s' % (name, 'ledger' if sub == 'faults' else sub, os.path.basename(path)))
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
        pgdata = host.get('pggit_lab_pgdata')
        if pgdata:
            postmaster = _postmaster_pid(pgdata)
            if postmaster is None:
                found.append('%s: server down (no live postmaster in %s/postmaster.pid)' % (name, pgdata))
            else:
                found += ['%s: postmaster %d runs with %s' % (name, postmaster, item) for item in _preloads(postmaster)]
            found += ['%s: postgresql.auto.conf: %s' % (name, line) for line in _auto_conf(pgdata, host.get('pggit_lab_role'))]
        if host.get('pggit_lab_cgroup_name'):
            found += ['%s: freezer cgroup %s' % (name, item) for item in _frozen(_lab_freezers(host['pggit_lab_cgroup_name']))]
        found += _database(name, host, replicas)
    for path in sorted(glob.glob(os.path.join(controller_state_dir(), 'faults', '*'))):
        found.append('controller: ledger file %s' % path)
    lab = lab_dir()
    under = re.compile(r'/(%s)(/|$)' % '|'.join(re.escape(n) for n in cgroup_names)) if cgroup_names else None
    for pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:
        cmd = _cmdline(pid)
        if 'pggit-chaos-' in cmd and (lab in cmd or controller_state_dir() in cmd) and 'pytest' not in cmd:
            found.append('process %d %s' % (pid, cmd[:160]))
            continue
        if under is None:
            continue
        # Anything in a lab host's cgroups that is not its PostgreSQL (stress-ng confined with the server, ...),
        # and a stopped postgres there; wherever its network namespace is.
        for path in set(_cgroup_lines(pid).values()):
            match = under.search(path)
            if not match:
                continue
            comm = _comm(pid)
            if comm and comm != 'postgres':
                found.append('%s: process %d %s in cgroup %s' % (cgroup_names[match.group(1)], pid, cmd[:120], path))
            elif comm == 'postgres' and _stopped(pid):
                found.append('%s: postgres process %d is stopped (SIGSTOP)' % (cgroup_names[match.group(1)], pid))
            break
    found += ['fill file %s' % p for p in glob.glob(os.path.join(lab, '**', '.pggit-chaos-fill-*'), recursive=True)]
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


def records_left(hosts):
    """What a run that did not heal leaves to read: each record still there (status, expiry, last_error) and the tail
    of each reaper log that names it."""
    found = []
    for state_dir in _state_dirs(hosts):
        for path in _records(state_dir):
            try:
                with open(path) as handle:
                    record = json.load(handle)
            except (OSError, ValueError) as exc:
                found.append({'path': path, 'error': str(exc)})
                continue
            fid = record.get('id') or ''
            try:
                with open(os.path.join(state_dir, 'reaper.log'), errors='replace') as handle:
                    log = [line.rstrip('\n') for line in handle if fid and fid in line][-5:]
            except OSError:
                log = []
            found.append({'path': path, 'id': fid, 'status': record.get('status'), 'expires_at': record.get('expires_at'),
                          'last_error': record.get('last_error'), 'revert_attempts': record.get('revert_attempts'),
                          'reaper_log': log})
    return found


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
        delay = rng.uniform(0, span if span is not None else duration / 2.0)
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
    expiry = 0.0
    while True:
        left = leftovers(hosts)
        now = time.time()
        # The latest expiry ever seen: a record the reaper reverted is gone, but what its revert started (a
        # server starting, a replica reconnecting) still gets its GRACE from that expiry.
        expiry = max(expiry, latest_expiry(hosts))
        if left and now > killed_at + ttl + GRACE + 120:  # whatever the records say, never watch forever
            run.update(healed=False, leftovers=left, records_left=records_left(hosts), latest_expiry_after_kill_s=(
                round(expiry - killed_at, 1) if expiry else None))
            # Still a leftover (it outlived the TTL by far), but say whether a record that expires later heals it then.
            run.update(_late(hosts, killed_at, expiry))
            break
        if left:
            clean_since = None
            for item in left:
                run.setdefault('seen', {}).setdefault(item, round(now - killed_at, 1))
            if now > max(expiry, killed_at) + GRACE:
                run.update(healed=False, leftovers=left, records_left=records_left(hosts), latest_expiry_after_kill_s=(
                    round(expiry - killed_at, 1) if expiry else None))
                break
        else:
            clean_since = clean_since or now
            if now >= max(killed_at + SETTLE, clean_since + 1.0) and not _records_anywhere(hosts):
                run.update(healed=True, healed_after_kill_s=round(clean_since - killed_at, 2),
                           watched_s=round(now - killed_at, 2))
                break
        time.sleep(0.5)
    return run


def _late(hosts, killed_at, expiry):
    """After a run counted as not healed because it outlived the bound while a record still had time to go: watch on
    until that record's expiry plus GRACE (never longer than 10 min after the kill) and say whether the lab healed then."""
    if not expiry or expiry <= time.time():
        return {}
    until = min(expiry + GRACE, killed_at + 600)
    while time.time() < until:
        if not leftovers(hosts) and not _records_anywhere(hosts):
            return {'healed_late_after_kill_s': round(time.time() - killed_at, 1)}
        time.sleep(1.0)
    return {'healed_late_after_kill_s': None, 'left_after_expiry': leftovers(hosts)}


def restore_baseline(report_dir):
    """After a run that left something: the red button, so the next run starts clean."""
    subprocess.run(playbook_argv('revert.yml'), cwd=REPO, env=playbook_env(report_dir), capture_output=True, check=False,
                   timeout=300)


def plan(runs, seed, experiments=EXPERIMENTS):
    """Which experiment and phase each run kills, in rounds: each round kills every experiment once, in a phase
    it was not killed in yet (until all four are used), the order shuffled; so N x len(experiments) runs kill
    each experiment N times in N different phases, the first of them inject or window."""
    rng = random.Random(seed)
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown or not experiments:
        raise ValueError('experiments: unknown %s; known: %s' % (unknown or 'none given', ', '.join(EXPERIMENTS)))
    orders = {}
    for experiment in experiments:
        # The first kill of each experiment lands while its fault is being made or is live (inject, window):
        # a kill in the steady state proves the least. The other phases follow in a random order.
        first = rng.choice(('inject', 'window'))
        rest = [p for p in PHASES if p != first]
        rng.shuffle(rest)
        orders[experiment] = [first] + rest
    chosen = []
    number = 0
    while len(chosen) < runs:
        batch = [(e, orders[e][number % len(PHASES)]) for e in experiments]
        rng.shuffle(batch)
        chosen += batch
        number += 1
    return chosen[:runs], rng


def summary(results):
    """Per experiment: runs, killed, healed, leftovers, heal time after the kill (p50, max) of the healed runs."""
    table = {}
    for run in results:
        cell = table.setdefault(run['experiment'], {'runs': 0, 'killed': 0, 'healed': 0, 'leftovers': [], 'phases': [],
                                                    'heal_s': []})
        cell['runs'] += 1
        cell['killed'] += bool(run['killed'])
        cell['healed'] += bool(run.get('healed'))
        cell['leftovers'] += run.get('leftovers', [])
        cell['phases'].append(run['phase'])
        if run.get('healed'):
            cell['heal_s'].append(run['healed_after_kill_s'])
    for cell in table.values():
        times = sorted(cell.pop('heal_s'))
        cell['heal_p50_s'] = times[(len(times) - 1) // 2] if times else None
        cell['heal_max_s'] = times[-1] if times else None
    return table


def torture(runs, seed, report_dir, log=print, duration=DURATION, ttl=TTL, experiments=EXPERIMENTS):
    hosts = lab_hosts()
    before = leftovers(hosts)
    if before:
        raise RuntimeError('the lab is not at baseline before torture: %s' % before)
    chosen, rng = plan(runs, seed, experiments)
    results = []
    for number, (experiment, phase) in enumerate(chosen, 1):
        run = one_run(experiment, phase, rng, report_dir, hosts, duration, ttl)
        run['run'] = number
        results.append(run)
        note = run.get('error') or '; '.join(run.get('leftovers', []))[:200] or 'heal %ss' % run.get('healed_after_kill_s')
        log('%3d %-18s %-12s killed=%-5s healed=%-5s %s' % (number, experiment, phase, run['killed'], run.get('healed'), note))
        if run.get('healed') is False or run.get('leftovers'):
            restore_baseline(report_dir)
    killed = [r for r in results if r['killed']]
    left = [item for r in results for item in r.get('leftovers', [])]
    return {'killed_runs': len(killed), 'runs': results, 'leftovers': left,
            'permanent_faults': sum(1 for r in results if r.get('leftovers')),
            'not_killed': [r for r in results if not r['killed']], 'seed': seed,
            'healed_runs': sum(1 for r in results if r.get('healed')), 'experiments': list(experiments),
            'per_experiment': summary(results), 'duration_s': duration, 'ttl_s': ttl, 'grace_s': GRACE}
