#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_trigger
short_description: Disable pgGit event triggers for a bounded time
version_added: 0.1.0
description:
  - Disables every pgGit event trigger (named C(pggit%)), or a named list of
    them, so DDL goes untracked, and reports which pgGit triggers stayed on.
  - On a full pgGit install more than one C(ddl_command_end) trigger records
    DDL, so disabling only C(pggit_ddl_trigger) does not stop tracking; the
    default acts on all of them, and RV(tracking) says whether tracking is
    expected to be off.
  - The undo recipe (each trigger back to its recorded mode, C(ENABLE),
    C(ENABLE REPLICA) or C(ENABLE ALWAYS)) is written to the ledger before the
    first trigger is touched, and a target-side reaper applies it at the TTL.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  triggers:
    description:
      - Event triggers to disable. Empty means every trigger named C(pggit%).
      - Each name must be an existing pgGit event trigger.
    type: list
    elements: str
    default: []
  drop_schema:
    description:
      - Schema that holds objects created on purpose while tracking is off.
        Every revert path (O(state=absent), the revert module and the TTL)
        drops it with C(CASCADE) I(before) re-enabling the triggers, so the
        untracked objects leave no drift and no history behind.
      - The name is taken exactly as written (case and quotes included), as
        C(nspname) holds it; it is not parsed as an SQL identifier.
      - Must not be V(pggit), V(public), V(information_schema) or a C(pg_)
        schema. Names are exact, so a schema literally named C(PGGIT) is a
        scratch schema.
      - Must not exist when the fault is injected, since the revert drops it
        with C(CASCADE). It is meant to be made during the fault.
      - If the drop fails (a lock held past 5 seconds, for example), the
        triggers are re-enabled all the same, the revert reports the drop
        failure, and the record stays so that the reaper retries the drop.
    type: str
'''

EXAMPLES = r'''
- name: Turn pgGit tracking off for at most two minutes
  pggit.chaos.pggit_chaos_trigger:
    name: tracking-off
    db: app
    ttl: 120

- name: Disable only the main DDL trigger (tracking may stay on)
  pggit.chaos.pggit_chaos_trigger:
    name: main-trigger-off
    triggers: [pggit_ddl_trigger]
    ttl: 60

- name: Turn tracking back on
  pggit.chaos.pggit_chaos_trigger:
    name: tracking-off
    state: absent
'''

RETURN = r'''
fault_id:
  description: Id of the fault in the ledger.
  returned: always
  type: str
  sample: trigger--tracking-off
disabled:
  description: Triggers this run disabled.
  returned: when state=present and changed
  type: list
  elements: str
  sample: [pggit_ddl_trigger, pggit_drop_trigger]
left_enabled:
  description: pgGit triggers that are still enabled after the fault.
  returned: when state=present and changed
  type: list
  elements: str
  sample: []
tracking:
  description: V(off) when no pgGit C(ddl_command_end) trigger is left enabled, else V(partial).
  returned: when state=present and changed
  type: str
  sample: 'off'
current:
  description: Every pgGit event trigger with its event and mode (C(O), C(R), C(A) or C(D)) before this run.
  returned: when state=present
  type: dict
record:
  description: The ledger record (without secrets).
  returned: when a fault is in place or was reverted
  type: dict
revert:
  description: Outcome of the shared revert engine.
  returned: when state=absent and changed
  type: dict
'''

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

TRIGGERS_SQL = ("SELECT evtname, evtevent, evtenabled FROM pg_event_trigger "
                "WHERE evtname LIKE 'pggit%' ORDER BY evtname")


class TriggerFault(Fault):
    kind = 'trigger'

    def __init__(self, module):
        super(TriggerFault, self).__init__(module)
        self.conn = None

    def _conn(self):
        if self.conn is None:
            self.conn = connect_or_fail(self.module, application_name='pggit-chaos-trigger')
        return self.conn

    def observe(self):
        cur = _pgconn.execute(self._conn().cursor(), TRIGGERS_SQL, what='listing pgGit event triggers')
        return dict((name, {'event': event, 'mode': mode}) for name, event, mode in cur.fetchall())

    def _selected(self, current):
        wanted = self.params['triggers'] or sorted(current)
        if not current:
            self.module.fail_json(msg="no pgGit event triggers (pggit%%) in %s: is pgGit installed?"
                                  % _pgconn.describe(self.params))
        unknown = [t for t in wanted if t not in current]
        if unknown:
            self.module.fail_json(msg="triggers: unknown event trigger '%s'; pgGit event triggers here: %s"
                                  % ("', '".join(unknown), ', '.join(sorted(current))))
        return wanted

    def validate(self):
        schema = self.params['drop_schema']
        if schema is not None and _steps.protected_schema(schema):
            self.module.fail_json(msg="drop_schema must name a scratch schema, not '%s' (pggit, public, information_schema "
                                      "and pg_* are never dropped; names are exact, so \"PGGIT\" is a scratch schema)" % schema)

    def noop_reason(self, current):
        wanted = self._selected(current)
        if all(current[t]['mode'] == 'D' for t in wanted):
            return 'every selected trigger is already disabled; nothing to inject'
        return None

    def in_place(self, record, current):
        names = record.get('detail', {}).get('disable', [])
        return all(current.get(n, {}).get('mode', 'D') == 'D' for n in names)

    def plan(self, current):
        wanted = self._selected(current)
        conn = _pgconn.stored_conn(self.params)
        undo = [{'type': 'pg_event_trigger_enable', 'conn': conn,
                 'triggers': [{'name': t, 'mode': current[t]['mode']} for t in wanted]}]
        if self.params['drop_schema']:
            schema = self.params['drop_schema']
            cur = _pgconn.execute(self._conn().cursor(), 'SELECT 1 FROM pg_namespace WHERE nspname = %s', (schema,),
                                  what='looking for the drop_schema', option='drop_schema')
            if cur.fetchone() is not None:
                self.module.fail_json(msg="drop_schema '%s' already exists: the revert drops it with CASCADE, so it must be "
                                          "a schema made during the fault, never one that was there before" % schema)
            undo.append({'type': 'pg_drop_schema', 'conn': conn, 'schema': schema})
        after = dict((n, dict(v, mode='D' if n in wanted else v['mode'])) for n, v in current.items())
        left = sorted(n for n, v in after.items() if v['mode'] != 'D')
        tracking = 'partial' if any(after[n]['event'] == 'ddl_command_end' for n in left) else 'off'
        detail = {'disable': [t for t in wanted if current[t]['mode'] != 'D'], 'left_enabled': left, 'tracking': tracking}
        return undo, detail, after

    def apply(self, detail):
        conn = self._conn()
        conn.autocommit = False
        with conn:
            cur = conn.cursor()
            self.bound_sql(cur)  # an ALTER stuck behind a lock gives up before the TTL would expire
            for name in detail['disable']:
                _pgconn.execute(cur, _pgconn.sql.SQL('ALTER EVENT TRIGGER {} DISABLE').format(_pgconn.sql.Identifier(name)),
                                what='disabling event trigger %s' % name, option='triggers')
        conn.autocommit = True
        return {'disabled': detail['disable'], 'left_enabled': detail['left_enabled'], 'tracking': detail['tracking']}

    def secret(self):
        return _pgconn.secret_conn(self.params)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        triggers=dict(type='list', elements='str', default=[]),
        drop_schema=dict(type='str'),
    )
    ChaosModule(argument_spec).run(TriggerFault)


if __name__ == '__main__':
    main()
