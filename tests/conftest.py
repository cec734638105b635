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
