# Copyright: pggit.chaos contributors
# MIT License
"""Target-side fault ledger.

One JSON record per fault under ``<state_dir>/faults``.  A record is written
*before* its fault is applied and removed only once the fault is reverted, so
the ledger is the single source of truth for "what is still broken here".

This file runs inside modules and inside the detached reaper, so it imports
only the standard library.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time

from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError  # noqa: F401  # pylint: disable=unused-import

SCHEMA_VERSION = 1
FAULTS_DIR = 'faults'
LOCK_FILE = '.lock'
_ID_RE = re.compile(r'[^A-Za-z0-9_.-]+')


def fault_id(kind, name):
    """Stable, filesystem-safe id of a fault: ``<kind>--<name>``."""
    clean = _ID_RE.sub('_', '%s--%s' % (kind, name)).strip('._')
    if not clean:
        raise ValueError('fault id for kind %r and name %r is empty' % (kind, name))
    return clean[:200]


class Ledger(object):
    def __init__(self, state_dir):
        if not state_dir or not os.path.isabs(state_dir):
            raise LedgerError('state_dir must be an absolute path, got %r' % (state_dir,))
        self.state_dir = state_dir
        self.faults_dir = os.path.join(state_dir, FAULTS_DIR)

    # -- layout -----------------------------------------------------------
    def ensure(self):
        for path in (self.state_dir, self.faults_dir):
            try:
                os.makedirs(path, 0o700)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        return self

    def exists(self):
        return os.path.isdir(self.faults_dir)

    def _path(self, fid, suffix='.json'):
        if _ID_RE.search(fid) or fid.startswith('.'):
            raise LedgerError('invalid fault id %r' % (fid,))
        return os.path.join(self.faults_dir, fid + suffix)

    @contextlib.contextmanager
    def lock(self):
        """Exclusive ledger lock: serialises inject, revert and the reaper."""
        self.ensure()
        fd = os.open(os.path.join(self.state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- records ----------------------------------------------------------
    def new_record(self, kind, name, ttl, undo, experiment=None, detail=None, now=None):
        now = time.time() if now is None else now
        return {
            'schema_version': SCHEMA_VERSION,
            'id': fault_id(kind, name),
            'kind': kind,
            'name': name,
            'experiment': experiment,
            'host': socket.gethostname(),
            'created_at': now,
            'ttl': ttl,
            'expires_at': now + ttl,
            'status': 'pending',
            'undo': undo,
            'detail': detail or {},
            'reaper': None,
        }

    def write(self, record):
        """Atomically write a record: temp file, fsync, rename, fsync dir."""
        self.ensure()
        path = self._path(record['id'])
        fd, tmp = tempfile.mkstemp(prefix='.%s.' % record['id'], suffix='.tmp', dir=self.faults_dir)
        try:
            with os.fdopen(fd, 'w') as handle:
                json.dump(record, handle, sort_keys=True, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()
        return path

    def _fsync_dir(self):
        fd = os.open(self.faults_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, fid):
        try:
            with open(self._path(fid)) as handle:
                return json.load(handle)
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        except ValueError as exc:
            return {'id': fid, 'corrupt': True, 'error': str(exc), 'undo': []}

    def list(self):
        if not self.exists():
            return []
        records = []
        for entry in sorted(os.listdir(self.faults_dir)):
            if entry.startswith('.') or not entry.endswith('.json'):
                continue
            record = self.read(entry[:-len('.json')])
            if record is not None:
                records.append(record)
        return records

    def delete(self, fid):
        for suffix in ('.json', '.secret'):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(fid, suffix))
        if self.exists():
            self._fsync_dir()

    # -- secrets (kept out of the record so it can be shown and returned) ---
    def write_secret(self, fid, secret):
        self.ensure()
        path = self._path(fid, '.secret')
        fd = os.open(path + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as handle:
            json.dump(secret, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(path + '.tmp', path)

    def read_secret(self, fid):
        try:
            with open(self._path(fid, '.secret')) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return {}


def summarize(record):
    """The part of a record that is safe to return to the controller."""
    keys = ('id', 'kind', 'name', 'experiment', 'created_at', 'expires_at', 'ttl', 'status', 'undo', 'reaper', 'last_error')
    return dict((k, record.get(k)) for k in keys if k in record)
