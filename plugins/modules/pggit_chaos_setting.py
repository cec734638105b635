#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_setting
short_description: Change PostgreSQL settings for the fault window (ALTER SYSTEM and a reload)
version_added: 0.2.0
description:
  - Sets one or more server settings with C(ALTER SYSTEM SET) and C(pg_reload_conf()), and
    returns each setting's value before and after (C(current_setting()) in a new session).
    Made for the C(dependency_failure) experiment, whose primary runs with
    C(synchronous_standby_names) naming a replica that is then cut off, so that commits wait.
  - Before anything is changed, the fault ledger records what C(ALTER SYSTEM) held for each
    setting (its line in C(postgresql.auto.conf), read from C(pg_file_settings)), or that it
    held nothing. The undo puts exactly that back (C(ALTER SYSTEM SET) of the old value, or
    C(ALTER SYSTEM RESET)) and reloads, but only while C(postgresql.auto.conf) still holds the
    value the fault set. A value someone set during the fault is left as it is, with a note in
    the revert. It is run by the revert (O(state=absent),
    C(pggit_chaos_revert), the red button) and by the TTL reaper, so the settings come back
    even when the controller dies. Setting names are quoted as identifiers and values passed as
    literals.
  - A reload costs nothing in production. No session ends, and each session applies the new
    values between statements. A value set in C(postgresql.conf) stays where it is, and
    C(ALTER SYSTEM) overrides it, as it does for a DBA. A value given on the server's command
    line (C(pg_settings.source) is C(command line)) overrides C(ALTER SYSTEM), so such a setting
    is refused. A value set for the login role or its database (C(ALTER ROLE ... SET)) overrides
    it in sessions too. The inject then fails, because the value after the reload is not the one
    asked, and rolls back.
  - Where it cannot work. A setting that needs a restart (C(pg_settings.context) is
    C(postmaster)), or cannot be changed at all (C(internal)), is refused, as is a name the
    server does not know. Refused too are settings whose values are lists of quoted names
    (C(search_path), C(temp_tablespaces), C(local_preload_libraries),
    C(session_preload_libraries)), because their old value cannot be put back as one literal.
    The login role must be a superuser, or have been granted C(ALTER SYSTEM) on the setting.
    A server run by Patroni gets its settings from Patroni, which may rewrite them.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Checks the settings against the server and shows the values it would set; sets none.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  settings:
    description:
      - Setting name to value, such as C(synchronous_standby_names) to C(FIRST 1 (replica1)).
        Values are strings, numbers or booleans (V(true) is C(on)); units as in
        C(postgresql.conf) (C(4MB), C(30s)).
      - Required with O(state=present).
    type: dict
'''

EXAMPLES = r'''
- name: Make commits on the primary wait for a replica (that the experiment then cuts off)
  pggit.chaos.pggit_chaos_setting:
    name: sync-replica
    ttl: 120
    settings:
      synchronous_standby_names: FIRST 1 (replica1)
      synchronous_commit: "on"

- name: Put the previous values back
  pggit.chaos.pggit_chaos_setting:
    name: sync-replica
    state: absent
'''

RETURN = r'''
settings:
  description:
    - Per setting, C(before) and C(after) (C(current_setting()) before the change and after the reload),
      and C(previous) (what C(ALTER SYSTEM) held before, or null when it held nothing; the undo puts that back).
  returned: state=present
  type: dict
  sample: {synchronous_standby_names: {before: '', after: 'FIRST 1 (replica1)', previous: null}}
fault_id:
  description: Ledger id of the fault, C(setting--<name>).
  returned: always
  type: str
'''

import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

APP = 'pggit-chaos-setting'
# Settings whose values are lists of quoted names: ALTER SYSTEM SET x = '<old text>' would quote the whole text once more.
LIST_QUOTED = ('search_path', 'temp_tablespaces', 'local_preload_libraries', 'session_preload_libraries', 'shared_preload_libraries')
# Settings with context 'postmaster' in every supported release (PostgreSQL 12-17): refused before connecting.
# The server's own pg_settings.context decides for every other name.
KNOWN_POSTMASTER = frozenset((
    'archive_mode', 'autovacuum_freeze_max_age', 'autovacuum_max_workers', 'autovacuum_multixact_freeze_max_age', 'cluster_name',
    'config_file', 'data_directory', 'dynamic_shared_memory_type', 'hba_file', 'hot_standby', 'huge_pages', 'ident_file',
    'listen_addresses', 'logging_collector', 'max_connections', 'max_files_per_process', 'max_locks_per_transaction',
    'max_logical_replication_workers', 'max_pred_locks_per_transaction', 'max_prepared_transactions', 'max_replication_slots',
    'max_wal_senders', 'max_worker_processes', 'port', 'shared_buffers', 'superuser_reserved_connections',
    'track_activity_query_size', 'track_commit_timestamp', 'unix_socket_directories', 'unix_socket_group',
    'unix_socket_permissions', 'wal_buffers', 'wal_level', 'wal_log_hints'))
REFUSED_CONTEXTS = {'postmaster': 'needs a server restart', 'internal': 'cannot be changed'}
SETTLE_S = 5.0
LOOK_SQL = 'SELECT name, context, setting, source FROM pg_settings WHERE name = ANY(%s)'
# Where a new session's value of each setting comes from, after the reload.
SOURCE_SQL = 'SELECT name, source, sourcefile FROM pg_settings WHERE name = ANY(%s)'
AUTO_CONF = '/postgresql.auto.conf'


def value_text(value):
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def check_options(module):
    """Refuse bad settings of state=present before anything is touched (no connection), naming the setting and value."""
    settings = module.params['settings']
    if not settings:
        module.fail_json(msg='settings must name at least one setting, got %r' % (settings,), changed=False)
    for name, value in settings.items():
        if not isinstance(name, str) or not _steps.SETTING_NAME_RE.match(name):
            module.fail_json(msg="settings: '%s' is not a setting name (letters, digits and _, with one optional '.')" % (name,),
                             changed=False)
        if name.lower() in LIST_QUOTED:
            module.fail_json(msg='settings: %s is refused: its value is a list of quoted names, which the undo cannot put '
                                 'back as one literal' % name, changed=False)
        if name.lower() in KNOWN_POSTMASTER:
            module.fail_json(msg="settings: %s has context 'postmaster': it needs a server restart, so this fault refuses it "
                                 '(value %s)' % (name, value_text(value)), changed=False)
        if value is None or isinstance(value, (dict, list)) or '\x00' in value_text(value):
            module.fail_json(msg='settings: the value of %s must be a string, number or boolean, got %r' % (name, value),
                             changed=False)


class SettingFault(Fault):
    kind = 'setting'
    # in_place() already compares the recorded settings with the asked ones, and a setting's value may hold a secret
    # (a primary_conninfo with a password): it is never kept in the record's options nor returned in replaced.
    volatile_options = None

    def __init__(self, module):
        super(SettingFault, self).__init__(module)
        self.wanted = dict((n, value_text(v)) for n, v in (self.params.get('settings') or {}).items())

    def validate(self):
        """Against the server, before the state dir is touched: every name known, none needing a restart."""
        conn = connect_or_fail(self.module, application_name=APP)
        try:
            cur = conn.cursor()
            cur.execute(LOOK_SQL, (sorted(self.wanted),))
            rows = cur.fetchall()
            known = dict((row[0], row[1]) for row in rows)
            sources = dict((row[0], row[3]) for row in rows)
        finally:
            conn.close()
        for name in sorted(self.wanted):
            if name not in known:
                self.module.fail_json(msg='settings: %s is not a setting this server knows (pg_settings has no such name), '
                                          'so it was not set' % name, changed=False)
            if known[name] in REFUSED_CONTEXTS:
                self.module.fail_json(msg="settings: %s has context '%s' in pg_settings: it %s, so this fault refuses it "
                                          '(value %s)' % (name, known[name], REFUSED_CONTEXTS[known[name]], self.wanted[name]),
                                      changed=False)
            if sources[name] == 'command line':
                self.module.fail_json(msg="settings: %s is set on the server's command line (pg_settings.source is 'command "
                                          "line'), which overrides ALTER SYSTEM, so this fault refuses it (value %s)"
                                          % (name, self.wanted[name]), changed=False)

    def observe(self):
        conn = connect_or_fail(self.module, application_name=APP)
        try:
            cur = conn.cursor()
            values = current_settings(cur, self.wanted)
            current = dict((n, {'value': values[n], 'altered': _steps.auto_conf_value(cur, n)}) for n in sorted(self.wanted))
        finally:
            conn.close()
        return current

    def in_place(self, record, current):
        recorded = (record.get('detail') or {}).get('wanted') or {}
        return recorded == self.wanted and all(current[n]['altered'] == v for n, v in self.wanted.items())

    def plan(self, current):
        previous = dict((n, current[n]['altered']) for n in self.wanted)
        undo = [{'type': 'pg_setting_restore', 'settings': previous, 'applied': dict(self.wanted),
                 'conn': _pgconn.stored_conn(self.params)}]
        detail = {'wanted': dict(self.wanted), 'previous': previous,
                  'before': dict((n, current[n]['value']) for n in self.wanted)}
        after = dict((n, {'value': v, 'altered': v}) for n, v in self.wanted.items())
        return undo, detail, after

    def secret(self):
        return _pgconn.secret_conn(self.params)

    def apply(self, detail):
        conn = connect_or_fail(self.module, application_name=APP)
        try:
            cur = conn.cursor()
            for name in sorted(self.wanted):
                _steps.alter_system(cur, name, self.wanted[name])
            cur.execute('SELECT pg_reload_conf()')
        finally:
            conn.close()
        after = self._settled(detail['before'])
        settings = dict((n, {'before': detail['before'][n], 'after': after[n], 'previous': detail['previous'][n]})
                        for n in sorted(self.wanted))
        return {'settings': settings}

    def _settled(self, before):
        """current_setting() of each in a new session, once the reload shows the asked values; ChaosError when it never does.

        A value counts as the asked one when it reads the same, or when it
        changed and comes from postgresql.auto.conf (the server's own spelling
        of it, such as 16MB for 16384kB)."""
        deadline = time.time() + SETTLE_S
        while True:
            conn = connect_or_fail(self.module, application_name=APP)
            try:
                cur = conn.cursor()
                after = current_settings(cur, self.wanted)
                cur.execute(SOURCE_SQL, (sorted(self.wanted),))
                sources = dict((row[0], row[1:]) for row in cur.fetchall())
                cur.execute("SELECT name, error FROM pg_file_settings WHERE name = ANY(%s) AND error IS NOT NULL",
                            (sorted(self.wanted),))
                errors = cur.fetchall()
            finally:
                conn.close()
            if errors:
                raise ChaosError('the reload refused %s' % '; '.join('%s: %s' % e for e in errors))
            wrong = [n for n in sorted(self.wanted) if not _took(after[n], before[n], self.wanted[n], sources.get(n))]
            if not wrong:
                return after
            if time.time() > deadline:
                shown = '; '.join('%s: asked %r, shows %r (pg_settings.source %r)' % (
                    n, self.wanted[n], after[n], (sources.get(n) or [None])[0]) for n in wrong)
                raise ChaosError('after ALTER SYSTEM and the reload, a new session does not show the asked value of %s (a '
                                 'value set for the role or database, or on the command line, overrides ALTER SYSTEM)' % shown)
            time.sleep(0.1)

    def finish(self, result):
        if self.params['state'] != 'present' or 'planned' not in result:
            return
        planned = result['planned']
        if self.module.check_mode:
            result['settings'] = dict((n, {'before': planned['before'][n], 'after': planned['wanted'][n],
                                           'previous': planned['previous'][n]}) for n in planned['wanted'])
            result['msg'] = 'would set %s with ALTER SYSTEM and reload; set nothing' % ', '.join(
                '%s=%s' % kv for kv in sorted(planned['wanted'].items()))
            return
        result['msg'] = '%s: %s' % (result.get('msg', ''), ', '.join(
            '%s %r -> %r' % (n, s['before'], s['after']) for n, s in sorted((result.get('settings') or {}).items())))


def _same(shown, asked):
    return shown.strip().lower() == asked.strip().lower()


def _took(shown, before, asked, source):
    """Whether a session shows the asked value: the same text, or a changed value read from postgresql.auto.conf."""
    if _same(shown, asked):
        return True
    origin, sourcefile = source or (None, None)
    return shown != before and origin == 'configuration file' and (sourcefile or '').endswith(AUTO_CONF)


def current_settings(cur, names):
    """current_setting() of each name, in this session."""
    values = {}
    for name in sorted(names):
        cur.execute('SELECT current_setting(%s)', (name,))
        values[name] = cur.fetchone()[0]
    return values


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(settings=dict(type='dict'))
    chaos = ChaosModule(argument_spec, required_if=[('state', 'present', ('settings',))])
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(SettingFault)


if __name__ == '__main__':
    main()
