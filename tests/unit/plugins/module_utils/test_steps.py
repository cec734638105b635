from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _netcmd, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._ledger import Ledger
from ansible_collections.pggit.chaos.plugins.module_utils._errors import UndoError


@pytest.fixture
def ledger(tmp_path):
    return Ledger(str(tmp_path / 'state')).ensure()


@pytest.fixture
def calls(monkeypatch):
    """Register a fake step type 'note' that records its tag (and fails when asked)."""
    seen = []

    def note(step, ctx):
        seen.append(step['tag'])
        if step.get('fail'):
            raise RuntimeError('step %s broke' % step['tag'])
        return step.get('changed', True)
    monkeypatch.setitem(_steps.STEP_HANDLERS, 'note', note)
    return seen


@pytest.fixture
def process():
    """A real `sleep 30`, reaped by a thread as soon as it dies, killed in any case."""
    proc = subprocess.Popen(['sleep', '30'])
    reaper = threading.Thread(target=proc.wait, daemon=True)
    reaper.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        reaper.join(5)


def add(ledger, name, created_at, undo, experiment=None, kind='trigger'):
    record = ledger.new_record(kind, name, 60, undo, experiment=experiment, now=created_at)
    ledger.write(record)
    return record['id']


def note_steps(*tags, **extra):
    return [dict({'type': 'note', 'tag': tag}, **extra) for tag in tags]


# -- run_steps ---------------------------------------------------------------
def test_steps_run_in_reverse_order(calls):
    _steps.run_steps(note_steps('first applied', 'second', 'last applied'), {})
    assert calls == ['last applied', 'second', 'first applied']


@pytest.mark.parametrize('changes, expected', [
    ([False, False], False),
    ([True, False], True),
    ([False, True], True),
    ([], False),
])
def test_run_steps_is_changed_when_any_step_changed(calls, changes, expected):
    steps = [{'type': 'note', 'tag': i, 'changed': c} for i, c in enumerate(changes)]
    assert _steps.run_steps(steps, {}) is expected
    assert len(calls) == len(changes)  # every step runs, even after one that changed nothing


def test_run_steps_of_none_is_a_noop():
    assert _steps.run_steps(None, {}) is False


def test_a_failing_step_does_not_stop_the_others_and_every_failure_is_reported(calls):
    # Undo of [enable triggers, drop schema]: the triggers come back even when the drop fails.
    steps = note_steps('enable') + note_steps('drop', fail=True)
    with pytest.raises(UndoError) as exc:
        _steps.run_steps(steps, {})
    assert calls == ['drop', 'enable']  # still in reverse order of application
    assert str(exc.value) == '1 of 2 undo steps failed (the others ran): step 2 (note): RuntimeError: step drop broke'


def test_every_failed_step_is_named(calls):
    steps = note_steps('a', fail=True) + note_steps('b') + note_steps('c', fail=True)
    with pytest.raises(UndoError) as exc:
        _steps.run_steps(steps, {})
    assert calls == ['c', 'b', 'a']
    assert str(exc.value) == ('2 of 3 undo steps failed (the others ran): step 3 (note): RuntimeError: step c broke; '
                              'step 1 (note): RuntimeError: step a broke')


@pytest.mark.parametrize('step', [{'type': 'reboot'}, {'kind': 'run'}, {'type': 'run', 'argv': ['true']}])
def test_unknown_step_type_is_refused_before_anything_runs(calls, step):
    with pytest.raises(UndoError, match=r"undo step 2: unknown type %s; known types: cgroup_thaw, clock_dir_restore, iptables_chain, kill_process, "
                                        r"manager_start, note, "
                                        r"pg_converge, pg_drop_schema, pg_end_load_init, pg_event_trigger_enable, pg_reindex, pg_restart, pg_role_nologin, "
                                        r"pg_scratch_tablespace, pg_setting_restore, pg_start, pg_terminate_backend, remove_path, restore_page, "
                                        r"signal_process, tc_qdisc$"
                                        % re.escape(repr(step.get('type')))):
        _steps.run_steps(note_steps('first') + [step], {})
    assert calls == []


def test_default_runner_runs_argv_without_a_shell(tmp_path):
    rc, out, err = _steps.default_runner([sys.executable, '-c', 'import sys; print(sys.argv[1:])', '$HOME', ';', 'x'])
    assert (rc, err) == (0, '')
    assert out.strip() == "['$HOME', ';', 'x']"


# -- remove_path ------------------------------------------------------------
def test_remove_path_is_idempotent(tmp_path):
    victim = tmp_path / 'sub' / 'victim'
    victim.parent.mkdir()
    victim.write_text('x')
    step = {'type': 'remove_path', 'path': str(victim), 'root': str(tmp_path)}
    assert _steps.run_steps([step], {'state_dir': str(tmp_path)}) is True
    assert not victim.exists()
    assert _steps.run_steps([step], {'state_dir': str(tmp_path)}) is False


@pytest.mark.parametrize('path', [
    '/etc/passwd',
    '{tmp}/../outside',
    '{tmp}-sibling/file',  # shares the state dir as a string prefix only
    '{tmp}/link/file',  # a symlink leading out of the state dir
])
def test_remove_path_refuses_paths_outside_the_state_dir(tmp_path, path):
    outside = tmp_path.parent / (tmp_path.name + '-outside')
    outside.mkdir(exist_ok=True)
    (outside / 'file').write_text('keep me')
    (tmp_path / 'link').symlink_to(outside)
    step = {'type': 'remove_path', 'path': path.format(tmp=tmp_path), 'root': str(tmp_path)}
    with pytest.raises(UndoError, match='refusing to remove .* outside the state dir %s' % tmp_path):
        _steps.run_steps([step], {'state_dir': str(tmp_path)})
    assert (outside / 'file').read_text() == 'keep me'


def test_remove_path_of_a_fill_file_outside_the_state_dir(tmp_path):
    fill = tmp_path / 'data' / '.pggit-chaos-fill-disk--full'
    fill.parent.mkdir()
    fill.write_text('x' * 10)
    step = {'type': 'remove_path', 'path': str(fill)}
    assert _steps.run_steps([step], {'state_dir': str(tmp_path / 'state')}) is True
    assert not fill.exists()


def test_remove_path_still_honours_its_recorded_root(tmp_path):
    victim = tmp_path / 'state' / 'a' / 'victim'
    victim.parent.mkdir(parents=True)
    victim.write_text('x')
    step = {'type': 'remove_path', 'path': str(victim), 'root': str(tmp_path / 'state' / 'b')}
    with pytest.raises(UndoError, match='outside its recorded root'):
        _steps.run_steps([step], {'state_dir': str(tmp_path / 'state')})
    assert victim.exists()


# -- processes -----------------------------------------------------------------
def test_same_process_guards_against_pid_reuse(process):
    start = _steps.proc_starttime(process.pid)
    assert isinstance(start, int)
    assert _steps.same_process(process.pid)
    assert _steps.same_process(process.pid, start, 'sleep 30')
    assert _steps.same_process(str(process.pid), str(start))
    assert not _steps.same_process(process.pid, start + 1)
    assert not _steps.same_process(process.pid, start, 'pggit-chaos-reaper')


@pytest.mark.parametrize('pid', [None, 0, 999999999])
def test_same_process_of_no_process_is_false(pid):
    assert not _steps.same_process(pid)
    assert _steps.stop_process(pid) is False


def test_stop_process_kills_only_the_recorded_process(process):
    start = _steps.proc_starttime(process.pid)
    assert _steps.stop_process(process.pid, start + 1, grace=0.5) is False
    assert _steps.stop_process(process.pid, start, 'pggit-chaos-reaper', grace=0.5) is False
    assert process.poll() is None
    assert _steps.stop_process(process.pid, start, 'sleep', grace=2.0) is True
    assert process.wait(5) == -15  # SIGTERM was enough
    assert _steps.proc_starttime(process.pid) is None


def test_kill_process_step():
    tagged = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', 'pggit-chaos-testprog'])
    try:
        for _wait in range(100):  # until the exec shows in its command line
            if 'pggit-chaos-testprog' in _steps.proc_cmdline(tagged.pid):
                break
            time.sleep(0.02)
        step = {'type': 'kill_process', 'pid': tagged.pid, 'starttime': _steps.proc_starttime(tagged.pid),
                'match': 'pggit-chaos-testprog'}
        assert _steps.run_steps([step], {}) is True
        assert tagged.wait(5) == -15
        assert _steps.run_steps([step], {}) is False  # already gone
    finally:
        if tagged.poll() is None:
            tagged.kill()
            tagged.wait()


# -- kill_process with group: only root's processes in the session the group leads ---------------------------
GROUP_LEADER = r'''
import subprocess, sys
member = subprocess.Popen(['bash', '-c', 'exec -a stress-ng-vm sleep 60'], cwd='/', user=sys.argv[1] if len(sys.argv) > 1 else None)
print(member.pid, flush=True)
'''


def orphaned_member(own_session, member_user=None):
    """(pgid, leader starttime, member pid): a group whose leader exited, with one stress-ng-like member.

    ``own_session``: the leader leads a session of its own (setsid: session id == pgid, as our stress
    program does) or only a process group in the test's session (setpgid: session id != pgid)."""
    kwargs = {'start_new_session': True} if own_session else {'process_group': 0}
    argv = [sys.executable, '-c', GROUP_LEADER] + ([member_user] if member_user else [])
    leader = subprocess.Popen(argv, stdout=subprocess.PIPE, universal_newlines=True, **kwargs)
    starttime = _steps.proc_starttime(leader.pid)
    member = int(leader.stdout.readline())
    leader.wait()
    deadline = time.time() + 5
    while 'stress-ng-vm' not in _steps.proc_cmdline(member) and time.time() < deadline:
        time.sleep(0.01)
    return leader.pid, starttime, member


def group_step(pgid, starttime):
    return {'type': 'kill_process', 'pid': pgid, 'starttime': starttime, 'match': 'pggit-chaos-stress', 'group': True,
            'members_match': 'stress-ng'}


@pytest.mark.parametrize('own_session, member_user, killed', [
    (True, None, True),  # ours: root, in the session the group leads
    (False, None, False),  # a group that is not a session of its own (a recycled pgid in another session)
    (True, 'nobody', False),  # a user's process named like stress-ng (exec -a stress-ng)
])
def test_group_kill_spares_members_not_root_or_not_in_the_groups_session(own_session, member_user, killed):
    if os.geteuid() != 0:
        pytest.fail('run the unit tests as root: the group step kills root-owned members only')
    pgid, starttime, member = orphaned_member(own_session, member_user)
    try:
        assert (_steps.group_members(pgid, 'stress-ng', starttime) != []) is killed
        assert _steps.run_steps([group_step(pgid, starttime)], {}) is killed
        assert _steps.same_process(member) is not killed
    finally:
        try:
            os.kill(member, 9)
        except OSError:
            pass


def test_proc_state_and_real_uid_read_proc():
    assert _steps.proc_state(os.getpid()) in ('R', 'S')
    assert _steps.proc_real_uid(os.getpid()) == os.getuid()
    assert _steps.proc_state(2 ** 22 + 7) is None and _steps.proc_real_uid(2 ** 22 + 7) is None


# -- check_steps: records are data, never code ---------------------------------
STATE = '/var/lib/pggit-chaos'
CONN = {'login_host': '127.0.0.1', 'db': 'app'}


def written_by_our_faults():
    """Every kind of undo step the fault modules write."""
    selector = {'directions': ['in', 'out'], 'peers': ['10.0.0.1/32'], 'port': 5432, 'keep_ssh': True, 'keep_loopback': True,
                'exclude_peers': []}
    steps = [{'type': 'kill_process', 'pid': 4242, 'starttime': 123456, 'match': 'pggit-chaos-nfqdelay'}]
    steps += _netcmd.chain_plan('latency--slow', selector, ['-j', 'DROP'])[1]
    steps += _netcmd.netem_plan('eth0', [], 5432, 100)[1] + _netcmd.htb_plan('veth-pg1@if4', [], 5432, 1000)[1]
    steps += [{'type': 'pg_event_trigger_enable', 'conn': CONN,
               'triggers': [{'name': 'pggit_ddl_trigger', 'mode': 'O'}, {'name': 'pggit_drop_trigger', 'mode': 'A'}]},
              {'type': 'pg_drop_schema', 'conn': CONN, 'schema': 'pggit_chaos_drift'},
              {'type': 'pg_drop_schema', 'conn': CONN, 'schema': 'a"b'},
              {'type': 'remove_path', 'path': STATE + '/faults/x.tmp', 'root': STATE},
              {'type': 'remove_path', 'path': '/srv/pgdata/.pggit-chaos-fill-disk--full'}]
    return steps


def test_check_steps_accepts_what_our_faults_write():
    _steps.check_steps(written_by_our_faults(), STATE)
    _steps.check_steps([], STATE)
    _steps.check_steps(None, STATE)


def test_every_step_type_has_a_check():
    assert sorted(_steps.STEP_HANDLERS) == sorted(_steps.STEP_CHECKS)
    assert sorted(_steps.STEP_HANDLERS) == ['cgroup_thaw', 'clock_dir_restore', 'iptables_chain', 'kill_process', 'manager_start',
                                            'pg_converge', 'pg_drop_schema', 'pg_end_load_init', 'pg_event_trigger_enable',
                                            'pg_reindex', 'pg_restart', 'pg_role_nologin', 'pg_scratch_tablespace', 'pg_setting_restore',
                                            'pg_start', 'pg_terminate_backend', 'remove_path', 'restore_page', 'signal_process',
                                            'tc_qdisc']


@pytest.mark.parametrize('step, reason', [
    pytest.param({'type': 'run', 'argv': ['/bin/rm', '-rf', '/']}, "unknown type 'run'", id='old-run-step'),
    pytest.param({'type': 'remove_path', 'path': '/', 'root': '/'}, "path must name a file, got '/'", id='rm-root'),
    pytest.param({'type': 'remove_path', 'path': '/etc/shadow', 'root': '/etc'},
                 'refusing to remove /etc/shadow: outside the state dir %s' % STATE, id='rm-outside'),
    pytest.param({'type': 'remove_path', 'path': STATE + '/../../../etc/shadow'}, 'refusing to remove .*: outside the state dir',
                 id='rm-dotdot'),
    pytest.param({'type': 'remove_path', 'path': 'faults/x'}, "path must be an absolute path, got 'faults/x'", id='rm-relative'),
    pytest.param({'type': 'remove_path', 'path': '/etc/.pggit-chaos-fill-'}, 'outside the state dir', id='fill-without-id'),
    pytest.param({'type': 'kill_process', 'pid': 1}, "match must be one of our process tags \\('pggit-chaos-...'\\), got None",
                 id='pid1-no-match'),
    pytest.param({'type': 'kill_process', 'pid': 4242, 'match': 'pggit-chaos-x'}, 'starttime must be the integer start time',
                 id='no-starttime'),
    pytest.param({'type': 'kill_process', 'pid': 1, 'starttime': 1, 'match': 'pggit-chaos-reaper'}, 'pid must be an integer above 1',
                 id='pid1'),
    pytest.param({'type': 'kill_process', 'pid': 4242, 'starttime': 1}, "match must be one of our process tags", id='no-match'),
    pytest.param({'type': 'kill_process', 'pid': 4242, 'starttime': 1, 'match': 'sshd'}, "got 'sshd'", id='foreign-match'),
    pytest.param({'type': 'kill_process', 'pid': '4242', 'starttime': 1, 'match': 'pggit-chaos-x'}, 'pid must be an integer',
                 id='pid-string'),
    pytest.param({'type': 'kill_process', 'pid': True, 'starttime': 1, 'match': 'pggit-chaos-x'}, 'pid must be an integer',
                 id='pid-bool'),
    pytest.param({'type': 'pg_drop_schema', 'schema': 'public'}, "refusing to drop schema 'public'", id='drop-public'),
    pytest.param({'type': 'pg_drop_schema', 'schema': 'pggit'}, "refusing to drop schema 'pggit'", id='drop-pggit'),
    pytest.param({'type': 'pg_drop_schema', 'schema': 'pg_catalog'}, "refusing to drop schema 'pg_catalog'", id='drop-pg_'),
    pytest.param({'type': 'pg_drop_schema', 'schema': 'information_schema'}, 'not a scratch schema', id='drop-information'),
    pytest.param({'type': 'pg_drop_schema', 'schema': ' '}, 'not a scratch schema', id='drop-blank'),
    pytest.param({'type': 'pg_drop_schema', 'schema': 'scratch', 'conn': 'host=evil'}, 'conn must be a dictionary', id='drop-conn'),
    pytest.param({'type': 'pg_event_trigger_enable', 'triggers': [{'name': 'audit_trigger', 'mode': 'D'}]},
                 "pgGit event trigger named 'pggit%'", id='foreign-trigger'),
    pytest.param({'type': 'pg_event_trigger_enable', 'triggers': [{'name': 'pggit_ddl_trigger', 'mode': 'X'}]},
                 "mode must be one of A/D/O/R, got 'X'", id='bad-mode'),
    pytest.param({'type': 'pg_event_trigger_enable', 'triggers': []}, 'triggers must be a non-empty list', id='no-triggers'),
    pytest.param({'type': 'iptables_chain', 'chain': 'INPUT', 'hook': 'INPUT'}, "chain must be one of ours", id='chain-INPUT'),
    pytest.param({'type': 'iptables_chain', 'chain': 'DOCKER-USER', 'hook': 'FORWARD'}, "got 'DOCKER-USER'", id='chain-foreign'),
    pytest.param({'type': 'iptables_chain', 'chain': 'pggit-chaos-1234abcd-in', 'hook': 'PREROUTING'},
                 "hook must be one of INPUT, OUTPUT, FORWARD, got 'PREROUTING'", id='hook'),
    pytest.param({'type': 'iptables_chain', 'chain': 'pggit-chaos-x -j DROP', 'hook': 'INPUT'}, 'chain must be one of ours',
                 id='chain-injection'),
    pytest.param({'type': 'tc_qdisc', 'interface': 'eth0', 'handle': '1:'}, "handle must be ours \\(7a3c:\\), got '1:'",
                 id='tc-foreign-handle'),
    pytest.param({'type': 'tc_qdisc', 'interface': '../../x', 'handle': '7a3c:'}, 'interface must be an interface name',
                 id='tc-interface'),
    pytest.param('rm -rf /', 'is not a step', id='not-a-dict'),
])
def test_check_steps_refuses_forged_steps_with_a_reason(step, reason):
    with pytest.raises(UndoError, match=reason) as exc:
        _steps.check_steps(written_by_our_faults() + [step], STATE)
    assert 'undo step %d' % (len(written_by_our_faults()) + 1) in str(exc.value)


def test_check_steps_refuses_an_undo_that_is_not_a_list():
    with pytest.raises(UndoError, match="undo must be a list of steps, got 'rm -rf /'"):
        _steps.check_steps('rm -rf /', STATE)


def test_a_forged_record_runs_nothing(calls, tmp_path):
    keep = tmp_path / 'keep'
    keep.write_text('keep me')
    forged = note_steps('harmless') + [{'type': 'remove_path', 'path': str(keep), 'root': str(tmp_path)}]
    with pytest.raises(UndoError, match='undo step 2 \\(remove_path\\) refused: refusing to remove %s' % keep):
        _steps.run_steps(forged, {'state_dir': str(tmp_path / 'state')})
    assert calls == [] and keep.read_text() == 'keep me'


def test_remove_path_inside_the_state_dir_needs_the_state_dir():
    with pytest.raises(UndoError, match='no state dir to check it against'):
        _steps.check_steps([{'type': 'remove_path', 'path': STATE + '/x'}], None)


@pytest.mark.parametrize('name, protected', [
    ('pggit', True), ('public', True), ('information_schema', True), ('pg_catalog', True), ('pg_toast', True),
    ('pg_temp_3', True), ('', True), ('  ', True),
    # Exact names: a schema literally named "PGGIT" is a scratch schema, not pggit (the revert quotes it).
    ('PGGIT', False), ('PgGit', False), ('Public', False), ('INFORMATION_SCHEMA', False), ('PG_TOAST', False),
    ('pggit_chaos_drift', False), ('scratch', False), ('a"b', False), ('pgx', False), ('my_public', False),
])
def test_protected_schema_compares_exact_names(name, protected):
    assert _steps.protected_schema(name) is protected


# -- iptables_chain and tc_qdisc: gone is decided by looking -------------------
CHAIN = 'pggit-chaos-1234abcd-in'


class Script(object):
    """A fake runner: replies per argv, in order (the last reply repeats); records every argv."""

    def __init__(self, replies):
        self.replies = dict((tuple(argv), list(answers)) for argv, answers in replies)
        self.argvs = []

    def __call__(self, argv):
        self.argvs.append(list(argv))
        answers = self.replies.get(tuple(argv))
        if not answers:
            return 0, '', ''
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def bins(tmp_path, monkeypatch):
    """iptables, tc and ip found in a folder of our own, so argv[0] is known."""
    folder = tmp_path / 'sbin'
    folder.mkdir()
    for name in ('iptables', 'tc', 'ip'):
        (folder / name).write_text('#!/bin/sh\nexit 99\n')
        os.chmod(str(folder / name), 0o755)
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(tmp_path / 'empty'), str(folder)))
    return str(folder)


def ipt(bins, *args):
    return [bins + '/iptables', '-w'] + list(args)


class Iptables(Script):
    """A small model of iptables -S/-D/-F/-X over one filter table; scripted replies win."""

    def __init__(self, bins, chains=(), rules=(), replies=()):
        super(Iptables, self).__init__(replies)
        self.bin = bins + '/iptables'
        self.chains = list(chains)
        self.rules = list(rules)  # (chain, [tokens])

    def __call__(self, argv):
        if self.replies.get(tuple(argv)):
            return super(Iptables, self).__call__(argv)
        self.argvs.append(list(argv))
        args = argv[2:]
        if args[0] == '-S':
            if len(args) == 2 and args[1] not in self.chains + ['INPUT', 'OUTPUT', 'FORWARD']:
                return 1, '', "iptables v1.8.9 (nf_tables): chain `%s' in table `filter' is incompatible, use 'nft' tool.\n" % args[1]
            wanted = args[1:] or None
            lines = ['-P %s ACCEPT' % c for c in ('INPUT', 'FORWARD', 'OUTPUT') if not wanted or c in wanted]
            lines += ['-N %s' % c for c in self.chains if not wanted or c in wanted]
            lines += ['-A %s %s' % (c, ' '.join(r)) for c, r in self.rules if not wanted or c in wanted]
            return 0, '\n'.join(lines) + '\n', ''
        if args[0] == '-D':
            rule = (args[1], args[2:])
            if rule not in self.rules:
                return 1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n'
            self.rules.remove(rule)
        elif args[0] == '-F':
            self.rules = [(c, r) for c, r in self.rules if c != args[1]]
        elif args[0] == '-X':
            if any(r[-1] == args[1] for _c, r in self.rules):
                return 4, '', 'iptables v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain %s\n' % args[1]
            self.chains.remove(args[1])
        return 0, '', ''


STEP = {'type': 'iptables_chain', 'chain': CHAIN, 'hook': 'INPUT'}
OURS = [('INPUT', ['-j', CHAIN]), (CHAIN, ['-p', 'tcp', '-m', 'tcp', '--dport', '22', '-j', 'RETURN']),
        (CHAIN, ['-s', '10.0.0.1/32', '-m', 'comment', '--comment', 'a b', '-j', 'DROP'])]


def looks(bins, gone=False):
    """The listings of one look: the hook, the chain, and the whole table when the chain is not listed."""
    return [ipt(bins, '-S', 'INPUT'), ipt(bins, '-S', CHAIN)] + ([ipt(bins, '-S')] if gone else [])


def test_iptables_chain_already_gone_is_seen_not_guessed(bins):
    other = 'pggit-chaos-99999999-in'
    runner = Iptables(bins, [other], [('INPUT', ['-j', other])])
    assert _steps.run_steps([STEP], {'runner': runner}) is False
    assert runner.argvs == looks(bins, gone=True)  # looked, and touched nothing
    assert runner.chains == [other] and runner.rules == [('INPUT', ['-j', other])]


def test_iptables_chain_is_unhooked_flushed_deleted_then_confirmed(bins):
    runner = Iptables(bins, [CHAIN], OURS)
    assert _steps.run_steps([STEP], {'runner': runner}) is True
    assert runner.argvs == looks(bins) + [ipt(bins, '-D', 'INPUT', '-j', CHAIN), ipt(bins, '-F', CHAIN), ipt(bins, '-X', CHAIN)] \
        + looks(bins, gone=True)
    assert (runner.chains, runner.rules) == ([], [])


def test_iptables_chain_jumped_to_twice_loses_both_jumps(bins):
    runner = Iptables(bins, [CHAIN], OURS + [('INPUT', ['-j', CHAIN])])
    assert _steps.run_steps([STEP], {'runner': runner}) is True
    assert runner.argvs.count(ipt(bins, '-D', 'INPUT', '-j', CHAIN)) == 2
    assert (runner.chains, runner.rules) == ([], [])


def test_iptables_chain_only_its_jump_left_is_removed(bins):
    runner = Iptables(bins, [], [('INPUT', ['-j', CHAIN])])
    assert _steps.run_steps([STEP], {'runner': runner}) is True
    assert runner.argvs == looks(bins, gone=True) + [ipt(bins, '-D', 'INPUT', '-j', CHAIN)] + looks(bins, gone=True)


def test_iptables_chain_still_referenced_is_an_error_naming_command_rc_output_and_user(bins):
    foreign = ('FORWARD', ['-s', '1.2.3.4/32', '-j', CHAIN])
    runner = Iptables(bins, [CHAIN], OURS + [foreign])
    with pytest.raises(UndoError) as exc:
        _steps.run_steps([STEP], {'runner': runner})
    assert str(exc.value) == (
        '1 of 1 undo steps failed (the others ran): step 1 (iptables_chain %s): chain %s is still there after the revert: '
        '%s exited 4: iptables v1.8.9 (nf_tables): CHAIN_DEL failed (Device or resource busy): chain %s; '
        'rules we did not make still use it: -A FORWARD -s 1.2.3.4/32 -j %s'
        % (CHAIN, CHAIN, ' '.join(ipt(bins, '-X', CHAIN)), CHAIN, CHAIN))
    assert runner.rules == [foreign]  # ours flushed and unhooked; never a rule we did not make
    assert runner.chains == [CHAIN]


@pytest.mark.parametrize('rc, err', [(1, 'iptables: No chain/target/match by that name.\n'), (2, 'Bad argument\n'),
                                     (4, 'iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied\n')])
def test_iptables_chain_that_cannot_be_listed_is_never_gone(bins, rc, err):
    runner = Iptables(bins, replies=[(ipt(bins, '-S', CHAIN), [(rc, '', err)]), (ipt(bins, '-S'), [(rc, '', err)])])
    with pytest.raises(UndoError, match='cannot look for chain %s: %s exited %d: %s; %s exited %d: %s' % (
            CHAIN, re.escape(' '.join(ipt(bins, '-S', CHAIN))), rc, re.escape(err.strip()), re.escape(' '.join(ipt(bins, '-S'))), rc,
            re.escape(err.strip()))):
        _steps.run_steps([STEP], {'runner': runner})


def test_iptables_hook_that_cannot_be_listed_is_never_gone(bins):
    runner = Iptables(bins, replies=[(ipt(bins, '-S', 'INPUT'), [(1, '', 'iptables: Permission denied.\n')])])
    with pytest.raises(UndoError, match='cannot look for the jumps from INPUT to %s: .* exited 1: iptables: Permission denied.' % CHAIN):
        _steps.run_steps([STEP], {'runner': runner})


def test_iptables_chain_seen_through_its_own_listing_when_the_table_is_unreadable(bins):
    incompatible = (1, '', "iptables v1.8.9 (nf_tables): table `filter' is incompatible, use 'nft' tool.\n")
    runner = Iptables(bins, [CHAIN], OURS, replies=[(ipt(bins, '-S'), [incompatible])])
    with pytest.raises(UndoError, match="cannot look for chain %s: .* is incompatible" % CHAIN):
        _steps.run_steps([STEP], {'runner': runner})  # deleted, but gone cannot be seen: never assumed
    assert (runner.chains, runner.rules) == ([], [])


def test_iptables_chain_a_command_says_ok_but_the_chain_stays(bins):
    runner = Iptables(bins, [CHAIN], OURS, replies=[(ipt(bins, '-X', CHAIN), [(0, '', '')])])
    with pytest.raises(UndoError, match='chain %s is still there after the revert: every command exited 0' % CHAIN):
        _steps.run_steps([STEP], {'runner': runner})


def test_binaries_come_from_the_search_path_never_from_the_record(bins):
    step = dict(STEP, argv=['/tmp/evil'], iptables='/tmp/evil', binary='/tmp/evil')
    runner = Iptables(bins)
    assert _steps.run_steps([step], {'runner': runner}) is False
    assert {argv[0] for argv in runner.argvs} == {bins + '/iptables'}


def test_a_missing_binary_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(tmp_path),))
    with pytest.raises(UndoError, match='iptables not found in %s' % tmp_path):
        _steps.run_steps([STEP], {'runner': Script([])})


IF = 'pgnb0'
QSTEP = {'type': 'tc_qdisc', 'interface': IF, 'handle': '7a3c:'}
LINKS = (0, '1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\\    link/loopback 00:00:00:00:00:00\n'
            '7: %s@if8: <BROADCAST,UP> mtu 1500 qdisc htb state UP\\    link/ether 5a:1e:00:00:00:01\n' % IF, '')
NO_LINK = (0, '1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\\    link/loopback 00:00:00:00:00:00\n', '')
OUR_QDISC = (0, 'qdisc htb 7a3c: root refcnt 2 r2q 10 default 0\nqdisc netem 7a3d: parent 7a3c:4 limit 1000\n', '')
NOQUEUE = (0, 'qdisc noqueue 0: root refcnt 2\n', '')


def tc(bins, *args):
    return [bins + '/tc'] + list(args)


def links(bins):
    return [bins + '/ip', '-o', 'link', 'show']


def test_tc_qdisc_of_a_vanished_interface_is_gone(bins):
    runner = Script([(links(bins), [NO_LINK])])
    assert _steps.run_steps([QSTEP], {'runner': runner}) is False
    assert runner.argvs == [links(bins)]


def test_tc_qdisc_that_is_not_ours_is_left_alone(bins):
    runner = Script([(links(bins), [LINKS]), (tc(bins, 'qdisc', 'show', 'dev', IF), [(0, 'qdisc htb 1: root refcnt 2\n', '')])])
    assert _steps.run_steps([QSTEP], {'runner': runner}) is False
    assert not [argv for argv in runner.argvs if 'del' in argv]


def test_tc_qdisc_ours_is_deleted_then_confirmed(bins):
    show = tc(bins, 'qdisc', 'show', 'dev', IF)
    runner = Script([(links(bins), [LINKS]), (show, [OUR_QDISC, NOQUEUE])])
    assert _steps.run_steps([QSTEP], {'runner': runner}) is True
    assert runner.argvs == [links(bins), show, tc(bins, 'qdisc', 'del', 'dev', IF, 'root', 'handle', '7a3c:'), links(bins), show]


def test_tc_qdisc_that_stays_is_an_error_naming_command_rc_and_output(bins):
    show = tc(bins, 'qdisc', 'show', 'dev', IF)
    delete = tc(bins, 'qdisc', 'del', 'dev', IF, 'root', 'handle', '7a3c:')
    runner = Script([(links(bins), [LINKS]), (show, [OUR_QDISC]), (delete, [(2, '', 'RTNETLINK answers: Operation not permitted\n')])])
    with pytest.raises(UndoError, match='root qdisc 7a3c: on %s is still there after the revert: %s exited 2: RTNETLINK answers: '
                                        'Operation not permitted' % (IF, re.escape(' '.join(delete)))):
        _steps.run_steps([QSTEP], {'runner': runner})


def test_tc_qdisc_unreadable_on_a_live_interface_is_never_gone(bins):
    show = tc(bins, 'qdisc', 'show', 'dev', IF)
    runner = Script([(links(bins), [LINKS]), (show, [(2, '', 'Error: something broke\n')])])
    with pytest.raises(UndoError, match='cannot read the qdiscs of %s: .* exited 2: Error: something broke' % IF):
        _steps.run_steps([QSTEP], {'runner': runner})


def test_tc_qdisc_interface_gone_while_reading_is_gone(bins):
    show = tc(bins, 'qdisc', 'show', 'dev', IF)
    runner = Script([(links(bins), [LINKS, NO_LINK]), (show, [(1, '', 'Cannot find device "%s"\n' % IF)])])
    assert _steps.run_steps([QSTEP], {'runner': runner}) is False


@pytest.mark.parametrize('text, names', [
    (LINKS[1], {'lo', IF}),
    ('', set()),
    ('2: eth0: <BROADCAST> mtu 1500\n3: br-pg: <BROADCAST> mtu 1500\n', {'eth0', 'br-pg'}),
])
def test_parse_links(text, names):
    assert _steps.parse_links(text) == names


# -- records written by release 0.1.0 ---------------------------------------
LEGACY_PARTITION = [  # what 0.1.0's chain_plan recorded for a partition in both directions
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-X', 'pggit-chaos-1234abcd-in'], 'ok_rc': [0], 'gone_rc': [1]},
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-F', 'pggit-chaos-1234abcd-in'], 'ok_rc': [0], 'gone_rc': [1]},
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-X', 'pggit-chaos-1234abcd-out'], 'ok_rc': [0], 'gone_rc': [1]},
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-F', 'pggit-chaos-1234abcd-out'], 'ok_rc': [0], 'gone_rc': [1]},
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-D', 'INPUT', '-j', 'pggit-chaos-1234abcd-in'], 'ok_rc': [0], 'gone_rc': [1]},
    {'type': 'run', 'argv': ['/usr/sbin/iptables', '-w', '-D', 'OUTPUT', '-j', 'pggit-chaos-1234abcd-out'], 'ok_rc': [0], 'gone_rc': [1]},
]


def test_a_partition_record_of_release_0_1_0_becomes_typed_steps_that_pass_the_check():
    upgraded = _steps.upgrade_steps(LEGACY_PARTITION)
    assert upgraded == [{'type': 'iptables_chain', 'chain': 'pggit-chaos-1234abcd-in', 'hook': 'INPUT'},
                        {'type': 'iptables_chain', 'chain': 'pggit-chaos-1234abcd-out', 'hook': 'OUTPUT'}]
    _steps.check_steps(upgraded, '/var/lib/pggit-chaos')


def test_a_netem_record_of_release_0_1_0_becomes_a_tc_qdisc_step():
    legacy = [{'type': 'run', 'argv': ['/usr/sbin/tc', 'qdisc', 'del', 'dev', 'eth0', 'root', 'handle', '7a3c:'],
               'ok_rc': [0], 'gone_rc': [2]}]
    assert _steps.upgrade_steps(legacy) == [{'type': 'tc_qdisc', 'interface': 'eth0', 'handle': '7a3c:'}]


def test_any_other_run_step_stays_and_is_refused():
    forged = [{'type': 'run', 'argv': ['/bin/rm', '-rf', '/']}]
    assert _steps.upgrade_steps(forged) == forged
    with pytest.raises(UndoError, match='run'):
        _steps.check_steps(_steps.upgrade_steps(forged), '/var/lib/pggit-chaos')
