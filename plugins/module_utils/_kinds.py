# Copyright: pggit.chaos contributors
# MIT License
"""Every kind of fault the collection records in a ledger: the one list.

A fault module's ``Fault.kind`` must be one of these, and ``pggit_chaos_revert``
accepts only these in ``kinds`` (a unit test holds both to this list).
"""
from __future__ import annotations

FAULT_KINDS = ('trigger', 'latency', 'partition', 'bandwidth', 'connections', 'workload', 'disk', 'stress', 'process', 'lock', 'corrupt',
               'clock', 'setting', 'failover', 'host', 'sessions', 'load')
