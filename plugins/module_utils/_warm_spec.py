# Copyright: pggit.chaos contributors
# MIT License
"""Argument spec of pggit_chaos_warm, shared by its action plugin and its doc stub."""
from __future__ import annotations


def warm_argument_spec():
    """Return a fresh argument spec for the module cache warm-up."""
    return dict(
        roles=dict(type='list', elements='str', required=True),
        timeout=dict(type='int', default=120),
    )
