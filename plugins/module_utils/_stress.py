# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-stress``: memory, CPU or IO pressure with stress-ng, as a ledger-recorded program.

The module (``pggit_chaos_stress``) writes the fault's record (what to stress,
how much, the cgroups to press on), then starts this program.  Started by
``_daemon.spawn`` it leads a process group of its own (its own session), and
stress-ng runs in that group, so the one undo step that stops it, a
``kill_process`` step with ``group: true`` and ``members_match: stress-ng``
naming this program's pid, is in the record before the program passes its
gate (``_program.Program.recorded``), that is before stress-ng may run.  The
step kills every stress-ng process of the group even when this program is
gone (SIGKILLed, OOM-killed).

The program then:

- joins the cgroups of the record (the postmaster's), so stress-ng and its
  workers are born there and press on PostgreSQL's limit, not the machine's;
- starts stress-ng with ``--timeout`` set to what is left of the TTL (a second
  bound after the reaper), ``--no-oom-adjust`` and its own ``oom_score_adj``
  as asked (inherited by every worker);
- writes a ``sample`` of the cgroup (memory usage, peak, OOM kills, CPU time)
  to its results file every SAMPLE_S seconds;
- stops when its record is gone or reverted, past ``expires_at`` plus a grace,
  when stress-ng exits, or on SIGTERM (the revert, the reaper), and then kills
  every stress-ng process of its group and removes its IO scratch folder.

Standard library only: it runs detached, from the engine copy.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _program, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, UndoError

PROC_TAG = 'pggit-chaos-stress'
BINARY = 'stress-ng'
# The command-line mark of the processes the group undo kills (stress-ng names its workers stress-ng-<stressor>).
MEMBERS = 'stress-ng'
RESOURCES = ('memory', 'cpu', 'io')
SAMPLE_S = 0.25
# After this many samples (10 minutes), one every SLOW_SAMPLE_S: a day-long fault keeps a small results file.
FAST_SAMPLES = 2400
SLOW_SAMPLE_S = 5.0
# Bytes each hdd worker writes in the scratch folder (stress-ng's default is 1 GB).
IO_BYTES = 128 * 1024 * 1024
# How long stress-ng must stay up after it is started to count as started (a bad option exits at once).
START_CHECK_S = 0.3
# The program's own grace for stress-ng's SIGTERM: well inside kill_process's 3 s for the program itself.
STOP_GRACE = 1.0
IO_FOLDER = 'stress-io'


def find_stress_ng():
    """The stress-ng binary, searched in the system folders only; ChaosError naming the package when missing."""
    try:
        return _steps.find_bin(BINARY)
    except UndoError:
        raise ChaosError('stress-ng is not installed on this host (looked in %s): install the package stress-ng '
                         '(apt-get install stress-ng, dnf install stress-ng)' % ':'.join(_steps.BIN_DIRS))


def oom_policy(unit):
    """The OOMPolicy of a systemd unit (stop, continue, kill), from ``systemctl show``; None when it cannot be read."""
    try:
        systemctl = _steps.find_bin('systemctl')
    except UndoError:
        return None
    try:
        out = subprocess.run([systemctl, 'show', '-p', 'OOMPolicy', '--value', unit], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def io_dir(state_dir, fid):
    """The IO scratch folder of a fault: inside the state dir, named after the fault id (never read from the record)."""
    return os.path.join(state_dir, IO_FOLDER, fid.replace('/', '_'))


def stress_argv(binary, spec, timeout_s, temp_dir=None):
    """The stress-ng command line for a spec (resource and sizes), bounded by timeout_s seconds."""
    resource = spec.get('resource')
    if resource == 'memory':
        args = ['--vm', '1', '--vm-bytes', '%db' % int(spec['memory_bytes']), '--vm-keep']
    elif resource == 'cpu':
        args = ['--cpu', str(int(spec['cpu_workers'])), '--cpu-load', str(int(spec['cpu_load']))]
    elif resource == 'io':
        if not temp_dir:
            raise ValueError('io stress needs its scratch folder')
        args = ['--hdd', str(int(spec['io_workers'])), '--hdd-bytes', '%db' % IO_BYTES, '--temp-path', temp_dir]
    else:
        raise ValueError('resource must be one of %s, got %r' % (', '.join(RESOURCES), resource))
    return [binary] + args + ['--timeout', '%ds' % max(1, int(timeout_s)), '--no-oom-adjust']


def memory_bytes(memory_pct, memory_mb, limit_bytes, host_bytes):
    """(bytes, None) for the asked memory, or (None, message naming the option and the value)."""
    if memory_pct is not None:
        if not limit_bytes:
            return None, ('memory_pct=%s needs a memory limit, and the cgroup has none (unlimited): give memory_mb '
                          'instead' % memory_pct)
        return int(limit_bytes * float(memory_pct) / 100.0), None
    asked = int(memory_mb) * 1024 * 1024
    if limit_bytes and asked > limit_bytes:
        return None, ('memory_mb=%s is over the memory limit of the cgroup, %d MB (%d bytes): ask for at most %d'
                      % (memory_mb, limit_bytes // (1024 * 1024), limit_bytes, limit_bytes // (1024 * 1024)))
    if not limit_bytes and host_bytes and asked > host_bytes:
        return None, ('memory_mb=%s is over the memory of this host, %d MB, and the cgroup has no limit'
                      % (memory_mb, host_bytes // (1024 * 1024)))
    return asked, None


def host_memory_bytes(meminfo='/proc/meminfo'):
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) * 1024
    except (IOError, OSError, ValueError):
        pass
    return None


def sample(paths):
    """One look at the cgroup: memory usage, peak and OOM kills, CPU time (ns), and when."""
    mem = _cgroup.memory(paths) if paths else {}
    return {'usage_bytes': mem.get('usage_bytes'), 'peak_bytes': mem.get('peak_bytes'), 'oom_kills': mem.get('oom_kills'),
            'cpu_ns': _cgroup.cpu_usage_ns(paths) if paths else None, 'at': time.time()}


def figures(started, samples, cpu_count):
    """What the stress did to its cgroup, from the ``started`` event (the base) and the samples after it.

    ``peak_bytes``: the highest memory usage seen (the cgroup's own peak when
    it rose above its value at the start: it also catches what happened
    between samples); ``oom_kills``: OOM kills in the cgroup since the start;
    ``cpu_load_measured_pct``: CPU time the cgroup used, as a percentage of
    ``cpu_count`` CPUs over the same wall time."""
    started = started or {}
    samples = [s for s in samples if s.get('at') is not None and s['at'] >= started.get('at', 0)]
    usage = [s['usage_bytes'] for s in samples if s.get('usage_bytes') is not None]
    peak = max(usage) if usage else None
    peaks = [s['peak_bytes'] for s in samples if s.get('peak_bytes') is not None]
    if peaks and started.get('peak_bytes') is not None and max(peaks) > started['peak_bytes']:
        peak = max([peak or 0] + peaks)
    last = samples[-1] if samples else {}
    oom = None
    if last.get('oom_kills') is not None and started.get('oom_kills') is not None:
        oom = last['oom_kills'] - started['oom_kills']
    load = None
    if last.get('cpu_ns') is not None and started.get('cpu_ns') is not None and cpu_count:
        wall = last['at'] - started['at']
        if wall > 0:
            load = round(100.0 * (last['cpu_ns'] - started['cpu_ns']) / (wall * 1e9 * cpu_count), 1)
    return {'peak_bytes': peak, 'oom_kills': oom, 'cpu_load_measured_pct': load, 'samples': len(samples)}


class Terminated(Exception):
    pass


def _on_term(signum, frame):
    raise Terminated('signal %d' % signum)


def _set_oom_score_adj(value):
    def preexec():
        fd = os.open('/proc/self/oom_score_adj', os.O_WRONLY)
        try:
            os.write(fd, str(int(value)).encode())
        finally:
            os.close(fd)
    return preexec


def _log_tail():
    """The end of this program's log (stdout), where stress-ng writes too."""
    try:
        with open(os.readlink('/proc/self/fd/1'), 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 2048))
            lines = handle.read().decode('utf-8', 'replace').strip().splitlines()
    except (IOError, OSError):
        return ''
    return ' | '.join(line.strip() for line in lines[-4:])


def _prepare(program, spec):
    """Everything before the gate that cannot hurt anything: binary, group, cgroups, scratch folder.

    Returns (binary, cgroup paths to sample, scratch folder or None)."""
    binary = find_stress_ng()
    if os.getsid(0) != os.getpid():
        # Lead a session (and so a group) of our own: spawn's double fork leaves us in a session led by a process that
        # is gone, and the group undo (_steps.group_members) only takes members of the session its group leads.
        os.setsid()
    paths = spec.get('cgroups') or {}
    if paths:
        try:
            _cgroup.join(paths, os.getpid())
        except (ValueError, OSError) as exc:
            raise ChaosError('cannot join the cgroups %s: %s' % (', '.join(sorted(set(paths.values()))), exc))
    else:
        paths = _cgroup.of_pid(os.getpid())  # confine=none: measure where it runs
    temp_dir = None
    if spec.get('resource') == 'io':
        temp_dir = io_dir(program.ledger.state_dir, program.fid)
        parent = os.path.dirname(temp_dir)
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o700)
        if os.path.islink(parent) or os.path.islink(temp_dir):
            raise ChaosError('the IO scratch folder %s must not be a link' % temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        os.mkdir(temp_dir, 0o700)
    return binary, paths, temp_dir


def _stop_group(program, me):
    try:
        return _steps.stop_group(os.getpgrp(), MEMBERS, since=me, grace=STOP_GRACE)
    except UndoError as exc:
        program.log(str(exc))
        return False


def run_stress(program):
    """The program's body: prepare, pass the gate, run stress-ng in this group, sample, stop it all."""
    spec = program.detail.get('stress') or {}
    out = program.out
    signal.signal(signal.SIGTERM, _on_term)
    me = _steps.proc_starttime(os.getpid())
    proc, temp_dir, reason = None, None, 'stopped'
    try:
        try:
            binary, paths, temp_dir = _prepare(program, spec)
        except (ChaosError, OSError) as exc:
            out.write('error', msg=str(exc))
            program.log(str(exc))
            return 1
        if not program.recorded():
            out.write('done', reason='never recorded in the ledger; stress-ng never ran')
            program.log('never recorded in the ledger; exiting without stress')
            return 1
        left = float(program.record['expires_at']) - time.time()
        if left < 1:
            out.write('done', reason='the TTL was over before stress-ng could start')
            return 1
        argv = stress_argv(binary, spec, left, temp_dir)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=temp_dir or '/', close_fds=True,
                                    preexec_fn=_set_oom_score_adj(spec.get('oom_score_adj', 1000)))
        except (OSError, subprocess.SubprocessError) as exc:
            out.write('error', msg='cannot start %s: %s' % (' '.join(argv), exc))
            return 1
        end = time.monotonic() + START_CHECK_S
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.02)
        if proc.poll() is not None:
            out.write('error', msg='%s exited at once with status %s: %s' % (' '.join(argv), proc.returncode,
                                                                             _log_tail() or 'no output'))
            return 1
        out.write('started', pid=proc.pid, pgid=os.getpgrp(), argv=argv, cgroups=paths,
                  oom_score_adj=spec.get('oom_score_adj', 1000), **sample(paths))
        program.log('started %s (pid %d)' % (' '.join(argv), proc.pid))
        should_stop = program.stop_condition()
        count = 0
        while True:
            time.sleep(SAMPLE_S if count < FAST_SAMPLES else SLOW_SAMPLE_S)
            out.write('sample', **sample(paths))
            count += 1
            if proc.poll() is not None:
                reason = 'stress-ng exited with status %s' % proc.returncode
                break
            why = should_stop()
            if why:
                reason = why
                break
    except Terminated as exc:
        reason = str(exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = _stop_group(program, me)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    out.write('stopped', reason=reason, killed=stopped)
    program.log('stopped (%s)' % reason)
    return 0


def main(argv=None):
    return _program.main(PROC_TAG, run_stress, argv)
