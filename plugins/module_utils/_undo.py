# Copyright: pggit.chaos contributors
# MIT License
"""The one revert implementation.

Every way of undoing a fault goes through :func:`revert_one`: ``state: absent``
of a fault module, ``pggit_chaos_revert``, ``playbooks/revert.yml`` and the
detached reaper that fires at ``expires_at``.  Undo recipes are data (a list of
steps) written to the ledger before the fault is applied; each step is
idempotent, so undoing what is already gone is a success.
"""
from __future__ import annotations

import os
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError, UndoError
from ansible_collections.pggit.chaos.plugins.module_utils._steps import default_runner, run_steps, stop_process



def _stop_reaper(record):
    reaper = record.get('reaper') or {}
    pid = reaper.get('pid')
    if pid and int(pid) != os.getpid():
        try:
            stop_process(pid, reaper.get('starttime'), 'pggit-chaos-reaper', grace=1.0)
        except UndoError:
            pass


def revert_one(ledger, fid, runner=None, reason='requested'):
    """Revert one fault by id. Idempotent: a missing record is 'absent'."""
    ctx = {'runner': runner or default_runner}
    with ledger.lock():
        record = ledger.read(fid)
        if record is None:
            return {'id': fid, 'result': 'absent', 'changed': False}
        if record.get('corrupt'):
            return {'id': fid, 'result': 'failed', 'changed': False,
                    'error': 'ledger record is unreadable (%s); inspect %s by hand' % (record.get('error'), ledger.faults_dir)}
        ctx['secret'] = ledger.read_secret(fid)
        started = time.time()
        try:
            changed = run_steps(record.get('undo'), ctx)
        except Exception as exc:  # pylint: disable=broad-except
            record['last_error'] = '%s: %s' % (exc.__class__.__name__, _pgconn.one_line(exc))
            record['revert_attempts'] = record.get('revert_attempts', 0) + 1
            ledger.write(record)
            return {'id': fid, 'result': 'failed', 'changed': False, 'error': record['last_error'], 'kind': record.get('kind')}
        ledger.delete(fid)
    _stop_reaper(record)
    return {'id': fid, 'result': 'reverted', 'changed': True, 'undo_changed': changed, 'kind': record.get('kind'),
            'name': record.get('name'), 'experiment': record.get('experiment'), 'reason': reason,
            'revert_seconds': round(time.time() - started, 4), 'expired': time.time() >= record.get('expires_at', 0)}


def select(records, ids=None, experiment=None, kinds=None):
    chosen = []
    for record in records:
        if ids and record.get('id') not in ids and record.get('name') not in ids:
            continue
        if experiment and record.get('experiment') != experiment:
            continue
        if kinds and record.get('kind') not in kinds:
            continue
        chosen.append(record)
    return chosen


def revert_many(ledger, ids=None, experiment=None, kinds=None, runner=None, reason='requested'):
    """Revert every selected fault; newest first so stacked faults unwind."""
    records = select(ledger.list(), ids, experiment, kinds)
    records.sort(key=lambda r: r.get('created_at') or 0, reverse=True)
    results = [revert_one(ledger, r['id'], runner, reason) for r in records]
    for wanted in ids or []:
        if not any(wanted in (r.get('id'), r.get('name')) for r in records):
            results.append({'id': wanted, 'result': 'absent', 'changed': False})
    return results


def ensure_ledger_usable(ledger):
    try:
        ledger.ensure()
    except (OSError, LedgerError) as exc:
        raise UndoError('cannot use state dir %s: %s' % (ledger.state_dir, exc))
    return ledger
