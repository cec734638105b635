# Copyright: pggit.chaos contributors
# MIT License
"""The HTML chaos report: one self-contained file (inline CSS and SVG, no script, no fetch).

Every text that comes from hosts, databases or the inventory (host names,
reasons, errors, fault facts) goes through ``html.escape``; the page's
Content-Security-Policy (``default-src 'none'``) forbids any request besides
inline styles and data: images, so a browser opening it from an AWX or CI
artifact fetches nothing.

The page holds, for tests and readers alike, stable hooks:
``section#timeline`` with one ``g.lane[data-host]`` per host and one
``g.experiment[data-experiment][data-status]`` per experiment, and one
``section.experiment[data-experiment][data-host][data-status]`` per entry
with its verdict (``.verdict``), charts (``svg.chart[data-metric]``), the
exactly-once table (``table.exactly-once``) and the fault's facts.
"""
from __future__ import annotations

import datetime
import html
import json
import math

from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import entry_monitor

STATUSES = ('passed', 'failed', 'aborted', 'skipped')
# Lane bars: (phase, start mark, end mark), as in the Markdown Gantt.
PHASES = (
    ('steady-state', 'started_at', 'inject_start'),
    ('inject', 'inject_start', 'inject_end'),
    ('window', 'inject_end', 'window_end'),
    ('revert', 'revert_start', 'revert_end'),
    ('after', 'revert_end', 'finished_at'),
)
PHASE_COLOURS = {'steady-state': '#9bb7d4', 'inject': '#e8a33d', 'window': '#d9534f', 'revert': '#5cb85c', 'after': '#9bb7d4'}
STATUS_COLOURS = {'passed': '#2e7d32', 'failed': '#c62828', 'aborted': '#ef6c00', 'skipped': '#757575'}
# (metric, title, unit, sample keys)
CHARTS = (
    ('ddl_latency', 'DDL latency (p50, p95)', 'ms', ('ddl_p50_ms', 'ddl_p95_ms')),
    ('history_rows', 'pggit.history rows', 'rows', ('history_rows',)),
    ('lag', 'Replication lag', 'bytes', None),
    ('connections', 'Connections and lock waits', '', ('connections', 'lock_waits')),
)
LINE_COLOURS = ('#1565c0', '#c62828', '#2e7d32', '#6a1b9a', '#ef6c00', '#00838f', '#5d4037', '#ad1457')
WORKLOAD_COLUMNS = ('ok', 'lost', 'duplicated', 'unexpected', 'maybe')
FACTS_SHOWN = 40
# What Ansible adds to an (async) task result: not facts of the fault.
NOT_FACTS = ('ansible_job_id', 'results_file', 'started', 'finished', 'attempts', 'changed', 'failed', 'invocation',
             'stdout', 'stderr', 'stdout_lines', 'stderr_lines', 'skipped')
FACT_CHARS = 600

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin:.2em 0}.meta{color:#666;font-size:.9em}
.cards{display:flex;gap:.8em;margin:1em 0}.card{border-radius:6px;padding:.6em 1em;color:#fff;min-width:6em}
.card b{display:block;font-size:1.6em}.passed{background:#2e7d32}.failed{background:#c62828}.aborted{background:#ef6c00}
.skipped{background:#757575}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .5em;vertical-align:top;text-align:left}th{background:#f5f5f5}
td.num{text-align:right}.verdict{display:inline-block;color:#fff;border-radius:4px;padding:0 .4em;font-weight:bold}
section.experiment{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:1em 0}
.charts{display:flex;flex-wrap:wrap;gap:.6em}svg text{font-size:10px;fill:#333}.reasons li{color:#b71c1c}
.legend span{display:inline-block;margin-right:1em;font-size:.85em}.swatch{display:inline-block;width:.9em;height:.9em;
vertical-align:middle;margin-right:.3em}code{font-size:.85em;word-break:break-all}.none{color:#888;font-style:italic}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def esc(value):
    # A lone surrogate (bytes a host gave that were not UTF-8) would make the whole page unwritable: show it escaped.
    text = ('-' if value is None else str(value)).encode('utf-8', 'backslashreplace').decode('utf-8')
    return html.escape(text, quote=True)


def _num(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _clock(epoch):
    try:
        return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%H:%M:%S')
    except (OverflowError, OSError, ValueError):  # not a time (a ramp level of 1e12 bytes): the number itself
        return _fmt(epoch)


def _fmt(value):
    if value is None:
        return '-'
    if abs(value) >= 1e9:
        return '%.2fG' % (value / 1e9)
    if abs(value) >= 1e6:
        return '%.2fM' % (value / 1e6)
    if abs(value) >= 1e4:
        return '%.1fk' % (value / 1e3)
    return ('%d' % value) if value == int(value) else '%.1f' % value


def _timeline(entry):
    timeline = entry.get('timeline') if isinstance(entry.get('timeline'), dict) else {}
    return dict((key, _num(value)) for key, value in timeline.items())


# --- summary -----------------------------------------------------------------

def _summary(entries):
    counts = dict((status, len([e for e in entries if e.get('status') == status])) for status in STATUSES)
    cards = ''.join('<div class="card %s" data-count="%s"><b>%d</b>%s</div>' % (s, s, counts[s], s) for s in STATUSES)
    rows = []
    for index, entry in enumerate(entries):
        status = str(entry.get('status') or '?')
        reasons = entry.get('reasons') or []
        why = '<br>'.join(esc(r) for r in reasons) if reasons else '<span class="none">-</span>'
        rows.append('<tr data-experiment="%s" data-host="%s"><td><a href="#exp-%d">%s</a></td><td>%s</td>'
                    '<td><span class="verdict" style="background:%s">%s</span></td><td>%s</td><td>%s</td></tr>' % (
                        esc(entry.get('experiment')), esc(entry.get('host')), index, esc(entry.get('experiment')),
                        esc(entry.get('host')), STATUS_COLOURS.get(status, '#555'), esc(status.upper()),
                        'yes' if entry.get('reverted') else '<b>NO</b>', why))
    table = ('<table class="summary"><tr><th>Experiment</th><th>Host</th><th>Verdict</th><th>Reverted</th><th>Why</th></tr>%s'
             '</table>' % ''.join(rows))
    return '<section id="summary"><h2>Summary</h2><div class="cards">%s</div>%s</section>' % (cards, table)


# --- timeline ----------------------------------------------------------------

def _lane_timeline(entries, width=1100):
    hosts = []
    for entry in entries:
        if entry.get('host') not in hosts:
            hosts.append(entry.get('host'))
    times = [t for e in entries for t in _timeline(e).values() if t is not None]
    label_w, lane_h, top = 130, 46, 22
    height = top + lane_h * max(1, len(hosts)) + 24
    if not times:
        t0, t1 = 0.0, 1.0
    else:
        t0, t1 = min(times), max(times)
        if t1 - t0 < 1:
            t1 = t0 + 1
    span = float(t1 - t0)

    def x(t):
        return label_w + (t - t0) / span * (width - label_w - 10)

    parts = ['<svg id="timeline-svg" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
             'aria-label="Timeline">' % (width, height, width, height)]
    for tick in range(6):  # time axis
        t = t0 + span * tick / 5.0
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x(t), top - 4, x(t), height - 20))
        anchor = 'start' if tick == 0 else 'end' if tick == 5 else 'middle'
        parts.append('<text x="%.1f" y="%d" text-anchor="%s">%s</text>' % (x(t), height - 6, anchor, _clock(t) if times else ''))
    for lane, host in enumerate(hosts):
        y = top + lane * lane_h
        parts.append('<g class="lane" data-host="%s">' % esc(host))
        parts.append('<rect x="0" y="%d" width="%d" height="%d" fill="%s"/>' % (y, width, lane_h - 4, '#fafafa' if lane % 2 else '#f3f3f3'))
        parts.append('<text x="4" y="%d" font-weight="bold">%s</text>' % (y + lane_h / 2, esc(host)))
        for index, entry in enumerate(entries):
            if entry.get('host') != host:
                continue
            timeline = _timeline(entry)
            status = str(entry.get('status') or '?')
            bars = []
            for phase, start, end in PHASES:
                if timeline.get(start) is not None and timeline.get(end) is not None and timeline[end] >= timeline[start]:
                    bars.append('<rect class="bar" data-phase="%s" x="%.1f" y="%d" width="%.1f" height="16" fill="%s">'
                                '<title>%s %s: %.1f s</title></rect>' % (
                                    phase, x(timeline[start]), y + 14, max(1.0, x(timeline[end]) - x(timeline[start])),
                                    PHASE_COLOURS[phase], esc(entry.get('experiment')), phase, timeline[end] - timeline[start]))
            known = [t for t in timeline.values() if t is not None]
            start_x = x(min(known)) if known else label_w
            end_x = x(max(known)) if known else label_w
            group = ['<g class="experiment" data-experiment="%s" data-status="%s" data-index="%d">' % (
                esc(entry.get('experiment')), esc(status), index)]
            group.append('<text x="%.1f" y="%d">%s</text>' % (start_x, y + 10, esc(entry.get('experiment'))))
            group += bars
            if status in ('failed', 'aborted'):
                # The mark sits where the experiment stopped: the end of its window (aborted) or of its run.
                at = (timeline.get('window_end') or timeline.get('revert_start')) if status == 'aborted' else None
                mark_x = x(at) if at is not None else end_x
                group.append('<rect class="outline" x="%.1f" y="%d" width="%.1f" height="20" fill="none" stroke="%s" stroke-width="2"/>'
                             % (start_x - 1, y + 12, max(2.0, end_x - start_x + 2), STATUS_COLOURS[status]))
                group.append('<text class="mark" data-mark="%s" x="%.1f" y="%d" fill="%s" font-weight="bold" font-size="14">%s</text>'
                             % (status, mark_x + 2, y + 40, STATUS_COLOURS[status], '&#10007; ' + status))
            if not bars:
                group.append('<text class="mark" data-mark="no-timeline" x="%.1f" y="%d">(%s, no timeline)</text>'
                             % (start_x, y + 28, esc(status)))
            group.append('</g>')
            parts += group
        parts.append('</g>')
    parts.append('</svg>')
    legend = ''.join('<span><i class="swatch" style="background:%s"></i>%s</span>' % (PHASE_COLOURS[p], p)
                     for p, _s, _e in PHASES if p != 'after') + \
        '<span><i class="swatch" style="background:%s"></i>after (steady state)</span>' % PHASE_COLOURS['after']
    return ('<section id="timeline"><h2>Timeline</h2><p class="meta">One lane per host, real time (UTC). Bars: steady state '
            'before, inject, window, revert, steady state after. Failed and aborted experiments are outlined and marked.</p>'
            '<div class="legend">%s</div>%s</section>' % (legend, ''.join(parts)))


# --- charts ------------------------------------------------------------------

def _chart(metric, title, unit, lines, shades, t0, t1, width=520, height=150, down=()):
    """A small line chart; ``lines`` = [(name, [(t, value or None)])] (None breaks the line),
    ``shades`` = [(start, end, label, colour)], ``down`` = times of samples that got no answer."""
    left, right, top, bottom = 48, 8, 18, 22
    values = [v for _n, points in lines for _t, v in points if v is not None]
    parts = ['<svg class="chart" data-metric="%s" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'role="img" aria-label="%s">' % (metric, width, height, width, height, esc(title)),
             '<text x="%d" y="12" font-weight="bold">%s%s</text>' % (left, esc(title), ' (%s)' % esc(unit) if unit else '')]
    span = max(1e-6, t1 - t0)
    lo = 0.0
    hi = max(values) if values else 1.0
    hi = hi if hi > lo else lo + 1.0

    def x(t):
        return left + (t - t0) / span * (width - left - right)

    def y(v):
        return top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom)

    for start, end, label, colour in shades:
        if start is None or end is None:
            continue
        a, b = max(t0, start), min(t1, end)
        if b > a:
            parts.append('<rect class="shade" data-shade="%s" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.18">'
                         '<title>%s</title></rect>' % (label, x(a), top, x(b) - x(a), height - top - bottom, colour, label))
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>' % (left, height - bottom, width - right, height - bottom))
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>' % (left, top, left, height - bottom))
    parts.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 3, y(hi) + 4, _fmt(hi)))
    parts.append('<text x="%d" y="%.1f" text-anchor="end">0</text>' % (left - 3, y(lo)))
    parts.append('<text x="%d" y="%d">%s</text>' % (left, height - 6, _clock(t0)))
    parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (width - right, height - 6, _clock(t1)))
    if not values:
        parts.append('<text class="nodata" x="%d" y="%d" fill="#888">no data</text>' % (width // 2 - 20, height // 2))
    for t in down:
        parts.append('<path class="down" d="M%.1f %d l-3 6 h6 z" fill="#c62828"><title>no answer at %s</title></path>' % (
            x(t), height - bottom - 6, _clock(t)))
    for index, (name, points) in enumerate(lines):
        colour = LINE_COLOURS[index % len(LINE_COLOURS)]
        segments, current = [], []
        for t, v in points:
            if v is None:
                segments, current = segments + ([current] if current else []), []
            else:
                current.append((t, v))
        segments += [current] if current else []
        for segment in segments:
            if len(segment) == 1:
                parts.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>' % (x(segment[0][0]), y(segment[0][1]), colour))
            else:
                parts.append('<polyline class="line" data-line="%s" fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (
                    esc(name), colour, ' '.join('%.1f,%.1f' % (x(t), y(v)) for t, v in segment)))
        parts.append('<text x="%d" y="12" fill="%s" text-anchor="end">%s</text>' % (
            width - right - 90 * (len(lines) - 1 - index), colour, esc(name)))
    parts.append('</svg>')
    return ''.join(parts)


def _lines(series, keys):
    """One line per key; a sample that got no answer breaks it (None), a value merely absent (no DDL that second) does not."""
    lines = []
    for key in keys:
        points = [(s['t'], _num(s.get(key))) for s in series
                  if _num(s.get(key)) is not None or s.get('pggit_health') == 'down']
        lines.append((key.replace('ddl_', '').replace('_ms', ''), points))
    return lines


def _lag_lines(series):
    names = []
    for sample in series:
        for name in sorted(sample.get('lag_bytes') or {}) if isinstance(sample.get('lag_bytes'), dict) else []:
            if name not in names:
                names.append(name)
    return [(name, [(s['t'], _num((s.get('lag_bytes') or {}).get(name))) for s in series
                    if s.get('pggit_health') == 'down' or (isinstance(s.get('lag_bytes'), dict)
                                                           and _num(s['lag_bytes'].get(name)) is not None)]) for name in names]


def _charts(entry):
    monitor = entry_monitor(entry)
    series = [dict(s, t=_num(s.get('t'))) for s in (monitor or {}).get('series') or []
              if isinstance(s, dict) and _num(s.get('t')) is not None]
    if not series:
        return '<p class="none">No monitor samples (the experiment did not reach its window, or ran without the monitor).</p>'
    timeline = _timeline(entry)
    times = [s['t'] for s in series] + [t for t in timeline.values() if t is not None]
    t0, t1 = min(times), max(times)
    fault_end = timeline.get('revert_end') or timeline.get('revert_start') or timeline.get('window_end')
    shades = [(timeline.get('inject_start'), timeline.get('window_end') or fault_end, 'fault window', '#d9534f'),
              (timeline.get('revert_start'), timeline.get('revert_end'), 'revert', '#5cb85c')]
    charts = []
    down_at = [s['t'] for s in series if s.get('pggit_health') == 'down']
    for metric, title, unit, keys in CHARTS:
        lines = _lag_lines(series) if keys is None else _lines(series, keys)
        charts.append(_chart(metric, title, unit, lines, shades, t0, t1, down=down_at))
    down = len(down_at)
    unhealthy = sorted(set(str(s.get('pggit_health')) for s in series if s.get('pggit_health') not in ('ok', 'down')))
    cost = monitor.get('cost') or {}
    note = '%d sample(s), every %s s; %d without an answer%s; sample cost p50 %s ms, max %s ms.' % (
        len(series), esc(monitor.get('interval_s')), down,
        '; pgGit health seen: %s' % esc(', '.join(unhealthy)) if unhealthy else '', esc(cost.get('p50_ms')), esc(cost.get('max_ms')))
    return ('<div class="charts">%s</div><p class="meta">%s Shaded: the fault window (red), the revert (green); a red triangle '
            'marks a sample the target did not answer.</p>' % (''.join(charts), note))


# --- per experiment ----------------------------------------------------------

def _exactly_once(entry):
    workload = entry.get('workload')
    if not isinstance(workload, dict):
        return '<p class="none">No workload ran.</p>'
    cells = []
    for key in WORKLOAD_COLUMNS:
        value = workload.get(key)
        count = len(value) if isinstance(value, (list, tuple)) else value
        bad = key in ('lost', 'duplicated', 'unexpected') and count
        cells.append('<td class="num" data-col="%s"%s>%s</td>' % (key, ' style="color:#c62828;font-weight:bold"' if bad else '',
                                                                  esc(count)))
    listed = ''.join('<p><b>%s</b>: <code>%s</code></p>' % (key, esc(', '.join(str(t) for t in workload[key][:50])))
                     for key in ('lost', 'duplicated', 'unexpected') if isinstance(workload.get(key), list) and workload[key])
    return ('<table class="exactly-once"><tr>%s</tr><tr>%s</tr></table>%s' % (
        ''.join('<th>%s</th>' % k for k in WORKLOAD_COLUMNS), ''.join(cells), listed))


def _fact_text(value):
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= FACT_CHARS else text[:FACT_CHARS] + ' ...'


def _facts(entry):
    fault = entry.get('fault')
    if not isinstance(fault, dict) or not fault:
        return '<p class="none">No fault facts recorded.</p>'
    keys = sorted(k for k in fault if not str(k).startswith('_ansible') and k not in NOT_FACTS)
    rows = ''.join('<tr><th>%s</th><td><code>%s</code></td></tr>' % (esc(k), esc(_fact_text(fault[k]))) for k in keys[:FACTS_SHOWN])
    more = '<p class="meta">%d more fact(s) in chaos-report.json.</p>' % (len(keys) - FACTS_SHOWN) if len(keys) > FACTS_SHOWN else ''
    return '<table class="facts">%s</table>%s' % (rows, more)


def _ramp_bars(ramp, width=520, height=170):
    """A ramp of pggit_chaos_ramp: the breaking point, then one bar per step (its window DDL latency p95),
    coloured by the step's outcome, with the SLO as a dashed line."""
    steps = [s for s in ramp.get('steps') or [] if isinstance(s, dict)]
    left, right, top, bottom = 48, 8, 18, 30
    values = [_num(s.get('p95_ms')) for s in steps]
    slo = _num(ramp.get('slo_ms'))
    hi = max([v for v in values if v is not None] + ([slo] if slo is not None else []) + [1.0])
    slot = (width - left - right) / float(max(1, len(steps)))

    def y(v):
        return top + (1 - v / hi) * (height - top - bottom)

    parts = ['<svg class="chart" data-metric="ramp" data-param="%s" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'viewBox="0 0 %d %d" role="img" aria-label="Ramp">' % (esc(ramp.get('param')), width, height, width, height),
             '<text x="%d" y="12" font-weight="bold">Window DDL latency p95 (ms) per %s</text>' % (left, esc(ramp.get('param'))),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>' % (left, height - bottom, width - right, height - bottom),
             '<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 3, y(hi) + 4, _fmt(hi))]
    for index, (step, value) in enumerate(zip(steps, values)):
        x = left + index * slot + slot * 0.15
        # A skipped step or one with no verdict stopped the ramp without breaking it: drawn apart from a break.
        colour = STATUS_COLOURS['passed'] if step.get('passed') else STATUS_COLOURS.get(
            'skipped' if step.get('inconclusive') else 'failed', STATUS_COLOURS['failed'])
        level = esc(step.get('level'))
        breaks = '' if step.get('passed') or not step.get('stop_reason') else ' (%s: %s)' % (
            'stops' if step.get('inconclusive') else 'breaks', esc(step.get('stop_reason')))
        title = '%s=%s: p95 %s ms, %s%s' % (esc(ramp.get('param')), level, _fmt(value), esc(step.get('status')), breaks)
        if value is not None:
            parts.append('<rect class="step" data-level="%s" data-passed="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f" '
                         'fill="%s"><title>%s</title></rect>' % (level, 'true' if step.get('passed') else 'false', x, y(value),
                                                                 slot * 0.7, height - bottom - y(value), colour, title))
        else:
            parts.append('<text class="step" data-level="%s" data-passed="%s" x="%.1f" y="%d" fill="%s">?<title>%s</title></text>' % (
                level, 'true' if step.get('passed') else 'false', x, height - bottom - 4, colour, title))
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (x + slot * 0.35, height - bottom + 12, level))
    if slo is not None:
        parts.append('<line class="slo" x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#c62828" stroke-dasharray="4 3"/>'
                     '<text x="%d" y="%.1f" fill="#c62828" text-anchor="end">SLO %s ms</text>' % (
                         left, y(slo), width - right, y(slo), width - right, y(slo) - 3, _fmt(slo)))
    parts.append('<text x="%d" y="%d">%s (%s)</text></svg>' % (left, height - 4, esc(ramp.get('param')), esc(ramp.get('unit'))))
    point = ('<p class="breaking-point" data-last-passing="%s" data-first-failing="%s">%s</p>' % (
        esc(ramp.get('last_passing')), esc(ramp.get('first_failing')), esc(ramp.get('summary'))))
    return '<h4>Ramp</h4>%s<div class="charts">%s</div>' % (point, ''.join(parts))


def _ramp(entry):
    """Ramp results (a list of steps, each a dict of numbers with a ``level``), as one chart; nothing when absent.
    The ramp entry of pggit_chaos_ramp (a mapping with ``param``) is drawn as bars with its breaking point."""
    ramp = entry.get('ramp')
    if not ramp:
        return ''
    if isinstance(ramp, dict) and 'param' in ramp:
        return _ramp_bars(ramp)
    steps = ramp.get('steps') if isinstance(ramp, dict) else ramp
    steps = [s for s in steps or [] if isinstance(s, dict)]
    if not steps:
        return ''
    xs = [(_num(s.get('level')) if _num(s.get('level')) is not None else float(i)) for i, s in enumerate(steps)]
    keys = sorted(set(k for s in steps for k, v in s.items() if k != 'level' and _num(v) is not None))
    lines = [(k, [(x, _num(s.get(k))) for x, s in zip(xs, steps) if _num(s.get(k)) is not None]) for k in keys]
    lo, hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    chart = _chart('ramp', 'Ramp', '', lines, [], lo, hi)
    # A ramp's x axis is its level, not a clock.
    chart = chart.replace('>%s</text>' % _clock(lo), '>%s</text>' % _fmt(lo)).replace('>%s</text>' % _clock(hi), '>%s</text>' % _fmt(hi))
    return '<h4>Ramp</h4><div class="charts">%s</div>' % chart


def _experiment(index, entry):
    status = str(entry.get('status') or '?')
    reasons = entry.get('reasons') or []
    timings = entry.get('timings') if isinstance(entry.get('timings'), dict) else {}
    timing = ', '.join('%s %s s' % (esc(str(k).replace('_s', '')), esc(v)) for k, v in sorted(timings.items(), key=lambda kv: str(kv[0]))
                       if v is not None)
    parts = ['<section class="experiment" id="exp-%d" data-experiment="%s" data-host="%s" data-status="%s">' % (
        index, esc(entry.get('experiment')), esc(entry.get('host')), esc(status)),
        '<h3>%s on %s <span class="verdict" style="background:%s">%s</span></h3>' % (
            esc(entry.get('experiment')), esc(entry.get('host')), STATUS_COLOURS.get(status, '#555'), esc(status.upper())),
        '<p class="meta">id %s; target %s; %s</p>' % (esc(entry.get('experiment_id')), esc(entry.get('target_role')), timing or 'no timings')]
    if reasons:
        parts.append('<ul class="reasons">%s</ul>' % ''.join('<li>%s</li>' % esc(r) for r in reasons))
    parts += ['<h4>Monitor</h4>', _charts(entry), '<h4>Exactly once</h4>', _exactly_once(entry), _ramp(entry),
              '<h4>Fault facts</h4>', _facts(entry), '</section>']
    return ''.join(parts)


def render_html(entries, meta, generated_at=None):
    meta = meta or {}
    entries = [e for e in entries if isinstance(e, dict)]
    head = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta http-equiv="Content-Security-Policy" content="%s">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>Chaos report</title><style>%s</style></head><body>' % (CSP, CSS))
    title = '<h1>Chaos report</h1><p class="meta">Playbook %s, ansible-core %s, generated %s.</p>' % (
        esc(meta.get('playbook')), esc(meta.get('ansible_version')), esc(generated_at))
    body = [title, _summary(entries), _lane_timeline(entries), '<h2>Experiments</h2>']
    body += [_experiment(index, entry) for index, entry in enumerate(entries)]
    return head + ''.join(body) + '</body></html>\n'
