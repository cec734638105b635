# Copyright: pggit.chaos contributors
# MIT License
"""Argument spec of pggit_chaos_verdict, shared by its action plugin and its doc stub."""
from __future__ import annotations

TIMESTAMPS = ('started_at', 'inject_start', 'inject_end', 'window_end', 'revert_start', 'revert_end', 'finished_at')
FAULT_CHECKS = ('auto', 'none', 'connections', 'trigger', 'latency', 'partition', 'disk', 'disk_full', 'memory', 'cpu',
                'backend_kill', 'postmaster_kill', 'pause', 'lock', 'corrupt', 'clock', 'dependency', 'failover',
                'load', 'sessions', 'bandwidth')


def verdict_argument_spec():
    """Return a fresh argument spec for one raw experiment record."""
    return dict(
        experiment=dict(type='str', required=True),
        host=dict(type='str'),
        target_role=dict(type='str'),
        experiment_id=dict(type='str'),
        fault_check=dict(type='str', default='auto', choices=list(FAULT_CHECKS)),
        steady_state=dict(type='dict', default={}, options=dict(
            before=dict(type='dict'),
            during=dict(type='dict'),
            after=dict(type='dict'),
        )),
        fault=dict(type='dict', default={}),
        kills=dict(type='dict'),
        revert=dict(type='dict', default={}),
        reverted=dict(type='bool', default=False),
        revert_results=dict(type='list', elements='dict'),
        converge_results=dict(type='list', elements='dict'),
        workload=dict(type='dict'),
        workload_baseline=dict(type='dict'),
        history_at_window_end=dict(type='dict', default={}, options=dict(
            primary=dict(type='dict'),
            replicas=dict(type='list', elements='dict'),
        )),
        drift=dict(type='list', elements='str', default=[]),
        error=dict(type='str'),
        aborted=dict(type='bool', default=False),
        skipped_reason=dict(type='str'),
        parameters=dict(type='dict', default={}),
        timings=dict(type='dict', default={}, options=dict((name, dict(type='float')) for name in TIMESTAMPS)),
    )


def verdict_mutually_exclusive():
    """The raw revert results and a revert judged by the caller do not mix."""
    return [['revert_results', 'reverted'], ['revert_results', 'revert']]
