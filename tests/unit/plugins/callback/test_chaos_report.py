from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import yaml

from ansible import constants as C

from ansible_collections.pggit.chaos.plugins.callback import chaos_report
from ansible_collections.pggit.chaos.plugins.plugin_utils._report import FILENAMES, judge

NAME = 'pggit.chaos.chaos_report'


def entry(status, **raw):
    raw.setdefault('reverted', True)
    raw.setdefault('steady_state', dict(before=dict(healthy=True), after=dict(healthy=True)))
    result = judge(dict(experiment='exp-%s' % status, host='pg1', fault_check='none', **raw))
    assert result['status'] == status
    return result


@pytest.fixture
def callback():
    # What the plugin loader does when it loads the callback by name.
    C.config.initialize_plugin_configuration_definitions('callback', NAME, yaml.safe_load(chaos_report.DOCUMENTATION)['options'])
    plugin = chaos_report.CallbackModule(display=MagicMock(verbosity=0))
    plugin._load_name = NAME
    return plugin


def load(report_dir):
    with open(os.path.join(report_dir, FILENAMES['json']), encoding='utf-8') as handle:
        return json.load(handle)


def test_collects_entries_and_writes_reports(callback, tmp_path):
    callback.set_options(direct={'report_dir': str(tmp_path / 'reports')})
    callback.v2_playbook_on_start(SimpleNamespace(_file_name='/src/playbooks/chaos.yml'))
    callback.v2_runner_on_ok(SimpleNamespace(result=dict(changed=False, pggit_chaos_entry=entry('passed'))))
    callback.v2_runner_on_ok(SimpleNamespace(result=dict(changed=False, ping='pong')))
    callback.v2_runner_on_ok(SimpleNamespace(_result=dict(pggit_chaos_entry=entry('failed', error='boom'))))  # before 2.19
    callback.v2_runner_on_failed(SimpleNamespace(result=dict(failed=True, pggit_chaos_entry=entry('aborted', aborted=True))))
    callback.v2_runner_item_on_ok(SimpleNamespace(result=dict(pggit_chaos_entry=entry('skipped', skipped_reason='no replica'))))
    callback.v2_runner_item_on_failed(SimpleNamespace(result=dict(failed=True, pggit_chaos_entry=entry('failed', reverted=False))))
    # The looped task's own result carries the items again under `results`; they are not counted twice.
    callback.v2_runner_on_ok(SimpleNamespace(result=dict(results=[dict(pggit_chaos_entry=entry('passed'))])))
    callback.v2_playbook_on_stats(MagicMock())

    report_dir = str(tmp_path / 'reports')
    assert sorted(os.listdir(report_dir)) == sorted(FILENAMES.values())
    document = load(report_dir)
    assert document['summary'] == dict(total=5, passed=1, failed=2, aborted=1, skipped=1, breaking_points=0)
    assert document['meta']['playbook'] == 'chaos.yml'
    suite = ET.parse(os.path.join(report_dir, FILENAMES['junit'])).getroot().find('testsuite')
    assert (suite.get('tests'), suite.get('failures'), suite.get('skipped')) == ('5', '3', '1')
    lines = [c.args[0] for c in callback._display.display.call_args_list]
    assert lines[0] == 'CHAOS REPORT: 5 experiment(s): 1 passed, 2 failed, 1 aborted, 1 skipped'
    assert os.path.join(report_dir, FILENAMES['markdown']) in lines[1]


def test_no_experiment_leaves_the_last_report_alone(callback, tmp_path, monkeypatch):
    monkeypatch.setenv('PGGIT_CHAOS_REPORT_DIR', str(tmp_path))
    (tmp_path / FILENAMES['json']).write_text('{"last": "real report"}')
    callback.set_options()
    callback.v2_playbook_on_stats(MagicMock())
    assert load(str(tmp_path)) == {'last': 'real report'}
    assert sorted(os.listdir(str(tmp_path))) == [FILENAMES['json']]


def test_unwritable_report_dir_warns(callback, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    callback.set_options(direct={'report_dir': str(blocker / 'reports')})
    callback.v2_runner_on_ok(SimpleNamespace(result=dict(pggit_chaos_entry=entry('passed'))))
    callback.v2_playbook_on_stats(MagicMock())
    callback._display.warning.assert_called_once()
    assert 'could not write reports' in callback._display.warning.call_args.args[0]
