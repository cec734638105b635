# Copyright: pggit.chaos contributors
# MIT License
"""Network fault helpers: selectors, owned iptables chains, tc argv.

Pure functions that build argv lists; the modules run them with
``run_command`` and record their inverse in the ledger as typed undo steps
(``iptables_chain``, ``tc_qdisc``; see ``_steps``), never as command lines.
Every chain we create is named ``pggit-chaos-<hash>-in|out`` and every root
qdisc we add carries the handle ``7a3c:``, so a revert removes ours and never
touches anyone else's.
"""
from __future__ import annotations

import hashlib
import ipaddress

from ansible_collections.pggit.chaos.plugins.module_utils import _steps
from ansible_collections.pggit.chaos.plugins.module_utils._validate import RangeError, range_error

CHAIN_PREFIX = _steps.CHAIN_PREFIX
HOOKS = {'in': 'INPUT', 'out': 'OUTPUT'}
SSH_PORT = 22
# Root qdiscs the kernel installs by itself; anything else belongs to someone.
DEFAULT_QDISCS = ('noqueue', 'pfifo_fast', 'mq', 'fq_codel', 'fq', 'pfifo', 'noop')
OUR_HANDLE = _steps.TC_HANDLE
# Shared with the undo handlers, which run where this file is not installed.
parse_root_qdisc = _steps.parse_root_qdisc
parse_iptables = _steps.parse_iptables


class SelectorError(RangeError):
    pass


def chains(fault_id):
    digest = hashlib.sha1(fault_id.encode('utf-8')).hexdigest()[:8]
    return {'in': CHAIN_PREFIX + digest + '-in', 'out': CHAIN_PREFIX + digest + '-out'}


def parse_networks(values, option):
    """Validate addresses or CIDRs; return them normalised as strings."""
    nets = []
    for value in values or []:
        try:
            nets.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError:
            raise SelectorError("%s: '%s' is not an IP address or network" % (option, value))
    for net in nets:
        if ipaddress.ip_network(net).version != 4:
            raise SelectorError("%s: '%s' is IPv6; only IPv4 is supported for now" % (option, net))
    return nets


def check_range(name, value, low, high, unit=''):
    msg = range_error(name, value, low, high, unit)
    if msg:
        raise SelectorError(msg)


def _match(direction, peer=None, port=None):
    """iptables match args for one direction ('in' or 'out')."""
    args = []
    if peer:
        args += ['-s' if direction == 'in' else '-d', peer]
    if port:
        args += ['-p', 'tcp', '--dport' if direction == 'in' else '--sport', str(port)]
    return args


def rule_matches(direction, peers, port):
    """One match per peer (or one for the port alone)."""
    if peers:
        return [_match(direction, peer, port) for peer in peers]
    return [_match(direction, None, port)]


def exclusions(direction, keep_ssh=True, keep_loopback=True, exclude_peers=()):
    """RETURN rules that go first in our chain, so these flows are never hit."""
    rules = []
    if keep_loopback:
        rules.append(['-i' if direction == 'in' else '-o', 'lo'])
    if keep_ssh:
        rules.append(['-p', 'tcp', '--dport', str(SSH_PORT)])
        rules.append(['-p', 'tcp', '--sport', str(SSH_PORT)])
    for peer in exclude_peers:
        rules.append(['-s' if direction == 'in' else '-d', peer])
    return rules


def chain_plan(fault_id, selector, target, iptables='iptables'):
    """argv to apply, and undo steps, for a selector and a target.

    ``selector``: {'directions': ['in', 'out'], 'peers': [...], 'port': int|None,
    'keep_ssh': bool, 'keep_loopback': bool, 'exclude_peers': [...]}.
    ``target``: the rule's target args, such as ['-j', 'DROP'].
    Undo steps (one ``iptables_chain`` per chain: unhook, flush, delete) are
    listed in application order (the engine runs them reversed).
    """
    names = chains(fault_id)
    apply, undo = [], []
    for direction in selector['directions']:
        chain = names[direction]
        apply.append([iptables, '-w', '-N', chain])
        undo.append({'type': 'iptables_chain', 'chain': chain, 'hook': HOOKS[direction]})
        for match in exclusions(direction, selector.get('keep_ssh', True), selector.get('keep_loopback', True),
                                selector.get('exclude_peers') or ()):
            apply.append([iptables, '-w', '-A', chain] + match + ['-j', 'RETURN'])
        for match in rule_matches(direction, selector.get('peers'), selector.get('port')):
            apply.append([iptables, '-w', '-A', chain] + match + list(target))
    for direction in selector['directions']:
        apply.append([iptables, '-w', '-I', HOOKS[direction], '1', '-j', names[direction]])
    return apply, undo


def qdisc_undo(interface):
    """The undo of a root qdisc we add: delete it if its handle is still ours."""
    return [{'type': 'tc_qdisc', 'interface': interface, 'handle': OUR_HANDLE}]


def loss_target(percent):
    return ['-m', 'statistic', '--mode', 'random', '--probability', '%.4f' % (percent / 100.0), '-j', 'DROP']


def nfqueue_target(queue):
    return ['-j', 'NFQUEUE', '--queue-num', str(queue), '--queue-bypass']


def queue_number(fault_id):
    """A stable NFQUEUE number per fault, away from 0 where others usually sit."""
    return 1000 + int(hashlib.sha1(fault_id.encode('utf-8')).hexdigest()[:4], 16) % 30000


def netem_plan(interface, peers, port, delay_ms, jitter_ms=0, loss_pct=0, tc='tc'):
    """prio + netem + u32 filters: only matching egress traffic is delayed."""
    netem = ['delay', '%dms' % delay_ms]
    if jitter_ms:
        netem += ['%dms' % jitter_ms, 'distribution', 'normal']
    if loss_pct:
        netem += ['loss', '%g%%' % loss_pct]
    handle = OUR_HANDLE
    apply = [
        [tc, 'qdisc', 'add', 'dev', interface, 'root', 'handle', handle, 'prio', 'bands', '4',
         'priomap', '1', '2', '2', '2', '1', '2', '0', '0', '1', '1', '1', '1', '1', '1', '1', '1'],
        [tc, 'qdisc', 'add', 'dev', interface, 'parent', handle + '4', 'handle', '7a3d:', 'netem'] + netem,
    ]
    for match in _u32_matches(peers, port):
        apply.append([tc, 'filter', 'add', 'dev', interface, 'protocol', 'ip', 'parent', handle, 'prio', '1', 'u32']
                     + match + ['flowid', handle + '4'])
    return apply, qdisc_undo(interface)


def htb_plan(interface, peers, port, rate_kbit, tc='tc'):
    """htb whose default passes traffic through; only matching flows are shaped."""
    handle = OUR_HANDLE
    apply = [
        [tc, 'qdisc', 'add', 'dev', interface, 'root', 'handle', handle, 'htb', 'default', '0'],
        [tc, 'class', 'add', 'dev', interface, 'parent', handle, 'classid', handle + '10', 'htb',
         'rate', '%dkbit' % rate_kbit, 'ceil', '%dkbit' % rate_kbit],
    ]
    for match in _u32_matches(peers, port):
        apply.append([tc, 'filter', 'add', 'dev', interface, 'protocol', 'ip', 'parent', handle, 'prio', '1', 'u32']
                     + match + ['flowid', handle + '10'])
    return apply, qdisc_undo(interface)


def _u32_matches(peers, port):
    port_match = ['match', 'ip', 'sport', str(port), '0xffff'] if port else []
    if peers:
        return [['match', 'ip', 'dst', peer] + port_match for peer in peers]
    return [port_match or ['match', 'u32', '0', '0']]


def parse_nfqueue(text):
    """{queue number: netlink port id} of the bound queues in /proc/net/netfilter/nfnetlink_queue."""
    queues = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].lstrip('-').isdigit():
            queues[int(fields[0])] = int(fields[1])
    return queues
