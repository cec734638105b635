# Copyright: pggit.chaos contributors
# MIT License
"""The chaos monitor's series, assembled per experiment, and their OpenMetrics text.

``build_monitor`` joins the samples of the steady-state probes (before, the
window's watch, after) into one series and adds the workload's DDL latency per
sample (p50/p95 of the DDL that completed in the second before it).

``render_openmetrics`` writes ``chaos-metrics.prom`` for the node_exporter
textfile collector. That collector refuses a file whose samples carry
timestamps ("contains unsupported client-side timestamps, skipping entire
file"), so every series is written as the values of its phase (the last value,
and the peak where a peak matters) with no timestamp, labelled experiment, host
and phase. The text is the common subset of the Prometheus text format 0.0.4
and OpenMetrics 1.0 (HELP and TYPE lines, gauges only, ``# EOF`` at the end,
which the text format reads as a comment), so both parsers accept it.
"""
from __future__ import annotations

import datetime
import math

PREFIX = 'pggit_chaos_'
PHASE_ORDER = ('before', 'window', 'after')
# Verdict as one number, for alert rules (pggit_chaos_verdict < 1 and > -2: failed or aborted).
VERDICT_VALUES = {'passed': 1, 'failed': 0, 'aborted': -1, 'skipped': -2}
STATUSES = ('passed', 'failed', 'aborted', 'skipped')
# How far back from a sample its DDL latency looks, at most (the monitor samples every second).
DDL_BUCKET_S = 1.0


def _num(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def percentile(values, pct):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(math.ceil(pct / 100.0 * len(ordered))) - 1))]


def op_ends(workload):
    """(completed_at, ms) of each DDL in a workload result (pggit_workload's op_times: [started, ms, outcome])."""
    ends = []
    if not isinstance(workload, dict):
        return ends
    for item in workload.get('op_times') or []:
        if isinstance(item, (list, tuple)) and len(item) == 3:
            started, ms = _num(item[0]), _num(item[1])
            if started is not None and ms is not None:
                ends.append((started + ms / 1000.0, ms))
    return sorted(ends)


def _samples(result):
    if not isinstance(result, dict):
        return []
    return [dict(s) for s in result.get('series') or [] if isinstance(s, dict) and _num(s.get('t')) is not None]


def build_monitor(before=None, during=None, after=None, workload=None):
    """The monitor of one experiment: {series, interval_s, cost} or None when no probe sampled.

    Each sample of the merged series gets ddl_p50_ms, ddl_p95_ms and
    ddl_count when the workload completed DDL in the second before it
    (after the previous sample); with no workload result those keys are left out."""
    series = sorted(_samples(before) + _samples(during) + _samples(after), key=lambda s: s['t'])
    if not series:
        return None
    ends = op_ends(workload)
    previous = None
    for sample in series:
        low = sample['t'] - DDL_BUCKET_S if previous is None else max(previous, sample['t'] - DDL_BUCKET_S)
        done = [ms for end, ms in ends if low < end <= sample['t']]
        if done:
            sample.update(ddl_p50_ms=percentile(done, 50), ddl_p95_ms=percentile(done, 95), ddl_count=len(done))
        previous = sample['t']
    window = [s['t'] for s in series if s.get('phase') == 'window']
    gaps = sorted(b - a for a, b in zip(window, window[1:]))
    costs = sorted(s['probe_ms'] for s in series if _num(s.get('probe_ms')) is not None)
    return {
        'series': series,
        'interval_s': round(gaps[len(gaps) // 2], 3) if gaps else None,
        'cost': {'samples': len(costs), 'p50_ms': costs[len(costs) // 2], 'max_ms': costs[-1]} if costs else None,
        'ddl_ops': len(ends) if isinstance(workload, dict) and 'op_times' in workload else None,
    }


def entry_monitor(entry):
    """The monitor of a report entry: its own ``monitor``, else the one the lifecycle left in steady_state.during."""
    monitor = entry.get('monitor')
    if isinstance(monitor, dict):
        return monitor
    during = (entry.get('steady_state') or {}).get('during')
    monitor = during.get('monitor') if isinstance(during, dict) else None
    return monitor if isinstance(monitor, dict) else None


def hoist_monitor(entry):
    """A copy of ``entry`` with its monitor at the top (``monitor``), moved out of steady_state.during."""
    entry = dict(entry)
    monitor = entry_monitor(entry)
    steady = entry.get('steady_state')
    if isinstance(steady, dict) and isinstance(steady.get('during'), dict) and 'monitor' in steady['during']:
        during = dict(steady['during'])
        during.pop('monitor')
        entry['steady_state'] = dict(steady, during=during)
    entry['monitor'] = monitor
    return entry


# --- OpenMetrics / Prometheus text -------------------------------------------

def _escape_label(value):
    # Label values are UTF-8: a lone surrogate (bytes a host gave that were not UTF-8) is written escaped.
    text = str(value).encode('utf-8', 'backslashreplace').decode('utf-8')
    return text.replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def _escape_help(text):
    return str(text).replace('\\', '\\\\').replace('\n', '\\n')


def _value(number):
    number = float(number)
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


class _Families(object):
    """Metric families in first-use order, each with its samples; a repeated label set keeps the last value."""

    def __init__(self):
        self.order = []
        self.families = {}

    def add(self, name, help_text, labels, value):
        value = _num(value)
        if value is None:
            return
        name = PREFIX + name
        if name not in self.families:
            self.order.append(name)
            self.families[name] = (help_text, {})
        key = tuple(sorted(labels.items()))
        self.families[name][1][key] = value

    def text(self):
        lines = []
        for name in self.order:
            help_text, samples = self.families[name]
            lines += ['# HELP %s %s' % (name, _escape_help(help_text)), '# TYPE %s gauge' % name]
            for key, value in samples.items():
                labels = ','.join('%s="%s"' % (k, _escape_label(v)) for k, v in key)
                lines.append('%s%s %s' % (name, '{%s}' % labels if labels else '', _value(value)))
        return '\n'.join(lines + ['# EOF']) + '\n'


def _phase_of(sample):
    return str(sample.get('phase') or 'window')


def _series_metrics(families, base, series):
    phases = []
    for sample in series:
        if _phase_of(sample) not in phases:
            phases.append(_phase_of(sample))
    for phase in phases:
        samples = [s for s in series if _phase_of(s) == phase]
        labels = dict(base, phase=phase)

        def values(key):
            return [_num(s.get(key)) for s in samples if _num(s.get(key)) is not None]

        families.add('monitor_samples', 'Monitor samples taken in the phase.', labels, len(samples))
        families.add('monitor_down_samples', 'Monitor samples that got no answer from the target in the phase.', labels,
                     len([s for s in samples if s.get('pggit_health') == 'down']))
        families.add('pggit_healthy', 'pgGit health in the phase: 1 when every sample was ok (present, tracking as expected).',
                     labels, 1 if all(s.get('pggit_health') == 'ok' for s in samples) else 0)
        for key, name, help_text in (('connections', 'connections', 'Client connections at the last sample of the phase.'),
                                     ('lock_waits', 'lock_waits', 'Lock requests not granted at the last sample of the phase.'),
                                     ('history_rows', 'history_rows', 'Rows of pggit.history at the last sample of the phase.')):
            got = values(key)
            if got:
                families.add(name, help_text, labels, got[-1])
                families.add(name + '_max', help_text.replace('at the last sample of', 'peak over'), labels, max(got))
        rows = values('history_rows')
        if rows:
            families.add('history_rows_growth', 'Rows pggit.history grew by between the first and last sample of the phase.',
                         labels, rows[-1] - rows[0])
        p95 = values('ddl_p95_ms')
        if p95:
            families.add('ddl_p95_seconds_max', 'Worst per-second p95 latency of the workload DDL in the phase.', labels,
                         max(p95) / 1000.0)
            families.add('ddl_p50_seconds_max', 'Worst per-second p50 latency of the workload DDL in the phase.', labels,
                         max(values('ddl_p50_ms') or [0]) / 1000.0)
        replicas = []
        for sample in samples:
            for replica in sorted((sample.get('lag_bytes') or {}) if isinstance(sample.get('lag_bytes'), dict) else {}):
                if replica not in replicas:
                    replicas.append(replica)
        for replica in replicas:
            lags = [_num(s['lag_bytes'].get(replica)) for s in samples if isinstance(s.get('lag_bytes'), dict)]
            lags = [lag for lag in lags if lag is not None]
            if lags:
                rlabels = dict(labels, replica=replica)
                families.add('replication_lag_bytes', 'Replication lag of a replica in bytes (LSN difference) at the last sample '
                             'of the phase.', rlabels, lags[-1])
                families.add('replication_lag_bytes_max', 'Peak replication lag of a replica in bytes over the phase.', rlabels,
                             max(lags))


def _epoch_of(generated_at):
    try:
        return datetime.datetime.strptime(str(generated_at), '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def render_openmetrics(entries, meta=None, generated_at=None):
    """The .prom text of a run: each experiment's verdict and its monitor series per phase, no timestamps."""
    families = _Families()
    now = _epoch_of(generated_at) if generated_at else None
    for entry in entries:
        base = {'experiment': entry.get('experiment') or '?', 'host': entry.get('host') or '?'}
        status = entry.get('status')
        families.add('verdict', 'Verdict of the experiment on the host: 1 passed, 0 failed, -1 aborted, -2 skipped.', base,
                     VERDICT_VALUES.get(status))
        for known in STATUSES:
            families.add('experiment_status', 'One per status, 1 for the experiment\'s status on the host.',
                         dict(base, status=known), 1 if status == known else 0)
        families.add('reverted', 'Whether the fault was confirmed reverted: 1 yes, 0 no.', base, 1 if entry.get('reverted') else 0)
        timings = entry.get('timings') if isinstance(entry.get('timings'), dict) else {}
        families.add('experiment_duration_seconds', 'Duration of the experiment from its start to its end.', base,
                     timings.get('total_s'))
        timeline = entry.get('timeline') if isinstance(entry.get('timeline'), dict) else {}
        families.add('experiment_start_timestamp_seconds', 'When the experiment started (Unix time).', base, timeline.get('started_at'))
        monitor = entry_monitor(entry)
        if monitor:
            _series_metrics(families, base, [s for s in monitor.get('series') or [] if isinstance(s, dict)])
    if now is not None:
        families.add('report_timestamp_seconds', 'When the chaos report was written (Unix time).', {}, now)
    return families.text()
