# Copyright: pggit.chaos contributors
# MIT License
"""Target-side fault ledger.

One JSON record per fault under ``<state_dir>/faults``.  A record is written
*before* its fault is applied and removed only once the fault is reverted, so
the ledger is the single source of truth for "what is still broken here".

The state dir is trusted with code: the reaper runs, as the user who injected
the fault (usually root), from the engine copy in ``<state_dir>/lib``.  So the
ledger refuses a state dir, or a folder inside it, that is a symbolic link,
is owned by another user, or is writable by group or others, and refuses a
state dir whose parents another user could rename away (a parent must be
owned by root or by us, and be writable by group or others only when it is
sticky, like /tmp).  Files are created with O_EXCL or O_NOFOLLOW, never
through a link.

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
import stat
import tempfile
import time

from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError

SCHEMA_VERSION = 1
FAULTS_DIR = 'faults'
LIB_DIR = 'lib'
LOCK_FILE = '.lock'
# A fault name is used as it is in file names, chain names and process
# arguments: refuse what would have to be rewritten, never rewrite it.
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')
NAME_RULE = '1 to 128 characters of A-Z, a-z, 0-9, _, . and -, starting with a letter or digit'
_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)


def check_name(name):
    """The message for a fault name outside the id alphabet, or None when it is fine."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return None
    return 'name must be %s, got %r' % (NAME_RULE, name)


def fault_id(kind, name):
    """The id of a fault, ``<kind>--<name>``; a name outside the alphabet is refused, never rewritten."""
    msg = check_name(name)
    if msg:
        raise LedgerError(msg)
    return '%s--%s' % (kind, name)


def _describe_mode(st):
    return '%04o' % stat.S_IMODE(st.st_mode)


def check_private_dir(path, what='state_dir'):
    """Refuse a folder that someone else could write code or records into."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LedgerError('%s %s: %s' % (what, path, exc.strerror))
    if stat.S_ISLNK(st.st_mode):
        raise LedgerError('%s %s is a symbolic link; refusing it (use the real path)' % (what, path))
    if not stat.S_ISDIR(st.st_mode):
        raise LedgerError('%s %s is not a directory' % (what, path))
    if st.st_uid != os.geteuid():
        raise LedgerError('%s %s is owned by uid %d, not by the user running pggit.chaos (uid %d); refusing it, '
                          'since its owner could make this user run code: remove it or choose another state_dir'
                          % (what, path, st.st_uid, os.geteuid()))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LedgerError('%s %s is writable by group or others (mode %s); refusing it: run chmod go-w on it, '
                          'or choose another state_dir' % (what, path, _describe_mode(st)))
    return st


def check_parents(path):
    """Every parent must be owned by root or by us, and not writable by others unless sticky.

    A symbolic link on the way counts too: its owner can point it elsewhere at
    any time (between this check and the reaper's start, or before a boot), so
    a link owned by another user is refused before the path is resolved."""
    parts = os.path.abspath(path).strip('/').split('/')[:-1]
    for depth in range(1, len(parts) + 1):
        here = '/' + '/'.join(parts[:depth])
        try:
            st = os.lstat(here)
        except OSError:
            break
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
            raise LedgerError('state_dir %s: %s is a symbolic link owned by uid %d, who could point it anywhere; '
                              'refusing it (use the real path)' % (path, here, st.st_uid))
    parent = os.path.realpath(os.path.dirname(path.rstrip('/')) or '/')
    while True:
        st = os.stat(parent)
        if st.st_uid not in (0, os.geteuid()):
            raise LedgerError('state_dir %s: its parent %s is owned by uid %d; another user could replace the state '
                              'dir, so it is refused' % (path, parent, st.st_uid))
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise LedgerError('state_dir %s: its parent %s is writable by group or others without the sticky bit '
                              '(mode %s); another user could replace the state dir, so it is refused'
                              % (path, parent, _describe_mode(st)))
        if parent == '/':
            return
        parent = os.path.dirname(parent)


def write_atomic(path, text, mode=0o600):
    """Replace path with text: temp file by mkstemp (O_EXCL, never through a link), fsync, chmod, rename.

    The one atomic writer of the engine (records, secrets, the engine copy, boot hooks); on any
    failure the temp file goes and path is untouched."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.%s.' % os.path.basename(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def open_private(path, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o600):
    """Open a file inside the state dir, never through a symbolic link."""
    return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)


class Ledger(object):
    def __init__(self, state_dir):
        if not state_dir or not os.path.isabs(state_dir):
            raise LedgerError('state_dir must be an absolute path, got %r' % (state_dir,))
        self.state_dir = state_dir
        self.faults_dir = os.path.join(state_dir, FAULTS_DIR)

    # -- layout -----------------------------------------------------------
    def ensure(self):
        """Create the state dir and faults/ (0700) and check that nobody else can write to them."""
        parent = os.path.dirname(self.state_dir.rstrip('/'))
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, 0o700)
            except OSError as exc:
                raise LedgerError('state_dir: cannot create %s: %s' % (parent, exc.strerror))
        check_parents(self.state_dir)
        for path in (self.state_dir, self.faults_dir):
            try:
                os.mkdir(path, 0o700)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise LedgerError('state_dir: cannot create %s: %s' % (path, exc.strerror))
            check_private_dir(path, 'state_dir' if path == self.state_dir else 'state_dir folder')
        return self

    def lib_dir(self):
        """<state_dir>/lib, where the engine copy lives; created and checked like the rest."""
        self.ensure()
        path = os.path.join(self.state_dir, LIB_DIR)
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise LedgerError('state_dir: cannot create %s: %s' % (path, exc.strerror))
        check_private_dir(path, 'state_dir folder')
        return path

    def exists(self):
        return os.path.isdir(self.faults_dir)

    def _path(self, fid, suffix='.json'):
        if not isinstance(fid, str) or not _ID_RE.fullmatch(fid):
            raise LedgerError('invalid fault id %r' % (fid,))
        return os.path.join(self.faults_dir, fid + suffix)

    @contextlib.contextmanager
    def lock(self):
        """Exclusive ledger lock: serialises inject, revert and the reaper."""
        self.ensure()
        path = os.path.join(self.state_dir, LOCK_FILE)
        try:
            fd = open_private(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise LedgerError('state_dir: cannot open the ledger lock %s: %s%s' % (
                path, exc.strerror, ' (a symbolic link; refusing to follow it)' if exc.errno == errno.ELOOP else ''))
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
            'applier': None,
        }

    def write(self, record):
        """Atomically write a record: temp file, fsync, rename, fsync dir."""
        self.ensure()
        path = write_atomic(self._path(record['id']), json.dumps(record, sort_keys=True, indent=1))
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
            with os.fdopen(open_private(self._path(fid), os.O_RDONLY)) as handle:
                return json.load(handle)
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno == errno.ELOOP:
                return {'id': fid, 'corrupt': True, 'error': '%s is a symbolic link' % self._path(fid), 'undo': []}
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
        """0600 side file, made with mkstemp (O_EXCL: never through a link) and renamed into place."""
        self.ensure()
        write_atomic(self._path(fid, '.secret'), json.dumps(secret))

    def read_secret(self, fid):
        try:
            with os.fdopen(open_private(self._path(fid, '.secret'), os.O_RDONLY)) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return {}


def summarize(record):
    """The part of a record that is safe to return to the controller."""
    keys = ('id', 'kind', 'name', 'experiment', 'created_at', 'expires_at', 'ttl', 'status', 'undo', 'reaper', 'last_error',
            'boot_hook')
    return dict((k, record.get(k)) for k in keys if k in record)
