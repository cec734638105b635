# Copyright: pggit.chaos contributors
# MIT License
"""Who may take faults: one rule for the target selection and the fault actions.

A host opts in from its own inventory, and nothing else can raise it:

- the *inventory value* of ``pggit_chaos_allowed`` comes from the inventory
  sources only: the inventory file's host and group variables, and the
  ``host_vars``/``group_vars`` next to the inventory (vars plugins), merged
  the way Ansible merges them.  Extra vars, play and task ``vars:``, role
  vars, ``set_fact``, ``include_vars`` and the ``host_vars``/``group_vars``
  next to the playbook are not part of it.  A templated inventory value is
  resolved from inventory variables alone;
- the *effective value* is what the task sees, from any source;
- a host is allowed only when both are Ansible's strict ``true``: an extra
  var or play var can lower the opt-in to false, never raise it.
"""
from __future__ import annotations

from ansible import constants as C
from ansible.inventory.helpers import get_group_vars, sort_groups
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.utils.vars import combine_vars
from ansible.vars.plugins import get_vars_from_inventory_sources

OPT_IN_VAR = 'pggit_chaos_allowed'
HOW_TO = ('set pggit_chaos_allowed: true in the inventory (host vars, group vars, or host_vars/group_vars next to the '
          'inventory) for hosts that may take faults')


class _Undefined(object):
    def __repr__(self):
        return 'not set'

    def __bool__(self):
        return False


UNDEFINED = _Undefined()


class Unresolved(object):
    """An inventory value that could not be templated from inventory variables alone."""

    def __init__(self, raw, error):
        self.raw = raw
        self.error = error

    def __repr__(self):
        return '%r (unresolved: %s)' % (self.raw, self.error)


def opted_in(value):
    """True only for a value Ansible reads as a strict boolean true; anything else refuses."""
    if value is None or isinstance(value, (_Undefined, Unresolved)):
        return False
    try:
        return boolean(value, strict=True)
    except TypeError:
        return False


def shown(value):
    """A value as a message shows it: true/false for booleans, 'not set' when undefined."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return repr(value)


def find_host(inventory, name):
    """The inventory Host for a name or an address (as delegation finds it), or None when it is not in the inventory."""
    host = inventory.get_host(name)
    if host is not None:
        return host
    for candidate in inventory.get_hosts(ignore_limits=True, ignore_restrictions=True):
        if candidate.address == name:
            return candidate
    return None


def inventory_vars(inventory, loader, host, stage='task'):
    """A host's variables from its inventory sources only, merged in Ansible's order.

    Mirrors ``VariableManager.get_vars`` for a host, keeping the inventory
    entries of ``VARIABLE_PRECEDENCE`` and leaving out everything that comes
    from the playbook side (play-adjacent vars files, play, task, facts, extra vars).
    """
    all_group = inventory.groups.get('all')
    groups = sort_groups([g for g in host.get_groups() if g.name != 'all'])
    sources = getattr(inventory, '_sources', None) or []

    def plugins(entities):
        return get_vars_from_inventory_sources(loader, sources, entities, stage)

    entries = {
        'all_inventory': lambda: all_group.get_vars() if all_group is not None else {},
        'groups_inventory': lambda: get_group_vars(groups),
        'all_plugins_inventory': lambda: plugins([all_group]) if all_group is not None else {},
        'groups_plugins_inventory': lambda: plugins(groups),
        'plugins_by_groups': lambda: plugins(groups),
    }
    data = {}
    for entry in C.VARIABLE_PRECEDENCE:
        if entry in entries:
            data = combine_vars(data, entries[entry]())
    data = combine_vars(data, host.get_vars())
    return combine_vars(data, plugins([host]))


class Decision(object):
    def __init__(self, host, allowed, msg, inventory=UNDEFINED, effective=UNDEFINED):
        self.host = host
        self.allowed = allowed
        self.msg = msg
        self.inventory = inventory
        self.effective = effective

    def details(self):
        return {'host': self.host, 'inventory': _plain(self.inventory), 'effective': _plain(self.effective), 'allowed': self.allowed}


def _plain(value):
    if isinstance(value, _Undefined):
        return None
    if isinstance(value, Unresolved):
        return repr(value)
    return value


def judge(host, inventory_value, effective_value, in_inventory=True):
    """The rule, on resolved values: allowed only when the inventory and the run both say true."""
    inventory_ok, effective_ok = opted_in(inventory_value), opted_in(effective_value)
    if inventory_ok and effective_ok:
        return Decision(host, True, None, inventory_value, effective_value)
    if not in_inventory:
        msg = ('host %s is not in the inventory, so it cannot have opted in to chaos; add it to the inventory and %s'
               % (host, HOW_TO))
    elif not inventory_ok and effective_ok:
        msg = ('host %s has not opted in to chaos in its inventory (pggit_chaos_allowed is %s there); an extra-var or play var '
               'cannot override it; %s' % (host, shown(inventory_value), HOW_TO))
    elif not inventory_ok:
        msg = 'host %s has not opted in to chaos: pggit_chaos_allowed is %s in its inventory; %s' % (host, shown(inventory_value), HOW_TO)
    else:
        msg = ('host %s opted in to chaos in its inventory, but pggit_chaos_allowed is %s for this run (a play, task or extra var '
               'lowered it); refusing' % (host, shown(effective_value)))
    return Decision(host, False, msg, inventory_value, effective_value)


def inventory_value(task_vars, host_name, templar=None):
    """(in_inventory, value) of the opt-in in ``host_name``'s inventory.

    The inventory comes from the ``hostvars`` object Ansible passes to every
    task.  Without it nothing can be proven, so the caller refuses.
    """
    hostvars = task_vars.get('hostvars')
    inventory = getattr(hostvars, '_inventory', None)
    if inventory is None:
        raise LookupError('cannot read the inventory to check the opt-in of host %s' % host_name)
    host = find_host(inventory, host_name)
    if host is None:
        return False, UNDEFINED
    variables = inventory_vars(inventory, getattr(hostvars, '_loader', None), host)
    if OPT_IN_VAR not in variables:
        return True, UNDEFINED
    value = variables[OPT_IN_VAR]
    if templar is not None and isinstance(value, str):
        try:
            value = templar.copy_with_new_env(available_variables=variables).template(value)
        except Exception as exc:  # pylint: disable=broad-except
            return True, Unresolved(variables[OPT_IN_VAR], exc)
    return True, value


def decide(task_vars, host_name, effective_value, templar=None):
    """Apply the rule to one host: its inventory (read from ``task_vars['hostvars']``) and the value this run sees."""
    try:
        in_inventory, inventory = inventory_value(task_vars, host_name, templar)
    except LookupError as exc:
        return Decision(host_name, False, '%s; refusing' % exc, UNDEFINED, effective_value)
    if templar is not None and isinstance(effective_value, str):
        try:
            effective_value = templar.template(effective_value)
        except Exception as exc:  # pylint: disable=broad-except
            effective_value = Unresolved(effective_value, exc)
    return judge(host_name, inventory, effective_value, in_inventory)
