"""Make the repository importable as ``ansible_collections.pggit.chaos``."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, '.cache', 'collections')
_LINK = os.path.join(COLLECTIONS, 'ansible_collections', 'pggit', 'chaos')

if not os.path.exists(_LINK):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    os.symlink(os.path.relpath(REPO, os.path.dirname(_LINK)), _LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


import glob  # noqa: E402

import pytest  # noqa: E402

FILL_GLOB = '.pggit-chaos-fill-*'


@pytest.fixture(autouse=True)
def _no_fill_file_outlives_its_test(request):
    """A disk-fill file is a fault: one a test made in its tmp_path is removed when the test ends, pass or fail.

    (pytest keeps the last few tmp_path folders; a fill file left there is a leftover fault on the machine.)"""
    if 'tmp_path' not in request.fixturenames:
        yield
        return
    top = str(request.getfixturevalue('tmp_path'))  # taken now, so tmp_path is torn down after this
    yield
    for path in glob.glob(os.path.join(top, '**', FILL_GLOB), recursive=True) + glob.glob(os.path.join(top, FILL_GLOB)):
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
