# Copyright: pggit.chaos contributors
# MIT License
"""Breaking points (``chaos_ramp``) and combined faults (``chaos_compose``): the decisions, in Python.

Pure functions, no Ansible imports:

- ``ramp_plan`` checks a ramp request and returns its levels (one full
  experiment per level);
- ``ramp_state`` reads the step entries made so far (the verdict's report
  entries) and applies the stop rule: the first step that did not pass, was not
  reverted, or whose window DDL latency p95 is above the SLO ends the ramp;
- ``ramp_entry`` is the ramp's own report entry (the breaking point, one row per
  step); ``ramp_markdown`` draws it as a text bar chart;
- ``compose_plan`` checks a composed run and refuses two experiments that touch
  the same owned object on one host, before anything is injected.
"""
from __future__ import annotations

import json
import math
import os

# Ramp parameter -> (experiments that use it, lowest level, highest level or None, integer levels, unit).
RAMP_PARAMS = {
    'chaos_latency_ms': (('network_latency', 'packet_loss'), 0, 60000, True, 'ms'),
    'chaos_loss_pct': (('network_latency', 'packet_loss'), 0, 100, False, '%'),
    'chaos_ddl_workers': (('load_spike',), 1, 1000, True, 'workers'),
    'chaos_memory_pct': (('memory_pressure',), 0, 100, False, '%'),
    'chaos_fill_pct': (('disk_pressure',), 0, 100, False, '%'),
    'chaos_cpu_load': (('cpu_pressure',), 0, 100, True, '%'),
}
# (experiment, param) whose level 0 injects nothing: network_latency's only fault is its delay, packet_loss's its loss.
NO_FAULT_AT_ZERO = frozenset((('network_latency', 'chaos_latency_ms'), ('packet_loss', 'chaos_loss_pct')))
RAMP_KEYS = ('param', 'from', 'to', 'factor', 'step', 'slo_ms')
MAX_STEPS = 30
# The steps of a multiplicative ramp are rounded to this many significant digits (10 * 1.1 ** 3 = 13.31, not 13.310000000000002).
_DIGITS = 6


class RampError(ValueError):
    """Bad ramp or compose input: the message names the option and the value."""


def _number(name, value):
    if isinstance(value, bool) or value is None:
        raise RampError('chaos_ramp: %s must be a number, got %r' % (name, value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RampError('chaos_ramp: %s must be a number, got %r' % (name, value)) from None
    if not math.isfinite(number):
        raise RampError('chaos_ramp: %s must be a finite number, got %r' % (name, value))
    return number


def _parse(ramp):
    if isinstance(ramp, str):
        text = ramp.strip()
        try:
            ramp = json.loads(text)
        except ValueError:
            raise RampError('chaos_ramp must be a mapping or its JSON text, for example '
                            '{"param": "chaos_latency_ms", "from": 10, "to": 1000, "factor": 2}; got %r' % text) from None
    if not isinstance(ramp, dict):
        raise RampError('chaos_ramp must be a mapping with param, from, to and factor or step, got %r' % (ramp,))
    return ramp


def _experiments(value):
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(',')
    return [str(v).strip() for v in value if str(v).strip()]


def _level(value, integer):
    if integer:
        return int(round(value))
    rounded = float('%.*g' % (_DIGITS, value))
    return int(rounded) if rounded == int(rounded) else rounded


def ramp_plan(ramp, experiments, slo_ms=None, preset=None):
    """Check a ramp request; return {experiment, param, levels, slo_ms, unit, from, to, factor, step}.

    ``experiments``: the run's experiments (exactly one); ``slo_ms``: chaos_slo_ms (the ramp's own
    ``slo_ms`` wins); ``preset``: {var: value} of the variables already set (-e, inventory), which the
    ramp cannot override. Raises RampError with a message naming the option and the value.
    """
    ramp = _parse(ramp)
    unknown = sorted(set(ramp) - set(RAMP_KEYS))
    if unknown:
        raise RampError('chaos_ramp: unknown key(s) %s; expected %s' % (', '.join(map(repr, unknown)), ', '.join(RAMP_KEYS)))
    param = ramp.get('param')
    if param not in RAMP_PARAMS:
        raise RampError('chaos_ramp: param %r cannot be ramped; expected one of %s' % (param, ', '.join(sorted(RAMP_PARAMS))))
    users, lowest, highest, integer, unit = RAMP_PARAMS[param]
    experiments = _experiments(experiments)
    if len(experiments) != 1:
        raise RampError('chaos_ramp needs exactly one experiment in chaos_experiments, got %d (%s)'
                        % (len(experiments), ', '.join(experiments) or 'none'))
    experiment = experiments[0]
    if experiment not in users:
        raise RampError('chaos_ramp: param %s is not used by experiment %s; it ramps %s'
                        % (param, experiment, ', '.join(users)))
    for key in ('from', 'to'):
        if key not in ramp:
            raise RampError('chaos_ramp: %s is missing (the ramp goes from "from" to "to")' % key)
    start, end = _number('from', ramp['from']), _number('to', ramp['to'])
    if start > end:
        raise RampError('chaos_ramp: from must not be above to, got from=%g to=%g' % (start, end))
    if start < lowest or (highest is not None and end > highest):
        raise RampError('chaos_ramp: %s must stay within %g..%g, got from=%g to=%g' % (param, lowest, highest, start, end))
    if start <= 0 and (experiment, param) in NO_FAULT_AT_ZERO:
        # Level 0 is no fault at all: the step would fail to inject, and the ramp would call 0 its breaking point.
        raise RampError('chaos_ramp: %s=0 is no fault for %s (it has nothing else to inject); start above 0, got from=%g'
                        % (param, experiment, start))
    if ('factor' in ramp) == ('step' in ramp):
        raise RampError('chaos_ramp: give exactly one of factor (multiply) or step (add), got %s'
                        % ('both' if 'factor' in ramp else 'neither'))
    factor = step = None
    if 'factor' in ramp:
        factor = _number('factor', ramp['factor'])
        if factor <= 1:
            raise RampError('chaos_ramp: factor must be above 1, got %g' % factor)
        if start <= 0:
            raise RampError('chaos_ramp: a ramp by factor must start above 0, got from=%g' % start)
    else:
        step = _number('step', ramp['step'])
        if step <= 0:
            raise RampError('chaos_ramp: step must be above 0, got %g' % step)
    levels, value, rounds = [], start, 0
    while value <= end * (1 + 1e-9):
        level = _level(value, integer)
        if not levels or level != levels[-1]:
            levels.append(level)
        rounds += 1
        # Counted in rounds, not distinct levels: a factor of 1.0000001 or a step of 1e-300 (rounded to the same level,
        # or not moving at all) would otherwise loop for minutes or forever before refusing.
        if len(levels) > MAX_STEPS or rounds > MAX_STEPS:
            raise RampError('chaos_ramp: more than %d steps from %g to %g; use a larger factor or step' % (MAX_STEPS, start, end))
        value = value * factor if factor else value + step
    last = _level(end, integer)
    if levels[-1] != last:  # the ramp always ends at "to"
        levels.append(last)
    slo = ramp.get('slo_ms', slo_ms)
    if slo in (None, ''):
        slo = None
    else:
        slo = _number('slo_ms', slo)
        if slo <= 0:
            raise RampError('chaos_ramp: slo_ms (or chaos_slo_ms) must be above 0, got %g' % slo)
    preset = preset or {}
    if preset.get('chaos_compose') not in (None, '', [], {}):
        raise RampError('chaos_ramp and chaos_compose cannot be combined (chaos_compose=%r); run the ramp alone'
                        % (preset['chaos_compose'],))
    if preset.get(param) not in (None, ''):
        raise RampError('chaos_ramp ramps %s, which is already set to %r (by -e or the inventory); leave it unset'
                        % (param, preset[param]))
    return dict(experiment=experiment, param=param, levels=levels, slo_ms=slo, unit=unit,
                **{'from': _level(start, integer), 'to': last, 'factor': factor, 'step': step})


def window_p95(entry):
    """The DDL latency p95 (ms) of one step's fault window, read from its report entry; None when unmeasured.

    Read in order: the load experiment's per-window figures (``latency_ms.during``), the latency
    experiments' evidence (``ddl_latency_ms_during``), else the highest per-second p95 the monitor saw
    during the window."""
    entry = entry if isinstance(entry, dict) else {}
    evidence = entry.get('evidence') if isinstance(entry.get('evidence'), dict) else {}
    for holder in (entry, evidence, entry.get('workload') if isinstance(entry.get('workload'), dict) else {}):
        windows = holder.get('latency_ms')
        if isinstance(windows, dict) and isinstance(windows.get('during'), dict):
            value = _maybe(windows['during'].get('p95'))
            if value is not None:
                return value
    during = evidence.get('ddl_latency_ms_during')
    if isinstance(during, dict) and _maybe(during.get('p95')) is not None:
        return _maybe(during.get('p95'))
    steady = entry.get('steady_state') if isinstance(entry.get('steady_state'), dict) else {}
    probe = steady.get('during') if isinstance(steady.get('during'), dict) else {}
    monitor = entry.get('monitor') if isinstance(entry.get('monitor'), dict) else probe.get('monitor')
    series = monitor.get('series') if isinstance(monitor, dict) else None
    values = [_maybe(s.get('ddl_p95_ms')) for s in series or [] if isinstance(s, dict) and s.get('phase') == 'window']
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _maybe(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def step_entry(experiment, new_entries):
    """The verdict entry of one step, from the entries its experiment appended (a list), or the entry itself (a dict).

    A step that appended no entry of ``experiment``, or more than one, has no verdict: it gets a stand-in entry with
    status ``missing``, which never passes (a later step's entry must never be counted as this step's)."""
    if isinstance(new_entries, dict):
        return new_entries
    found = [e for e in new_entries or [] if isinstance(e, dict) and e.get('experiment') == experiment]
    if len(found) == 1:
        return found[0]
    return dict(experiment=experiment, status='missing', reverted=None,
                reasons=['the step left %d verdict entries of %s, expected exactly one' % (len(found), experiment)])


def _step_row(level, entry, slo, check_mode=False):
    timings = entry.get('timings') if isinstance(entry.get('timings'), dict) else {}
    p95 = window_p95(entry)
    status = entry.get('status')
    stop = None
    if status == 'skipped':
        # A skipped step says nothing about this level: it is neither passing nor the breaking point. In check mode
        # every step is skipped (planned only) and the ramp goes on planning.
        stop = None if check_mode else 'skipped: %s' % (entry.get('skipped_reason') or 'no reason given')
    elif status == 'missing':
        stop = 'no verdict: %s' % '; '.join(entry.get('reasons') or [])
    elif status == 'aborted' or entry.get('aborted') is True:
        stop = 'aborted: %s' % '; '.join(entry.get('reasons') or []) if entry.get('reasons') else 'aborted'
    elif entry.get('reverted') is not True:
        stop = 'not confirmed reverted'
    elif status != 'passed':
        stop = 'verdict %s: %s' % (status, '; '.join(str(r) for r in entry.get('reasons') or []) or 'no reason given')
    elif slo is not None and p95 is None:
        stop = 'no window DDL latency p95 was measured, so the %g ms SLO cannot be checked' % slo
    elif slo is not None and p95 > slo:
        stop = 'window DDL latency p95 %.1f ms is above the %g ms SLO' % (p95, slo)
    return dict(level=level, status=status, passed=stop is None and status == 'passed',
                skipped=status == 'skipped', inconclusive=status in ('skipped', 'missing'),
                p95_ms=None if p95 is None else round(p95, 1),
                reverted=entry.get('reverted') is True, experiment_id=entry.get('experiment_id'),
                window_s=timings.get('window_s'), revert_s=timings.get('revert_s'), total_s=timings.get('total_s'),
                stop_reason=stop)


def _steps(plan, steps):
    """One verdict entry per step run, in order (see step_entry)."""
    return [step_entry(plan['experiment'], s) for s in steps or [] if isinstance(s, (dict, list))]


def ramp_state(plan, steps, check_mode=False):
    """The stop rule. ``steps``: per step run so far, in order, its verdict entry or the list of entries it appended.

    The first step that did not pass stops the ramp. It is the breaking point (``first_failing``) only when it was
    judged and failed (or aborted, or was not reverted, or broke the SLO); a skipped step or one with no verdict ends
    the ramp as inconclusive, with no breaking point claimed.
    Returns {rows, done, stopped, next_level, last_passing, first_failing, stop_reason, aborted, inconclusive}."""
    levels, slo = plan['levels'], plan.get('slo_ms')
    steps = _steps(plan, steps)
    if len(steps) > len(levels):
        raise RampError('chaos_ramp: %d step results for %d levels' % (len(steps), len(levels)))
    rows = [_step_row(level, entry, slo, check_mode) for level, entry in zip(levels, steps)]
    stopper = next((row for row in rows if row['stop_reason'] is not None), None)
    failing = stopper if stopper is not None and not stopper['inconclusive'] else None
    # Only the steps before the one that stopped the ramp count; a pass needs status passed (never a skip).
    passing = [row for row in rows[:rows.index(stopper) if stopper else len(rows)] if row['passed']]
    done = stopper is not None or len(rows) == len(levels)
    return dict(rows=rows, done=done, stopped=stopper is not None,
                next_level=None if done else levels[len(rows)],
                last_passing=passing[-1]['level'] if passing else None,
                first_failing=failing['level'] if failing else None,
                stop_reason=stopper['stop_reason'] if stopper else None,
                aborted=bool(failing and (failing['status'] == 'aborted' or failing['stop_reason'].startswith('aborted'))),
                inconclusive=bool(stopper and stopper['inconclusive']))


def ramp_entry(plan, steps, host, check_mode=False):
    """The ramp's report entry (experiment ``ramp(<experiment>)``), with the breaking point under ``ramp``."""
    state = ramp_state(plan, steps, check_mode)
    steps = _steps(plan, steps)
    # A skipped step injected nothing, so it has nothing to revert.
    unreverted = [row for row in state['rows'] if not row['reverted'] and not row['skipped']]
    reasons, status, skipped_reason = [], 'passed', None
    if state['aborted']:
        status = 'aborted'
        reasons.append('the ramp was aborted at %s=%s: %s' % (plan['param'], state['first_failing'], state['stop_reason']))
    if state['rows'] and all(row['skipped'] for row in state['rows']):
        status, skipped_reason = 'skipped', state['rows'][0]['stop_reason'] or 'every step was skipped (%s)' % (
            'check mode: planned only' if check_mode else 'see the steps')
    elif state['inconclusive']:
        status = 'failed'
        reasons.append('the ramp ended without a breaking point at %s=%s: %s'
                       % (plan['param'], state['rows'][-1]['level'], state['stop_reason']))
    if unreverted:
        status = 'failed' if status == 'passed' else status
        reasons.append('step(s) not confirmed reverted: %s' % ', '.join('%s=%s' % (plan['param'], r['level']) for r in unreverted))
    if not state['rows']:
        status = 'failed'
        reasons.append('the ramp ran no step')
    timelines = [s.get('timeline') if isinstance(s.get('timeline'), dict) else {} for s in steps]
    started = next((t.get('started_at') for t in timelines if t.get('started_at') is not None), None)
    finished = next((t.get('finished_at') for t in reversed(timelines) if t.get('finished_at') is not None), None)
    total = round(finished - started, 3) if started is not None and finished is not None else None
    if state['inconclusive'] or status == 'skipped':
        summary = 'no breaking point found: %s under %s stopped at %s=%s (%s)%s' % (
            plan['experiment'], plan['param'], plan['param'], state['rows'][-1]['level'], state['stop_reason'] or status,
            '' if state['last_passing'] is None else '; last passing %s %s' % (state['last_passing'], plan['unit']))
    elif state['first_failing'] is not None:
        summary = 'breaking point of %s under %s: last passing %s, first failing %s %s (%s)' % (
            plan['experiment'], plan['param'], '-' if state['last_passing'] is None else state['last_passing'],
            state['first_failing'], plan['unit'], state['stop_reason'])
    else:
        summary = 'no breaking point: %s held up to %s=%s %s' % (plan['experiment'], plan['param'], plan['to'], plan['unit'])
    ramp = dict(plan, steps=state['rows'], last_passing=state['last_passing'], first_failing=state['first_failing'],
                breaking_point=state['first_failing'] is not None, stop_reason=state['stop_reason'], summary=summary)
    first = steps[0] if steps else {}
    return dict(
        experiment='ramp(%s)' % plan['experiment'],
        experiment_id='ramp-%s' % (first.get('experiment_id') or plan['experiment']),
        host=host, target_role=first.get('target_role'), status=status, reasons=reasons,
        reverted=not unreverted and bool(state['rows']), aborted=state['aborted'], error=None, skipped_reason=skipped_reason,
        steady_state={'before': None, 'during': None, 'after': None}, fault={}, revert=None, convergence=None,
        evidence=None, workload=None, drift=[],
        parameters={k: plan[k] for k in ('param', 'from', 'to', 'factor', 'step', 'slo_ms') if plan.get(k) is not None},
        timings={'inject_s': None, 'window_s': None, 'revert_s': None, 'total_s': total},
        timeline={'started_at': started, 'finished_at': finished},
        ramp=ramp,
    )


def ramp_markdown(ramp, width=40):
    """The ramp as Markdown lines: the breaking point and one text bar per step (its window DDL latency p95)."""
    rows = [r for r in ramp.get('steps') or [] if isinstance(r, dict)]
    values = [r['p95_ms'] for r in rows if _maybe(r.get('p95_ms')) is not None]
    slo = _maybe(ramp.get('slo_ms'))
    top = max(values + ([slo] if slo is not None else []) or [1.0]) or 1.0
    lines = ['%s.' % ramp.get('summary', ''), '', '```text',
             '%-10s %-*s %10s  %s' % ('%s' % ramp.get('param', 'level'), width, 'window DDL p95 (ms)', 'p95 ms', 'step')]
    for row in rows:
        p95 = _maybe(row.get('p95_ms'))
        cells = '#' * max(1, int(round(p95 / top * width))) if p95 else ''
        if slo is not None and p95 is not None:
            mark = int(round(slo / top * width))
            cells = (cells + ' ' * width)[:width]
            cells = cells[:mark] + '|' + cells[mark + 1:] if mark < width else cells + '|'
        verdict = ('pass' if row.get('passed') else 'skipped' if row.get('skipped') and not row.get('stop_reason')
                   else 'STOP: %s' % row.get('stop_reason') if row.get('inconclusive') else 'BREAK: %s' % row.get('stop_reason'))
        figure = '-' if p95 is None else '%.1f' % p95
        unreverted = '' if row.get('reverted') or row.get('skipped') else ' (NOT REVERTED)'
        lines.append('%-10s %-*s %10s  %s%s' % (row.get('level'), width, cells.rstrip(), figure, verdict, unreverted))
    if slo is not None:
        lines.append('%-10s %s' % ('', "'|' = SLO %g ms" % slo))
    lines.append('```')
    return lines


# --- compose -----------------------------------------------------------------

# Experiment -> (role, owned objects on the target host, as templates of the host name). Two members that own
# the same object cannot be composed: their faults would fight over it, and one revert would undo the other's.
COMPOSE_MEMBERS = {
    # Latency and loss may use netem, the root qdisc (handle 7a3c:) of the interface that region_bandwidth's htb takes:
    # one would fail to add it, and the one revert of either would delete the other's.
    'network_latency': ('pggit_chaos_latency', ('latency@%s', 'qdisc@%s')),
    'packet_loss': ('pggit_chaos_latency', ('latency@%s', 'qdisc@%s')),
    'kill_connections': ('pggit_chaos_connections', ('backends@%s',)),
    # kill_connections would terminate the idle sessions that hold max_connections full: both own the backends.
    # load_spike's pgbench clients need the very connection slots connection_exhaustion fills: both own the slots.
    'connection_exhaustion': ('pggit_chaos_sessions', ('sessions@%s', 'backends@%s', 'connection_slots@%s')),
    'load_spike': ('pggit_chaos_load', ('load@%s', 'connection_slots@%s')),
    'region_bandwidth': ('pggit_chaos_bandwidth', ('bandwidth@%s', 'qdisc@%s')),
}
_ROLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'roles')


def _has_inject(role):
    return os.path.isfile(os.path.join(_ROLES, role, 'tasks', 'inject.yml'))


def compose_plan(members, host, experiments=None, has_inject=_has_inject):
    """Check chaos_compose; return {name, members: [{experiment, role, owns}]}.

    ``experiments``: chaos_experiments when the user set it (it must then name the same experiments).
    Refuses unknown or repeated members, fewer than two, members without tasks/inject.yml, and two members that
    own the same object on ``host``."""
    names = _experiments(members)
    if len(names) < 2:
        raise RampError('chaos_compose needs at least two experiments, comma-separated, got %r' % (members,))
    repeated = sorted(set(n for n in names if names.count(n) > 1))
    if repeated:
        raise RampError('chaos_compose names %s more than once' % ', '.join(repeated))
    unknown = [n for n in names if n not in COMPOSE_MEMBERS]
    if unknown:
        raise RampError('chaos_compose: %s cannot be composed; composable experiments: %s'
                        % (', '.join(unknown), ', '.join(sorted(COMPOSE_MEMBERS))))
    missing = [n for n in names if not has_inject(COMPOSE_MEMBERS[n][0])]
    if missing:
        raise RampError('chaos_compose: %s has no tasks/inject.yml in its role (%s) yet, so it cannot be composed'
                        % (', '.join(missing), ', '.join(COMPOSE_MEMBERS[n][0] for n in missing)))
    owners, plan = {}, []
    for name in names:
        role, templates = COMPOSE_MEMBERS[name]
        owns = [t % host for t in templates]
        for thing in owns:
            if thing in owners:
                raise RampError('chaos_compose: %s and %s both touch %s; one fault per owned object on a host, '
                                'so they cannot run at once' % (owners[thing], name, thing))
            owners[thing] = name
        plan.append(dict(experiment=name, role='pggit.chaos.%s' % role, owns=owns))
    chosen = _experiments(experiments)
    if chosen and sorted(chosen) != sorted(names):
        raise RampError('chaos_compose runs %s as one experiment: leave chaos_experiments unset or name the same '
                        'experiments, got chaos_experiments=%s' % ('+'.join(names), ','.join(chosen)))
    return dict(name='compose(%s)' % '+'.join(names), members=plan)
