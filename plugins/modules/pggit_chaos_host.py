#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_host
short_description: Lose a database host - freeze or kill its PostgreSQL and the HA manager that runs it
version_added: 0.3.0
description:
  - Makes the PostgreSQL host it runs on stop dead, like a hung VM (V(freeze)) or a power cut
    (V(kill)), and brings it back when the fault is reverted (O(state=absent),
    C(pggit_chaos_revert), the red button or the TTL reaper on the host itself).
  - The server is found from the server itself (C(data_directory), then the pid in
    C(postmaster.pid)), so the task must run on the database server's host, as root. Its
    manager is Patroni (or C(pg_autoctl), C(repmgrd), C(stolon-keeper), C(supervisord),
    C(runsv), C(s6-supervise)), found as the postmaster's parent or, since Patroni 4
    double-forks the postmaster, as the one such program in the postmaster's own freezer
    cgroup (a root cgroup is never searched).
  - V(freeze) freezes the freezer cgroups of the postmaster and of its manager (cgroup v1
    C(freezer.state) V(FROZEN), or v2 C(cgroup.freeze)). Every process in them stops at once,
    with its connections, locks and leader key held, until the thaw. The freeze is proven
    before the task returns (the freezer reads V(FROZEN), and on v1 every process is in the
    frozen state C(D)); otherwise it is thawed again and the task fails.
  - V(freeze) is refused, before anything is recorded, when a cgroup to freeze holds a process
    that is neither in the postmaster's process tree nor in its manager's (the message names its
    pid and command), when the server runs in a root cgroup (that would freeze the whole host),
    and when the cgroup holds this module or the TTL reaper, which must never sit inside what it
    froze. Run PostgreSQL and its manager in cgroups of their own (systemd units, or the lab's
    per-host cgroups) and the task over SSH.
  - V(kill) sends SIGKILL to the manager (first, so it cannot react) and to the postmaster and
    every child of it. The undo starts the manager again, the way it ran (its command line, as
    its user, in its cgroups and folder, with its environment, which is kept in the ledger's
    private side file, never in the record), or with C(systemctl start) when it is the main
    process of a systemd unit; the manager then starts PostgreSQL (or rebuilds it as a replica).
    A server without a manager is started again as C(pggit_chaos_process) does it.
  - The undo is written to the fault ledger on the host before the freeze or the kill, so a
    dead controller leaves a host that the TTL reaper thaws (or restarts) on its own.
  - To cut a host off from its peers instead, use M(pggit.chaos.pggit_chaos_partition) against
    every peer.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Finds the cgroups and processes and checks the refusals; freezes and kills nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  mode:
    description:
      - V(freeze) hangs the host (freezer cgroups); V(kill) crashes it (SIGKILL).
      - Required with O(state=present).
    type: str
    choices: [freeze, kill]
'''

EXAMPLES = r'''
- name: Hang the leader's host for the window (Patroni fails over to its sync standby)
  pggit.chaos.pggit_chaos_host:
    name: leader-lost
    mode: freeze
    ttl: 90
  become: true

- name: Bring it back (the TTL reaper would, too)
  pggit.chaos.pggit_chaos_host:
    name: leader-lost
    state: absent
  become: true

- name: Power-cut the host (Patroni and PostgreSQL are killed; the revert starts Patroni again)
  pggit.chaos.pggit_chaos_host:
    name: leader-cut
    mode: kill
    ttl: 90
  become: true
'''

RETURN = r'''
frozen:
  description: The freezer cgroups frozen (absolute folders).
  returned: with O(mode=freeze) when injected
  type: list
  elements: str
  sample: [/sys/fs/cgroup/freezer/pggit-lab-hla-lab-1]
killed:
  description: The pids killed.
  returned: with O(mode=kill) when injected
  type: list
  elements: int
members:
  description:
    - The processes frozen or killed (or that would be, in check mode), each with C(pid),
      C(starttime), C(cmd) and C(role) (V(manager), V(postmaster) or V(child)).
  returned: when the host was found
  type: list
  elements: dict
manager:
  description: The manager (C(pid), C(cmd)), or null when the server has none.
  returned: when the host was found
  type: dict
server:
  description: The server, as found before the fault (see M(pggit.chaos.pggit_chaos_process)).
  returned: when the host was found
  type: dict
fault_id:
  description: Ledger id of the fault, C(host--<name>).
  returned: always
  type: str
'''

import os
import pwd

from ansible_collections.pggit.chaos.plugins.module_utils import _hostloss, _ledger, _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec


class HostFault(Fault):
    kind = 'host'

    def __init__(self, module):
        super(HostFault, self).__init__(module)
        self.info = None
        self.manager = None
        self.manager_env = None

    def _standing(self):
        """This fault's own record when it is active and in place: the server is frozen or down, so it is not asked."""
        try:
            record = _ledger.Ledger(self.params['state_dir']).read(_ledger.fault_id(self.kind, self.params['name']))
        except (OSError, ValueError):
            return None
        if record and not record.get('corrupt') and record.get('status') == 'active' and self.in_place(record, {}):
            return record
        return None

    def observe(self):
        standing = self._standing()
        if standing is not None:
            detail = standing.get('detail') or {}
            return {'server': detail.get('server'), 'manager': detail.get('manager')}
        conn = connect_or_fail(self.module, application_name='pggit-chaos-host')
        try:
            self.info = _server.server_info(conn.cursor())
        finally:
            conn.close()
        pid = _hostloss.manager_pid(self.info['postmaster_pid'])
        self.manager = _hostloss.member(pid, 'manager') if pid else None
        return {'server': _server.summary(self.info), 'manager': self.manager}

    def in_place(self, record, current):
        detail = record.get('detail') or {}
        if detail.get('mode') == 'freeze':
            return any(_hostloss.freezer_state(detail['version'], p) == 'FROZEN' for p in detail.get('paths') or [])
        targets = [t for t in detail.get('members') or [] if t.get('role') in ('manager', 'postmaster')]
        return bool(targets) and not any(_steps.same_process(t['pid'], t['starttime']) for t in targets)

    def plan(self, current):
        mode = self.params['mode']
        postmaster = self.info['postmaster_pid']
        manager = self.manager['pid'] if self.manager else None
        detail = {'mode': mode, 'server': current['server'], 'manager': self.manager}
        if mode == 'freeze':
            found = _hostloss.freeze_plan(postmaster, manager, [os.getpid()])
            undo = [{'type': 'cgroup_thaw', 'paths': found['paths'], 'version': found['version']}]
            detail.update(found)
            after = dict(current, frozen=found['paths'])
        else:
            foreign = _hostloss.foreign_children(postmaster, manager)
            if foreign:
                others = '; '.join('pid %s (%s)' % (p, _steps.proc_cmdline(p)[:60]) for p in foreign[:5])
                raise ChaosError('the manager (pid %s, %s) also runs %s: killing it would orphan them, and its restart would '
                                 'start them twice; nothing is killed (use mode=freeze, or a manager of its own)'
                                 % (manager, self.manager['cmd'][:80], others))
            if manager:
                step, self.manager_env = _hostloss.manager_step(manager, self.info['data_directory'])
            else:
                step = _server.start_step(self.info)
            problem = _steps.STEP_CHECKS[step['type']](step, self.params['state_dir'])
            if problem:
                raise ChaosError('the host could not be started again after the kill, so it is not killed: %s' % problem)
            if step['type'] == 'manager_start' and step['method'] == 'exec':
                account = pwd.getpwnam(step['user'])
                problem = _hostloss.program_problem(step['argv'], account.pw_uid)
                if problem:
                    raise ChaosError('the manager could not be started again after the kill, so nothing is killed: %s' % problem)
            undo = [step]
            detail['members'] = _hostloss.kill_targets(postmaster, manager)
            after = dict(current, killed=[m['pid'] for m in detail['members']])
        return undo, detail, after

    def secret(self):
        return {'manager_env': self.manager_env} if self.manager_env else {}

    def apply(self, detail):
        if detail['mode'] == 'kill':
            return {'killed': _hostloss.kill(detail['members']), 'members': detail['members'], 'frozen': []}
        # The reaper now exists: it must not sit inside what is frozen (nor may this module); and nothing foreign came in.
        reaper = (self.record or {}).get('reaper') or {}
        postmaster = self.info['postmaster_pid']
        manager = self.manager['pid'] if self.manager else None
        again = _hostloss.freeze_plan(postmaster, manager, [os.getpid(), reaper.get('pid')])
        if again['paths'] != detail['paths']:
            raise ChaosError('the cgroups changed since they were recorded (%s, now %s): nothing was frozen'
                             % (detail['paths'], again['paths']))
        _hostloss.freeze(again['version'], again['paths'], again['members'])
        return {'frozen': again['paths'], 'members': again['members'], 'killed': []}

    def finish(self, result):
        if self.params['state'] != 'present':
            return
        current = result.get('current') or {}
        if current.get('server'):
            result.setdefault('server', current['server'])
            result.setdefault('manager', current.get('manager'))
        planned = result.get('planned')
        if not planned:
            return
        if self.module.check_mode:
            result['members'] = planned.get('members') or []
            what = 'freeze %s' % ', '.join(planned['paths']) if planned['mode'] == 'freeze' else 'kill %d process(es)' % len(result['members'])
            result['msg'] = 'would %s (%d process(es)); did nothing' % (what, len(result['members']))
            return
        if planned['mode'] == 'freeze':
            result['msg'] = 'froze %s: %d process(es) of %s; %s' % (
                ', '.join(result.get('frozen') or []), len(result.get('members') or []),
                'the server and its manager' if self.manager else 'the server', result.get('msg', ''))
        else:
            result['msg'] = 'killed %d process(es) (%s); the revert starts %s again; %s' % (
                len(result.get('killed') or []), ', '.join(str(p) for p in result.get('killed') or []),
                'the manager' if self.manager else 'the server', result.get('msg', ''))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(mode=dict(type='str', choices=['freeze', 'kill']))
    chaos = ChaosModule(argument_spec, required_if=[('state', 'present', ('mode',))])
    chaos.run(HostFault)


if __name__ == '__main__':
    main()
