"""Tests against the running lab (make lab): real namespace hosts over real SSH."""
from __future__ import annotations

import os

import pytest

from labtools import INVENTORY, lab_hosts, lab_primary


@pytest.fixture(scope='session')
def lab():
    if not os.path.exists(INVENTORY):
        pytest.fail('the lab is not up (%s missing): run make lab first' % INVENTORY)
    return lab_hosts()


@pytest.fixture(scope='session')
def primary(lab):
    return lab_primary(lab)
