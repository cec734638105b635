# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
name: chaos_report
type: aggregate
short_description: Write JSON, JUnit and Markdown reports of chaos experiments
version_added: 0.1.0
description:
  - Collects the C(pggit_chaos_entry) of every task result, including loop
    items and failed tasks, as returned by
    P(pggit.chaos.pggit_chaos_verdict#module).
  - At the end of the playbook writes C(chaos-report.json), C(chaos-junit.xml)
    and C(chaos-report.md) to O(report_dir), each atomically, and displays a
    one-line summary with the paths.
  - A playbook that recorded no experiment (C(lab_up.yml), C(revert.yml), a
    run refused before any experiment started) writes nothing, so it never
    overwrites the last real report.
author: pggit.chaos maintainers (@pggit)
requirements:
  - enable in configuration, for example C(callbacks_enabled = pggit.chaos.chaos_report)
options:
  report_dir:
    description:
      - Directory for the reports; created when missing. A relative path in
        C(ansible.cfg) is relative to that file.
    type: path
    default: reports
    ini:
      - section: pggit_chaos
        key: report_dir
    env:
      - name: PGGIT_CHAOS_REPORT_DIR
'''

import os

from ansible import __version__ as ansible_version
from ansible.plugins.callback import CallbackBase

from ansible_collections.pggit.chaos.plugins.plugin_utils._report import summarize, summary_line, write_reports


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'pggit.chaos.chaos_report'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.entries = []
        self.playbooks = []

    def _collect(self, result):
        # `result.result` from ansible-core 2.19; `_result` before.
        data = getattr(result, 'result', None)
        data = result._result if data is None else data
        entry = data.get('pggit_chaos_entry') if hasattr(data, 'get') else None
        if isinstance(entry, dict):
            self.entries.append(entry)

    def v2_playbook_on_start(self, playbook):
        self.playbooks.append(os.path.basename(getattr(playbook, '_file_name', None) or '?'))

    # A looped task reports each item separately, then once with `results`;
    # only the top level of each result is read, so nothing is counted twice.
    def v2_runner_on_ok(self, result):
        self._collect(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._collect(result)

    def v2_runner_item_on_ok(self, result):
        self._collect(result)

    def v2_runner_item_on_failed(self, result):
        self._collect(result)

    def v2_playbook_on_stats(self, stats):
        meta = dict(playbook=', '.join(self.playbooks) or None, ansible_version=ansible_version)
        report_dir = self.get_option('report_dir')
        if not self.entries:
            # A playbook that ran no experiment (lab_up, revert.yml, a run refused
            # before any experiment) must not overwrite the last real report.
            self._display.vv('pggit.chaos.chaos_report: no experiment recorded; %s left as it was' % report_dir)
            return
        try:
            paths = write_reports(report_dir, self.entries, meta)
        except OSError as exc:
            self._display.warning('pggit.chaos.chaos_report: could not write reports to %s: %s' % (report_dir, exc))
            return
        self._display.display('CHAOS REPORT: %s' % summary_line(summarize(self.entries)))
        self._display.display('CHAOS REPORT: %s' % ', '.join(paths[fmt] for fmt in ('json', 'junit', 'markdown')))
