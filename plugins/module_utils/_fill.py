# Copyright: pggit.chaos contributors
# MIT License
"""Filling a filesystem: where it is, how much to write, and the writer.

Pure helpers for ``pggit_chaos_disk``:

- :func:`filesystem`: the mount, device, type and statvfs figures of the
  filesystem holding a path (from ``/proc/self/mountinfo``, or by walking up
  while ``st_dev`` stays the same);
- :func:`asked_free_bytes` and :func:`fill_size`: the size arithmetic;
- :func:`open_fill_file` and :func:`fill_fd`: create the fill file without
  following a planted link, then allocate it with ``posix_fallocate``, or by
  writing incompressible blocks where the filesystem refuses that, stopping
  cleanly at ENOSPC, at a deadline, and at a rate when asked;
- :func:`shortfall`: whether the free space measured after a fill shows that
  the fill really took (a compressing filesystem stores zero blocks in
  nothing, and glibc's ``posix_fallocate`` emulation writes zero bytes).

"Free" is what an unprivileged user may still write (``f_bavail``): what
PostgreSQL, which never runs as root, sees.
"""
from __future__ import annotations

import errno
import os
import struct
import time

MIB = 1024 * 1024
FILL_PREFIX = '.pggit-chaos-fill-'
# Write-path block: small enough to stop close to ENOSPC, big enough to be fast.
WRITE_BLOCK = MIB
# Every page of a written block starts with its own offset in the file and a per-fill nonce, over random bytes:
# no two pages are alike (nothing to deduplicate) and nothing compresses (ZFS, btrfs compression store zeros in nothing).
PAGE = 4096
_STAMP = struct.Struct('<QQ')
# Errors meaning "this filesystem does not do fallocate": write blocks instead.
_NO_FALLOCATE = frozenset(e for e in (getattr(errno, 'EOPNOTSUPP', None), getattr(errno, 'ENOTSUP', None), errno.EINVAL,
                                      getattr(errno, 'ENOSYS', None)) if e is not None)
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)


def fill_name(fault_id):
    """Basename of the fill file of a fault (``_steps.FILL_FILE_RE`` matches it)."""
    return FILL_PREFIX + fault_id.replace('/', '_')


# -- where -------------------------------------------------------------------------
def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == '\\' and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def parse_mountinfo(text):
    """[{mount, dev_id, fstype, device}] in the order of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(' - ')
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append({'mount': _unescape(fields[4]), 'dev_id': fields[2], 'fstype': rest[0], 'device': _unescape(rest[1])})
    return mounts


def _under(path, mount):
    return path == mount or mount == '/' or path.startswith(mount.rstrip('/') + '/')


def mount_entry(path, mounts):
    """The mount that holds ``path`` (resolved): the longest mount point above it; the last one wins on a stacked mount."""
    best = None
    for entry in mounts:
        if _under(path, entry['mount']) and (best is None or len(entry['mount']) >= len(best['mount'])):
            best = entry
    return best


def mount_by_dev(path, stat=os.stat):
    """The mount point of ``path`` found by walking up while st_dev stays the same."""
    dev = stat(path).st_dev
    while path != '/':
        parent = os.path.dirname(path)
        if stat(parent).st_dev != dev:
            return path
        path = parent
    return '/'


def _read_mountinfo():
    try:
        with open('/proc/self/mountinfo') as handle:
            return handle.read()
    except OSError:
        return None


def figures(path, statvfs=None):
    """size_bytes, free_bytes (f_bavail) and block_size of the filesystem holding ``path``."""
    st = (statvfs or os.statvfs)(path)
    block = st.f_frsize or st.f_bsize
    return {'size_bytes': st.f_blocks * block, 'free_bytes': st.f_bavail * block, 'block_size': block}


def filesystem(path, mountinfo=None, statvfs=None):
    """mount, device, fstype, dev_id, size_bytes, free_bytes, block_size of the filesystem holding ``path``.

    ``path`` must exist; it is resolved first (a link leads to where it points)."""
    real = os.path.realpath(path)
    os.stat(real)  # raises when it does not exist
    text = _read_mountinfo() if mountinfo is None else mountinfo
    entry = mount_entry(real, parse_mountinfo(text)) if text else None
    if entry is None:
        entry = {'mount': mount_by_dev(real), 'dev_id': None, 'fstype': None, 'device': None}
    info = dict(entry, path=real)
    info.update(figures(entry['mount'], statvfs))
    return info


def existing_ancestor(path):
    """``path`` or its nearest existing parent (a state dir may not exist yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != '/':
        path = os.path.dirname(path)
    return path


def same_filesystem(a, b, stat=os.stat):
    return stat(a).st_dev == stat(b).st_dev


# -- how much ----------------------------------------------------------------------
def asked_free_bytes(size_bytes, fill_pct=None, free_mb=None):
    """Free bytes to leave: ``free_mb`` MiB, or (100 - fill_pct)% of the filesystem."""
    if free_mb is not None:
        return int(free_mb) * MIB
    return int(size_bytes * (100.0 - float(fill_pct)) / 100.0)


def fill_size(free_bytes, asked_free, block_size):
    """Bytes to allocate so that ``asked_free`` stays free: rounded down to whole blocks (never less free than asked)."""
    want = free_bytes - asked_free
    if want <= 0:
        return 0
    block = max(1, int(block_size or 1))
    return want - want % block


def tolerance(size_bytes, block_size):
    """Free bytes a fill may leave above what it was asked to leave: 1% of the filesystem, at least 16 blocks."""
    return max(16 * max(1, int(block_size or 1)), int(size_bytes) // 100)


def shortfall(free_before, free_after, asked_free, written, size_bytes, block_size):
    """None when the free space measured after a fill shows that it took; else the bytes free above what was expected.

    Expected free afterwards: what was asked to stay free, or more when the
    fill wrote less (a deadline cut it).  The space the filesystem kept for
    itself is allowed for by :func:`tolerance`; the server's own writes only
    take more."""
    expected = max(int(asked_free), int(free_before) - int(written))
    extra = int(free_after) - expected
    return extra if extra > tolerance(size_bytes, block_size) else None


# -- the writer --------------------------------------------------------------------
def open_fill_file(path):
    """Create the fill file, 0600, failing if anything (a planted link included) is already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


class Blocks(object):
    """Incompressible, never-repeating blocks: one random buffer, each page stamped with its file offset and a nonce.

    Stamping costs next to nothing (``os.urandom`` per block would be ~300 MiB/s)."""

    def __init__(self, block=WRITE_BLOCK, urandom=os.urandom):
        self.buf = bytearray(urandom(block))
        self.nonce = _STAMP.unpack(bytes(urandom(_STAMP.size)))[0]

    def at(self, offset, size):
        """The ``size`` bytes to write at file ``offset``."""
        view = memoryview(self.buf)[:size]
        for page in range(0, size - _STAMP.size + 1, PAGE):
            _STAMP.pack_into(self.buf, page, offset + page, self.nonce)
        return view


def fill_fd(fd, nbytes, rate_mb_s=None, deadline=None, clock=time.time, sleep=time.sleep,
            fallocate=None, pwrite=None, block=WRITE_BLOCK, use_fallocate=True):
    """Grow the open file ``fd`` by up to ``nbytes`` allocated bytes.

    ``posix_fallocate`` first (one call, or one per chunk of a tenth of a
    second's worth at ``rate_mb_s``); where the filesystem refuses it, or with
    ``use_fallocate=False``, incompressible blocks (:class:`Blocks`) are
    written.  ENOSPC is not an error: the fill stops there and says so.
    ``deadline`` (a ``clock()`` time) stops it early.

    Returns {bytes, enospc, method, complete, stopped, seconds}."""
    fallocate = fallocate or getattr(os, 'posix_fallocate', None)
    pwrite = pwrite or os.pwrite
    started = clock()
    done, enospc, stopped = 0, False, None
    method = 'fallocate' if fallocate is not None and use_fallocate else 'write'
    if rate_mb_s:
        chunk = max(block, int(rate_mb_s * MIB / 10) // block * block)
    else:
        chunk = None
    blocks = None
    while done < nbytes:
        if deadline is not None and clock() >= deadline:
            stopped = 'deadline'
            break
        size = min(chunk or (nbytes - done), nbytes - done)
        if method == 'fallocate':
            try:
                fallocate(fd, done, size)
                done += size
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno in _NO_FALLOCATE or exc.errno == errno.ENOSPC:
                    # No fallocate here, or not all of it fits (something else wrote meanwhile):
                    # write blocks, up to ENOSPC.
                    method = 'write'
                    continue
                raise
        else:
            end = done + size
            while done < end:
                if deadline is not None and clock() >= deadline:
                    stopped = 'deadline'
                    break
                blocks = blocks or Blocks(block)
                piece = blocks.at(done, min(block, end - done))
                try:
                    written = pwrite(fd, piece, done)
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        enospc = True
                        break
                    raise
                done += written
                if written < len(piece):  # a short write: the next one would say ENOSPC
                    enospc = True
                    break
            if enospc or stopped:
                break
        if rate_mb_s and done < nbytes:
            ahead = done / (rate_mb_s * MIB) - (clock() - started)
            if deadline is not None:
                ahead = min(ahead, deadline - clock())
            if ahead > 0:
                sleep(ahead)
    if method == 'write' and done:
        try:
            os.fsync(fd)  # delayed allocation: make the blocks really taken
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            enospc = True
    return {'bytes': done, 'enospc': enospc, 'method': method, 'complete': done >= nbytes and not enospc,
            'stopped': 'enospc' if enospc and not stopped else stopped, 'seconds': round(clock() - started, 3)}
