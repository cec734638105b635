"""Tests against a running lab: real namespace hosts over real SSH.

The lab is the one PGGIT_LAB_INVENTORY names (see labtools), so tests can run
against a private lab while another one stays up.
"""
from __future__ import annotations

import os

import pytest

from labtools import INVENTORY, lab_hosts, lab_primary


@pytest.fixture(scope='session')
def lab():
    if not os.path.exists(INVENTORY):
        pytest.fail('the lab is not up (%s missing): run make lab [LAB_NAME=x] first, and set PGGIT_LAB_INVENTORY to '
                    'inventories/x/hosts.yml for a lab other than the demo lab' % INVENTORY)
    return lab_hosts()


@pytest.fixture(scope='session')
def primary(lab):
    return lab_primary(lab)
