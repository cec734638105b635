"""Network faults on two real network namespaces joined by a veth pair.

Traffic stays between 198.18.x.1 and 198.18.x.2 (x random, 100-199), each in a
namespace the test creates and deletes. The faults run inside the target
namespace through the real ansible CLI, so the action plugins, AnsiballZ, the
ledger, the reaper and the NFQUEUE daemon all run as they do on a host.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid

import pytest

from adhoc import REPO_COLLECTIONS, adhoc, write_config
from waiting import wait_for
from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _netcmd

ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'echo.py')
PORT = 7777


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


class Pair(object):
    def __init__(self, tmp_path):
        tag = uuid.uuid4().hex[:5]
        self.client_ns, self.target_ns = 'pgn%sa' % tag, 'pgn%sb' % tag
        octet = random.randint(100, 199)
        self.client, self.target = '198.18.%d.1' % octet, '198.18.%d.2' % octet
        self.target_if = 'pgn%sb0' % tag
        self.state_dir = str(tmp_path / 'state')
        self.config = write_config(tmp_path)
        # The opt-in must come from the host's own inventory (extra vars cannot grant it).
        inventory = tmp_path / 'hosts.yml'
        inventory.write_text(json.dumps({'all': {'hosts': {'localhost': {
            'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable, 'pggit_chaos_allowed': True}}}}))
        with open(self.config, 'a') as handle:
            handle.write('inventory = %s\n' % inventory)
        self.server = None

    def up(self):
        for ns in (self.client_ns, self.target_ns):
            sh('ip', 'netns', 'add', ns)
            sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        sh('ip', 'link', 'add', self.target_if[:-2] + 'a0', 'type', 'veth', 'peer', 'name', self.target_if)
        sh('ip', 'link', 'set', self.target_if[:-2] + 'a0', 'netns', self.client_ns)
        sh('ip', 'link', 'set', self.target_if, 'netns', self.target_ns)
        sh('ip', '-n', self.client_ns, 'addr', 'add', self.client + '/24', 'dev', self.target_if[:-2] + 'a0')
        sh('ip', '-n', self.target_ns, 'addr', 'add', self.target + '/24', 'dev', self.target_if)
        sh('ip', '-n', self.client_ns, 'link', 'set', self.target_if[:-2] + 'a0', 'up')
        sh('ip', '-n', self.target_ns, 'link', 'set', self.target_if, 'up')
        self.server = subprocess.Popen(['ip', 'netns', 'exec', self.target_ns, sys.executable, ECHO, 'serve', self.target,
                                        str(PORT), '300'], start_new_session=True)
        assert wait_for(lambda: self.connect(1) == 'ok', 10), 'echo server did not come up'
        return self

    def down(self):
        adhoc(REPO_COLLECTIONS, self.config, 'pggit.chaos.pggit_chaos_revert', {'state_dir': self.state_dir},
              netns=self.target_ns)
        if self.server:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        sh('pkill', '-9', '-f', self.state_dir)
        for ns in (self.client_ns, self.target_ns):
            sh('ip', 'netns', 'del', ns)

    def fault(self, module, extra_vars=None, **args):
        args.setdefault('state_dir', self.state_dir)
        return adhoc(REPO_COLLECTIONS, self.config, 'pggit.chaos.' + module, args, netns=self.target_ns, extra_vars=extra_vars)

    def connect(self, timeout):
        return sh('ip', 'netns', 'exec', self.client_ns, sys.executable, ECHO, 'connect', self.target, str(PORT),
                  str(timeout)).stdout.strip()

    def rtts(self, seconds, size=1):
        out = sh('ip', 'netns', 'exec', self.client_ns, sys.executable, ECHO, 'rtt', self.target, str(PORT), str(seconds),
                 str(size)).stdout
        return [json.loads(line) for line in out.splitlines()]

    def rtt_in_background(self, seconds):
        return subprocess.Popen(['ip', 'netns', 'exec', self.client_ns, sys.executable, ECHO, 'rtt', self.target, str(PORT),
                                 str(seconds)], stdout=subprocess.PIPE, text=True)

    def target_rules(self):
        return sh('ip', 'netns', 'exec', self.target_ns, 'iptables', '-w', '-S').stdout

    def ledger(self):
        return _ledger.Ledger(self.state_dir).list() if os.path.isdir(self.state_dir) else []


def daemons(state_dir):
    return [line for line in sh('pgrep', '-af', 'pggit-chaos-nfqdelay').stdout.splitlines() if state_dir in line]


def p50(samples):
    return statistics.median(s['ms'] for s in samples)


@pytest.fixture
def pair(tmp_path):
    net = Pair(tmp_path).up()
    try:
        yield net
    finally:
        net.down()


def test_nfqueue_delay_is_real_hits_open_flows_and_reverts(pair):
    assert p50(pair.rtts(1)) < 5
    flow = pair.rtt_in_background(12)  # a connection opened before the fault
    time.sleep(1.5)
    injected_at = time.time()
    result = pair.fault('pggit_chaos_latency', name='slow', port=PORT, direction='in', delay_ms=100, ttl=60)
    in_place_at = time.time()  # the module returns once the daemon holds its queue and the rules feed it
    assert not result['failed'], result
    assert result['method'] == 'nfqueue' and result['queue'] >= 1000
    assert in_place_at + 3 < injected_at + 10.5, 'the inject took too long to leave a measurable window'
    samples = [json.loads(line) for line in flow.communicate()[0].splitlines()]
    before = [s for s in samples if s['at'] < injected_at]
    after = [s for s in samples if s['at'] > in_place_at + 0.2]
    assert before and p50(before) < 5
    assert after and 90 <= p50(after) <= 130, 'the open flow must be delayed: %s' % p50(after)
    assert 90 <= p50(pair.rtts(2)) <= 130, 'a new flow is delayed too'
    assert daemons(pair.state_dir)

    again = pair.fault('pggit_chaos_latency', name='slow', port=PORT, direction='in', delay_ms=100, ttl=60)
    assert not again['failed'] and again['changed'] is False

    reverted = pair.fault('pggit_chaos_latency', name='slow', state='absent')
    assert not reverted['failed'] and reverted['changed']
    assert p50(pair.rtts(1)) < 5
    assert 'pggit-chaos' not in pair.target_rules()
    assert wait_for(lambda: not daemons(pair.state_dir), 5)
    assert pair.ledger() == []


def test_partition_keeps_ssh_and_heals_by_ttl_alone(pair):
    result = pair.fault('pggit_chaos_partition', name='cut', peers=[pair.client], ttl=5)
    assert not result['failed'], result
    rules = pair.target_rules()
    chain = _netcmd.chains('partition--cut')['in']
    ours = [r for r in rules.splitlines() if r.startswith('-A %s ' % chain)]
    assert ours[0] == '-A %s -i lo -j RETURN' % chain
    assert '-A %s -p tcp -m tcp --dport 22 -j RETURN' % chain in ours
    assert ours[-1] == '-A %s -s %s/32 -j DROP' % (chain, pair.client)
    assert pair.connect(1).startswith('error'), 'the partition must really cut traffic'
    reaper = result['record']['reaper']
    assert wait_for(lambda: pair.connect(1) == 'ok', 15), 'not healed by the TTL'
    assert wait_for(lambda: pair.ledger() == [] and 'pggit-chaos' not in pair.target_rules(), 5)
    assert wait_for(lambda: sh('pgrep', '-f', 'pggit-chaos-reaper.*%s' % pair.state_dir).returncode == 1, 5), reaper


def test_full_isolation_cuts_ssh_too(pair):
    result = pair.fault('pggit_chaos_partition', name='all', peers=[pair.client], full_isolation=True, ttl=30)
    assert not result['failed'] and result['isolation'] == 'full'
    chain = _netcmd.chains('partition--all')['in']
    rules = pair.target_rules()
    assert '-A %s -s %s/32 -j DROP' % (chain, pair.client) in rules
    assert '--dport 22 -j RETURN' not in rules and '--sport 22 -j RETURN' not in rules
    assert pair.connect(1).startswith('error'), 'the isolation must really cut traffic'


def test_loss_alone_is_an_iptables_statistic_rule(pair):
    result = pair.fault('pggit_chaos_latency', name='lossy', port=PORT, delay_ms=0, loss_pct=30, ttl=30)
    assert not result['failed'] and result['method'] == 'iptables'
    assert re.search(r'--dport 7777 -m statistic --mode random --probability 0\.(29|30)\d* -j DROP', pair.target_rules())
    assert not daemons(pair.state_dir), 'loss alone needs no daemon'
    # A dropped SYN is only retransmitted after 1 s, so a 0.3 s connect fails.
    failures = sum(1 for _n in range(40) if pair.connect(0.3) != 'ok')
    assert 3 <= failures <= 30, 'about 30%% of 40 connects should fail, %d did' % failures


def test_a_chain_we_do_not_own_is_refused_and_left_alone(pair):
    chain = _netcmd.chains('partition--mine')['in']
    sh('ip', 'netns', 'exec', pair.target_ns, 'iptables', '-w', '-N', chain)
    result = pair.fault('pggit_chaos_partition', name='mine', peers=[pair.client], ttl=30)
    assert result['failed'] and 'chain %s exists but no ledger record owns it' % chain in result['msg']
    assert '-N %s' % chain in pair.target_rules()
    assert pair.ledger() == []


def test_netem_is_used_or_refused_plainly(pair):
    result = pair.fault('pggit_chaos_latency', name='nm', peers=[pair.client], direction='out', method='netem', ttl=30)
    if os.path.isdir('/sys/module/sch_netem'):
        assert not result['failed'] and result['method'] == 'netem'
    else:
        assert result['failed'] and 'this kernel has no sch_netem' in result['msg']
        assert pair.ledger() == []
    auto = pair.fault('pggit_chaos_latency', name='auto', peers=[pair.client], direction='out', delay_ms=50, ttl=30)
    assert not auto['failed'] and auto['method'] in ('netem', 'nfqueue')
    assert 45 <= p50(pair.rtts(1)) <= 75, 'auto must really delay egress by 50 ms'


def test_bandwidth_shapes_only_our_qdisc(pair):
    size = 100 * 1024
    baseline = pair.rtts(0.3, size)
    assert max(s['ms'] for s in baseline) < 200
    result = pair.fault('pggit_chaos_bandwidth', name='thin', peers=[pair.client], rate_kbit=800, ttl=60)
    assert not result['failed'] and result['interface'] == pair.target_if, result
    shaped = pair.rtts(0.1, size)[0]['ms']
    assert shaped >= 700, '100 KiB at 800 kbit/s takes about a second, took %.0f ms' % shaped
    reverted = pair.fault('pggit_chaos_bandwidth', name='thin', state='absent')
    assert not reverted['failed'] and reverted['changed'], reverted
    assert 'htb' not in sh('ip', 'netns', 'exec', pair.target_ns, 'tc', 'qdisc', 'show', 'dev', pair.target_if).stdout
    sh('ip', 'netns', 'exec', pair.target_ns, 'tc', 'qdisc', 'add', 'dev', pair.target_if, 'root', 'handle', '1:', 'htb')
    refused = pair.fault('pggit_chaos_bandwidth', name='thin', peers=[pair.client], rate_kbit=800, ttl=60)
    assert refused['failed'] and "root qdisc 'htb 1:'" in refused['msg'] and 'refusing to replace it' in refused['msg']


# -- reverts decide "gone" by looking (issue 6, item 5) ------------------------------------------------
def target(pair, *argv):
    return sh('ip', 'netns', 'exec', pair.target_ns, *argv)


def test_a_chain_still_referenced_keeps_its_record_and_says_why(pair):
    result = pair.fault('pggit_chaos_partition', name='held', peers=[pair.client], ttl=60)
    assert not result['failed'], result
    chain_in, chain_out = _netcmd.chains('partition--held')['in'], _netcmd.chains('partition--held')['out']
    foreign = ['FORWARD', '-s', '10.9.9.9/32', '-j', chain_in]  # a rule we did not make, using our chain
    assert target(pair, 'iptables', '-w', '-A', *foreign).returncode == 0
    assert pair.connect(1).startswith('error')

    reverted = pair.fault('pggit_chaos_partition', name='held', state='absent')
    assert reverted['failed'], reverted
    assert 'chain %s is still there after the revert: ' % chain_in in reverted['msg']
    assert re.search(r'iptables -w -X %s exited \d+: \S' % chain_in, reverted['msg']), reverted['msg']
    assert 'rules we did not make still use it: -A %s' % ' '.join(foreign) in reverted['msg']
    records = pair.ledger()
    assert [r['id'] for r in records] == ['partition--held'], 'the record must stay while the chain does'
    assert 'chain %s is still there' % chain_in in records[0]['last_error']
    rules = pair.target_rules()
    assert '-N %s' % chain_in in rules and '-A %s ' % chain_in not in rules, 'our chain is flushed, only its name stays'
    assert chain_out not in rules and '-A INPUT -j %s' % chain_in not in rules, 'everything else of ours went'
    assert pair.connect(1) == 'ok', 'the partition itself is lifted'

    assert target(pair, 'iptables', '-w', '-D', *foreign).returncode == 0
    again = pair.fault('pggit_chaos_partition', name='held', state='absent')
    assert not again['failed'] and again['changed'] and again['revert']['result'] == 'reverted', again
    assert 'pggit-chaos' not in pair.target_rules()
    assert pair.ledger() == []


def test_chains_removed_by_hand_revert_as_gone(pair):
    result = pair.fault('pggit_chaos_partition', name='byhand', peers=[pair.client], ttl=60)
    assert not result['failed'], result
    for direction, hook in (('in', 'INPUT'), ('out', 'OUTPUT')):
        chain = _netcmd.chains('partition--byhand')[direction]
        for argv in (['-D', hook, '-j', chain], ['-F', chain], ['-X', chain]):
            assert target(pair, 'iptables', '-w', *argv).returncode == 0
    reverted = pair.fault('pggit_chaos_partition', name='byhand', state='absent')
    assert not reverted['failed'], reverted
    assert reverted['revert']['result'] == 'reverted' and reverted['revert']['undo_changed'] is False
    assert pair.ledger() == []


def qdiscs(pair):
    return target(pair, 'tc', 'qdisc', 'show', 'dev', pair.target_if).stdout


def test_a_qdisc_or_interface_gone_reverts_as_gone_and_a_foreign_qdisc_stays(pair):
    thin = dict(name='thin', peers=[pair.client], rate_kbit=800, ttl=60)
    assert not pair.fault('pggit_chaos_bandwidth', **thin)['failed']
    assert 'htb 7a3c: root' in qdiscs(pair)
    assert target(pair, 'tc', 'qdisc', 'del', 'dev', pair.target_if, 'root').returncode == 0
    assert target(pair, 'tc', 'qdisc', 'add', 'dev', pair.target_if, 'root', 'handle', '1:', 'htb').returncode == 0
    reverted = pair.fault('pggit_chaos_bandwidth', name='thin', state='absent')
    assert not reverted['failed'] and reverted['revert']['undo_changed'] is False, reverted
    assert 'htb 1: root' in qdiscs(pair), 'a root qdisc that is not ours is never deleted'
    assert pair.ledger() == []

    assert target(pair, 'tc', 'qdisc', 'del', 'dev', pair.target_if, 'root').returncode == 0
    assert not pair.fault('pggit_chaos_bandwidth', **thin)['failed']
    assert target(pair, 'ip', 'link', 'del', pair.target_if).returncode == 0  # the interface vanishes with its qdisc
    reverted = pair.fault('pggit_chaos_bandwidth', name='thin', state='absent')
    assert not reverted['failed'], reverted
    assert reverted['revert']['result'] == 'reverted' and reverted['revert']['undo_changed'] is False
    assert pair.ledger() == []


# -- readiness: a daemon that cannot prove it works fails the inject (issue 6, item 15) ---------------
SYSTEM_PYTHON = '/usr/bin/python3'


def test_a_daemon_without_its_binding_fails_the_inject_and_leaves_nothing(pair):
    probe = sh(SYSTEM_PYTHON, '-I', '-c', 'import netfilterqueue')
    if probe.returncode == 0:
        pytest.fail('%s has netfilterqueue: this test needs an interpreter without it' % SYSTEM_PYTHON)
    result = pair.fault('pggit_chaos_latency', name='unbound', port=PORT, direction='in', delay_ms=100, ttl=60,
                        extra_vars={'ansible_python_interpreter': SYSTEM_PYTHON})
    assert result['failed'], 'with no binding every packet would pass undelayed: the inject must fail'
    assert 'pggit-chaos-nfqdelay' in result['msg'] and 'exited before it was ready' in result['msg'], result['msg']
    assert 'netfilterqueue is missing' in result['msg'], result['msg']
    assert 'rolled back: reverted' in result['msg']
    assert 'pggit-chaos' not in pair.target_rules()
    assert wait_for(lambda: not daemons(pair.state_dir), 5)
    assert pair.ledger() == []
    assert p50(pair.rtts(1)) < 5


def test_a_queue_held_by_another_program_is_refused_and_left_alone(pair):
    queue = _netcmd.queue_number('latency--held')
    holder = subprocess.Popen(['ip', 'netns', 'exec', pair.target_ns, sys.executable, '-c',
                               'import time\nfrom netfilterqueue import NetfilterQueue\nq = NetfilterQueue()\n'
                               'q.bind(%d, lambda p: p.accept())\ntime.sleep(60)' % queue], start_new_session=True)

    def bound():
        return re.search(r'^\s*%d\s' % queue, target(pair, 'cat', '/proc/net/netfilter/nfnetlink_queue').stdout, re.M)

    try:
        assert wait_for(bound, 10), 'the other program did not bind its queue'
        result = pair.fault('pggit_chaos_latency', name='held', port=PORT, direction='in', delay_ms=100, ttl=60)
        assert result['failed']
        assert 'NFQUEUE %d is already bound by another program' % queue in result['msg'], result['msg']
        assert 'pggit-chaos' not in pair.target_rules()
        assert not daemons(pair.state_dir) and pair.ledger() == []
        assert holder.poll() is None and bound(), 'the other program keeps its queue'
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
