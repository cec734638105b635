"""The HTML chaos report: self-contained, escaped, a lane per host and a section per experiment."""
from __future__ import annotations

import html.parser
import json
import os

from ansible_collections.pggit.chaos.plugins.plugin_utils._html import CSP, render_html
from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import hoist_monitor

T0 = 1795800000.0
FIXTURE = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'fixtures', 'chaos-report-lab.json')


class Page(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(text):
    page = Page()
    page.feed(text)
    return page


def entry(experiment, host, status, **extra):
    base = dict(experiment=experiment, host=host, status=status, reverted=status != 'failed', reasons=['why %s' % status],
                timeline={'started_at': T0, 'inject_start': T0 + 2, 'inject_end': T0 + 2.5, 'window_end': T0 + 10,
                          'revert_start': T0 + 10.2, 'revert_end': T0 + 11, 'finished_at': T0 + 12},
                timings={'total_s': 12}, fault={'victims': [1, 2]},
                workload={'ok': 9, 'lost': [], 'duplicated': ['t_1'], 'unexpected': [], 'maybe': 1},
                monitor={'series': [dict(t=T0 + i, phase='window', connections=i, history_rows=10 + i, lock_waits=0,
                                         lag_bytes={'lab-2': 100 * i}, ddl_p50_ms=5.0, ddl_p95_ms=9.0, pggit_health='ok',
                                         probe_ms=2.0) for i in range(13)], 'interval_s': 1.0})
    base.update(extra)
    return base


def test_lanes_sections_verdicts_and_charts():
    entries = [entry('kill_connections', 'lab-1', 'passed'), entry('network_latency', 'lab-2', 'failed'),
               entry('process_pause', 'lab-1', 'aborted'), entry('trigger_failure', 'lab-3', 'skipped', timeline={}, monitor=None)]
    page = parse(render_html(entries, {'playbook': 'chaos.yml'}, generated_at='2026-11-27T23:00:00Z'))
    lanes = [a['data-host'] for t, a in page.tags if t == 'g' and 'lane' in a.get('class', '')]
    assert lanes == ['lab-1', 'lab-2', 'lab-3']
    groups = [(a['data-experiment'], a['data-status']) for t, a in page.tags if t == 'g' and a.get('class') == 'experiment']
    assert groups == [('kill_connections', 'passed'), ('process_pause', 'aborted'), ('network_latency', 'failed'),
                      ('trigger_failure', 'skipped')]  # lane by lane
    marks = [a['data-mark'] for t, a in page.tags if a.get('class') == 'mark']
    assert marks == ['aborted', 'failed', 'no-timeline']
    sections = [a for t, a in page.tags if t == 'section' and a.get('class') == 'experiment']
    assert [s['data-status'] for s in sections] == ['passed', 'failed', 'aborted', 'skipped']
    charts = [a['data-metric'] for t, a in page.tags if t == 'svg' and a.get('class') == 'chart']
    assert charts == ['ddl_latency', 'history_rows', 'lag', 'connections'] * 3
    assert len([a for t, a in page.tags if a.get('class') == 'shade' and a.get('data-shade') == 'fault window']) == 12
    assert len([a for t, a in page.tags if t == 'table' and a.get('class') == 'exactly-once']) == 4
    assert 'why failed' in ''.join(page.text)


def test_self_contained_and_escaped():
    evil = '<script>alert(1)</script><img src="http://evil.example/x.png">'
    entries = [entry('kill"><u>x', evil, 'failed', reasons=[evil], fault={evil: evil}, error=evil)]
    text = render_html(entries, {'playbook': evil}, generated_at=evil)
    page = parse(text)
    assert not [t for t, _a in page.tags if t in ('script', 'img', 'link', 'iframe', 'object', 'embed', 'u')]
    for tag, attrs in page.tags:
        for name in ('src', 'href'):
            value = attrs.get(name) or ''
            assert not value or value.startswith('#'), (tag, attrs)
    metas = [a for t, a in page.tags if t == 'meta' and a.get('http-equiv') == 'Content-Security-Policy']
    assert metas and metas[0]['content'] == CSP
    assert evil in ''.join(page.text)  # shown as text, not markup
    assert '@import' not in text and 'url(' not in text


def test_ramp_is_a_chart_when_present():
    ramp = [{'level': 1, 'p95_ms': 10}, {'level': 2, 'p95_ms': 30}, {'level': 4, 'p95_ms': 90}]
    page = parse(render_html([entry('x', 'h', 'passed', ramp=ramp)], {}))
    assert [a['data-metric'] for t, a in page.tags if t == 'svg' and a.get('class') == 'chart'][-1] == 'ramp'
    page = parse(render_html([entry('x', 'h', 'passed')], {}))
    assert 'ramp' not in [a['data-metric'] for t, a in page.tags if t == 'svg' and a.get('class') == 'chart']


def test_the_lab_fixture_renders_a_lane_and_section_per_experiment():
    with open(FIXTURE, encoding='utf-8') as handle:
        document = json.load(handle)
    entries = [hoist_monitor(e) for e in document['entries']]
    page = parse(render_html(entries, document['meta']))
    hosts = sorted(set(e['host'] for e in entries))
    assert sorted(a['data-host'] for t, a in page.tags if t == 'g' and 'lane' in a.get('class', '')) == hosts
    sections = [(a['data-experiment'], a['data-status']) for t, a in page.tags if t == 'section' and a.get('class') == 'experiment']
    assert sections == [(e['experiment'], e['status']) for e in entries]
    assert any(len(e['monitor']['series']) >= 5 for e in entries if e.get('monitor')), 'the lab run sampled every second'


def test_a_sample_without_answer_breaks_the_lines_and_is_marked():
    series = [dict(t=T0 + i, phase='window', connections=2, history_rows=5, lag_bytes={'lab-2': 0}, lock_waits=0,
                   pggit_health='ok') for i in range(6)]
    series[3] = dict(t=T0 + 3, phase='window', connections=None, history_rows=None, lag_bytes={}, lock_waits=None,
                     pggit_health='down', error='terminating connection due to administrator command')
    page = parse(render_html([entry('kill_connections', 'lab-1', 'passed', monitor={'series': series})], {}))
    lines = [a['data-line'] for t, a in page.tags if t == 'polyline']
    assert lines.count('connections') == 2 and lines.count('lab-2') == 2 and lines.count('history_rows') == 2
    assert len([a for t, a in page.tags if a.get('class') == 'down']) == 4  # one mark on each of the four charts


def test_every_entry_string_is_escaped_timings_keys_too():
    """Nothing of an entry reaches the page as markup: the timing names are entry data like the rest."""
    evil = '<img src=x onerror=alert(1)>'
    text = render_html([entry('x', 'h', 'failed', timings={evil + '_s': 1.5, 'total_s': 3})], {})
    page = parse(text)
    assert not [t for t, _a in page.tags if t == 'img']
    assert '&lt;img src=x onerror=alert(1)&gt;' in text


def test_an_odd_entry_still_renders():
    """A sample time given as text and a status that is not a string never take the whole page down."""
    monitor = {'series': [dict(t=str(T0 + i), phase='window', connections=1, pggit_health='ok') for i in range(3)]}
    page = parse(render_html([entry('x', 'h', 'passed', monitor=monitor), entry('y', 'h', 7)], {}))
    assert [a['data-status'] for t, a in page.tags if t == 'section' and a.get('class') == 'experiment'] == ['passed', '7']


def test_a_ramp_with_levels_past_any_date_still_renders():
    ramp = [{'level': 1e12, 'p95_ms': 10}, {'level': 4e12, 'p95_ms': 30}]
    page = parse(render_html([entry('x', 'h', 'passed', ramp=ramp)], {}))
    assert [a['data-metric'] for t, a in page.tags if t == 'svg' and a.get('class') == 'chart'][-1] == 'ramp'


def test_bytes_that_were_not_utf8_never_make_the_page_unwritable():
    """A process name or path a host gave in another encoding reaches Python as a lone surrogate: the page must
    still encode as UTF-8 (the callback writes it so), showing the byte escaped."""
    odd = 'postgres \udcff'
    text = render_html([entry('x', odd, 'failed', reasons=[odd], fault={'cmd': odd})], {})
    text.encode('utf-8')
    assert '\\udcff' in text
