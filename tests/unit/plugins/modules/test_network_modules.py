from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils import basic

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _daemon, _ledger, _netcmd, _reaper, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import DaemonError
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_bandwidth as bandwidth
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_latency as latency
from ansible_collections.pggit.chaos.plugins.modules import pggit_chaos_partition as partition

IPT = '/usr/sbin/iptables'
TC = '/usr/sbin/tc'
IP = '/usr/sbin/ip'
LIST = [IPT, '-w', '-S']
LINKS = [IP, '-o', 'link', 'show']
# Above any pid_max, so the revert engine never finds (or signals) a real process.
REAPER = {'pid': 99999991, 'starttime': 4242}
DAEMON = {'pid': 99999992, 'starttime': 4343, 'script': '/state/bin/pggit-chaos-nfqdelay'}
ROUTE = '198.18.0.11 dev eth0 src 198.18.0.12 uid 0 \\    cache '
BUSY = 'iptables v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain %s\n'


class Commands(object):
    """Fake run_command over a small model of iptables, tc and ip.

    It records every argv; a reply registered for an argv prefix wins (the
    longest one), otherwise the model answers as the real tools do, so a
    revert sees what apply left, and a test can change the host by hand.
    """

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.calls = []
        self.replies = {}
        self.ledger_at_first_create = None
        self.chains = set()
        self.jumps = []  # (hook, chain)
        self.foreign = []  # rules we did not make, as iptables -S prints them
        self.roots = {'eth0': ('noqueue', '0:'), 'lo': ('noqueue', '0:')}

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
        if argv[0] == IPT:
            return self.iptables(argv[2:])
        if argv[0] == TC:
            return self.tc(argv[1:])
        if argv[:4] == LINKS:
            return 0, ''.join('%d: %s: <UP> mtu 1500\\    link/ether\n' % (n, name) for n, name in enumerate(sorted(self.roots), 1)), ''
        return 0, '', ''

    def iptables(self, args):
        if args[0] == '-S':
            wanted = args[1] if len(args) > 1 else None
            if wanted and wanted not in self.chains and wanted not in ('INPUT', 'OUTPUT', 'FORWARD'):
                return 1, '', "iptables v1.8.9 (nf_tables): chain `%s' in table `filter' is incompatible, use 'nft' tool.\n" % wanted
            lines = ['-P %s ACCEPT' % c for c in ('INPUT', 'FORWARD', 'OUTPUT') if wanted in (None, c)]
            lines += ['-N %s' % c for c in sorted(self.chains) if wanted in (None, c)]
            rules = ['-A %s -j %s' % jump for jump in self.jumps] + self.foreign
            lines += [r for r in rules if wanted in (None, r.split()[1])]
            return 0, '\n'.join(lines) + '\n', ''
        op, rest = args[0], args[1:]
        if op == '-N':
            self.chains.add(rest[0])
        elif op == '-I':
            self.jumps.insert(0, (rest[0], rest[-1]))
        elif op == '-D':
            if (rest[0], rest[-1]) not in self.jumps:
                return 1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n'
            self.jumps.remove((rest[0], rest[-1]))
        elif op in ('-F', '-X', '-A') and rest[0] not in self.chains:
            return 1, '', 'iptables: No chain/target/match by that name.\n'
        elif op == '-X':
            if any(rule.endswith('-j ' + rest[0]) for rule in self.foreign) or any(c == rest[0] for _h, c in self.jumps):
                return 4, '', BUSY % rest[0]
            self.chains.discard(rest[0])
        return 0, '', ''

    def tc(self, args):
        device = args[3] if len(args) > 3 else None
        if device not in self.roots:
            return 1, '', 'Cannot find device "%s"\n' % device
        if args[:2] == ['qdisc', 'show']:
            kind, handle = self.roots[device]
            return 0, 'qdisc %s %s root refcnt 2 \n' % (kind, handle), ''
        if args[:2] == ['qdisc', 'add'] and 'root' in args:
            self.roots[device] = (args[args.index('handle') + 2], args[args.index('handle') + 1])
        if args[:2] == ['qdisc', 'del'] and 'root' in args:
            self.roots[device] = ('noqueue', '0:')
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
            or argv[1:] == ['-n', '-q', 'sch_netem'] or argv == LINKS)


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
    monkeypatch.setattr(_steps, 'find_bin', lambda name: '/usr/sbin/' + name)  # the undo handlers' own search
    return fake


@pytest.fixture
def queues(tmp_path, monkeypatch):
    """The NFQUEUE table the module reads, as a file the test (and the fake daemon) write."""
    table = tmp_path / 'nfnetlink_queue'
    table.write_text('')
    monkeypatch.setattr(latency.LatencyFault, 'NFQUEUE_PROC', str(table))
    return table


def bind(table, queue, portid):
    with open(str(table), 'a') as handle:
        handle.write('%5d %6d     0 2  4016     0     0        0  1\n' % (queue, portid))


@pytest.fixture
def spawned(monkeypatch, commands, queues):
    """Fake daemons: arm() and spawn() record their calls and start nothing.

    The fake nfqdelay binds its queue (a line in the table) unless told to
    fail, and spawn() waits on the module's own readiness check."""
    calls = {'arm': [], 'spawn': [], 'ready': [], 'fail': None}

    def arm(ledger, fid, python=None):
        calls['arm'].append(fid)
        return dict(REAPER)

    def spawn(state_dir, tag, args, python=None, ready=None, ready_timeout=5.0):
        calls['spawn'].append({'state_dir': state_dir, 'tag': tag, 'args': list(args), 'calls_before': len(commands.calls)})
        assert not ready(), 'ready before the daemon ran'
        if calls['fail']:
            raise DaemonError(calls['fail'])
        bind(queues, int(args[args.index('--queue') + 1]), DAEMON['pid'])
        calls['ready'].append((ready(), ready_timeout))
        return dict(DAEMON)
    monkeypatch.setattr(_reaper, 'arm', arm)
    monkeypatch.setattr(_reaper, 'alive', lambda record: True)  # the fake reapers are taken as running
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


def selector(directions, peers=(), port=None, exclude_peers=()):
    return {'directions': directions, 'peers': list(peers), 'port': port, 'exclude_peers': list(exclude_peers),
            'keep_ssh': True, 'keep_loopback': True}


def look(chain, hook, gone=False):
    """The listings of one look of the iptables_chain handler: hook, chain, and the table when the chain is not listed."""
    return [LIST + [hook], LIST + [chain]] + ([LIST] if gone else [])


def chain_revert(chain, hook):
    """What the iptables_chain handler runs for a chain that is there, hooked once."""
    return (look(chain, hook) + [[IPT, '-w', '-D', hook, '-j', chain], [IPT, '-w', '-F', chain], [IPT, '-w', '-X', chain]]
            + look(chain, hook, gone=True))


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
    assert commands.calls == [LIST] + apply  # looked once (observe and the foreign-chain check), then applied
    assert result['chains'] == list(chain_names(PFID))
    assert result['applied'] == apply
    before = commands.ledger_at_first_create[PFID]
    assert (before['status'], before['undo']) == ('pending', undo)
    record = read_record(state_dir, PFID)
    assert (record['status'], record['undo'], record['reaper']) == ('active', undo, REAPER)
    assert spawned['arm'] == [PFID] and spawned['spawn'] == []


def test_partition_check_mode_changes_nothing(commands, spawned, state_dir):
    apply, _undo = partition_plan()
    result, failed = run_partition(state_dir, check_mode=True)
    assert not failed, result['msg']
    assert result['changed'] is True
    assert result['planned']['apply'] == apply
    assert commands.mutating() == []
    assert not os.path.exists(state_dir)
    assert spawned['arm'] == [] and spawned['spawn'] == []


def test_partition_second_present_is_unchanged(commands, spawned, state_dir):
    run_partition(state_dir)
    commands.calls[:] = []
    result, failed = run_partition(state_dir)
    assert (failed, result['changed']) == (False, False)
    assert 'already in place' in result['msg']
    assert commands.calls == [LIST]
    assert spawned['arm'] == [PFID]


def test_partition_present_again_when_chains_vanished_reapplies(commands, spawned, state_dir):
    apply, _undo = partition_plan()
    run_partition(state_dir)
    commands.chains.clear()
    commands.jumps[:] = []
    commands.calls[:] = []
    result, failed = run_partition(state_dir)
    assert (failed, result['changed']) == (False, True)
    # The stale record is reverted first (each chain step looks, sees nothing, touches nothing), then observed again.
    chain_in, chain_out = chain_names(PFID)
    assert commands.calls == [LIST] + look(chain_out, 'OUTPUT', gone=True) + look(chain_in, 'INPUT', gone=True) + [LIST] + apply
    assert read_record(state_dir, PFID)['status'] == 'active'


def test_partition_absent_unhooks_flushes_and_deletes_each_chain_then_looks(commands, spawned, state_dir):
    run_partition(state_dir)
    commands.calls[:] = []
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert not failed, result['msg']
    assert (result['changed'], result['revert']['result'], result['revert']['undo_changed']) == (True, 'reverted', True)
    chain_in, chain_out = chain_names(PFID)
    assert commands.calls == chain_revert(chain_out, 'OUTPUT') + chain_revert(chain_in, 'INPUT')  # reverse order
    assert (commands.chains, commands.jumps) == (set(), [])
    assert read_record(state_dir, PFID) is None


def test_partition_absent_when_the_chains_are_already_gone(commands, spawned, state_dir):
    run_partition(state_dir)
    commands.chains.clear()
    commands.jumps[:] = []
    commands.calls[:] = []
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert not failed, result['msg']
    assert (result['changed'], result['revert']['result'], result['revert']['undo_changed']) == (True, 'reverted', False)
    chain_in, chain_out = chain_names(PFID)
    assert commands.calls == look(chain_out, 'OUTPUT', gone=True) + look(chain_in, 'INPUT', gone=True)  # seen gone, nothing run
    assert read_record(state_dir, PFID) is None


def test_partition_absent_keeps_the_record_when_a_chain_stays_referenced(commands, spawned, state_dir):
    run_partition(state_dir)
    chain_in, chain_out = chain_names(PFID)
    foreign = '-A FORWARD -s 10.9.9.9/32 -j %s' % chain_in
    commands.foreign.append(foreign)
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert failed
    assert result['revert']['result'] == 'failed'
    delete = ' '.join([IPT, '-w', '-X', chain_in])
    assert result['msg'] == (
        'reverting %s failed: UndoError: 1 of 2 undo steps failed (the others ran): step 1 (iptables_chain %s): chain %s is '
        'still there after the revert: %s exited 4: iptables v1.8.9 (nf_tables): CHAIN_DEL failed (Device or resource busy): '
        'chain %s; rules we did not make still use it: %s; the record stays in %s and its reaper keeps retrying'
        % (PFID, chain_in, chain_in, delete, chain_in, foreign, os.path.join(state_dir, 'faults')))
    assert commands.chains == {chain_in} and commands.jumps == []  # the other chain went; ours is flushed and unhooked
    record = read_record(state_dir, PFID)
    assert record is not None and 'chain %s is still there' % chain_in in record['last_error']
    commands.foreign[:] = []
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert not failed and result['revert']['result'] == 'reverted'
    assert commands.chains == set() and read_record(state_dir, PFID) is None


def test_partition_absent_keeps_the_record_when_iptables_cannot_list(commands, spawned, state_dir):
    run_partition(state_dir)
    commands.reply(LIST, 4, '', 'iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied\n')
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert failed and result['revert']['result'] == 'failed'
    assert ('cannot look for the jumps from INPUT to %s: %s INPUT exited 4: iptables v1.8.9' % (chain_names(PFID)[0], ' '.join(LIST))
            in result['msg'])
    assert read_record(state_dir, PFID) is not None


def test_partition_absent_without_record_is_unchanged(commands, spawned, state_dir):
    result, failed = run_module(partition.main, {'name': 'split', 'state': 'absent', 'state_dir': state_dir})
    assert (failed, result['changed']) == (False, False)
    assert commands.calls == []


def test_partition_failed_rule_rolls_back(commands, spawned, state_dir):
    apply, _undo = partition_plan()
    chain_in = chain_names(PFID)[0]
    commands.reply([IPT, '-w', '-A', chain_in], 1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n')
    result, failed = run_partition(state_dir)
    assert failed
    broken = apply[1]
    assert broken[:4] == [IPT, '-w', '-A', chain_in]
    chain_out = chain_names(PFID)[1]
    rollback = (look(chain_out, 'OUTPUT', gone=True)  # never made
                + look(chain_in, 'INPUT') + [[IPT, '-w', '-F', chain_in], [IPT, '-w', '-X', chain_in]]  # made, not hooked yet
                + look(chain_in, 'INPUT', gone=True))
    assert commands.calls == [LIST] + apply[:2] + rollback
    assert result['msg'] == ('injecting partition--split failed: %s exited 1: iptables: Bad rule (does a matching rule exist in that chain?).;'
                             ' rolled back: reverted' % ' '.join(broken))
    assert result['rollback']['result'] == 'reverted'
    assert read_record(state_dir, PFID) is None
    assert commands.chains == set()


@pytest.mark.parametrize('check_mode', [False, True])
def test_partition_refuses_a_foreign_chain(commands, spawned, state_dir, check_mode):
    chain_out = chain_names(PFID)[1]
    commands.chains.add(chain_out)
    result, failed = run_partition(state_dir, check_mode=check_mode)
    assert failed
    assert result['msg'] == ('chain %s exists but no ledger record owns it; run playbooks/revert.yml or delete it by hand' % chain_out)
    assert commands.mutating() == []
    assert commands.ledger_records() == {}
    assert spawned['arm'] == [] and spawned['spawn'] == []


def test_partition_fails_plainly_when_iptables_cannot_list(commands, spawned, state_dir):
    commands.reply(LIST, 4, '', 'iptables: Permission denied (you must be root).\n')
    result, failed = run_partition(state_dir)
    assert failed
    assert result['msg'] == 'cannot list iptables chains: %s exited 4: iptables: Permission denied (you must be root).' % ' '.join(LIST)
    assert commands.mutating() == [] and commands.ledger_records() == {}


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
QUEUE = _netcmd.queue_number(LFID)


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
    apply, undo = _netcmd.chain_plan(LFID, selector([direction], port=5432), _netcmd.nfqueue_target(QUEUE), iptables=IPT)
    result, failed = run_latency(state_dir, direction=direction)
    assert not failed, result['msg']
    assert (result['changed'], result['method'], result['queue']) == (True, 'nfqueue', QUEUE)
    assert result['daemon'] == {'pid': DAEMON['pid'], 'starttime': DAEMON['starttime']}
    assert commands.calls == [LIST] + probe + apply
    record = read_record(state_dir, LFID)
    path = os.path.join(state_dir, 'faults', LFID + '.json')
    assert spawned['spawn'] == [{'state_dir': state_dir, 'tag': 'pggit-chaos-nfqdelay', 'calls_before': len(commands.calls) - len(apply),
                                 'args': ['--queue', str(QUEUE), '--delay-ms', '100', '--jitter-ms', '0', '--loss-pct', '0.0',
                                          '--until', str(record['expires_at']), '--record', path]}]
    assert spawned['ready'] == [(True, latency.READY_SECONDS)]  # ready once the queue is listed as bound
    daemon_step = {'type': 'kill_process', 'pid': DAEMON['pid'], 'starttime': DAEMON['starttime'], 'match': 'pggit-chaos-nfqdelay'}
    assert record['undo'] == [daemon_step] + undo  # undone last, after the rules that feed the queue
    assert commands.ledger_at_first_create[LFID]['undo'][0] == daemon_step
    assert record['detail']['queue'] == QUEUE


def test_latency_daemon_that_never_gets_ready_fails_the_inject_and_leaves_nothing(commands, spawned, netem, state_dir):
    spawned['fail'] = ('pggit-chaos-nfqdelay (pid 4711) exited before it was ready: cannot start: the Python package '
                       'netfilterqueue is missing')
    result, failed = run_latency(state_dir, direction='in')
    assert failed
    assert result['msg'] == ('injecting %s failed: %s; rolled back: reverted' % (LFID, spawned['fail']))
    assert commands.mutating() == []  # not one rule was added: the daemon comes first
    assert commands.ledger_records() == {}


@pytest.mark.parametrize('check_mode', [False, True])
def test_latency_refuses_a_queue_another_program_holds(commands, spawned, netem, queues, state_dir, check_mode):
    bind(queues, QUEUE, 31337)
    result, failed = run_latency(state_dir, direction='in', check_mode=check_mode)
    assert failed
    assert result['msg'] == ('NFQUEUE %d is already bound by another program (netlink port id 31337); pggit.chaos never shares '
                             'a queue: stop that program or revert the fault that owns it' % QUEUE)
    assert commands.mutating() == [] and commands.ledger_records() == {}
    assert spawned['spawn'] == []


def test_latency_in_place_needs_the_queue_still_bound(commands, spawned, netem, queues, state_dir, monkeypatch):
    run_latency(state_dir, direction='in')
    monkeypatch.setattr(_steps, 'same_process', lambda pid, starttime=None, match=None: pid == DAEMON['pid'])
    commands.calls[:] = []
    again, failed = run_latency(state_dir, direction='in')
    assert (failed, again['changed']) == (False, False)  # daemon running, queue bound, chains there
    assert commands.calls == [LIST]
    queues.write_text('')  # the daemon lost its queue: --queue-bypass lets every packet through undelayed
    again, failed = run_latency(state_dir, direction='in')
    assert not failed, again['msg']
    assert again['changed'] is True and again['stale_reverted']['result'] == 'reverted'
    assert len(spawned['spawn']) == 2


def test_latency_absent_reverts_rules_and_daemon(commands, spawned, netem, state_dir):
    run_latency(state_dir, direction='in')
    commands.calls[:] = []
    result, failed = run_module(latency.main, {'name': 'slow', 'state': 'absent', 'state_dir': state_dir})
    assert (failed, result['changed'], result['revert']['result']) == (False, True, 'reverted')
    assert commands.calls == chain_revert(chain_names(LFID)[0], 'INPUT')  # the daemon step runs no command
    assert read_record(state_dir, LFID) is None


def test_latency_loss_only_needs_no_daemon(commands, spawned, netem, state_dir):
    apply, undo = _netcmd.chain_plan(LFID, selector(['in', 'out'], port=5432), _netcmd.loss_target(30), iptables=IPT)
    result, failed = run_latency(state_dir, delay_ms=0, loss_pct=30)
    assert not failed, result['msg']
    assert result['method'] == 'iptables'
    assert '--probability' in apply[-3] and '0.3000' in apply[-3]
    assert commands.calls == [LIST] + apply
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
    apply, undo = _netcmd.netem_plan('eth0', ['198.18.0.11/32'], 5432, 100, 10, 0.0, tc=TC)
    result, failed = run_latency(state_dir, method=method, direction='out', peers=['198.18.0.11'], jitter_ms=10)
    assert not failed, result['msg']
    assert (result['changed'], result['method']) == (True, 'netem')
    assert commands.calls == [LIST, [IP, '-o', 'route', 'get', '198.18.0.11'], [TC, 'qdisc', 'show', 'dev', 'eth0']] + apply
    record = read_record(state_dir, LFID)
    assert (record['undo'], record['detail']['interface']) == (undo, 'eth0')
    assert commands.ledger_at_first_create[LFID]['undo'] == undo
    assert spawned['spawn'] == []


def test_latency_netem_refuses_a_foreign_root_qdisc(commands, spawned, netem, state_dir):
    netem.append(True)
    commands.reply([IP, '-o', 'route', 'get'], 0, ROUTE)
    commands.roots['eth0'] = ('htb', '1:')
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
QDISC_DEL = [TC, 'qdisc', 'del', 'dev', 'eth0', 'root', 'handle', '7a3c:']


@pytest.fixture
def routed(commands):
    commands.reply([IP, '-o', 'route', 'get'], 0, ROUTE)
    return commands


def run_bandwidth(state_dir, check_mode=False, **options):
    args = {'name': 'thin', 'peers': ['198.18.0.11'], 'rate_kbit': 1000, 'state_dir': state_dir}
    args.update(options)
    return run_module(bandwidth.main, args, check_mode=check_mode)


def absent_bandwidth(state_dir):
    return run_module(bandwidth.main, {'name': 'thin', 'state': 'absent', 'state_dir': state_dir})


@pytest.mark.parametrize('port', [None, 5432])
def test_bandwidth_present_shapes_the_routed_interface(routed, spawned, state_dir, port):
    apply, undo = _netcmd.htb_plan('eth0', ['198.18.0.11/32'], port, 1000, tc=TC)
    result, failed = run_bandwidth(state_dir, port=port)
    assert not failed, result['msg']
    assert (result['changed'], result['interface'], result['applied']) == (True, 'eth0', apply)
    assert routed.calls == [ROUTE_GET, QDISC_SHOW, QDISC_SHOW] + apply
    assert routed.ledger_at_first_create[BFID]['status'] == 'pending'
    assert routed.ledger_at_first_create[BFID]['undo'] == undo == [{'type': 'tc_qdisc', 'interface': 'eth0', 'handle': '7a3c:'}]
    assert read_record(state_dir, BFID)['undo'] == undo


def test_bandwidth_check_mode_changes_nothing(routed, spawned, state_dir):
    result, failed = run_bandwidth(state_dir, check_mode=True)
    assert (failed, result['changed']) == (False, True)
    assert routed.mutating() == []
    assert not os.path.exists(state_dir)


def test_bandwidth_second_present_is_unchanged(routed, spawned, state_dir):
    run_bandwidth(state_dir)
    routed.calls[:] = []
    result, failed = run_bandwidth(state_dir)
    assert (failed, result['changed']) == (False, False)
    assert routed.calls == [ROUTE_GET, QDISC_SHOW]


@pytest.mark.parametrize('check_mode', [False, True])
def test_bandwidth_refuses_a_foreign_root_qdisc(routed, spawned, state_dir, check_mode):
    routed.roots['eth0'] = ('htb', '1:')
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


def test_bandwidth_absent_deletes_our_qdisc_then_looks(routed, spawned, state_dir):
    run_bandwidth(state_dir)
    routed.calls[:] = []
    result, failed = absent_bandwidth(state_dir)
    assert not failed, result['msg']
    assert (result['changed'], result['revert']['result'], result['revert']['undo_changed']) == (True, 'reverted', True)
    assert routed.calls == [LINKS, QDISC_SHOW, QDISC_DEL, LINKS, QDISC_SHOW]
    assert routed.roots['eth0'] == ('noqueue', '0:')
    assert read_record(state_dir, BFID) is None


@pytest.mark.parametrize('by_hand, calls', [
    ('qdisc deleted', [LINKS, QDISC_SHOW]),
    ('qdisc replaced by someone else', [LINKS, QDISC_SHOW]),
    ('interface deleted', [LINKS]),
])
def test_bandwidth_absent_when_our_qdisc_is_already_gone(routed, spawned, state_dir, by_hand, calls):
    run_bandwidth(state_dir)
    if by_hand == 'interface deleted':
        del routed.roots['eth0']
    else:
        routed.roots['eth0'] = ('noqueue', '0:') if by_hand == 'qdisc deleted' else ('htb', '1:')
    routed.calls[:] = []
    result, failed = absent_bandwidth(state_dir)
    assert not failed, result['msg']
    assert (result['revert']['result'], result['revert']['undo_changed']) == ('reverted', False)
    assert routed.calls == calls  # looked, deleted nothing
    assert read_record(state_dir, BFID) is None


def test_bandwidth_absent_keeps_the_record_when_the_qdisc_stays(routed, spawned, state_dir):
    run_bandwidth(state_dir)
    routed.reply(QDISC_DEL, 2, '', 'RTNETLINK answers: Operation not permitted\n')
    result, failed = absent_bandwidth(state_dir)
    assert failed and result['revert']['result'] == 'failed'
    assert ('root qdisc 7a3c: on eth0 is still there after the revert: %s exited 2: RTNETLINK answers: Operation not permitted'
            % ' '.join(QDISC_DEL)) in result['msg']
    assert read_record(state_dir, BFID) is not None


def test_bandwidth_absent_without_record_is_unchanged(commands, spawned, state_dir):
    result, failed = absent_bandwidth(state_dir)
    assert (failed, result['changed']) == (False, False)
    assert commands.calls == []


def test_bandwidth_present_needs_a_rate(routed, spawned, state_dir):
    result, failed = run_module(bandwidth.main, {'name': 'thin', 'peers': ['198.18.0.11'], 'state_dir': state_dir})
    assert failed
    assert 'rate_kbit' in result['msg']
    assert routed.calls == []
