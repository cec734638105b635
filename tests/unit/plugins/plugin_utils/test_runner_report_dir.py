"""Under ansible-runner the reports land in the job's artifact dir unless a report dir was set explicitly."""
from __future__ import annotations

from ansible_collections.pggit.chaos.plugins.plugin_utils._runner import report_dir

ARTIFACTS = '/tmp/pdd/artifacts/7'


def test_explicit_env_wins_under_the_runner():
    assert report_dir('/srv/chaos', 'env: PGGIT_CHAOS_REPORT_DIR', {'AWX_ISOLATED_DATA_DIR': ARTIFACTS}) == '/srv/chaos'


def test_explicit_ini_wins_under_the_runner():
    assert report_dir('/p/reports', 'ini: /p/ansible.cfg', {'AWX_ISOLATED_DATA_DIR': ARTIFACTS}) == '/p/reports'


def test_default_goes_to_the_artifact_dir_under_the_runner():
    assert report_dir('reports', 'default', {'AWX_ISOLATED_DATA_DIR': ARTIFACTS}) == ARTIFACTS + '/chaos'
    assert report_dir('reports', None, {'AWX_ISOLATED_DATA_DIR': '/runner/artifacts/42'}) == '/runner/artifacts/42/chaos'


def test_default_stays_without_the_runner():
    assert report_dir('reports', 'default', {}) == 'reports'
    assert report_dir('reports', 'default', {'AWX_ISOLATED_DATA_DIR': '  '}) == 'reports'
