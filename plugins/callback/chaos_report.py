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
  - At the end of the playbook writes C(chaos-report.json), C(chaos-junit.xml),
    C(chaos-report.md), C(chaos-report.html) (one self-contained page with the
    timeline and the monitor's charts) and C(chaos-metrics.prom) (OpenMetrics
    text for the node_exporter textfile collector) to O(report_dir), each
    atomically, whether the experiments passed, failed or aborted, and
    displays a one-line summary with the paths.
  - The reports are also rewritten after each experiment's verdict, so a job
    that never reaches its end (cancelled in AWX, killed by a job timeout,
    interrupted) still leaves the reports of the experiments it finished.
  - Each entry's chaos monitor (the series the experiment lifecycle attached
    to its window probe) is moved to the entry's C(monitor) key.
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
      - When neither the environment variable nor the ini key is set and the job
        runs under ansible-runner (AWX, AAP, ansible-navigator), the reports go to
        C(<artifact dir>/chaos), the one folder of a job that the runner keeps.
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

from ansible_collections.pggit.chaos.plugins.plugin_utils import _runner
from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import hoist_monitor
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
            self._write_partial()

    def _report_dir(self):
        return _runner.report_dir(*self.get_option_and_origin('report_dir'))

    def _meta(self):
        return dict(playbook=', '.join(self.playbooks) or None, ansible_version=ansible_version)

    def _write_partial(self):
        # A job cancelled or timed out (AWX sends SIGINT/SIGTERM) never reaches v2_playbook_on_stats: keep the
        # reports of the experiments done so far on disk after each verdict. Never fails the run.
        try:
            write_reports(self._report_dir(), [hoist_monitor(e) for e in self.entries], self._meta())
        except Exception as exc:  # pylint: disable=broad-except
            self._display.vv('pggit.chaos.chaos_report: could not write the reports so far: %s' % exc)

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
        meta = self._meta()
        report_dir = self._report_dir()
        if not self.entries:
            # A playbook that ran no experiment (lab_up, revert.yml, a run refused
            # before any experiment) must not overwrite the last real report.
            self._display.vv('pggit.chaos.chaos_report: no experiment recorded; %s left as it was' % report_dir)
            return
        entries = [hoist_monitor(entry) for entry in self.entries]
        try:
            paths = write_reports(report_dir, entries, meta)
        except OSError as exc:
            self._display.warning('pggit.chaos.chaos_report: could not write reports to %s: %s' % (report_dir, exc))
            return
        self._display.display('CHAOS REPORT: %s' % summary_line(summarize(entries)))
        self._display.display('CHAOS REPORT: %s' % ', '.join(paths[fmt] for fmt in ('json', 'junit', 'markdown', 'html', 'metrics')))
