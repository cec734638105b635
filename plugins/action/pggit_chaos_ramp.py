# Copyright: pggit.chaos contributors
# MIT License
"""Plan a ramp, apply its stop rule after each step and, at its end, return the ramp's report entry."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pggit.chaos.plugins.module_utils._ramp_spec import ramp_argument_spec
from ansible_collections.pggit.chaos.plugins.plugin_utils._ramp import RampError, ramp_entry, ramp_plan, ramp_state


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=ramp_argument_spec())
        host = args.get('host') or task_vars.get('inventory_hostname')
        check_mode = bool(self._task.check_mode)
        try:
            plan = ramp_plan(args['ramp'], args['experiments'], slo_ms=args.get('slo_ms'), preset=args.get('preset'))
            state = ramp_state(plan, args['steps'], check_mode)
        except RampError as exc:
            result.update(failed=True, changed=False, msg=str(exc))
            return result
        result.update(changed=False, experiment=plan['experiment'], param=plan['param'], levels=plan['levels'],
                      slo_ms=plan['slo_ms'], done=state['done'], stopped=state['stopped'], next_level=state['next_level'],
                      last_passing=state['last_passing'], first_failing=state['first_failing'],
                      stop_reason=state['stop_reason'], inconclusive=state['inconclusive'], steps=state['rows'])
        if state['done'] and state['rows']:
            entry = ramp_entry(plan, args['steps'], host, check_mode)
            result.update(pggit_chaos_entry=entry, msg=entry['ramp']['summary'])
        else:
            result['msg'] = 'ramp of %s over %s: %d of %d step(s) run, next %s' % (
                plan['experiment'], plan['param'], len(state['rows']), len(plan['levels']), state['next_level'])
        return result
