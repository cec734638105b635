# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.plugin_utils._fault_action import FaultActionModule

DESTRUCTIVE_VAR = 'pggit_chaos_destructive'


class ActionModule(FaultActionModule):
    """Opt-in guard (pggit_chaos_allowed AND pggit_chaos_destructive, both from the host's own inventory), state_dir from
    the host, then the module (it writes into a data file: the original page is saved and recorded first)."""

    EXTRA_OPT_INS = (DESTRUCTIVE_VAR,)
