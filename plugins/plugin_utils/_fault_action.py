# Copyright: pggit.chaos contributors
# MIT License
"""Controller-side guard shared by the fault modules' action plugins.

It runs before anything reaches the target:
- refuses hosts that have not opted in with ``pggit_chaos_allowed: true`` in
  their own inventory, or whose opt-in this run lowered to false, or that the
  task would reach elsewhere than the inventory says (another ``ansible_host``,
  port or connection plugin) (the rule is in ``_optin``; with ``delegate_to``
  the delegate's inventory decides); reverting is always allowed;
- refuses, by the same rule, hosts that lack a second opt-in a fault asks for
  (``EXTRA_OPT_INS``, such as ``pggit_chaos_destructive``);
- fills ``state_dir`` from the host variable ``pggit_chaos_state_dir``.
"""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pggit.chaos.plugins.plugin_utils._optin import OPT_IN_VAR, UNDEFINED, Landing, decide


class FaultActionModule(ActionBase):
    TRANSFERS_FILES = False
    REQUIRES_OPT_IN = True
    # Whose opt-in counts under delegate_to: 'delegate' (where the fault lands, the default) or
    # 'target' (inventory_hostname: the workload loads the target's database from a client).
    OPT_IN_OF = 'delegate'
    # Second opt-ins a fault needs besides pggit_chaos_allowed (pggit_chaos_corrupt: pggit_chaos_destructive), each judged
    # by the same rule, on the same host: its own inventory and this run must both say true.
    EXTRA_OPT_INS = ()
    INJECT_STATE_DIR = True
    _supports_check_mode = True
    _supports_async = True

    def _host_vars(self, task_vars):
        """The variables of the host the fault lands on (the delegate, if any)."""
        delegate = getattr(self._task, 'delegate_to', None)
        if isinstance(delegate, str) and delegate:
            return (task_vars.get('ansible_delegated_vars') or {}).get(delegate) or {}
        return task_vars

    def _transport(self):
        """The connection plugin this task uses, when the connection or the task names one."""
        for name in (getattr(self._connection, '_load_name', None), getattr(self._task, 'connection', None)):
            if isinstance(name, str) and name:
                return name
        return None

    def _var(self, task_vars, name):
        value = self._host_vars(task_vars).get(name)
        return self._templar.template(value) if value is not None else None

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(FaultActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        state_dir = self._var(task_vars, 'pggit_chaos_state_dir')
        if self.INJECT_STATE_DIR and state_dir and not args.get('state_dir'):
            args['state_dir'] = state_dir
        if self.REQUIRES_OPT_IN and args.get('state', 'present') != 'absent':
            delegate = getattr(self._task, 'delegate_to', None)
            delegated = isinstance(delegate, str) and bool(delegate)
            if self.OPT_IN_OF == 'delegate' and delegated:
                landing_vars = self._host_vars(task_vars)
                host, effective = delegate, landing_vars.get(OPT_IN_VAR, UNDEFINED)
                landing = Landing(landing_vars, self._templar.copy_with_new_env(available_variables=landing_vars), self._transport())
            else:
                host, effective = task_vars.get('inventory_hostname', '?'), task_vars.get(OPT_IN_VAR, UNDEFINED)
                # Judging the target while the task connects to a client: the client is not where the opt-in is
                # checked, and where the load goes is the database login, not the connection.
                landing = None if delegated else Landing(task_vars, self._templar, self._transport())
            decision = decide(task_vars, host, effective, self._templar, landing)
            seen = landing_vars if self.OPT_IN_OF == 'delegate' and delegated else task_vars
            for var in self.EXTRA_OPT_INS:
                if not decision.allowed:
                    break
                decision = decide(task_vars, host, seen.get(var, UNDEFINED), self._templar, None, var=var)
            if not decision.allowed:
                result.update(failed=True, changed=False, refused=True, msg=decision.msg, opt_in=decision.details())
                return result
        module = self._task.resolved_action or self._task.action
        result.update(self._execute_module(module_name=module, module_args=args, task_vars=task_vars,
                                           wrap_async=self._task.async_val))
        return result


class RevertActionModule(FaultActionModule):
    REQUIRES_OPT_IN = False
