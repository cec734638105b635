# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.plugin_utils._fault_action import FaultActionModule


class ActionModule(FaultActionModule):
    """Opt-in guard of the database host, then the module (state_dir from the host that runs it).

    The workload may run on a client (``delegate_to``): what it loads is the
    database of ``inventory_hostname``, so that host's opt-in decides, not the
    client's.  The workload's ledger record lives on the client, so the
    state_dir still comes from the delegate's variables.
    """

    OPT_IN_OF = 'target'
