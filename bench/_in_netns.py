"""Run one pggit.chaos module in-process (used inside a lab host's namespace by bench/network.py)."""
from __future__ import annotations

import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from modrun import run_module  # noqa: E402


def main():
    module = importlib.import_module('ansible_collections.pggit.chaos.plugins.modules.' + sys.argv[1])
    result, failed = run_module(module.main, json.loads(sys.argv[2]))
    result['failed'] = failed
    print(json.dumps(result, default=str))


if __name__ == '__main__':
    main()
