from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._checker import check, percentile

ALL = object()  # catalog: every issued token exists

# (id, outcome, history rows for the token, catalog, expect_tracked, the one bucket it lands in or None)
SCENARIOS = [
    ('ok tracked once', 'ok', 1, ALL, True, None),
    ('ok not tracked', 'ok', 0, ALL, True, 'lost'),
    ('ok tracked twice', 'ok', 2, ALL, True, 'duplicated'),
    ('fail not tracked', 'fail', 0, set(), True, None),
    ('fail tracked', 'fail', 1, set(), True, 'unexpected'),
    ('unknown committed and tracked', 'unknown', 1, ALL, True, None),
    ('unknown committed not tracked', 'unknown', 0, ALL, True, 'lost'),
    ('unknown not committed not tracked', 'unknown', 0, set(), True, None),
    ('unknown not committed but tracked', 'unknown', 1, set(), True, 'unexpected'),
    ('unknown without catalog is not judged', 'unknown', 0, None, True, None),
    ('unknown without catalog, tracked twice', 'unknown', 2, None, True, 'duplicated'),
    ('ok tracked but absent from catalog', 'ok', 1, set(), True, 'phantom'),
    ('ok without catalog', 'ok', 1, None, True, None),
    ('tracking off: ok untracked is right', 'ok', 0, ALL, False, None),
    ('tracking off: ok tracked', 'ok', 1, ALL, False, 'unexpected'),
    ('tracking off: ok tracked twice', 'ok', 2, ALL, False, 'unexpected'),
    ('tracking off: fail tracked', 'fail', 1, set(), False, 'unexpected'),
    ('tracking off: unknown committed untracked', 'unknown', 0, ALL, False, None),
]
BUCKETS = ('lost', 'duplicated', 'unexpected', 'phantom')


@pytest.mark.parametrize('outcome, rows, catalog, expect_tracked, bucket', [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_one_operation(outcome, rows, catalog, expect_tracked, bucket):
    token = 'r1_000001'
    catalog = {token} if catalog is ALL else catalog
    history = {token: rows} if rows else {}
    verdict = check([{'token': token, 'outcome': outcome}], history, catalog, expect_tracked=expect_tracked)
    for name in BUCKETS:
        assert verdict[name] == ([token] if name == bucket else []), name
    assert verdict['valid'] is (bucket is None)
    assert verdict['tracked'] == (1 if rows else 0)
    assert verdict['expect_tracked'] is expect_tracked


@pytest.mark.parametrize('rows', [1, 3])
def test_token_never_issued_but_in_history_is_unexpected(rows):
    ops = [{'token': 'r1_000001', 'outcome': 'ok'}]
    verdict = check(ops, {'r1_000001': 1, 'r1_000009': rows, 'r1_000002': 1, 'r1_000005': 0}, {'r1_000001'})
    assert verdict['unexpected'] == ['r1_000002', 'r1_000009']  # sorted; a zero count is no row
    assert verdict['lost'] == [] and not verdict['valid']


def test_counts_and_unknown_resolution():
    ops = [{'token': 't%d' % i, 'outcome': o} for i, o in enumerate(['ok', 'ok', 'fail', 'unknown', 'unknown', 'unknown'])]
    history = {'t0': 1, 't1': 1, 't3': 1, 't5': 1}
    verdict = check(ops, history, catalog={'t0', 't1', 't3', 't5'})
    assert (verdict['ops'], verdict['ok'], verdict['failed'], verdict['unknown'], verdict['tracked']) == (6, 2, 1, 3, 4)
    assert verdict['unknown_resolved'] == {'committed': 2, 'not_committed': 1}
    assert verdict['valid']


def test_no_ops_is_valid():
    verdict = check([], {})
    assert verdict['valid'] and verdict['ops'] == 0


def test_unknown_outcome_value_is_refused():
    with pytest.raises(ValueError, match="'lost' for t1"):
        check([{'token': 't1', 'outcome': 'lost'}], {})


@pytest.mark.parametrize('values, pct, expected', [
    ([], 50, None),
    ([7], 50, 7),
    ([7], 99, 7),
    ([3, 1, 2], 0, 1),
    ([3, 1, 2], 100, 3),
    ([3, 1, 2], 50, 2),
    ([4, 1, 3, 2], 50, 3),
    (list(range(1, 101)), 50, 51),
    (list(range(100, 0, -1)), 95, 95),
    ([1, 2, 3], 150, 3),
    ([1, 2, 3], -10, 1),
])
def test_percentile(values, pct, expected):
    assert percentile(values, pct) == expected


@pytest.mark.parametrize('in_catalog, rows, bucket', [
    (True, 1, None),  # committed locally and tracked once
    (True, 0, 'lost'),  # committed but untracked
    (True, 2, 'duplicated'),
    (False, 0, None),  # never committed (cannot happen after a cancelled sync wait, but the catalog decides)
    (False, 1, 'unexpected'),
])
def test_maybe_is_resolved_against_the_catalog_like_unknown(in_catalog, rows, bucket):
    token = 'r1_000001'
    verdict = check([{'token': token, 'outcome': 'maybe'}], {token: rows} if rows else {}, {token} if in_catalog else set())
    for name in BUCKETS:
        assert verdict[name] == ([token] if name == bucket else []), name
    assert (verdict['maybe'], verdict['ok'], verdict['unknown']) == (1, 0, 0)
    assert verdict['maybe_resolved'] == {'committed': int(in_catalog), 'not_committed': int(not in_catalog)}
    assert verdict['unknown_resolved'] == {'committed': 0, 'not_committed': 0}


def test_maybe_without_catalog_is_not_judged_and_bad_outcomes_are_refused():
    verdict = check([{'token': 't', 'outcome': 'maybe'}], {}, None)
    assert verdict['valid'] and verdict['maybe'] == 1
    with pytest.raises(ValueError, match="unknown outcome 'info'"):
        check([{'token': 't', 'outcome': 'info'}], {}, None)
