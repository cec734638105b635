# Copyright: pggit.chaos contributors
# MIT License
"""Judge chaos experiment records and render them as reports.

Pure functions, no Ansible imports: ``judge`` turns the raw record of one
experiment on one host into a report entry with a ``status`` and the
``reasons`` for it; the ``render_*`` functions turn a list of entries into
JSON, JUnit XML and Markdown; ``write_reports`` writes all three atomically.

Status precedence: skipped, then aborted, then failed, else passed. An
experiment whose fault was not confirmed reverted is never passed, and
neither is one that cannot prove its fault happened (``FAULT_CHECKS``).

The Markdown report escapes every text it did not write itself (HTML, code
spans, links, table pipes), since error texts come from hosts and databases.
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
FILENAMES = {'json': 'chaos-report.json', 'junit': 'chaos-junit.xml', 'markdown': 'chaos-report.md',
             'html': 'chaos-report.html', 'metrics': 'chaos-metrics.prom'}


# --- judging -----------------------------------------------------------------

# The probe's own check vocabulary (plugins/module_utils/_probe.py).
CHECK_STATUSES = ('ok', 'warning', 'failed', 'error', 'skipped')
BAD_CHECK_STATUSES = ('failed', 'error')
# A dropped TCP segment is sent again after the retransmission timeout, which
# Linux never sets below TCP_RTO_MIN, 200 ms: a statement that met packet loss
# takes at least that long (or fails). Loss-only experiments (no delay) count
# as having left their mark when the slowest DDL took this long or any failed.
LOSS_MARK_MS = 200.0
# Names shown in one reason before "and N more"; the evidence holds them all.
NAMES_SHOWN = 20


def _epoch(value):
    try:
        return float(value) if value is not None and value != '' else None
    except (TypeError, ValueError):
        return None


def _number(value):
    if isinstance(value, bool) or value is None or value == '':
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _flag(value):
    return value is True or str(value).strip().lower() in ('true', 'yes', 'on', '1')


def _mapping(value):
    return value if isinstance(value, dict) else {}


def _ms(value):
    return '?' if value is None else '%.1f' % value


def _count(value):
    return '?' if value is None else '%d' % value


def _names(names):
    names = [str(n) for n in names]
    more = len(names) - NAMES_SHOWN
    return ', '.join(names[:NAMES_SHOWN]) + (' and %d more' % more if more > 0 else '')


def _span(timeline, start, end):
    if timeline.get(start) is None or timeline.get(end) is None:
        return None
    return round(timeline[end] - timeline[start], 3)


def _bad_checks(result):
    """The checks that made a probe result unhealthy: critical ones that failed or errored.

    A status outside the probe's vocabulary is shown too, never hidden.
    """
    bad = [c for c in result.get('checks') or [] if isinstance(c, dict) and c.get('critical', True) is not False
           and c.get('status') not in ('ok', 'warning', 'skipped')]
    text = ', '.join('%s=%s%s' % (c.get('name', '?'), c.get('status', '?'), ' (%s)' % c['message'] if c.get('message') else '')
                     for c in bad)
    return text or ', '.join(str(name) for name in result.get('failed_checks') or [])


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


def _host(result):
    return str(result.get('item') or result.get('_ansible_item_label') or '?')


def _result_msg(result, default):
    return ' '.join(str(result.get('msg') or default).split())


def _revert_outcome(raw):
    """Return (revert summary for the report, failures, confirmed) from the raw revert facts.

    ``revert_results`` are the registered results of ``pggit_chaos_revert``,
    one per host (a loop's ``results``): an unreachable, failed or skipped
    item, or any fault whose revert failed, means not reverted, and so does
    no result at all. Without them, ``revert`` and ``reverted`` are taken as
    the caller gave them.
    """
    results = raw.get('revert_results')
    if results is None:
        revert = _mapping(raw.get('revert'))
        failures = list(revert.get('failures') or [])
        return revert, failures, raw.get('reverted') is True and not failures
    hosts, reverted, failures = [], [], []
    for result in results:
        if not isinstance(result, dict):
            failures.append('revert result %r is not a mapping' % (result,))
            continue
        host = _host(result)
        hosts.append(host)
        reverted += [r.get('id') for r in result.get('reverted') or [] if isinstance(r, dict)]
        if result.get('unreachable'):
            failures.append(dict(host=host, error='unreachable: %s' % _result_msg(result, 'no detail')))
        elif result.get('failed'):
            failures.append(dict(host=host, error=_result_msg(result, 'revert failed')))
        elif result.get('skipped'):
            failures.append(dict(host=host, error='revert skipped'))
        failures += [dict(f, host=host) if isinstance(f, dict) else '%s: %s' % (host, f) for f in result.get('failures') or []]
    return dict(hosts=hosts, reverted=reverted, failures=failures), failures, bool(results) and not failures


def _failure_text(failure):
    if not isinstance(failure, dict):
        return str(failure)
    what = failure.get('id', failure.get('name'))
    where = ' on %s' % failure['host'] if failure.get('host') and what else failure.get('host', '')
    return '%s%s: %s' % (what or '', where, failure.get('error', failure.get('msg', '?')))


def _revert_reason(failures, confirmed):
    if confirmed:
        return None
    detail = '; '.join(_failure_text(f) for f in failures)
    return 'revert failed or was not confirmed%s; check the host ledger (pggit_chaos_revert)' % (': ' + detail if detail else '')


def _convergence(raw):
    """Compare each replica's pggit.history after the revert with the target's.

    ``converge_results`` are the registered results of ``pggit_verify`` with
    ``history_digest`` on each replica (a loop's ``results``). A replica whose
    digest differs, or that gave none, did not converge; a skipped item was
    not checked, which fails too.
    """
    results = raw.get('converge_results')
    if not results:
        return None, []
    primary = _mapping(_mapping(_mapping(raw.get('steady_state')).get('after')).get('history'))
    digest = primary.get('digest')
    replicas, diverged, unchecked = {}, [], []
    for result in results:
        result = _mapping(result)
        host = _host(result)
        if result.get('skipped') or not digest:
            unchecked.append(host)
            continue
        history = _mapping(result.get('history'))
        replicas[host] = history or None
        if history.get('digest') != digest:
            diverged.append('%s (%s)' % (host, '%s rows' % history.get('rows') if history.get('digest') else
                                         _result_msg(result, 'no pggit.history read')))
    reasons = []
    if diverged:
        reasons.append("after the revert %s did not converge to the primary's pggit.history (%s rows)" % (
            ', '.join(diverged), primary.get('rows', '?')))
    if unchecked:
        reasons.append("after the revert the convergence of %s to the primary's pggit.history was not checked%s" % (
            ', '.join(unchecked), '' if digest else " (the primary's history digest is unknown)"))
    return dict(primary=primary or None, replicas=replicas, diverged=diverged, unchecked=unchecked), reasons


def _workload(raw, excused=()):
    """Return (checker verdict, reasons) from the raw workload result.

    ``workload`` is what ``pggit_workload`` returned (directly or through
    ``async_status``); its ``check`` is the checker verdict. A bare checker
    verdict is accepted too. A skipped result means no workload ran.
    ``excused``: lost tokens already counted, by token, as the RPO of an
    asynchronous failover (reported there, not again here).
    """
    workload = raw.get('workload')
    if not isinstance(workload, dict) or workload.get('skipped'):
        return None, []
    # A bare checker verdict counts its failed statements in 'failed'; a failed task says True.
    if workload.get('failed') is True or workload.get('unreachable') is True:
        return None, ['workload failed: %s' % _result_msg(workload, 'no detail')]
    if 'ansible_job_id' in workload and not workload.get('finished'):
        return None, ['workload did not finish (job %s)' % workload['ansible_job_id']]
    check = workload.get('check') if 'check' in workload else workload
    if not isinstance(check, dict):
        return None, ['workload returned no checker verdict']
    excused = set(excused)
    shown = dict((key, [x for x in check.get(key) or [] if key != 'lost' or x not in excused]) for key in WORKLOAD_ANOMALIES)
    reasons = ['workload %s %d operation(s): %s' % (key, len(shown[key]), ', '.join(str(x) for x in shown[key][:5]))
               for key in WORKLOAD_ANOMALIES if shown[key]]
    if not reasons and check.get('valid') is False and not excused:
        reasons.append('workload check reported invalid history')
    return check, reasons


# --- did the fault really happen? -------------------------------------------------
# One pure function per fault family: raw record in, (reasons, evidence) out.
# An experiment that cannot prove its fault happened has failed.

def _kills_hit(raw):
    """kill_connections: backends were terminated and the workload had to reconnect."""
    kills = _mapping(raw.get('kills') if raw.get('kills') is not None else raw.get('fault'))
    terminated = kills.get('terminated')
    terminated = len(terminated) if isinstance(terminated, (list, tuple)) else _number(terminated)
    reconnects = _number(_mapping(raw.get('workload')).get('reconnects'))
    evidence = dict(terminated=terminated, workload_reconnects=reconnects)
    if terminated and terminated > 0 and reconnects and reconnects > 0:
        return [], evidence
    return ['the fault did not happen: %s backend(s) terminated, %s workload reconnect(s)' % (_count(terminated), _count(reconnects))], evidence


def _drift_complete(raw):
    """trigger_failure: every table committed with tracking off shows up as drift."""
    tracking = _mapping(raw.get('fault')).get('tracking', 'off')
    if tracking != 'off':
        return [], dict(tracking=tracking, drift_checked=False)
    workload = _mapping(raw.get('workload'))
    tables = workload.get('tables')
    check = _mapping(workload.get('check'))
    # Committed = acknowledged plus unknown outcomes the checker found in the catalog.
    committed = (int(_number(check.get('ok')) or 0) + int(_number(_mapping(check.get('unknown_resolved')).get('committed')) or 0)
                 + int(_number(_mapping(check.get('maybe_resolved')).get('committed')) or 0))
    committed = max(committed, int(_number(workload.get('table_count')) or 0))
    if not isinstance(tables, list):
        return ['the drift check cannot be made: the workload returned no list of the tables it committed with tracking off'], \
            dict(tracking=tracking, drift_checked=False, committed=committed)
    missing = sorted(set(str(t) for t in tables) - set(str(d) for d in raw.get('drift') or []))
    evidence = dict(tracking=tracking, drift_checked=True, committed=committed, tables=len(tables), missing=missing)
    reasons = []
    if not tables and not committed:
        reasons.append('the fault did not happen: no DDL committed while tracking was off, so there was no drift to find')
    if len(tables) < committed:
        reasons.append('the drift check is incomplete: the workload returned %d of the %d tables it committed with tracking off'
                       % (len(tables), committed))
    if missing:
        reasons.append('DDL run with tracking off is missing from the drift report (%d of %d): %s'
                       % (len(missing), len(tables), _names(missing)))
    return reasons, evidence


def _latency_mark(raw):
    """network_latency, packet_loss: the client's DDL got slower by the delay, or met the loss."""
    parameters = _mapping(raw.get('parameters'))
    delay, loss = _number(parameters.get('delay_ms')), _number(parameters.get('loss_pct'))
    before = _mapping(_mapping(raw.get('workload_baseline')).get('latency_ms'))
    workload = _mapping(raw.get('workload'))
    during, errors = _mapping(workload.get('latency_ms')), workload.get('errors') or {}
    p50_before, p50_during, slowest = _number(before.get('p50')), _number(during.get('p50')), _number(during.get('max'))
    added = round(p50_during - p50_before, 1) if p50_before is not None and p50_during is not None else None
    evidence = dict(requested_delay_ms=delay, requested_loss_pct=loss, ddl_latency_ms_before=before or None,
                    ddl_latency_ms_during=during or None, added_p50_ms=added, workload_errors=errors,
                    loss_mark_ms=LOSS_MARK_MS)
    if delay is None:
        return ['cannot tell whether the fault happened: parameters.delay_ms is %r' % (parameters.get('delay_ms'),)], evidence
    # A workload collected after the revert (chaos_window_latency) counts only the DDL that failed by the revert's start:
    # its errors cover the whole run, and one after the revert is no mark of the fault.
    failed_in_window = _number(workload.get('failed_ops_by_cutoff'))
    if failed_in_window is not None:
        evidence['failed_ddl_by_revert'] = int(failed_in_window)
    # A DDL still in flight at the revert's start (the loss held it on TCP's retransmissions) is left out of the window's
    # figures: how long it had run by then counts as its latency.
    held_open = _number(workload.get('open_at_cutoff_ms'))
    if 'open_at_cutoff_ms' in workload:
        evidence['ddl_open_at_revert_ms'] = held_open
    if delay > 0:
        happened = added is not None and added >= delay
    else:
        happened = (slowest is not None and slowest >= LOSS_MARK_MS) or (held_open is not None and held_open >= LOSS_MARK_MS) or (
            failed_in_window > 0 if failed_in_window is not None else bool(errors))
    if happened:
        return [], evidence
    return ['the fault did not happen: DDL latency p50 %s ms before; p50 %s, p95 %s, max %s ms during (added p50 %s ms); '
            '%d workload error(s); for %g ms delay and %s%% loss%s' % (
                _ms(p50_before), _ms(p50_during), _ms(_number(during.get('p95'))), _ms(slowest), _ms(added),
                sum(errors.values()) if isinstance(errors, dict) else len(errors), delay, '?' if loss is None else '%g' % loss,
                '' if delay > 0 else ' (needs a DDL of at least %g ms or a workload error)' % LOSS_MARK_MS)], evidence


def _replicas_behind(raw):
    """region_partition: every isolated replica held fewer history rows than the primary at the window's end."""
    if _flag(_mapping(raw.get('parameters')).get('full_isolation')):
        return [], dict(full_isolation=True, compared=False)
    window_end = _mapping(raw.get('history_at_window_end'))
    primary_rows = _number(_mapping(window_end.get('primary')).get('rows'))
    replicas = {}
    for result in window_end.get('replicas') or []:
        result = _mapping(result)
        replicas[_host(result)] = None if result.get('skipped') else _number(_mapping(result.get('history')).get('rows'))
    evidence = dict(full_isolation=False, primary_rows=primary_rows, replica_rows=replicas)
    if primary_rows is None:
        return ["the partition cannot be proven: the primary's pggit.history was not read at the window's end"], evidence
    if not replicas:
        return ['the partition cannot be proven: no isolated replica was looked at'], evidence
    unread = [host for host, rows in replicas.items() if rows is None]
    caught_up = ['%s holds %d history rows' % (host, rows) for host, rows in replicas.items() if rows is not None and rows >= primary_rows]
    reasons = []
    if unread:
        reasons.append("the partition cannot be proven: %s's pggit.history was not read at the window's end" % ', '.join(unread))
    if caught_up:
        reasons.append('the partition did not happen: %s, the primary %d' % ('; '.join(caught_up), primary_rows))
    return reasons, evidence


# --- resource and process faults -------------------------------------------------
# The fill is "near the ask" when the free space measured after it is within
# this much of the free space asked for: the larger of 1 MiB and 1 % of the
# filesystem (PostgreSQL keeps writing while the file grows).
FILL_TOLERANCE_BYTES = 1024 * 1024
FILL_TOLERANCE_SHARE = 0.01
# Memory pressure happened when the cgroup's peak reached this share of the
# memory stress-ng was asked to take (the peak counts PostgreSQL's memory too).
MEMORY_PEAK_SHARE = 0.9
# CPU pressure happened when the load measured in the cgroup reached this share
# of the asked load: whatever else runs on the host takes its share of the
# cores (a shared 2-core lab machine gave 30-85 % for 100 % asked), while
# PostgreSQL and the workload alone stay near 10 %.
CPU_LOAD_SHARE = 0.25
MIB = 1024.0 * 1024.0


def _mb(value):
    return '?' if value is None else '%.1f MiB' % (value / MIB)


def _seconds_text(value):
    return '?' if value is None else '%.2f s' % value


def _rounds(value):
    """Probe rounds ({at, healthy, failed}) in time order, bad items left out."""
    rounds = [r for r in value or [] if isinstance(r, dict) and _number(r.get('at')) is not None]
    return sorted(rounds, key=lambda r: float(r['at']))


def _down(round_):
    return 'connect' in (round_.get('failed') or [])


def _outage(rounds):
    """The first stretch of unhealthy probe rounds: (first unhealthy, last healthy before, first healthy after)."""
    first = next((n for n, r in enumerate(rounds) if r.get('healthy') is not True), None)
    if first is None:
        return None, None, None
    before = rounds[first - 1] if first > 0 else None
    after = next((r for r in rounds[first:] if r.get('healthy') is True), None)
    return rounds[first], before, after


def _first_healthy_since(rounds, since):
    if since is None:
        return None
    return next((r for r in rounds if r.get('healthy') is True and float(r['at']) >= since), None)


def _workload_failures(raw):
    """DDL the workload saw fail or end unknown, and its errors by class."""
    workload = _mapping(raw.get('workload'))
    check = _mapping(workload.get('check'))
    failed = int(_number(check.get('failed')) or 0) + int(_number(check.get('unknown')) or 0)
    return failed, _mapping(workload.get('errors'))


def _fill(fault):
    """The fill file really took the space: fill_bytes above 0, free space after it near the ask."""
    filesystem = _mapping(fault.get('filesystem'))
    fill_bytes, asked = _number(fault.get('fill_bytes')), _number(fault.get('asked_free_bytes'))
    size, after = _number(filesystem.get('size_bytes')), _number(filesystem.get('free_bytes_after'))
    tolerance = max(FILL_TOLERANCE_BYTES, FILL_TOLERANCE_SHARE * size) if size else FILL_TOLERANCE_BYTES
    off = after - asked if after is not None and asked is not None else None
    evidence = dict(fill_file=fault.get('fill_file'), fill_bytes=fill_bytes, mount=filesystem.get('mount'),
                    size_bytes=size, free_bytes_before=_number(filesystem.get('free_bytes_before')),
                    asked_free_bytes=asked, free_bytes_after=after, off_bytes=off, tolerance_bytes=tolerance,
                    enospc=fault.get('enospc'))
    if not fill_bytes or fill_bytes <= 0:
        return ['the fault did not happen: the fill file took %s bytes' % _count(fill_bytes)], evidence
    if off is None:
        return ['the fill cannot be proven: free space asked %s, measured after the fill %s'
                % (_mb(asked), _mb(after))], evidence
    if abs(off) > tolerance:
        return ['the fill missed its ask: %s free asked, %s free after the fill (off by %s, tolerance %s)'
                % (_mb(asked), _mb(after), _mb(off), _mb(tolerance))], evidence
    return [], evidence


def _disk_filled(raw):
    """disk_pressure: the fill file took the space asked for (tracked DDL going on is the steady state's and the workload's)."""
    return _fill(_mapping(raw.get('fault')))


def _disk_full(raw):
    """disk_full: the filesystem was full, the full disk reached PostgreSQL, and tracked DDL worked again after the revert.

    Reports whether the server went down in the window (a PANIC on a new WAL
    segment shuts it down: the window's probes could not connect) and the time
    from the revert of the fill until the first healthy probe (a tracked canary
    DDL) after it.
    """
    fault = _mapping(raw.get('fault'))
    reasons, evidence = _fill(fault)
    window, recovery = _rounds(fault.get('window_rounds')), _rounds(fault.get('recovery_rounds'))
    failed, errors = _workload_failures(raw)
    unhealthy = [r for r in window if r.get('healthy') is not True]
    asked_at = _number(_mapping(fault.get('fill_revert')).get('asked_at'))
    back = _first_healthy_since(recovery, asked_at)
    evidence.update(ddl_failed=failed, workload_errors=errors, window_probes=len(window), window_probes_unhealthy=len(unhealthy),
                    panicked=any(_down(r) for r in window),
                    recovery_s=round(float(back['at']) - asked_at, 3) if back else None)
    if not window:
        reasons.append('the full disk cannot be shown to reach PostgreSQL: the window was not probed')
    elif not failed and not unhealthy:
        reasons.append('the full disk never reached PostgreSQL: no DDL failed and all %d probes of the window were healthy'
                       % len(window))
    if asked_at is None or not recovery:
        reasons.append('the recovery after the full disk was not timed: no revert of the fill or no probe after it')
    elif back is None:
        reasons.append('tracked DDL did not work again within %s of the revert of the fill (%d probes)'
                       % (_seconds_text(float(recovery[-1]['at']) - asked_at), len(recovery)))
    return reasons, evidence


def _phases(raw):
    return [p for p in _mapping(raw.get('fault')).get('phases') or [] if isinstance(p, dict)]


def _memory_pressed(raw):
    """memory_pressure: in every phase the cgroup's peak reached the memory stress-ng was asked to take.

    Reports the OOM kills and whether PostgreSQL's sessions were reset (the
    workload had to reconnect), which says whom the OOM killer chose.
    """
    phases, reasons, shown = _phases(raw), [], []
    for number, phase in enumerate(phases, 1):
        result = _mapping(phase.get('result'))
        cgroup, figures = _mapping(result.get('cgroup')), _mapping(result.get('figures'))
        limit, pct, peak = _number(cgroup.get('limit_bytes')), _number(phase.get('asked')), _number(figures.get('peak_bytes'))
        asked = limit * pct / 100.0 if limit is not None and pct is not None else None
        shown.append(dict(phase=number, asked_pct=pct, asked_bytes=asked, limit_bytes=limit, peak_bytes=peak,
                          usage_bytes_before=_number(cgroup.get('usage_bytes_before')),
                          peak_share_of_ask=round(peak / asked, 3) if peak is not None and asked else None,
                          oom_kills=_number(figures.get('oom_kills')), cgroup=cgroup.get('paths'),
                          stress_pid=_mapping(result.get('stress')).get('pid')))
        if asked is None or peak is None:
            reasons.append('memory phase %d cannot be proven: asked %s%% of a limit of %s, peak %s'
                           % (number, '?' if pct is None else '%g' % pct, _mb(limit), _mb(peak)))
        elif peak < MEMORY_PEAK_SHARE * asked:
            reasons.append('the fault did not happen in memory phase %d: the cgroup peaked at %s, under %d%% of the %s asked'
                           % (number, _mb(peak), int(MEMORY_PEAK_SHARE * 100), _mb(asked)))
    if not phases:
        reasons.append('the fault did not happen: no memory phase ran')
    kills = [p['oom_kills'] for p in shown if p['oom_kills'] is not None]
    reconnects = _number(_mapping(raw.get('workload')).get('reconnects'))
    reset = bool(reconnects)
    oom_kills = sum(kills) if kills else None
    if not oom_kills:
        victim = 'none (no OOM kill counted)' if kills else 'unknown (the kernel gave no OOM count)'
    else:
        victim = ('PostgreSQL: its sessions were reset (the workload reconnected %d time(s))' % reconnects if reset
                  else 'stress-ng: PostgreSQL sessions went on untouched')
    return reasons, dict(phases=shown, oom_kills=oom_kills, postgres_sessions_reset=reset, workload_reconnects=reconnects,
                         oom_victim=victim)


def _cpu_pressed(raw):
    """cpu_pressure: the CPU load measured reached the asked load; DDL latency before and during for the report."""
    phases, reasons = _phases(raw), []
    before = _mapping(_mapping(raw.get('workload_baseline')).get('latency_ms'))
    during = _mapping(_mapping(raw.get('workload')).get('latency_ms'))
    evidence = dict(ddl_latency_ms_before=dict(p50=before.get('p50'), p95=before.get('p95')) if before else None,
                    ddl_latency_ms_during=dict(p50=during.get('p50'), p95=during.get('p95')) if during else None, phases=[])
    for number, phase in enumerate(phases, 1):
        result = _mapping(phase.get('result'))
        asked, measured = _number(phase.get('asked')), _number(_mapping(result.get('figures')).get('cpu_load_measured_pct'))
        evidence['phases'].append(dict(phase=number, asked_load_pct=asked, measured_load_pct=measured,
                                       stress=_mapping(result.get('stress')), cgroup=_mapping(result.get('cgroup')).get('paths')))
        if asked is None or measured is None:
            reasons.append('cpu phase %d cannot be proven: asked load %s%%, measured %s'
                           % (number, '?' if asked is None else '%g' % asked, '?' if measured is None else '%g%%' % measured))
        elif measured < CPU_LOAD_SHARE * asked:
            reasons.append('the fault did not happen in cpu phase %d: load measured %.1f%%, under %d%% of the %g%% asked'
                           % (number, measured, int(CPU_LOAD_SHARE * 100), asked))
    if not phases:
        reasons.append('the fault did not happen: no cpu phase ran')
    return reasons, evidence


def _signalled(raw, signal):
    signalled = [s for s in _mapping(raw.get('fault')).get('signalled') or [] if isinstance(s, dict)]
    shown = [dict((k, s.get(k)) for k in ('pid', 'role', 'backend_type', 'application_name', 'signal', 'exited', 'stopped')
                  if k in s) for s in signalled]
    wrong = [s for s in signalled if s.get('signal') not in (None, signal)]
    # The module confirms the effect: a KILLed process gone, a STOPped one paused.
    effect = 'stopped' if signal == 'STOP' else 'exited'
    missed = [s for s in signalled if s.get(effect) is False]
    reasons = []
    if not signalled:
        reasons.append('the fault did not happen: no process was signalled')
    if wrong:
        reasons.append('signalled with %s, not %s: %s' % (', '.join(sorted(set(str(s.get('signal')) for s in wrong))), signal,
                                                          _names(s.get('pid') for s in wrong)))
    if missed:
        reasons.append('the signal %s had no effect: pid %s not %s' % (signal, _names(s.get('pid') for s in missed), effect))
    return reasons, shown


def _backend_killed(raw):
    """backend_crash: a backend was SIGKILLed and the workload had to reconnect; recovery time from the window's probes.

    recovery_s runs from the last healthy probe before the outage to the first
    healthy one after it (an upper bound); down_seen_s from the first unhealthy
    probe (a lower bound). An outage shorter than the probe interval may go
    unseen: then recovery_s_at_most is the widest gap between two probes.
    """
    fault = _mapping(raw.get('fault'))
    reasons, shown = _signalled(raw, 'KILL')
    reconnects = _number(_mapping(raw.get('workload')).get('reconnects'))
    rounds = _rounds(fault.get('window_rounds'))
    first, before, after = _outage(rounds)
    gaps = [float(b['at']) - float(a['at']) for a, b in zip(rounds, rounds[1:])]
    evidence = dict(signalled=shown, workload_reconnects=reconnects, window_probes=len(rounds), outage_seen=first is not None,
                    recovery_s=round(float(after['at']) - float(before['at']), 3) if after and before else None,
                    down_seen_s=round(float(after['at']) - float(first['at']), 3) if after and first else None,
                    # No probe failed: the outage fit between two probes, so it was no longer than the widest gap.
                    recovery_s_at_most=round(max(gaps), 3) if first is None and gaps else None)
    if shown and not reconnects:
        reasons.append('the kill did not reach the workload: it never reconnected')
    if first is not None and after is None:
        reasons.append('the target did not recover within the window: %d probe(s) unhealthy from the first failure on'
                       % len([r for r in rounds if float(r['at']) >= float(first['at'])]))
    return reasons, evidence


def _postmaster_killed(raw):
    """postmaster_crash: the postmaster was SIGKILLed, the server was down, and tracked DDL worked again after the restart.

    first_tracked_ddl_s runs from the moment the restart was asked (the revert
    of the process fault) to the first healthy probe (a tracked canary DDL).
    """
    fault = _mapping(raw.get('fault'))
    reasons, shown = _signalled(raw, 'KILL')
    rounds = _rounds(fault.get('window_rounds'))
    down = [r for r in rounds if _down(r)]
    asked_at = _number(_mapping(fault.get('restart')).get('asked_at'))
    back = _first_healthy_since(rounds, asked_at)
    evidence = dict(signalled=shown, window_probes=len(rounds), probes_down=len(down), restart_asked_at=asked_at,
                    down_s=round(asked_at - float(down[0]['at']), 3) if down and asked_at is not None else None,
                    first_tracked_ddl_s=round(float(back['at']) - asked_at, 3) if back else None)
    if shown and rounds and not down:
        reasons.append('the fault did not happen: the server never went down (all %d probes of the window connected)' % len(rounds))
    if not rounds:
        reasons.append('the crash cannot be proven: the window was not probed')
    if asked_at is None:
        reasons.append('the server was not restarted by the revert of the process fault')
    elif back is None:
        reasons.append('tracked DDL did not work again after the restart within the window')
    return reasons, evidence


def _history_rows(results):
    rows = {}
    for result in results or []:
        result = _mapping(result)
        rows[_host(result)] = None if result.get('skipped') else _number(_mapping(result.get('history')).get('rows'))
    return rows


def _replicas_paused(raw):
    """process_pause: the walreceivers were stopped, and each paused replica's pggit.history did not grow in the window.

    Rows at the window's start (just after the SIGSTOP) must equal the rows at
    its end, and be fewer than the primary's then; the catch-up after the
    SIGCONT, row for row, is the convergence check.
    """
    fault = _mapping(raw.get('fault'))
    reasons, shown = _signalled(raw, 'STOP')
    window_end = _mapping(raw.get('history_at_window_end'))
    primary_rows = _number(_mapping(window_end.get('primary')).get('rows'))
    start, end = _history_rows(fault.get('replicas_at_start')), _history_rows(window_end.get('replicas'))
    evidence = dict(signalled=shown, primary_rows=primary_rows, replica_rows_at_start=start, replica_rows_at_end=end)
    if primary_rows is None:
        reasons.append("the pause cannot be proven: the primary's pggit.history was not read at the window's end")
    if not end:
        reasons.append('the pause cannot be proven: no paused replica was looked at')
    for host in sorted(end):
        if end[host] is None or start.get(host) is None:
            reasons.append("the pause cannot be proven: %s's pggit.history was not read at the window's %s"
                           % (host, 'end' if end[host] is None else 'start'))
        elif end[host] != start[host]:
            reasons.append('the pause did not happen: the pggit.history of %s grew from %d to %d rows in the window'
                           % (host, start[host], end[host]))
        elif primary_rows is not None and end[host] >= primary_rows:
            reasons.append('the pause cannot be proven: %s holds %d history rows, the primary %d (it did not fall behind)'
                           % (host, end[host], primary_rows))
    return reasons, evidence


# --- database faults ----------------------------------------------------------------
# A tracked DDL counts as blocked by the held lock when it waited this long (the
# workload's DDL take a few ms otherwise; lock_timeout ends the rest).
BLOCKED_MARK_MS = 250.0
# The skew is where it was asked when the server measured it within this much.
CLOCK_TOLERANCE_S = 5.0
# After the revert the server's now() is true when it is within this much of the host's (and controller's) clock.
CLOCK_TRUE_S = 2.0


def _pct(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100.0 * (len(ordered) - 1)))))]


def _op_times(raw):
    """The workload's DDL as (started, ms, outcome), bad items left out."""
    ops = []
    for item in _mapping(raw.get('workload')).get('op_times') or []:
        if isinstance(item, (list, tuple)) and len(item) == 3 and _number(item[0]) is not None and _number(item[1]) is not None:
            ops.append((float(item[0]), float(item[1]), str(item[2])))
    return ops


def _window_ops(raw, start, end):
    timeline = dict((name, _epoch(value)) for name, value in _mapping(raw.get('timings')).items())
    since, until = timeline.get(start), timeline.get(end)
    if since is None or until is None:
        return None
    return [op for op in _op_times(raw) if since <= op[0] < until]


# The holder's side of a deadlock: who the detector cancelled, in the words of the report.
DEADLOCK_LOSER = {'holder': 'holder', 'waiter': 'ddl'}


def _deadlock_phase(raw):
    """lock_contention's second phase: (reasons, evidence), evidence None when the role did not run it.

    The holder held one table (SHARE on pggit.history) and, once a tracked DDL
    waited on it while holding ROW EXCLUSIVE on the other (pggit.objects), asked
    for the other: the detector must have cancelled one side with 40P01. The
    holder lost when its second lock ended in 40P01; the DDL lost when the
    holder got its lock after the DDL's transaction aborted and the workload
    saw a DeadlockDetected error. A cancelled DDL must have left no row in
    pggit.history or pggit.objects; a DDL that won must be tracked.
    """
    fault = _mapping(raw.get('fault'))
    phase = _mapping(fault.get('deadlock'))
    if not phase.get('enabled'):
        return [], None
    then = _mapping(_mapping(phase.get('lock')).get('then_lock'))
    waiters = [w for w in then.get('waiters') or [] if isinstance(w, dict)]
    workload = _mapping(raw.get('workload'))
    ddl_deadlocks = int(_number(_mapping(workload.get('errors')).get('DeadlockDetected')) or 0)
    since, until = _epoch(phase.get('started_at')), _epoch(phase.get('ended_at'))
    ops = None if since is None or until is None else [op for op in _op_times(raw) if since <= op[0] < until]
    result, lost = then.get('result'), DEADLOCK_LOSER.get(then.get('lost'))
    evidence = dict(result=result, lost=lost, sqlstate=then.get('sqlstate'), holder_waited_ms=_number(then.get('waited_ms')),
                    asked_after_ms=_number(then.get('after_ms')), ddl_deadlock_errors=ddl_deadlocks,
                    waiters=[dict((k, w.get(k)) for k in ('pid', 'query', 'waited_ms', 'xact_status', 'history_rows', 'objects_rows'))
                             for w in waiters],
                    ddl_in_phase=None if ops is None else len(ops), ddl_failed_in_phase=len([op for op in ops or [] if op[2] == 'fail']),
                    released=_mapping(phase.get('release')).get('changed'))
    reasons = []
    if not then:
        return ['the deadlock phase cannot be proven: the holder reported nothing of its second lock'], evidence
    if result in ('pending', 'waiting'):
        why = 'no tracked DDL waited on the holder' if result == 'pending' else 'the detector had not decided when the phase ended'
        reasons.append('the deadlock did not happen: %s' % why)
    elif result == 'deadlock' and (lost != 'holder' or then.get('sqlstate') != '40P01'):
        reasons.append('the deadlock phase cannot be proven: the holder says deadlock with SQLSTATE %s' % then.get('sqlstate'))
    elif result == 'granted' and (lost != 'ddl' or not ddl_deadlocks):
        reasons.append("the deadlock did not happen: the holder's second lock was granted after %s ms while %s, and the workload saw "
                       '%d deadlock errors' % (then.get('waited_ms'), 'a waiting DDL aborted' if lost == 'ddl'
                                               else 'no waiting DDL aborted', ddl_deadlocks))
    elif result not in ('granted', 'deadlock'):
        reasons.append("the deadlock did not happen: the holder's second lock ended with %s: %s" % (result, then.get('msg')))
    if result in ('granted', 'deadlock') and not waiters:
        reasons.append('the deadlock cannot be proven: no DDL was waiting on the holder when it asked')
    for waiter in waiters:
        status, rows = waiter.get('xact_status'), (_number(waiter.get('history_rows')), _number(waiter.get('objects_rows')))
        if status == 'aborted' and rows != (0, 0):
            reasons.append('half-tracked: the cancelled DDL of backend %s left %g history and %g objects rows'
                           % (waiter.get('pid'), rows[0], rows[1]))
        elif status == 'committed' and not rows[0]:
            reasons.append('the DDL of backend %s committed but left no history row (lost)' % waiter.get('pid'))
        elif status not in ('aborted', 'committed') and result in ('granted', 'deadlock'):
            reasons.append("the deadlock phase cannot be proven: the transaction of backend %s was %s when the holder last looked"
                           % (waiter.get('pid'), status or 'not read'))
    return reasons, evidence


def _lock_held(raw):
    """lock_contention: the locks were granted, tracked DDL in the window blocked, and ended ok or by its lock_timeout.

    The blocked time of each DDL the workload started while the lock was held
    (from inject_end, when the holder had its locks, until window_end, which
    the role marks just before it releases them) is reported as p50/p95/max,
    with the count that timed out; that none was half-tracked is the workload
    checker's part (exactly once).
    """
    fault = _mapping(raw.get('fault'))
    lock = _mapping(fault.get('lock'))
    granted = [dict(relation=l.get('relation'), mode=l.get('mode')) for l in lock.get('locks') or []
               if isinstance(l, dict) and l.get('granted') is True]
    tables = [str(t) if '.' in str(t) else 'pggit.%s' % t for t in lock.get('tables') or fault.get('tables') or []]
    missing = sorted(set(tables) - set(str(g['relation']) for g in granted))
    ops = _window_ops(raw, 'inject_end', 'window_end')
    waits = [op[1] for op in ops or []]
    timed_out = [op for op in ops or [] if op[2] == 'fail']
    errors = _mapping(_mapping(raw.get('workload')).get('errors'))
    evidence = dict(locks_granted=granted, holder=lock.get('holder'), mode=lock.get('mode'),
                    lock_timeout_ms=_number(fault.get('lock_timeout_ms')), ddl_in_window=None if ops is None else len(ops),
                    blocked_ms=dict(p50=_pct(waits, 50), p95=_pct(waits, 95), max=max(waits) if waits else None),
                    timed_out=len(timed_out), completed=len([op for op in ops or [] if op[2] == 'ok']),
                    unblocked=len([w for w in waits if w < BLOCKED_MARK_MS]),
                    lock_errors=dict((k, v) for k, v in errors.items() if k in ('LockNotAvailable', 'QueryCanceled')),
                    released=_mapping(fault.get('release')).get('changed'))
    reasons, evidence['deadlock'] = _deadlock_phase(raw)
    if not granted:
        reasons.append('the fault did not happen: the holder was granted no lock')
    elif missing:
        reasons.append('the fault did not happen on %s: no granted lock there' % ', '.join(missing))
    if ops is None:
        reasons.append('the blocking cannot be proven: the timeline has no inject_end or window_end')
    elif not ops:
        reasons.append('the blocking cannot be proven: the workload started no DDL while the lock was held')
    elif max(waits) < BLOCKED_MARK_MS:
        reasons.append('the fault did not happen: no tracked DDL blocked (%d DDL in the window, the longest %.0f ms, under %g ms)'
                       % (len(ops), max(waits), BLOCKED_MARK_MS))
    elif evidence['unblocked']:
        reasons.append('the lock did not hold: %d of the %d DDL started while it was held took under %g ms'
                       % (evidence['unblocked'], len(ops), BLOCKED_MARK_MS))
    return reasons, evidence


def _amcheck(result):
    """(checked, corrupt [{index, error}], errors) of one pggit_verify result with amcheck."""
    result = _mapping(result)
    data = _mapping(result.get('amcheck'))
    if not data:
        data = next((_mapping(c.get('data')) for c in result.get('checks') or [] if isinstance(c, dict) and c.get('name') == 'amcheck'), {})
    checked = _number(data.get('indexes_checked'))
    corrupt = [dict(index=c.get('index'), error=c.get('error')) for c in data.get('corrupt') or [] if isinstance(c, dict)]
    errors = [dict(index=c.get('index'), error=c.get('error')) for c in data.get('errors') or [] if isinstance(c, dict)]
    return checked, corrupt, errors


def _amcheck_hosts(results):
    """Per host: {checked, corrupt, errors} from a loop's results (or one result under its own host)."""
    hosts = {}
    for result in results or []:
        result = _mapping(result)
        checked, corrupt, errors = _amcheck(result)
        hosts[_host(result)] = dict(checked=checked, corrupt=corrupt, errors=errors, skipped=bool(result.get('skipped')))
    return hosts


def _index_corrupted(raw):
    """index_corruption: the page was damaged, amcheck saw it in the window, amcheck is clean everywhere after the
    recovery, and history is intact (the rows there before the fault unchanged, by count and digest)."""
    fault = _mapping(raw.get('fault'))
    corrupt = _mapping(fault.get('corrupt'))
    index = corrupt.get('index')
    during = _amcheck_hosts(fault.get('amcheck_during'))
    after = _amcheck_hosts(fault.get('amcheck_after'))
    before = _mapping(fault.get('history_before'))
    prefix = _mapping(_mapping(raw.get('workload')).get('history_prefix'))
    workload = _mapping(raw.get('workload'))
    check = _mapping(workload.get('check'))
    primary = str(raw.get('host'))
    seen = [c for c in (during.get(primary) or {}).get('corrupt', []) if not index or str(c.get('index')) == str(index)
            or str(c.get('index')).rsplit('.', maxsplit=1)[-1] == str(index).rsplit('.', maxsplit=1)[-1]]
    detected = _number(fault.get('detected_at'))
    injected = _number(_mapping(raw.get('timings')).get('inject_end'))
    evidence = dict(index=index, block=corrupt.get('block'), mode=corrupt.get('mode'), reveal=corrupt.get('reveal'),
                    recover=corrupt.get('recover'), bytes_written=corrupt.get('bytes_written'),
                    sha256_before=corrupt.get('sha256_before'), sha256_after=corrupt.get('sha256_after'),
                    amcheck_during=during, amcheck_text=[c['error'] for c in seen], amcheck_after=after,
                    replicas_during=dict((h, 'corrupt' if v['corrupt'] else 'clean' if v['checked'] else 'not checked')
                                         for h, v in during.items() if h != primary),
                    replica_files_written=_mapping(corrupt.get('replicas')).get('files_written'),
                    detection_s=round(detected - injected, 3) if detected is not None and injected is not None else None,
                    recovery_s=_number(fault.get('recovery_s')),
                    ddl_during=dict(ok=check.get('ok'), failed=check.get('failed'), unknown=check.get('unknown'),
                                    errors=workload.get('errors') or {}),
                    history_before=before or None, history_prefix_after=prefix or None)
    reasons = []
    if not corrupt.get('bytes_written') or corrupt.get('sha256_before') == corrupt.get('sha256_after'):
        reasons.append('the fault did not happen: %s bytes written, page sha256 %s before and %s after'
                       % (_count(corrupt.get('bytes_written')), corrupt.get('sha256_before'), corrupt.get('sha256_after')))
    if primary not in during:
        reasons.append('the corruption cannot be proven: amcheck did not run on %s during the window' % primary)
    elif not seen:
        reasons.append('amcheck did not report the damaged index %s on %s during the window' % (index, primary))
    if not after:
        reasons.append('amcheck did not run on any host after the recovery')
    for host in sorted(after):
        state = after[host]
        if state['skipped'] or not state['checked']:
            reasons.append('amcheck after the recovery did not check %s' % host)
        elif state['corrupt'] or state['errors']:
            reasons.append('amcheck after the recovery is not clean on %s: %s' % (
                host, '; '.join('%s: %s' % (c['index'], c['error']) for c in state['corrupt'] + state['errors'])))
    if not before.get('digest') or not prefix.get('digest'):
        missing = 'before the fault' if not before.get('digest') else 'of those rows after it'
        reasons.append('history cannot be proven intact: no digest %s' % missing)
    elif (prefix.get('rows'), prefix.get('max_id'), prefix.get('digest')) != (before.get('rows'), before.get('max_id'), before.get('digest')):
        reasons.append('history is not intact: %s rows up to id %s with digest %s before the fault, %s rows up to id %s with digest %s after'
                       % (before.get('rows'), before.get('max_id'), before.get('digest'), prefix.get('rows'),
                          prefix.get('max_id'), prefix.get('digest')))
    return reasons, evidence


def _clock_phase(result, asked):
    result = _mapping(result)
    measured = _number(result.get('measured_offset_s'))
    return dict(asked_s=asked, measured_s=measured, restarted=result.get('restarted'), clocks=result.get('clocks'),
                timestamp=result.get('timestamp'), off_by_s=round(measured - asked, 3) if measured is not None and asked is not None else None)


def _clock_skewed(raw):
    """clock_skew: the server's clock was off as asked in each phase, the ordering audit of pggit.history saw it,
    and now() is true again after the revert (against the host's clock, which the controller shares)."""
    fault = _mapping(raw.get('fault'))
    parameters = _mapping(raw.get('parameters'))
    phases = [_clock_phase(fault.get('skew'), _number(parameters.get('offset_s'))),
              _clock_phase(fault.get('jump'), _number(parameters.get('jump_offset_s')))]
    audit = _mapping(_mapping(raw.get('workload')).get('history_order'))
    after = _mapping(fault.get('clock_after'))
    timeline = dict((name, _epoch(value)) for name, value in _mapping(raw.get('timings')).items())
    at, offset = _number(after.get('at')), _number(after.get('offset_s'))
    evidence = dict(phases=phases, ordering_audit=audit or None, clock_after=after or None,
                    what_time_queries_get_wrong=None)
    reasons = []
    for number, phase in enumerate(phases, 1):
        if phase['measured_s'] is None or phase['asked_s'] is None:
            reasons.append('clock phase %d cannot be proven: asked %s s, measured %s s' % (number, phase['asked_s'], phase['measured_s']))
        elif abs(phase['off_by_s']) > CLOCK_TOLERANCE_S:
            reasons.append('the fault did not happen in clock phase %d: asked %+g s, the server measured %+.1f s'
                           % (number, phase['asked_s'], phase['measured_s']))
    if not audit:
        reasons.append('the ordering audit of pggit.history was not made')
    else:
        evidence['what_time_queries_get_wrong'] = (
            'ORDER BY created_at puts %d of the %d rows written since the run began before rows with lower ids (by up to %.0f s); '
            'a filter created_at >= the first of them misses %d of them; %d lie in the future of the real clock'
            % (audit.get('backwards', 0), audit.get('rows', 0), audit.get('max_backwards_s') or 0,
               audit.get('missed_by_time_filter', 0), audit.get('in_the_future', 0)))
        if not audit.get('backwards'):
            reasons.append('the skew did not reach pggit.history: none of its %s rows since the run began runs backwards'
                           % audit.get('rows'))
    if offset is None:
        reasons.append("the clock after the revert was not read")
    elif abs(offset) > CLOCK_TRUE_S:
        reasons.append("the clock is not true after the revert: the server's now() is %+.1f s off the host's" % offset)
    elif at is None or timeline.get('window_end') is None or at < timeline['window_end']:
        # The role reverts the clock fault at the window's end and reads the clock after that.
        reasons.append('the clock after the revert was not read after the window (read at %s, window end %s)'
                       % (at, timeline.get('window_end')))
    return reasons, evidence


def _commits_waited(raw):
    """dependency_failure: synchronous_standby_names named the cut-off replica, commits waited (their cancelled waits
    are *maybe*, resolved in the catalog), and the replica was cut off."""
    fault = _mapping(raw.get('fault'))
    setting = _mapping(_mapping(_mapping(fault.get('setting')).get('settings')).get('synchronous_standby_names'))
    standby = str(fault.get('standby_name') or '')
    cut = [r for r in fault.get('partition') or [] if isinstance(r, dict) and not r.get('skipped') and not r.get('failed')]
    workload = _mapping(raw.get('workload'))
    check = _mapping(workload.get('check'))
    ops = _window_ops(raw, 'inject_end', 'window_end')
    waits = [op[1] for op in ops or []]
    maybe = int(_number(check.get('maybe')) or 0)
    evidence = dict(synchronous_standby_names=setting or None, standby=standby, partitioned=[_host(r) for r in cut],
                    maybe=maybe, maybe_resolved=check.get('maybe_resolved'),
                    commit_wait_ms=dict(p50=_pct(waits, 50), p95=_pct(waits, 95), max=max(waits) if waits else None),
                    ddl_in_window=None if ops is None else len(ops),
                    commit_timeout_ms=_number(fault.get('commit_timeout_ms')))
    reasons = []
    if not standby or standby not in str(setting.get('after') or ''):
        reasons.append('the fault did not happen: synchronous_standby_names is %r after the change, not naming %r'
                       % (setting.get('after'), standby))
    if not cut:
        reasons.append('the fault did not happen: the standby was not cut off')
    if not maybe:
        reasons.append('the fault did not happen: no commit waited for the standby until its wait was cancelled '
                       '(no "already committed locally" outcome among %s DDL)' % check.get('ops', '?'))
    return reasons, evidence


# --- region_bandwidth (pggit_chaos_bandwidth between the regions) ------------------------------------
# The role hands in ``fault``: ``replicas`` ([host, application_name or '', address] of each throttled replica),
# ``throttle`` (pggit_chaos_bandwidth's result on the primary), ``rate_kbit``, ``min_growth_bytes``,
# ``caught_up_bytes``, ``heal_started_at`` and ``heal_ended_at`` (epochs around the heal task) and ``catchup`` (the
# monitor samples from just before the heal on, oldest first, each with the lag per replica). The lag series over the
# window is the window's chaos monitor.
BANDWIDTH_GROWTH_BYTES = 128 * 1024  # without the throttle a replica's replay lag stays near 0
BANDWIDTH_CAUGHT_UP_BYTES = 64 * 1024


def _monitor_samples(raw):
    during = _mapping(_mapping(raw.get('steady_state')).get('during'))
    series = _mapping(during.get('monitor')).get('series')
    if not isinstance(series, list):
        series = during.get('series')
    return [s for s in series or [] if isinstance(s, dict) and _number(s.get('t')) is not None]


def _replica_ids(fault):
    """[(host, name in pg_stat_replication, address)] of the throttled replicas (the name defaults to the host)."""
    ids = []
    for item in fault.get('replicas') or []:
        item = list(item) if isinstance(item, (list, tuple)) else [item]
        if item and item[0]:
            host = str(item[0])
            ids.append((host, str(item[1]) if len(item) > 1 and item[1] else host, item[2] if len(item) > 2 else None))
    return ids


def _lag_of(sample, name, address=None):
    """A replica's replay lag in bytes in one monitor sample, or None.

    The monitor keys a replica by its application_name, and by ``name@client_addr`` only when two replicas share
    that name (client_addr as inet text, ``198.18.0.13/32``): then only the key with this replica's own address is
    its lag, never a twin's."""
    lags = _mapping(_mapping(sample).get('lag_bytes'))
    if name in lags:
        return _number(lags.get(name))
    own = str(address).split('/', 1)[0] if address else None
    for key, value in sorted(lags.items()):
        key_name, at, addr = str(key).rpartition('@')
        if at and key_name == name and own is not None and addr.split('/', 1)[0] == own:
            return _number(value)
    return None


def _int_or_none(value):
    return None if value is None else int(value)


def lag_growth(points):
    """The largest rise of the lag over the window: a later sample minus the lowest one before it."""
    low, rise = None, 0.0
    for point in points:
        lag = point[1]
        low = lag if low is None else min(low, lag)
        rise = max(rise, lag - low)
    return rise


def lag_held(points):
    """The rise of the lag still there at the window's end: the last sample minus the lowest one before it. The
    throttle is still on at the window's end, so its backlog is too; a burst of WAL (a bulk load, full-page writes
    after a checkpoint) that the replica replays at once rises and falls back on an unthrottled link."""
    lags = [point[1] for point in points]
    return lags[-1] - min(lags) if lags else 0.0


def _caught_up_from(samples, name, address, caught_up):
    """The first sample from which on the replica's lag stayed at most ``caught_up``, or None when the last one is
    not (a sample without the replica, disconnected, is not caught up)."""
    first = None
    for sample in samples:
        lag = _lag_of(sample, name, address)
        if lag is None or lag > caught_up:
            first = None
        elif first is None:
            first = sample
    return first


def _bandwidth_throttled(raw):
    """region_bandwidth: the throttle was applied, every throttled replica's replay lag grew during the window, and
    after the heal it came back under the caught-up threshold and stayed there, and its pggit.history was compared
    with the primary's (the convergence judges the digests)."""
    fault = _mapping(raw.get('fault'))
    throttle = _mapping(fault.get('throttle'))
    growth = _number(fault.get('min_growth_bytes'))
    growth = BANDWIDTH_GROWTH_BYTES if growth is None else growth
    caught_up = _number(fault.get('caught_up_bytes'))
    caught_up = BANDWIDTH_CAUGHT_UP_BYTES if caught_up is None else caught_up
    window = [s for s in _monitor_samples(raw) if s.get('phase') == 'window']
    start = _number(window[0]['t']) if window else None
    catch = fault.get('catchup')
    catch = [s for s in (catch if isinstance(catch, list) else []) if isinstance(s, dict) and _number(s.get('t')) is not None]
    heal_start, heal_end = _epoch(fault.get('heal_started_at')), _epoch(fault.get('heal_ended_at'))
    heal_end = heal_start if heal_end is None else heal_end
    # A sample before the heal began says nothing about the catch-up.
    since_heal = [s for s in catch if heal_start is None or _number(s['t']) >= heal_start]
    # finish's convergence (converge_results): the replicas whose pggit.history was compared with the primary's.
    compared = set(_host(_mapping(r)) for r in raw.get('converge_results') or [])
    load = _mapping(fault.get('load'))
    evidence = dict(rate_kbit=_number(fault.get('rate_kbit')), interface=throttle.get('interface'),
                    min_growth_bytes=growth, caught_up_bytes=caught_up, window_samples=len(window), replicas={},
                    load_tps=_number(load.get('tps')), load_error=_result_msg(load, '') if load.get('failed') else None)
    reasons = []
    if not throttle or throttle.get('failed') or throttle.get('skipped') or not throttle.get('interface'):
        reasons.append('the fault did not happen: pggit_chaos_bandwidth did not throttle the primary (%s)'
                       % _result_msg(throttle, 'no result'))
    replicas = _replica_ids(fault)
    if not replicas:
        reasons.append('the fault cannot be proven: no throttled replica was named')
    if not window:
        reasons.append('the fault cannot be proven: the chaos monitor took no sample in the window')
    for host, name, address in replicas:
        points = [(round(_number(s['t']) - start, 3), _lag_of(s, name, address)) for s in window]
        points = [(t, lag) for t, lag in points if lag is not None]
        lags = [point[1] for point in points]
        rise, held = lag_growth(points), lag_held(points)
        after = _lag_of(since_heal[-1], name, address) if since_heal else None
        first = _caught_up_from(since_heal, name, address, caught_up)
        # From the end of the heal (the throttle surely gone) to the first sample under the threshold from which on
        # the replica stayed caught up; 0 when it was back before the heal task returned.
        catchup_s = (round(max(0.0, _number(first['t']) - heal_end), 3)
                     if first is not None and heal_end is not None else None)
        evidence['replicas'][host] = dict(
            name=name, lag_series=[[t, int(lag)] for t, lag in points], max_lag_bytes=int(max(lags)) if lags else None,
            growth_bytes=int(rise), held_bytes=int(held), lag_at_window_end=int(lags[-1]) if lags else None,
            # Window samples without this replica's row (disconnected, or its replay position unknown): no lag read.
            missing_samples=len(window) - len(points),
            lag_after_heal=None if after is None else int(after), catchup_s=catchup_s,
            catchup_series=[[round(_number(s['t']) - heal_end, 3) if heal_end is not None else None,
                             _int_or_none(_lag_of(s, name, address))] for s in since_heal])
        if window and not points:
            reasons.append("the fault cannot be proven: no monitor sample of the window gives %s's replay lag (no %r%s in "
                           "pg_stat_replication; set the host var pggit_application_name)"
                           % (host, name, ' from %s' % address if address else ''))
        elif points and rise < growth:
            reasons.append('the fault did not happen: the replay lag of %s grew by %d bytes in the window, less than %d '
                           '(max %d bytes)' % (host, rise, growth, max(lags)))
        elif points and held < growth:
            reasons.append('the fault did not happen: the replay lag of %s rose by %d bytes but at the end of the window, '
                           'still throttled, it was only %d bytes above its low (less than %d): a burst of WAL the '
                           'replica replayed, not a throttled link' % (host, rise, held, growth))
        if 'catchup' not in fault:
            continue  # inject.yml alone (chaos_compose): no catch-up watch; finish judges the replicas' convergence
        if after is None:
            reasons.append("after the heal the replay lag of %s was not read (no %r in pg_stat_replication)" % (host, name))
        elif after > caught_up:
            reasons.append('after the heal %s did not catch up: its replay lag is still %d bytes (more than %d)'
                           % (host, after, caught_up))
        if host not in compared:
            reasons.append("after the heal the pggit.history of %s was not compared with the primary's (not among "
                           "finish's converge_hosts)" % host)
    return reasons, evidence


# --- failover experiments -----------------------------------------------------------------------
# The role hands the raw facts in ``fault``: ``ha`` (patroni|none), ``fault_at`` and ``heal_at`` (epochs),
# ``lost`` (member names lost in the window), ``regions`` (member -> region), cluster states (the shape of
# pggit_cluster_info: leader, members [{name, host, port, role, state, timeline, lag}], sync_standbys, timeline,
# settings) ``before`` the fault, at the ``failover`` (the first new leader seen, at ``failover_at``) and ``after``
# the heal, ``rejoined_at`` and ``rejoin_method``, ``history`` (member -> {rows, digest} after the heal),
# ``synchronous`` (whether the replication mode promises RPO 0), ``frozen`` (cgroups still frozen after the heal),
# ``failback`` (manual_failover: the original primary leads again). The workload is a multi-host client whose
# ``servers`` log says which server answered each DDL.
FAILOVER_EXPERIMENTS = ('primary_failover', 'region_failover', 'switchover', 'manual_failover')
# Member states of a replica that replays from the leader (Patroni 4 and the SQL view say streaming; Patroni 3.0 says
# running for any replica that is up: the role passes replica_states for it). A leader must be running.
STREAMING_STATES = ('streaming',)
LEADER_ROLES = ('leader', 'primary', 'master', 'standby_leader')


def _member_map(state):
    return dict((str(m.get('name')), m) for m in _mapping(state).get('members') or [] if isinstance(m, dict) and m.get('name'))


def _server_names(member):
    host, port = member.get('host'), member.get('port')
    if not host:
        return []
    return ['%s:%s' % (host, port)] if port not in (None, '') else [str(host)]


def _server_ops(raw):
    """The multi-host workload's DDL as checker ops with server, times and the new primary's catalog fate."""
    servers = _mapping(_mapping(raw.get('workload')).get('servers'))
    ops = []
    for item in servers.get('ops') or []:
        if isinstance(item, (list, tuple)) and len(item) == 6:
            ops.append(dict(token=item[0], outcome=item[1], server=item[2], started=_number(item[3]),
                            ended=_number(item[4]), in_catalog=item[5]))
    return ops, servers


def _is_leader(member):
    return str(member.get('role') or '') in LEADER_ROLES


def failover_fields(raw):
    """The report fields of a failover experiment (rto_s, rpo_lost_ddl, leaders, timeline, rejoin, ha_settings) and
    the accounting behind them. Pure; missing facts give None, never a made-up figure."""
    from ansible_collections.pggit.chaos.plugins.module_utils._checker import failover_accounting
    fault = _mapping(raw.get('fault'))
    before, during, after = _mapping(fault.get('before')), _mapping(fault.get('failover')), _mapping(fault.get('after'))
    old_leader = before.get('leader')
    new_leader = _mapping(fault.get('manual')).get('promoted') or during.get('leader')
    fault_at, heal_at = _number(fault.get('fault_at')), _number(fault.get('heal_at'))
    # The DDL times are the client host's clock: the fault time read on that clock, when the role read it, is the
    # one to compare them with (the controller's clock may be off by more than the RTO).
    client_fault_at = _number(fault.get('fault_at_client'))
    ddl_fault_at = client_fault_at if client_fault_at is not None else fault_at
    members = _member_map(before)
    members.update(_member_map(during))
    new_servers = _server_names(_mapping(members.get(str(new_leader)))) if new_leader else []
    old_servers = _server_names(_mapping(members.get(str(old_leader)))) if old_leader else []
    ops, servers = _server_ops(raw)
    accounting = failover_accounting(ops, ddl_fault_at, new_servers, old_servers) if ops and ddl_fault_at is not None else None
    rejoined_at = _number(fault.get('rejoined_at'))
    if not _rejoined(fault, old_leader):
        # The role notes a time when its wait for the rejoin ends, met or not: no rejoin seen, no rejoin time.
        rejoined_at = None
    return dict(
        old_leader=old_leader, new_leader=new_leader,
        # Named pg_timeline: the entry's 'timeline' is the experiment's own timestamps (the Gantt chart's).
        pg_timeline=dict(before=before.get('timeline'), after=during.get('timeline'),
                         final=(_mapping(fault.get('final')) or after).get('timeline')),
        rto_s=accounting['rto_s'] if accounting else None,
        rpo_lost_ddl=accounting['rpo_lost_ddl'] if accounting else None,
        write_pause_s=accounting['write_pause_s'] if accounting else None,
        failover_s=round(_number(fault.get('failover_at')) - fault_at, 3)
        if _number(fault.get('failover_at')) is not None and fault_at is not None else None,
        rejoin_s=round(rejoined_at - heal_at, 3) if rejoined_at is not None and heal_at is not None else None,
        rejoin_method=fault.get('rejoin_method'),
        ha_settings=fault.get('ha_settings') if fault.get('ha_settings') is not None else before.get('settings'),
        # Who leads when the experiment ends (after the failback, else after the heal): without a failback the
        # cluster is left off the leader it had, and the report says so.
        leader_at_end=(_mapping(fault.get('final')) if _member_map(_mapping(fault.get('final')))
                       else _mapping(fault.get('after'))).get('leader'),
    ), accounting, servers


def _declared_members(fault):
    """Every member of the cluster as the role declared it (``regions`` names them all) and as read before the fault:
    the checks after the heal cover each of them, not only those a later read happened to list."""
    names = set(str(n) for n in _mapping(fault.get('regions')))
    names.update(_member_map(_mapping(fault.get('before'))))
    return sorted(names)


def _rejoined(fault, old_leader):
    """Whether the cluster read after the heal holds the old leader and every lost member as streaming replicas."""
    members = _member_map(_mapping(fault.get('after')))
    streaming = tuple(fault.get('replica_states') or STREAMING_STATES)
    back = set(str(n) for n in fault.get('lost') or [])
    if old_leader:
        back.add(str(old_leader))
    return bool(back) and all(name in members and not _is_leader(members[name])
                              and str(members[name].get('state') or '') in streaming for name in back)


def _history_shows(fault, tl_before, new_leader):
    """Patroni's timeline history (GET /history, read after the heal) must hold the switch to the new leader: a row
    ending a timeline at or after the one before the fault, whose new leader is ``new_leader``."""
    history = _mapping(fault.get('after')).get('history')
    if not isinstance(history, list):
        return ["the timeline history after the heal was not read (Patroni's GET /history)"]
    for row in history:
        if (isinstance(row, (list, tuple)) and row and _number(row[0]) is not None and tl_before is not None
                and _number(row[0]) >= tl_before and (len(row) < 5 or str(row[4]) == str(new_leader))):
            return []
    return ['the timeline history after the heal does not show the switch from timeline %s to %s: %s'
            % ('%g' % tl_before if tl_before is not None else '?', new_leader, _compact(history[-3:]))]


def _failover_happened(raw):
    """primary_failover, region_failover, switchover, manual_failover: the leader changed to the member the mode
    promises (the synchronous standby; one in another region), the timeline went up, the new primary acknowledged
    tracked DDL (the RTO), no DDL acknowledged before the fault is missing on it where the mode promises RPO 0, and
    after the heal there is one leader, every other member streaming, the old leader among them, and every member's
    pggit.history equal row for row."""
    experiment = raw.get('experiment')
    fault = _mapping(raw.get('fault'))
    fields, accounting, servers = failover_fields(raw)
    before, during = _mapping(fault.get('before')), _mapping(fault.get('failover'))
    old_leader, new_leader = fields['old_leader'], fields['new_leader']
    regions = _mapping(fault.get('regions'))
    lost = [str(n) for n in fault.get('lost') or []]
    synchronous = _flag(fault.get('synchronous'))
    reasons = []
    evidence = dict(fields, accounting=accounting, observed_on=servers.get('observed_on'), lost=lost,
                    synchronous=synchronous, sync_standbys_before=before.get('sync_standbys'))
    if not old_leader:
        return ['the failover cannot be proven: the leader before the fault is unknown'], evidence
    if not new_leader:
        reasons.append('the failover did not happen: no new leader was seen after the fault on %s' % old_leader)
    elif new_leader == old_leader:
        reasons.append('the failover did not happen: %s still led after the fault' % old_leader)
    else:
        if experiment in ('primary_failover', 'switchover') and synchronous and fault.get('ha') == 'patroni':
            sync = [str(n) for n in before.get('sync_standbys') or []]
            if str(new_leader) not in sync:
                reasons.append('the new leader %s was not a synchronous standby before the fault (%s)'
                               % (new_leader, ', '.join(sync) or 'none'))
        if experiment == 'region_failover':
            lost_regions = sorted(set(str(regions.get(n)) for n in lost))
            if str(new_leader) in lost or str(regions.get(str(new_leader))) in lost_regions:
                reasons.append('the new leader %s is in the lost region (%s)' % (new_leader, ', '.join(lost_regions)))
            evidence['new_leader_region'] = regions.get(str(new_leader))
    tl_before, tl_after = _number(before.get('timeline')), _number(during.get('timeline'))
    if tl_before is None or tl_after is None or tl_after <= tl_before:
        reasons.append('the timeline did not go up with the failover (%s before, %s after)'
                       % (before.get('timeline'), during.get('timeline')))
    if fault.get('ha') == 'patroni' and new_leader and new_leader != old_leader:
        reasons += _history_shows(fault, tl_before, new_leader)
    observed_on = servers.get('observed_on')
    issued = _mapping(_mapping(raw.get('workload')).get('check')).get('ops')
    if accounting is not None and isinstance(issued, int) and len(_server_ops(raw)[0]) < issued:
        # The server log keeps at most OP_TIMES_MAX DDL: RPO and RTO over part of the run would be made up.
        reasons.append('RTO and RPO cannot be measured: the server log holds %d of the %d DDL issued'
                       % (len(_server_ops(raw)[0]), issued))
    new_names = _server_names(_mapping(_member_map(during).get(str(new_leader)) or _member_map(before).get(str(new_leader))))
    if accounting is None:
        reasons.append('RTO and RPO cannot be measured: the workload logged no server per DDL or the fault time is unknown')
    elif new_names and observed_on not in new_names:
        # The catalog that resolves RPO and the indeterminate outcomes must be the new leader's.
        reasons.append("RPO cannot be measured: the workload's final check read %s, not the new leader %s (%s)"
                       % (observed_on or 'no server', new_leader, ', '.join(new_names)))
    else:
        if fields['rto_s'] is None:
            reasons.append('the new leader %s acknowledged no tracked DDL after the fault (no RTO)' % new_leader)
        strict = synchronous or experiment == 'switchover'
        if strict and accounting['rpo_lost_ddl']:
            reasons.append('%d DDL acknowledged before the fault are missing on the new leader (RPO must be 0 %s): %s'
                           % (accounting['rpo_lost_ddl'], 'in synchronous mode' if synchronous else 'in a switchover',
                              _names(x['token'] for x in accounting['rpo_lost'])))
        unresolved = [x['token'] for x in accounting['indeterminate']['unresolved'] + accounting.get('unchecked_ok', [])]
        if unresolved:
            # An outcome never read against the new leader's catalog is neither kept nor lost: never a silent pass.
            reasons.append("%d DDL were not resolved against the new leader's catalog: %s" % (len(unresolved), _names(unresolved)))
        if accounting['lost_after_fault_ddl']:
            reasons.append('%d DDL acknowledged after the fault are missing on the new leader: %s'
                           % (accounting['lost_after_fault_ddl'], _names(x['token'] for x in accounting['lost_after_fault'])))
    reasons += _failover_after(fault, old_leader, new_leader)
    return reasons, evidence


def _failover_after(fault, old_leader, new_leader):
    """After the heal: one leader (the original one after a failback), every other member streaming (the old
    leader rejoined), no cgroup left frozen, and every member's pggit.history digest equal."""
    after = _mapping(fault.get('after'))
    members = _member_map(after)
    reasons = []
    if not members:
        return ['the cluster after the heal was not read']
    leaders = sorted(name for name, m in members.items() if _is_leader(m))
    if len(leaders) != 1:
        reasons.append('after the heal %d leaders (%s), not exactly one' % (len(leaders), ', '.join(leaders) or 'none'))
    declared = _declared_members(fault)
    absent = [name for name in declared if name not in members and name != str(old_leader)]
    if absent:
        reasons.append('after the heal %s not a member: every member must be back' % ', '.join(absent))
    streaming = tuple(fault.get('replica_states') or STREAMING_STATES)
    behind = ['%s (%s %s)' % (name, m.get('role'), m.get('state')) for name, m in sorted(members.items())
              if not _is_leader(m) and str(m.get('state') or '') not in streaming]
    down = ['%s (%s)' % (name, m.get('state')) for name, m in sorted(members.items())
            if _is_leader(m) and m.get('state') not in (None, 'running')]
    if down:
        reasons.append('after the heal the leader is not running: %s' % ', '.join(down))
    if behind:
        reasons.append('after the heal not streaming: %s' % ', '.join(behind))
    if old_leader and str(old_leader) not in members:
        reasons.append('the old leader %s is not a member after the heal' % old_leader)
    if fault.get('frozen'):
        reasons.append('cgroups still frozen after the heal: %s' % _names(fault['frozen']))
    final = _mapping(fault.get('final'))
    if _flag(fault.get('failback')) and not final.get('members'):
        # A failback was asked for: a cluster left off its declared primary must never pass unsaid.
        reasons.append('the failback was asked for, but the cluster after it was not read: %s may not lead again'
                       % old_leader)
    if final.get('members'):
        if str(final.get('leader')) != str(old_leader):
            reasons.append('after the failback %s leads, not the original leader %s' % (final.get('leader'), old_leader))
        lagging = ['%s (%s %s)' % (name, m.get('role'), m.get('state')) for name, m in sorted(_member_map(final).items())
                   if str(m.get('state') or '') not in (('running',) if _is_leader(m) else streaming)]
        if lagging:
            reasons.append('after the failback not streaming: %s' % ', '.join(lagging))
    history = _mapping(fault.get('history'))
    digests = dict((name, _mapping(history.get(name)).get('digest')) for name in sorted(set(members) | set(declared)))
    missing = sorted(name for name, digest in digests.items() if not digest)
    if missing:
        reasons.append("after the heal the pggit.history digest of %s was not read" % ', '.join(missing))
    if len(set(d for d in digests.values() if d)) > 1:
        reasons.append('after the heal pggit.history differs between members: %s' % ', '.join(
            '%s %s rows' % (name, _mapping(history.get(name)).get('rows', '?')) for name in sorted(digests)))
    return reasons


# --- connection_exhaustion (pggit_chaos_sessions) ---------------------------------
# The server's words when it has no slot left for a non-superuser (PostgreSQL 9.6 to 17).
SLOT_REFUSALS = ('too many clients', 'remaining connection slots are reserved')


def _is_slot_refusal(msg):
    return any(mark in str(msg or '') for mark in SLOT_REFUSALS)


def _sessions_exhausted(raw):
    """connection_exhaustion: the holder held idle sessions, pg_stat_activity showed them right after the fill (the
    module's sessions_after_fill, read when it returns: the start of the window, not during it), and new DDL clients
    were refused for want of a slot during the window (each such DDL a definite fail: lost ones fail the workload rule)."""
    fault = _mapping(raw.get('fault'))
    held = _number(fault.get('held'))
    seen = _number(fault.get('sessions_after_fill'))
    refused = _mapping(_mapping(raw.get('workload')).get('refused'))
    messages = [m for m in refused.get('messages') or [] if isinstance(m, dict)]
    slot = [m for m in messages if _is_slot_refusal(m.get('msg'))]
    count = sum(_number(m.get('count')) or 0 for m in slot)
    evidence = dict(sessions_held=held, sessions_seen_after_fill=seen, refused=count,
                    refused_other=(_number(refused.get('count')) or 0) - count,
                    first_refused_at=_epoch(refused.get('first_at')), last_refused_at=_epoch(refused.get('last_at')),
                    refusal_message=slot[0].get('msg') if slot else fault.get('refusal'))
    reasons = []
    if not held or held <= 0:
        reasons.append('the fault did not happen: the holder held %s session(s)' % _count(held))
    if seen is None or seen <= 0:
        reasons.append("the fault did not happen: pg_stat_activity showed %s of the holder's sessions right after the fill"
                       % _count(seen))
    if count <= 0:
        reasons.append('the fault did not happen: no DDL client was refused for want of a connection slot (%s refused '
                       'connection(s) in all)' % _count(_number(refused.get('count'))))
    return reasons, evidence


# --- load_spike: pgbench and several tracked-DDL workers ----------------------------------
LOAD_PHASES = ('before', 'during', 'after')


def _load_phases(ops, started, ended):
    """DDL latency (ms, acknowledged DDL only) before, during and after the pgbench run, by each DDL's start."""
    phases = dict((phase, []) for phase in LOAD_PHASES)
    for at, ms, outcome in ops:
        if outcome != 'ok':
            continue
        phases['before' if at < started else 'during' if at < ended else 'after'].append(ms)
    return dict((phase, dict(p50=_pct(values, 50), p95=_pct(values, 95), p99=_pct(values, 99), n=len(values)))
                for phase, values in phases.items())


def _check_counts(check):
    check = _mapping(check)
    counts = dict((key, check.get(key)) for key in ('ops', 'ok', 'failed', 'unknown', 'maybe'))
    counts.update((key, len(check.get(key) or [])) for key in WORKLOAD_ANOMALIES + ('phantom',))
    counts['valid'] = check.get('valid')
    return counts


def _load_spiked(raw):
    """load_spike: pgbench really ran during the window, and the DDL workers met it.

    Evidence: pgbench TPS before (the baseline run) and during, DDL latency
    p50/p95/p99 before, during and after the pgbench run (``latency_ms``, by
    phase: R's ramp reads ``evidence.latency_ms.during.p95``), exactly-once per
    worker and in total, and pgGit's tracking cost (on against off)."""
    fault = _mapping(raw.get('fault'))
    load, baseline = _mapping(fault.get('load')), _mapping(fault.get('baseline'))
    workload = _mapping(raw.get('workload'))
    reasons = []
    tps, transactions = _number(load.get('tps')), _number(load.get('transactions'))
    started, ended = _number(load.get('started_at')), _number(load.get('ended_at'))
    if load.get('failed') is True:
        reasons.append('the pgbench load failed: %s' % _result_msg(load, 'no detail'))
    elif not tps or not transactions:
        reasons.append('the fault did not happen: pgbench ran %s transaction(s) during the window (tps %s)'
                       % (_count(transactions), tps))
    phases = None
    if started is not None and ended is not None:
        phases = _load_phases(_op_times(raw), started, ended)
        if not phases['during']['n']:
            reasons.append('no tracked DDL was acknowledged while pgbench ran: the workers never met the load')
    elif not reasons:
        reasons.append('the pgbench run has no start and end time: the DDL cannot be placed against the load')
    workers = [w for w in workload.get('workers') or [] if isinstance(w, dict)]
    asked = _number(fault.get('ddl_workers'))
    if asked and workload and len(workers) != int(asked):
        reasons.append('%d DDL worker(s) were asked for, the workload reports %d' % (int(asked), len(workers)))
    cost = workload.get('tracking_cost')
    if isinstance(cost, dict) and not cost.get('error') and cost.get('valid') is False:
        reasons.append('the tracking-cost measure is not valid: %s of %s DDL with tracking on were tracked, %s with it off'
                       % (cost.get('on_tracked'), cost.get('n'), cost.get('off_tracked')))
    before = _number(baseline.get('tps'))
    evidence = dict(
        tps_before=before, tps_during=tps,
        tps_change_pct=round(100.0 * (tps - before) / before, 1) if tps is not None and before else None,
        tps_series=load.get('tps_series') or [], transactions=transactions,
        pgbench_latency_ms=load.get('latency_ms'), load_window=[started, ended],
        latency_ms=phases,
        workers=[dict(_check_counts(w.get('check')), worker=w.get('worker'), latency_ms=w.get('latency_ms')) for w in workers],
        total=_check_counts(workload.get('check')),
        tracking_cost=cost if isinstance(cost, dict) else None,
    )
    return reasons, evidence


# Fault check -> rule; 'auto' picks the rule by experiment name.
FAULT_CHECKS = {
    'load': _load_spiked,
    'connections': _kills_hit,
    'trigger': _drift_complete,
    'latency': _latency_mark,
    'partition': _replicas_behind,
    'disk': _disk_filled,
    'disk_full': _disk_full,
    'memory': _memory_pressed,
    'cpu': _cpu_pressed,
    'backend_kill': _backend_killed,
    'postmaster_kill': _postmaster_killed,
    'pause': _replicas_paused,
    'lock': _lock_held,
    'corrupt': _index_corrupted,
    'clock': _clock_skewed,
    'dependency': _commits_waited,
    'bandwidth': _bandwidth_throttled,
    'failover': _failover_happened,
    'sessions': _sessions_exhausted,
}
EXPERIMENT_FAULT_CHECKS = {
    'load_spike': 'load',
    'kill_connections': 'connections',
    'trigger_failure': 'trigger',
    'network_latency': 'latency',
    'packet_loss': 'latency',
    'region_partition': 'partition',
    'disk_pressure': 'disk',
    'disk_full': 'disk_full',
    'memory_pressure': 'memory',
    'cpu_pressure': 'cpu',
    'backend_crash': 'backend_kill',
    'postmaster_crash': 'postmaster_kill',
    'process_pause': 'pause',
    'lock_contention': 'lock',
    'index_corruption': 'corrupt',
    'clock_skew': 'clock',
    'dependency_failure': 'dependency',
    'region_bandwidth': 'bandwidth',
    'primary_failover': 'failover',
    'region_failover': 'failover',
    'switchover': 'failover',
    'manual_failover': 'failover',
    'connection_exhaustion': 'sessions',
}


def _member_fault(member, jobs):
    """A composed member's fault: a background job's handle is replaced by that job's collected result."""
    fault = _mapping(member.get('fault'))
    job = fault.get('ansible_job_id')
    if job is not None and not fault.get('finished'):
        return jobs.get(str(job), fault)
    return fault


# Composed members whose fault makes the shared DDL workload's connections fail (terminated, refused).
ERROR_MAKERS = frozenset(('kill_connections', 'connection_exhaustion'))


def _compose_member_raw(name, own):
    """A member's fault in the shape its own rule reads. load_spike's rule reads ``fault.load`` (the pgbench run during
    the window) and ``fault.baseline``; in a composed run its inject.yml hands over the pgbench run itself (collected by
    job id), and compose runs no pgbench baseline. That result has a ``load`` key of its own (the pgbench plan), so the
    shape is told by the member's place (a composed member), never guessed from its keys."""
    if name == 'load_spike':
        return dict(load=own, baseline={}, ddl_workers=None)
    return own


def _chain_packets(counters):
    """{chain: {target: packets}} from ``iptables -L CHAIN -v -x -n`` listings (compose reads its members' chains)."""
    packets = {}
    for item in counters or []:
        item = _mapping(item)
        chain = item.get('pggit_chaos_compose_chain') or item.get('chain')
        if not chain or item.get('rc') != 0:
            continue
        totals = packets.setdefault(str(chain), {})
        for line in str(item.get('stdout') or '').splitlines():
            fields = line.split()
            if len(fields) < 3 or not fields[0].isdigit():
                continue  # the "Chain ..." line and the column names
            totals[fields[2]] = totals.get(fields[2], 0) + int(fields[0])
    return packets


def _own_packets(own, packets):
    """A latency or loss member's own mark: (packets its rules queued or dropped, why it cannot be told or None)."""
    chains = [str(c) for c in own.get('chains') or []]
    if own.get('method') == 'netem' and not chains:
        return None, None  # a netem qdisc has no rule counters here: the workload's mark alone decides
    if not chains:
        return None, 'it has no iptables chain of its own (method %s)' % own.get('method')
    unread = [c for c in chains if c not in packets]
    if unread:
        return None, 'the packet counters of its chain(s) %s were not read' % ', '.join(unread)
    target = 'DROP' if own.get('method') == 'iptables' else 'NFQUEUE'
    return sum(packets[c].get(target, 0) for c in chains), None


def _composed(raw):
    """compose(a+b): every member's fault left its own mark, judged by that member's own rule.

    ``fault.members``: what each member's tasks/inject.yml handed over ({experiment, fault, owns, parameters});
    ``fault.jobs``: the collected results of the faults that ran in the background (matched by job id).
    A member named in ``parameters.members`` that handed over no fault was never injected."""
    fault = _mapping(raw.get('fault'))
    parameters = _mapping(raw.get('parameters'))
    jobs = dict((str(j.get('ansible_job_id')), j) for j in fault.get('jobs') or []
                if isinstance(j, dict) and j.get('ansible_job_id') is not None)
    members = [m for m in fault.get('members') or [] if isinstance(m, dict)]
    reasons, evidence = [], {}
    injected = [m.get('experiment') for m in members]
    for name in parameters.get('members') or []:
        if name not in injected:
            reasons.append('the fault did not happen: %s handed over no fault (its inject tasks did not run)' % name)
    if not members:
        reasons.append('the fault did not happen: the composed experiment injected no fault')
    for member in members:
        name = member.get('experiment')
        own = _member_fault(member, jobs)
        check = EXPERIMENT_FAULT_CHECKS.get(name)
        rule = FAULT_CHECKS.get(check)
        if rule is None:
            reasons.append('%s: no check that its fault happened is known' % name)
            continue
        if own.get('ansible_job_id') is not None and not own.get('finished'):
            reasons.append('%s: its background fault (job %s) was never collected' % (name, own['ansible_job_id']))
            continue
        workload = raw.get('workload')
        if name in ('network_latency', 'packet_loss') and isinstance(workload, dict) and (set(injected) & ERROR_MAKERS):
            # The shared workload's errors are another member's doing (killed or refused connections), not the loss's:
            # the loss must show as its own mark (a DDL slowed past a retransmission), or not at all.
            workload = dict(workload, errors={})
        member_raw = dict(raw, experiment=name, fault=_compose_member_raw(name, own), kills=None, workload=workload,
                          parameters=dict(parameters, **_mapping(member.get('parameters'))))
        member_reasons, member_evidence = rule(member_raw)
        member_evidence = dict(member_evidence or {})
        if check == 'latency' and len(members) > 1:
            # The shared workload's slow or failed DDL may be another member's doing: the member's own rules must have
            # matched packets too (its DROP rule dropped some, or its NFQUEUE rule queued some).
            hit, unknown = _own_packets(own, _chain_packets(fault.get('counters')))
            member_evidence['own_packets'] = hit
            if unknown:
                member_reasons.append('cannot tell whether the fault happened: %s' % unknown)
            elif hit is not None and not hit:
                member_reasons.append('the fault did not happen: its own %s rule matched no packet in the window'
                                      % ('DROP' if own.get('method') == 'iptables' else 'NFQUEUE'))
        reasons += ['%s: %s' % (name, reason) for reason in member_reasons]
        evidence[name] = dict(member_evidence, fault_check=check, owns=member.get('owns'))
    return reasons, dict(members=evidence)


def _fault_check(raw):
    name = raw.get('fault_check') or 'auto'
    if name == 'auto' and str(raw.get('experiment') or '').startswith('compose('):
        # A composed experiment (pggit_chaos_compose): each member is judged by its own rule.
        reasons, evidence = _composed(raw)
        return reasons, dict(evidence, fault_check='compose')
    if name == 'auto':
        name = EXPERIMENT_FAULT_CHECKS.get(raw.get('experiment'))
        if name is None:  # an experiment with no rule must say fault_check: none itself; never a silent pass
            return ['no check that the fault happened is known for experiment %r: pass fault_check (one of none, %s)'
                    % (raw.get('experiment'), ', '.join(sorted(FAULT_CHECKS)))], None
    if name == 'none':
        return [], None
    rule = FAULT_CHECKS.get(name)
    if rule is None:
        return ['unknown fault_check %r; expected one of auto, none, %s' % (name, ', '.join(sorted(FAULT_CHECKS)))], None
    reasons, evidence = rule(raw)
    return reasons, dict(evidence, fault_check=name)


def judge(raw):
    """Return the report entry for one raw experiment record.

    The one place where an experiment is judged: steady state, revert (from
    the raw revert results), replica convergence, workload, and whether the
    fault really happened (``FAULT_CHECKS``). Roles only gather the facts.
    """
    raw = raw or {}
    timeline = {name: _epoch((raw.get('timings') or {}).get(name)) for name in TIMESTAMPS}
    revert, failures, confirmed = _revert_outcome(raw)
    revert_reason = _revert_reason(failures, confirmed)
    convergence, convergence_reasons = _convergence(raw)
    failover = None
    if raw.get('experiment') in FAILOVER_EXPERIMENTS:
        failover, accounting, _servers = failover_fields(raw)
    excused = ()
    if failover is not None and accounting and not (_flag(_mapping(raw.get('fault')).get('synchronous'))
                                                    or raw.get('experiment') == 'switchover'):
        # Asynchronous replication may lose acknowledged DDL in a failover: counted by token as the RPO, not hidden.
        excused = [x['token'] for x in accounting['rpo_lost']]
    workload, workload_reasons = _workload(raw, excused)
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
        revert=revert,
        convergence=convergence,
        evidence=None,
        workload=workload,
        drift=list(raw.get('drift') or []),
        parameters=raw.get('parameters') or {},
        timings={name: _span(timeline, start, end) for name, (start, end) in DURATIONS.items()},
        timeline=timeline,
    )
    if failover is not None:
        entry.update(failover)
    if entry['skipped_reason']:
        entry.update(status='skipped', reasons=['skipped: %s' % entry['skipped_reason']])
    elif entry['aborted']:
        reasons = ['aborted%s' % (': ' + entry['error'] if entry['error'] else '')]
        entry.update(status='aborted', reasons=reasons + ([revert_reason] if revert_reason else []) + convergence_reasons)
    else:
        reasons = ['error: %s' % entry['error']] if entry['error'] else []
        if not entry['error']:
            # An error explains itself; the facts the fault check needs may be missing then.
            fault_reasons, entry['evidence'] = _fault_check(raw)
            reasons += fault_reasons
        reasons += _steady_state_reasons(entry['steady_state'])
        reasons += [revert_reason] if revert_reason else []
        reasons += convergence_reasons
        reasons += workload_reasons
        entry.update(status='failed' if reasons else 'passed', reasons=reasons)
    return entry


def ramp_breaks(entries):
    """The experiment ids of the steps at which a ramp found its breaking point.

    A ramp (pggit_chaos_ramp) stops at its first failing step: that step's own verdict is ``failed``, and that is the
    finding, not a failure of the run. The ramp's own entry judges the whole ramp (passed: a breaking point found,
    or none up to the last level, every step reverted). Only a ``failed`` last step of a ramp whose entry ``passed``
    with a breaking point counts here; an aborted step, or any step of a ramp that did not pass, stays a failure."""
    ids = set()
    for entry in entries:
        ramp = entry.get('ramp')
        if entry.get('status') != 'passed' or not isinstance(ramp, dict) or ramp.get('breaking_point') is not True:
            continue
        rows = [row for row in ramp.get('steps') or [] if isinstance(row, dict)]
        if rows and rows[-1].get('status') == 'failed' and not rows[-1].get('passed') and rows[-1].get('experiment_id'):
            ids.add(rows[-1]['experiment_id'])
    return ids


def summarize(entries):
    """Counts by status; a ramp's breaking step counts as ``breaking_points``, not as ``failed`` (see ramp_breaks)."""
    breaks = ramp_breaks(entries)
    summary = dict(total=len(entries), breaking_points=0, **{status: 0 for status in STATUSES})
    for entry in entries:
        if entry.get('experiment_id') in breaks and entry['status'] == 'failed':
            summary['breaking_points'] += 1
        else:
            summary[entry['status']] += 1
    return summary


def summary_line(summary):
    line = '%d experiment(s): %s' % (summary['total'], ', '.join('%d %s' % (summary[s], s) for s in STATUSES))
    if summary.get('breaking_points'):
        line += ', %d ramp breaking point(s)' % summary['breaking_points']
    return line


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
    breaks = ramp_breaks(entries)
    for entry in entries:
        case = ET.SubElement(suite, 'testcase', classname='pggit.chaos.%s' % _xml(entry.get('experiment')),
                             name=_xml(_label(entry)), time='%.3f' % (entry['timings'].get('total_s') or 0))
        message = _xml('; '.join(entry['reasons']))
        if entry.get('experiment_id') in breaks and entry['status'] == 'failed':
            # The ramp's finding, judged by the ramp's own test case: this step's reasons stay in its output.
            ET.SubElement(case, 'properties').append(ET.Element('property', name='ramp_breaking_point', value=message))
        elif entry['status'] in ('failed', 'aborted'):
            ET.SubElement(case, 'failure', message=message, type=entry['status']).text = _xml('\n'.join(entry['reasons']))
        elif entry['status'] == 'skipped':
            ET.SubElement(case, 'skipped', message=message)
        ET.SubElement(case, 'system-out').text = _xml(_compact(entry))
    ET.indent(root)
    return ET.tostring(root, encoding='unicode', xml_declaration=True) + '\n'


# Markdown that text from hosts must not produce: HTML (entities), code
# spans, links and images, table cell breaks (backslash escapes).
_MD_ENTITIES = (('&', '&amp;'), ('<', '&lt;'), ('>', '&gt;'))
_MD_PUNCTUATION = re.compile(r'([\\`\[\]|])')


def _md(value, newline=' '):
    """Escape text for a Markdown paragraph, list item, heading or (newline='<br>') table cell."""
    text = str('-' if value is None else value).replace('\r', '')
    for char, entity in _MD_ENTITIES:
        text = text.replace(char, entity)
    text = _MD_PUNCTUATION.sub(r'\\\1', text).replace('\n', newline)
    # A leading '#', '+', '-' or '*' would start a heading or a list.
    return re.sub(r'^(\s*)([#+*-])', r'\1\\\2', text)


def _cell(value):
    return _md(value, newline='<br>')


def _code(value):
    """A code span that holds any text: its fence is longer than any backtick run inside."""
    text = ' '.join(str(value).split())
    fence = '`' * (max([len(run) for run in re.findall('`+', text)] or [0]) + 1)
    pad = ' ' if text.startswith('`') or text.endswith('`') else ''
    return '%s%s%s%s%s' % (fence, pad, text, pad, fence)


def _workload_cell(workload):
    if not isinstance(workload, dict):
        return '-'
    return '%s / %d / %d / %d' % (workload.get('ok', '?'), *(len(workload.get(key) or []) for key in WORKLOAD_ANOMALIES))


_GANTT_ESCAPES = {'#': '#35;', ':': '#58;', ';': '#59;', '<': '#60;', '>': '#62;', '&': '#38;', '`': '#96;'}


def _gantt_text(text):
    # Mermaid reads ':' as the name/data separator and '#...;' as an entity;
    # labels may be rendered as HTML, so markup goes as entities too.
    return re.sub('[#:;<>&`]', lambda match: _GANTT_ESCAPES[match.group()], ' '.join(str(text).split()))


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


def _settings_text(settings):
    settings = _mapping(settings)
    keys = ('ttl', 'loop_wait', 'retry_timeout', 'synchronous_mode', 'synchronous_node_count', 'maximum_lag_on_failover')
    shown = ['%s=%s' % (key, settings[key]) for key in keys if key in settings]
    use = _mapping(settings.get('postgresql'))
    if 'use_pg_rewind' in use:
        shown.append('use_pg_rewind=%s' % use['use_pg_rewind'])
    return ', '.join(shown) or ('-' if not settings else _compact(settings))


def _timeline_text(timeline):
    timeline = _mapping(timeline)
    if timeline.get('before') is None and timeline.get('after') is None:
        return '-'
    text = '%s → %s' % (timeline.get('before', '?'), timeline.get('after', '?'))
    if timeline.get('final') not in (None, timeline.get('after')):
        text += ' (%s after the heal)' % timeline['final']
    return text


def _leads_text(entry):
    leader, old = entry.get('leader_at_end'), entry.get('old_leader')
    if leader is None:
        return '?'
    return '%s%s' % (leader, '' if str(leader) == str(old) else ' (not the leader before: no failback)')


BANDWIDTH_POINTS_SHOWN = 30


def _kib(value):
    return '?' if value is None else '%.0f' % (float(value) / 1024.0)


def _lag_series_text(points):
    """The window's lag in KiB, one figure per sample (every n-th when there are many), with their times."""
    points = [p for p in points or [] if isinstance(p, (list, tuple)) and len(p) == 2]
    if not points:
        return '-'
    step = -(-len(points) // BANDWIDTH_POINTS_SHOWN)
    shown = points[::step]
    return '%s (KiB at %s s)' % (' '.join(_kib(point[1]) for point in shown), ' '.join('%g' % point[0] for point in shown))


def _bandwidth_table(entries):
    """region_bandwidth: per throttled replica, the replay lag over the window (series, max), and the catch-up."""
    rows = [e for e in entries if e.get('experiment') == 'region_bandwidth' and isinstance(e.get('evidence'), dict)]
    if not rows:
        return []
    lines = ['', '## Region bandwidth', '',
             '| Experiment | Host | Replica | Rate kbit/s | pgbench TPS | Max lag KiB | Lag at window end KiB | Catch-up s '
             '| History equal | Lag over the window |',
             '|---|---|---|---:|---:|---:|---:|---:|---|---|']
    for entry in rows:
        ev = entry['evidence']
        convergence = _mapping(entry.get('convergence'))
        for host, rep in sorted(_mapping(ev.get('replicas')).items()):
            rep = _mapping(rep)
            diverged = any(str(d).startswith(host + ' (') for d in convergence.get('diverged') or [])
            equal = ('no' if diverged or host in (convergence.get('unchecked') or [])
                     else 'yes' if host in _mapping(convergence.get('replicas')) else '?')
            tps = '-' if ev.get('load_tps') is None else '%.1f' % ev['load_tps']
            cells = [entry.get('experiment'), entry.get('host'), host, _count(ev.get('rate_kbit')), tps, _kib(rep.get('max_lag_bytes')),
                     _kib(rep.get('lag_at_window_end')), _seconds(rep.get('catchup_s')), equal,
                     _lag_series_text(rep.get('lag_series'))]
            lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    return lines


def _failover_table(entries):
    """The failover figures of each failover experiment: leaders, timeline, RTO, RPO, write pause, rejoin, settings."""
    rows = [e for e in entries if e.get('experiment') in FAILOVER_EXPERIMENTS]
    if not rows:
        return []
    lines = ['', '## Failover', '',
             '| Experiment | Host | Old leader | New leader | Timeline | RTO s | RPO lost DDL | Write pause s | Rejoin s '
             '| Rejoin method | HA settings | Leads at the end |',
             '|---|---|---|---|---|---:|---:|---:|---:|---|---|---|']
    for entry in rows:
        cells = [entry.get('experiment'), entry.get('host'), entry.get('old_leader'), entry.get('new_leader'),
                 _timeline_text(entry.get('pg_timeline')), _seconds(entry.get('rto_s')), _count(entry.get('rpo_lost_ddl')),
                 _seconds(entry.get('write_pause_s')), _seconds(entry.get('rejoin_s')), entry.get('rejoin_method'),
                 _settings_text(entry.get('ha_settings')), _leads_text(entry)]
        lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    return lines


def _time_text(value):
    value = _epoch(value)
    return '-' if value is None else datetime.datetime.fromtimestamp(value, datetime.timezone.utc).strftime('%H:%M:%S.%f')[:-3]


def _sessions_table(entries):
    """connection_exhaustion: sessions held, seen right after the fill, DDL clients refused (first, last, the message)."""
    rows = [e for e in entries if e.get('experiment') == 'connection_exhaustion' and isinstance(e.get('evidence'), dict)]
    if not rows:
        return []
    lines = ['', '## Connection exhaustion', '',
             '| Experiment | Host | Sessions held | Seen after the fill | DDL clients refused | First refusal (UTC) '
             '| Last refusal (UTC) | Server said |',
             '|---|---|---:|---:|---:|---|---|---|']
    for entry in rows:
        ev = entry['evidence']
        cells = [entry.get('experiment'), entry.get('host'), _count(ev.get('sessions_held')), _count(ev.get('sessions_seen_after_fill')),
                 _count(ev.get('refused')), _time_text(ev.get('first_refused_at')), _time_text(ev.get('last_refused_at')),
                 ev.get('refusal_message') or '-']
        lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    return lines


def _ramp_sections(entries):
    """One section per ramp entry (pggit_chaos_ramp): the breaking point and a text bar chart of the steps."""
    from ansible_collections.pggit.chaos.plugins.plugin_utils._ramp import ramp_markdown
    lines = []
    for entry in entries:
        ramp = entry.get('ramp')
        if not isinstance(ramp, dict) or 'param' not in ramp:
            continue
        lines += ['', '## Ramp %s' % _md(_label(entry)), '']
        chart = ramp_markdown(ramp)
        # The summary is a paragraph (escaped); the chart a fenced text block that no text inside can close.
        lines += [_md(chart[0]), ''] + [line if line == '```' or line == '```text' else line.replace('`', "'") for line in chart[2:]]
    return lines


def _phase_text(phase):
    phase = _mapping(phase)
    if not phase.get('n'):
        return '-'
    return '%s / %s / %s (%d)' % (_ms(phase.get('p50')), _ms(phase.get('p95')), _ms(phase.get('p99')), phase['n'])


def _exactly_once_text(counts):
    counts = _mapping(counts)
    keys = ('ok', 'lost', 'duplicated', 'unexpected', 'maybe')
    return ' / '.join(_count(_number(counts.get(key))) for key in keys)


def _cost_text(cost):
    cost = _mapping(cost)
    if cost.get('error'):
        return 'not measured: %s' % cost['error']
    if not cost.get('n'):
        return '-'
    pct = cost.get('overhead_pct')
    shown = (_ms(cost.get('on_p50_ms')), _ms(cost.get('off_p50_ms')), _ms(cost.get('overhead_ms')),
             '?' if pct is None else '%.1f' % pct, cost['n'])
    return '%s / %s ms, +%s ms (%s%%), n=%s' % shown


def _load_table(entries):
    """load_spike: pgbench TPS before and during, DDL latency by phase, exactly-once per worker and in total, pgGit's cost."""
    rows = [e for e in entries if e.get('experiment') == 'load_spike' and isinstance(e.get('evidence'), dict)]
    if not rows:
        return []
    lines = ['', '## Load', '',
             '| Host | TPS before | TPS during | DDL ms p50 / p95 / p99 (n) before | during | after '
             '| DDL ok / lost / dup / unexpected / maybe | Tracking on / off p50 |',
             '|---|---:|---:|---|---|---|---|---|']
    for entry in rows:
        ev = entry['evidence']
        phases = _mapping(ev.get('latency_ms'))
        cells = [entry.get('host'), _ms(_number(ev.get('tps_before'))), _ms(_number(ev.get('tps_during')))]
        cells += [_phase_text(phases.get(phase)) for phase in LOAD_PHASES]
        cells += [_exactly_once_text(ev.get('total')), _cost_text(ev.get('tracking_cost'))]
        lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    for entry in rows:
        workers = [w for w in entry['evidence'].get('workers') or [] if isinstance(w, dict)]
        if not workers:
            continue
        lines += ['', 'Workers of %s:' % _md(_label(entry)), '',
                  '| Worker | DDL | ok / lost / dup / unexpected / maybe | p50 / p95 / p99 ms |', '|---:|---:|---|---|']
        for worker in workers:
            lat = _mapping(worker.get('latency_ms'))
            cells = [worker.get('worker'), _count(_number(worker.get('ops'))), _exactly_once_text(worker),
                     '%s / %s / %s' % (_ms(_number(lat.get('p50'))), _ms(_number(lat.get('p95'))), _ms(_number(lat.get('p99'))))]
            lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    return lines


def render_markdown(entries, meta, generated_at=None):
    meta = meta or {}
    lines = ['# Chaos report', '',
             'Playbook %s, generated %s.' % (_code(meta.get('playbook', '?')), _md(generated_at or _utc_now())), '',
             '**%s**.' % summary_line(summarize(entries)), '',
             '| Experiment | Host | Status | Reverted | Inject s | Window s | Revert s | Workload ok / lost / dup / unexpected |',
             '|---|---|---|---|---:|---:|---:|---|']
    for entry in entries:
        cells = [entry.get('experiment'), entry.get('host'), entry['status'].upper(), 'yes' if entry['reverted'] else 'NO',
                 _seconds(entry['timings'].get('inject_s')), _seconds(entry['timings'].get('window_s')),
                 _seconds(entry['timings'].get('revert_s')), _workload_cell(entry.get('workload'))]
        lines.append('| %s |' % ' | '.join(_cell(c) for c in cells))
    lines += _bandwidth_table(entries)
    lines += _failover_table(entries)
    lines += _ramp_sections(entries)
    lines += _sessions_table(entries)
    lines += _load_table(entries)
    not_passed = [e for e in entries if e['status'] != 'passed']
    if not_passed:
        lines += ['', '## Reasons']
        for entry in not_passed:
            lines += ['', '### %s (%s)' % (_md(_label(entry)), _md(entry['status'])), '']
            lines += ['- %s' % _md(reason) for reason in entry['reasons']]
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
    # The HTML page and the OpenMetrics text (plugin_utils/_html.py, _metrics.py) render the same entries.
    from ansible_collections.pggit.chaos.plugins.plugin_utils._html import render_html
    from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import render_openmetrics
    renderers = {'json': render_json, 'junit': render_junit, 'markdown': render_markdown, 'html': render_html,
                 'metrics': render_openmetrics}
    paths = {}
    for fmt, render in renderers.items():
        paths[fmt] = os.path.join(report_dir, FILENAMES[fmt])
        _write_atomic(paths[fmt], render(entries, meta, generated_at=generated_at))
    return paths
