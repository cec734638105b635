# Copyright: pggit.chaos contributors
# MIT License
"""How a background engine program of an experiment starts: one start-up for the kill rounds and the workload.

Each such program is started by its module as
``<tag> --state-dir DIR --fault-id ID`` (see ``_daemon.spawn``).  It then:

- reads its ledger record (none, or an unreadable one: it logs and exits 2,
  having done nothing);
- opens its results file, which the module created (``_results.Writer``);
- builds its connection from the record (``detail.conn``) and the record's
  0600 secret side file;
- reports ``ready`` and passes the gate: it acts only once its record names
  it in a ``kill_process`` undo step (``_results.await_recorded``);
- stops when its record is gone or reverted, or past ``expires_at`` plus a
  grace (``_results.stop_condition``).

:func:`main` does the parsing and the record, and hands a :class:`Program`
to the program's own body.  :func:`log` is the one log line format of the
engine's programs (stdout, which ``_daemon.spawn`` sends to a log file).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _results
from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError

# How long a program waits to find itself in its record before it gives up, doing nothing.
RECORD_WAIT = 30.0
# How long past expires_at a program stops by itself, should the reaper not have stopped it.
GRACE = 30.0
NO_RECORD = 2


def log(tag, msg):
    """One timestamped line on stdout: ``<time> <tag>[<pid>] <msg>``."""
    sys.stdout.write('%s %s[%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), tag, os.getpid(), msg))
    sys.stdout.flush()


class Program(object):
    """One run of a background program: its record, its results file, its connection and its stop condition."""

    def __init__(self, tag, ledger, fid, record):
        self.tag = tag
        self.ledger = ledger
        self.fid = fid
        self.record = record
        self.detail = record.get('detail') or {}
        self.out = _results.Writer(_results.path_for(ledger, fid))

    def log(self, msg):
        log(self.tag, '%s: %s' % (self.fid, msg))

    def conn_params(self):
        """The connection of the record, with its secret (password, secret connect_params) from the side file."""
        params = dict(self.detail.get('conn') or {})
        params.update(self.ledger.read_secret(self.fid))
        return params

    def recorded(self, timeout=RECORD_WAIT):
        """Report ``ready``, then wait until the record names this process; False when it never does."""
        self.out.write('ready', pid=os.getpid())
        return _results.await_recorded(self.ledger, self.fid, os.getpid(), timeout)

    def stop_condition(self, grace=GRACE):
        """A callable: why to stop now (record gone or reverted, past ``expires_at`` plus ``grace``), or None."""
        return _results.stop_condition(self.ledger, self.fid, float(self.record['expires_at']) + grace)


def main(tag, body, argv=None):
    """Parse ``--state-dir`` and ``--fault-id``, load the record, and return ``body(program)``'s exit status."""
    parser = argparse.ArgumentParser(prog=tag)
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('--fault-id', required=True)
    args = parser.parse_args(argv)
    try:
        ledger = _ledger.Ledger(args.state_dir)
        record = ledger.read(args.fault_id)
        if record is None or record.get('corrupt'):
            log(tag, '%s: no usable ledger record; nothing to do' % args.fault_id)
            return NO_RECORD
        program = Program(tag, ledger, args.fault_id, record)
    except (LedgerError, _results.ResultsError, OSError) as exc:
        log(tag, '%s: cannot read its record or open its results file (%s); nothing to do' % (args.fault_id, exc))
        return NO_RECORD
    return body(program)
