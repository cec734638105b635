"""The HTML chaos report in a real browser: headless Chromium (Debian package `chromium`).

Renders the report of a real lab run (tests/fixtures/chaos-report-lab.json, kept
from chaos.yml on a 3-host lab) to a PNG, reads the page's DOM as Chromium built
it, and proves from Chromium's own net log that no request left the page. A
missing Chromium is a failure, never a skip.
"""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.pggit.chaos.plugins.plugin_utils._html import render_html
from ansible_collections.pggit.chaos.plugins.plugin_utils._metrics import hoist_monitor

FIXTURE = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'chaos-report-lab.json')
TIMEOUT = 90


def chromium():
    path = shutil.which('chromium') or shutil.which('chromium-browser')
    if not path:
        pytest.fail('headless Chromium is needed for this test and is missing: apt-get install chromium '
                    '(the Makefile installs it); a skipped browser test would prove nothing')
    return path


def run_chromium(url, tmp_path, *extra):
    """Run headless Chromium on ``url``; return (stdout, net log events)."""
    netlog = tmp_path / ('netlog-%d.json' % len(list(tmp_path.glob('netlog-*'))))
    argv = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
            '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
            '--host-resolver-rules=MAP * ~NOTFOUND', '--user-data-dir=%s' % (tmp_path / 'profile'),
            '--log-net-log=%s' % netlog, '--net-log-capture-mode=Default'] + list(extra) + [url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(str(netlog), encoding='utf-8') as handle:
        text = handle.read()
    try:
        log = json.loads(text)
    except ValueError:  # a net log cut at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(',') + ']}')
    types = dict((number, name) for name, number in log['constants']['logEventTypes'].items())
    starts = [e.get('params') or {} for e in log.get('events', []) if types.get(e.get('type')) == 'URL_REQUEST_START_JOB']
    assert starts, 'the net log recorded no request at all: it cannot prove anything'
    return done.stdout, starts


def page_requests(starts):
    """The URLs the page asked for: requests in the page's (file://) network isolation, or with a document initiator.

    Chromium's own background requests (component updater, network time, sign-in)
    carry the initiator "not an origin" and are not the page's; the host resolver
    rule sends them nowhere."""
    urls = []
    for params in starts:
        url = params.get('url')
        mine = str(params.get('network_isolation_key', '')).startswith('file://') or params.get('initiator') not in (None, 'not an origin')
        if mine and url not in urls:
            urls.append(url)
    return urls


class Dom(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def dom_problems(dom, entries):
    """What is wrong with the rendered page for these entries: a missing lane, experiment, verdict or chart."""
    page = Dom()
    page.feed(dom)
    problems = []
    lanes = [a.get('data-host') for t, a in page.tags if t == 'g' and 'lane' in (a.get('class') or '').split()]
    groups = [(a.get('data-experiment'), a.get('data-status')) for t, a in page.tags if t == 'g' and a.get('class') == 'experiment']
    sections = [(a.get('data-experiment'), a.get('data-host'), a.get('data-status')) for t, a in page.tags
                if t == 'section' and a.get('class') == 'experiment']
    for host in sorted(set(e['host'] for e in entries)):
        if host not in lanes:
            problems.append('no lane for host %s' % host)
    for entry in entries:
        if (entry['experiment'], entry['status']) not in groups:
            problems.append('no timeline bar group for %s on %s' % (entry['experiment'], entry['host']))
        if (entry['experiment'], entry['host'], entry['status']) not in sections:
            problems.append('no section with the verdict %s for %s on %s' % (entry['status'], entry['experiment'], entry['host']))
    charts = [a.get('data-metric') for t, a in page.tags if t == 'svg' and a.get('class') == 'chart']
    with_monitor = [e for e in entries if (e.get('monitor') or {}).get('series')]
    for metric in ('ddl_latency', 'history_rows', 'lag', 'connections'):
        if charts.count(metric) != len(with_monitor):
            problems.append('%d %s chart(s) for %d experiment(s) with a monitor' % (charts.count(metric), metric, len(with_monitor)))
    for tag, attrs in page.tags:
        for name in ('src', 'href'):
            if (attrs.get(name) or '').lower().startswith(('http:', 'https:', '//')):
                problems.append('%s %s=%s' % (tag, name, attrs[name]))
    return problems


def png_size(path):
    with open(path, 'rb') as handle:
        head = handle.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    return struct.unpack('>II', head[16:24])


@pytest.fixture(scope='module')
def lab_entries():
    with open(FIXTURE, encoding='utf-8') as handle:
        document = json.load(handle)
    entries = [hoist_monitor(e) for e in document['entries']]
    assert len(entries) >= 2 and any((e.get('monitor') or {}).get('series') for e in entries), 'the fixture must come from a lab run'
    return document, entries


def test_chromium_renders_the_lab_report_with_a_lane_and_verdict_per_experiment_and_no_request(lab_entries, tmp_path):
    document, entries = lab_entries
    page = tmp_path / 'chaos-report.html'
    page.write_text(render_html(entries, document['meta'], generated_at=document.get('generated_at')), encoding='utf-8')
    url = page.as_uri()
    png = tmp_path / 'chaos-report.png'
    _out, starts = run_chromium(url, tmp_path, '--screenshot=%s' % png, '--window-size=1280,2400', '--hide-scrollbars')
    width, height = png_size(str(png))
    assert (width, height) == (1280, 2400)
    assert os.path.getsize(str(png)) > 20000, 'a blank screenshot compresses to almost nothing'
    assert page_requests(starts) == [], 'requests left the page'
    dom, starts = run_chromium(url, tmp_path, '--dump-dom')
    assert dom_problems(dom, entries) == []
    assert page_requests(starts) == [], 'requests left the page'
    shutil.copy(str(png), os.environ.get('PGGIT_HTML_PNG') or str(tmp_path / 'kept.png'))


def test_the_dom_check_fails_on_a_broken_report(lab_entries):
    """The checks above would catch a missing lane, section or chart (they are not vacuous)."""
    document, entries = lab_entries
    good = render_html(entries, document['meta'])
    assert dom_problems(good, entries) == []
    host = entries[0]['host']
    broken = good.replace('class="lane" data-host="%s"' % host, 'class="lane" data-host="gone"', 1)
    assert 'no lane for host %s' % host in dom_problems(broken, entries)
    broken = good.replace('data-metric="lag"', 'data-metric="lagx"', 1)
    assert any('lag chart' in p for p in dom_problems(broken, entries))
    broken = good.replace('<section class="experiment"', '<section class="gone"', 1)
    assert any(p.startswith('no section') for p in dom_problems(broken, entries))


def test_the_net_log_sees_a_request_when_a_page_makes_one(tmp_path):
    """Negative control: a page without the CSP that loads an image from a web host shows up in the net log."""
    page = tmp_path / 'leaky.html'
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<link rel="stylesheet" href="https://fonts.example.invalid/a.css"></body></html>', encoding='utf-8')
    _out, starts = run_chromium(page.as_uri(), tmp_path, '--dump-dom')
    assert sorted(page_requests(starts)) == ['http://127.0.0.1:9/x.png', 'https://fonts.example.invalid/a.css']
