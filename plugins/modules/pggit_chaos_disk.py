#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_disk
short_description: Fill the filesystem that holds the database, for a bounded time
version_added: 0.2.0
description:
  - Fills the filesystem of the server's data directory, of its C(pg_wal)
    (resolved through a symbolic link), or of an explicit O(path), with one
    fill file, C(<mount point>/.pggit-chaos-fill-<fault id>), until the
    filesystem is O(fill_pct) percent full or has O(free_mb) MiB free.
  - The data directory and C(pg_wal) are asked from the server itself
    (C(data_directory)), never guessed, so the task must run on the database
    server's own host, as root (it reads the postmaster's C(/proc) entries).
  - The file is made with C(O_EXCL) and C(O_NOFOLLOW), mode 0600, and
    allocated with C(posix_fallocate); where the filesystem refuses that, or
    where the free space shows that the allocation reserved nothing,
    incompressible blocks that never repeat are written (a compressing or
    deduplicating filesystem would store zero blocks in nothing). A fill that
    hits C(ENOSPC) half-way (something else wrote meanwhile) stops there, is
    still recorded and still removed, and says so in RV(enospc).
  - After the fill the free space is measured again. When more is free than
    asked (beyond 1 percent of the filesystem), the fill did not take, the
    inject fails with the figures asked and measured, and the fill file is
    removed.
  - The undo recipe is written to the ledger before the file exists. It
    removes the file first, then starts the server again with the way it was
    started (C(pg_ctl) as the data directory's owner, or its systemd unit) if
    it is down. PostgreSQL shuts down for good when it cannot write a new WAL
    segment (a C(PANIC) on C(pg_wal)), so a full C(pg_wal) filesystem usually
    stops the server; the revert and the TTL reaper bring it back.
  - Free space means what an unprivileged user may still write (C(f_bavail)),
    which is what PostgreSQL sees; root's reserved blocks are not counted.
  - Refuses a filesystem mounted on the data directory or on C(pg_wal) (or
    inside one of them), whatever O(allow_root_fs) says; the fill file would
    be a stray file inside the server's own directories, which
    C(pg_basebackup), C(pg_rewind) and C(pg_checksums) trip over.
  - Refuses the filesystem of C(/) and the filesystem of O(state_dir) unless
    O(allow_root_fs=true). Filling the root filesystem of a shared machine
    harms everything on it, and filling the ledger's filesystem could stop the
    revert from recording its progress.
  - Cannot work where the server's data directory is not on this host (a
    remote or managed server), on a read-only filesystem, or where a quota
    rather than the filesystem limits PostgreSQL.
  - The revert frees only what the fill file took. If PostgreSQL's own WAL
    used the rest meanwhile and less than one WAL segment (16 MiB) is free
    afterwards, the server cannot start again (C(could not write to file
    pg_wal/xlogtemp)); the revert then fails, the record stays, and the
    reaper keeps retrying until space is made.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Reports the filesystem, the fill file and the bytes it would allocate, and writes nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  target:
    description:
      - Which filesystem to fill. V(data) is the one holding the server's
        C(data_directory); V(wal) the one holding C(<data_directory>/pg_wal)
        after resolving a symbolic link (a separate WAL disk); V(path) the one
        holding O(path).
    type: str
    default: data
    choices: [data, wal, path]
  path:
    description:
      - An existing absolute path on the filesystem to fill (a tablespace, a
        mount point). Required with O(target=path) and used only then.
    type: path
  fill_pct:
    description:
      - Fill the filesystem until it is this full, in percent of its size,
        from 1 to 100. Exactly one of O(fill_pct) and O(free_mb) is required
        with O(state=present).
      - A filesystem already this full is left alone (nothing to inject).
    type: float
  free_mb:
    description:
      - Fill the filesystem until only this many MiB are free, from 0.
        V(0) leaves nothing free for PostgreSQL.
    type: int
  rate_mb_s:
    description:
      - Fill gradually at this many MiB per second (above 0) instead of at
        once. The fill stops when the TTL is about to expire, so set O(ttl)
        long enough for the whole fill.
    type: float
  allow_root_fs:
    description:
      - Allow filling the filesystem of C(/) or of O(state_dir).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Disk pressure - fill the data filesystem to 95 percent for two minutes
  pggit.chaos.pggit_chaos_disk:
    name: disk-pressure
    db: app
    target: data
    fill_pct: 95
    ttl: 120

- name: Disk full - leave nothing free where the WAL is written (the server may PANIC and stop)
  pggit.chaos.pggit_chaos_disk:
    name: disk-full
    target: wal
    free_mb: 0
    ttl: 60

- name: Fill a tablespace's filesystem gradually, at 50 MiB/s, down to 100 MiB free
  pggit.chaos.pggit_chaos_disk:
    name: tablespace-fill
    target: path
    path: /srv/tablespaces/fast
    free_mb: 100
    rate_mb_s: 50
    ttl: 300

- name: Remove the fill file, and start the server again if it went down
  pggit.chaos.pggit_chaos_disk:
    name: disk-full
    state: absent
'''

RETURN = r'''
fault_id:
  description: Id of the fault in the ledger, C(disk--<name>).
  returned: always
  type: str
  sample: disk--disk-full
filesystem:
  description:
    - The filesystem filled, with its size and the free bytes (C(f_bavail)) before and after the fill.
    - In check mode C(free_bytes_after) is the planned figure.
  returned: when state=present and changed
  type: dict
  sample: {mount: /srv/pg/host1, device: tmpfs, fstype: tmpfs, size_bytes: 268435456, free_bytes_before: 200278016,
           free_bytes_after: 0}
fill_file:
  description: Absolute path of the fill file.
  returned: when state=present
  type: str
  sample: /srv/pg/host1/.pggit-chaos-fill-disk--disk-full
fill_bytes:
  description: Bytes allocated in the fill file (in check mode, the bytes it would allocate).
  returned: when state=present and changed
  type: int
  sample: 200278016
asked_free_bytes:
  description: Free bytes the fill was to leave, from O(free_mb) or O(fill_pct).
  returned: when state=present and changed
  type: int
  sample: 0
enospc:
  description: True when the filesystem ran out of space before the fill was complete (the file stays recorded).
  returned: when state=present and changed
  type: bool
fill_complete:
  description: True when all of RV(fill_bytes) planned was allocated (false after ENOSPC or when the TTL cut a gradual fill).
  returned: when state=present and changed, not in check mode
  type: bool
fill_method:
  description: V(fallocate), or V(write) when incompressible blocks were written (no fallocate, or it reserved nothing).
  returned: when state=present and changed, not in check mode
  type: str
fill_seconds:
  description: How long the fill took.
  returned: when state=present and changed, not in check mode
  type: float
target:
  description: The O(target) filled.
  returned: when state=present
  type: str
target_path:
  description: The resolved path whose filesystem was filled (the data directory, C(pg_wal), or O(path)).
  returned: when state=present
  type: str
server:
  description: The server the fault is about, and how the revert starts it again.
  returned: when state=present and the server answered
  type: dict
  sample: {data_directory: /srv/pg/host1/data, pg_wal: /srv/pg/host1/data/pg_wal, postmaster_pid: 4242, version_num: 150018,
           in_recovery: false, start_method: pg_ctl, start_command: as postgres /usr/lib/postgresql/15/bin/pg_ctl start ...}
record:
  description: The ledger record (without secrets).
  returned: when a fault is in place or was reverted
  type: dict
revert:
  description: Outcome of the shared revert engine.
  returned: when state=absent and changed
  type: dict
'''

import os
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _fill, _ledger, _pgconn, _server
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import ensure_psycopg2, postgres_argument_spec

# How long to wait for the free space to show a fill (ZFS counts writes at its next transaction group), and how often to look.
SETTLE_S = 5.0
SETTLE_POLL_S = 0.2
RANGES = (('fill_pct', 1, 100, ' percent'), ('free_mb', 0))
RESULT_KEYS = ('filesystem', 'fill_file', 'fill_bytes', 'asked_free_bytes', 'enospc', 'target', 'target_path')


def option_problem(params):
    """Refuse options that make no sense together, naming them (before anything is touched)."""
    rate = params.get('rate_mb_s')
    if rate is not None and not rate > 0:
        return 'rate_mb_s must be above 0 MiB/s, got %s; omit it to fill at once' % rate
    if params.get('path') is not None and params.get('target') != 'path':
        return "path is used only with target: path, got target=%s and path '%s'" % (params.get('target'), params['path'])
    return None


def path_problem(path):
    """The message for a target path that is not an existing absolute path, or None."""
    if not os.path.isabs(path):
        return "path must be an absolute path, got '%s'" % path
    if not os.path.exists(path):
        return "path '%s' is on no filesystem: it does not exist on this host" % path
    return None


def protected_problem(fs, state_dir, allow_root_fs, what):
    """Refuse the root filesystem and the state dir's, unless allow_root_fs says otherwise."""
    if allow_root_fs:
        return None
    mount = fs['mount']
    if _fill.same_filesystem(mount, '/'):
        return ("refusing to fill the root filesystem (%s mounted on %s, holding %s): set allow_root_fs: true if you "
                "really mean to fill the filesystem of /" % (fs.get('device') or '?', mount, what))
    if _fill.same_filesystem(mount, _fill.existing_ancestor(state_dir)):
        device = fs.get('device') or '?'
        return ("refusing to fill the filesystem of the state dir %s (%s mounted on %s, holding %s): the ledger must stay "
                "writable; set allow_root_fs: true to allow it, or use another state_dir" % (state_dir, device, mount, what))
    return None


def _within(path, folder):
    return path == folder or path.startswith(folder.rstrip('/') + '/')


def placement_problem(mount, info, target):
    """Refuse a filesystem whose mount point is the data directory or pg_wal, or inside one of them.

    The fill file goes at the root of the mount: there it would be a stray
    root-owned 0600 file inside the server's own directories, which
    pg_basebackup, pg_rewind and pg_checksums read and choke on."""
    if not info:
        return None
    mount = os.path.realpath(mount)
    data = os.path.realpath(info['data_directory'])
    wal = info.get('pg_wal') or os.path.realpath(os.path.join(data, 'pg_wal'))
    for name, folder in (('pg_wal directory', os.path.realpath(wal)), ('data directory', data)):
        if _within(mount, folder):
            return ("refusing target=%s: its filesystem is mounted on %s, %s the server's %s %s, so the fill file %s would "
                    "land inside it, where pg_basebackup, pg_rewind and pg_checksums would trip over a root-owned file; "
                    "mount the filesystem one level up and keep %s in a folder of it" % (
                        target, mount, 'which is' if mount == folder else 'inside', name, folder,
                        os.path.join(mount, _fill.FILL_PREFIX + '<fault id>'), folder))
    return None


class DiskFault(Fault):
    kind = 'disk'
    volatile_options = ('allow_root_fs', 'rate_mb_s')  # how fast it filled, and a gate: not what is full

    def __init__(self, module):
        super(DiskFault, self).__init__(module)
        self.info = None
        self.server_error = None
        self.fs = None
        self.target_path = None
        self.found = None

    # -- what is filled ------------------------------------------------------------
    def _fail(self, msg):
        self.module.fail_json(msg=msg, changed=False)

    def _ask_server(self):
        """server_info of the target's PostgreSQL; a server that does not answer is remembered, not fatal yet.

        A second present while the fill keeps the server down (a PANIC) must
        still see its fault in place."""
        ensure_psycopg2(self.module)
        try:
            conn = _pgconn.connect(self.params, application_name='pggit-chaos-disk')
        except _pgconn.psycopg2.Error as exc:
            self.server_error = 'unable to connect to %s: %s' % (_pgconn.describe(self.params), _pgconn.one_line(exc))
            return
        try:
            self.info = _server.server_info(conn.cursor())
        except ChaosError as exc:
            self._fail('target=%s: %s' % (self.params['target'], exc))
        except _pgconn.psycopg2.Error as exc:
            self._fail('target=%s: reading data_directory from %s failed: %s'
                       % (self.params['target'], _pgconn.describe(self.params), _pgconn.one_line(exc)))
        finally:
            conn.close()

    def _locate(self):
        target = self.params['target']
        if target == 'path':
            path = os.path.realpath(self.params['path'])
        elif self.info is None:
            return
        elif target == 'data':
            path = self.info['data_directory']
        else:
            path = self.info.get('pg_wal') or os.path.realpath(os.path.join(self.info['data_directory'], 'pg_wal'))
        try:
            self.fs = _fill.filesystem(path)
        except OSError as exc:
            option = 'path' if target == 'path' else 'target'
            self._fail("%s: the filesystem of '%s' cannot be found: %s" % (option, path, exc))
        self.target_path = os.path.realpath(path)
        problem = protected_problem(self.fs, self.params['state_dir'], self.params['allow_root_fs'],
                                    '%s %s' % ('path' if target == 'path' else target, self.target_path))
        if problem:
            self._fail(problem)

    def validate(self):
        fail_on_ranges(self.module, RANGES)
        problem = option_problem(self.params)
        if problem is None and self.params['target'] == 'path':
            problem = path_problem(self.params['path'])
        if problem:
            self._fail(problem)
        if self.params['target'] == 'path':
            self._locate()  # refused filesystems fail before the server is even asked
        self._ask_server()
        if self.params['target'] != 'path':
            self._locate()
        if self.fs is not None:
            problem = placement_problem(self.fs['mount'], self.info, self.params['target'])
            if problem:
                self._fail(problem)

    def fill_file(self):
        return os.path.join(self.fs['mount'], _fill.fill_name(_ledger.fault_id(self.kind, self.params['name'])))

    def observe(self):
        if self.fs is None:
            return {'server': self.server_error}
        figures = _fill.figures(self.fs['mount'])
        path = self.fill_file()
        return {'mount': self.fs['mount'], 'size_bytes': figures['size_bytes'], 'free_bytes': figures['free_bytes'],
                'fill_file': path, 'fill_file_present': os.path.lexists(path)}

    def in_place(self, record, current):
        path = (record.get('detail') or {}).get('fill_file')
        self.found = record
        return bool(path) and os.path.isfile(path) and not os.path.islink(path)

    def _asked(self, size_bytes):
        return _fill.asked_free_bytes(size_bytes, fill_pct=self.params['fill_pct'], free_mb=self.params['free_mb'])

    def noop_reason(self, current):
        if self.fs is None:
            return None
        asked = self._asked(current['size_bytes'])
        if _fill.fill_size(current['free_bytes'], asked, self.fs['block_size']) == 0:
            return ('the filesystem on %s has %d bytes free, no more than the %d asked to stay free: nothing to fill'
                    % (self.fs['mount'], current['free_bytes'], asked))
        return None

    def plan(self, current):
        if self.info is None:
            self._fail('target=%s: the server must answer to find %s and how to start it again: %s'
                       % (self.params['target'], 'its data directory' if self.params['target'] != 'path' else 'how it runs',
                          self.server_error))
        path = self.fill_file()
        if os.path.lexists(path):
            self._fail('%s already exists, and no record of this fault owns it: remove it by hand once you know where '
                       'it came from (it is never overwritten)' % path)
        asked = self._asked(current['size_bytes'])
        nbytes = _fill.fill_size(current['free_bytes'], asked, self.fs['block_size'])
        step = _server.start_step(self.info)
        undo = [step, {'type': 'remove_path', 'path': path, 'root': self.fs['mount']}]
        filesystem = {'mount': self.fs['mount'], 'device': self.fs['device'], 'fstype': self.fs['fstype'],
                      'size_bytes': current['size_bytes'], 'free_bytes_before': current['free_bytes'],
                      'free_bytes_after': current['free_bytes'] - nbytes}
        server = dict(_server.summary(self.info, step), pg_wal=self.info.get('pg_wal'))
        detail = {'target': self.params['target'], 'target_path': self.target_path, 'fill_file': path, 'fill_bytes': nbytes,
                  'asked_free_bytes': asked, 'rate_mb_s': self.params['rate_mb_s'], 'filesystem': filesystem, 'server': server,
                  'enospc': False}
        after = dict(current, fill_file_present=True, free_bytes=filesystem['free_bytes_after'])
        return undo, detail, after

    def _measure(self, before, out, asked, deadline):
        """The figures after a fill, and the bytes free above what it should have left (None when it took).

        Some filesystems count what was written only a moment later (ZFS at its
        next transaction group): look again for up to SETTLE_S before judging."""
        until = min(time.time() + SETTLE_S, deadline)
        while True:
            after = _fill.figures(self.fs['mount'])
            extra = None
            if not out['enospc']:
                extra = _fill.shortfall(before['free_bytes'], after['free_bytes'], asked, out['bytes'], after['size_bytes'],
                                        after['block_size'])
            if extra is None or time.time() >= until:
                return after, extra
            time.sleep(SETTLE_POLL_S)

    def apply(self, detail):
        before = _fill.figures(self.fs['mount'])
        asked = detail['asked_free_bytes']
        # Plan from the space free now (PostgreSQL may have written since plan()).
        nbytes = _fill.fill_size(before['free_bytes'], asked, before['block_size'])
        deadline = time.time() + self.remaining_ms() / 1000.0
        fd = _fill.open_fill_file(detail['fill_file'])
        try:
            out = _fill.fill_fd(fd, nbytes, rate_mb_s=self.params['rate_mb_s'], deadline=deadline)
            after, extra = self._measure(before, out, asked, deadline)
            if extra is not None and out['method'] == 'fallocate':
                # fallocate said yes and reserved nothing (glibc emulates it with zero bytes, which a compressing
                # filesystem does not store): write real blocks instead.
                self.module.warn('posix_fallocate of %d bytes in %s left %d bytes free, not %d: writing blocks instead'
                                 % (out['bytes'], detail['fill_file'], after['free_bytes'], asked))
                os.ftruncate(fd, 0)
                before = _fill.figures(self.fs['mount'])
                nbytes = _fill.fill_size(before['free_bytes'], asked, before['block_size'])
                out = _fill.fill_fd(fd, nbytes, rate_mb_s=self.params['rate_mb_s'], deadline=deadline, use_fallocate=False)
                after, extra = self._measure(before, out, asked, deadline)
        finally:
            os.close(fd)
        if extra is not None:
            raise ChaosError('the fill did not take: %s (%s on %s) was to be left with %d bytes free after %d bytes were %s, '
                             'but statvfs measures %d bytes free (%d more than expected); the filesystem does not store what '
                             'was written (compression, deduplication, thin provisioning or a quota elsewhere), so the fault '
                             'would not be what was asked' % (
                                 self.fs['mount'], self.fs.get('device') or '?', self.fs.get('fstype') or '?', asked,
                                 out['bytes'], 'allocated' if out['method'] == 'fallocate' else 'written', after['free_bytes'],
                                 extra))
        filesystem = dict(detail['filesystem'], size_bytes=after['size_bytes'], free_bytes_before=before['free_bytes'],
                          free_bytes_after=after['free_bytes'])
        if out['stopped'] == 'deadline':
            self.module.warn('the fill of %s stopped at %d of %d bytes: the ttl ran out first (raise ttl or rate_mb_s)'
                             % (detail['fill_file'], out['bytes'], nbytes))
        return {'filesystem': filesystem, 'fill_bytes': out['bytes'], 'enospc': out['enospc'],
                'fill_complete': out['complete'], 'fill_method': out['method'], 'fill_seconds': out['seconds']}

    def finish(self, result):
        if self.params['state'] != 'present':
            return
        if 'planned' in result:
            planned = result['planned']
            for key in RESULT_KEYS + ('server',):
                result.setdefault(key, planned.get(key))
            if self.module.check_mode:
                result['msg'] = ('would fill %s with %d bytes, leaving %d bytes free on %s; wrote nothing'
                                 % (planned['fill_file'], planned['fill_bytes'], planned['filesystem']['free_bytes_after'],
                                    planned['filesystem']['mount']))
            elif result.get('enospc'):
                result['msg'] = '%s; the filesystem ran out of space after %d bytes' % (result.get('msg'), result['fill_bytes'])
        elif self.found is not None:
            detail = self.found.get('detail') or {}
            result.update(fill_file=detail.get('fill_file'), target=detail.get('target'), target_path=detail.get('target_path'))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        target=dict(type='str', default='data', choices=['data', 'wal', 'path']),
        path=dict(type='path'),
        fill_pct=dict(type='float'),
        free_mb=dict(type='int'),
        rate_mb_s=dict(type='float'),
        allow_root_fs=dict(type='bool', default=False),
    )
    ChaosModule(argument_spec, mutually_exclusive=[('fill_pct', 'free_mb')],
                required_if=[('state', 'present', ('fill_pct', 'free_mb'), True), ('target', 'path', ('path',))]).run(DiskFault)


if __name__ == '__main__':
    main()
