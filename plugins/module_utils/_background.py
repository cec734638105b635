# Copyright: pggit.chaos contributors
# MIT License
"""Faults whose work is a detached engine program: the kill rounds, the workload, any future holder.

Every background activity of an experiment is a ledger-recorded process, so
that the one revert (``state: absent``, ``pggit_chaos_revert``, the red
button) and the TTL reaper stop it.  :class:`BackgroundFault` is the module
side of that pattern, on top of :class:`chaos.Fault`:

- ``plan()`` adds the undo of the program's results file (a path inside the
  ledger's own folder);
- ``apply()`` creates the results file safely, starts the program through
  ``_daemon.spawn`` (ready when it says so in the results file), and records
  its ``kill_process`` undo at once; the program itself does nothing that
  needs undoing until it finds that step in its record;
- after the lifecycle, :meth:`finish` may wait for the program and read its
  results, then revert the fault's own record once the program has ended by
  itself (nothing is left to undo; the reaper goes too).
"""
from __future__ import annotations

import time

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _ledger, _results, _steps, _undo
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, DaemonError, Fault

# How often a module waiting for its program looks at it (a /proc read and a results file's new lines): the
# module returns at most this late after its program ended, on each of a run's many workloads.
POLL = 0.05


class BackgroundFault(Fault):
    """A fault made of one detached engine program; subclasses set ``kind`` and ``program``."""

    program = None
    ready_timeout = 10.0

    def __init__(self, module):
        super(BackgroundFault, self).__init__(module)
        self.started = None
        self.reader = None

    # -- identity -----------------------------------------------------------
    def fid(self):
        return _ledger.fault_id(self.kind, self.params['name'])

    def state_ledger(self):
        return _ledger.Ledger(self.params['state_dir'])

    def results_undo(self):
        ledger = self.state_ledger()
        return {'type': 'remove_path', 'path': _results.path_for(ledger, self.fid()), 'root': ledger.faults_dir}

    # -- the program ----------------------------------------------------------
    def program_in_place(self, record):
        daemons = [s for s in record.get('undo') or [] if s.get('type') == 'kill_process' and s.get('match') == self.program]
        return bool(daemons) and all(_steps.same_process(s['pid'], s.get('starttime'), s.get('match')) for s in daemons)

    def start_program(self, ready_timeout=None):
        """Start the program for the attached record and record its undo before it may act."""
        path = _results.path_for(self.ledger, self.record['id'])
        _results.create(path)
        self.reader = _results.Reader(path)

        def ready():
            return self.reader.first('ready') is not None

        try:
            started = _daemon.spawn(self.ledger.state_dir, self.program,
                                    ['--state-dir', self.ledger.state_dir, '--fault-id', self.record['id']],
                                    ready=ready, ready_timeout=ready_timeout or self.ready_timeout)
        except DaemonError as exc:
            error = self.reader.first('error')
            if error:
                raise ChaosError(error.get('msg'))
            raise exc
        # Undone first: the program stops before anything it made (its results, a workload's schema) goes.
        self.add_undo_last({'type': 'kill_process', 'pid': started['pid'], 'starttime': started['starttime'],
                            'match': self.program})
        self.started = started
        return {'pid': started['pid'], 'starttime': started['starttime']}

    def await_event(self, names, timeout, poll=0.05):
        """The program's first results event named in ``names``, within ``timeout`` s; None when it never came.

        A program that has exited gets one last read: what it wrote before it ended still counts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.reader.first(*names)
            if event is not None:
                return event
            if not _steps.same_process(self.started['pid'], self.started['starttime'], self.program):
                return self.reader.first(*names)
            time.sleep(poll)
        return None

    def wait(self, timeout):
        """Wait until the program has exited (or ``timeout`` s pass); return (events, still_running)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.reader.poll()
            alive = _steps.same_process(self.started['pid'], self.started['starttime'], self.program)
            if not alive:
                return self.reader.poll(), False
            if time.monotonic() > deadline:
                return events, True
            time.sleep(POLL)

    def forget_undo(self, step_type):
        """Drop the steps of one type from the record: what they would undo is no longer ours to undo."""
        ledger = self.state_ledger()
        with ledger.lock():
            record = ledger.read(self.fid())
            if record is not None:
                record['undo'] = [s for s in record.get('undo') or [] if s.get('type') != step_type]
                ledger.write(record)

    def close_record(self):
        """Revert the fault's own record once its program has ended by itself.

        When that revert fails (a schema that cannot be dropped while another
        fault fills the disk), the record is due now: its reaper retries at
        once, with its backoff, instead of waiting for the end of the
        program's long TTL."""
        ledger = self.state_ledger()
        outcome = _undo.revert_one(ledger, self.fid(), runner=self.module.run_command, reason='finished')
        if outcome['result'] == 'failed' and not outcome.get('deferred'):
            with ledger.lock():
                record = ledger.read(self.fid())
                if record is not None and float(record.get('expires_at') or 0) > time.time():
                    record['expires_at'] = time.time()
                    ledger.write(record)
                    outcome['due_now'] = True
        return outcome

    # -- after the lifecycle --------------------------------------------------
    def finish(self, result):
        """Add to the module's result before it exits (wait, read results, close the record)."""
