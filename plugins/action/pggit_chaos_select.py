# Copyright: pggit.chaos contributors
# MIT License
"""Choose a play's chaos targets on the controller: each host's opt-in from its own inventory, then the blast radius.

A host is refused unless its inventory (as parsed from its sources) opts it in, nothing this run sees lowers it, and this
run reaches it where the inventory says (``ansible_host``, port, connection plugin).
"""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pggit.chaos.plugins.module_utils._select_spec import select_argument_spec
from ansible_collections.pggit.chaos.plugins.plugin_utils._optin import OPT_IN_VAR, UNDEFINED, Landing, Unresolved, decide

# The second opt-in of faults that write data files (index_corruption): reported per host, never required here.
DESTRUCTIVE_VAR = 'pggit_chaos_destructive'
from ansible_collections.pggit.chaos.plugins.plugin_utils._targets import select


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def _effective(self, task_vars, host, var=OPT_IN_VAR):
        """The opt-in this run sees for ``host``: the task's own variables for this host, hostvars for the others."""
        if host == task_vars.get('inventory_hostname'):
            return task_vars.get(var, UNDEFINED)
        try:
            other = task_vars['hostvars'][host]
            return other[var] if var in other else UNDEFINED
        except Exception as exc:  # pylint: disable=broad-except
            return Unresolved('hostvars[%r]' % host, exc)

    def _landing(self, task_vars, host):
        """Where this run connects to ``host``: the task's own variables for this host, the raw hostvars for the others."""
        connection = getattr(self._task, 'connection', None)
        transport = connection if isinstance(connection, str) else None
        if host == task_vars.get('inventory_hostname'):
            return Landing(task_vars, self._templar, transport)
        try:
            variables = task_vars['hostvars'].raw_get(host)
            templar = self._templar.copy_with_new_env(available_variables=variables) if self._templar is not None else None
            return Landing(variables, templar, transport)
        except Exception as exc:  # pylint: disable=broad-except
            return Landing({'ansible_host': Unresolved('hostvars[%r]' % host, exc)})

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=select_argument_spec())
        name = 'chaos_max_hosts' if 'chaos_max_hosts' in self._task.args else 'max_hosts'
        hosts = args['hosts'] if args['hosts'] is not None else list(task_vars.get('ansible_play_hosts_all') or [])
        me = task_vars.get('inventory_hostname')
        decisions = dict((h, decide(task_vars, h, self._effective(task_vars, h), self._templar, self._landing(task_vars, h))) for h in hosts)
        try:
            selection = select(hosts, dict((h, d.allowed) for h, d in decisions.items()), args['max_hosts'], name)
        except ValueError as exc:
            result.update(failed=True, changed=False, msg=str(exc))
            return result
        selection['reasons'] = dict((h, decisions[h].msg) for h in selection['refused'])
        # Which selected hosts also opted in to destructive faults, judged by the same rule (experiments that need it skip
        # the others, saying why, instead of failing on the refusal).
        selection['destructive'] = [h for h in selection['selected']
                                    if decide(task_vars, h, self._effective(task_vars, h, DESTRUCTIVE_VAR), self._templar,
                                              self._landing(task_vars, h), var=DESTRUCTIVE_VAR).allowed]
        result.update(changed=False, **selection)
        if me in decisions and not decisions[me].allowed:
            result.update(failed=True, msg=decisions[me].msg, opt_in=decisions[me].details())
        elif me in selection['selected']:
            result['msg'] = '%s selected (%d of %d opted-in host(s), limit %d)' % (
                me, len(selection['selected']), len(selection['selected']) + len(selection['spared']), selection['limit'])
        elif me in selection['spared']:
            result['msg'] = '%s spared by the blast radius (limit %d)' % (me, selection['limit'])
        return result
