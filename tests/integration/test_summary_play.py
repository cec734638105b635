"""chaos.yml's last play, run for real through ansible-runner on made-up verdicts: it publishes pggit_chaos_summary
with set_stats (the job's artifact_data, what AWX workflows read) and fails the run only when an experiment failed or
aborted and chaos_fail_on_failure is on. The lab test (tests/lab/test_runner.py) runs the whole playbook."""
from __future__ import annotations

import os
import sys

import ansible_runner
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def entry(experiment, host, status):
    return {'experiment': experiment, 'host': host, 'status': status,
            'reasons': [] if status in ('passed', 'skipped') else ['the fault did not happen: 0 backend(s) terminated']}


def last_play():
    with open(os.path.join(REPO, 'playbooks', 'chaos.yml')) as handle:
        plays = yaml.safe_load(handle)
    assert plays[-1]['name'] == 'Publish the chaos summary'
    return plays[-1]


def host_checks():
    """The per-host checks of chaos.yml's experiment plays (every task that asserts on pggit_experiment_results), in
    play order, each in a play of its own as chaos.yml runs them."""
    with open(os.path.join(REPO, 'playbooks', 'chaos.yml')) as handle:
        plays = yaml.safe_load(handle)
    checks = []
    for play in plays[:-1]:
        tasks = [t for t in play.get('tasks') or [] if 'ansible.builtin.assert' in t and 'pggit_experiment_results' in str(t)]
        if tasks:
            checks.append({'name': play['name'], 'hosts': 'db1,db3', 'gather_facts': False, 'tasks': tasks})
    assert checks, 'chaos.yml has no per-host verdict check any more: this test no longer sees what it looks for'
    return checks


def run(tmp_path, monkeypatch, results, middle=(), limit=None, **extravars):
    for name in list(os.environ):
        if name.startswith('ANSIBLE_') or name == 'PGGIT_CHAOS_REPORT_DIR':
            monkeypatch.delenv(name)
    monkeypatch.setenv('PATH', BIN + os.pathsep + os.environ.get('PATH', ''))
    project = tmp_path / 'project'
    project.mkdir()
    # The verdicts as the experiment plays leave them: a fact per host (db2 ran nothing).
    setup = {'name': 'Leave verdicts as the experiments would', 'hosts': 'db1,db2,db3', 'gather_facts': False,
             'tasks': [{'name': 'Set the results', 'ansible.builtin.set_fact': {
                 'pggit_experiment_results': '{{ verdicts[inventory_hostname] }}'},
                 'when': 'inventory_hostname in verdicts'}]}
    (project / 'play.yml').write_text(yaml.safe_dump([setup] + list(middle) + [last_play()], sort_keys=False))
    (tmp_path / 'inventory').mkdir()
    (tmp_path / 'inventory' / 'hosts.yml').write_text(yaml.safe_dump({'all': {
        'hosts': dict((h, {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable})
                      for h in ('db1', 'db2', 'db3', 'localhost'))}}))
    (tmp_path / 'env').mkdir()
    (tmp_path / 'env' / 'extravars').write_text(yaml.safe_dump(dict(extravars, verdicts=results)))
    (tmp_path / 'env' / 'envvars').write_text(yaml.safe_dump({
        'ANSIBLE_COLLECTIONS_PATH': os.path.join(REPO, '.cache', 'collections')}))
    runner = ansible_runner.run(private_data_dir=str(tmp_path), playbook='play.yml', ident='job', quiet=True, limit=limit)
    stats = [e for e in runner.events if e['event'] == 'playbook_on_stats']
    assert len(stats) == 1
    return runner, stats[0]['event_data'].get('artifact_data') or {}


def test_all_passed_is_successful_with_the_summary(tmp_path, monkeypatch):
    runner, artifacts = run(tmp_path, monkeypatch, {'db1': [entry('trigger_failure', 'db1', 'passed')],
                                                    'db3': [entry('clock_skew', 'db3', 'skipped')]})
    assert runner.status == 'successful', runner.stdout.read()
    summary = artifacts['pggit_chaos_summary']
    assert (summary['passed'], summary['failed'], summary['aborted'], summary['skipped'], summary['ok']) == (1, 0, 0, 1, True)
    assert summary['experiments'] == [{'experiment': 'trigger_failure', 'host': 'db1', 'status': 'passed'},
                                      {'experiment': 'clock_skew', 'host': 'db3', 'status': 'skipped'}]


@pytest.mark.parametrize('fail_on_failure, status', [(True, 'failed'), (False, 'successful')])
def test_a_failed_experiment_fails_the_run_only_when_asked(tmp_path, monkeypatch, fail_on_failure, status):
    runner, artifacts = run(tmp_path, monkeypatch, {'db1': [entry('trigger_failure', 'db1', 'passed'),
                                                            entry('kill_connections', 'db1', 'failed')],
                                                    'db3': [entry('trigger_failure', 'db3', 'aborted')]},
                            chaos_fail_on_failure=fail_on_failure)
    with open(str(tmp_path / 'artifacts' / 'job' / 'status')) as handle:
        assert handle.read().strip() == status
    # Published before the run fails, so a workflow's failure branch gets it too.
    summary = artifacts['pggit_chaos_summary']
    assert (summary['passed'], summary['failed'], summary['aborted'], summary['ok']) == (1, 1, 1, False)
    failed = [e for e in runner.events if e['event'] == 'runner_on_failed']
    if fail_on_failure:
        # Once, by the last play's check (on whichever host that play runs: localhost, or a host the limit keeps).
        assert [e['event_data']['task'] for e in failed] == ['Fail the run when an experiment did not pass']
        msg = failed[0]['event_data']['res']['msg']
        assert 'kill_connections@db1 failed: the fault did not happen' in msg and 'trigger_failure@db3 aborted' in msg
    else:
        assert failed == []


def test_the_summary_is_published_when_every_target_failed(tmp_path, monkeypatch):
    """chaos.yml as it runs: the experiment plays' own per-host checks come first. When they fail every target (one
    target, the survey's default blast radius, with a failed experiment), Ansible ends the playbook there ("NO MORE
    HOSTS LEFT") unless those checks leave the hosts alive: the last play must still run, so that AWX workflows get
    pggit_chaos_summary on exactly the runs that need their failure branch, and the run must still end failed."""
    runner, artifacts = run(tmp_path, monkeypatch, {'db1': [entry('kill_connections', 'db1', 'failed')],
                                                    'db3': [entry('trigger_failure', 'db3', 'aborted')]},
                            middle=host_checks(), chaos_fail_on_failure=True)
    with open(str(tmp_path / 'artifacts' / 'job' / 'status')) as handle:
        assert handle.read().strip() == 'failed'
    assert 'pggit_chaos_summary' in artifacts, 'the last play never ran: no set_stats for the AWX workflow'
    summary = artifacts['pggit_chaos_summary']
    assert (summary['failed'], summary['aborted'], summary['ok']) == (1, 1, False)
    # The verdicts are still in the events, host by host.
    failed = [e for e in runner.events if e['event'] == 'runner_on_failed']
    assert {e['event_data']['host'] for e in failed} >= {'db1', 'db3'}


def test_the_summary_is_published_when_the_job_is_launched_with_a_limit(tmp_path, monkeypatch):
    """The job template prompts for a limit (ask_limit_on_launch): with one, a play on the implicit localhost matches
    no host and is skipped, so the last play must run on a host the limit keeps."""
    runner, artifacts = run(tmp_path, monkeypatch, {'db1': [entry('trigger_failure', 'db1', 'passed')],
                                                    'db3': [entry('kill_connections', 'db3', 'failed')]},
                            limit='db1,db3', chaos_fail_on_failure=True)
    with open(str(tmp_path / 'artifacts' / 'job' / 'status')) as handle:
        assert handle.read().strip() == 'failed'
    assert 'pggit_chaos_summary' in artifacts, 'the last play matched no host under the limit: no set_stats'
    summary = artifacts['pggit_chaos_summary']
    assert (summary['passed'], summary['failed'], summary['ok']) == (1, 1, False)
