"""Every filter plugin's DOCUMENTATION, EXAMPLES and RETURN parse as YAML (a ': ' in prose breaks them, and with them
ansible-doc and the sanity tests), name the filter its file registers, and document each of its keyword options."""
from __future__ import annotations

import glob
import importlib
import inspect
import os

import pytest
import yaml

FILTERS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', 'plugins', 'filter', '*.py')))


@pytest.mark.parametrize('path', FILTERS, ids=os.path.basename)
def test_the_filter_docs_parse_and_match_the_filter(path):
    name = os.path.basename(path)[:-3]
    module = importlib.import_module('ansible_collections.pggit.chaos.plugins.filter.' + name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)
    filters = module.FilterModule().filters()
    assert doc['name'] == name and name in filters
    params = list(inspect.signature(filters[name]).parameters)[1:]
    assert sorted(doc['options']) == sorted(['_input'] + params)


def test_the_new_filters_are_among_them():
    names = [os.path.basename(p) for p in FILTERS]
    assert 'chaos_revert_plan.py' in names and 'chaos_window_latency.py' in names
