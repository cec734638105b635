"""Fixtures: a real PostgreSQL with the pgGit contract fixture (see pgtools)."""
from __future__ import annotations

import uuid

import pytest

from pgtools import Postgres, kill_reapers


@pytest.fixture(scope='session')
def postgres():
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture
def pgdb(postgres):
    """A fresh database with the pgGit fixture, per test."""
    name = 'it_' + uuid.uuid4().hex[:10]
    return postgres.create_db(name)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / 'state'
    yield str(path)
    kill_reapers(str(path))
