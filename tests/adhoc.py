"""Run one module through the real ansible CLI (AnsiballZ, action plugins), optionally inside a netns."""
from __future__ import annotations

import json
import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_COLLECTIONS = os.path.join(REPO, '.cache', 'collections')


def write_config(folder):
    """An ansible.cfg with nothing from the repository's own configuration."""
    path = os.path.join(str(folder), 'ansible.cfg')
    with open(path, 'w') as handle:
        handle.write('[defaults]\n')
    return path


def adhoc(collections, config, module, args, extra_vars=None, netns=None, timeout=120, host_vars=None):
    """Return the module result, with 'failed' set from the CLI's verdict.

    ``host_vars`` go into an inventory written next to ``config``: the only
    place an opt-in (pggit_chaos_allowed) counts; extra vars cannot grant it."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_CONFIG=config, ANSIBLE_NOCOLOR='1')
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-o', '-c', 'local', '-m', module,
            '-e', 'ansible_python_interpreter=%s' % sys.executable]
    if host_vars is not None:
        inventory = os.path.join(os.path.dirname(config), 'inventory.yml')
        with open(inventory, 'w') as handle:
            json.dump({'all': {'hosts': {'localhost': dict(host_vars, ansible_connection='local',
                                                           ansible_python_interpreter=sys.executable)}}}, handle)
        argv += ['-i', inventory]
    if args:
        argv += ['-a', json.dumps(args)]
    if extra_vars:
        argv += ['-e', json.dumps(extra_vars)]
    if netns:
        argv = ['ip', 'netns', 'exec', netns] + argv
    proc = subprocess.run(argv, capture_output=True, text=True, cwd='/', env=env, check=False, timeout=timeout)
    line = [row for row in proc.stdout.splitlines() if row.startswith('localhost | ')]
    assert line, proc.stdout + proc.stderr
    status, payload = line[0].split(' => ', 1)
    result = json.loads(payload)
    result['failed'] = 'FAILED' in status
    return result
