from __future__ import annotations

import copy
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils import _report

T0 = 1700000000.0


def check(name, status, critical=True, message=''):
    return dict(name=name, status=status, critical=critical, elapsed_ms=3, message=message, data={})


def healthy(ok=True, checks=None):
    """A pggit_verify result, in the probe's own check vocabulary (ok, warning, failed, error, skipped)."""
    return dict(healthy=ok, checks=checks or [check('connect', 'ok'),
                                              check('event_triggers', 'ok' if ok else 'failed',
                                                    message='' if ok else '0 of 2 triggers enabled')])


def raw_record(**overrides):
    raw = dict(
        experiment='tracking-off', host='pg1', target_role='primary', experiment_id='exp-1',
        steady_state=dict(before=healthy(), during=healthy(), after=healthy()),
        fault=dict(disabled=['pggit_ddl_trigger'], left_enabled=[]),
        revert=dict(reverted=[dict(id='trigger--tracking-off')], failures=[]),
        reverted=True,
        workload=dict(ops=100, ok=97, failed=2, unknown=1, lost=[], duplicated=[], unexpected=[], valid=True),
        drift=[], error=None, aborted=False, parameters=dict(duration=30, ttl=300),
        fault_check='none',  # these records are about rendering; the fault checks have test_judge_facts.py
        timings=dict(started_at=T0, inject_start=T0 + 2, inject_end=T0 + 2.5, window_end=T0 + 32.5,
                     revert_start=T0 + 32.5, revert_end=T0 + 33.25, finished_at=T0 + 35.1234),
    )
    raw.update(overrides)
    return raw


def read(path):
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def with_steady(**phases):
    steady = raw_record()['steady_state']
    steady.update(phases)
    return steady


def test_passed_entry_and_timings():
    entry = _report.judge(raw_record())
    assert entry['status'] == 'passed'
    assert entry['reasons'] == []
    assert entry['reverted'] is True
    assert entry['timings'] == dict(inject_s=0.5, window_s=30.0, revert_s=0.75, total_s=35.123)
    assert entry['timeline']['started_at'] == T0
    assert set(entry['timeline']) == set(_report.TIMESTAMPS)


def test_missing_timestamps_give_none():
    entry = _report.judge(raw_record(timings=dict(started_at=T0, inject_start=None, inject_end='1700000001.5')))
    assert entry['timings'] == dict(inject_s=None, window_s=None, revert_s=None, total_s=None)
    assert entry['timeline']['inject_end'] == T0 + 1.5
    assert _report.judge(raw_record(timings=None))['timeline']['finished_at'] is None


@pytest.mark.parametrize('overrides, reason', [
    (dict(error='psql: connection refused'), 'error: psql: connection refused'),
    (dict(steady_state=with_steady(before=healthy(False))), 'steady state before the fault not met: event_triggers=failed'),
    (dict(steady_state=with_steady(before=None)), 'steady state before the fault was not checked'),
    (dict(steady_state=with_steady(during=healthy(False))), 'steady state during the fault not met'),
    (dict(steady_state=with_steady(after=healthy(False))), 'steady state after the fault not met'),
    (dict(steady_state=with_steady(after={})), 'steady state after the fault was not checked'),
    (dict(reverted=False), 'revert failed or was not confirmed'),
    (dict(reverted=None), 'revert failed or was not confirmed'),
    (dict(revert=dict(reverted=[], failures=[dict(id='trigger--x', error='permission denied')])),
     'revert failed or was not confirmed: trigger--x: permission denied'),
    (dict(workload=dict(ok=1, lost=['op-7'], duplicated=[], unexpected=[], valid=False)), 'workload lost 1 operation(s): op-7'),
    (dict(workload=dict(ok=1, lost=[], duplicated=['op-3', 'op-4'], unexpected=[], valid=False)), 'workload duplicated 2'),
    (dict(workload=dict(ok=1, lost=[], duplicated=[], unexpected=['t_9'], valid=False)), 'workload unexpected 1'),
    (dict(workload=dict(ok=1, lost=[], duplicated=[], unexpected=[], valid=False)), 'workload check reported invalid history'),
])
def test_failure_reasons(overrides, reason):
    entry = _report.judge(raw_record(**overrides))
    assert entry['status'] == 'failed'
    assert any(r.startswith(reason) for r in entry['reasons']), entry['reasons']


@pytest.mark.parametrize('overrides', [
    dict(steady_state=with_steady(during=None)),
    dict(workload=None),
    dict(drift=['public.t']),
])
def test_optional_parts_do_not_fail(overrides):
    assert _report.judge(raw_record(**overrides))['status'] == 'passed'


@pytest.mark.parametrize('overrides', [
    dict(reverted=False), dict(reverted=None), dict(revert=dict(failures=['x'])),
    dict(reverted=False, steady_state=with_steady(during=None), workload=None),
])
def test_unreverted_is_never_passed(overrides):
    entry = _report.judge(raw_record(**overrides))
    assert entry['status'] == 'failed'
    assert entry['reverted'] is False


def test_aborted_with_failed_revert_says_so():
    entry = _report.judge(raw_record(aborted=True, error='controller interrupted', reverted=False))
    assert entry['status'] == 'aborted'
    assert entry['reasons'][0] == 'aborted: controller interrupted'
    assert entry['reasons'][1].startswith('revert failed or was not confirmed')


def test_aborted_and_reverted():
    entry = _report.judge(raw_record(aborted=True, steady_state={}))
    assert (entry['status'], entry['reasons']) == ('aborted', ['aborted'])


def test_skipped_wins():
    entry = _report.judge(raw_record(skipped_reason='no replica in inventory', aborted=True, reverted=False))
    assert (entry['status'], entry['reasons']) == ('skipped', ['skipped: no replica in inventory'])


def test_judge_does_not_mutate_input():
    raw = raw_record(reverted=False)
    before = copy.deepcopy(raw)
    _report.judge(raw)
    assert raw == before


ENTRIES = [
    _report.judge(raw_record()),
    _report.judge(raw_record(experiment='lock|storm', host='pg2', reverted=False, error='line1\nline2')),
    _report.judge(raw_record(experiment='kill: #9', host='pg3', aborted=True)),
    _report.judge(raw_record(experiment='replica-lag', skipped_reason='no replica', timings={})),
]
META = dict(playbook='chaos.yml')


def test_summarize():
    assert _report.summarize(ENTRIES) == dict(total=4, passed=1, failed=1, aborted=1, skipped=1, breaking_points=0)
    assert _report.summarize([]) == dict(total=0, passed=0, failed=0, aborted=0, skipped=0, breaking_points=0)


def test_json_round_trip():
    document = json.loads(_report.render_json(ENTRIES, META))
    assert document['schema_version'] == 1
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$', document['generated_at'])
    assert document['meta'] == META
    assert document['summary']['total'] == 4
    assert document['entries'] == json.loads(json.dumps(ENTRIES))


def test_junit_counts_and_cases():
    root = ET.fromstring(_report.render_junit(ENTRIES, META))
    suite = root.find('testsuite')
    assert suite.get('name') == 'pggit.chaos'
    assert (suite.get('tests'), suite.get('failures'), suite.get('skipped'), suite.get('errors')) == ('4', '2', '1', '0')
    cases = suite.findall('testcase')
    assert [c.get('name') for c in cases] == ['tracking-off@pg1', 'lock|storm@pg2', 'kill: #9@pg3', 'replica-lag@pg1']
    assert cases[0].get('classname') == 'pggit.chaos.tracking-off'
    assert cases[0].get('time') == '35.123'
    assert cases[0].find('failure') is None and cases[0].find('skipped') is None
    assert cases[1].find('failure').get('type') == 'failed'
    assert 'revert failed' in cases[1].find('failure').get('message')
    assert cases[2].find('failure').get('type') == 'aborted'
    assert cases[3].find('skipped').get('message') == 'skipped: no replica'
    assert json.loads(cases[1].find('system-out').text)['status'] == 'failed'


def test_junit_drops_characters_xml_cannot_hold():
    entry = _report.judge(raw_record(error='bad\x00byte\x1b[0m'))
    case = ET.fromstring(_report.render_junit([entry], META)).find('testsuite/testcase')
    assert case.find('failure').get('message') == 'error: bad?byte?[0m'


def test_markdown_table_reasons_and_gantt():
    text = _report.render_markdown(ENTRIES, META)
    assert text.startswith('# Chaos report\n')
    assert '**4 experiment(s): 1 passed, 1 failed, 1 aborted, 1 skipped**' in text
    assert '| tracking-off | pg1 | PASSED | yes | 0.500 | 30.000 | 0.750 | 97 / 0 / 0 / 0 |' in text
    assert '| lock\\|storm | pg2 | FAILED | NO |' in text
    assert '- error: line1 line2' in text
    assert '### tracking-off@pg1' not in text
    gantt = text[text.index('```mermaid'):]
    assert gantt.splitlines()[:5] == ['```mermaid', 'gantt', '    title Chaos timeline', '    dateFormat x', '    axisFormat %H:%M:%S']
    assert '    section kill#58; #35;9@pg3' in gantt
    assert '    inject : 1700000002000, 1700000002500' in gantt
    assert '    revert : crit, 1700000032500, 1700000033250' in gantt
    assert 'replica-lag' not in gantt  # no timestamps, no section
    assert gantt.rstrip().endswith('```')


def test_markdown_table_cells_never_break_rows():
    entry = _report.judge(raw_record(experiment='a|b\nc'))
    row = [line for line in _report.render_markdown([entry], META).splitlines() if line.startswith('| a')][0]
    assert row.startswith('| a\\|b<br>c | pg1 |')
    assert len(re.findall(r'(?<!\\)\|', row)) == 9


def test_gantt_omits_bars_with_missing_timestamps():
    entry = _report.judge(raw_record(timings=dict(inject_start=T0, inject_end=T0 + 1)))
    gantt = '\n'.join(_report._gantt([entry]))
    assert 'inject :' in gantt
    assert 'window' not in gantt and 'steady-state' not in gantt and 'revert' not in gantt
    assert _report._gantt([_report.judge(raw_record(timings={}))]) == ['_No timeline recorded._']


def test_write_reports(tmp_path):
    report_dir = str(tmp_path / 'nested' / 'reports')
    paths = _report.write_reports(report_dir, ENTRIES, META)
    assert {k: os.path.basename(v) for k, v in paths.items()} == _report.FILENAMES
    assert sorted(os.listdir(report_dir)) == sorted(_report.FILENAMES.values())  # no temp files left
    assert json.loads(read(paths['json']))['summary']['failed'] == 1
    ET.parse(paths['junit'])
    assert '```mermaid' in read(paths['markdown'])


def test_write_reports_empty(tmp_path):
    paths = _report.write_reports(str(tmp_path), [], {})
    assert ET.parse(paths['junit']).getroot().get('tests') == '0'
    assert '_No timeline recorded._' in read(paths['markdown'])


HOSTILE = [
    '<script>alert(1)</script>',
    '<img src=x onerror=alert(1)>',
    '`code` ``` [click](javascript:alert(1)) ![pixel](http://198.18.0.1/x.png) & co | pipe',
]


def test_markdown_escapes_text_from_hosts():
    entries = [_report.judge(raw_record(experiment='<b>exp</b>|x', host='<img src=x onerror=alert(2)>', error='\n'.join(HOSTILE))),
               _report.judge(raw_record(experiment='ok', skipped_reason='# not a heading <i>'))]
    text = _report.render_markdown(entries, dict(playbook='a`b<script>.yml'))
    assert 'Playbook ``a`b<script>.yml``, generated' in text  # inside a code span, where nothing renders
    body = text.split('\n', 3)[3]
    for tag in ('<script', '<img', '<b>', '<i>'):
        assert tag not in body, tag
    assert not re.search(r'(?<!\\)\]\(', body)  # no link or image
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in text
    assert '&lt;img src=x onerror=alert(1)&gt;' in text
    assert '\\`code\\` \\`\\`\\` \\[click\\](javascript:alert(1)) !\\[pixel\\](http://198.18.0.1/x.png) &amp; co \\| pipe' in text
    assert '### &lt;b&gt;exp&lt;/b&gt;\\|x@&lt;img src=x onerror=alert(2)&gt; (failed)' in text
    assert '- skipped: # not a heading &lt;i&gt;' in text
    row = [line for line in text.splitlines() if line.startswith('| &lt;b&gt;')][0]
    assert len(re.findall(r'(?<!\\)\|', row)) == 9


def test_markdown_renders_no_html_from_hosts():
    import markdown_it  # pylint: disable=import-outside-toplevel  # requirements-dev.txt
    entry = _report.judge(raw_record(experiment='<svg onload=alert(1)>', host='pg`1', error='\n'.join(HOSTILE)))
    html = markdown_it.MarkdownIt('commonmark').enable('table').render(
        _report.render_markdown([entry], dict(playbook='``<script>alert(3)</script>`')))
    for tag in ('<script', '<img', '<svg', '<a '):
        assert tag not in html, tag
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in html
    assert html.count('<tr>') == 2  # header and one row: the table is whole


def test_markdown_reason_cannot_start_a_heading_or_list():
    assert _report._md('# big') == '\\# big'
    assert _report._md('- item') == '\\- item'
    assert _report._md('a\nb', newline='<br>') == 'a<br>b'


def test_gantt_labels_carry_no_markup():
    entry = _report.judge(raw_record(experiment='<img src=x onerror=alert(1)>`', host='pg1'))
    section = [line for line in _report._gantt([entry]) if 'section' in line][0]
    assert section == '    section #60;img src=x onerror=alert(1)#62;#96;@pg1'


def test_an_experiment_without_a_known_fault_check_never_passes_silently():
    entry = _report.judge(raw_record(experiment='future_experiment', fault_check='auto'))
    assert entry['status'] == 'failed'
    assert "no check that the fault happened is known for experiment 'future_experiment'" in entry['reasons'][0]
