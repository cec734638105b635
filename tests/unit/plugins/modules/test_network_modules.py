from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils import basic

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _ledger, _netcmd, _reaper
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_bandwidth as bandwidth
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_latency as latency
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_partition as partition

IPT = '/usr/sbin/iptables'
TC = '/usr/sbin/tc'
IP = '/usr/sbin/ip'
# Above any pid_max, so the revert engine never finds (or signals) a real process.
REAPER = {'pid': 99999991, 'starttime': 4242}
DAEMON = {'pid': 99999992, 'starttime': 4343, 'script': '/state/bin/pggit-chaos-nfqdelay'}
NO_CHAIN = (1, '', 'iptables: No chain/target/match by that name.\n')
ROUTE = '198.18.0.11 dev eth0 src 198.18.0.12 uid 0 \\    cache '
NOQUEUE = 'qdisc noqueue 0: root refcnt 2 \n'
FOREIGN = 'qdisc htb 1: root refcnt 2 r2q 10 default 0x30 direct_packets_stat 0 direct_qlen 1000\n'
OURS = 'qdisc htb 7a3c: root refcnt 2 r2q 10 default 0 direct_packets_stat 0 direct_qlen 1000\n'


class Commands(object):
    """Fake run_command: records argv, answers by the longest matching argv prefix (default rc 0)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.calls = []
        self.replies = {}
        self.ledger_at_first_create = None

    def reply(self, prefix, rc=0, out='', err=''):
        self.replies[tuple(prefix)] = (rc, out, err)

    def run(self, args):
        argv = list(args)
        self.calls.append(argv)
        if self.ledger_at_first_create is None and (argv[2:3] == ['-N'] or argv[1:3] == ['qdisc', 'add']):
            self.ledger_at_first_create = self.ledger_records()
        for size in range(len(argv), 0, -1):
            if tuple(argv[:size]) in self.replies:
                return self.replies[tuple(argv[:size])]
        return 0, '', ''

    def ledger_records(self):
        faults = os.path.join(self.state_dir, 'faults')
        if not os.path.isdir(faults):
            return {}
        records = {}
        for entry in os.listdir(faults):
            if entry.endswith('.json') and not entry.startswith('.'):
                with open(os.path.join(faults, entry)) as handle:
                    records[entry[:-len('.json')]] = json.load(handle)
        return records

    def mutating(self):
        return [argv for argv in self.calls if not is_read_only(argv)]


def is_read_only(argv):
    return (argv[1:3] == ['-w', '-S'] or argv[1:3] == ['qdisc', 'show'] or argv[1:3] == ['-o', 'route']
            or argv[1:] == ['-n', '-q', 'sch_netem'])


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / 'state')


@pytest.fixture
def commands(monkeypatch, state_dir):
    fake = Commands(state_dir)
    fake.missing = set()

    def run_command(module, args, **kwargs):
        return fake.run(args)

    def get_bin_path(module, arg, required=False, opt_dirs=None):
        return None if arg in fake.missing else '/usr/sbin/' + arg
    monkeypatch.setattr(basic.AnsibleModule, 'run_command', run_command)
    monkeypatch.setattr(basic.AnsibleModule, 'get_bin_path', get_bin_path)
    fake.reply([IPT, '-w', '-S'], *NO_CHAIN)
    return fake


@pytest.fixture
def spawned(monkeypatch, commands):
    """Fake reaper: arm() and spawn() record their calls and start nothing."""
    calls = {'arm': [], 'spawn': []}

    def arm(ledger, fid, python=None):
        calls['arm'].append(fid)
        return dict(REAPER)

    def spawn(state_dir, tag, args, python=None):
        calls['spawn'].append({'state_dir': state_dir, 'tag': tag, 'args': list(args), 'calls_before': len(commands.calls)})
        return dict(DAEMON)
    monkeypatch.setattr(_reaper, 'arm', arm)
    monkeypatch.setattr(_daemon, 'spawn', spawn)
    return calls


@pytest.fixture
def netem(monkeypatch):
    """Set whether the kernel has sch_netem loaded; other paths are looked up for real."""
    real_isdir = os.path.isdir
    loaded = []

    def isdir(path):
        if path == '/sys/module/sch_netem':
            return bool(loaded)
        return real_isdir(path)
    monkeypatch.setattr(os.path, 'isdir', isdir)
    return loaded


def read_record(state_dir, fid):
    return _ledger.Ledger(state_dir).read(fid)


def chain_names(fid):
    names = _netcmd.chains(fid)
    return names['in'], names['out']


def checks(fid):
    return [[IPT, '-w', '-S', chain] for chain in chain_names(fid)]


def selector(directions, peers=(), port=None, exclude_peers=()):
    return {'directions': directions, 'peers': list(peers), 'port': port, 'exclude_peers': list(exclude_peers),
            'keep_ssh': True, 'keep_loopback': True}


# -- partition ------------------------------------------------------------

PARTITION = {'name': 'split', 'peers': ['198.18.0.11'], 'port': 5432, 'exclude_peers': ['198.18.0.13']}
PFID = 'partition--split'


def partition_plan():
    return _netcmd.chain_plan(PFID, selector(['in', 'out'], ['198.18.0.11/32'], 5432, ['198.18.0.13/32']), ['-j', 'DROP'],
                                iptables=IPT)


def run_partition(state_dir, check_mode=False, **options):
    args = dict(PARTITION, state_dir=state_dir)
    args.update(options)
    return run_module(partition.main, args, check_mode=check_mode)


def test_partition_present_records_then_applies_the_plan(commands, spawned, state_dir):
    apply, undo = partition_plan()
    result, failed = run_partition(state_dir)
    assert not failed, result['msg']
    assert result['changed'] is True
    assert commands.calls == checks(PFID) * 2 + apply  # observed, checked for foreign chains, applied
    assert result['chains'] == list(chain_names(PFID))
    assert result['applied'] == apply
    before = commands.ledger_at_first_create[PFID]
    assert (before['status'], before['undo']) == ('pending', undo)
    record = read_record(state_dir, PFID)
    assert (record['status'], record['undo'], record['reaper']) == ('active', undo, REAPER)
    assert spawned == {'arm': [PFID], 'spawn': []}


def test_partition_check_mode_changes_nothing(commands, spawned, state_dir):
    apply, _undo = partition_plan()
    result, failed = run_partition(state_dir, check_mode=True)
    assert not failed, result['msg']
    assert result['changed'] is True
    assert result['planned']['apply'] == apply
    assert commands.mutating() == []
    assert not os.path.exists(state_dir)
    assert spawned == {'arm': [], 'spawn': []}


def test_partition_second_present_is_unchanged(commands, spawned, state_dir):
    run_partition(state_dir)
    commands.calls[:] = []
    commands.reply([IPT, '-w', '-S'], 0, '-N chain\n')
    result, failed = run_partition(state_dir)
    assert (failed, result['changed']) == (False, False)
    assert 'already in place' in result['msg']
    assert commands.calls == checks(PFID)
    assert spawned['arm'] == [PFID]


def test_partition_present_again_when_chains_vanished_reapplies(commands, spawned, state_dir):
    apply, undo = partition_plan()
    run_partition(state_dir)
    commands.calls[:] = []
    result, failed = run_partition(state_dir)  # -S still says: no chain
    assert (failed, result['changed']) == (False, True)
    stale_revert = [step['argv'] for step in reversed(undo)]
    assert commands.calls == checks(PFID) + stale_revert + apply  # the record owns the chains: no foreign check
    assert read_record(state_dir, PFID)['status'] == 'active'


@pytest.mark.parametrize('undo_rc', [0, 1])  # 1: already gone
def test_partition_absent_runs_the_undo_in_reverse(commands, spawned, state_dir, undo_rc):
    _apply, undo = partition_plan()
    run_partition(state_dir)
    commands.calls[:] = []
    for flag in ('-D', '-F', '-X'):
        commands.reply([IPT, '-w', flag], undo_rc, '', 'iptables: No chain/target/match by that name.\n' if undo_rc else '')
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert not failed, result['msg']
    assert result['changed'] is True
    assert result['revert']['result'] == 'reverted'
    assert commands.calls == [step['argv'] for step in reversed(undo)]
    assert read_record(state_dir, PFID) is None


def test_partition_absent_without_record_is_unchanged(commands, spawned, state_dir):
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert (failed, result['changed']) == (False, False)
    assert commands.calls == []


def test_partition_failed_rule_rolls_back(commands, spawned, state_dir):
    apply, undo = partition_plan()
    chain_in = chain_names(PFID)[0]
    commands.reply([IPT, '-w', '-A', chain_in], 1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n')
    result, failed = run_partition(state_dir)
    assert failed
    broken = apply[1]
    assert broken[:4] == [IPT, '-w', '-A', chain_in]
    assert commands.calls == checks(PFID) * 2 + apply[:2] + [step['argv'] for step in reversed(undo)]
    assert result['msg'] == ('injecting partition--split failed: %s exited 1: iptables: Bad rule (does a matching rule exist in that chain?).;'
                             ' rolled back: reverted' % ' '.join(broken))
    assert result['rollback']['result'] == 'reverted'
    assert read_record(state_dir, PFID) is None


@pytest.mark.parametrize('check_mode', [False, True])
def test_partition_refuses_a_foreign_chain(commands, spawned, state_dir, check_mode):
    chain_out = chain_names(PFID)[1]
    commands.reply([IPT, '-w', '-S', chain_out], 0, '-N %s\n' % chain_out)
    result, failed = run_partition(state_dir, check_mode=check_mode)
    assert failed
    assert result['msg'] == ('chain %s exists but no ledger record owns it; run playbooks/revert.yml or delete it by hand' % chain_out)
    assert commands.mutating() == []
    assert commands.ledger_records() == {}
    assert spawned == {'arm': [], 'spawn': []}


@pytest.mark.parametrize('options, message', [
    ({'peers': ['db1']}, "peers: 'db1' is not an IP address or network"),
    ({'peers': [], 'port': None}, 'select the traffic: give peers, a port, or full_isolation=true (got none of them)'),
    ({'port': 70000}, 'port must be between 1 and 65535, got 70000'),
])
def test_partition_refuses_bad_selectors_before_running_anything(commands, spawned, state_dir, options, message):
    result, failed = run_partition(state_dir, **options)
    assert (failed, result['msg']) == (True, message)
    assert commands.calls == []


# -- latency --------------------------------------------------------------

LFID = 'latency--slow'


def run_latency(state_dir, check_mode=False, **options):
    args = {'name': 'slow', 'port': 5432, 'state_dir': state_dir}
    args.update(options)
    return run_module(latency.main, args, check_mode=check_mode)


@pytest.mark.parametrize('direction, modprobe, probe', [
    ('out', None, []),  # no sch_netem loaded and no modprobe
    ('out', 1, [['/usr/sbin/modprobe', '-n', '-q', 'sch_netem']]),  # modprobe cannot find it
    ('in', 0, []),  # netem cannot delay ingress: not even asked
])
def test_latency_auto_without_netem_uses_nfqueue(commands, spawned, netem, state_dir, direction, modprobe, probe):
    if modprobe is None:
        commands.missing.add('modprobe')
    else:
        commands.reply(['/usr/sbin/modprobe'], modprobe)
    queue = _netcmd.queue_number(LFID)
    apply, undo = _netcmd.chain_plan(LFID, selector([direction], port=5432), _netcmd.nfqueue_target(queue), iptables=IPT)
    result, failed = run_latency(state_dir, direction=direction)
    assert not failed, result['msg']
    assert (result['changed'], result['method'], result['queue']) == (True, 'nfqueue', queue)
    assert result['daemon'] == {'pid': DAEMON['pid'], 'starttime': DAEMON['starttime']}
    assert commands.calls == checks(LFID) + probe + checks(LFID) + apply
    record = read_record(state_dir, LFID)
    path = os.path.join(state_dir, 'faults', LFID + '.json')
    assert spawned['spawn'] == [{'state_dir': state_dir, 'tag': 'pggit-chaos-nfqdelay', 'calls_before': len(commands.calls) - len(apply),
                                 'args': ['--queue', str(queue), '--delay-ms', '100', '--jitter-ms', '0', '--loss-pct', '0.0',
                                          '--until', str(record['expires_at']), '--record', path]}]
    daemon_step = {'type': 'kill_process', 'pid': DAEMON['pid'], 'starttime': DAEMON['starttime'], 'match': 'pggit-chaos-nfqdelay'}
    assert record['undo'] == [daemon_step] + undo  # undone last, after the rules that feed the queue
    assert commands.ledger_at_first_create[LFID]['undo'][0] == daemon_step
    assert record['detail']['queue'] == queue


def test_latency_absent_reverts_rules_and_daemon(commands, spawned, netem, state_dir):
    run_latency(state_dir, direction='in')
    _apply, undo = _netcmd.chain_plan(LFID, selector(['in'], port=5432), _netcmd.nfqueue_target(1), iptables=IPT)
    commands.calls[:] = []
    result, failed = run_module(latency.main, {'name': 'slow', 'state': 'absent', 'state_dir': state_dir})
    assert (failed, result['changed'], result['revert']['result']) == (False, True, 'reverted')
    assert commands.calls == [step['argv'] for step in reversed(undo)]  # the daemon step runs no command
    assert read_record(state_dir, LFID) is None


def test_latency_loss_only_needs_no_daemon(commands, spawned, netem, state_dir):
    apply, undo = _netcmd.chain_plan(LFID, selector(['in', 'out'], port=5432), _netcmd.loss_target(30), iptables=IPT)
    result, failed = run_latency(state_dir, delay_ms=0, loss_pct=30)
    assert not failed, result['msg']
    assert result['method'] == 'iptables'
    assert '--probability' in apply[-3] and '0.3000' in apply[-3]
    assert commands.calls == checks(LFID) * 2 + apply
    assert spawned['spawn'] == []
    assert read_record(state_dir, LFID)['undo'] == undo


@pytest.mark.parametrize('direction', ['in', 'both'])
def test_latency_netem_refuses_ingress(commands, spawned, netem, state_dir, direction):
    netem.append(True)
    result, failed = run_latency(state_dir, method='netem', direction=direction)
    assert failed
    assert result['msg'] == "method netem delays egress only: use direction 'out', or method nfqueue for '%s'" % direction
    assert commands.mutating() == []
    assert commands.ledger_records() == {}


def test_latency_netem_refuses_a_kernel_without_it(commands, spawned, netem, state_dir):
    commands.missing.add('modprobe')
    result, failed = run_latency(state_dir, method='netem', direction='out')
    assert failed
    assert result['msg'] == 'method netem: this kernel has no sch_netem ("Specified qdisc kind is unknown"); use method nfqueue'
    assert commands.mutating() == []


@pytest.mark.parametrize('method', ['auto', 'netem'])
def test_latency_netem_shapes_egress(commands, spawned, netem, state_dir, method):
    netem.append(True)
    commands.reply([IP, '-o', 'route', 'get'], 0, ROUTE)
    commands.reply([TC, 'qdisc', 'show', 'dev', 'eth0'], 0, NOQUEUE)
    apply, undo = _netcmd.netem_plan('eth0', ['198.18.0.11/32'], 5432, 100, 10, 0.0, tc=TC)
    result, failed = run_latency(state_dir, method=method, direction='out', peers=['198.18.0.11'], jitter_ms=10)
    assert not failed, result['msg']
    assert (result['changed'], result['method']) == (True, 'netem')
    assert commands.calls == checks(LFID) + [[IP, '-o', 'route', 'get', '198.18.0.11'], [TC, 'qdisc', 'show', 'dev', 'eth0']] + apply
    record = read_record(state_dir, LFID)
    assert (record['undo'], record['detail']['interface']) == (undo, 'eth0')
    assert commands.ledger_at_first_create[LFID]['undo'] == undo
    assert spawned['spawn'] == []


def test_latency_netem_refuses_a_foreign_root_qdisc(commands, spawned, netem, state_dir):
    netem.append(True)
    commands.reply([IP, '-o', 'route', 'get'], 0, ROUTE)
    commands.reply([TC, 'qdisc', 'show', 'dev', 'eth0'], 0, FOREIGN)
    result, failed = run_latency(state_dir, method='netem', direction='out', peers=['198.18.0.11'])
    assert failed
    assert result['msg'] == "root qdisc 'htb 1:' on eth0 was not created by pggit.chaos; refusing to replace it"
    assert commands.mutating() == []
    assert commands.ledger_records() == {}


@pytest.mark.parametrize('options, message', [
    ({'delay_ms': -5}, 'delay_ms must be between 0 and 60000, got -5'),
    ({'jitter_ms': 60001}, 'jitter_ms must be between 0 and 60000, got 60001'),
    ({'loss_pct': 101}, 'loss_pct must be between 0 and 100, got 101.0'),
    ({'delay_ms': 0}, 'nothing to inject: delay_ms, jitter_ms and loss_pct are all 0 (method nfqueue allows it, to measure the daemon alone)'),
])
def test_latency_refuses_bad_amounts(commands, spawned, netem, state_dir, options, message):
    result, failed = run_latency(state_dir, **options)
    assert (failed, result['msg']) == (True, message)
    assert commands.calls == []


# -- bandwidth ------------------------------------------------------------

BFID = 'bandwidth--thin'
ROUTE_GET = [IP, '-o', 'route', 'get', '198.18.0.11']
QDISC_SHOW = [TC, 'qdisc', 'show', 'dev', 'eth0']


@pytest.fixture
def routed(commands):
    commands.reply([IP, '-o', 'route', 'get'], 0, ROUTE)
    commands.reply(QDISC_SHOW, 0, NOQUEUE)
    return commands


def run_bandwidth(state_dir, check_mode=False, **options):
    args = {'name': 'thin', 'peers': ['198.18.0.11'], 'rate_kbit': 1000, 'state_dir': state_dir}
    args.update(options)
    return run_module(bandwidth.main, args, check_mode=check_mode)


@pytest.mark.parametrize('port', [None, 5432])
def test_bandwidth_present_shapes_the_routed_interface(routed, spawned, state_dir, port):
    apply, undo = _netcmd.htb_plan('eth0', ['198.18.0.11/32'], port, 1000, tc=TC)
    result, failed = run_bandwidth(state_dir, port=port)
    assert not failed, result['msg']
    assert (result['changed'], result['interface'], result['applied']) == (True, 'eth0', apply)
    assert routed.calls == [ROUTE_GET, QDISC_SHOW, QDISC_SHOW] + apply
    assert routed.ledger_at_first_create[BFID]['status'] == 'pending'
    assert routed.ledger_at_first_create[BFID]['undo'] == undo
    assert read_record(state_dir, BFID)['undo'] == undo


def test_bandwidth_check_mode_changes_nothing(routed, spawned, state_dir):
    result, failed = run_bandwidth(state_dir, check_mode=True)
    assert (failed, result['changed']) == (False, True)
    assert routed.mutating() == []
    assert not os.path.exists(state_dir)


def test_bandwidth_second_present_is_unchanged(routed, spawned, state_dir):
    run_bandwidth(state_dir)
    routed.calls[:] = []
    routed.reply(QDISC_SHOW, 0, OURS)
    result, failed = run_bandwidth(state_dir)
    assert (failed, result['changed']) == (False, False)
    assert routed.calls == [ROUTE_GET, QDISC_SHOW]


@pytest.mark.parametrize('check_mode', [False, True])
def test_bandwidth_refuses_a_foreign_root_qdisc(routed, spawned, state_dir, check_mode):
    routed.reply(QDISC_SHOW, 0, FOREIGN)
    result, failed = run_bandwidth(state_dir, check_mode=check_mode)
    assert failed
    assert result['msg'] == "root qdisc 'htb 1:' on eth0 was not created by pggit.chaos; refusing to replace it"
    assert routed.mutating() == []
    assert routed.ledger_records() == {}


def test_bandwidth_without_a_route_fails_clearly(commands, spawned, state_dir):
    commands.reply([IP, '-o', 'route', 'get'], 2, '', 'RTNETLINK answers: Network is unreachable\n')
    result, failed = run_bandwidth(state_dir)
    assert failed
    assert result['msg'] == 'interface: no route to 198.18.0.11 to find the interface: RTNETLINK answers: Network is unreachable'
    assert commands.mutating() == []


@pytest.mark.parametrize('undo_rc', [0, 2])  # 2: the qdisc is already gone
def test_bandwidth_absent_needs_no_rate(routed, spawned, state_dir, undo_rc):
    run_bandwidth(state_dir)
    routed.calls[:] = []
    routed.reply([TC, 'qdisc', 'del'], undo_rc, '', 'Error: Cannot delete qdisc with handle of zero.\n' if undo_rc else '')
    result, failed = run_module(bandwidth.main, {'name': 'thin', 'state': 'absent', 'state_dir': state_dir})
    assert not failed, result['msg']
    assert (result['changed'], result['revert']['result']) == (True, 'reverted')
    assert routed.calls == [[TC, 'qdisc', 'del', 'dev', 'eth0', 'root', 'handle', '7a3c:']]
    assert read_record(state_dir, BFID) is None


def test_bandwidth_absent_without_record_is_unchanged(commands, spawned, state_dir):
    result, failed = run_module(bandwidth.main, {'name': 'thin', 'state': 'absent', 'state_dir': state_dir})
    assert (failed, result['changed']) == (False, False)
    assert commands.calls == []


def test_bandwidth_present_needs_a_rate(routed, spawned, state_dir):
    result, failed = run_module(bandwidth.main, {'name': 'thin', 'peers': ['198.18.0.11'], 'state_dir': state_dir})
    assert failed
    assert 'rate_kbit' in result['msg']
    assert routed.calls == []
