# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_summary
short_description: Count the verdicts of a chaos run for set_stats
version_added: 0.1.0
description:
  - Takes the C(pggit_experiment_results) of every host (each a list of report entries made by
    P(pggit.chaos.pggit_chaos_verdict#module)) and returns the run's summary, the data that
    C(playbooks/chaos.yml) publishes with M(ansible.builtin.set_stats) as C(pggit_chaos_summary)
    so that AWX workflows can branch on it.
  - The counts are the entries' own statuses, judged by the verdict; nothing is judged again here, except that
    the failing step at which a ramp (C(chaos_ramp)) found its breaking point counts under C(breaking_points),
    not C(failed), since the ramp's own entry judges the ramp.
  - An entry without an experiment, a host or a known status is an error that names it, never a silent
    count.
author: pggit.chaos maintainers (@pggit)
options:
  _input:
    description:
      - The hosts' result lists, for example
        C(groups['all'] | map('extract', hostvars) | map(attribute='pggit_experiment_results', default=[])).
      - A list of entries, or a list of such lists (one per host); a mapping of host to list is read by its values.
    type: raw
    required: true
'''

EXAMPLES = r'''
- name: Publish the summary for AWX workflows
  ansible.builtin.set_stats:
    data:
      pggit_chaos_summary: >-
        {{ groups['all'] | map('extract', hostvars) | map(attribute='pggit_experiment_results', default=[])
           | pggit.chaos.chaos_summary }}
    aggregate: true
'''

RETURN = r'''
_value:
  description:
    - C(passed), C(failed), C(aborted), C(skipped) and C(breaking_points) (counts), C(total), C(ok) (true when nothing
      failed or aborted), C(experiments), one C({experiment, host, status}) per entry in run order, and
      C(failures), one line per failed or aborted experiment with its reasons.
  type: dict
'''

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import ramp_breaks

STATUSES = ('passed', 'failed', 'aborted', 'skipped')


def _entries(value):
    if value is None:
        return []
    if isinstance(value, Mapping):
        if 'status' in value or 'experiment' in value:
            return [value]
        value = list(value.values())
    if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
        raise AnsibleFilterError('chaos_summary: expected a list of report entries (or one list per host), got %r' % (value,))
    entries = []
    for item in value:
        if isinstance(item, Mapping):
            entries.append(item)
        elif item is None:
            continue
        else:
            entries.extend(_entries(item))
    return entries


def chaos_summary(value):
    """{passed, failed, aborted, skipped, total, ok, experiments: [{experiment, host, status}], failures: [text]}."""
    summary = dict((status, 0) for status in STATUSES)
    summary['breaking_points'] = 0
    experiments, failures = [], []
    entries = _entries(value)
    breaks = ramp_breaks(entries)
    for entry in entries:
        experiment, host, status = entry.get('experiment'), entry.get('host'), entry.get('status')
        if not experiment or not host:
            raise AnsibleFilterError('chaos_summary: an entry has no experiment or host: %r' % (dict(entry),))
        if status not in STATUSES:
            raise AnsibleFilterError("chaos_summary: %s@%s has status %r, not one of %s"
                                     % (experiment, host, status, ', '.join(STATUSES)))
        if status == 'failed' and entry.get('experiment_id') in breaks:
            summary['breaking_points'] += 1
            experiments.append(dict(experiment=str(experiment), host=str(host), status=status, ramp_breaking_point=True))
            continue
        summary[status] += 1
        experiments.append(dict(experiment=str(experiment), host=str(host), status=status))
        if status in ('failed', 'aborted'):
            reasons = entry.get('reasons') or []
            failures.append('%s@%s %s: %s' % (experiment, host, status, '; '.join(str(r) for r in reasons) or 'no reason given'))
    summary.update(total=len(experiments), ok=not failures, experiments=experiments, failures=failures)
    return summary


class FilterModule(object):
    def filters(self):
        return {'chaos_summary': chaos_summary}
