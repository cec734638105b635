"""Each experiment on a host gets its own lifecycle settings, with the real ansible-playbook CLI.

Two imports of pggit_experiment's begin in one play, on a local host against the integration PostgreSQL (begin's
steady-state probe is real). The second asks for a window its TTL does not cover, so begin must refuse it, naming
the second's values. Were begin to settle the first's duration and TTL as facts (facts outrank an import's vars and
outlive it), the second would pass on the first's numbers.
"""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from adhoc import BIN, REPO_COLLECTIONS, write_config


def test_a_later_experiment_is_checked_with_its_own_duration_and_ttl(tmp_path, pgdb):
    begin = {'name': 'pggit.chaos.pggit_experiment', 'tasks_from': 'begin'}
    play = {'name': 'Two experiments on one host', 'hosts': 'target', 'gather_facts': False,
            'module_defaults': {'group/pggit.chaos.postgres': dict(pgdb)},
            'tasks': [
                {'name': 'First experiment', 'ansible.builtin.import_role': begin,
                 'vars': {'pggit_experiment_name': 'first', 'pggit_experiment_duration': 1, 'pggit_experiment_ttl': 60}},
                {'name': 'Mark the first as begun', 'ansible.builtin.debug': {'msg': 'FIRST BEGUN'}},
                {'name': 'Second experiment', 'ansible.builtin.import_role': begin,
                 'vars': {'pggit_experiment_name': 'second', 'pggit_experiment_duration': 100, 'pggit_experiment_ttl': 60}},
                {'name': 'Mark the second as begun', 'ansible.builtin.debug': {'msg': 'SECOND BEGUN'}}]}
    (tmp_path / 'play.yml').write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump({'all': {'hosts': {'target': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=REPO_COLLECTIONS, ANSIBLE_CONFIG=write_config(tmp_path), ANSIBLE_NOCOLOR='1',
               ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default')
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), str(tmp_path / 'play.yml'), '-i', str(tmp_path / 'hosts.yml')],
                          capture_output=True, text=True, cwd=str(tmp_path), env=env, check=False, timeout=180)
    out = proc.stdout + proc.stderr
    assert 'FIRST BEGUN' in out, out
    assert proc.returncode != 0 and 'SECOND BEGUN' not in out, out
    assert 'got chaos_ttl=60 and chaos_duration=100' in out, out
