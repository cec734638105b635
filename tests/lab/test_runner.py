"""chaos.yml run the way AWX runs it: through ansible-runner, in a private data dir laid out as AWX lays out a job.

- project/: the AWX project (extensions/awx/chaos.yml, which imports pggit.chaos.chaos, and the project's ansible.cfg);
- inventory/: the lab's inventory;
- env/extravars: the survey's answers (checked against extensions/awx/survey_spec.json as AWX checks them);
- env/settings, env/envvars: as AWX writes them, with the collections path AWX uses for a project's collections;
- requirements_collections/: the collection installed from the tarball ansible-galaxy collection build wrote.

Both directions: a passing suite ends `successful`; an experiment that really fails (the kill rounds aim at an
application_name no backend carries, so the fault has no effect and the verdict says so) ends `failed`. Either way the
job events carry each verdict, the set_stats artifact carries pggit_chaos_summary, and the reports land in the job's
artifact dir (PGGIT_CHAOS_REPORT_DIR unset) or where PGGIT_CHAOS_REPORT_DIR says.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import ansible_runner
import pytest
import yaml

from labtools import INVENTORY, REPO, chaos_processes, ledger, trigger_modes

BIN = os.path.dirname(sys.executable)
SURVEY = os.path.join(REPO, 'extensions', 'awx', 'survey_spec.json')
REPORT_FILES = ('chaos-report.json', 'chaos-junit.xml', 'chaos-report.md', 'chaos-report.html', 'chaos-metrics.prom')
# The lab's connection settings, added to the shipped extensions/awx/ansible.cfg ([ssh_connection] moves to its end).
PROJECT_CFG = """[ssh_connection]
pipelining = True

[defaults]
host_key_checking = False
forks = 10
"""


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    dist = tmp_path_factory.mktemp('dist')
    proc = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', REPO, '--output-path', str(dist)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(next(dist.glob('pggit-chaos-*.tar.gz')))


def survey_answers(**answers):
    """The extra vars AWX makes of a survey: defaults, overridden by the answers, each checked against its question."""
    with open(SURVEY) as handle:
        spec = json.load(handle)['spec']
    extravars = {}
    for question in spec:
        name, kind = question['variable'], question['type']
        value = answers.pop(name, question.get('default'))
        if kind == 'multiselect':
            value = value if isinstance(value, list) else [v for v in str(value).split('\n') if v]
            assert set(value) <= set(question['choices']), (name, value)
        elif kind == 'multiplechoice':
            assert value in question['choices'], (name, value)
        elif kind == 'integer':
            assert isinstance(value, int) and question['min'] <= value <= question['max'], (name, value)
        else:
            assert question['min'] <= len(str(value)) <= question['max'], (name, value)
        extravars[name] = value
    assert not answers, 'not survey questions: %s' % sorted(answers)
    return extravars


def private_data_dir(root, tarball, extravars, envvars=None):
    """The folder AWX hands ansible-runner for one job."""
    project = root / 'project'
    project.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, 'extensions', 'awx', 'chaos.yml'), str(project / 'chaos.yml'))
    # The project's ansible.cfg as shipped (it enables the report callback), plus the lab's SSH settings.
    with open(os.path.join(REPO, 'extensions', 'awx', 'ansible.cfg')) as handle:
        shipped = handle.read()
    (project / 'ansible.cfg').write_text(shipped.replace('[defaults]\n', PROJECT_CFG, 1))
    (root / 'inventory').mkdir()
    shutil.copy(INVENTORY, str(root / 'inventory' / 'hosts.yml'))
    collections = root / 'requirements_collections'
    # Run from the job's folder, with none of this checkout's Ansible settings: its ansible.cfg (found from REPO, or
    # through the ANSIBLE_CONFIG that make exports) links this tree as pggit.chaos, and ansible-galaxy would skip the
    # install as "already installed".
    galaxy_env = dict((k, v) for k, v in os.environ.items() if not k.startswith('ANSIBLE_'))
    proc = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', tarball, '-p', str(collections)],
                          cwd=str(root), capture_output=True, text=True, check=False, env=galaxy_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.isfile(str(collections / 'ansible_collections' / 'pggit' / 'chaos' / 'playbooks' / 'chaos.yml')), proc.stdout
    env = root / 'env'
    env.mkdir()
    (env / 'extravars').write_text(yaml.safe_dump(extravars))
    (env / 'settings').write_text(yaml.safe_dump({'job_timeout': 300, 'idle_timeout': 240, 'pexpect_timeout': 5,
                                                  'suppress_ansible_output': True}))
    (env / 'envvars').write_text(yaml.safe_dump(dict({'ANSIBLE_COLLECTIONS_PATH': str(collections),
                                                      'ANSIBLE_FORCE_COLOR': 'False'}, **(envvars or {}))))
    return str(root)


@pytest.fixture
def job_env(monkeypatch):
    # The job sees no setting of this checkout: not its ansible.cfg, collections path or report dir (make exports them).
    for name in list(os.environ):
        if name.startswith('ANSIBLE_') or name == 'PGGIT_CHAOS_REPORT_DIR':
            monkeypatch.delenv(name)
    monkeypatch.setenv('PATH', BIN + os.pathsep + os.environ.get('PATH', ''))


def run_job(pdd, ident):
    return ansible_runner.run(private_data_dir=pdd, playbook='chaos.yml', ident=ident, quiet=True)


def verdicts(runner):
    """experiment -> the verdict entry, from the job events of the verdict task (pggit.chaos.pggit_chaos_verdict)."""
    found = {}
    for event in runner.events:
        data = event.get('event_data') or {}
        entry = (data.get('res') or {}).get('pggit_chaos_entry')
        if event['event'] == 'runner_on_ok' and data.get('resolved_action') == 'pggit.chaos.pggit_chaos_verdict' and entry:
            found[entry['experiment']] = entry
    return found


def published(runner):
    """The set_stats data of the job, as AWX reads it: the playbook_on_stats event's artifact_data."""
    stats = [e for e in runner.events if e['event'] == 'playbook_on_stats']
    assert len(stats) == 1
    return stats[0]['event_data'].get('artifact_data') or {}


def assert_clean(primary):
    assert ledger(primary) == []
    assert set(trigger_modes(primary).values()) == {'O'}
    assert chaos_processes() == []


def test_passing_suite_is_successful(lab, primary, tarball, tmp_path, job_env):
    pdd = private_data_dir(tmp_path, tarball, survey_answers(chaos_experiments=['trigger_failure'], chaos_duration=3,
                                                             chaos_ttl=60, chaos_max_hosts='1'))
    runner = run_job(pdd, 'pass')
    artifacts = os.path.join(pdd, 'artifacts', 'pass')
    with open(os.path.join(artifacts, 'status')) as handle:
        assert handle.read().strip() == 'successful', runner.stdout.read()
    assert runner.status == 'successful' and runner.rc == 0

    entry = verdicts(runner)['trigger_failure']
    assert entry['status'] == 'passed' and entry['host'] == 'lab-1', entry.get('reasons')
    summary = published(runner)['pggit_chaos_summary']
    assert summary['experiments'] == [{'experiment': 'trigger_failure', 'host': 'lab-1', 'status': 'passed'}]
    assert (summary['passed'], summary['failed'], summary['aborted'], summary['skipped']) == (1, 0, 0, 0)

    # PGGIT_CHAOS_REPORT_DIR unset: the reports land in the job's artifact dir, which the runner keeps.
    with open(os.path.join(artifacts, 'chaos', 'chaos-report.json')) as handle:
        report = json.load(handle)
    assert [(e['experiment'], e['status']) for e in report['entries']] == [('trigger_failure', 'passed')]
    # Every report of every run, the HTML page and the OpenMetrics text included.
    assert sorted(os.listdir(os.path.join(artifacts, 'chaos'))) == sorted(REPORT_FILES)
    with open(os.path.join(artifacts, 'chaos', 'chaos-report.html'), encoding='utf-8') as handle:
        assert 'data-experiment="trigger_failure"' in handle.read()
    assert not os.path.exists(os.path.join(pdd, 'project', 'reports')), 'nothing written into the project checkout'
    assert_clean(primary)


def test_failing_experiment_fails_the_job_with_its_verdict_in_the_events(lab, primary, tarball, tmp_path, job_env):
    reports = tmp_path / 'chosen-reports'
    extravars = survey_answers(chaos_experiments=['trigger_failure', 'kill_connections'], chaos_duration=3, chaos_ttl=60,
                               chaos_max_hosts='1', chaos_fail_on_failure='true')
    # Not a survey question: the kill rounds aim at sessions no client opens, so they terminate nothing.
    extravars['pggit_chaos_connections_application_name'] = 'pggit-chaos-nobody'
    pdd = private_data_dir(tmp_path / 'job', tarball, extravars, envvars={'PGGIT_CHAOS_REPORT_DIR': str(reports)})
    runner = run_job(pdd, 'fail')
    with open(os.path.join(pdd, 'artifacts', 'fail', 'status')) as handle:
        assert handle.read().strip() == 'failed'
    assert runner.status == 'failed' and runner.rc != 0

    found = verdicts(runner)
    assert found['trigger_failure']['status'] == 'passed', found['trigger_failure'].get('reasons')
    failed = found['kill_connections']
    assert failed['status'] == 'failed' and failed['evidence']['terminated'] == 0
    assert failed['reasons'][0].startswith('the fault did not happen'), failed['reasons']
    summary = published(runner)['pggit_chaos_summary']
    assert (summary['passed'], summary['failed'], summary['ok']) == (1, 1, False)
    statuses = {(e['experiment'], e['status']) for e in summary['experiments']}
    assert statuses == {('trigger_failure', 'passed'), ('kill_connections', 'failed')}

    # PGGIT_CHAOS_REPORT_DIR set: there, and not in the artifact dir.
    with open(str(reports / 'chaos-report.json')) as handle:
        assert sorted(e['status'] for e in json.load(handle)['entries']) == ['failed', 'passed']
    assert sorted(os.listdir(str(reports))) == sorted(REPORT_FILES)
    with open(str(reports / 'chaos-metrics.prom'), encoding='utf-8') as handle:
        assert 'pggit_chaos_verdict{experiment="kill_connections",host="lab-1"} 0' in handle.read()
    assert not os.path.exists(os.path.join(pdd, 'artifacts', 'fail', 'chaos'))
    assert_clean(primary)
