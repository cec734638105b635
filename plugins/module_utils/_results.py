# Copyright: pggit.chaos contributors
# MIT License
"""What a background engine program reports, and the gate it passes before it acts.

A background program of an experiment (the kill rounds, the workload) is a
detached engine program recorded in the ledger.  It reports to the module
that started it through one file, ``<state_dir>/faults/<fault id>.results``:
JSON lines, one event each (``ready``, ``round``, ``terminated``, ``done``,
``stopped``, ``error``).  The module creates the file (``O_EXCL``,
``O_NOFOLLOW``, mode 0600) before the program starts; the program only
appends to it, and refuses anything but a private regular file.

:func:`await_recorded` is the program's side of "recorded before it acts":
it does nothing that needs undoing until the fault's ledger record holds a
``kill_process`` step naming its own pid.

Standard library only: it runs inside the detached programs.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import time

SUFFIX = '.results'
_OPEN_FLAGS = getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)


class ResultsError(Exception):
    pass


def path_for(ledger, fid):
    """The results file of a fault: next to its record, named after its id (never read from the record)."""
    return os.path.join(ledger.faults_dir, fid + SUFFIX)


def _check_private(fd, path):
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        os.close(fd)
        raise ResultsError('%s must be a regular file of uid %d with mode 0600, refusing it' % (path, os.geteuid()))


def create(path):
    """Create an empty private results file; a stale one (file or link) is removed first, never followed."""
    for attempt in (1, 2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno != errno.EEXIST or attempt == 2:
                raise
            os.unlink(path)
            continue
        os.close(fd)
        return path
    return path


class Writer(object):
    """The program's end: appends one JSON event per line, each with a single write()."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | _OPEN_FLAGS)
        _check_private(self.fd, path)

    def write(self, event, **data):
        data['event'] = event
        data.setdefault('at', time.time())
        os.write(self.fd, (json.dumps(data, sort_keys=True) + '\n').encode('utf-8'))

    def close(self):
        os.close(self.fd)


class Reader(object):
    """The module's end: keeps its descriptor, so it reads every event even after a revert removed the file."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        _check_private(self.fd, path)
        self.buffer = b''
        self.events = []

    def poll(self):
        """Read what was appended since the last call; return the list of all events so far."""
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        while b'\n' in self.buffer:
            line, self.buffer = self.buffer.split(b'\n', 1)
            try:
                self.events.append(json.loads(line.decode('utf-8')))
            except ValueError:
                continue  # a line cut by SIGKILL
        return self.events

    def first(self, *names):
        """The first event of one of these kinds, or None."""
        return next((e for e in self.poll() if e.get('event') in names), None)

    def close(self):
        os.close(self.fd)


def recorded(record, pid):
    """True when a ledger record holds a kill_process undo step for this pid."""
    return any(step.get('type') == 'kill_process' and int(step.get('pid') or 0) == int(pid)
               for step in (record or {}).get('undo') or [])


def standing(record):
    """Why a program must stop now that its record looks like this, or None while it stands."""
    if record is None:
        return 'record gone'
    if record.get('corrupt'):
        return 'record unreadable'
    if record.get('status') not in ('pending', 'active'):
        return 'record %s' % record.get('status')
    return None


def await_recorded(ledger, fid, pid, timeout, sleep=time.sleep, clock=time.monotonic, predicate=None):
    """Wait until the fault's standing record names this process in its undo (or satisfies ``predicate(record)``).

    False when it never does within ``timeout`` s, or the record is gone or
    being reverted (status ``expired``) meanwhile."""
    predicate = predicate or (lambda record: recorded(record, pid))
    deadline = clock() + timeout
    while True:
        record = ledger.read(fid)
        if standing(record):
            return False
        if predicate(record):
            return True
        if clock() > deadline:
            return False
        sleep(0.05)


def stop_condition(ledger, fid, until, clock=time.time):
    """A callable: why the program must stop (record gone or reverted, past ``until``), or None."""
    def should_stop():
        if clock() >= until:
            return 'past expires_at'
        return standing(ledger.read(fid))
    return should_stop
