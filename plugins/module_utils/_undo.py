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

from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _pgconn, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError, UndoError
from ansible_collections.pggit.chaos.plugins.module_utils._steps import default_runner, run_steps, same_process, stop_process


def _stop_reaper(record):
    reaper = record.get('reaper') or {}
    pid = reaper.get('pid')
    if pid and int(pid) != os.getpid():
        try:
            stop_process(pid, reaper.get('starttime'), 'pggit-chaos-reaper', grace=1.0)
        except UndoError:
            pass


def applier_alive(record):
    """True while another process is still applying this (pending) fault."""
    applier = record.get('applier') or {}
    pid = applier.get('pid')
    return (record.get('status') in ('pending', 'expired') and bool(pid) and int(pid) != os.getpid()
            and same_process(pid, applier.get('starttime')))


def _refusal(ledger, fid, record):
    """Why a record must not be run (unreadable, or holding steps our faults never write), or None."""
    path = os.path.join(ledger.faults_dir, fid + '.json')
    if record.get('corrupt'):
        return 'ledger record %s is unreadable (%s); inspect it by hand' % (path, record.get('error'))
    try:
        _steps.check_steps(record.get('undo'), ledger.state_dir)
    except UndoError as exc:
        return 'refusing ledger record %s: %s; nothing was run. Inspect the file and remove it by hand' % (path, exc)
    return None


def revert_one(ledger, fid, runner=None, reason='requested'):
    """Revert one fault by id. Idempotent: a missing record is 'absent'.

    While another process is still applying the fault (its record is
    ``pending`` and its applier alive), the undo runs at once but the record
    stays, marked ``expired``: the apply may still land after this revert, so
    the applier reverts again when it ends, and the reaper retries until the
    applier is gone.  Such a result is ``failed`` with ``deferred: true``.
    """
    ctx = {'runner': runner or default_runner, 'state_dir': ledger.state_dir}
    with ledger.lock():
        record = ledger.read(fid)
        if record is None:
            return {'id': fid, 'result': 'absent', 'changed': False}
        if not record.get('corrupt'):
            record['undo'] = _steps.upgrade_steps(record.get('undo'))  # a record of release 0.1.0
        refusal = _refusal(ledger, fid, record)
        if refusal:
            return {'id': fid, 'result': 'failed', 'changed': False, 'error': refusal, 'kind': record.get('kind')}
        ctx['secret'] = ledger.read_secret(fid)
        started = time.time()
        try:
            changed = run_steps(record.get('undo'), ctx)
        except Exception as exc:  # pylint: disable=broad-except
            record['last_error'] = '%s: %s' % (exc.__class__.__name__, _pgconn.one_line(exc))
            record['revert_attempts'] = record.get('revert_attempts', 0) + 1
            ledger.write(record)
            return {'id': fid, 'result': 'failed', 'changed': False, 'error': record['last_error'], 'kind': record.get('kind')}
        if applier_alive(record):
            record['status'] = 'expired'
            record['last_error'] = ('undone while pid %s was still applying it; the record stays until that apply ends'
                                    % record['applier']['pid'])
            ledger.write(record)
            return {'id': fid, 'result': 'failed', 'deferred': True, 'changed': changed, 'error': record['last_error'],
                    'kind': record.get('kind')}
        ledger.delete(fid)
        _boot.remove_if_idle(ledger)
    _stop_reaper(record)
    outcome = {'id': fid, 'result': 'reverted', 'changed': True, 'undo_changed': changed, 'kind': record.get('kind'),
               'name': record.get('name'), 'experiment': record.get('experiment'), 'reason': reason,
               'revert_seconds': round(time.time() - started, 4), 'expired': time.time() >= record.get('expires_at', 0)}
    if ctx.get('notes'):  # what a step chose not to do (a managed server, a setting changed since), said once
        outcome['notes'] = list(ctx['notes'])
    return outcome


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
