# Copyright: pggit.chaos contributors
# MIT License
"""Who may take faults: one rule for the target selection and the fault actions.

A host opts in from its own inventory, and nothing else can raise it:

- the *inventory value* of ``pggit_chaos_allowed`` comes from the inventory
  sources only, as parsed from them: the inventory file's host and group
  variables, and the ``host_vars``/``group_vars`` next to the inventory (vars
  plugins), merged the way Ansible merges them.  Extra vars, play and task
  ``vars:``, role vars, ``set_fact``, ``include_vars`` and the
  ``host_vars``/``group_vars`` next to the playbook are not part of it, and
  neither is anything a run writes into the live inventory (``add_host``,
  ``group_by``): the inventory is parsed again from its sources (once per
  live inventory and process), and a host that is not in that parse, such as
  one added at run time or Ansible's implicit ``localhost``, is not in the
  inventory.  A templated inventory value is resolved from inventory
  variables alone;
- the *effective value* is what the task sees, from any source;
- a host is allowed only when both are Ansible's strict ``true``: an extra
  var or play var can lower the opt-in to false, never raise it;
- the opt-in belongs to the inventory's host, so the connection must go where
  the inventory says: ``ansible_host``, ``ansible_port``, their ``ansible_ssh_``
  aliases and ``ansible_connection`` as the task uses them must match the
  inventory's (unset there: the host's name, no port, Ansible's default
  connection).
"""
from __future__ import annotations

from ansible import constants as C
from ansible.inventory.helpers import get_group_vars, sort_groups
from ansible.inventory.manager import InventoryManager
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


_PRISTINE = '_pggit_chaos_pristine'


def pristine_inventory(live, loader):
    """The inventory as parsed from the live inventory's sources, untouched by the run (cached on ``live``).

    ``add_host`` and ``group_by`` write into the live inventory, so its hosts
    and groups cannot tell what the inventory says; a fresh InventoryManager
    over the same sources can.  Parsed once per live inventory and sources in
    this process.
    """
    sources = tuple(getattr(live, '_sources', None) or ())
    cached = getattr(live, _PRISTINE, None)
    if cached is not None and cached[0] == sources:
        return cached[1]
    if loader is None:
        raise LookupError('no loader to parse the inventory sources %s' % ', '.join(sources))
    try:
        fresh = InventoryManager(loader=loader, sources=list(sources))
    except Exception as exc:  # pylint: disable=broad-except
        raise LookupError('cannot parse the inventory sources %s: %s' % (', '.join(sources), exc)) from None
    setattr(live, _PRISTINE, (sources, fresh))
    return fresh


def find_host(inventory, name):
    """The inventory Host for a name or an address (as delegation finds it), or None when it is not in the inventory.

    Ansible's implicit ``localhost`` is not in the inventory: it sees the ``all`` group's variables without being listed.
    """
    host = inventory.get_host(name)
    if host is not None:
        return None if getattr(host, 'implicit', False) else host
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
    def __init__(self, host, allowed, msg, inventory=UNDEFINED, effective=UNDEFINED, connection=None):
        self.host = host
        self.allowed = allowed
        self.msg = msg
        self.inventory = inventory
        self.effective = effective
        self.connection = connection

    def details(self):
        details = {'host': self.host, 'inventory': _plain(self.inventory), 'effective': _plain(self.effective), 'allowed': self.allowed}
        if self.connection is not None:
            details['connection'] = self.connection
        return details


def _plain(value):
    if isinstance(value, _Undefined):
        return None
    if isinstance(value, Unresolved):
        return repr(value)
    return value


def how_to(var=OPT_IN_VAR):
    """What to do to opt a host in to ``var``."""
    return HOW_TO if var == OPT_IN_VAR else HOW_TO.replace(OPT_IN_VAR, var).replace('may take faults', 'may take faults of that kind')


def judge(host, inventory_value, effective_value, in_inventory=True, implicit=False, var=OPT_IN_VAR):
    """The rule, on resolved values: allowed only when the inventory and the run both say true.

    ``var``: the opt-in judged (``pggit_chaos_allowed``, or a second one such as ``pggit_chaos_destructive``)."""
    inventory_ok, effective_ok = opted_in(inventory_value), opted_in(effective_value)
    if inventory_ok and effective_ok and in_inventory:
        return Decision(host, True, None, inventory_value, effective_value)
    topic = 'chaos' if var == OPT_IN_VAR else var
    if implicit:
        msg = ("host %s has not opted in to %s: it is not in the inventory but Ansible's implicit localhost (the controller), "
               "which sees the all group's variables without being listed; list localhost in the inventory with "
               "%s: true only if faults may run on the controller" % (host, topic, var))
    elif not in_inventory:
        msg = ('host %s is not in the inventory, so it cannot have opted in to %s; add it to the inventory and %s'
               % (host, topic, how_to(var)))
    elif not inventory_ok and effective_ok:
        msg = ('host %s has not opted in to %s in its inventory (%s is %s there); an extra-var or play var '
               'cannot override it; %s' % (host, topic, var, shown(inventory_value), how_to(var)))
    elif not inventory_ok:
        msg = 'host %s has not opted in to %s: %s is %s in its inventory; %s' % (host, topic, var, shown(inventory_value), how_to(var))
    else:
        msg = ('host %s opted in to %s in its inventory, but %s is %s for this run (a play, task or extra var '
               'lowered it); refusing' % (host, topic, var, shown(effective_value)))
    return Decision(host, False, msg, inventory_value, effective_value)


def _template(value, templar):
    if templar is None or not isinstance(value, str):
        return value
    try:
        return templar.template(value)
    except Exception as exc:  # pylint: disable=broad-except
        return Unresolved(value, exc)


def _inventory_templar(templar, variables):
    return templar.copy_with_new_env(available_variables=variables) if templar is not None else None


def inventory_host(task_vars, host_name):
    """(host, variables) of ``host_name`` in the inventory as parsed from its sources; (None, None) when it is not there.

    The sources and loader come from the ``hostvars`` object Ansible passes to
    every task.  Without them nothing can be proven: LookupError, and the
    caller refuses.
    """
    hostvars = task_vars.get('hostvars')
    live = getattr(hostvars, '_inventory', None)
    if live is None:
        raise LookupError('cannot read the inventory to check the opt-in of host %s' % host_name)
    try:
        inventory = pristine_inventory(live, getattr(hostvars, '_loader', None))
    except LookupError as exc:
        raise LookupError('cannot read the inventory to check the opt-in of host %s: %s' % (host_name, exc)) from None
    host = find_host(inventory, host_name)
    if host is None:
        return None, None
    return host, inventory_vars(inventory, getattr(hostvars, '_loader', None), host)


def _opt_in_of(variables, templar, var=OPT_IN_VAR):
    if var not in variables:
        return UNDEFINED
    return _template(variables[var], _inventory_templar(templar, variables))


def inventory_value(task_vars, host_name, templar=None):
    """(in_inventory, value) of the opt-in in ``host_name``'s inventory (see ``inventory_host``)."""
    host, variables = inventory_host(task_vars, host_name)
    if host is None:
        return False, UNDEFINED
    return True, _opt_in_of(variables, templar)


# -- where the fault lands: the connection must be the inventory's ------------------------------------
CONNECTION_VARS = ('ansible_host', 'ansible_ssh_host', 'ansible_port', 'ansible_ssh_port', 'ansible_connection')


class Landing(object):
    """Where a task connects for a host: its connection variables as this run sees them.

    ``variables``: the variables of that host as the task uses them (the task
    variables, or the delegate's); ``templar`` resolves them in that context;
    ``transport``: the connection plugin in use, when no variable names it.
    """

    def __init__(self, variables, templar=None, transport=None):
        self.raw = {}
        for name in CONNECTION_VARS:
            try:
                value = variables[name] if name in variables else None
            except Exception as exc:  # pylint: disable=broad-except
                value = Unresolved(name, exc)
            if value is not None:
                self.raw[name] = value
        if 'ansible_connection' not in self.raw and isinstance(transport, str) and transport:
            self.raw['ansible_connection'] = transport
        self.templar = templar


def _first(values, *names):
    for name in names:
        if values.get(name) is not None:
            return values[name]
    return None


# What each check reads from a set of connection variables (an alias counts where Ansible would use it).
# The aliases first, so that a message names the variable that was set.
_CHECKS = (
    ('ansible_ssh_host', lambda v: v.get('ansible_ssh_host')),
    ('ansible_host', lambda v: _first(v, 'ansible_host', 'ansible_ssh_host')),
    ('ansible_ssh_port', lambda v: v.get('ansible_ssh_port')),
    ('ansible_port', lambda v: _first(v, 'ansible_port', 'ansible_ssh_port')),
    ('ansible_connection', lambda v: v.get('ansible_connection')),
)


def _same(name, here, there):
    if isinstance(here, Unresolved) or isinstance(there, Unresolved):
        return False
    if name == 'ansible_connection':
        here, there = (_transport_name(x) for x in (here, there))
    return str(here) == str(there)


def _transport_name(value):
    value = str(value)
    for prefix in ('ansible.builtin.', 'ansible.legacy.'):
        if value.startswith(prefix):
            value = value[len(prefix):]
    return 'ssh' if value == 'smart' else value


def connection_mismatch(host_name, variables, landing, templar=None):
    """None when ``landing`` connects where the inventory ``variables`` say; else (details, message) of the first difference.

    A value is compared as given when both sides give the same one, else
    resolved (this run's in its own context, the inventory's from inventory
    variables alone); a value that cannot be resolved differs.
    """
    inventory_templar = _inventory_templar(templar, variables)
    for name, pick in _CHECKS:
        here_raw, there_raw = pick(landing.raw), pick(variables)
        if name == 'ansible_connection' and here_raw is None:
            continue  # nothing tells which plugin this run uses
        if here_raw == there_raw and not isinstance(here_raw, Unresolved):
            continue  # the same value from the same place
        here, there = _template(here_raw, landing.templar), _template(there_raw, inventory_templar)
        default = {'ansible_host': host_name, 'ansible_connection': C.DEFAULT_TRANSPORT}.get(name)
        if here is None:
            here = default
        compared = there if there is not None else default
        if here is None and compared is None or here is not None and compared is not None and _same(name, here, compared):
            continue
        if there is None and name == 'ansible_host':
            inventory_says = "not set in the inventory (Ansible connects to %s)" % shown(default)
        elif there is None and name == 'ansible_connection':
            inventory_says = "not set in the inventory (Ansible's default: %s)" % shown(default)
        elif there is None:
            inventory_says = 'not set in the inventory'
        else:
            inventory_says = '%s in the inventory' % shown(there)
        msg = ("host %s: %s is %s here but %s: the opt-in belongs to the inventory's host; refusing"
               % (host_name, name, 'not set' if here is None else shown(here), inventory_says))
        return {'variable': name, 'here': _plain(here), 'inventory': _plain(there)}, msg
    return None


def decide(task_vars, host_name, effective_value, templar=None, landing=None, var=OPT_IN_VAR):
    """Apply the rule to one host: its inventory (parsed again from the sources of ``task_vars['hostvars']``) and the value
    this run sees; with ``landing`` (a ``Landing``), also that the task connects to the inventory's host.

    ``var``: the opt-in variable judged; a second opt-in (``pggit_chaos_destructive``) is judged by the same rule."""
    try:
        host, variables = inventory_host(task_vars, host_name)
    except LookupError as exc:
        return Decision(host_name, False, '%s; refusing' % exc, UNDEFINED, effective_value)
    inventory = UNDEFINED if host is None else _opt_in_of(variables, templar, var)
    effective_value = _template(effective_value, templar)
    implicit = host is None and host_name in C.LOCALHOST  # not listed, yet get_host() answers: the implicit localhost
    decision = judge(host_name, inventory, effective_value, host is not None, implicit, var)
    if decision.allowed and landing is not None:
        mismatch = connection_mismatch(host_name, variables, landing, templar)
        if mismatch is not None:
            return Decision(host_name, False, mismatch[1], inventory, effective_value, connection=mismatch[0])
    return decision
