# Copyright: pggit.chaos contributors
# MIT License
"""Judge one chaos experiment on the controller from its raw facts and return its report entry."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pggit.chaos.plugins.module_utils._verdict_spec import verdict_argument_spec, verdict_mutually_exclusive
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import judge


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=verdict_argument_spec(),
                                                  mutually_exclusive=verdict_mutually_exclusive())
        args['host'] = args.get('host') or task_vars.get('inventory_hostname')
        entry = judge(args)
        # A failed experiment is a finding, not a task failure: the playbook decides.
        result.update(changed=False, pggit_chaos_entry=entry, status=entry['status'],
                      msg='%s@%s: %s' % (entry['experiment'], entry['host'], entry['status']))
        return result
