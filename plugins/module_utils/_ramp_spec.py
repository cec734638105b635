# Copyright: pggit.chaos contributors
# MIT License
"""Argument spec of pggit_chaos_ramp, shared by its action plugin and its doc stub."""
from __future__ import annotations


def ramp_argument_spec():
    """Return a fresh argument spec for one ramp decision."""
    return dict(
        ramp=dict(type='raw', required=True),
        experiments=dict(type='raw', required=True),
        slo_ms=dict(type='raw'),
        preset=dict(type='dict', default={}),
        steps=dict(type='list', elements='raw', default=[]),
        host=dict(type='str'),
    )
