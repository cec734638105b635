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
    (replicas get the damaged page too). It needs no restart. V(restart) stops the server (fast
    shutdown, every session is cut) before the write and starts it again after it. Clients see
    an outage of a few seconds, and replicas keep their clean copy. V(auto), the default, is
    V(tablespace) on a primary without streaming replicas and V(restart) otherwise.
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
    try:
        os.mkdir(folder, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
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
        return {'oid': oid, 'index': '%s.%s' % (schema, relname), 'relpath': relpath, 'blocks': int(size) // PAGE, 'home': home}

    def _choose_block(self, found):
        """(block, page, problem): the block asked for, or the first leaf from block 1 on, read from the file."""
        data = self.info['data_directory']
        wanted = self.params['block']
        candidates = [wanted] if wanted is not None else range(1, found['blocks'])
        reasons, unflushed = [], None
        for block in candidates:
            relative, offset = _pagefile.location(found['relpath'], block)
            page = _steps.read_page(os.path.join(data, relative), offset)
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
        page = _steps.read_page(detail['relation_file'], detail['offset'])
        return page is not None and _pagefile.sha256(page) == detail['sha256_after']

    # -- planning -------------------------------------------------------------------
    def _start(self):
        return _server.start_step(self.info)

    def plan(self, current):
        if current.get('problem'):
            raise ChaosError('%s: nothing was written and nothing recorded' % current['problem'])
        fid = _ledger.fault_id(self.kind, self.params['name'])
        found = self.found
        undo = [self._start()]
        scratch = None
        if found['reveal'] == 'tablespace':
            scratch = '%s%s' % (_steps.SCRATCH_TABLESPACE_PREFIX, uuid.uuid4().hex[:12])
            undo.append({'type': 'pg_scratch_tablespace', 'tablespace': scratch, 'home': found['home'], 'index': found['index'],
                         'conn': _pgconn.stored_conn(self.params)})
        detail = {'index': found['index'], 'relation_file': current['relation_file'], 'block': current['block'],
                  'offset': current['offset'], 'mode': self.params['mode'], 'reveal': found['reveal'], 'recover': self.params['recover'],
                  'checksums': found['checksums'], 'saved_file': saved_path(self.params['state_dir'], fid, current['block']),
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

    def _relpath_now(self, cur):
        cur.execute('SELECT pg_relation_filepath(%s::regclass)', (self.found['index'],))
        return cur.fetchone()[0]

    def apply(self, detail):
        data = self.info['data_directory']
        start = self._start()
        block, path, offset = detail['block'], detail['relation_file'], detail['offset']
        conn = self._connect()
        try:
            cur = conn.cursor()
            relative = _pagefile.location(self._relpath_now(cur), block)[0]
            if os.path.join(data, relative) != path:
                raise ChaosError('index %s moved to another file since the plan (%s): run again' % (detail['index'], relative))
            if detail['reveal'] != 'restart':
                cur.execute('CHECKPOINT')  # the file must hold the current page before it is read and saved
        finally:
            conn.close()
        env, stopped = None, False
        if detail['reveal'] == 'restart':
            stopped, env = _steps.server_stop(start, {})  # a fast stop writes every page the server holds
        try:
            page = _steps.read_page(path, offset)
            problem = 'block %s cannot be read from %s' % (block, path) if page is None else _pagefile.leaf_problem(page, block)
            if problem:
                raise ChaosError(problem)
            damaged = _pagefile.damage(page, block, detail['mode'], detail['checksums'])
            before, written = _pagefile.sha256(page), _pagefile.sha256(damaged)
            saved = detail['saved_file']
            save_page(self.params['state_dir'], saved, page)
            conn_rec = _pgconn.stored_conn(self.params)
            if detail['recover'] == 'restore':
                self.add_undo_last({'type': 'restore_page', 'path': path, 'data_directory': data, 'block': block, 'offset': offset,
                                    'saved': saved, 'sha256': before, 'damaged_sha256': written, 'start': start,
                                    'index': detail['index'], 'conn': conn_rec})
            else:
                self.add_undo_last({'type': 'remove_path', 'path': saved})
                self.add_undo_last({'type': 'pg_reindex', 'index': detail['index'], 'conn': conn_rec})
            self._update({'sha256_before': before, 'sha256_after': written})
            _steps.write_page(path, offset, damaged, os.stat(data).st_uid)
        finally:
            if stopped:
                _steps.server_start(start, env, {})
        result = {'index': detail['index'], 'block': block, 'offset': offset, 'mode': detail['mode'], 'reveal': detail['reveal'],
                  'recover': detail['recover'], 'bytes_written': PAGE, 'saved_file': saved, 'sha256_before': before,
                  'checksums': detail['checksums'], 'replicas': detail['replicas'], 'server': detail['server']}
        if detail['reveal'] == 'tablespace':
            path, offset = self._reveal_by_tablespace(detail)
            page = _steps.read_page(path, offset)
            written = _pagefile.sha256(page or b'')
            self._update({'relation_file': path, 'offset': offset, 'sha256_after': written}, 'restore_page',
                         {'path': path, 'offset': offset, 'damaged_sha256': written})
        result.update(relation_file=path, offset=offset, sha256_after=written)
        return result

    def _reveal_by_tablespace(self, detail):
        """Move the index to a scratch tablespace (in place, in the data directory) and back, then drop it.

        Each move copies the index from disk (damaged page included) into a new
        file, and the server's cached pages of the old file are dropped: the
        next read of the page comes from the new file.  Returns where the page
        is now."""
        sql = _pgconn.sql
        index = sql.Identifier(SCHEMA, detail['index'].partition('.')[2])
        scratch = sql.Identifier(detail['scratch_tablespace'])
        conn = self._connect()
        try:
            cur = conn.cursor()
            budget = self.remaining_ms()
            cur.execute('SET lock_timeout = %s', (budget,))
            cur.execute('SET statement_timeout = %s', (budget,))
            cur.execute('SET allow_in_place_tablespaces = on')
            cur.execute(sql.SQL("CREATE TABLESPACE {} LOCATION ''").format(scratch))
            cur.execute(sql.SQL('ALTER INDEX {} SET TABLESPACE {}').format(index, scratch))
            cur.execute(sql.SQL('ALTER INDEX {} SET TABLESPACE {}').format(index, sql.Identifier(detail['home_tablespace'])))
            cur.execute(sql.SQL('DROP TABLESPACE {}').format(scratch))
            cur.execute('CHECKPOINT')
            relative, offset = _pagefile.location(self._relpath_now(cur), detail['block'])
        finally:
            conn.close()
        return os.path.join(self.info['data_directory'], relative), offset

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
