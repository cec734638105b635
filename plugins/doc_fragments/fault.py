# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  name:
    description:
      - Name of this fault on the host. With the module's kind it forms the
        fault id in the ledger, so injecting the same name twice does not
        stack the fault.
      - The record keeps the options that define the fault (not the
        connection, C(ttl), C(experiment) or secret options). Asking for the
        same name with other such options while the fault is in place
        replaces it. The fault in place is reverted first, then the asked
        one is injected, and C(replaced) names each changed option with its
        value C(before) and C(after). Check mode says it would replace.
        M(pggit.chaos.pggit_chaos_clock) rewrites its timestamp file instead,
        and M(pggit.chaos.pggit_chaos_failover) moves one fault through its
        phases, so neither replaces.
      - 1 to 128 characters of C(A-Z), C(a-z), C(0-9), C(_), C(.) and C(-),
        starting with a letter or digit. Other names are refused, never
        rewritten, so two names never share one record.
    type: str
    required: true
  state:
    description:
      - V(present) injects the fault; V(absent) reverts it through the shared
        revert engine. Reverting a fault that is not there is C(ok).
    type: str
    default: present
    choices: [present, absent]
  ttl:
    description:
      - Maximum lifetime of the fault in seconds, from 5 to 86400. A detached
        process on the target reverts the fault when it expires, even when the
        controller is gone. Set it to at least the planned fault window.
      - Applying the fault is bounded by it too. SQL runs with a
        C(lock_timeout) and C(statement_timeout) of what is left of the TTL,
        and an apply that still outlasts the TTL is reverted as soon as it
        lands, and the task fails.
    type: int
    default: 300
  experiment:
    description:
      - Experiment id recorded with the fault, so that all faults of one
        experiment can be reverted together.
    type: str
  state_dir:
    description:
      - Directory on the target that holds the fault ledger, one JSON record
        per fault, written before the fault is applied.
      - Set from the host variable C(pggit_chaos_state_dir) when omitted and
        the variable is defined.
      - The reaper runs as this user from a copy of the engine in
        C(<state_dir>/lib), so the state dir, C(faults/) and C(lib/) are
        refused when they are symbolic links, belong to another user or are
        writable by group or others, and when another user could replace a
        parent directory.
    type: path
    default: /var/lib/pggit-chaos
notes:
  - The target must opt in with C(pggit_chaos_allowed=true) in its own
    inventory (host or group variables, or host_vars/group_vars next to the
    inventory). An extra var, play or task var can lower it to false, never
    raise it. With C(delegate_to) the delegate's inventory decides. The action
    plugin refuses every other host before anything runs there.
  - While a host holds faults, a boot hook (a systemd unit, or an C(@reboot)
    line in C(/etc/cron.d)) reverts expired faults and re-arms the reapers of
    the others after a reboot; it is removed with the last fault. Where there is
    neither systemd nor cron the module warns, and the record says so in C(boot_hook).
'''
