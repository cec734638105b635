# Copyright: pggit.chaos contributors
# MIT License
"""The engine's public API: the fault lifecycle shared by every fault module.

Public (what a fault module builds on; the private ``_`` files it may also use
are helpers such as ``_pgconn``, ``_netcmd`` or ``_background``, never the lifecycle):

- :class:`Fault`: what one kind of fault does (validate, observe, plan, apply);
- :class:`ChaosModule`: runs a ``Fault`` through its lifecycle;
- :func:`fault_argument_spec`, :func:`state_dir_argument_spec`: the shared options;
- :data:`FAULT_KINDS`: every kind of fault there is;
- :class:`ChaosError` and its subclasses :class:`LedgerError`, :class:`UndoError`, :class:`DaemonError`.

Everything in files whose names start with ``_`` is private to the engine.

A fault module describes its fault with a small :class:`Fault` subclass
(observe, plan, apply).  :class:`ChaosModule` owns the rest, in this order:

1. validate the common options (``name``, ``state``, ``ttl``, ``state_dir``);
2. ``state: present``: a record found for this fault has its reaper checked
   (re-armed when dead, reverted at once when expired); an active record whose
   fault is in place, asked with the options it was injected with (its
   ``identity()``), reports ``changed=false`` (faults never stack, unless a
   reaper was re-armed); asked with other options, it is reverted and replaced
   (``replaced`` names them); otherwise write the record with its undo recipe, arm
   the target-side reaper and the boot hook, apply (bounded by the TTL), mark
   active; if applying fails, revert at once through the shared engine;
3. ``state: absent``: revert through the shared engine (``_undo.revert_one``).

Check mode plans and reports without writing or applying anything.
"""
from __future__ import annotations

import json
import os
import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _ledger, _pgconn, _reaper, _steps, _undo
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, DaemonError, LedgerError, UndoError
from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, fail_sql, postgres_argument_spec

__all__ = ['FAULT_KINDS', 'ChaosError', 'ChaosModule', 'DaemonError', 'Fault', 'LedgerError', 'UndoError', 'fault_argument_spec',
           'state_dir_argument_spec']

TTL_MIN = 5
# apply() must end this long before the fault's TTL (its SQL is bounded by it).
APPLY_MARGIN = 1.0
TTL_MAX = 86400
DEFAULT_STATE_DIR = '/var/lib/pggit-chaos'


def fault_argument_spec():
    return dict(
        name=dict(type='str', required=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        ttl=dict(type='int', default=300),
        experiment=dict(type='str'),
        state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
    )


def state_dir_argument_spec():
    return dict(state_dir=dict(type='path', default=DEFAULT_STATE_DIR))


class Fault(object):
    """One kind of fault. Subclasses set ``kind`` and implement the hooks."""

    kind = None
    # Options that may change while the same fault stays in place (how long to wait, a safety gate): left out of
    # identity(). None: this fault is never compared with the options it was injected with (in_place() alone decides).
    volatile_options = ()

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.ledger = None
        self.record = None
        self.deadline = None

    def validate(self):
        """Fail early on bad options (called before anything is touched)."""

    def observe(self):
        """Return the current state of what this fault changes (for diff)."""
        return {}

    def plan(self, current):
        """Return (undo_steps, detail, expected_after_state)."""
        raise NotImplementedError

    def in_place(self, record, current):
        """True when the recorded fault is still in effect."""
        return True

    def identity(self):
        """The options that define this fault, as the record keeps them: a fault in place whose recorded options differ
        is replaced (reverted, then injected with these), never reported as in place. Connection, lifecycle
        (``ttl``, ``experiment``...), ``no_log`` and volatile options are left out; None when not compared."""
        if self.volatile_options is None:
            return None
        spec = self.module.argument_spec
        skip = set(fault_argument_spec()) | set(postgres_argument_spec()) | set(self.volatile_options)
        return dict((key, json.loads(json.dumps(self.params.get(key)))) for key in sorted(spec)
                    if key not in skip and not spec[key].get('no_log'))

    def apply(self, detail):
        """Apply the fault. Return extra result keys."""
        raise NotImplementedError

    def secret(self):
        """Data the revert needs but must not be shown (e.g. a password)."""
        return {}

    def finish(self, result):
        """Called last, in every state, once the lifecycle is done: may add to (or wait for) the result."""

    def noop_reason(self, current):
        """Return a message when there is nothing to inject, else None."""
        return None

    def attach(self, ledger, record, deadline):
        """Called before apply(): lets apply() add undo steps and see how long it may take."""
        self.ledger = ledger
        self.record = record
        self.deadline = deadline

    def remaining_ms(self):
        """Milliseconds apply() may still take before the fault's TTL; at least 1."""
        return max(1, int((self.deadline - time.time()) * 1000)) if self.deadline else 1

    def bound_sql(self, cursor):
        """Bound the statements of the current transaction by what is left of the TTL.

        An apply that waits on a lock (ALTER EVENT TRIGGER behind a long
        transaction) must give up before its fault would expire."""
        budget = self.remaining_ms()
        cursor.execute('SET LOCAL lock_timeout = %s', (budget,))
        cursor.execute('SET LOCAL statement_timeout = %s', (budget,))
        return budget

    def add_undo_last(self, step):
        """Record the undo of something apply() just started that must stop before the rest is undone
        (a workload that would go on writing): it goes last in the list, so it is undone first."""
        self._add_undo(step, len(self.record['undo']))

    def add_undo_first(self, step):
        """Record the undo of something apply() just started (a daemon), before going on.

        It goes first in the list, so it is undone last.  The record on disk is
        the truth (the reaper may have touched it meanwhile): the step is added
        there."""
        self._add_undo(step, 0)

    def _add_undo(self, step, index):
        with self.ledger.lock():
            current = self.ledger.read(self.record['id']) or self.record
            current['undo'].insert(index if index == 0 else len(current['undo']), step)
            self.ledger.write(current)
            self.record['undo'] = current['undo']


def option_changes(recorded, asked):
    """{option: {before, after}} of the options that differ; {} when either side is None (a record from before
    options were kept, or a fault that is not compared)."""
    if recorded is None or asked is None:
        return {}
    return dict((key, {'before': recorded.get(key), 'after': asked.get(key)})
                for key in sorted(set(recorded) | set(asked)) if recorded.get(key) != asked.get(key))


_SQL_ERRORS = (_pgconn.SQLError,) + ((_pgconn.psycopg2.Error,) if _pgconn.HAS_PSYCOPG2 else ())


def _me():
    return {'pid': os.getpid(), 'starttime': _steps.proc_starttime(os.getpid())}


class ChaosModule(object):
    def __init__(self, argument_spec=None, **kwargs):
        spec = fault_argument_spec()
        spec.update(argument_spec or {})
        kwargs.setdefault('supports_check_mode', True)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params

    def fail(self, msg, **kwargs):
        kwargs.setdefault('changed', False)
        self.module.fail_json(msg=msg, **kwargs)

    def _check_options(self):
        """Options every fault shares; a bad one fails before anything is touched, naming it."""
        fail_on_ranges(self.module, (('ttl', TTL_MIN, TTL_MAX, ' seconds'),))
        msg = _ledger.check_name(self.params['name'])
        if msg:
            self.fail(msg)
        if 'login_host' in self.module.argument_spec:
            check_postgres_params(self.module)

    def _open_ledger(self):
        """The ledger, created and checked (in check mode only checked: nothing is written)."""
        try:
            ledger = _ledger.Ledger(self.params['state_dir'])
            if ledger.exists() or not self.module.check_mode:
                ledger.ensure()
            else:
                _ledger.check_parents(ledger.state_dir)
            return ledger
        except LedgerError as exc:
            self.fail(str(exc) if str(exc).startswith('state_dir') else 'state_dir: %s' % exc)
        except OSError as exc:
            self.fail('state_dir: %s: %s' % (self.params['state_dir'], exc))
        return None

    def run(self, fault_cls):
        self._check_options()
        fault = fault_cls(self.module)
        if self.params['state'] != 'absent':
            fault.validate()  # bad input leaves nothing behind: not even a state dir
        ledger = self._open_ledger()
        fid = _ledger.fault_id(fault.kind, self.params['name'])
        result = dict(changed=False, fault_id=fid, kind=fault.kind, state=self.params['state'])
        self._tend_others(ledger, fid, result)
        try:
            if self.params['state'] == 'absent':
                self._absent(ledger, fid, result)
            else:
                self._present(ledger, fid, fault, result)
            fault.finish(result)
        except (ChaosError, OSError) as exc:
            result.pop('msg', None)
            self.fail('%s %s failed: %s' % (fault.kind, fid, exc), exception=traceback.format_exc(), **result)
        except _SQL_ERRORS as exc:  # one place where a database error in any hook becomes a clean failure
            result.pop('msg', None)
            fail_sql(self.module, exc, what='%s %s' % (fault.kind, fid), **result)
        self.module.exit_json(**result)

    def _runner(self, argv):
        return self.module.run_command(argv)

    # -- a record that is already there ----------------------------------------------
    def _tend(self, ledger, fid, record, result):
        """Any call that finds a record checks its reaper: re-arm a dead one, or revert at once when expired.

        Returns the record that still stands, or None when it was reverted."""
        if record.get('corrupt') or _reaper.alive(record) or _undo.applier_alive(record):
            return record
        if time.time() >= float(record.get('expires_at') or 0):
            if self.module.check_mode:
                result['expired_record'] = 'would revert %s: it expired and its reaper is gone' % fid
                return None
            outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason='expired-reaper-gone')
            result['expired_record'] = outcome
            if outcome['result'] not in ('reverted', 'absent'):
                self._rearm(ledger, fid, result)
                self.fail('%s expired and its reaper was gone; reverting it failed: %s. It stays in %s with a new '
                          'reaper that keeps retrying' % (fid, outcome.get('error'), ledger.faults_dir), **result)
            return None
        if self.module.check_mode:
            result['rearmed'] = 'would re-arm the reaper of %s: it is gone' % fid
            return record
        return self._rearm(ledger, fid, result)

    def _tend_others(self, ledger, fid, result):
        """Every call looks after the whole ledger, not only its own fault.

        A module killed between writing a record and arming its reaper, or a
        reaper killed by the OOM killer, leaves a record nobody watches; the
        next call of any fault on the host re-arms it, or reverts it when it
        has expired."""
        if self.module.check_mode or not ledger.exists():
            return
        for record in ledger.list():
            other = record.get('id')
            if other == fid or record.get('corrupt') or _reaper.alive(record) or _undo.applier_alive(record):
                continue
            if record.get('status') == 'pending' and not (record.get('applier') or {}).get('pid'):
                continue
            try:
                if time.time() >= float(record.get('expires_at') or 0):
                    outcome = _undo.revert_one(ledger, other, runner=self._runner, reason='expired-reaper-gone')
                    result.setdefault('tended', []).append({'id': other, 'reverted': outcome['result']})
                else:
                    started = _reaper.arm(ledger, other)
                    with ledger.lock():
                        current = ledger.read(other)
                        if current is not None:
                            current['reaper'] = started
                            ledger.write(current)
                    result.setdefault('tended', []).append({'id': other, 'rearmed': started['pid']})
            except (ChaosError, OSError) as exc:
                self.module.warn('could not tend fault %s, whose reaper is gone: %s' % (other, exc))

    def _rearm(self, ledger, fid, result):
        started = _reaper.arm(ledger, fid)
        with ledger.lock():
            record = ledger.read(fid)
            if record is None:  # reverted meanwhile: the new reaper exits by itself
                return None
            record['reaper'] = started
            ledger.write(record)
        result.update(rearmed=started, changed=True)
        self.module.warn('the reaper of %s was gone (killed, or the host rebooted); a new one was armed' % fid)
        return record

    # -- state: absent ---------------------------------------------------------------
    def _absent(self, ledger, fid, result):
        record = ledger.read(fid) if ledger.exists() else None
        if record is None:
            result['msg'] = 'fault %s is not in place' % fid
            return
        result['changed'] = True
        result['record'] = _ledger.summarize(record)
        if self.module.check_mode:
            result['msg'] = 'would revert %s' % fid
            return
        outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason='state=absent')
        result['revert'] = outcome
        if outcome['result'] == 'failed':
            result['changed'] = bool(outcome.get('changed'))
            stays = ledger.read(fid)
            if stays is not None and not _reaper.alive(stays):
                self._rearm(ledger, fid, result)
            self.fail('reverting %s failed: %s; the record stays in %s and its reaper keeps retrying'
                      % (fid, outcome.get('error'), ledger.faults_dir), **result)

    # -- state: present --------------------------------------------------------------
    def _present(self, ledger, fid, fault, result):
        record = ledger.read(fid) if ledger.exists() else None
        if record is not None:
            record = self._tend(ledger, fid, record, result)
        current = fault.observe()
        why = 'stale-record'
        if record is not None and record.get('status') == 'active' and fault.in_place(record, current):
            changes = option_changes(record.get('options'), fault.identity())
            if not changes:
                result.update(record=_ledger.summarize(record), msg='fault %s is already in place' % fid, current=current)
                return
            # The same fault with other options: the one in place is reverted and the asked one injected.
            result['replaced'] = changes
            why = 'options-changed'
            if self.module.check_mode:
                result.update(changed=True, current=current, record=_ledger.summarize(record),
                              msg='would replace %s (in place with other options: %s)' % (fid, ', '.join(sorted(changes))))
                return
        if record is not None and not self.module.check_mode:
            # Stale, half-applied or asked with other options: clean it first, and plan from what is there after.
            outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason=why)
            if outcome['result'] not in ('reverted', 'absent'):
                self.fail('%s: the earlier record of this fault could not be reverted, so it is not injected again '
                          '(its undo would be lost): %s. Revert it first (pggit_chaos_revert); its reaper keeps retrying'
                          % (fid, outcome.get('error')), stale=outcome, **result)
            result['stale_reverted'] = outcome
            record = None
            current = fault.observe()
        reason = fault.noop_reason(current)
        if reason and record is None:
            if why == 'options-changed':  # the fault that was in place is gone, and nothing takes its place: say so
                reason = 'reverted %s (in place with other options: %s), and the asked one is not injected: %s' % (
                    fid, ', '.join(sorted(result['replaced'])), reason)
            result.update(msg=reason, current=current, changed=bool((result.get('stale_reverted') or {}).get('changed')))
            return
        undo, detail, after = fault.plan(current)
        result.update(changed=True, current=current, planned=detail)
        if self.module._diff:
            result['diff'] = dict(before=current, after=after)
        if self.module.check_mode:
            result['msg'] = 'would inject %s for %ss' % (fid, self.params['ttl'])
            return
        self._inject(ledger, fid, fault, undo, detail, result)

    def _inject(self, ledger, fid, fault, undo, detail, result):
        with ledger.lock():
            record = ledger.new_record(fault.kind, self.params['name'], self.params['ttl'], undo,
                                       experiment=self.params.get('experiment'), detail=detail)
            record['applier'] = _me()
            identity = fault.identity()
            if identity is not None:
                record['options'] = identity
            secret = fault.secret()
            if secret:
                ledger.write_secret(fid, secret)
            ledger.write(record)
        started = time.time()
        try:
            reaper = _reaper.arm(ledger, fid)
            hook = _boot.install(ledger.state_dir)
            with ledger.lock():
                record = ledger.read(fid) or record
                record.update(reaper=reaper, boot_hook=hook)
                ledger.write(record)
            result['boot_hook'] = hook
            if hook['kind'] == 'none':
                self.module.warn('%s: %s' % (fid, hook['why']))
            fault.attach(ledger, record, record['expires_at'] - APPLY_MARGIN)
            result.update(fault.apply(detail) or {})
        except Exception as exc:  # pylint: disable=broad-except
            outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason='inject-failed')
            self.fail('injecting %s failed: %s; rolled back: %s%s' % (
                fid, exc, outcome['result'], '' if outcome['result'] == 'reverted' else ' (%s)' % outcome.get('error')),
                exception=traceback.format_exc(), rollback=outcome, changed=outcome['result'] != 'reverted')
        record = self._settle(ledger, fid, fault, started, result)
        result.update(record=_ledger.summarize(record), inject_seconds=round(time.time() - started, 4),
                      msg='injected %s; it reverts by itself at %s' % (fid, time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record['expires_at']))))

    def _settle(self, ledger, fid, fault, started, result):
        """Mark the record active, unless the TTL ran out while apply() was running.

        Then the reaper has already run the undo once and left the record
        ``expired`` (or someone removed it): what apply() did after that is
        live with no reaper to undo it, so it is reverted again, here, now."""
        with ledger.lock():
            record = ledger.read(fid)
            if record is not None and record.get('status') == 'pending':
                record.update(status='active', applied_at=time.time(), applier=None)
                ledger.write(record)
        if record is not None and record.get('status') == 'active':
            if not _reaper.alive(record):  # it died after it started (before its first look): one more
                record = self._rearm(ledger, fid, result) or record
            return record
        with ledger.lock():
            record = ledger.read(fid)
            if record is None:
                record = fault.record  # put the undo back, so the revert below can run it
                ledger.write(record)
        outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason='apply-outlasted-ttl')
        self.fail('injecting %s took %.1f s, longer than its ttl of %s s: the fault expired while it was being applied, '
                  'so it was reverted again once the apply ended (%s%s). Raise ttl, or find what slowed the apply down'
                  % (fid, time.time() - started, self.params['ttl'], outcome['result'],
                     '' if outcome['result'] == 'reverted' else ': %s' % outcome.get('error')),
                  revert=outcome, changed=outcome['result'] != 'reverted', **dict((k, v) for k, v in result.items() if k != 'changed'))
        return None
