# Copyright: pggit.chaos contributors
# MIT License
"""The engine's public API: the fault lifecycle shared by every fault module.

Public (fault modules import these, and only these, from the engine):

- :class:`Fault`: what one kind of fault does (validate, observe, plan, apply);
- :class:`ChaosModule`: runs a ``Fault`` through its lifecycle;
- :func:`fault_argument_spec`, :func:`state_dir_argument_spec`: the shared options;
- :class:`ChaosError` and its subclasses :class:`LedgerError`, :class:`UndoError`, :class:`DaemonError`.

Everything in files whose names start with ``_`` is private to the engine.

A fault module describes its fault with a small :class:`Fault` subclass
(observe, plan, apply).  :class:`ChaosModule` owns the rest, in this order:

1. validate the common options (``name``, ``state``, ``ttl``, ``state_dir``);
2. ``state: present``: if the ledger already holds an active record for this
   fault, report ``changed=false`` (faults never stack); otherwise write the
   record with its undo recipe, arm the target-side reaper, apply, mark active;
   if applying fails, revert at once through the shared engine;
3. ``state: absent``: revert through the shared engine (``_undo.revert_one``).

Check mode plans and reports without writing or applying anything.
"""
from __future__ import annotations

import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _reaper, _undo
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError, DaemonError, LedgerError, UndoError
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges

__all__ = ['ChaosError', 'ChaosModule', 'DaemonError', 'Fault', 'LedgerError', 'UndoError', 'fault_argument_spec',
           'state_dir_argument_spec']

TTL_MIN = 5
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

    def __init__(self, module):
        self.module = module
        self.params = module.params

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

    def apply(self, detail):
        """Apply the fault. Return extra result keys."""
        raise NotImplementedError

    def secret(self):
        """Data the revert needs but must not be shown (e.g. a password)."""
        return {}

    def noop_reason(self, current):
        """Return a message when there is nothing to inject, else None."""
        return None

    def attach(self, ledger, record):
        """Called before apply(): lets apply() add undo steps as it goes."""
        self.ledger = ledger
        self.record = record

    def add_undo_first(self, step):
        """Record the undo of something apply() just started (a daemon), before going on.

        It goes first in the list, so it is undone last."""
        with self.ledger.lock():
            self.record['undo'].insert(0, step)
            self.ledger.write(self.record)


class ChaosModule(object):
    def __init__(self, argument_spec=None, **kwargs):
        spec = fault_argument_spec()
        spec.update(argument_spec or {})
        kwargs.setdefault('supports_check_mode', True)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params

    def fail(self, msg, **kwargs):
        self.module.fail_json(msg=msg, **kwargs)

    def _check_common(self):
        fail_on_ranges(self.module, (('ttl', TTL_MIN, TTL_MAX, ' seconds'),))
        if not self.params['name'].strip():
            self.fail("name must not be empty, got '%s'" % self.params['name'])
        try:
            return _ledger.Ledger(self.params['state_dir'])
        except LedgerError as exc:
            self.fail('state_dir: %s' % exc)
        return None

    def run(self, fault_cls):
        ledger = self._check_common()
        fault = fault_cls(self.module)
        fid = _ledger.fault_id(fault.kind, self.params['name'])
        result = dict(changed=False, fault_id=fid, kind=fault.kind, state=self.params['state'])
        try:
            if self.params['state'] == 'absent':
                self._absent(ledger, fid, result)
            else:
                fault.validate()
                self._present(ledger, fid, fault, result)
        except (ChaosError, OSError) as exc:
            self.fail('%s %s failed: %s' % (fault.kind, fid, exc), exception=traceback.format_exc(), **result)
        self.module.exit_json(**result)

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
            self.fail('reverting %s failed: %s; the record stays in %s and its reaper keeps retrying'
                      % (fid, outcome.get('error'), ledger.faults_dir), **result)

    def _runner(self, argv):
        return self.module.run_command(argv)

    def _present(self, ledger, fid, fault, result):
        current = fault.observe()
        record = ledger.read(fid) if ledger.exists() else None
        if record is not None and record.get('status') == 'active' and fault.in_place(record, current):
            result.update(record=_ledger.summarize(record), msg='fault %s is already in place' % fid, current=current)
            return
        reason = fault.noop_reason(current)
        if reason and record is None:
            result.update(msg=reason, current=current)
            return
        undo, detail, after = fault.plan(current)
        result.update(changed=True, current=current, planned=detail)
        if self.module._diff:
            result['diff'] = dict(before=current, after=after)
        if self.module.check_mode:
            result['msg'] = 'would inject %s for %ss' % (fid, self.params['ttl'])
            return
        if record is not None:  # stale or half-applied: clean it first
            _undo.revert_one(ledger, fid, runner=self._runner, reason='stale-record')
        with ledger.lock():
            record = ledger.new_record(fault.kind, self.params['name'], self.params['ttl'], undo,
                                       experiment=self.params.get('experiment'), detail=detail)
            secret = fault.secret()
            if secret:
                ledger.write_secret(fid, secret)
            ledger.write(record)
        started = time.time()
        try:
            record['reaper'] = _reaper.arm(ledger, fid)
            with ledger.lock():
                ledger.write(record)
            fault.attach(ledger, record)
            result.update(fault.apply(detail) or {})
        except Exception as exc:  # pylint: disable=broad-except
            outcome = _undo.revert_one(ledger, fid, runner=self._runner, reason='inject-failed')
            self.fail('injecting %s failed: %s; rolled back: %s' % (fid, exc, outcome['result']),
                      exception=traceback.format_exc(), rollback=outcome)
        with ledger.lock():
            record['status'] = 'active'
            record['applied_at'] = time.time()
            ledger.write(record)
        result.update(record=_ledger.summarize(record), inject_seconds=round(time.time() - started, 4),
                      msg='injected %s; it reverts by itself at %s' % (fid, time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record['expires_at']))))
