"""The built collection tarball installs and works, action plugins included."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from adhoc import adhoc as run_adhoc, write_config
from pgtools import query

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


# The lab harness (namespaces, bridges, sshd run as root on the build machine)
# and what only drives it stay in the repository.
LAB_ONLY = ('roles/pggit_lab', 'playbooks/lab_up.yml', 'playbooks/lab_down.yml', 'inventories', 'molecule',
            'tests/lab', 'bench', 'Makefile')


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    """Build the collection tarball."""
    dist = tmp_path_factory.mktemp('dist')
    build = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', REPO, '--output-path', str(dist)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    built = [f for f in os.listdir(str(dist)) if f.endswith('.tar.gz')]
    assert built == ['pggit-chaos-0.1.0.tar.gz']
    return os.path.join(str(dist), built[0])


def test_tarball_leaves_the_lab_out_and_carries_the_license(tarball):
    with tarfile.open(tarball) as archive:
        members = [m.name.rstrip('/') for m in archive.getmembers()]
        manifest = json.load(archive.extractfile('MANIFEST.json'))
        license_text = archive.extractfile('LICENSE').read().decode()
    # the check itself can see what it looks for: these are in the tarball
    assert 'roles/pggit_install/tasks/main.yml' in members and 'playbooks/chaos.yml' in members
    shipped = [m for m in members if any(m == path or m.startswith(path + '/') for path in LAB_ONLY)]
    assert shipped == [], 'lab-only files must not be packaged: %s' % shipped
    assert not [m for m in members if 'pggit_lab' in m], 'nothing of the lab role may be packaged'
    assert 'LICENSE' in members
    assert manifest['collection_info']['license'] == ['MIT']
    assert license_text.startswith('MIT License') and 'Copyright (c) 2026 pggit.chaos contributors' in license_text


@pytest.fixture(scope='module')
def installed(tarball, tmp_path_factory):
    """Install the tarball into an empty collections path."""
    target = tmp_path_factory.mktemp('collections')
    install = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '--force', tarball,
                              '-p', str(target)], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr
    root = os.path.join(str(target), 'ansible_collections', 'pggit', 'chaos')
    for leftover in ('.venv', '.git', 'reports', 'tests/output', 'inventories/lab/hosts.yml') + LAB_ONLY:
        assert not os.path.exists(os.path.join(root, leftover)), '%s must not be packaged' % leftover
    assert os.path.isfile(os.path.join(root, 'LICENSE'))
    return str(target)


def adhoc(collections, module, args, extra_vars=None, host_vars=None):
    return run_adhoc(collections, write_config(collections), module, args, extra_vars, host_vars=host_vars)


def test_installed_probe_runs(installed, pgdb):
    result = adhoc(installed, 'pggit.chaos.pggit_verify', pgdb)
    assert result['healthy'] is True, result.get('findings')


def test_installed_fault_refuses_hosts_without_opt_in(installed, pgdb, state_dir):
    args = dict(pgdb, name='pkg', ttl=30, state_dir=state_dir)
    refused = adhoc(installed, 'pggit.chaos.pggit_chaos_trigger', args)
    assert refused.get('failed') and 'localhost has not opted in to chaos' in refused['msg']
    assert not os.path.exists(os.path.join(state_dir, 'faults')), 'nothing reaches the target when refused'
    injected = adhoc(installed, 'pggit.chaos.pggit_chaos_trigger', dict(pgdb, name='pkg', ttl=30),
                     host_vars={'pggit_chaos_allowed': True}, extra_vars={'pggit_chaos_state_dir': state_dir})
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
