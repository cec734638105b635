#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_warm
short_description: Build the payloads of the modules a run's roles use, in the background, before their first use
version_added: 0.1.0
description:
  - ansible-core builds a module's payload (AnsiballZ) the first time a run uses that module and keeps it for the
    rest of the run. The collection's fault modules carry the whole fault engine, so that first build costs 0.3 to
    0.6 s per module, 3 to 4 s over a suite of five experiments.
  - This starts one detached process on the controller that builds, one after the other and at a low priority, the
    payloads of the collection's modules named by the task files of O(roles) (and of the experiment lifecycle role),
    in a directory of its own, and links each finished one into the run's own cache, while the run goes on. A worker
    that needs a payload finds it ready, or builds it itself as without this task. The run's cache is never written in
    place, so a worker building the same payload at the same time is never disturbed.
  - It contacts no host and writes only into the run's local temporary directory, which ansible-core removes at the
    end of the run. The process stops when the run's main process is gone, when that directory is gone, or after
    O(timeout) seconds.
  - A payload it cannot build is built by the worker at its first use, as without this task. The task never fails
    the run for that.
  - This module runs on the controller through its action plugin.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Changes nothing on any host, so it runs in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: all
options:
  roles:
    description:
      - Roles of this collection whose task files name the modules to build, such as V(pggit.chaos.pggit_chaos_latency).
        Other names are ignored.
    type: list
    elements: str
    required: true
  timeout:
    description:
      - Seconds after which the background process stops, from 1 to 3600.
    type: int
    default: 120
'''

EXAMPLES = r'''
- name: Build the payloads of the experiments' modules in the background
  pggit.chaos.pggit_chaos_warm:
    roles: [pggit.chaos.pggit_chaos_latency, pggit.chaos.pggit_chaos_trigger]
  run_once: true
'''

RETURN = r'''
modules:
  description: The modules whose payloads are being built, in that order.
  returned: always
  type: list
  elements: str
pid:
  description: The background process, or null when there is nothing to build or it could not start.
  returned: always
  type: int
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pggit.chaos.plugins.module_utils._warm_spec import warm_argument_spec


def main():
    module = AnsibleModule(argument_spec=warm_argument_spec(), supports_check_mode=True)
    module.fail_json(msg='pggit_chaos_warm must run via its action plugin; call it as pggit.chaos.pggit_chaos_warm from a playbook')


if __name__ == '__main__':
    main()
