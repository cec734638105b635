# Copyright: pggit.chaos contributors
# MIT License
"""Judge chaos experiment records and render them as reports.

Pure functions, no Ansible imports: ``judge`` turns the raw record of one
experiment on one host into a report entry with a ``status`` and the
``reasons`` for it; the ``render_*`` functions turn a list of entries into
JSON, JUnit XML and Markdown; ``write_reports`` writes all three atomically.

Status precedence: skipped, then aborted, then failed, else passed. An
experiment whose fault was not confirmed reverted is never passed.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET

SCHEMA_VERSION = 1
STATUSES = ('passed', 'failed', 'aborted', 'skipped')
TIMESTAMPS = ('started_at', 'inject_start', 'inject_end', 'window_end', 'revert_start', 'revert_end', 'finished_at')
# Duration name -> (start, end) timestamps.
DURATIONS = {
    'inject_s': ('inject_start', 'inject_end'),
    'window_s': ('inject_end', 'window_end'),
    'revert_s': ('revert_start', 'revert_end'),
    'total_s': ('started_at', 'finished_at'),
}
# Gantt bar label -> (start, end) timestamps, in experiment order.
PHASES = (
    ('steady-state-before', 'started_at', 'inject_start'),
    ('inject', 'inject_start', 'inject_end'),
    ('window', 'inject_end', 'window_end'),
    ('revert', 'revert_start', 'revert_end'),
    ('steady-state-after', 'revert_end', 'finished_at'),
)
WORKLOAD_ANOMALIES = ('lost', 'duplicated', 'unexpected')
FILENAMES = {'json': 'chaos-report.json', 'junit': 'chaos-junit.xml', 'markdown': 'chaos-report.md'}


# --- judging -----------------------------------------------------------------

def _epoch(value):
    try:
        return float(value) if value is not None and value != '' else None
    except (TypeError, ValueError):
        return None


def _span(timeline, start, end):
    if timeline.get(start) is None or timeline.get(end) is None:
        return None
    return round(timeline[end] - timeline[start], 3)


def _bad_checks(result):
    bad = [c for c in result.get('checks') or [] if isinstance(c, dict) and c.get('status') not in ('healthy', 'warning')]
    return ', '.join('%s=%s%s' % (c.get('name', '?'), c.get('status', '?'), ' (%s)' % c['message'] if c.get('message') else '')
                     for c in bad)


def _steady_state_reasons(steady_state):
    reasons = []
    for phase, required in (('before', True), ('during', False), ('after', True)):
        result = steady_state.get(phase)
        if not isinstance(result, dict) or 'healthy' not in result:
            if required:
                reasons.append('steady state %s the fault was not checked' % phase)
            continue
        if result.get('healthy') is not True:
            bad = _bad_checks(result)
            reasons.append('steady state %s the fault not met%s' % (phase, ': ' + bad if bad else ''))
    return reasons


def _revert_reason(raw):
    failures = (raw.get('revert') or {}).get('failures') or []
    if raw.get('reverted') is True and not failures:
        return None
    detail = '; '.join('%s: %s' % (f.get('id', f.get('name', '?')), f.get('error', f.get('msg', '?'))) if isinstance(f, dict) else str(f)
                       for f in failures)
    return 'revert failed or was not confirmed%s; check the host ledger (pggit_chaos_revert)' % (': ' + detail if detail else '')


def _workload_reasons(workload):
    if not isinstance(workload, dict):
        return []
    reasons = ['workload %s %d operation(s): %s' % (key, len(workload[key]), ', '.join(str(x) for x in workload[key][:5]))
               for key in WORKLOAD_ANOMALIES if workload.get(key)]
    if not reasons and workload.get('valid') is False:
        reasons.append('workload check reported invalid history')
    return reasons


def judge(raw):
    """Return the report entry for one raw experiment record."""
    timeline = {name: _epoch((raw.get('timings') or {}).get(name)) for name in TIMESTAMPS}
    revert_reason = _revert_reason(raw)
    entry = dict(
        experiment=raw.get('experiment'),
        experiment_id=raw.get('experiment_id'),
        host=raw.get('host'),
        target_role=raw.get('target_role'),
        status=None,
        reasons=[],
        reverted=revert_reason is None,
        aborted=bool(raw.get('aborted')),
        error=raw.get('error') or None,
        skipped_reason=raw.get('skipped_reason') or None,
        steady_state={phase: (raw.get('steady_state') or {}).get(phase) for phase in ('before', 'during', 'after')},
        fault=raw.get('fault') or {},
        revert=raw.get('revert') or {},
        workload=raw.get('workload') or None,
        drift=list(raw.get('drift') or []),
        parameters=raw.get('parameters') or {},
        timings={name: _span(timeline, start, end) for name, (start, end) in DURATIONS.items()},
        timeline=timeline,
    )
    if entry['skipped_reason']:
        entry.update(status='skipped', reasons=['skipped: %s' % entry['skipped_reason']])
    elif entry['aborted']:
        reasons = ['aborted%s' % (': ' + entry['error'] if entry['error'] else '')]
        entry.update(status='aborted', reasons=reasons + ([revert_reason] if revert_reason else []))
    else:
        reasons = ['error: %s' % entry['error']] if entry['error'] else []
        reasons += _steady_state_reasons(entry['steady_state'])
        reasons += [revert_reason] if revert_reason else []
        reasons += _workload_reasons(entry['workload'])
        entry.update(status='failed' if reasons else 'passed', reasons=reasons)
    return entry


def summarize(entries):
    summary = dict(total=len(entries), **{status: 0 for status in STATUSES})
    for entry in entries:
        summary[entry['status']] += 1
    return summary


def summary_line(summary):
    return '%d experiment(s): %s' % (summary['total'], ', '.join('%d %s' % (summary[s], s) for s in STATUSES))


# --- rendering -----------------------------------------------------------------

def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _label(entry):
    return '%s@%s' % (entry.get('experiment'), entry.get('host'))


def _seconds(value):
    return '-' if value is None else '%.3f' % value


def _compact(value):
    return json.dumps(value, sort_keys=True, separators=(',', ':'), default=str)


def render_json(entries, meta, generated_at=None):
    document = dict(schema_version=SCHEMA_VERSION, generated_at=generated_at or _utc_now(), meta=dict(meta or {}),
                    summary=summarize(entries), entries=list(entries))
    return json.dumps(document, indent=2, sort_keys=True, default=str) + '\n'


# Characters XML 1.0 cannot carry, even escaped (PostgreSQL errors can hold them).
_XML_INVALID = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')


def _xml(text):
    return _XML_INVALID.sub('?', str(text))


def render_junit(entries, meta, generated_at=None):
    summary = summarize(entries)
    total_time = sum(e['timings'].get('total_s') or 0 for e in entries)
    counts = dict(tests=str(summary['total']), failures=str(summary['failed'] + summary['aborted']), errors='0',
                  skipped=str(summary['skipped']), time='%.3f' % total_time)
    root = ET.Element('testsuites', name='pggit.chaos', **counts)
    suite = ET.SubElement(root, 'testsuite', name='pggit.chaos', timestamp=generated_at or _utc_now(), **counts)
    properties = ET.SubElement(suite, 'properties')
    for key, value in sorted((meta or {}).items()):
        ET.SubElement(properties, 'property', name=_xml(key), value=_xml(value))
    for entry in entries:
        case = ET.SubElement(suite, 'testcase', classname='pggit.chaos.%s' % _xml(entry.get('experiment')),
                             name=_xml(_label(entry)), time='%.3f' % (entry['timings'].get('total_s') or 0))
        message = _xml('; '.join(entry['reasons']))
        if entry['status'] in ('failed', 'aborted'):
            ET.SubElement(case, 'failure', message=message, type=entry['status']).text = _xml('\n'.join(entry['reasons']))
        elif entry['status'] == 'skipped':
            ET.SubElement(case, 'skipped', message=message)
        ET.SubElement(case, 'system-out').text = _xml(_compact(entry))
    ET.indent(root)
    return ET.tostring(root, encoding='unicode', xml_declaration=True) + '\n'


def _cell(value):
    return str('-' if value is None else value).replace('\\', '\\\\').replace('|', '\\|').replace('\r', '').replace('\n', '<br>')


def _workload_cell(workload):
    if not isinstance(workload, dict):
        return '-'
    return '%s / %d / %d / %d' % (workload.get('ok', '?'), *(len(workload.get(key) or []) for key in WORKLOAD_ANOMALIES))


_GANTT_ESCAPES = {'#': '#35;', ':': '#58;', ';': '#59;'}


def _gantt_text(text):
    # Mermaid reads ':' as the name/data separator and '#...;' as an entity.
    return re.sub('[#:;]', lambda match: _GANTT_ESCAPES[match.group()], ' '.join(str(text).split()))


def _gantt(entries):
    lines = []
    for entry in entries:
        timeline = entry.get('timeline') or {}
        crit = {'revert': '' if entry['reverted'] else ' crit,'}  # a revert that failed shows red
        bars = ['    %s :%s %d, %d' % (name, crit.get(name, ''), round(timeline[start] * 1000), round(timeline[end] * 1000))
                for name, start, end in PHASES if timeline.get(start) is not None and timeline.get(end) is not None]
        if bars:
            lines += ['    section %s' % _gantt_text(_label(entry))] + bars
    if not lines:
        return ['_No timeline recorded._']
    return ['```mermaid', 'gantt', '    title Chaos timeline', '    dateFormat x', '    axisFormat %H:%M:%S'] + lines + ['```']


def render_markdown(entries, meta, generated_at=None):
    meta = meta or {}
    lines = ['# Chaos report', '',
             'Playbook `%s`, generated %s.' % (meta.get('playbook', '?'), generated_at or _utc_now()), '',
             '**%s**.' % summary_line(summarize(entries)), '',
             '| Experiment | Host | Status | Reverted | Inject s | Window s | Revert s | Workload ok / lost / dup / unexpected |',
             '|---|---|---|---|---:|---:|---:|---|']
    for entry in entries:
        cells = [entry.get('experiment'), entry.get('host'), entry['status'].upper(), 'yes' if entry['reverted'] else 'NO',
                 _seconds(entry['timings'].get('inject_s')), _seconds(entry['timings'].get('window_s')),
                 _seconds(entry['timings'].get('revert_s')), _workload_cell(entry.get('workload'))]
        lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    not_passed = [e for e in entries if e['status'] != 'passed']
    if not_passed:
        lines += ['', '## Reasons']
        for entry in not_passed:
            lines += ['', '### %s (%s)' % (_label(entry).replace('\n', ' '), entry['status']), '']
            lines += ['- %s' % reason.replace('\n', ' ') for reason in entry['reasons']]
    lines += ['', '## Timeline', ''] + _gantt(entries)
    return '\n'.join(lines) + '\n'


# --- writing -------------------------------------------------------------------

def _write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.%s.' % os.path.basename(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_reports(report_dir, entries, meta):
    """Write the JSON, JUnit and Markdown reports; return their paths by format."""
    os.makedirs(report_dir, exist_ok=True)
    generated_at = _utc_now()
    renderers = {'json': render_json, 'junit': render_junit, 'markdown': render_markdown}
    paths = {}
    for fmt, render in renderers.items():
        paths[fmt] = os.path.join(report_dir, FILENAMES[fmt])
        _write_atomic(paths[fmt], render(entries, meta, generated_at=generated_at))
    return paths
