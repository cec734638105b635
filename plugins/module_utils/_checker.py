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


# --- failover accounting (RTO, RPO) ---------------------------------------------------
# A failover workload connects to whichever server accepts writes (a multi-host
# connection string with target_session_attrs=read-write) and records, per DDL,
# the server that answered it and when: ``{'token', 'outcome', 'server',
# 'started', 'ended', 'in_catalog'}``, ``in_catalog`` read on the NEW primary
# after the failover (the workload's final check connects the same way).

def _server(op):
    return str(op.get('server') or '')


def _ended(op):
    value = op.get('ended')
    return None if value is None else float(value)


def _committed_on_new(op, new_servers):
    return op.get('outcome') == 'ok' and _server(op) in new_servers


def failover_accounting(ops, fault_at, new_servers, old_servers=()):
    """RTO, RPO and the fate of indeterminate DDL across a failover. Pure.

    ``fault_at``: epoch of the fault (the switchover request, the kill, the
    freeze). ``new_servers`` / ``old_servers``: the ``host:port`` names under
    which the client reached the new and the old primary.

    - ``rto_s``: from the fault to the first DDL acknowledged by the new
      primary (its answer's time); None when the new primary acknowledged none.
    - ``rpo_lost``: DDL the client saw acknowledged before the fault and that
      the new primary's catalog lacks, by token (``rpo_lost_ddl`` counts them).
      ``lost_after_fault`` lists acknowledged DDL answered after the fault and
      missing too (a resumed old leader that acknowledged a write the new
      history does not hold): never hidden, counted apart.
    - ``indeterminate``: unknown and maybe outcomes, resolved against the new
      primary's catalog. A ``maybe`` (committed locally, maybe not replicated)
      that the new primary lacks was never acknowledged: not a loss, resolved
      ``not_committed``; one it holds is ``committed``.
    - ``unchecked_ok``: acknowledged DDL whose fate on the new primary is unknown (``in_catalog`` None): the
      RPO cannot count them, so the verdict must not pass with any.
    - ``write_pause_s``: the last acknowledgement by another server before the
      first one by the new primary, to that first one (the window without
      acknowledged writes), and ``committed_by``: acknowledged DDL per server.
    """
    new_servers = set(str(s) for s in new_servers or ())
    old_servers = set(str(s) for s in old_servers or ())
    fault_at = None if fault_at is None else float(fault_at)
    rpo_lost, lost_after, committed_by, unchecked = [], [], {}, []
    indeterminate = {'committed': [], 'not_committed': [], 'unresolved': []}
    first_new = None
    for op in ops:
        outcome, token, ended = op.get('outcome'), op.get('token'), _ended(op)
        in_catalog = op.get('in_catalog')
        if outcome == 'ok':
            committed_by[_server(op) or '?'] = committed_by.get(_server(op) or '?', 0) + 1
            if in_catalog is None:
                # Never read against the new primary's catalog: neither kept nor lost, and said so.
                unchecked.append(dict(token=token, server=_server(op), ended=ended))
            if in_catalog is False:
                before = fault_at is None or ended is None or ended <= fault_at
                (rpo_lost if before else lost_after).append(dict(token=token, server=_server(op), ended=ended))
            if (_committed_on_new(op, new_servers) and ended is not None and fault_at is not None and ended >= fault_at
                    and (first_new is None or ended < _ended(first_new))):
                first_new = op
        elif outcome in INDETERMINATE:
            key = 'unresolved' if in_catalog is None else 'committed' if in_catalog else 'not_committed'
            indeterminate[key].append(dict(token=token, outcome=outcome, server=_server(op)))
    rto = round(_ended(first_new) - fault_at, 3) if first_new is not None else None
    pause = None
    if first_new is not None:
        earlier = [_ended(op) for op in ops if op.get('outcome') == 'ok' and _ended(op) is not None
                   and _ended(op) < _ended(first_new) and _server(op) not in new_servers]
        if earlier:
            pause = round(_ended(first_new) - max(earlier), 3)
    return dict(
        fault_at=fault_at, new_servers=sorted(new_servers), old_servers=sorted(old_servers),
        rto_s=rto, first_on_new=None if first_new is None else dict(token=first_new.get('token'), ended=_ended(first_new)),
        write_pause_s=pause,
        rpo_lost_ddl=len(rpo_lost), rpo_lost=rpo_lost,
        lost_after_fault_ddl=len(lost_after), lost_after_fault=lost_after,
        indeterminate=indeterminate, committed_by=committed_by, unchecked_ok=unchecked,
        acknowledged_by_old_after_fault=sum(1 for op in ops if op.get('outcome') == 'ok' and _server(op) in old_servers
                                            and fault_at is not None and _ended(op) is not None and _ended(op) > fault_at),
    )


# --- several workers ------------------------------------------------------------------
# ``pggit_workload workers=N`` runs N tracked-DDL workers at once, each with its own
# connection and its own token space (``<run_id>_w<k>_<seq>``).  The merge judges every
# worker on its own tokens and the run as a whole: a history row whose token no worker
# issued is unexpected in the total (and in the worker whose token space it is in).

def worker_prefix(run_id, worker):
    """The token prefix of one worker of a multi-worker run."""
    return '%s_w%d_' % (run_id, worker)


def merge_workers(ops_by_worker, history_counts, catalog=None, expect_tracked=True, prefixes=None):
    """Exactly-once over several workers: (total verdict, [{'worker': k, 'check': verdict}, ...]). Pure.

    ``ops_by_worker``: one list of ops per worker (as :func:`check` takes them).
    ``prefixes``: the token prefix of each worker, so that a history row no
    worker issued is charged to the worker whose token space holds it; without
    them such rows count in the total only.  The total is :func:`check` over
    every op at once, so lost, duplicated, unexpected, phantom, unknown and
    maybe (with how the catalog resolved them) add up over the workers, and a
    token two workers both issued would show as duplicated there."""
    history_counts = dict(history_counts or {})
    everyone = [op for ops in ops_by_worker for op in ops]
    total = check(everyone, history_counts, catalog, expect_tracked)
    workers = []
    for index, ops in enumerate(ops_by_worker):
        mine = set(op['token'] for op in ops)
        prefix = prefixes[index] if prefixes else None
        counts = dict((token, n) for token, n in history_counts.items()
                      if token in mine or (prefix and token.startswith(prefix)))
        workers.append({'worker': index, 'check': check(ops, counts, catalog, expect_tracked)})
    total['workers'] = len(ops_by_worker)
    return total, workers
