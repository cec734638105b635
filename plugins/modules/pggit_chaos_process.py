#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_process
short_description: Crash or pause PostgreSQL processes with a signal (KILL, TERM, STOP)
version_added: 0.2.0
description:
  - Sends a signal to processes of the PostgreSQL server on the target host, chosen by
    role, and returns the pids, roles and command lines it signalled.
  - The server is found from the server itself (C(data_directory), then the pid in
    C(postmaster.pid)), never guessed, so the task must run on the database server's host
    (as root, to signal processes of the C(postgres) user and to read C(/proc)), and
    O(login_user) must be allowed to read C(data_directory) (a superuser or a member of
    C(pg_read_all_settings)).
  - V(KILL) (SIGKILL) is a crash. Of a backend, walsender, walreceiver, checkpointer,
    autovacuum process or archiver, it makes the postmaster terminate every backend, run
    crash recovery and come back by itself (clients see
    C(the database system is in recovery mode) for a short while). Of the postmaster, it
    leaves the server down, its children exit by themselves, and it stays down until the
    revert starts it.
  - V(TERM) (SIGTERM) ends a backend cleanly (like C(pg_terminate_backend)). Of the
    postmaster it would be a smart shutdown, which waits for every client to disconnect,
    so the server runs on past the revert and stops later with nothing to start it
    again. V(TERM) with O(role=postmaster) is therefore refused. Use V(KILL) to crash
    the postmaster, or V(TERM) on backends.
  - V(STOP) (SIGSTOP) is a pause. The process keeps its connections and locks but does
    nothing. A stopped postmaster accepts no new connections while existing sessions go
    on; a stopped walreceiver lets its replica fall behind while the primary still says
    C(streaming). Its undo is SIGCONT to that very process (pid and start time), held in
    the fault ledger and run by the TTL reaper too, so a paused process resumes even when
    the controller dies. The undo of a STOP never starts anything.
  - The undo of V(KILL) and V(TERM) starts the server if it is not running when the fault
    is reverted (O(state=absent), C(pggit_chaos_revert), the red button or the TTL). How is
    recorded before the signal is sent. For a plain data directory it is C(pg_ctl start)
    with the postmaster's own options (from C(postmaster.opts)) and log file, run as the
    data directory's owner (never root) inside the cgroups the postmaster was in. Where
    systemd manages the server (the postmaster is the main process of a C(.service) unit)
    it is C(systemctl start) of that unit.
  - A server another program manages is never started by the revert. When the
    postmaster's parent is Patroni, C(pg_autoctl), C(repmgrd), C(stolon-keeper),
    C(supervisord), C(runsv) or C(s6-supervise), the undo starts nothing and only looks
    whether the server is back; that program starts it again, or fails over.
    C(server.start_method) is then V(manager) and C(server.manager) names the parent.
    A parent that is PID 1, an init, systemd or another subreaper (which adopts a server
    started with C(pg_ctl start)) is not a manager.
  - Where it cannot work. A remote server (the data directory is not on the target host),
    a login role that cannot read C(data_directory), or a task not run as root (or as the
    server's owner) fails before anything is signalled. A systemd unit with C(Restart=)
    restarts the server by itself after a KILL, before the revert. A supervisor not
    in the list above, or one that is not the postmaster's parent, is not seen; the revert
    may then start the server while it does. C(pg_ctl) needs a
    data directory whose owner exists on the host. A process in uninterruptible sleep
    dies only once its I/O ends.
  - A role that matches no process fails, naming the role and the filters, and leaves no
    ledger record.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Lists the processes it would signal, and signals none.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  role:
    description:
      - Which processes of the server to signal. V(postmaster) is the server's main
        process; V(backend) a client backend; V(walsender), V(walreceiver),
        V(checkpointer) and V(archiver) the process of that name; V(autovacuum) the
        autovacuum launcher and its workers.
      - Required with O(state=present).
    type: str
    choices: [postmaster, backend, walsender, walreceiver, checkpointer, autovacuum, archiver]
  signal:
    description:
      - V(KILL) crashes the process, V(TERM) asks it to end, V(STOP) pauses it until the revert.
      - V(TERM) is refused with O(role=postmaster) (a smart shutdown outlives the revert).
    type: str
    default: KILL
    choices: [KILL, TERM, STOP]
  application_name:
    description:
      - Only processes whose C(application_name) matches this SQL C(LIKE) pattern.
      - Only with O(role=backend) or O(role=walsender). An empty value is refused.
    type: str
  user:
    description:
      - Only processes of this login role.
      - Only with O(role=backend) or O(role=walsender). An empty value is refused.
    type: str
  pid:
    description:
      - Only the process with this pid.
      - Only with O(role=backend) or O(role=walsender).
    type: int
  count:
    description:
      - Signal at most this many of the matching processes, oldest first, from 1 to 10000.
      - Omit it to signal every matching process.
    type: int
'''

EXAMPLES = r'''
- name: Crash one workload backend (the postmaster runs crash recovery)
  pggit.chaos.pggit_chaos_process:
    name: backend-crash
    ttl: 120
    db: app
    role: backend
    application_name: pggit-chaos-workload
    count: 1
  become: true

- name: Crash the postmaster; the revert (or the TTL) starts the server again
  pggit.chaos.pggit_chaos_process:
    name: postmaster-crash
    ttl: 60
    role: postmaster
  become: true

- name: Pause the replica's walreceiver for the window
  pggit.chaos.pggit_chaos_process:
    name: walreceiver-pause
    ttl: 30
    role: walreceiver
    signal: STOP
  become: true

- name: Resume it (the TTL reaper would, too)
  pggit.chaos.pggit_chaos_process:
    name: walreceiver-pause
    state: absent
  become: true
'''

RETURN = r'''
signalled:
  description:
    - The processes signalled. C(exited) says whether a KILLed or TERMed process was gone
      a moment later, C(stopped) whether a STOPped one was paused.
  returned: when a signal was sent
  type: list
  elements: dict
  sample: [{pid: 4242, starttime: 123456, role: backend, backend_type: client backend, application_name: app,
            cmdline: 'postgres: app app 127.0.0.1(51234) idle', signal: KILL, exited: true}]
would_signal:
  description: In check mode, the processes it would signal.
  returned: check mode
  type: list
  elements: dict
server:
  description:
    - The server, as found before the signal. C(start_method) is V(pg_ctl), V(systemd) or
      V(manager), C(start_command) what the revert runs when the server is down.
    - V(manager) means another program (C(manager), the postmaster's parent, shortened)
      manages the server, and the revert starts nothing. C(manager) is null otherwise.
  returned: when the server was found
  type: dict
  sample: {data_directory: /var/lib/postgresql/15/main, postmaster_pid: 812, version_num: 150018, in_recovery: false,
           start_method: pg_ctl, start_command: 'as postgres: /usr/lib/postgresql/15/bin/pg_ctl start -D /var/lib/postgresql/15/main -w -t 60',
           manager: null}
fault_id:
  description: Ledger id of the fault, C(process--<name>).
  returned: always
  type: str
'''

import os
import signal as _signal
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

RANGES = (('count', 1, 10000), ('pid', 2, 4194304))
FILTERS = ('application_name', 'user', 'pid')
# How long a signalled process has to show the effect (gone, or stopped).
CONFIRM_S = {'KILL': 5.0, 'TERM': 2.0, 'STOP': 2.0}


def check_options(module):
    """Refuse bad options of state=present before anything is touched, naming the option and the value."""
    fail_on_ranges(module, RANGES)
    params = module.params
    if params['signal'] == 'TERM' and params['role'] == 'postmaster':
        module.fail_json(msg='signal=TERM with role=postmaster is a smart shutdown: the server runs on while clients stay, '
                             'past the revert, and stops later with nothing to start it; use signal=KILL to crash the '
                             'postmaster, or signal=TERM with role=backend', changed=False)
    for option in ('application_name', 'user'):
        value = params.get(option)
        if value is not None and not value.strip():
            module.fail_json(msg="%s must not be empty, got '%s'; omit it to match every process" % (option, value), changed=False)
    for option in FILTERS:
        if params.get(option) is not None and params['role'] not in _server.FILTERED_ROLES:
            module.fail_json(msg='%s=%s filters connections: it works with role=%s, not with role=%s'
                                 % (option, params[option], ' or role='.join(_server.FILTERED_ROLES), params['role']),
                             changed=False)


def _match(cmdline):
    for word in _steps.PG_PROCESS_MATCHES:
        if word in cmdline:
            return word
    return None


def _public(proc, **extra):
    row = dict((k, proc.get(k)) for k in ('pid', 'starttime', 'role', 'backend_type', 'cmdline', 'application_name'))
    row.update(extra)
    return row


class ProcessFault(Fault):
    kind = 'process'

    def __init__(self, module):
        super(ProcessFault, self).__init__(module)
        self.info = None

    def selection(self):
        shown = ['role=%s' % self.params['role']]
        shown += ['%s=%s' % (k, self.params[k]) for k in FILTERS if self.params.get(k) is not None]
        return ' '.join(shown)

    def observe(self):
        conn = connect_or_fail(self.module, application_name='pggit-chaos-process')
        try:
            cur = conn.cursor()
            self.info = _server.server_info(cur)
            found = _server.processes(cur, self.info, self.params['role'], self.params['application_name'],
                                      self.params['user'], self.params['pid'])
        finally:
            conn.close()
        return {'server': _server.summary(self.info), 'matching': [_public(p) for p in found]}

    def in_place(self, record, current):
        targets = (record.get('detail') or {}).get('targets') or []
        if (record.get('detail') or {}).get('signal') == 'STOP':
            return any(_steps.same_process(t['pid'], t['starttime']) and _steps.proc_state(t['pid']) == 'T' for t in targets)
        return bool(targets) and not any(_steps.same_process(t['pid'], t['starttime']) for t in targets)

    def plan(self, current):
        targets = current['matching'][:self.params['count']] if self.params['count'] else list(current['matching'])
        if not targets:
            raise ChaosError('%s matches no process of the server in %s: nothing was signalled and nothing recorded'
                             % (self.selection(), self.info['data_directory']))
        sig = self.params['signal']
        if sig == 'STOP':
            undo = []
            for proc in targets:
                match = _match(proc['cmdline'])
                if match is None:
                    raise ChaosError('process %s (%s) does not look like PostgreSQL: it is not paused' % (proc['pid'], proc['cmdline']))
                undo.append({'type': 'signal_process', 'pid': proc['pid'], 'starttime': proc['starttime'], 'signal': 'CONT',
                             'match': match})
        else:
            undo = [_server.start_step(self.info)]
        detail = {'role': self.params['role'], 'signal': sig, 'targets': targets, 'server': current['server']}
        pids = [p['pid'] for p in targets]
        after = dict(current, paused=pids) if sig == 'STOP' else dict(current, signalled=pids)
        return undo, detail, after

    def apply(self, detail):
        sig = detail['signal']
        signalled = []
        for proc in detail['targets']:
            if not _steps.same_process(proc['pid'], proc['starttime']):
                continue  # it ended between the look and now: it is not signalled, and not reported as signalled
            try:
                os.kill(proc['pid'], getattr(_signal, 'SIG' + sig))
            except OSError as exc:
                if _steps.same_process(proc['pid'], proc['starttime']):
                    raise ChaosError('kill -%s %s failed: %s' % (sig, proc['pid'], exc))
                continue
            signalled.append(_public(proc, signal=sig))
        if not signalled:
            raise ChaosError('every process matching %s ended before it could be signalled' % self.selection())
        self._confirm(sig, signalled)
        return {'signalled': signalled, 'server': detail['server']}

    @staticmethod
    def _confirm(sig, signalled):
        """Look at the effect: a STOPped process is stopped, a KILLed one is gone (a TERMed one is reported)."""
        deadline = time.time() + CONFIRM_S[sig]
        key = 'stopped' if sig == 'STOP' else 'exited'

        def effect(proc):
            if sig == 'STOP':
                return _steps.proc_state(proc['pid']) == 'T' and _steps.same_process(proc['pid'], proc['starttime'])
            return not _steps.same_process(proc['pid'], proc['starttime'])
        while True:
            for proc in signalled:
                proc[key] = effect(proc)
            if all(p[key] for p in signalled) or time.time() >= deadline:
                break
            time.sleep(0.02)
        missing = [str(p['pid']) for p in signalled if not p[key]]
        if missing and sig == 'STOP':
            raise ChaosError('process(es) %s did not stop after SIGSTOP' % ', '.join(missing))
        if missing and sig == 'KILL':
            raise ChaosError('process(es) %s still exist %gs after SIGKILL (uninterruptible sleep?)' % (', '.join(missing), CONFIRM_S[sig]))

    def finish(self, result):
        if self.params['state'] != 'present':
            return
        current = result.get('current') or {}
        if current.get('server'):
            result.setdefault('server', current['server'])
        if 'planned' not in result:
            return
        if self.module.check_mode:
            result['would_signal'] = [_public(p, signal=self.params['signal']) for p in result['planned']['targets']]
            result['msg'] = 'would send SIG%s to %d process(es) (%s); signalled none' % (
                self.params['signal'], len(result['would_signal']), self.selection())
            return
        result.setdefault('signalled', [])
        manager = (result.get('server') or {}).get('manager')
        if self.params['signal'] == 'STOP':
            after = 'the revert resumes them'
        elif manager:
            after = 'the revert starts nothing: %s manages the server' % manager
        else:
            after = 'the revert starts the server if it is down'
        result['msg'] = 'sent SIG%s to %d process(es) (%s): %s; %s' % (
            self.params['signal'], len(result['signalled']), self.selection(),
            ', '.join('%s %s' % (p['role'], p['pid']) for p in result['signalled']), after)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        role=dict(type='str', choices=list(_server.ROLES)),
        signal=dict(type='str', default='KILL', choices=['KILL', 'TERM', 'STOP']),
        application_name=dict(type='str'),
        user=dict(type='str'),
        pid=dict(type='int'),
        count=dict(type='int'),
    )
    chaos = ChaosModule(argument_spec, required_if=[('state', 'present', ('role',))])
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(ProcessFault)


if __name__ == '__main__':
    main()
