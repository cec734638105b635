# Copyright: pggit.chaos contributors
# MIT License
"""Shared part of the network faults: selector options, ownership checks, argv runs."""
from __future__ import annotations

import errno
import os

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _netcmd
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import Fault

# The package that ships each tool the network faults run on the target, named when the tool is missing.
TOOL_PACKAGES = {
    'iptables': 'iptables (Debian/Ubuntu: apt-get install iptables; RHEL/Fedora: dnf install iptables-nft)',
    'tc': 'iproute2 (Debian/Ubuntu: apt-get install iproute2; RHEL/Fedora: dnf install iproute-tc)',
    'ip': 'iproute2 (Debian/Ubuntu: apt-get install iproute2; RHEL/Fedora: dnf install iproute)',
}


def selector_argument_spec():
    return dict(
        peers=dict(type='list', elements='str', default=[]),
        port=dict(type='int'),
        direction=dict(type='str', default='both', choices=['in', 'out', 'both']),
        exclude_peers=dict(type='list', elements='str', default=[]),
        include_loopback=dict(type='bool', default=False),
        full_isolation=dict(type='bool', default=False),
    )


class NetworkFault(Fault):
    """A fault made of argv runs whose inverse is recorded before they run."""

    NFQUEUE_PROC = '/proc/self/net/netfilter/nfnetlink_queue'

    def __init__(self, module):
        super(NetworkFault, self).__init__(module)
        self.fid = None
        self.seen_chains = set()

    def fail(self, msg):
        self.module.fail_json(msg=msg)

    def module_record(self):
        ledger = _ledger.Ledger(self.params['state_dir'])
        return ledger.read(self.fid) if ledger.exists() else None

    def observe_chains(self):
        self.fid = _ledger.fault_id(self.kind, self.params['name'])
        self.seen_chains = self.listed_chains()
        return {'chains': dict((c, c in self.seen_chains) for c in _netcmd.chains(self.fid).values())}

    def validate(self):
        self.selector()

    def selector(self):
        params = self.params
        try:
            peers = _netcmd.parse_networks(params['peers'], 'peers')
            excluded = _netcmd.parse_networks(params['exclude_peers'], 'exclude_peers')
            _netcmd.check_range('port', params['port'], 1, 65535)
        except _netcmd.SelectorError as exc:
            self.fail(str(exc))
        if not peers and not params['port'] and not params['full_isolation']:
            self.fail('select the traffic: give peers, a port, or full_isolation=true (got none of them)')
        directions = ['in', 'out'] if params['direction'] == 'both' else [params['direction']]
        return {'directions': directions, 'peers': peers, 'port': params['port'], 'exclude_peers': excluded,
                'keep_ssh': not params['full_isolation'], 'keep_loopback': not params['include_loopback']}

    def run_all(self, argvs):
        for argv in argvs:
            rc, out, err = self.module.run_command(argv)
            if rc != 0:
                raise RuntimeError('%s exited %s: %s' % (' '.join(argv), rc, (err or out).strip()))

    def bin(self, name):
        """The path of a tool the fault runs on the target; a failure that names its package when it is missing."""
        path = self.module.get_bin_path(name)
        if not path:
            self.fail('%s is not installed on this host (searched PATH and the sbin folders): install the package %s'
                      % (name, TOOL_PACKAGES.get(name, name)))
        return path

    # -- ownership ------------------------------------------------------
    def listed_chains(self):
        """The user chains in the filter table, seen in ``iptables -S`` (never guessed from an exit code)."""
        iptables = self.module.get_bin_path('iptables')
        if not iptables:
            return set()  # no iptables, so no chain of ours (netem needs none)
        argv = [iptables, '-w', '-S']
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            self.fail('cannot list iptables chains: %s exited %s: %s' % (' '.join(argv), rc, (err or out).strip()))
        return _netcmd.parse_iptables(out)[0]

    def refuse_foreign_chains(self, fault_id, record):
        if record is not None:
            return
        for chain in sorted(_netcmd.chains(fault_id).values()):
            if chain in self.seen_chains:
                self.fail('chain %s exists but no ledger record owns it; run playbooks/revert.yml or delete it by hand'
                          % chain)

    def bound_queues(self):
        """{queue: netlink port id} of the NFQUEUEs bound in this network namespace; {} when none can be seen."""
        try:
            with open(self.NFQUEUE_PROC) as handle:
                return _netcmd.parse_nfqueue(handle.read())
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                return {}  # nfnetlink_queue not loaded: nothing is bound
            raise

    def root_qdisc(self, interface):
        rc, out, err = self.module.run_command([self.bin('tc'), 'qdisc', 'show', 'dev', interface])
        if rc != 0:
            self.fail("interface: cannot read qdiscs of '%s': %s" % (interface, (err or out).strip()))
        return _netcmd.parse_root_qdisc(out)

    def refuse_foreign_qdisc(self, interface, record):
        kind, handle = self.root_qdisc(interface)
        if kind and kind not in _netcmd.DEFAULT_QDISCS and not (record and handle == _netcmd.OUR_HANDLE):
            self.fail("root qdisc '%s %s' on %s was not created by pggit.chaos; refusing to replace it"
                      % (kind, handle, interface))

    def interface_for(self, peers):
        if self.params.get('interface'):
            if not os.path.isdir('/sys/class/net/%s' % self.params['interface']):
                self.fail("interface: no such interface '%s'" % self.params['interface'])
            return self.params['interface']
        if not peers:
            self.fail('interface is required when no peers are given')
        target = peers[0].split('/')[0]
        rc, out, err = self.module.run_command([self.bin('ip'), '-o', 'route', 'get', target])
        fields = out.split()
        if rc != 0 or 'dev' not in fields:
            self.fail('interface: no route to %s to find the interface: %s' % (target, (err or out).strip()))
        return fields[fields.index('dev') + 1]

    def netem_available(self):
        if os.path.isdir('/sys/module/sch_netem'):
            return True
        modprobe = self.module.get_bin_path('modprobe')
        if not modprobe:
            return False
        rc, _out, _err = self.module.run_command([modprobe, '-n', '-q', 'sch_netem'])
        return rc == 0
