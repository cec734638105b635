from __future__ import annotations

import re

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _netcmd, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._netcmd import SelectorError

FID = 'partition--split'
IN = _netcmd.chains(FID)['in']
OUT = _netcmd.chains(FID)['out']
DROP = ['-j', 'DROP']
SSH_IN = [['-p', 'tcp', '--dport', '22', '-j', 'RETURN'], ['-p', 'tcp', '--sport', '22', '-j', 'RETURN']]


def ipt(*args):
    return ['iptables', '-w'] + list(args)


def selector(directions, peers=(), port=None, keep_ssh=True, keep_loopback=True, exclude_peers=()):
    return {'directions': list(directions), 'peers': list(peers), 'port': port, 'keep_ssh': keep_ssh,
            'keep_loopback': keep_loopback, 'exclude_peers': list(exclude_peers)}


def appended(chain, rules):
    return [ipt('-A', chain, *rule) for rule in rules]


@pytest.mark.parametrize('sel, target, expected', [
    pytest.param(
        selector(['in'], peers=['10.0.0.1/32']), DROP,
        [ipt('-N', IN)]
        + appended(IN, [['-i', 'lo', '-j', 'RETURN']] + SSH_IN + [['-s', '10.0.0.1/32', '-j', 'DROP']])
        + [ipt('-I', 'INPUT', '1', '-j', IN)],
        id='in-peer-defaults'),
    pytest.param(
        selector(['out'], port=5432, keep_ssh=False, keep_loopback=False), DROP,
        [ipt('-N', OUT), ipt('-A', OUT, '-p', 'tcp', '--sport', '5432', '-j', 'DROP'), ipt('-I', 'OUTPUT', '1', '-j', OUT)],
        id='out-port-no-exclusions'),
    pytest.param(
        selector(['in'], port=5432, keep_ssh=False), DROP,
        [ipt('-N', IN), ipt('-A', IN, '-i', 'lo', '-j', 'RETURN'), ipt('-A', IN, '-p', 'tcp', '--dport', '5432', '-j', 'DROP'),
         ipt('-I', 'INPUT', '1', '-j', IN)],
        id='keep-ssh-false-drops-port-22-returns'),
    pytest.param(
        selector(['out'], peers=['10.0.0.2/32'], keep_loopback=False), DROP,
        [ipt('-N', OUT)] + appended(OUT, SSH_IN + [['-d', '10.0.0.2/32', '-j', 'DROP']]) + [ipt('-I', 'OUTPUT', '1', '-j', OUT)],
        id='keep-loopback-false-drops-lo'),
    pytest.param(
        selector(['in', 'out'], peers=['10.0.0.1/32', '10.0.1.0/24'], port=5432, keep_loopback=False,
                 exclude_peers=['10.0.0.9/32']),
        ['-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass'],
        [ipt('-N', IN)]
        + appended(IN, SSH_IN + [
            ['-s', '10.0.0.9/32', '-j', 'RETURN'],
            ['-s', '10.0.0.1/32', '-p', 'tcp', '--dport', '5432', '-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass'],
            ['-s', '10.0.1.0/24', '-p', 'tcp', '--dport', '5432', '-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass']])
        + [ipt('-N', OUT)]
        + appended(OUT, SSH_IN + [
            ['-d', '10.0.0.9/32', '-j', 'RETURN'],
            ['-d', '10.0.0.1/32', '-p', 'tcp', '--sport', '5432', '-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass'],
            ['-d', '10.0.1.0/24', '-p', 'tcp', '--sport', '5432', '-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass']])
        + [ipt('-I', 'INPUT', '1', '-j', IN), ipt('-I', 'OUTPUT', '1', '-j', OUT)],
        id='both-peers-port-excluded'),
    pytest.param(
        selector(['in', 'out'], exclude_peers=['10.0.0.9/32'], keep_ssh=False, keep_loopback=False), DROP,
        [ipt('-N', IN), ipt('-A', IN, '-s', '10.0.0.9/32', '-j', 'RETURN'), ipt('-A', IN, '-j', 'DROP'),
         ipt('-N', OUT), ipt('-A', OUT, '-d', '10.0.0.9/32', '-j', 'RETURN'), ipt('-A', OUT, '-j', 'DROP'),
         ipt('-I', 'INPUT', '1', '-j', IN), ipt('-I', 'OUTPUT', '1', '-j', OUT)],
        id='full-isolation-match-all'),
])
def test_chain_plan_apply(sel, target, expected):
    apply, _undo = _netcmd.chain_plan(FID, sel, target)
    assert apply == expected


@pytest.mark.parametrize('directions, undo', [
    (['in'], [{'type': 'iptables_chain', 'chain': IN, 'hook': 'INPUT'}]),
    (['out'], [{'type': 'iptables_chain', 'chain': OUT, 'hook': 'OUTPUT'}]),
    (['in', 'out'], [{'type': 'iptables_chain', 'chain': IN, 'hook': 'INPUT'},
                     {'type': 'iptables_chain', 'chain': OUT, 'hook': 'OUTPUT'}]),
])
def test_chain_plan_undo_is_one_typed_step_per_chain(directions, undo):
    _apply, steps = _netcmd.chain_plan(FID, selector(directions, port=5432), DROP, iptables='/usr/sbin/iptables')
    assert steps == undo  # no command line in the record: the handler finds iptables itself
    _steps.check_steps(steps, '/var/lib/pggit-chaos')


def test_chain_plan_uses_the_given_binary_everywhere():
    apply, _undo = _netcmd.chain_plan(FID, selector(['in', 'out'], port=1), DROP, iptables='/usr/sbin/iptables')
    assert {argv[0] for argv in apply} == {'/usr/sbin/iptables'}


@pytest.mark.parametrize('direction, keep_ssh, keep_loopback, excluded, rules', [
    ('in', True, True, [], [['-i', 'lo'], ['-p', 'tcp', '--dport', '22'], ['-p', 'tcp', '--sport', '22']]),
    ('out', True, True, [], [['-o', 'lo'], ['-p', 'tcp', '--dport', '22'], ['-p', 'tcp', '--sport', '22']]),
    ('in', False, False, ['10.0.0.9/32', '10.1.0.0/16'], [['-s', '10.0.0.9/32'], ['-s', '10.1.0.0/16']]),
    ('out', False, True, ['10.0.0.9/32'], [['-o', 'lo'], ['-d', '10.0.0.9/32']]),
    ('out', False, False, [], []),
])
def test_exclusions(direction, keep_ssh, keep_loopback, excluded, rules):
    assert _netcmd.exclusions(direction, keep_ssh, keep_loopback, excluded) == rules


PRIO = ['prio', 'bands', '4', 'priomap', '1', '2', '2', '2', '1', '2', '0', '0', '1', '1', '1', '1', '1', '1', '1', '1']
TC_ROOT = ['tc', 'qdisc', 'add', 'dev', 'eth0', 'root', 'handle', '7a3c:']
TC_NETEM = ['tc', 'qdisc', 'add', 'dev', 'eth0', 'parent', '7a3c:4', 'handle', '7a3d:', 'netem']
TC_FILTER = ['tc', 'filter', 'add', 'dev', 'eth0', 'protocol', 'ip', 'parent', '7a3c:', 'prio', '1', 'u32']
TC_UNDO = [{'type': 'tc_qdisc', 'interface': 'eth0', 'handle': '7a3c:'}]
SPORT = ['match', 'ip', 'sport', '5432', '0xffff']


@pytest.mark.parametrize('peers, port, delay, jitter, loss, netem, matches', [
    (['10.0.0.1/32'], None, 100, 0, 0, ['delay', '100ms'], [['match', 'ip', 'dst', '10.0.0.1/32']]),
    (['10.0.0.1/32', '10.0.1.0/24'], 5432, 250, 20, 0, ['delay', '250ms', '20ms', 'distribution', 'normal'],
     [['match', 'ip', 'dst', '10.0.0.1/32'] + SPORT, ['match', 'ip', 'dst', '10.0.1.0/24'] + SPORT]),
    ([], 5432, 100, 10, 2.5, ['delay', '100ms', '10ms', 'distribution', 'normal', 'loss', '2.5%'], [SPORT]),
    ([], None, 0, 0, 30.0, ['delay', '0ms', 'loss', '30%'], [['match', 'u32', '0', '0']]),
    ([], None, 5, 0, 0.1, ['delay', '5ms', 'loss', '0.1%'], [['match', 'u32', '0', '0']]),
])
def test_netem_plan(peers, port, delay, jitter, loss, netem, matches):
    apply, undo = _netcmd.netem_plan('eth0', peers, port, delay, jitter, loss)
    assert apply == ([TC_ROOT + PRIO, TC_NETEM + netem]
                     + [TC_FILTER + match + ['flowid', '7a3c:4'] for match in matches])
    assert undo == TC_UNDO


@pytest.mark.parametrize('peers, port, matches', [
    (['10.0.0.1/32'], None, [['match', 'ip', 'dst', '10.0.0.1/32']]),
    (['10.0.0.1/32', '10.0.0.2/32'], 5432, [['match', 'ip', 'dst', '10.0.0.1/32'] + SPORT, ['match', 'ip', 'dst', '10.0.0.2/32'] + SPORT]),
    ([], 5432, [SPORT]),
])
def test_htb_plan(peers, port, matches):
    apply, undo = _netcmd.htb_plan('eth0', peers, port, 1000)
    assert apply == ([TC_ROOT + ['htb', 'default', '0'],
                      ['tc', 'class', 'add', 'dev', 'eth0', 'parent', '7a3c:', 'classid', '7a3c:10', 'htb',
                       'rate', '1000kbit', 'ceil', '1000kbit']]
                     + [TC_FILTER + match + ['flowid', '7a3c:10'] for match in matches])
    assert undo == TC_UNDO


def test_tc_plans_use_the_given_binary():
    for plan in (_netcmd.netem_plan('eth0', [], 1, 10, tc='/sbin/tc'), _netcmd.htb_plan('eth0', [], 1, 8, tc='/sbin/tc')):
        apply, undo = plan
        assert {argv[0] for argv in apply} == {'/sbin/tc'}
        assert undo == TC_UNDO
        _steps.check_steps(undo, '/var/lib/pggit-chaos')


@pytest.mark.parametrize('values, nets', [
    (None, []),
    ([], []),
    (['10.0.0.1'], ['10.0.0.1/32']),
    ([' 10.0.0.0/24 ', '\t192.168.1.7\n'], ['10.0.0.0/24', '192.168.1.7/32']),
    (['10.0.0.5/24'], ['10.0.0.0/24']),  # host bits are cleared, not refused
    (['0.0.0.0/0', '198.18.0.11/32'], ['0.0.0.0/0', '198.18.0.11/32']),
])
def test_parse_networks(values, nets):
    assert _netcmd.parse_networks(values, 'peers') == nets


@pytest.mark.parametrize('option, values, message', [
    ('peers', ['db1'], "peers: 'db1' is not an IP address or network"),
    ('peers', ['10.0.0.1', '10.0.0.256'], "peers: '10.0.0.256' is not an IP address or network"),
    ('exclude_peers', ['10.0.0.0/33'], "exclude_peers: '10.0.0.0/33' is not an IP address or network"),
    ('peers', [''], "peers: '' is not an IP address or network"),
    ('peers', ['::1'], "peers: '::1/128' is IPv6; only IPv4 is supported for now"),
    ('exclude_peers', ['10.0.0.1', '2001:db8::/32'], "exclude_peers: '2001:db8::/32' is IPv6; only IPv4 is supported for now"),
])
def test_parse_networks_refuses(option, values, message):
    with pytest.raises(SelectorError) as err:
        _netcmd.parse_networks(values, option)
    assert str(err.value) == message


@pytest.mark.parametrize('args', [('port', None, 1, 65535), ('port', 1, 1, 65535), ('port', 65535, 1, 65535),
                                  ('loss_pct', 0.0, 0, 100), ('loss_pct', 100, 0, 100)])
def test_check_range_accepts(args):
    _netcmd.check_range(*args)


@pytest.mark.parametrize('args, message', [
    (('delay_ms', -5, 0, 60000), 'delay_ms must be between 0 and 60000, got -5'),
    (('port', 65536, 1, 65535), 'port must be between 1 and 65535, got 65536'),
    (('port', 0, 1, 65535), 'port must be between 1 and 65535, got 0'),
    (('loss_pct', 100.5, 0, 100, '%'), 'loss_pct must be between 0 and 100%, got 100.5'),
])
def test_check_range_refuses(args, message):
    with pytest.raises(SelectorError, match='^%s$' % re.escape(message)):
        _netcmd.check_range(*args)


@pytest.mark.parametrize('percent, probability', [(30, '0.3000'), (0.5, '0.0050'), (100, '1.0000'), (33.33, '0.3333'), (1, '0.0100')])
def test_loss_target(percent, probability):
    assert _netcmd.loss_target(percent) == ['-m', 'statistic', '--mode', 'random', '--probability', probability, '-j', 'DROP']


def test_nfqueue_target():
    assert _netcmd.nfqueue_target(1234) == ['-j', 'NFQUEUE', '--queue-num', '1234', '--queue-bypass']


IDS = ['latency--%s' % n for n in ['a', 'slow-clients', 'x' * 200] + list(range(200))]


def test_queue_number_is_stable_and_in_range():
    numbers = [_netcmd.queue_number(fid) for fid in IDS]
    assert numbers == [_netcmd.queue_number(fid) for fid in IDS]
    assert all(1000 <= n < 31000 for n in numbers)
    assert len(set(numbers)) > 0.95 * len(IDS)


def test_chains_fit_iptables_and_differ_per_fault():
    seen = set()
    for fid in IDS:
        names = _netcmd.chains(fid)
        assert names == _netcmd.chains(fid)
        assert sorted(names) == ['in', 'out']
        for direction, name in names.items():
            assert len(name) <= 28
            assert re.match(r'^pggit-chaos-[0-9a-f]{8}-%s$' % direction, name)
        assert names['in'][:-3] == names['out'][:-4]
        seen.update(names.values())
    assert len(seen) == 2 * len(IDS)


@pytest.mark.parametrize('text, root', [
    ('qdisc noqueue 0: root refcnt 2 \n', ('noqueue', '0:')),
    ('qdisc noqueue 0: root refcnt 2 \nqdisc ingress ffff: parent ffff:fff1 ----------------\n', ('noqueue', '0:')),
    ('qdisc htb 7a3c: root refcnt 2 r2q 10 default 0 direct_packets_stat 0 direct_qlen 1000\n', ('htb', '7a3c:')),
    ('qdisc prio 7a3c: root refcnt 2 bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1\n'
     'qdisc netem 7a3d: parent 7a3c:4 limit 1000 delay 100ms\n', ('prio', '7a3c:')),
    ('qdisc mq 0: root \n'
     'qdisc fq_codel 0: parent :2 limit 10240p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 32Mb ecn drop_batch 64 \n'
     'qdisc fq_codel 0: parent :1 limit 10240p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 32Mb ecn drop_batch 64 \n',
     ('mq', '0:')),
    ('qdisc pfifo_fast 0: root refcnt 2 bands 3 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1\n', ('pfifo_fast', '0:')),
    ('qdisc htb 1: root refcnt 2 r2q 10 default 0x30 direct_packets_stat 0 direct_qlen 1000\n', ('htb', '1:')),
    ('qdisc ingress ffff: parent ffff:fff1 ----------------\n', (None, None)),
    ('', (None, None)),
])
def test_parse_root_qdisc(text, root):
    assert _netcmd.parse_root_qdisc(text) == root


NFQ = ('  4242   7795     0 2  4016     0     0        0  1\n'
       ' 1234  -4113     0 2  8192     0     0       12  1\n')


@pytest.mark.parametrize('text, queues', [
    (NFQ, {4242: 7795, 1234: -4113}),
    ('', {}),
    ('garbage line\n', {}),
])
def test_parse_nfqueue(text, queues):
    assert _netcmd.parse_nfqueue(text) == queues


def test_chains_pass_the_undo_check():
    for fid in IDS:
        for direction, chain in _netcmd.chains(fid).items():
            _steps.check_steps([{'type': 'iptables_chain', 'chain': chain, 'hook': _netcmd.HOOKS[direction]}], None)
