# Copyright: pggit.chaos contributors
# MIT License
"""Jepsen-style checker for tracked DDL.

Every DDL the workload issues carries a unique token and ends with one of
four outcomes: ``ok`` (commit acknowledged), ``fail`` (definitely not
committed), ``unknown`` (the connection died around the commit) or ``maybe``
(the server answered the commit, but with the warning that its wait for a
synchronous standby was cancelled and the transaction "has already committed
locally, but might not have been replicated": Jepsen's ``:info``, an
indeterminate outcome the client must not take as acknowledged).  pgGit's
invariant is: a history row exists if and only if the DDL committed.

Unknown and maybe outcomes are resolved with the catalog: the table exists if
and only if the DDL committed.
"""
from __future__ import annotations

OUTCOMES = ('ok', 'fail', 'unknown', 'maybe')
# Outcomes the client cannot decide: the catalog resolves them.
INDETERMINATE = ('unknown', 'maybe')


def check(ops, history_counts, catalog=None, expect_tracked=True):
    """Compare client outcomes with history rows.

    ``ops``: list of ``{'token': str, 'outcome': 'ok'|'fail'|'unknown'|'maybe'}``.
    ``history_counts``: token -> number of CREATE history rows (tokens with
    none may be absent).  ``catalog``: set of tokens whose object exists, or
    None when unknown.  With ``expect_tracked=False`` (tracking deliberately
    off) a committed DDL must have no row; one that has a row is unexpected.
    """
    lost, duplicated, unexpected, phantom = [], [], [], []
    counts = dict((name, 0) for name in OUTCOMES)
    resolved = {'committed': 0, 'not_committed': 0}
    maybe_resolved = {'committed': 0, 'not_committed': 0}
    issued = set()
    for op in ops:
        token, outcome = op['token'], op['outcome']
        if outcome not in counts:
            raise ValueError('unknown outcome %r for %s' % (outcome, token))
        counts[outcome] += 1
        issued.add(token)
        rows = history_counts.get(token, 0)
        committed = None
        if outcome == 'ok':
            committed = True
        elif outcome == 'fail':
            committed = False
        elif catalog is not None:
            committed = token in catalog
            (resolved if outcome == 'unknown' else maybe_resolved)['committed' if committed else 'not_committed'] += 1
        if outcome == 'ok' and catalog is not None and token not in catalog:
            phantom.append(token)
        if committed is True and not expect_tracked:
            if rows:
                unexpected.append(token)
        elif committed is True and rows == 0:
            lost.append(token)
        elif rows > 1:
            duplicated.append(token)
        elif committed is False and rows > 0:
            unexpected.append(token)
    unexpected.extend(sorted(t for t, n in history_counts.items() if n and t not in issued))
    return {
        'ops': len(ops),
        'ok': counts['ok'],
        'failed': counts['fail'],
        'unknown': counts['unknown'],
        'unknown_resolved': resolved,
        'maybe': counts['maybe'],
        'maybe_resolved': maybe_resolved,
        'tracked': sum(1 for op in ops if history_counts.get(op['token'], 0) > 0),
        'expect_tracked': expect_tracked,
        'lost': lost,
        'duplicated': duplicated,
        'unexpected': unexpected,
        'phantom': phantom,
        'valid': not (lost or duplicated or unexpected or phantom),
    }


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(pct / 100.0 * (len(ordered) - 1)))))
    return ordered[index]
