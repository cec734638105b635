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
    type: path
    default: /var/lib/pggit-chaos
notes:
  - The target must opt in with the host variable C(pggit_chaos_allowed=true);
    the action plugin refuses every other host before anything runs there.
'''
