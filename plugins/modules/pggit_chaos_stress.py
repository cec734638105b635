#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_stress
short_description: Put memory, CPU or IO pressure on PostgreSQL's host with stress-ng, inside PostgreSQL's cgroups
version_added: 0.2.0
description:
  - Runs C(stress-ng) on the database host for the fault's TTL, so that the
    server competes for memory, CPU or disk IO. With O(confine=postgres) (the
    default) C(stress-ng) runs inside the cgroups of the postmaster (cgroup v1
    and v2), found from the server itself (C(data_directory), then the pid in
    C(postmaster.pid), then C(/proc/<pid>/cgroup)). Memory pressure then
    presses on PostgreSQL's own memory limit, not on the whole machine.
  - O(resource=memory) runs one C(stress-ng --vm) worker that keeps O(memory_pct)
    percent of the cgroup's memory limit (or O(memory_mb)) mapped and dirty.
    O(resource=cpu) runs O(cpu_workers) C(--cpu) workers at O(cpu_load) percent.
    O(resource=io) runs O(io_workers) C(--hdd) workers that write and remove
    files of 128 MB each in a scratch folder inside O(state_dir), and nowhere
    else. So that the IO presses on PostgreSQL's own disk, O(resource=io)
    reads the server's data directory (whatever O(confine) is) and fails,
    before anything runs, when O(state_dir) is not on the filesystem of the
    data directory (the message names both filesystems), or when that
    filesystem has less free space than O(io_workers) times 128 MB plus 10
    percent.
  - Like every fault, the pressure is a detached program on the target,
    C(pggit-chaos-stress), recorded in the fault ledger before C(stress-ng)
    may run. C(stress-ng) runs in that program's process group, and the undo
    step kills every C(stress-ng) process of the group (SIGTERM, then
    SIGKILL), even when the program itself is gone. The revert
    (O(state=absent), C(pggit_chaos_revert), the red button) and the TTL
    reaper leave no C(stress-ng) process behind. C(stress-ng) also gets
    C(--timeout) set to what is left of the TTL, as a second bound.
  - The program samples the cgroup (memory usage, peak, OOM kills, CPU time)
    every quarter of a second. With O(watch_s) the module waits that long
    after the pressure is in place and returns the figures; the fault stays
    until its revert or its TTL.
  - A memory size over the cgroup's limit fails before anything runs, naming
    the option and the value. So does O(memory_pct) when the cgroup has no
    memory limit (give O(memory_mb) there).
  - It cannot work where C(stress-ng) is not installed (package C(stress-ng)),
    where the module does not run as root (joining another process's cgroups
    and lowering C(oom_score_adj) need it), or where the postmaster's cgroups
    are not visible (another pid or cgroup namespace, PostgreSQL on another
    host). Where no cgroup of the postmaster is found, O(confine=none) runs
    C(stress-ng) where the module runs, pressing on the whole host.
  - When systemd manages the server, O(confine=postgres) puts C(stress-ng) in
    the unit's cgroup, and systemd 243 and later stop the whole unit at the
    first OOM kill in it (C(OOMPolicy=stop), the default). The module then
    fails unless the unit's C(OOMPolicy) is C(continue); use O(confine=none),
    or set C(OOMPolicy=continue) in a drop-in of the unit. With
    O(confine=postgres) the undo also starts the server again when it is down
    after C(stress-ng) is gone (the OOM killer may have taken the postmaster).
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Finds the cgroups and their limit, and returns the stress-ng command line it would run; runs nothing.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  resource:
    description:
      - What to press on. V(memory) and V(cpu) press on the cgroup, V(io) on
        the disk of O(state_dir), which must be the filesystem of the data
        directory.
      - Required with O(state=present).
    type: str
    choices: [memory, cpu, io]
  memory_pct:
    description:
      - For O(resource=memory), the memory stress-ng keeps, in percent of the
        cgroup's memory limit, from 1 to 100. The cgroup's own usage (PostgreSQL)
        comes on top, so 90 pushes the cgroup to its limit.
      - Mutually exclusive with O(memory_mb); one of them is required with
        O(resource=memory).
    type: float
  memory_mb:
    description:
      - For O(resource=memory), the memory stress-ng keeps, in MB (MiB), at
        least 1 and at most the cgroup's memory limit (the host's memory when
        the cgroup has no limit).
    type: int
  cpu_workers:
    description:
      - For O(resource=cpu), the number of stress-ng CPU workers, from 1 to
        4096. Omitted, one per CPU of the host.
    type: int
  cpu_load:
    description:
      - For O(resource=cpu), the load of each CPU worker in percent, from 1 to 100.
    type: int
    default: 100
  io_workers:
    description:
      - For O(resource=io), the number of stress-ng C(--hdd) workers, from 1 to 64.
      - Each writes up to 128 MB; the filesystem of the data directory must
        have O(io_workers) times 128 MB plus 10 percent free.
    type: int
    default: 1
  confine:
    description:
      - V(postgres) runs stress-ng inside every cgroup of the postmaster of the
        server the connection options reach (it must run on this host); the
        task fails when none is found.
      - V(postgres) fails on a systemd unit whose C(OOMPolicy) is not
        C(continue) (see above).
      - V(none) runs it where the module runs, without connecting to
        PostgreSQL (except for O(resource=io), which reads the data
        directory); memory then presses on the whole host, and O(memory_pct) is
        taken of the limit of the module's own memory cgroup.
    type: str
    default: postgres
    choices: [postgres, none]
  oom_score_adj:
    description:
      - The C(oom_score_adj) of stress-ng and its workers, from -1000 to 1000
        (stress-ng's own adjustments are turned off with C(--no-oom-adjust)).
      - The default 1000 makes stress-ng the OOM killer's first choice. When
        the cgroup runs out of memory its worker is killed (and restarted by
        stress-ng, so the pressure goes on), and PostgreSQL is spared unless
        PostgreSQL itself is the one using most of the memory. A lower value
        lets the OOM killer choose a PostgreSQL process instead.
    type: int
    default: 1000
  watch_s:
    description:
      - Seconds to sample the cgroup after the pressure is in place, from 0 to
        less than O(ttl); the module then returns RV(figures). The fault stays
        in place after the watch.
    type: float
    default: 0
'''

EXAMPLES = r'''
- name: Take 90% of the memory of PostgreSQL's cgroup for two minutes
  pggit.chaos.pggit_chaos_stress:
    name: memory-pressure
    resource: memory
    memory_pct: 90
    ttl: 120
    watch_s: 10
    login_user: postgres
  register: pressure

- name: Load every core at 80%
  pggit.chaos.pggit_chaos_stress:
    name: cpu-pressure
    resource: cpu
    cpu_load: 80
    ttl: 60

- name: Stop the pressure (no stress-ng process is left)
  pggit.chaos.pggit_chaos_stress:
    name: memory-pressure
    state: absent
'''

RETURN = r'''
cgroup:
  description:
    - The cgroups stress-ng runs in (controller to folder), the memory limit
      of the memory cgroup (null when unlimited) and its usage before the fault.
  returned: with state=present
  type: dict
  sample: {paths: {memory: /sys/fs/cgroup/memory/lab/pg1, cpu: /sys/fs/cgroup/cpu/lab/pg1}, limit_bytes: 268435456,
           usage_bytes_before: 41234432}
stress:
  description:
    - Pid and command line of stress-ng (pid null in check mode), and the
      pid and start time of the C(pggit-chaos-stress) program leading its
      process group.
  returned: with state=present
  type: dict
  sample: {pid: 4242, argv: [/usr/bin/stress-ng, --vm, '1', --vm-bytes, 134217728b, --vm-keep, --timeout, 119s, --no-oom-adjust],
           program: {pid: 4240, starttime: 1234567}}
figures:
  description:
    - What the cgroup showed from the start of stress-ng to the end of the
      watch. C(peak_bytes) is the highest memory usage seen, C(oom_kills) the
      OOM kills in the cgroup since the start (null where the kernel does
      not count them), C(cpu_load_measured_pct) the CPU time the cgroup used
      in percent of O(cpu_workers) CPUs (of all CPUs of the host for the
      other resources) over that time, C(samples) the number of samples.
  returned: when the fault was injected (not in check mode)
  type: dict
  sample: {peak_bytes: 180355072, oom_kills: 0, cpu_load_measured_pct: 1.2, samples: 40}
server:
  description:
    - The server whose postmaster's cgroups were used, or whose data directory's disk takes the IO
      (data directory, postmaster pid, systemd unit or null).
  returned: with state=present and confine=postgres, or resource=io
  type: dict
fault_id:
  description: Ledger id of the fault, C(stress--<name>).
  returned: always
  type: str
'''

import os
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _cgroup, _fill, _pgconn, _server, _stress
from ansible_collections.pggit.chaos.plugins.module_utils._background import BackgroundFault
from ansible_collections.pggit.chaos.plugins.module_utils._validate import range_error
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import postgres_argument_spec

RANGES = (('memory_pct', 1, 100, ' percent'), ('memory_mb', 1, None, ' MB'), ('cpu_workers', 1, 4096),
          ('cpu_load', 1, 100, ' percent'), ('io_workers', 1, 64), ('oom_score_adj', -1000, 1000), ('watch_s', 0, None, ' seconds'))
# Options that only mean something for one resource (defaults excepted).
FOR_RESOURCE = (('memory_pct', 'memory'), ('memory_mb', 'memory'), ('cpu_workers', 'cpu'))
# How long the module waits for stress-ng to be up once its program is ready.
START_TIMEOUT = 10.0
# Free space io stress needs on the data directory's filesystem, over what its workers write.
IO_MARGIN = 1.1
MB = 1024 * 1024


def option_problem(params):
    """The first bad option of state=present, as a message naming it and its value; None when all are fine."""
    for bounds in RANGES:
        msg = range_error(bounds[0], params[bounds[0]], *bounds[1:])
        if msg:
            return msg
    for option, resource in FOR_RESOURCE:
        if params[option] is not None and params['resource'] != resource:
            return '%s is only for resource=%s, got %s=%s with resource=%s' % (option, resource, option, params[option],
                                                                               params['resource'])
    if params['resource'] != 'cpu' and params['cpu_load'] != 100:
        return 'cpu_load is only for resource=cpu, got cpu_load=%s with resource=%s' % (params['cpu_load'], params['resource'])
    if params['resource'] != 'io' and params['io_workers'] != 1:
        return 'io_workers is only for resource=io, got io_workers=%s with resource=%s' % (params['io_workers'], params['resource'])
    if params['resource'] == 'memory' and params['memory_pct'] is None and params['memory_mb'] is None:
        return 'resource=memory needs memory_pct or memory_mb, got neither'
    if params['watch_s'] >= params['ttl']:
        return 'watch_s must be less than ttl=%s, got %s' % (params['ttl'], params['watch_s'])
    return None


def io_problem(io_workers, state_dir, data_directory, filesystem=_fill.filesystem, same=_fill.same_filesystem):
    """None when io stress may write io_workers x IO_BYTES under state_dir, else why not (naming what is wrong).

    The scratch folder is inside the state dir: the IO presses on PostgreSQL's
    disk only when the state dir is on the data directory's filesystem, and
    that filesystem must hold what the workers write, plus a margin."""
    here = _fill.existing_ancestor(state_dir)
    data_fs = filesystem(data_directory)
    if not same(here, data_directory):
        state_fs = filesystem(here)
        where = (state_dir, state_fs['mount'], state_fs.get('device') or '?', data_directory, data_fs['mount'],
                 data_fs.get('device') or '?')
        return ('resource=io writes its scratch files under state_dir %s, on the filesystem %s (%s), but the data '
                'directory %s is on the filesystem %s (%s): the IO would not press on PostgreSQL\'s disk. Use a state_dir '
                'on the filesystem of the data directory' % where)
    need = int(io_workers * _stress.IO_BYTES * IO_MARGIN)
    if data_fs['free_bytes'] < need:
        return ('io_workers=%s needs %d MB free (%d MB per worker plus 10%%) on the filesystem %s of the data directory, '
                'which has %d MB free' % (io_workers, need // MB, _stress.IO_BYTES // MB, data_fs['mount'],
                                          data_fs['free_bytes'] // MB))
    return None


class StressFault(BackgroundFault):
    kind = 'stress'
    volatile_options = ('watch_s',)
    program = _stress.PROC_TAG

    def __init__(self, module):
        super(StressFault, self).__init__(module)
        self.binary = None
        self.paths = {}
        self.memory = {}
        self.server = None
        self.info = None
        self.spec = None
        self.stress = None

    # -- before anything is touched -----------------------------------------------
    def validate(self):
        problem = option_problem(self.params)
        if problem:
            self.module.fail_json(msg=problem, changed=False)
        if self.params['confine'] == 'postgres' or self.params['resource'] == 'io':
            self.info = self.read_server()
        self.paths = self.target_cgroups()
        if self.params['confine'] == 'postgres':
            self.check_oom_policy()
        if self.params['resource'] == 'io':
            problem = io_problem(self.params['io_workers'], self.params['state_dir'], self.info['data_directory'])
            if problem:
                self.module.fail_json(msg=problem, changed=False, server=self.server)
        self.memory = _cgroup.memory(self.paths)
        self.spec = self.build_spec()
        try:
            self.binary = _stress.find_stress_ng()
        except ChaosError as exc:
            self.module.fail_json(msg=str(exc), changed=False)

    def read_server(self):
        """server_info of the server the connection options reach (confine=postgres, or resource=io)."""
        why = 'confine=postgres' if self.params['confine'] == 'postgres' else 'resource=io'
        conn = connect_or_fail(self.module, application_name='pggit-chaos-stress')
        try:
            info = _server.server_info(conn.cursor())
        except ChaosError as exc:
            self.module.fail_json(msg='%s: %s' % (why, exc), changed=False)
        except _pgconn.psycopg2.Error as exc:
            self.module.fail_json(msg='%s: cannot read the server: %s' % (why, _pgconn.one_line(exc)), changed=False)
        finally:
            conn.close()
        self.server = {'data_directory': info['data_directory'], 'postmaster_pid': info['postmaster_pid'],
                       'systemd_unit': info.get('systemd_unit')}
        return info

    def check_oom_policy(self):
        """Refuse a systemd unit that stops at the first OOM kill in its cgroup: stress-ng's workers are OOM-killed there."""
        unit = self.info.get('systemd_unit')
        if not unit:
            return
        policy = _stress.oom_policy(unit)
        if policy != 'continue':
            self.module.fail_json(
                msg='confine=postgres would run stress-ng in the cgroup of the systemd unit %s, whose OOMPolicy is %s: one '
                    'OOM kill of a stress-ng worker would stop the whole unit (PostgreSQL). Use confine=none, or set '
                    'OOMPolicy=continue for %s (a drop-in with [Service] OOMPolicy=continue)'
                    % (unit, policy or 'unknown (systemctl show -p OOMPolicy gave nothing)', unit),
                changed=False, server=self.server)

    def target_cgroups(self):
        if self.params['confine'] == 'none':
            return _cgroup.of_pid(os.getpid())
        info = self.info
        paths = info.get('cgroups') or {}
        if not paths:
            self.module.fail_json(msg='confine=postgres: no cgroup of the postmaster (pid %s) is visible in /proc/%s/cgroup '
                                      'and /sys/fs/cgroup; use confine=none to stress where the module runs'
                                      % (info['postmaster_pid'], info['postmaster_pid']), changed=False)
        problem = _cgroup.check_paths(paths)
        if problem:
            self.module.fail_json(msg='confine=postgres: %s' % problem, changed=False)
        return paths

    def build_spec(self):
        spec = {'resource': self.params['resource'], 'oom_score_adj': self.params['oom_score_adj'],
                'confine': self.params['confine'], 'cgroups': dict(self.paths) if self.params['confine'] == 'postgres' else {}}
        if self.params['resource'] == 'memory':
            size, problem = _stress.memory_bytes(self.params['memory_pct'], self.params['memory_mb'],
                                                 self.memory.get('limit_bytes'), _stress.host_memory_bytes())
            if problem:
                self.module.fail_json(msg=problem, changed=False, cgroup=self.cgroup_result())
            spec['memory_bytes'] = size
        elif self.params['resource'] == 'cpu':
            spec.update(cpu_workers=self.params['cpu_workers'] or os.cpu_count() or 1, cpu_load=self.params['cpu_load'])
        else:
            spec['io_workers'] = self.params['io_workers']
        return spec

    def cgroup_result(self):
        return {'paths': dict(self.paths), 'limit_bytes': self.memory.get('limit_bytes'),
                'usage_bytes_before': self.memory.get('usage_bytes')}

    def cpu_count(self):
        return self.spec.get('cpu_workers') or os.cpu_count() or 1

    # -- the lifecycle ----------------------------------------------------------
    def observe(self):
        return {'cgroup': self.cgroup_result(), 'stress': 'not running'}

    def in_place(self, record, current):
        return self.program_in_place(record)

    def plan(self, current):
        detail = {'stress': self.spec}
        if self.server:
            detail['server'] = self.server
        temp = _stress.io_dir(self.params['state_dir'], self.fid()) if self.spec['resource'] == 'io' else None
        argv = _stress.stress_argv(self.binary, self.spec, self.params['ttl'], temp)
        undo = [self.results_undo()]
        if self.params['confine'] == 'postgres':
            # First in the list, so undone last: once stress-ng is gone, start the server if the OOM killer took it.
            undo.insert(0, _server.start_step(self.info))
        return undo, detail, dict(current, stress={'argv': argv})

    def add_undo_last(self, step):
        """The program's kill_process step also kills its whole process group: stress-ng is in it."""
        if step.get('type') == 'kill_process' and step.get('match') == self.program:
            step = dict(step, group=True, members_match=_stress.MEMBERS)
        super(StressFault, self).add_undo_last(step)

    def apply(self, detail):
        program = self.start_program()
        deadline = min(time.monotonic() + START_TIMEOUT, time.monotonic() + max(0.5, self.deadline - time.time()))
        event = None
        while event is None:
            event = self.reader.first('started', 'error', 'done', 'stopped')
            if event is None and time.monotonic() > deadline:
                raise ChaosError('stress-ng did not start within %gs (see %s)' % (START_TIMEOUT, self.params['state_dir']))
            if event is None:
                time.sleep(0.05)
        if event['event'] != 'started':
            raise ChaosError(event.get('msg') or event.get('reason') or 'stress-ng did not start')
        self.stress = {'pid': event['pid'], 'argv': event['argv'], 'program': program}
        return {'stress': self.stress}

    def finish(self, result):
        if self.params['state'] != 'present' or 'planned' not in result:
            return
        result['cgroup'] = self.cgroup_result()
        if self.server:
            result['server'] = self.server
        if self.module.check_mode:
            planned = result.get('diff', {}).get('after', {}).get('stress') or {}
            temp = _stress.io_dir(self.params['state_dir'], self.fid()) if self.spec['resource'] == 'io' else None
            argv = planned.get('argv') or _stress.stress_argv(self.binary, self.spec, self.params['ttl'], temp)
            result['stress'] = {'pid': None, 'argv': argv}
            result['msg'] = 'would run %s in %s' % (' '.join(argv), ', '.join(sorted(set(self.paths.values()))) or 'no cgroup')
            return
        if self.reader is None:
            return
        watch = min(self.params['watch_s'], max(0.0, float(self.record['expires_at']) - time.time() - 1))
        end = time.monotonic() + watch
        while time.monotonic() < end:
            self.reader.poll()
            if self.reader.first('stopped', 'error') is not None:
                break
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))
        events = self.reader.poll()
        started = next((e for e in events if e.get('event') == 'started'), None)
        samples = [e for e in events if e.get('event') == 'sample']
        result['figures'] = _stress.figures(started, samples, self.cpu_count())
        stopped = next((e for e in events if e.get('event') in ('stopped', 'error')), None)
        if stopped is not None:
            result['stopped'] = stopped.get('reason') or stopped.get('msg')


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        resource=dict(type='str', choices=['memory', 'cpu', 'io']),
        memory_pct=dict(type='float'),
        memory_mb=dict(type='int'),
        cpu_workers=dict(type='int'),
        cpu_load=dict(type='int', default=100),
        io_workers=dict(type='int', default=1),
        confine=dict(type='str', default='postgres', choices=['postgres', 'none']),
        oom_score_adj=dict(type='int', default=1000),
        watch_s=dict(type='float', default=0),
    )
    chaos = ChaosModule(argument_spec, mutually_exclusive=[('memory_pct', 'memory_mb')],
                        required_if=[('state', 'present', ('resource',))])
    chaos.run(StressFault)


if __name__ == '__main__':
    main()
