"""The callback writes the HTML page and the OpenMetrics file with the others, the monitor hoisted into each entry."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import yaml

from ansible import constants as C

from ansible_collections.pggit.chaos.plugins.callback import chaos_report
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import FILENAMES, judge

NAME = 'pggit.chaos.chaos_report'
SERIES = [dict(t=1795800000.0 + i, phase='window', connections=2, history_rows=i, lag_bytes={}, lock_waits=0,
               pggit_health='ok', probe_ms=1.5) for i in range(5)]


@pytest.fixture
def callback():
    C.config.initialize_plugin_configuration_definitions('callback', NAME, yaml.safe_load(chaos_report.DOCUMENTATION)['options'])
    plugin = chaos_report.CallbackModule(display=MagicMock(verbosity=0))
    plugin._load_name = NAME
    return plugin


@pytest.mark.parametrize('status, raw', [
    ('passed', {}),
    ('failed', {'error': 'boom'}),
    ('aborted', {'aborted': True, 'error': 'aborted: 2 consecutive unhealthy probe(s)'}),
])
def test_html_and_prom_come_out_of_every_run(callback, tmp_path, status, raw):
    during = dict(healthy=True, monitor={'series': SERIES, 'interval_s': 1.0})
    entry = judge(dict(experiment='kill_connections', host='lab-1', fault_check='none', reverted=True,
                       steady_state=dict(before=dict(healthy=True), during=during, after=dict(healthy=True)), **raw))
    assert entry['status'] == status
    callback.set_options(direct={'report_dir': str(tmp_path)})
    callback.v2_runner_on_ok(SimpleNamespace(result=dict(pggit_chaos_entry=entry)))
    callback.v2_playbook_on_stats(MagicMock())
    assert sorted(os.listdir(str(tmp_path))) == sorted(FILENAMES.values())
    with open(str(tmp_path / FILENAMES['json']), encoding='utf-8') as handle:
        written = json.load(handle)['entries'][0]
    assert written['monitor']['series'] == SERIES and 'monitor' not in written['steady_state']['during']
    page = (tmp_path / FILENAMES['html']).read_text(encoding='utf-8')
    assert 'data-status="%s"' % status in page and 'data-metric="history_rows"' in page
    prom = (tmp_path / FILENAMES['metrics']).read_text(encoding='utf-8')
    assert 'pggit_chaos_verdict{experiment="kill_connections",host="lab-1"} %d' % {'passed': 1, 'failed': 0, 'aborted': -1}[status] in prom
    lines = [c.args[0] for c in callback._display.display.call_args_list]
    assert FILENAMES['html'] in lines[1] and FILENAMES['metrics'] in lines[1]


def test_reports_are_on_disk_after_each_verdict_before_the_run_ends(callback, tmp_path):
    """A job cancelled in AWX or killed by its timeout never reaches v2_playbook_on_stats: the reports of the
    experiments it finished must already be on disk."""
    during = dict(healthy=True, monitor={'series': SERIES, 'interval_s': 1.0})
    callback.set_options(direct={'report_dir': str(tmp_path)})
    for experiment in ('kill_connections', 'trigger_failure'):
        entry = judge(dict(experiment=experiment, host='lab-1', fault_check='none', reverted=True,
                           steady_state=dict(before=dict(healthy=True), during=during, after=dict(healthy=True))))
        callback.v2_runner_on_ok(SimpleNamespace(result=dict(pggit_chaos_entry=entry)))
        assert sorted(os.listdir(str(tmp_path))) == sorted(FILENAMES.values())
        with open(str(tmp_path / FILENAMES['json']), encoding='utf-8') as handle:
            written = json.load(handle)['entries']
        assert written[-1]['experiment'] == experiment and written[-1]['monitor']['series'] == SERIES
        assert 'data-experiment="%s"' % experiment in (tmp_path / FILENAMES['html']).read_text(encoding='utf-8')
        assert 'experiment="%s"' % experiment in (tmp_path / FILENAMES['metrics']).read_text(encoding='utf-8')
    assert len(written) == 2
    callback._display.display.assert_not_called()  # the summary lines stay for the end of the run
