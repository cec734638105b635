#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_latency
short_description: Add delay, jitter and packet loss to selected traffic
version_added: 0.1.0
description:
  - Adds delay, with optional jitter and packet loss, to the traffic that
    matches a selector (a port, peers, or both), not to the whole interface.
  - V(nfqueue) sends matching packets to an NFQUEUE (C(--queue-bypass)) from
    chains pggit.chaos owns, and starts C(pggit-chaos-nfqdelay) on the target,
    which holds each packet for the delay before accepting it. It works where
    the kernel has no netem and also delays connections that were already
    open. The daemon is in the ledger and stops by itself at the TTL.
  - The inject succeeds only once the daemon has proven that it holds its
    queue (the queue is listed as bound in C(/proc/net/netfilter/nfnetlink_queue)
    of the target's network namespace). A daemon that exits, or has not bound
    the queue within 10 seconds, fails the inject and it is rolled back, with
    the tail of the daemon's log in the message. A queue number that another
    program already holds is refused.
  - V(netem) uses C(tc) with a C(prio) root qdisc, a C(netem) child and C(u32)
    filters, so only matching egress traffic is delayed. It needs a kernel with
    C(sch_netem); it refuses a root qdisc it did not create. It cannot run on
    the project's own lab (no netem there), so only its command lines are
    tested.
  - V(auto) uses netem when the kernel has it and the direction is V(out),
    otherwise nfqueue, and reports RV(method). Loss alone (no delay) needs no
    daemon; an iptables C(statistic) rule drops the packets.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.fault
  - pggit.chaos.network
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  delay_ms:
    description:
      - Added delay per packet in milliseconds, from 0 to 60000.
      - With V(0) and no jitter or loss, only O(method=nfqueue) is accepted; it
        passes packets through the daemon, to measure its overhead.
    type: int
    default: 100
  jitter_ms:
    description:
      - Standard deviation of the delay in milliseconds, from 0 to 60000.
    type: int
    default: 0
  loss_pct:
    description:
      - Percentage of matching packets dropped, from 0 to 100.
    type: float
    default: 0
  method:
    description:
      - How to add the delay.
    type: str
    default: auto
    choices: [auto, netem, nfqueue]
  interface:
    description:
      - Interface for V(netem). By default the one that routes to the first peer.
    type: str
requirements:
  - for nfqueue, the Python package netfilterqueue and libnetfilter-queue on the target
'''

EXAMPLES = r'''
- name: 100 ms on client traffic into PostgreSQL, replicas spared
  pggit.chaos.pggit_chaos_latency:
    name: slow-clients
    port: 5432
    direction: in
    delay_ms: 100
    jitter_ms: 10
    exclude_peers: "{{ groups['pggit_replicas'] | map('extract', hostvars, 'ansible_host') | list }}"
    ttl: 120
'''

RETURN = r'''
method:
  description: The method used, V(netem), V(nfqueue) or V(iptables) (loss only).
  returned: when state=present
  type: str
chains:
  description: Our iptables chains (nfqueue and iptables methods).
  returned: when state=present
  type: list
  elements: str
queue:
  description: The NFQUEUE number (nfqueue method).
  returned: when method is nfqueue
  type: int
daemon:
  description: pid and start time of C(pggit-chaos-nfqdelay) (nfqueue method).
  returned: when method is nfqueue and changed
  type: dict
applied:
  description: The commands run, in order.
  returned: when state=present and changed
  type: list
  elements: list
'''

import os

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _netcmd, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosModule, DaemonError
from ansible_collections.pggit.chaos.plugins.module_utils.network import NetworkFault, selector_argument_spec


DAEMON_TAG = 'pggit-chaos-nfqdelay'
# How long the daemon has to bind its queue before the inject fails.
READY_SECONDS = 10.0


class LatencyFault(NetworkFault):
    kind = 'latency'

    def validate(self):
        params = self.params
        try:
            _netcmd.check_range('delay_ms', params['delay_ms'], 0, 60000)
            _netcmd.check_range('jitter_ms', params['jitter_ms'], 0, 60000)
            _netcmd.check_range('loss_pct', params['loss_pct'], 0, 100)
        except _netcmd.SelectorError as exc:
            self.fail(str(exc))
        if not (params['delay_ms'] or params['jitter_ms'] or params['loss_pct']) and params['method'] != 'nfqueue':
            self.fail('nothing to inject: delay_ms, jitter_ms and loss_pct are all 0 '
                      '(method nfqueue allows it, to measure the daemon alone)')
        super(LatencyFault, self).validate()

    def observe(self):
        return self.observe_chains()

    def in_place(self, record, current):
        detail = record['detail']
        if detail.get('method') == 'netem':
            return self.root_qdisc(detail['interface'])[1] == _netcmd.OUR_HANDLE
        daemons = [s for s in record['undo'] if s.get('type') == 'kill_process']
        if detail.get('method') == 'nfqueue' and (not daemons or detail.get('queue') not in self.queues_seen()):
            return False  # a daemon that lost its queue delays nothing (--queue-bypass)
        return (all(current['chains'].get(c) for c in detail.get('chains', []))
                and all(_steps.same_process(s['pid'], s.get('starttime'), s.get('match')) for s in daemons))

    def queues_seen(self):
        """bound_queues(), or {} when the table cannot be read (then nothing is proven bound)."""
        try:
            return self.bound_queues()
        except (IOError, OSError):
            return {}

    def refuse_held_queue(self, queue):
        try:
            holder = self.bound_queues().get(queue)
        except (IOError, OSError) as exc:
            raise DaemonError('cannot read %s to check NFQUEUE %d: %s' % (self.NFQUEUE_PROC, queue, exc))
        if holder is not None:
            raise DaemonError('NFQUEUE %d is already bound by another program (netlink port id %d); '
                              'pggit.chaos never shares a queue: stop that program or revert the fault that owns it'
                              % (queue, holder))

    def choose_method(self, selector):
        params = self.params
        wanted = params['method']
        if not (params['delay_ms'] or params['jitter_ms']) and wanted == 'auto':
            return 'iptables'
        if wanted == 'auto':
            return 'netem' if selector['directions'] == ['out'] and self.netem_available() else 'nfqueue'
        if wanted == 'netem':
            if selector['directions'] != ['out']:
                self.fail("method netem delays egress only: use direction 'out', or method nfqueue for '%s'"
                          % params['direction'])
            if not self.netem_available():
                self.fail('method netem: this kernel has no sch_netem ("Specified qdisc kind is unknown"); use method nfqueue')
        return wanted

    def plan(self, current):
        record = self.module_record()
        selector = self.selector()
        method = self.choose_method(selector)
        detail = {'method': method, 'selector': selector, 'chains': []}
        params = self.params
        if method == 'netem':
            interface = self.interface_for(selector['peers'])
            self.refuse_foreign_qdisc(interface, record)
            apply, undo = _netcmd.netem_plan(interface, selector['peers'], selector['port'], params['delay_ms'],
                                             params['jitter_ms'], params['loss_pct'], tc=self.bin('tc'))
            detail['interface'] = interface
        else:
            self.refuse_foreign_chains(self.fid, record)
            if method == 'iptables':
                target = _netcmd.loss_target(params['loss_pct'])
            else:
                detail['queue'] = _netcmd.queue_number(self.fid)
                if record is None:
                    try:
                        self.refuse_held_queue(detail['queue'])
                    except DaemonError as exc:
                        self.fail(str(exc))
                target = _netcmd.nfqueue_target(detail['queue'])
            apply, undo = _netcmd.chain_plan(self.fid, selector, target, iptables=self.bin('iptables'))
            detail['chains'] = [_netcmd.chains(self.fid)[d] for d in selector['directions']]
        detail['apply'] = apply
        return undo, detail, {'method': method, 'chains': dict((c, True) for c in detail['chains'])}

    def apply(self, detail):
        result = {'method': detail['method'], 'chains': detail['chains'], 'applied': detail['apply']}
        if detail['method'] == 'nfqueue':
            result.update(self.start_daemon(detail['queue']))
        self.run_all(detail['apply'])
        return result

    def start_daemon(self, queue):
        """Start the delay daemon, wait until its queue is bound, record it; all before any rule feeds the queue.

        If the module dies after spawn() and before the record holds the
        daemon, the daemon still goes: it exits when its record is gone (the
        reaper's revert) and at --until.
        """
        params = self.params
        self.refuse_held_queue(queue)
        record_path = os.path.join(self.ledger.faults_dir, self.record['id'] + '.json')
        daemon = _daemon.spawn(self.ledger.state_dir, DAEMON_TAG, [
            '--queue', str(queue), '--delay-ms', str(params['delay_ms']), '--jitter-ms', str(params['jitter_ms']),
            '--loss-pct', str(params['loss_pct']), '--until', str(self.record['expires_at']), '--record', record_path],
            ready=lambda: queue in self.queues_seen(), ready_timeout=READY_SECONDS)
        self.add_undo_first({'type': 'kill_process', 'pid': daemon['pid'], 'starttime': daemon['starttime'], 'match': DAEMON_TAG})
        return {'queue': queue, 'daemon': {'pid': daemon['pid'], 'starttime': daemon['starttime']}}


def main():
    argument_spec = selector_argument_spec()
    argument_spec.update(
        delay_ms=dict(type='int', default=100),
        jitter_ms=dict(type='int', default=0),
        loss_pct=dict(type='float', default=0),
        method=dict(type='str', default='auto', choices=['auto', 'netem', 'nfqueue']),
        interface=dict(type='str'),
    )
    ChaosModule(argument_spec).run(LatencyFault)


if __name__ == '__main__':
    main()
