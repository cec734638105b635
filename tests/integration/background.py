"""Helpers for tests of the background programs (kill rounds, workload): find them, and never leave one behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, '.cache', 'collections')


def programs(state_dir, tag='pggit-chaos-'):
    """Pids of live processes started from this state dir's engine copy whose command line holds ``tag``."""
    found = []
    lib = os.path.join(state_dir, 'lib') + '/'
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                cmdline = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
            with open('/proc/%s/stat' % entry) as handle:
                state = handle.read().rsplit(')', 1)[-1].split()[0]
        except OSError:
            continue
        if lib in cmdline and tag in cmdline and state not in ('Z', 'X'):
            found.append(int(entry))
    return found


def kill_programs(state_dir):
    for pid in programs(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def ledger_ids(state_dir):
    faults = os.path.join(state_dir, 'faults')
    return sorted(f[:-5] for f in os.listdir(faults) if f.endswith('.json')) if os.path.isdir(faults) else []


def record(state_dir, fid):
    with open(os.path.join(state_dir, 'faults', fid + '.json')) as handle:
        return json.load(handle)


_CHILD = r'''
import json, sys
sys.path[:0] = [%(collections)r, %(tests)r]
from modrun import run_module
from ansible_collections.pggit.chaos.plugins.modules import %(module)s as module
args = json.loads(sys.stdin.read())
result, failed = run_module(module.main, args)
result['failed'] = failed
sys.stdout.write(json.dumps(result, default=str))
'''


def start_module(module, args):
    """Run a module's main() in a child process, as an async job would; returns the Popen (stdout: the result JSON)."""
    proc = subprocess.Popen([sys.executable, '-c', _CHILD % {'collections': COLLECTIONS, 'tests': TESTS, 'module': module}],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(args))
    proc.stdin.close()
    return proc


def module_result(proc, timeout):
    out = proc.stdout.read() if proc.wait(timeout=timeout) is not None else ''
    err = proc.stderr.read()
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError('module process exited %s without a result: %s %s' % (proc.returncode, out[-2000:], err[-2000:]))
