# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.plugin_utils._fault_action import FaultActionModule


class ActionModule(FaultActionModule):
    """Opt-in guard, state_dir from the host, then the module (its session holder is a ledger-recorded program)."""
