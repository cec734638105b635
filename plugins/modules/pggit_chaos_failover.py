#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_failover
short_description: Manual failover of a streaming cluster without an HA manager (kill, promote, repoint, rejoin, fail back)
version_added: 0.3.0
description:
  - Runs a manual failover of a PostgreSQL streaming cluster that no HA manager (Patroni and the like) runs, one
    action per task, each recorded in the fault ledger of the OLD primary's host, so a controller that dies at any
    point leaves a record that the revert (or the TTL reaper on that host alone) converges.
  - Run every action on the old primary's host (as root), with the connection options of its own server.
    The other members are reached with SQL only, from that host.
  - V(kill) records the undo (step C(pg_converge), with every member's connection) and then crashes the old
    primary's postmaster with SIGKILL, and confirms it is gone.
  - V(promote) runs C(pg_promote) on O(candidate), by default the replica with the highest replayed LSN (a tie goes to
    the replica in the old primary's region, then to the first name). The record says so before the promotion.
  - V(repoint) points every other replica at the new primary (C(ALTER SYSTEM SET primary_conninfo) and
    C(pg_reload_conf)) and waits until each streams from it on the new timeline.
  - V(rejoin) makes the old primary a standby of the new one. C(pg_rewind) runs as the data directory's owner (never
    root); the server keeps its own configuration files, gets C(standby.signal) and C(primary_conninfo), and is
    started the way it was started.
  - V(failback) is a planned switchover back to O(original_primary). The current primary is checkpointed, stopped
    cleanly and restarted as a standby of the original one; once the original has replayed its shutdown checkpoint it
    is promoted, and the others are repointed. A current primary on another host is demoted with SQL
    (C(ALTER SYSTEM), C(COPY ... TO) of C(standby.signal) and C(pg_ctl restart) through C(COPY ... TO PROGRAM)),
    which needs a superuser login.
  - The revert (O(state=absent), C(pggit_chaos_revert), the TTL reaper) converges from any half-done state. Killed
    and not promoted, the old primary starts again as the primary. Once a replica was promoted, the old primary is
    rewound and rejoins, the others are repointed, and with O(failback=true) the original primary leads again. It
    never starts a second primary; a promotion that was asked for and not seen to finish is finished, never raced.
    When a peer cannot be reached it starts nothing and fails, naming the peer; the record stays and the reaper tries
    again.
  - Bad input (an unknown member or candidate, a member that is not in the cluster, a cluster with no replica to fail
    over to, a member that cannot be reached, a server run by an HA manager) fails before anything is recorded or
    signalled.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Looks at the cluster and says what the action would do; changes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  members:
    description:
      - Every server of the cluster, the primary included. Each is reached with the connection options of this task,
        on its own host and port.
      - Required with O(state=present).
    type: list
    elements: dict
    suboptions:
      name:
        description: The member's name (inventory host name).
        type: str
        required: true
      host:
        description: Address the other members and this task reach it at.
        type: str
        required: true
      port:
        description: Its PostgreSQL port.
        type: int
        default: 5432
      region:
        description: Its region, used to break a tie between candidates.
        type: str
  original_primary:
    description:
      - The member that leads when the cluster is at baseline; the failback (and the revert with O(failback=true))
        makes it the primary again.
      - Defaults to the primary found by V(kill) (the old primary).
    type: str
  action:
    description:
      - The step of the failover to run. Run them in order, V(kill), V(promote), V(repoint), V(rejoin), then
        V(failback) or O(state=absent).
    type: str
    default: kill
    choices: [kill, promote, repoint, rejoin, failback]
  candidate:
    description:
      - The replica V(promote) promotes. Defaults to the replica with the highest replayed LSN.
    type: str
  failback:
    description:
      - Whether the revert ends with O(original_primary) as the primary (a planned switchover back), so a static
        inventory is right again. Recorded by V(kill).
    type: bool
    default: true
notes:
  - pg_rewind needs C(wal_log_hints=on) (or data checksums) and C(full_page_writes=on) on every member.
  - The members' standbys must use the default C(recovery_target_timeline=latest).
'''

EXAMPLES = r'''
- name: Crash the primary (the record with the undo is written first)
  pggit.chaos.pggit_chaos_failover:
    name: manual
    ttl: 600
    action: kill
    login_host: "{{ pggit_login_host }}"
    members: [{name: lab-1, host: 198.18.0.11}, {name: lab-2, host: 198.18.0.12}, {name: lab-3, host: 198.18.0.13}]
  become: true

- name: Promote the best replica
  pggit.chaos.pggit_chaos_failover:
    name: manual
    action: promote
    login_host: "{{ pggit_login_host }}"
    members: "{{ failover_members }}"
  become: true

- name: Converge (rejoin, repoint, fail back) whatever was done
  pggit.chaos.pggit_chaos_failover:
    name: manual
    state: absent
  become: true
'''

RETURN = r'''
old_primary:
  description: The member that was the primary when V(kill) ran.
  returned: with action kill
  type: str
killed_at:
  description: Epoch seconds of the SIGKILL.
  returned: with action kill
  type: float
promoted:
  description: The member promoted.
  returned: with action promote
  type: str
promoted_at:
  description: Epoch seconds when the promotion finished.
  returned: with action promote
  type: float
timeline:
  description: The new primary's timeline after the action (before it, with V(kill)).
  returned: with actions kill, promote and failback
  type: int
repointed:
  description: The members whose C(primary_conninfo) was changed.
  returned: with action repoint
  type: list
  elements: str
rejoin_method:
  description: V(pg_rewind), or V(none) when pg_rewind said no rewind was required; null when it already streamed.
  returned: with action rejoin
  type: str
rejoined_at:
  description: Epoch seconds when the old primary streamed from the new one.
  returned: with action rejoin
  type: float
rejoin_s:
  description: Seconds the rejoin took.
  returned: with action rejoin
  type: float
failback:
  description: The switchover back, C(at) (epoch seconds), C(method) (V(switchover), or V(none) when it led already),
    C(rto_s) (from the stop of the current primary to the promotion) and C(from).
  returned: with action failback
  type: dict
primary:
  description: The primary after the action.
  returned: with every action but kill
  type: str
fault_id:
  description: Ledger id, C(failover--<name>).
  returned: always
  type: str
'''

import os
import signal as _signal
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _failover, _ledger, _pgconn, _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

KILL_CONFIRM_S = 5.0


def _named(members, name):
    return any(m['name'] == name for m in members)


class FailoverFault(Fault):
    kind = 'failover'
    # Its action moves one fault through its phases: in_place() judges, never a change of options.
    volatile_options = None

    def __init__(self, module):
        super(FailoverFault, self).__init__(module)
        self.info = None
        self._template = None
        self.members = _failover.normalize_members(module.params.get('members') or [])

    def validate(self):
        problem = _failover.check_members(self.members)
        if problem:
            raise ChaosError(problem)
        for option in ('original_primary', 'candidate'):
            value = self.params.get(option)
            if value is not None and not _named(self.members, value):
                raise ChaosError('%s=%s is not one of the members (%s)' % (option, value, ', '.join(m['name'] for m in self.members)))

    # -- kill (the Fault lifecycle: record first, then the SIGKILL) --------------------------------------------------
    def _record_exists(self):
        ledger = _ledger.Ledger(self.params['state_dir'])
        return ledger.exists() and ledger.read(_ledger.fault_id(self.kind, self.params['name'])) is not None

    def _provisional(self, local):
        conn = _pgconn.stored_conn(self.params)
        for key in ('login_host', 'login_port', 'login_unix_socket'):
            conn.pop(key, None)
        return {'members': self.members, 'local': local, 'original_primary': self.params.get('original_primary') or local,
                'conn': conn, 'failback': self.params['failback']}

    def observe(self):
        try:
            conn = _pgconn.connect(self.params, application_name=_failover.APP)
        except Exception as exc:  # pylint: disable=broad-except
            if self._record_exists():
                return {'down': True, 'error': _pgconn.one_line(exc)}
            conn = connect_or_fail(self.module, application_name=_failover.APP)
        try:
            cur = conn.cursor()
            self.info = _server.server_info(cur)
            cur.execute('SELECT pg_postmaster_start_time()::text, (SELECT system_identifier::text FROM pg_control_system())')
            started, system_id = cur.fetchone()
        finally:
            conn.close()
        if self.info['manager']:
            raise ChaosError('the server in %s is run by %s: pggit_chaos_failover is for clusters without an HA manager '
                             '(use the HA experiments, which let the manager fail over)' % (self.info['data_directory'], self.info['manager']))
        cluster = _failover.Cluster(dict(self._provisional(None), members=self.members), _pgconn.secret_conn(self.params))
        statuses = cluster.look()
        local = None
        for name, status in statuses.items():
            if status.get('up') and status['data_directory'] == self.info['data_directory'] and status['started'] == started:
                local = name
        if local is None:
            raise ChaosError('none of the members is the server this task runs on (%s): list it in members, and run the '
                             'task on the primary\'s host' % self.info['data_directory'])
        if self.info['in_recovery']:
            raise ChaosError('%s (this host) is in recovery: run action=kill on the primary\'s host' % local)
        strangers = [n for n, st in statuses.items() if st.get('up') and st['system_identifier'] != system_id]
        if strangers:
            raise ChaosError('member(s) %s are not in the cluster of %s (another system identifier)' % (', '.join(strangers), local))
        others = [n for n, st in statuses.items() if st.get('up') and not st.get('in_recovery') and n != local]
        if others:
            raise ChaosError('member(s) %s are primaries too: refusing a failover of a split cluster' % ', '.join(others))
        replicas = [n for n, st in statuses.items() if st.get('up') and st.get('in_recovery')]
        if not replicas:
            down = [n for n, st in statuses.items() if not st.get('up')]
            raise ChaosError('the cluster has no replica to fail over to: %s' % (
                'members %s cannot be reached' % ', '.join(down) if down else 'every member but %s is missing' % local))
        down = [n for n, st in statuses.items() if not st.get('up')]
        if down:
            # The revert never starts a primary while a member cannot be reached (it may have been promoted): a kill now
            # could leave the cluster without a primary until that member comes back.
            raise ChaosError('member(s) %s cannot be reached (%s): the revert could not restart the cluster safely, so %s is '
                             'not killed' % (', '.join(down), '; '.join('%s: %s' % (n, statuses[n].get('error') or 'down') for n in down),
                                             local))
        candidate = self.params.get('candidate')
        if candidate is not None and candidate not in replicas:
            raise ChaosError('candidate=%s is not a replica that answers (replicas: %s)' % (candidate, ', '.join(replicas)))
        if self.params.get('original_primary') is not None and self.params['original_primary'] not in statuses:
            raise ChaosError('original_primary=%s is not one of the members' % self.params['original_primary'])
        template = None
        for name in replicas:
            if statuses[name].get('primary_conninfo'):
                template = statuses[name]['primary_conninfo']
                break
        # The replicas' primary_conninfo may hold a password: kept here for the secret side file, never in `current`
        # (returned as the result's current, and as the diff).
        self._template = template
        return {'local': local, 'timeline': statuses[local]['timeline'], 'replicas': replicas,
                'server': _server.summary(self.info),
                'members': dict((n, {'up': st.get('up'), 'in_recovery': st.get('in_recovery'), 'timeline': st.get('timeline'),
                                     'lsn': _failover.format_lsn(st.get('lsn'))}) for n, st in statuses.items())}

    def in_place(self, record, current):
        return bool(current.get('down'))

    def secret(self):
        secret = _pgconn.secret_conn(self.params)
        template = getattr(self, '_template', None)
        if template:  # a replica's primary_conninfo: it may hold password, sslpassword...: never in the record itself
            secret['conninfo_template'] = template
        return secret

    def plan(self, current):
        if current.get('down'):
            raise ChaosError('the old primary is down but its record is gone or stale: revert it first')
        local = current['local']
        step = self._provisional(local)
        start = _server.start_step(self.info)
        step.update(type='pg_converge', pgdata=self.info['data_directory'], bin_dir=self.info['bin_dir'], owner=self.info['owner'],
                    start=start)
        template = getattr(self, '_template', None)
        if template:
            try:
                _failover.parse_conninfo(template)
            except ValueError as exc:
                raise ChaosError('the primary_conninfo of the replicas (%s) cannot be used to rejoin %s: %s'
                                 % (_failover.redact_conninfo(template), local, exc))
        problem = _failover.check_step(step, self.params['state_dir'])
        if problem:
            raise ChaosError('the failover cannot be recorded: %s' % problem)
        detail = {'old_primary': local, 'timeline_before': current['timeline'], 'postmaster': {
            'pid': self.info['postmaster_pid'], 'starttime': self.info['postmaster_starttime']}, 'actions': []}
        return [step], detail, dict(current, killed=local)

    def apply(self, detail):
        pid, starttime = detail['postmaster']['pid'], detail['postmaster']['starttime']
        if not _steps.same_process(pid, starttime):
            raise ChaosError('the postmaster %s of %s ended before it could be killed' % (pid, detail['old_primary']))
        os.kill(pid, _signal.SIGKILL)
        killed_at = time.time()
        deadline = killed_at + KILL_CONFIRM_S
        while _steps.same_process(pid, starttime) and time.time() < deadline:
            time.sleep(0.02)
        if _steps.same_process(pid, starttime):
            raise ChaosError('postmaster %s still exists %gs after SIGKILL' % (pid, KILL_CONFIRM_S))
        return {'old_primary': detail['old_primary'], 'killed_at': killed_at, 'timeline': detail['timeline_before']}

    def finish(self, result):
        if self.params['state'] == 'present' and self.params['action'] == 'kill' and 'planned' in result and self.module.check_mode:
            result['msg'] = 'would SIGKILL the postmaster of %s; killed nothing' % result['planned']['old_primary']
        elif self.params['state'] == 'present' and self.params['action'] == 'kill' and 'killed_at' in result:
            result['msg'] = 'SIGKILLed the postmaster of %s; the revert converges the cluster' % result['old_primary']

    # -- the later actions: each one a record update, under the ledger lock (the reaper waits) ------------------------
    def act(self, ledger, fid, result):
        action = self.params['action']
        record = ledger.read(fid) if ledger.exists() else None
        if record is None:
            raise ChaosError('no failover record %s in %s: run action=kill first, on the old primary\'s host' % (fid, ledger.faults_dir))
        with ledger.lock():
            record = ledger.read(fid)
            if record is None:
                raise ChaosError('failover record %s was reverted meanwhile: action=%s not run' % (fid, action))
            steps = [s for s in (record.get('undo') or []) if isinstance(s, dict) and s.get('type') == 'pg_converge']
            if record.get('corrupt') or len(steps) != 1:
                raise ChaosError('failover record %s is unreadable or holds no pg_converge step: inspect it by hand' % fid)
            step = steps[0]
            problem = _failover.check_step(step, ledger.state_dir)
            if problem:
                raise ChaosError('failover record %s refused: %s' % (fid, problem))
            cluster = _failover.Cluster(step, ledger.read_secret(fid), {'state_dir': ledger.state_dir})
            statuses = cluster.look()
            primaries = sorted(n for n, st in statuses.items() if st.get('up') and not st.get('in_recovery'))
            result['members'] = dict((n, {'up': st.get('up'), 'in_recovery': st.get('in_recovery'), 'timeline': st.get('timeline'),
                                          'lsn': _failover.format_lsn(st.get('lsn'))}) for n, st in statuses.items())

            def save(**changes):
                step.update(changes)
                record.setdefault('detail', {}).setdefault('actions', []).append({'action': action, 'at': time.time()})
                ledger.write(record)

            getattr(self, '_' + action)(cluster, statuses, primaries, save, result)

    def _promote(self, cluster, statuses, primaries, save, result):
        if primaries:
            if cluster.local in primaries:
                raise ChaosError('the old primary %s runs as a primary: promoting another member would make two' % cluster.local)
            result.update(promoted=primaries[0], primary=primaries[0], timeline=statuses[primaries[0]]['timeline'],
                          msg='%s is the primary already: nothing promoted' % primaries[0])
            return
        if cluster.local_running():
            raise ChaosError('the old primary %s runs: no promotion while it may come back' % cluster.local)
        pool = dict((n, st) for n, st in statuses.items() if n != cluster.local)
        candidate = self.params.get('candidate')
        if candidate is None:
            candidate = _failover.choose_candidate(pool, old_region=cluster.member(cluster.local).get('region'))
            if candidate is None:
                raise ChaosError('no replica answers: none can be promoted')
        elif candidate == cluster.local or not (pool[candidate].get('up') and pool[candidate].get('in_recovery')):
            raise ChaosError('candidate=%s is not a replica that answers' % candidate)
        if self.module.check_mode:
            result.update(msg='would promote %s' % candidate, promoted=candidate)
            return
        save(promoting=candidate)
        timeline = cluster.promote(candidate)
        promoted_at = time.time()
        save(promoted=candidate)
        result.update(changed=True, promoted=candidate, promoted_at=promoted_at, timeline=timeline, primary=candidate,
                      msg='promoted %s (timeline %s)' % (candidate, timeline))

    def _one_primary(self, cluster, primaries):
        if len(primaries) != 1:
            raise ChaosError('the cluster has %s primaries (%s): action=%s needs exactly one (promote first)'
                             % (len(primaries), ', '.join(primaries) or 'no', self.params['action']))
        return primaries[0]

    def _repoint(self, cluster, statuses, primaries, save, result):
        primary = self._one_primary(cluster, primaries)
        target = cluster.member(primary)
        todo = [n for n in cluster.names if n not in (primary, cluster.local)
                and not _failover.points_to(statuses[n], target)]
        down = [n for n in cluster.names if n not in (primary, cluster.local) and not statuses[n].get('up')]
        if down:
            raise ChaosError('member(s) %s cannot be reached: not repointed' % ', '.join(down))
        result['primary'] = primary
        if self.module.check_mode:
            result.update(repointed=todo, msg='would repoint %s to %s' % (', '.join(todo) or 'nothing', primary))
            return
        save(phase='repointing')
        for name in todo:
            cluster.repoint(name, primary)
        others = [n for n in cluster.names if n not in (primary, cluster.local)]
        missing = cluster.wait_streaming(primary, others)
        if missing:
            raise ChaosError('%s not streaming from %s %ss after the repoint' % (', '.join(missing), primary, _failover.STREAM_WAIT_S))
        result.update(changed=bool(todo), repointed=todo, streaming=others,
                      msg='repointed %s; %s stream from %s' % (', '.join(todo) or 'nothing', ', '.join(others), primary))

    def _rejoin(self, cluster, statuses, primaries, save, result):
        primary = self._one_primary(cluster, primaries)
        if primary == cluster.local:
            raise ChaosError('%s (this host) is the primary: there is nothing to rejoin' % primary)
        result['primary'] = primary
        if cluster.local_running():
            if _failover.streams_from(statuses[cluster.local], cluster.member(primary), statuses[primary]):
                result.update(rejoin_method=None, msg='%s streams from %s already' % (cluster.local, primary))
                return
            raise ChaosError('%s runs but does not stream from %s: revert (state=absent) to converge' % (cluster.local, primary))
        if self.module.check_mode:
            result['msg'] = 'would rewind %s from %s and start it as a standby' % (cluster.local, primary)
            return
        save(phase='rejoining')
        started = time.time()
        method = cluster.rejoin_local(primary)
        missing = cluster.wait_streaming(primary, [cluster.local])
        if missing:
            raise ChaosError('%s started but does not stream from %s after %ss' % (cluster.local, primary, _failover.STREAM_WAIT_S))
        done = time.time()
        save(phase='rejoined')
        result.update(changed=True, rejoin_method=method, rejoined_at=done, rejoin_s=round(done - started, 3),
                      msg='%s rejoined as a standby of %s (%s)' % (cluster.local, primary, method))

    def _failback(self, cluster, statuses, primaries, save, result):
        primary = self._one_primary(cluster, primaries)
        original = cluster.original
        if self.module.check_mode:
            result.update(primary=primary, msg='would switch over from %s to %s' % (primary, original) if primary != original
                          else '%s leads already' % original)
            return
        problems = _failover.bring_all(cluster, primary)
        if problems:
            raise ChaosError('no failback: %s' % '; '.join(problems))
        save(phase='failing-back')
        done = cluster.switchover(original)
        problems = _failover.bring_all(cluster, original)
        if problems:
            raise ChaosError('switched over to %s, but: %s' % (original, '; '.join(problems)))
        save(phase='failed-back', promoted=None, promoting=None)
        result.update(changed=done['method'] != 'none' or bool(cluster.log), failback=done, primary=original, timeline=cluster.status(original).get('timeline'),
                      msg='%s leads again (%s, %.2f s)' % (original, done['method'], done['rto_s']))


class FailoverModule(ChaosModule):
    def _present(self, ledger, fid, fault, result):
        if self.params['action'] == 'kill':
            return super(FailoverModule, self)._present(ledger, fid, fault, result)
        return fault.act(ledger, fid, result)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        members=dict(type='list', elements='dict', options=dict(
            name=dict(type='str', required=True),
            host=dict(type='str', required=True),
            port=dict(type='int', default=5432),
            region=dict(type='str'),
        )),
        original_primary=dict(type='str'),
        action=dict(type='str', default='kill', choices=['kill', 'promote', 'repoint', 'rejoin', 'failback']),
        candidate=dict(type='str'),
        failback=dict(type='bool', default=True),
    )
    chaos = FailoverModule(argument_spec, required_if=[('state', 'present', ('members',))])
    if chaos.params['state'] == 'present':
        try:
            FailoverFault(chaos.module).validate()  # before the state dir is touched: bad input leaves nothing behind
        except ChaosError as exc:
            chaos.fail(str(exc))
    chaos.run(FailoverFault)


if __name__ == '__main__':
    main()
