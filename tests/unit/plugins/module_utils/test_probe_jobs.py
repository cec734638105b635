"""The window's probe brings back the experiment's background jobs (async starts with poll 0) as async_status would:
the result once the job ended, null while it runs, and a line for each job that failed or never ended."""
from __future__ import annotations

import json

import pytest
from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _probe
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify

RUNNING = {'started': True, 'finished': False, 'ansible_job_id': 'j1.1'}


def _job(tmp_path, jid, content):
    path = tmp_path / jid
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return {'ansible_job_id': jid, 'results_file': str(path), 'started': 1, 'finished': 0, 'changed': True}


class Clock(object):
    """A clock that moves only when slept; on_sleep runs before each sleep returns."""

    def __init__(self, on_sleep=None):
        self.now = 1000.0
        self.slept = 0
        self.on_sleep = on_sleep

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        self.slept += 1
        if self.on_sleep:
            self.on_sleep(self)


def test_an_ended_job_comes_back_as_async_status_gives_it(tmp_path):
    job = _job(tmp_path, 'j1.1', {'changed': False, 'terminated': 3, 'invocation': {}})
    results, problems = _probe.collect_jobs([job], 60)
    assert problems == []
    assert results == [{'changed': False, 'terminated': 3, 'invocation': {}, 'ansible_job_id': 'j1.1',
                        'started': True, 'finished': True}]


def test_a_running_job_is_waited_for_until_it_ends(tmp_path):
    job = _job(tmp_path, 'j1.1', RUNNING)

    def ends(clock):
        if clock.slept == 3:
            (tmp_path / 'j1.1').write_text(json.dumps({'changed': False, 'ops': 12}))

    clock = Clock(ends)
    results, problems = _probe.collect_jobs([job], 60, clock=clock.time, sleep=clock.sleep)
    assert clock.slept == 3 and problems == []
    assert results[0]['ops'] == 12 and results[0]['finished'] is True


def test_jobs_keep_their_order_and_a_failed_one_is_named(tmp_path):
    ok = _job(tmp_path, 'j1.1', {'ops': 1})
    bad = _job(tmp_path, 'j2.2', {'failed': True, 'msg': 'could not connect'})
    results, problems = _probe.collect_jobs([bad, ok], 60)
    assert [r['ansible_job_id'] for r in results] == ['j2.2', 'j1.1']
    assert problems == ['job j2.2 failed: could not connect']


def test_a_job_that_never_ends_is_null_and_named_after_the_timeout(tmp_path):
    job = _job(tmp_path, 'j1.1', RUNNING)
    clock = Clock()
    results, problems = _probe.collect_jobs([job], 2, clock=clock.time, sleep=clock.sleep)
    assert results == [None]
    assert problems == ['job j1.1 did not finish within 2 s of the window']
    assert 1000.0 + 2 <= clock.now <= 1000.0 + 2 + _probe.JOB_POLL + 1e-9


def test_after_an_abort_the_jobs_are_read_once_and_not_waited_for(tmp_path):
    running = _job(tmp_path, 'j1.1', RUNNING)
    ended = _job(tmp_path, 'j2.2', {'ops': 4})
    clock = Clock()
    results, problems = _probe.collect_jobs([running, ended], 60, wait=False, clock=clock.time, sleep=clock.sleep)
    assert clock.slept == 0 and problems == []
    assert results[0] is None and results[1]['ops'] == 4


def test_a_missing_results_file_fails_that_job(tmp_path):
    results, problems = _probe.collect_jobs([_job(tmp_path, 'j9.9', None)], 60)
    assert results[0]['failed'] is True and results[0]['finished'] is True
    assert problems[0].startswith('job j9.9 failed: could not find job j9.9')


@pytest.mark.parametrize('job, words', [
    ('j1.1', 'registered result of a task started with async'),
    ({'skipped': True}, 'needs the ansible_job_id and results_file'),
    ({'ansible_job_id': 'j1.1', 'results_file': 'j1.1'}, 'absolute path ending in the job id'),
    ({'ansible_job_id': 'j1.1', 'results_file': '/root/.ansible_async/../../etc/shadow'}, 'absolute path ending in the job id'),
    # Any file whose name is taken for a job id: its content (JSON) would come back in the task's result.
    ({'ansible_job_id': 'shadow', 'results_file': '/etc/shadow'}, "async job id (j<digits>.<pid>), got 'shadow'"),
    ({'ansible_job_id': 'credentials.json', 'results_file': '/root/.config/x/credentials.json'}, 'async job id'),
    ({'ansible_job_id': 'j1.1\n', 'results_file': '/root/.ansible_async/j1.1\n'}, 'async job id'),
])
def test_a_job_item_that_is_not_an_async_start_is_refused_by_name(job, words):
    assert words in _probe.job_problem(job)


def test_the_module_refuses_a_bad_job_before_probing(monkeypatch):
    monkeypatch.setattr(pggit_verify, 'Probe', None)  # never reached
    result, failed = run_module(pggit_verify.main, dict(jobs=[{'ansible_job_id': 'j1.1', 'results_file': 'x'}]))
    assert failed and 'results_file of job j1.1' in result['msg'] and "'x'" in result['msg']


def test_a_job_id_of_ansible_cores_async_wrapper_is_taken():
    assert _probe.job_problem({'ansible_job_id': 'j283104455171.4242', 'results_file': '/root/.ansible_async/j283104455171.4242'}) is None
    assert _probe.job_problem({'ansible_job_id': '283104455171.4242', 'results_file': '/root/.ansible_async/283104455171.4242'}) is None


def test_the_module_says_how_long_it_waited_for_the_jobs_after_the_window(monkeypatch, tmp_path):
    class FakeProbe(object):
        changed = False

        def __init__(self, *args, **kwargs):
            pass

        def watch(self, duration, interval, abort_after, monitor=None):
            return {'healthy': True, 'aborted': False, 'findings': [], 'failed_checks': []}

    def slow_collect(jobs, timeout, wait=True):
        import time
        time.sleep(0.3)
        return [None], []

    monkeypatch.setattr(pggit_verify, 'Probe', FakeProbe)
    monkeypatch.setattr(pggit_verify, 'collect_jobs', slow_collect)
    monkeypatch.setattr(pggit_verify, 'ensure_psycopg2', lambda module: None)
    job = {'ansible_job_id': 'j1.1', 'results_file': str(tmp_path / 'j1.1')}
    result, failed = run_module(pggit_verify.main, dict(watch_duration=1, monitor=False, login_host='198.18.0.1', jobs=[job]))
    assert not failed, result.get('msg')
    assert 0.3 <= result['jobs_waited_s'] < 5
