"""Tests against the running lab (make lab): real namespace hosts over real SSH."""
from __future__ import annotations

import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INVENTORY = os.path.join(REPO, 'inventories', 'lab', 'hosts.yml')


def _hosts(node, found):
    for name, hostvars in (node.get('hosts') or {}).items():
        found.setdefault(name, {}).update(hostvars or {})
    for child in (node.get('children') or {}).values():
        _hosts(child or {}, found)
    return found


@pytest.fixture(scope='session')
def lab():
    if not os.path.exists(INVENTORY):
        pytest.fail('the lab is not up (%s missing): run make lab first' % INVENTORY)
    with open(INVENTORY) as handle:
        return _hosts(yaml.safe_load(handle)['all'], {})


@pytest.fixture(scope='session')
def primary(lab):
    return next(v for v in lab.values() if v.get('pggit_lab_role') == 'primary')
