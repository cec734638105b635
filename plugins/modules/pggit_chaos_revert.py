#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_revert
short_description: Revert chaos faults recorded in a host's ledger
version_added: 0.1.0
description:
  - Reverts every fault recorded in the target's ledger, or a selection by id,
    name, experiment or kind, through the same revert engine that
    C(state=absent) of each fault module and the target-side reaper use.
  - Reverting is idempotent; a fault that is already gone is reported as
    V(absent), not as an error.
  - Does not need C(pggit_chaos_allowed); reverting is always allowed.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  faults:
    description:
      - Fault ids (V(trigger--tracking-off)) or names (V(tracking-off)) to
        revert. Empty means every fault that matches the other filters.
    type: list
    elements: str
    default: []
  experiment:
    description:
      - Only revert faults recorded with this experiment id.
    type: str
  kinds:
    description:
      - Only revert faults of these kinds, for example V(trigger). Empty means
        every kind.
    type: list
    elements: str
    choices: [trigger, latency, partition, bandwidth, connections, workload, disk, stress, process, lock, corrupt, clock, setting, failover, host,
              sessions, load]
    default: []
  state_dir:
    description:
      - Directory on the target that holds the fault ledger.
      - Set from the host variable C(pggit_chaos_state_dir) when omitted and
        the variable is defined.
    type: path
    default: /var/lib/pggit-chaos
  fail_on_error:
    description:
      - Fail the task when any selected fault could not be reverted. The
        record then stays in the ledger and its reaper keeps retrying.
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Red button, revert every fault on the host
  pggit.chaos.pggit_chaos_revert:

- name: Revert what one experiment injected
  pggit.chaos.pggit_chaos_revert:
    experiment: "{{ pggit_experiment_id }}"
'''

RETURN = r'''
reverted:
  description: Faults that were reverted by this run, with timings.
  returned: always
  type: list
  elements: dict
failures:
  description: Faults whose revert failed, with the error.
  returned: always
  type: list
  elements: dict
absent:
  description: Requested faults that were not in the ledger.
  returned: always
  type: list
  elements: str
remaining:
  description: Ids of faults still in the ledger after this run.
  returned: always
  type: list
  elements: str
revert_seconds:
  description: Wall time of the revert.
  returned: always
  type: float
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _undo
from ansible_collections.pggit.chaos.plugins.module_utils._errors import LedgerError
from ansible_collections.pggit.chaos.plugins.module_utils._kinds import FAULT_KINDS
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import state_dir_argument_spec


def revert(module, result):
    """Revert what the options select, filling ``result``; a bad state dir raises LedgerError or OSError."""
    params = module.params
    ledger = _ledger.Ledger(params['state_dir'])
    if not ledger.exists():
        result['absent'] = list(params['faults'])
        return
    ledger.ensure()  # checks owner and modes before any record is read or any step run
    if module.check_mode:
        chosen = _undo.select(ledger.list(), params['faults'], params['experiment'], params['kinds'])
        result['reverted'] = [{'id': r['id'], 'result': 'would revert'} for r in chosen]
        result['changed'] = bool(chosen)
    else:
        outcomes = _undo.revert_many(ledger, params['faults'], params['experiment'], params['kinds'],
                                     runner=module.run_command, reason='pggit_chaos_revert')
        for outcome in outcomes:
            key = {'reverted': 'reverted', 'failed': 'failures'}.get(outcome['result'])
            if key:
                result[key].append(outcome)
            else:
                result['absent'].append(outcome['id'])
        result['changed'] = bool(result['reverted'])
    result['remaining'] = [r['id'] for r in ledger.list()]


def main():
    argument_spec = state_dir_argument_spec()
    argument_spec.update(
        faults=dict(type='list', elements='str', default=[]),
        experiment=dict(type='str'),
        kinds=dict(type='list', elements='str', default=[], choices=list(FAULT_KINDS)),
        fail_on_error=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    started = time.time()
    result = dict(changed=False, reverted=[], failures=[], absent=[], remaining=[])
    try:
        revert(module, result)
    except (LedgerError, OSError) as exc:
        # A state dir we may not trust (or cannot read) fails before anything is run, naming the option.
        text = str(exc)
        result['changed'] = False
        module.fail_json(msg=text if text.startswith('state_dir') else 'state_dir %s: %s' % (params['state_dir'], text),
                         **result)
    result['revert_seconds'] = round(time.time() - started, 4)
    if result['failures'] and params['fail_on_error']:
        module.fail_json(msg='could not revert: %s' % '; '.join('%s (%s)' % (f['id'], f.get('error')) for f in result['failures']),
                         **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
