"""pggit_chaos_warm with the real ansible-playbook CLI: the worker that first runs a module finds the payload that the
background helper built (ansible-core's own debug log says so), and the helper is gone when the run ends.

Without the warm-up (the control run), the same worker builds the payload itself: so a helper that built nothing, or
into another cache, fails the test.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from adhoc import BIN, REPO_COLLECTIONS, write_config

REVERT = 'ansible_collections.pggit.chaos.plugins.modules.pggit_chaos_revert'


def _run(tmp_path, warm):
    inventory = tmp_path / 'hosts.yml'
    inventory.write_text(yaml.safe_dump({'all': {'hosts': {'localhost': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'pggit_chaos_allowed': True}}}}))
    tasks = []
    if warm:
        tasks += [{'name': 'Warm', 'pggit.chaos.pggit_chaos_warm': {'roles': ['pggit.chaos.pggit_chaos_trigger']},
                   'register': 'warm'},
                  {'name': 'Wait for the helper', 'ansible.builtin.wait_for': {'path': '/proc/{{ warm.pid }}', 'state': 'absent',
                                                                               'timeout': 120}}]
    revert = {'experiment': 'none', 'state_dir': str(tmp_path / 'state')}
    tasks.append({'name': 'Revert nothing', 'pggit.chaos.pggit_chaos_revert': revert})
    play = tmp_path / 'play.yml'
    play.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=REPO_COLLECTIONS, ANSIBLE_CONFIG=write_config(tmp_path), ANSIBLE_DEBUG='1',
               ANSIBLE_NOCOLOR='1')
    proc = subprocess.Popen([os.path.join(BIN, 'ansible-playbook'), '-i', str(inventory), str(play)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    # Nothing the run started outlives it: no helper still runs for this run's main process.
    left = subprocess.run(['pgrep', '-f', '_warm.py .*--parent %d ' % proc.pid], capture_output=True, text=True, check=False).stdout
    assert not left.strip(), left
    return out


def test_the_first_use_finds_the_payload_the_helper_built(tmp_path):
    (tmp_path / 'warm').mkdir()
    warmed = _run(tmp_path / 'warm', True)
    assert re.search(r'ANSIBALLZ: using cached module: \S*/ansiballz_cache/%s-' % re.escape(REVERT), warmed), \
        'the first pggit_chaos_revert of the run built its own payload'
    assert not re.search(r'ANSIBALLZ: Lock acquired: \S*%s-' % re.escape(REVERT), warmed)


def test_without_it_the_worker_builds_the_payload(tmp_path):
    (tmp_path / 'cold').mkdir()
    cold = _run(tmp_path / 'cold', False)
    assert re.search(r'ANSIBALLZ: Lock acquired: \S*%s-' % re.escape(REVERT), cold)
    assert not re.search(r'ANSIBALLZ: using cached module: \S*%s-' % re.escape(REVERT), cold)
