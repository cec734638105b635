# Copyright: pggit.chaos contributors
# MIT License
"""The TTL reaper: a detached engine program, one per fault.

:func:`arm` starts ``pggit-chaos-reaper`` for a fault (through
:func:`_daemon.spawn`); it owns no terminal, survives the SSH session and the
controller, and calls the one revert, :func:`_undo.revert_one`, at
``expires_at``.  It exits as soon as its record is gone (normal revert), so
it never outlives its fault.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _ledger, _undo

PROC_TAG = 'pggit-chaos-reaper'
RETRY_SECONDS = 5.0
GIVE_UP_AFTER = 600.0
POLL_SECONDS = 0.25


def arm(ledger, fid, python=None):
    """Start the detached reaper for one fault. Returns {pid, starttime}."""
    return _daemon.spawn(ledger.state_dir, PROC_TAG, ['--state-dir', ledger.state_dir, '--fault-id', fid], python)


def _log(msg):
    sys.stdout.write('%s %s[%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), PROC_TAG, os.getpid(), msg))
    sys.stdout.flush()
def watch(ledger, fid, clock=time.time, sleep=time.sleep):
    """Sleep until the fault expires, then revert it; exit when it is gone."""
    first_try = None
    while True:
        record = ledger.read(fid)
        if record is None:
            return 0
        now = clock()
        expires = float(record.get('expires_at') or now)
        if now < expires:
            sleep(min(POLL_SECONDS, expires - now))
            continue
        first_try = first_try or now
        result = _undo.revert_one(ledger, fid, reason='ttl-expired')
        _log('%s: %s %s' % (fid, result['result'], result.get('error', '')))
        if result['result'] in ('reverted', 'absent'):
            return 0
        if now - first_try > GIVE_UP_AFTER:
            _log('%s: giving up after %ds; the record stays in the ledger' % (fid, GIVE_UP_AFTER))
            return 2
        sleep(RETRY_SECONDS)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROC_TAG)
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('--fault-id', required=True)
    args = parser.parse_args(argv)
    return watch(_ledger.Ledger(args.state_dir), args.fault_id)
