# Copyright: pggit.chaos contributors
# MIT License
"""The TTL reaper: a detached engine program, one per fault.

:func:`arm` starts ``pggit-chaos-reaper`` for a fault (through
:func:`_daemon.spawn`); it owns no terminal, survives the SSH session and the
controller, and calls the one revert, :func:`_undo.revert_one`, at
``expires_at``.  It exits as soon as its record is gone (normal revert), so
it never outlives its fault.

- It sleeps on the monotonic clock: the wall-clock deadline is turned into a
  monotonic one once (again only when the record's ``expires_at`` changes), so
  a clock step, our own clock fault included, can neither delay a revert nor
  bring it forward.
- It never gives up while the fault is there: failed reverts are retried with
  exponential backoff (capped), each failure logged to its log file, to
  syslog and into the record (``last_error``, ``revert_attempts``).
- ``--boot`` is the boot hook's mode (see ``_boot``): revert every expired
  record of the state dir, re-arm a reaper for the others, then exit.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _daemon, _ledger, _steps, _undo

PROC_TAG = 'pggit-chaos-reaper'
POLL_SECONDS = 0.25
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
LOUD_EVERY = 10  # after this many failures in a row, every failure goes to syslog as an error


def _log_size(ledger):
    try:
        return os.path.getsize(_daemon.log_path(ledger.state_dir, PROC_TAG))
    except OSError:
        return 0


def _said_watching(ledger, fid, offset):
    """True once the reaper log, past offset, has a reaper's 'watching <fid>' line."""
    try:
        with open(_daemon.log_path(ledger.state_dir, PROC_TAG), 'rb') as handle:
            handle.seek(offset)
            return (' %s: watching' % fid).encode() in handle.read()
    except OSError:
        return False


def arm(ledger, fid, python=None):
    """Start the detached reaper for one fault. Returns {pid, starttime, script}.

    Armed means the reaper has said it watches the fault (its first log line):
    a reaper that dies at once is an error, however fast it dies."""
    offset = _log_size(ledger)
    return _daemon.spawn(ledger.state_dir, PROC_TAG, ['--state-dir', ledger.state_dir, '--fault-id', fid], python,
                         ready=lambda: _said_watching(ledger, fid, offset))


def alive(record):
    """True when the record's reaper is still the process that was started for it."""
    reaper = (record or {}).get('reaper') or {}
    return bool(reaper.get('pid')) and _steps.same_process(reaper['pid'], reaper.get('starttime'), PROC_TAG)


def _log(msg, error=False):
    sys.stdout.write('%s %s[%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), PROC_TAG, os.getpid(), msg))
    sys.stdout.flush()
    if error:
        try:
            import syslog
            syslog.openlog(PROC_TAG, syslog.LOG_PID, syslog.LOG_DAEMON)
            syslog.syslog(syslog.LOG_ERR, msg)
        except Exception:  # pylint: disable=broad-except
            pass


def backoff(failures):
    """Seconds to wait after ``failures`` failed reverts in a row: 1, 2, 4, ... capped at 60."""
    return min(RETRY_MAX_SECONDS, RETRY_SECONDS * 2 ** max(0, failures - 1))


def watch(ledger, fid, clock=time.time, monotonic=time.monotonic, sleep=time.sleep):
    """Sleep until the fault expires (monotonic), then revert it, retrying until it is gone.

    Nothing but the record's absence ends this loop: an unreadable record, a
    state dir someone made unsafe, a full disk or a bug in a step are logged
    and retried, never a reason to exit with the fault in place."""
    seen_expiry = deadline = None
    failures = 0
    while True:
        try:
            record = ledger.read(fid)
        except Exception as exc:  # pylint: disable=broad-except
            record = {'expires_at': seen_expiry, 'unreadable': '%s: %s' % (exc.__class__.__name__, exc)}
        if record is None:
            return 0
        try:
            expires = float(record.get('expires_at'))
        except (TypeError, ValueError):
            expires = seen_expiry if seen_expiry is not None else clock()  # a broken expiry: act now, and keep trying
        if expires != seen_expiry:
            seen_expiry = expires
            deadline = monotonic() + (expires - clock())
        remaining = deadline - monotonic()
        if remaining > 0:
            sleep(min(POLL_SECONDS, remaining))
            continue
        try:
            result = _undo.revert_one(ledger, fid, reason='ttl-expired')
        except Exception as exc:  # pylint: disable=broad-except
            result = {'result': 'failed', 'error': '%s: %s' % (exc.__class__.__name__, exc)}
        if result['result'] in ('reverted', 'absent'):
            _log('%s: %s' % (fid, result['result']))
            return 0
        failures += 1
        wait = backoff(failures)
        _log('%s: revert failed (attempt %d), the fault is still in place: %s; retrying in %gs'
             % (fid, failures, result.get('error', ''), wait), error=failures == 1 or failures % LOUD_EVERY == 0)
        sleep(wait)


def boot(ledger, clock=time.time):
    """After a reboot: revert what expired, re-arm a reaper for the rest. Returns a summary."""
    summary = {'reverted': [], 'failed': [], 'rearmed': []}
    for record in ledger.list():
        fid = record.get('id')
        if record.get('corrupt') or clock() >= float(record.get('expires_at') or 0):
            outcome = _undo.revert_one(ledger, fid, reason='boot')
            key = 'reverted' if outcome['result'] in ('reverted', 'absent') else 'failed'
            summary[key].append(fid)
            if key == 'reverted':
                continue
        if not alive(ledger.read(fid)):
            started = arm(ledger, fid)
            with ledger.lock():
                current = ledger.read(fid)
                if current is not None:
                    current['reaper'] = started
                    ledger.write(current)
            summary['rearmed'].append(fid)
    _boot.remove_if_idle(ledger)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROC_TAG)
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('--fault-id')
    parser.add_argument('--boot', action='store_true', help='revert expired faults and re-arm the others, then exit')
    args = parser.parse_args(argv)
    ledger = _ledger.Ledger(args.state_dir)
    if args.boot:
        if not ledger.exists():
            _boot.remove(args.state_dir)  # the state dir is gone: so is the reason for this hook
            return 0
        ledger.ensure()
        summary = boot(ledger)
        _log('boot: %r' % (summary,), error=bool(summary['failed']))
        return 1 if summary['failed'] else 0
    if not args.fault_id:
        parser.error('--fault-id is required (or --boot)')
    _log('%s: watching' % args.fault_id)  # arm() waits for this line
    return watch(ledger, args.fault_id)
