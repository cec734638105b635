# Copyright: pggit.chaos contributors
# MIT License
"""Argument spec of pggit_chaos_select, shared by its action plugin and its doc stub."""
from __future__ import annotations


def select_argument_spec():
    """Return a fresh argument spec for target selection."""
    return dict(
        hosts=dict(type='list', elements='str'),
        max_hosts=dict(type='raw', default='all', aliases=['chaos_max_hosts']),
    )
