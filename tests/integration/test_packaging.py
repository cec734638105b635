"""The built collection tarball installs and works, action plugins included."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adhoc import adhoc as run_adhoc, write_config
from pgtools import query

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """Build the tarball and install it into an empty collections path."""
    dist = tmp_path_factory.mktemp('dist')
    build = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', REPO, '--output-path', str(dist)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    tarball = [f for f in os.listdir(str(dist)) if f.endswith('.tar.gz')]
    assert tarball == ['pggit-chaos-0.1.0.tar.gz']
    target = tmp_path_factory.mktemp('collections')
    install = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '--force', os.path.join(str(dist), tarball[0]),
                              '-p', str(target)], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr
    root = os.path.join(str(target), 'ansible_collections', 'pggit', 'chaos')
    for leftover in ('.venv', '.git', 'reports', 'tests/output', 'inventories/lab/hosts.yml'):
        assert not os.path.exists(os.path.join(root, leftover)), '%s must not be packaged' % leftover
    return str(target)


def adhoc(collections, module, args, extra_vars=None):
    return run_adhoc(collections, write_config(collections), module, args, extra_vars)


def test_installed_probe_runs(installed, pgdb):
    result = adhoc(installed, 'pggit.chaos.pggit_verify', pgdb)
    assert result['healthy'] is True, result.get('findings')


def test_installed_fault_refuses_hosts_without_opt_in(installed, pgdb, state_dir):
    args = dict(pgdb, name='pkg', ttl=30, state_dir=state_dir)
    refused = adhoc(installed, 'pggit.chaos.pggit_chaos_trigger', args)
    assert refused.get('failed') and 'localhost has not opted in to chaos' in refused['msg']
    assert not os.path.exists(os.path.join(state_dir, 'faults')), 'nothing reaches the target when refused'
    injected = adhoc(installed, 'pggit.chaos.pggit_chaos_trigger', dict(pgdb, name='pkg', ttl=30),
                     extra_vars={'pggit_chaos_allowed': True, 'pggit_chaos_state_dir': state_dir})
    assert injected['changed'] and injected['tracking'] == 'off', injected
    assert os.path.exists(os.path.join(state_dir, 'faults', 'trigger--pkg.json')), 'state_dir came from pggit_chaos_state_dir'
    reverted = adhoc(installed, 'pggit.chaos.pggit_chaos_revert', {}, extra_vars={'pggit_chaos_state_dir': state_dir})
    assert not reverted['failed'], reverted
    assert [r['id'] for r in reverted['reverted']] == ['trigger--pkg']
    modes = dict(query(pgdb, "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'pggit%'"))
    assert set(modes.values()) == {'O'}


def test_installed_playbook_resolves_by_its_collection_name(installed, tmp_path):
    inventory = tmp_path / 'hosts.yml'
    inventory.write_text('all:\n  children:\n    pggit_primary:\n      hosts:\n        db1:\n          pggit_chaos_allowed: true\n')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=installed, ANSIBLE_CONFIG=write_config(installed))
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), 'pggit.chaos.chaos', '-i', str(inventory), '--syntax-check'],
                          capture_output=True, text=True, cwd='/', env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'ansible_collections/pggit/chaos/playbooks/chaos.yml' in proc.stdout  # the installed copy
