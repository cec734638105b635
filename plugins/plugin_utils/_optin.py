# Copyright: pggit.chaos contributors
# MIT License
"""What counts as a host's opt-in to chaos: one rule for the play and the fault actions."""
from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean

OPT_IN_VAR = 'pggit_chaos_allowed'


def opted_in(value):
    """True only for a value Ansible reads as a strict boolean true; anything else refuses."""
    try:
        return boolean(value, strict=True) if value is not None else False
    except TypeError:
        return False
