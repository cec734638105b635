"""The HA lab's daemons (etcd, Patroni): start them findable, stop them, wait for the cluster; print JSON.

Sub-commands:

- ``start --pidfile P --log L --netns NS [--user U] [--procs F]... [--env K=V]... --tag T -- ARGV``: start
  ARGV as a daemon of the lab (own session, stdin /dev/null, stdout and stderr appended to L), inside the
  network namespace NS (``ip netns exec``), as user U (``setpriv``, no PAM session, so the pid stays the
  program's), after writing its own pid into every cgroup.procs file F (so it and everything it starts,
  such as Patroni's postmaster, run in the lab host's cgroups) and into P. ``ip netns exec``, ``setpriv``
  and ``env`` all exec, so P names the program itself. Nothing happens when P already names a live process
  whose command line holds T (the config or data path: a path under the lab directory, which is also how
  lab_down's reaper recognises the process). Waits a moment and fails, with the log's tail, when the
  program died at once.
- ``stop --lab-dir D [--timeout S]``: SIGKILL every live process named by a pid file
  ``D/hosts/*/{patroni,etcd}.pid`` whose command line names a path under D (a reused pid is spared), Patroni
  first, so no Patroni restarts a postmaster that lab_down is stopping; waits until they are gone.
- ``wait-etcd --url U... [--timeout S]``: until every etcd member answers GET /health with health true.
- ``wait --url U... --members N [--sync K] [--timeout S]``: until Patroni's GET /cluster (from any of the
  URLs) shows exactly one leader, running, and N - 1 other members streaming, K of them synchronous
  standbys (N = 0: the leader alone, however many others); prints the cluster, the leader's name and host.
  With ``--settings JSON`` (pggit_lab_patroni_settings) it then reads GET /config and fails when Patroni runs
  with other values (Patroni 4 raises a ttl below 20 to 20 by itself), so the settings the inventory and the
  reports carry are the ones Patroni uses.

Errors: {"failed": true, "msg": ...} on stdout and exit code 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import sys
import time
from urllib.error import URLError
from urllib.request import urlopen

PROC = '/proc'
MANAGERS = ('patroni', 'etcd')  # the pid files stop kills, in this order
LEADER_ROLES = ('leader', 'master', 'primary')  # Patroni 4 says leader; 3.0 says leader too; older master
SYNC_ROLES = ('sync_standby',)
STREAMING = ('streaming',)
RUNNING = ('running',)


class HaError(Exception):
    pass


def _read(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except OSError:
        return b''


def cmdline(pid):
    return _read(os.path.join(PROC, str(pid), 'cmdline')).replace(b'\0', b' ').decode('utf-8', 'replace').strip()


def pid_from(pidfile):
    try:
        pid = int(_read(pidfile).decode('ascii', 'replace').split('\n', 1)[0].strip())
    except ValueError:
        return None
    return pid if pid > 0 else None


def alive(pidfile, tag):
    """The pid in pidfile when that process lives and its command line holds tag (a zombie does not count)."""
    pid = pid_from(pidfile)
    if pid is None:
        return None
    stat = _read(os.path.join(PROC, str(pid), 'stat')).decode('utf-8', 'replace')
    try:
        state = stat[stat.rindex(')') + 2:].split()[0]
    except (ValueError, IndexError):
        return None
    if state in ('Z', 'X'):
        return None
    return pid if tag in cmdline(pid) else None


def launch_argv(argv, netns, user=None, env=()):
    """The argv that runs argv in netns as user with exactly env: every wrapper execs, the pid stays."""
    if not argv:
        raise HaError('start needs a command after --')
    for item in env:
        if '=' not in item or item.startswith('='):
            raise HaError('--env must be KEY=VALUE, got %r' % (item,))
    wrapped = ['ip', 'netns', 'exec', netns]
    if user:
        wrapped += ['setpriv', '--reuid', user, '--regid', user, '--init-groups']
    return wrapped + ['env', '-i'] + list(env) + list(argv)


def _tail(path, lines=15):
    text = _read(path).decode('utf-8', 'replace').splitlines()
    return '\n'.join(text[-lines:])


def start(pidfile, log, netns, argv, tag, user=None, procs=(), env=(), settle=1.5):
    """Start argv as a daemon (see the module docstring); {'changed', 'pid'}."""
    if not tag:
        raise HaError('--tag must name a path of the lab that the command line holds')
    if tag not in ' '.join(argv):
        raise HaError('--tag %r is not in the command line %r: the process would not be found again' % (tag, argv))
    running = alive(pidfile, tag)
    if running:
        return {'changed': False, 'pid': running}
    full = launch_argv(argv, netns, user, env)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - the child side runs in the forked process
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            me = str(os.getpid())
            for path in procs:
                with open(path, 'w') as handle:
                    handle.write(me)
            devnull = os.open(os.devnull, os.O_RDONLY)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.chdir('/')
            with open(pidfile + '.tmp', 'w') as handle:
                handle.write(me + '\n')
            os.rename(pidfile + '.tmp', pidfile)
            os.write(write_end, me.encode('ascii'))
            os.close(write_end)
            os.execvp(full[0], full)
        except BaseException as exc:  # pylint: disable=broad-except
            try:
                os.write(write_end, ('error: %s' % exc).encode('utf-8', 'replace'))
            except OSError:
                pass
        os._exit(127)
    os.close(write_end)
    os.waitpid(first, 0)
    answer = b''
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        answer += chunk
    os.close(read_end)
    text = answer.decode('utf-8', 'replace')
    if not text.isdigit():
        raise HaError('could not start %s: %s' % (' '.join(argv), text or 'no pid came back'))
    pid = int(text)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not alive(pidfile, tag):
            raise HaError('%s (pid %d) died at once; the end of %s:\n%s' % (argv[0], pid, log, _tail(log)))
    return {'changed': True, 'pid': pid, 'argv': full}


def stop(lab_dir, timeout=15.0, signum=signal.SIGKILL):
    """Kill the lab's Patroni, then its etcd, by their pid files (see the module docstring)."""
    lab_dir = os.path.normpath(lab_dir)
    if not os.path.isabs(lab_dir) or lab_dir.count('/') < 2:
        raise HaError('--lab-dir must be an absolute path at least two levels deep, got %r' % (lab_dir,))
    pattern = re.compile(r'(?<![A-Za-z0-9._/-])' + re.escape(lab_dir) + r'/')
    killed = {}
    for manager in MANAGERS:
        victims = []
        for pidfile in sorted(glob.glob(os.path.join(glob.escape(lab_dir), 'hosts', '*', manager + '.pid'))):
            pid = pid_from(pidfile)
            if pid is None or pid == os.getpid():
                continue
            line = cmdline(pid)
            if not pattern.search(line):
                continue  # gone, or a reused pid that is not the lab's
            try:
                os.kill(pid, signum)
            except OSError:
                continue
            killed[pid] = '%s (%s)' % (manager, pidfile)
            victims.append(pid)
        deadline = time.monotonic() + timeout
        while victims and time.monotonic() < deadline:
            victims = [pid for pid in victims if os.path.exists(os.path.join(PROC, str(pid))) and
                       b'Z' not in _read(os.path.join(PROC, str(pid), 'stat')).rsplit(b')', 1)[-1][:3]]
            if victims:
                time.sleep(0.1)
    return {'changed': bool(killed), 'killed': killed}


def get_json(url, timeout=3.0):
    with urlopen(url, timeout=timeout) as response:  # nosec - lab URLs only, built by lab_up
        return json.loads(response.read().decode('utf-8'))


def etcd_ready(answers):
    """The members that are not healthy yet, from {url: /health answer or error text}."""
    return sorted(url for url, answer in answers.items()
                  if not (isinstance(answer, dict) and str(answer.get('health')).lower() == 'true'))


def cluster_ready(cluster, members, sync=0, replica_states=STREAMING):
    """(ready, leader member or None, why not) of a Patroni GET /cluster answer. Patroni 3.0 says `running` where
    Patroni 4 says `streaming`: lab_up passes replica_states ('streaming', 'running') for it, and then checks
    pg_stat_replication on the leader too."""
    found = cluster.get('members') or []
    leaders = [m for m in found if m.get('role') in LEADER_ROLES]
    if len(leaders) != 1:
        return False, None, 'leaders: %s' % ([m.get('name') for m in leaders] or 'none')
    leader = leaders[0]
    if leader.get('state') not in RUNNING:
        return False, leader, 'the leader %s is %s' % (leader.get('name'), leader.get('state'))
    others = [m for m in found if m is not leader]
    if members == 0:
        return True, leader, ''
    if len(found) != members:
        return False, leader, '%d of %d members registered' % (len(found), members)
    lagging = ['%s (%s)' % (m.get('name'), m.get('state')) for m in others if m.get('state') not in replica_states]
    if lagging:
        return False, leader, 'not streaming: %s' % ', '.join(lagging)
    synced = [m.get('name') for m in others if m.get('role') in SYNC_ROLES]
    if len(synced) < sync:
        return False, leader, '%d of %d synchronous standbys (%s)' % (len(synced), sync, ', '.join(synced) or 'none')
    return True, leader, ''


# pggit_lab_patroni_settings key -> path in Patroni's dynamic configuration (GET /config)
SETTING_PATHS = {
    'ttl': ('ttl',), 'loop_wait': ('loop_wait',), 'retry_timeout': ('retry_timeout',),
    'synchronous_mode': ('synchronous_mode',), 'synchronous_node_count': ('synchronous_node_count',),
    'maximum_lag_on_failover': ('maximum_lag_on_failover',), 'use_pg_rewind': ('postgresql', 'use_pg_rewind'),
    'use_slots': ('postgresql', 'use_slots'),
}


def _same(wanted, actual):
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return str(wanted).lower() == str(actual).lower()
    try:
        return int(wanted) == int(actual)
    except (TypeError, ValueError):
        return str(wanted) == str(actual)


def settings_differ(settings, config):
    """['ttl: pggit_lab_patroni_settings says 10, Patroni runs with 20', ...] for each setting Patroni does not use
    as given (a key missing from GET /config counts, with its default noted as missing)."""
    problems = []
    for key, path in sorted(SETTING_PATHS.items()):
        if key not in settings:
            continue
        actual = config
        for part in path:
            actual = actual.get(part) if isinstance(actual, dict) else None
        if not _same(settings[key], actual):
            problems.append('%s: pggit_lab_patroni_settings says %s, Patroni runs with %s'
                            % (key, json.dumps(settings[key]), 'its default' if actual is None else json.dumps(actual)))
    return problems


def wait_etcd(urls, timeout=60.0, fetch=get_json, sleep=time.sleep):
    deadline = time.monotonic() + timeout
    while True:
        answers = {}
        for url in urls:
            try:
                answers[url] = fetch(url.rstrip('/') + '/health')
            except (URLError, OSError, ValueError) as exc:
                answers[url] = str(exc)
        bad = etcd_ready(answers)
        if not bad:
            return {'changed': False, 'health': answers}
        if time.monotonic() > deadline:
            raise HaError('etcd is not healthy after %ds: %s' % (timeout, '; '.join(
                '%s: %s' % (url, answers[url]) for url in bad)))
        sleep(0.5)


def wait_cluster(urls, members, sync=0, timeout=120.0, fetch=get_json, sleep=time.sleep, logs=(), settings=None,
                 replica_states=STREAMING):
    deadline = time.monotonic() + timeout
    why = 'no answer yet'
    while True:
        for url in urls:
            try:
                cluster = fetch(url.rstrip('/') + '/cluster')
            except (URLError, OSError, ValueError) as exc:
                why = '%s/cluster: %s' % (url, exc)
                continue
            ready, leader, why = cluster_ready(cluster, members, sync, replica_states)
            if ready:
                result = {'changed': False, 'cluster': cluster, 'leader': leader['name'],
                          'leader_host': leader.get('host'), 'source': url}
                if settings is not None:
                    result['config'] = fetch(url.rstrip('/') + '/config')
                    problems = settings_differ(settings, result['config'])
                    if problems:
                        raise HaError('Patroni does not run with the lab\'s settings (Patroni 4 raises a ttl below 20 '
                                      'to 20; it needs loop_wait + 2 * retry_timeout <= ttl): %s' % '; '.join(problems))
                return result
            break
        if time.monotonic() > deadline:
            raise HaError('the Patroni cluster is not ready after %ds (one leader, %d members streaming, %d '
                          'synchronous): %s%s' % (timeout, max(members - 1, 0), sync, why, ''.join(
                              '\n--- the end of %s:\n%s' % (log, _tail(log, 8)) for log in logs)))
        sleep(0.5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    one = sub.add_parser('start')
    one.add_argument('--pidfile', required=True)
    one.add_argument('--log', required=True)
    one.add_argument('--netns', required=True)
    one.add_argument('--tag', required=True)
    one.add_argument('--user')
    one.add_argument('--procs', action='append', default=[])
    one.add_argument('--env', action='append', default=[])
    one.add_argument('argv', nargs=argparse.REMAINDER)
    two = sub.add_parser('stop')
    two.add_argument('--lab-dir', required=True)
    two.add_argument('--timeout', type=float, default=15.0)
    three = sub.add_parser('wait-etcd')
    three.add_argument('--url', action='append', required=True)
    three.add_argument('--timeout', type=float, default=60.0)
    four = sub.add_parser('wait')
    four.add_argument('--url', action='append', required=True)
    four.add_argument('--members', type=int, required=True)
    four.add_argument('--sync', type=int, default=0)
    four.add_argument('--timeout', type=float, default=120.0)
    four.add_argument('--log', action='append', default=[], help='a log whose tail a failure shows')
    four.add_argument('--settings', help='JSON: pggit_lab_patroni_settings, checked against GET /config')
    four.add_argument('--replica-state', action='append', default=[],
                      help='a replica state that counts as streaming (default: streaming; Patroni 3.0 says running)')
    args = parser.parse_args(argv)
    try:
        if args.command == 'start':
            command = args.argv[1:] if args.argv[:1] == ['--'] else args.argv
            result = start(args.pidfile, args.log, args.netns, command, args.tag, args.user, args.procs, args.env)
        elif args.command == 'stop':
            result = stop(args.lab_dir, args.timeout)
        elif args.command == 'wait-etcd':
            result = wait_etcd(args.url, args.timeout)
        else:
            settings = None
            if args.settings:
                try:
                    settings = json.loads(args.settings)
                except ValueError as exc:
                    raise HaError('--settings must be JSON, got %r: %s' % (args.settings, exc))
            result = wait_cluster(args.url, args.members, args.sync, args.timeout, logs=args.log, settings=settings,
                                  replica_states=tuple(args.replica_state) or STREAMING)
    except (HaError, OSError) as exc:
        json.dump({'failed': True, 'msg': str(exc)}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
