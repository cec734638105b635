#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_corrupt
short_description: Corrupt a leaf page of a pgGit btree index on disk, for real, and undo it byte for byte
version_added: 0.2.0
description:
  - Damages one leaf page of a btree index of the C(pggit) schema in the data file of the
    PostgreSQL server on the target host, then makes the server read that page from disk,
    so that C(amcheck), index scans and pgGit itself meet real corruption.
  - Writing into data files needs a second opt-in. Besides C(pggit_chaos_allowed), the host
    must set C(pggit_chaos_destructive) to true in its own inventory, judged by the same
    rule (extra vars and play vars can lower it, never raise it). Without it the action
    plugin refuses and nothing reaches the host.
  - Before anything is written it runs C(CHECKPOINT) (so the file holds the current page),
    saves the exact original 8192 bytes of the page in a side file inside the state dir
    (mode 0600, created exclusively, never through a link), and writes the fault ledger record
    that names that side file. Only then is the data file written, and only that one page.
  - Only the chosen host's files are touched. Replicas have files of their own, which this
    module never writes. Two ways can still carry the damage to a streaming replica, as they
    would carry real corruption, and the module says so in RV(replicas). A reveal by
    tablespace WAL-logs a full-page image of every page of the index, the damaged one
    included. After a reveal by restart, the first later write into the damaged page (a new
    entry landing on it) WAL-logs a full-page image of the damaged page too.
  - The task must run on the database server's own host, as root (it reads C(/proc), writes
    a file owned by the server's owner and may stop and start the server as that owner), and
    O(login_user) must be a superuser (C(CHECKPOINT), C(data_directory), tablespaces).
  - What each O(reveal) costs in production. V(tablespace) runs C(ALTER INDEX ... SET TABLESPACE)
    to a scratch tablespace created in place inside the data directory and back again, then
    drops it. Each move copies the whole index under an C(ACCESS EXCLUSIVE) lock on it, which
    blocks every read and write of its table for the time of the copy, and WAL-logs every page
    (replicas get the damaged page too). It needs no restart. From before the C(CHECKPOINT) until
    the moves commit, the table is locked C(IN SHARE MODE) (reads go on, writes wait), so that no
    backend changes the cached copy of the page, which the move would write over the damage.
    Each lock is asked for with a short C(lock_timeout), again and again until the TTL is near,
    so a long transaction delays the fault (or makes it fail, leaving nothing) and never makes
    every statement on the table queue behind it. After the reveal the page in the file must
    still be the damage that was written, else the fault fails and is reverted. V(restart) stops the server (fast
    shutdown, every session is cut) before the write and starts it again after it. Clients see
    an outage of a few seconds, and replicas keep their clean copy. V(auto), the default, is
    V(tablespace) on a primary without streaming replicas and V(restart) otherwise.
  - A server that an HA manager runs (Patroni and the like, seen as the postmaster's parent) is
    never stopped or started by this module. Only O(reveal=tablespace) with O(recover=reindex) is
    allowed there; anything else is refused before anything is written.
  - What each O(recover) costs. The revert runs on O(state=absent), C(pggit_chaos_revert),
    the red button or the TTL reaper. With V(restore) it stops the server, writes the saved
    bytes back (only while the page on disk is still the damaged one this fault wrote; a page
    written into since would lose those writes, so the index is rebuilt instead), and starts
    the server again, which is a restart. With V(reindex) it runs C(REINDEX INDEX CONCURRENTLY)
    as a DBA would. That needs no restart and no exclusive lock, but builds a whole new index
    from the table (time, I/O and WAL the size of the index), and replicas get the rebuilt
    index too.
  - Damage. V(scramble) swaps the line pointers of the first two entries of the page, so its
    keys are out of order. C(bt_index_check) then reports C(item order invariant violated), and
    index scans silently miss rows. With data checksums on, the page checksum is set right
    for the new content, so the damage is the logical kind (as after a collation change).
    V(zero) overwrites the page with zeroes. PostgreSQL takes an all-zero page for a new one
    (no checksum to fail, with or without data checksums) and every btree read of it fails
    with C(index ... contains unexpected zero page at block N).
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: >-
      Finds the index, file, block and reveal it would use, and writes nothing (not even a CHECKPOINT: a page the server
      has not written to its file yet is taken as it will be, and judged when the fault runs).
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  index:
    description:
      - The index to damage, as C(name) or C(pggit.name). It must be a valid btree index of
        the C(pggit) schema whose file is under the data directory.
      - Omit it for the primary key index of C(pggit.history).
    type: str
  block:
    description:
      - The block to damage, 1 or more (block 0 is the metapage, never damaged). It must be a
        btree leaf page with at least two entries.
      - Omit it for the first such leaf page, from block 1 on.
    type: int
  mode:
    description:
      - V(scramble) puts the page's keys out of order; V(zero) zeroes the whole page.
    type: str
    default: scramble
    choices: [scramble, zero]
  reveal:
    description:
      - How the server is made to read the damaged page from disk (while the page is cached,
        nothing sees the damage). See the description for what each costs.
    type: str
    default: auto
    choices: [auto, tablespace, restart]
  recover:
    description:
      - What the revert does. V(restore) puts the saved bytes back and restarts the server
        (byte-exact undo); V(reindex) runs C(REINDEX INDEX CONCURRENTLY).
    type: str
    default: restore
    choices: [restore, reindex]
'''

EXAMPLES = r'''
- name: Scramble a leaf page of the pggit.history primary key on the primary
  pggit.chaos.pggit_chaos_corrupt:
    name: history-pkey
    ttl: 300
    db: app
  become: true

- name: Zero a page, show it by a restart, and let the revert rebuild the index like a DBA would
  pggit.chaos.pggit_chaos_corrupt:
    name: objects-zero
    index: objects_pkey
    mode: zero
    reveal: restart
    recover: reindex
    db: app
  become: true

- name: Put the original bytes back (the TTL reaper would, too)
  pggit.chaos.pggit_chaos_corrupt:
    name: history-pkey
    state: absent
  become: true
'''

RETURN = r'''
index:
  description: The damaged index, schema-qualified.
  returned: when state is present
  type: str
  sample: pggit.history_pkey
relation_file:
  description: The data file that holds the damaged page now (after a reveal by tablespace, the index's new file).
  returned: when state is present
  type: str
  sample: /var/lib/postgresql/15/main/base/16384/16500
block:
  description: The damaged block of the index.
  returned: when state is present
  type: int
offset:
  description: Byte offset of the page in RV(relation_file).
  returned: when state is present
  type: int
mode:
  description: V(scramble) or V(zero).
  returned: when state is present
  type: str
reveal:
  description: How the server was made to read the damaged page, V(tablespace) or V(restart) (never V(auto)).
  returned: when state is present
  type: str
recover:
  description: What the revert does, V(restore) or V(reindex).
  returned: when state is present
  type: str
bytes_written:
  description: Bytes written into the data file (one page, 8192; 0 in check mode).
  returned: when state is present
  type: int
saved_file:
  description: The side file in the state dir that holds the original bytes of the page.
  returned: when state is present
  type: str
sha256_before:
  description: sha256 of the original page (the bytes of RV(saved_file)).
  returned: when state is present
  type: str
sha256_after:
  description: sha256 of the damaged page as it is in RV(relation_file) now.
  returned: when the fault was injected
  type: str
checksums:
  description: Whether the cluster has data checksums on.
  returned: when state is present
  type: bool
replicas:
  description:
    - What happens on replicas. C(attached) is the number of streaming replicas seen in
      C(pg_stat_replication); C(files_written) is always false (only this host's files are
      written); C(note) says how the damage can still reach them.
  returned: when state is present
  type: dict
server:
  description: The server, as found before the fault (data directory, postmaster, how the revert starts it).
  returned: when state is present
  type: dict
fault_id:
  description: Ledger id of the fault, C(corrupt--<name>).
  returned: always
  type: str
'''

import errno
import os
import time
import uuid

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _pagefile, _pgconn, _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

SCHEMA = _steps.CORRUPT_SCHEMA
RANGES = (('block', 1, 4294967294),)
PAGE = _pagefile.PAGE_SIZE

DEFAULT_INDEX_SQL = ("SELECT c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conindid "
                     "JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                     "WHERE n.nspname = %s AND t.relname = 'history' AND k.contype = 'p'")
INDEX_SQL = ("SELECT c.oid, n.nspname, c.relname, am.amname, c.relkind, c.relpersistence, pg_relation_filepath(c.oid), "
             "pg_relation_size(c.oid), coalesce(t.spcname, (SELECT s.spcname FROM pg_database d JOIN pg_tablespace s "
             "ON s.oid = d.dattablespace WHERE d.datname = current_database())), coalesce(i.indisvalid, false) "
             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_am am ON am.oid = c.relam "
             "LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace LEFT JOIN pg_index i ON i.indexrelid = c.oid "
             "WHERE n.nspname = %s AND c.relname = %s")
REPLICAS_SQL = "SELECT count(*) FROM pg_stat_replication"
TABLE_SQL = ("SELECT n.nspname, t.relname FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
             "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE i.indexrelid = %s")
# One try at a lock of the reveal by tablespace (the SHARE lock of the table, ALTER INDEX's ACCESS EXCLUSIVE one): short, so
# that a long transaction never makes every later statement on the table queue behind ours; retried until the TTL.
LOCK_TRY_MS = 2000
LOCK_NOT_AVAILABLE = '55P03'


def check_options(module):
    """Refuse bad options of state=present before anything is touched, naming the option and the value."""
    fail_on_ranges(module, RANGES)
    index = module.params.get('index')
    if index is not None and (not index.strip() or '\x00' in index):
        module.fail_json(msg="index must name an index of schema %s, got '%s'; omit it for the primary key of %s.history"
                             % (SCHEMA, index, SCHEMA), changed=False)
    if index is not None and '.' in index:
        schema, _sep, name = index.partition('.')
        if schema != SCHEMA or not name:
            module.fail_json(msg='index=%s is not an index of schema %s: only pgGit indexes are damaged' % (index, SCHEMA), changed=False)


def pages_dir(state_dir):
    return os.path.join(state_dir, _steps.PAGES_DIR)


def saved_path(state_dir, fid, block):
    return os.path.join(pages_dir(state_dir), '%s-block%d.page' % (fid.replace('/', '_'), block))


def save_page(state_dir, path, page):
    """The original page in a 0600 side file, created exclusively (never through a link), fsynced."""
    folder = pages_dir(state_dir)
    os.makedirs(folder, 0o700, exist_ok=True)  # the state dir exists (the ledger made and checked it); only pages/ is new
    _ledger.check_private_dir(folder, 'state_dir folder')
    try:
        fd = _ledger.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise ChaosError('the saved page %s already exists (left by an earlier fault of this name?): it is never '
                             'overwritten; revert that fault or move the file away' % path)
        raise
    try:
        if os.write(fd, page) != len(page):
            raise ChaosError('short write into %s' % path)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CorruptFault(Fault):
    kind = 'corrupt'

    def __init__(self, module):
        super(CorruptFault, self).__init__(module)
        self.info = None
        self.found = None

    # -- looking ------------------------------------------------------------------
    def _connect(self):
        return connect_or_fail(self.module, application_name='pggit-chaos-corrupt')

    def _index(self, cur):
        """The index row, checked: a valid, permanent btree index of schema pggit, in a file under the data directory."""
        given = self.params['index']
        if given is None:
            cur.execute(DEFAULT_INDEX_SQL, (SCHEMA,))
            row = cur.fetchone()
            if row is None:
                raise ChaosError('index (default: the primary key of %s.history): %s.history has no primary key here; '
                                 'is pgGit installed in database %s?' % (SCHEMA, SCHEMA, self.params.get('db')))
            name, shown = row[0], '%s.%s (the primary key of %s.history)' % (SCHEMA, row[0], SCHEMA)
        else:
            name = given.partition('.')[2] if '.' in given else given
            shown = given
        cur.execute(INDEX_SQL, (SCHEMA, name))
        row = cur.fetchone()
        if row is None:
            raise ChaosError('index=%s: there is no relation %s.%s' % (shown, SCHEMA, name))
        oid, schema, relname, amname, relkind, persistence, relpath, size, home, valid = row
        if relkind != 'i':
            raise ChaosError('index=%s: %s.%s is not an index (relkind %s)' % (shown, schema, relname, relkind))
        if amname != 'btree':
            raise ChaosError('index=%s: %s.%s is a %s index, not a btree index' % (shown, schema, relname, amname))
        if persistence != 'p':
            raise ChaosError('index=%s: %s.%s is not a permanent index (relpersistence %s)' % (shown, schema, relname, persistence))
        if not valid:
            raise ChaosError('index=%s: %s.%s is not valid (a failed CREATE INDEX CONCURRENTLY?)' % (shown, schema, relname))
        data = self.info['data_directory']
        path = os.path.join(data, relpath)
        if _steps.relation_file_problem(relpath) or not _steps._inside(path, data):  # pylint: disable=protected-access
            raise ChaosError('index=%s: its file %s is not under the data directory %s (tablespace %s): only files under the '
                             'data directory are written' % (shown, relpath, data, home))
        cur.execute(TABLE_SQL, (oid,))
        table = list(cur.fetchone())
        return {'oid': oid, 'index': '%s.%s' % (schema, relname), 'relpath': relpath, 'blocks': int(size) // PAGE, 'home': home,
                'table': table}

    def _choose_block(self, found):
        """(block, page, problem): the block asked for, or the first leaf from block 1 on, read from the file."""
        data = self.info['data_directory']
        wanted = self.params['block']
        candidates = [wanted] if wanted is not None else range(1, found['blocks'])
        reasons, unflushed = [], None
        for block in candidates:
            relative, offset = _pagefile.location(found['relpath'], block)
            page = _steps.read_page(os.path.join(data, relative), offset, _steps.data_owner(data))
            problem = 'block %s cannot be read from %s' % (block, relative) if page is None else _pagefile.leaf_problem(page, block)
            if problem is None:
                return block, page, None
            if self.module.check_mode and page is not None and _pagefile.is_new(page) and unflushed is None:
                unflushed = block  # check mode runs no CHECKPOINT: the server may hold this page while the file has zeroes
            reasons.append(problem)
            if len(reasons) > 3 and wanted is None and block > 64:
                break
        if unflushed is not None:
            return unflushed, None, None
        if wanted is not None:
            return wanted, None, 'block=%s: %s' % (wanted, reasons[0])
        return None, None, ('index %s has no btree leaf page with two or more entries in its %d blocks (%s): add rows first'
                            % (found['index'], found['blocks'], '; '.join(reasons[:2]) or 'it has only its metapage'))

    def validate(self):
        """Everything about the index and the server that can be wrong, before the state dir is touched."""
        conn = self._connect()
        try:
            cur = conn.cursor()
            self.info = _server.server_info(cur)
            cur.execute('SHOW data_checksums')
            checksums = cur.fetchone()[0] == 'on'
            replicas = 0
            if not self.info['in_recovery']:
                cur.execute(REPLICAS_SQL)
                replicas = int(cur.fetchone()[0])
            found = self._index(cur)
        except ChaosError as exc:
            self.module.fail_json(msg=str(exc), changed=False)
        finally:
            conn.close()
        block = self.params['block']
        if block is not None and block >= found['blocks']:
            self.module.fail_json(msg='block=%s: index %s has %d blocks (0 to %d)' % (block, found['index'], found['blocks'],
                                                                                      found['blocks'] - 1), changed=False)
        reveal = self.params['reveal']
        if reveal == 'auto':
            reveal = 'restart' if self.info['in_recovery'] or replicas else 'tablespace'
        if self.info['in_recovery'] and reveal == 'tablespace':
            self.module.fail_json(msg='reveal=tablespace: the server in %s is a standby, where ALTER INDEX cannot run; use '
                                      'reveal=restart' % self.info['data_directory'], changed=False)
        if self.info['in_recovery'] and self.params['recover'] == 'reindex':
            self.module.fail_json(msg='recover=reindex: the server in %s is a standby, where REINDEX cannot run; use '
                                      'recover=restore' % self.info['data_directory'], changed=False)
        if self.info.get('manager') and (reveal == 'restart' or self.params['recover'] == 'restore'):
            self.module.fail_json(msg='reveal=%s, recover=%s: the server in %s is managed by %s, which starts it (or fails over) '
                                      'by itself: this fault never stops or starts it. Use reveal=tablespace and recover=reindex '
                                      '(no restart), or run it where pggit.chaos may restart the server; nothing was written'
                                      % (reveal, self.params['recover'], self.info['data_directory'], self.info['manager']),
                                  changed=False)
        if reveal == 'tablespace' and replicas and self.params['recover'] == 'restore':
            self.module.fail_json(msg='reveal=tablespace with recover=restore: %d streaming replica(s) would get the damaged page '
                                      'through the WAL of the move, and the byte-exact restore writes only this host; use '
                                      'reveal=restart (replicas stay clean) or recover=reindex' % replicas, changed=False)
        found.update(checksums=checksums, replicas=replicas, reveal=reveal)
        self.found = found

    def observe(self):
        found = self.found
        if not self.module.check_mode:
            conn = self._connect()
            try:
                conn.cursor().execute('CHECKPOINT')  # the files must hold the current pages before they are judged
            finally:
                conn.close()
        block, page, problem = self._choose_block(found)
        current = {'server': _server.summary(self.info), 'index': found['index'], 'block': block, 'checksums': found['checksums'],
                   'replicas': found['replicas'], 'blocks': found['blocks']}
        if problem:
            current['problem'] = problem
        if block is not None:
            relative, offset = _pagefile.location(found['relpath'], block)
            current.update(relation_file=os.path.join(self.info['data_directory'], relative), offset=offset)
        if page is not None:
            current['sha256'] = _pagefile.sha256(page)
        elif block is not None and not problem:
            current['unflushed'] = ('block %s is all zeroes in the file: the server holds it and the CHECKPOINT the fault runs '
                                    'first writes it; it is judged then' % block)
        return current

    def in_place(self, record, current):
        detail = record.get('detail') or {}
        if not detail.get('sha256_after') or not detail.get('relation_file'):
            return False
        page = _steps.read_page(detail['relation_file'], detail['offset'], _steps.data_owner(self.info['data_directory']))
        return page is not None and _pagefile.sha256(page) == detail['sha256_after']

    # -- planning -------------------------------------------------------------------
    def _start(self):
        return _server.start_step(self.info)

    def plan(self, current):
        if current.get('problem'):
            raise ChaosError('%s: nothing was written and nothing recorded' % current['problem'])
        fid = _ledger.fault_id(self.kind, self.params['name'])
        found = self.found
        saved = saved_path(self.params['state_dir'], fid, current['block'])
        # A restart reveal stops the server: the revert starts it again. A reveal by tablespace stops nothing.
        undo = [self._start()] if found['reveal'] == 'restart' else []
        # The side file goes even when the fault dies between saving it and recording its restore_page step; once that
        # step is recorded it owns the file and this removal is dropped (see _damage).
        undo.append({'type': 'remove_path', 'path': saved})
        scratch = None
        if found['reveal'] == 'tablespace':
            scratch = '%s%s' % (_steps.SCRATCH_TABLESPACE_PREFIX, uuid.uuid4().hex[:12])
            undo.append({'type': 'pg_scratch_tablespace', 'tablespace': scratch, 'home': found['home'], 'index': found['index'],
                         'conn': _pgconn.stored_conn(self.params)})
        self._check_steps(undo)  # a step the revert would refuse is refused now, before anything is damaged
        detail = {'index': found['index'], 'relation_file': current['relation_file'], 'block': current['block'],
                  'offset': current['offset'], 'mode': self.params['mode'], 'reveal': found['reveal'], 'recover': self.params['recover'],
                  'checksums': found['checksums'], 'saved_file': saved, 'table': found['table'],
                  'sha256_before': current.get('sha256'), 'scratch_tablespace': scratch, 'home_tablespace': found['home'],
                  'replicas': self._replicas(), 'server': current['server']}
        after = dict(current, damaged={'block': current['block'], 'mode': self.params['mode'], 'reveal': found['reveal']})
        return undo, detail, after

    def _replicas(self):
        attached = self.found['replicas']
        if self.found['reveal'] == 'tablespace':
            note = ('only this host\'s files are written; the tablespace move WAL-logs every page of the index, so streaming '
                    'replicas (%d attached) get the damaged page too' % attached)
        else:
            note = ('only this host\'s files are written; %d attached streaming replica(s) keep their own clean copy until the '
                    'primary writes into the damaged page (its full-page image then carries the damage)' % attached)
        return {'attached': attached, 'files_written': False, 'note': note}

    def secret(self):
        return _pgconn.secret_conn(self.params)

    def _check_steps(self, steps):
        try:
            _steps.check_steps(steps, self.params['state_dir'])
        except _steps.UndoError as exc:
            raise ChaosError('%s: the revert would refuse it, so nothing is damaged' % exc)

    def _add_undo(self, step, index):
        self._check_steps([step])  # checked before it is recorded, and so before the damage it undoes
        super(CorruptFault, self)._add_undo(step, index)

    # -- applying -------------------------------------------------------------------
    def _update(self, detail_changes=None, step_type=None, step_changes=None):
        """Change the record on disk (the truth) and our copy: detail keys, and keys of our undo step of step_type."""
        with self.ledger.lock():
            record = self.ledger.read(self.record['id']) or self.record
            record.setdefault('detail', {}).update(detail_changes or {})
            for step in record.get('undo') or []:
                if step_type and step.get('type') == step_type:
                    step.update(step_changes or {})
            self.ledger.write(record)
            self.record.update(detail=record['detail'], undo=record['undo'])

    def _drop_removal(self, path):
        with self.ledger.lock():
            record = self.ledger.read(self.record['id']) or self.record
            record['undo'] = [st for st in record.get('undo') or [] if not (st.get('type') == 'remove_path' and st.get('path') == path)]
            self.ledger.write(record)
            self.record['undo'] = record['undo']

    def _relpath_now(self, cur):
        cur.execute('SELECT pg_relation_filepath(%s::regclass)', (self.found['index'],))
        return cur.fetchone()[0]

    def _undo_step(self, detail, path, offset, before, written, file_id):
        """The undo of the damage, built and checked before the original is saved."""
        conn_rec = _pgconn.stored_conn(self.params)
        if detail['recover'] == 'restore':
            step = {'type': 'restore_page', 'path': path, 'data_directory': self.info['data_directory'], 'block': detail['block'],
                    'offset': offset, 'saved': detail['saved_file'], 'sha256': before, 'damaged_sha256': written,
                    'start': self._start(), 'index': detail['index'], 'conn': conn_rec, 'file_id': file_id,
                    'standby': bool(self.info['in_recovery'])}
        else:
            step = {'type': 'pg_reindex', 'index': detail['index'], 'conn': conn_rec}
        self._check_steps([step])
        return step

    def _damage(self, detail, path, offset, owner):
        """Read the page, save it, record its undo, write the damaged copy; returns (page, damaged)."""
        block = detail['block']
        page = _steps.read_page(path, offset, owner)
        problem = 'block %s cannot be read from %s' % (block, path) if page is None else _pagefile.leaf_problem(page, block)
        if problem:
            raise ChaosError(problem)
        file_id = _steps.file_identity(path, owner)
        if file_id is None:
            raise ChaosError('%s is not a regular file of the data directory owner: nothing written' % path)
        damaged = _pagefile.damage(page, block, detail['mode'], detail['checksums'])
        before, written = _pagefile.sha256(page), _pagefile.sha256(damaged)
        step = self._undo_step(detail, path, offset, before, written, file_id)
        save_page(self.params['state_dir'], detail['saved_file'], page)
        self.add_undo_last(step)
        if step['type'] == 'restore_page':
            # restore_page owns the saved bytes now (it removes them once the page is back, keeps them while it
            # cannot): the plain removal, which covered a death before this point, must not run after a failed restore.
            self._drop_removal(detail['saved_file'])
        self._update({'sha256_before': before, 'sha256_after': written})
        _steps.write_page(path, offset, damaged, owner, file_id)
        return page, damaged

    def _revealed(self, path, offset, owner, damaged, how):
        """After the reveal: the page in the file must still be the damage we wrote (pd_lsn and pd_checksum aside), else the
        inject fails (and the lifecycle reverts it): a page written over since is never recorded as damaged."""
        page = _steps.read_page(path, offset, owner)
        if not _steps.same_damage(page, damaged):
            raise ChaosError('after the reveal by %s, block %s of %s is no longer the damaged page (%s): the server wrote '
                             'its own copy over it, so the damage did not take; nothing is claimed'
                             % (how, self.found['index'] if self.found else '?', path,
                                'unreadable' if page is None else 'sha256 %s' % _pagefile.sha256(page)))
        return page

    def apply(self, detail):
        data = self.info['data_directory']
        owner = _steps.data_owner(data)
        block, path, offset = detail['block'], detail['relation_file'], detail['offset']
        conn = self._connect()
        try:
            relative = _pagefile.location(self._relpath_now(conn.cursor()), block)[0]
        finally:
            conn.close()
        if os.path.join(data, relative) != path:
            raise ChaosError('index %s moved to another file since the plan (%s): run again' % (detail['index'], relative))
        if detail['reveal'] == 'restart':
            start = self._start()
            stopped, env = _steps.server_stop(start, {})  # a fast stop writes every page the server holds
            try:
                page, damaged = self._damage(detail, path, offset, owner)
            finally:
                if stopped:
                    _steps.server_start(start, env, {})
            self._revealed(path, offset, owner, damaged, 'restart')  # a standby's replay may have written it since
        else:
            page, damaged, path, offset = self._damage_and_reveal_by_tablespace(detail, path, offset, owner)
            written = _pagefile.sha256(_steps.read_page(path, offset, owner) or b'')
            self._update({'relation_file': path, 'offset': offset, 'sha256_after': written}, 'restore_page',
                         {'path': path, 'offset': offset, 'damaged_sha256': written, 'file_id': _steps.file_identity(path, owner)})
        return {'index': detail['index'], 'block': block, 'offset': offset, 'mode': detail['mode'], 'reveal': detail['reveal'],
                'recover': detail['recover'], 'bytes_written': PAGE, 'saved_file': detail['saved_file'],
                'sha256_before': _pagefile.sha256(page), 'checksums': detail['checksums'], 'replicas': detail['replicas'],
                'server': detail['server'], 'relation_file': path, 'sha256_after': self.record['detail']['sha256_after']}

    def _retrying(self, conn, cur, statement, what):
        """Run ``statement`` in the open transaction with a short lock_timeout, again after each lock timeout (rolled back to a
        savepoint), until the TTL is near: a long transaction on the table delays the fault, never the table's users."""
        while True:
            cur.execute('SAVEPOINT pggit_chaos_try')
            cur.execute('SET LOCAL lock_timeout = %s', (LOCK_TRY_MS,))
            try:
                cur.execute(statement)
            except _pgconn.psycopg2.Error as exc:
                if getattr(exc, 'pgcode', None) != LOCK_NOT_AVAILABLE:
                    raise
                cur.execute('ROLLBACK TO SAVEPOINT pggit_chaos_try')
                if self.remaining_ms() <= 2 * LOCK_TRY_MS:
                    raise ChaosError('%s: its lock was not granted before the ttl (tried every %d ms): a long transaction '
                                     'holds the table; nothing is left behind' % (what, LOCK_TRY_MS))
                time.sleep(0.2)
                continue
            cur.execute('RELEASE SAVEPOINT pggit_chaos_try')
            return

    def _damage_and_reveal_by_tablespace(self, detail, path, offset, owner):
        """Damage the page and move the index to a scratch tablespace (in place, in the data directory) and back, then drop
        it, all while the index's table is locked IN SHARE MODE (readers go on, writers wait).

        Each move copies the index from disk (damaged page included) into a new
        file, and the server's cached pages of the old file are dropped: the
        next read of the page comes from the new file.  The SHARE lock, taken
        before the CHECKPOINT and held until the moves commit, keeps backends
        from dirtying the cached (clean) copy of the page in between, which the
        move would flush over the damage.  Returns (page, damaged, path, offset)
        of the page now."""
        sql = _pgconn.sql
        index = sql.Identifier(SCHEMA, detail['index'].partition('.')[2])
        table = sql.Identifier(*detail['table'])
        scratch = sql.Identifier(detail['scratch_tablespace'])
        admin = self._connect()
        try:
            acur = admin.cursor()
            acur.execute('SET statement_timeout = %s', (self.remaining_ms(),))
            acur.execute('SET allow_in_place_tablespaces = on')
            acur.execute(sql.SQL("CREATE TABLESPACE {} LOCATION ''").format(scratch))
            conn = self._connect()
            try:
                conn.autocommit = False
                cur = conn.cursor()
                cur.execute('SET LOCAL statement_timeout = %s', (self.remaining_ms(),))
                self._retrying(conn, cur, sql.SQL('LOCK TABLE {} IN SHARE MODE').format(table),
                               'LOCK TABLE %s IN SHARE MODE' % '.'.join(detail['table']))
                cur.execute('CHECKPOINT')  # the file must hold the current page before it is read and saved
                page, damaged = self._damage(detail, path, offset, owner)
                for home in (detail['scratch_tablespace'], detail['home_tablespace']):
                    self._retrying(conn, cur, sql.SQL('ALTER INDEX {} SET TABLESPACE {}').format(index, sql.Identifier(home)),
                                   'ALTER INDEX %s SET TABLESPACE %s' % (detail['index'], home))
                conn.commit()
            finally:
                conn.close()
            acur.execute(sql.SQL('DROP TABLESPACE {}').format(scratch))
            acur.execute('CHECKPOINT')
            relative, offset = _pagefile.location(self._relpath_now(acur), detail['block'])
        finally:
            admin.close()
        path = os.path.join(self.info['data_directory'], relative)
        if not _steps.same_damage(_steps.read_page(path, offset, owner), damaged):
            # Point the undo at the page as it is: restore_page then finds it is not the damage and rebuilds the index.
            self._update({'relation_file': path, 'offset': offset}, 'restore_page',
                         {'path': path, 'offset': offset, 'file_id': _steps.file_identity(path, owner)})
        self._revealed(path, offset, owner, damaged, 'tablespace')
        return page, damaged, path, offset

    def finish(self, result):
        if self.params['state'] != 'present' or 'planned' not in result:
            return
        planned = result['planned']
        for key in ('index', 'relation_file', 'block', 'offset', 'mode', 'reveal', 'recover', 'saved_file', 'sha256_before',
                    'checksums', 'replicas', 'server'):
            result.setdefault(key, planned.get(key))
        if self.module.check_mode:
            result['bytes_written'] = 0
            result['msg'] = ('would save block %s of %s (%s, offset %s) to %s, then %s it and reveal it by %s; recover: %s; wrote nothing'
                             % (planned['block'], planned['index'], planned['relation_file'], planned['offset'],
                                planned['saved_file'], planned['mode'], planned['reveal'], planned['recover']))
            return
        if 'sha256_after' in result:
            result['msg'] = ('%s block %s of %s (%s, offset %s), revealed by %s; the original bytes are in %s; the revert %s. %s'
                             % ('scrambled' if planned['mode'] == 'scramble' else 'zeroed', result['block'], result['index'],
                                result['relation_file'], result['offset'], result['reveal'], result['saved_file'],
                                'writes them back and restarts the server' if result['recover'] == 'restore'
                                else 'runs REINDEX INDEX CONCURRENTLY', result['replicas']['note']))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        index=dict(type='str'),
        block=dict(type='int'),
        mode=dict(type='str', default='scramble', choices=list(_pagefile.MODES)),
        reveal=dict(type='str', default='auto', choices=['auto', 'tablespace', 'restart']),
        recover=dict(type='str', default='restore', choices=['restore', 'reindex']),
    )
    chaos = ChaosModule(argument_spec)
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(CorruptFault)


if __name__ == '__main__':
    main()
