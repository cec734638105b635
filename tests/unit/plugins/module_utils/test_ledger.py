from __future__ import annotations

import fcntl
import os
import stat
import threading

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger
from ansible_collections.pggit.chaos.plugins.module_utils._ledger import Ledger, LedgerError, fault_id


@pytest.fixture
def ledger(tmp_path):
    return Ledger(str(tmp_path / 'state')).ensure()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def record(ledger, name='tracking-off', kind='trigger', ttl=60, now=1000.0, **extra):
    return ledger.new_record(kind, name, ttl, [{'type': 'kill_process', 'pid': 4242, 'starttime': 1, 'match': 'pggit-chaos-nfqdelay'}], now=now, **extra)


@pytest.mark.parametrize('name', ['tracking-off', 'a', 'A.b_c-9', 'n' * 128, 'trigger_failure-lab1-18c1f2a3b4c'])
def test_fault_id_keeps_a_good_name_as_it_is(ledger, name):
    fid = fault_id('trigger', name)
    assert fid == 'trigger--' + name
    assert os.path.dirname(ledger._path(fid)) == ledger.faults_dir


@pytest.mark.parametrize('name', [
    'a/b', 'a_b/', 'a\nb', 'a b', '../../etc/passwd', 'café-au-lait', 'ü', 'x;rm -rf /', '.hidden', '-dash', '',
    'n' * 129, 'a\n', None,
])
def test_fault_id_refuses_names_it_would_have_to_rewrite(name):
    # a/b, a_b and a\nb used to map to one id; non-ASCII to an empty one; long names were cut.
    with pytest.raises(LedgerError) as err:
        fault_id('trigger', name)
    assert 'name must be 1 to 128 characters' in str(err.value)
    assert repr(name) in str(err.value)


def test_names_that_used_to_collide_now_get_distinct_ids_or_are_refused():
    assert fault_id('trigger', 'a_b') == 'trigger--a_b'
    for other in ('a/b', 'a\nb'):
        with pytest.raises(LedgerError):
            fault_id('trigger', other)


@pytest.mark.parametrize('fid', ['../escape', '.hidden', 'a/b', 'a b', 'a\nb', 'x\n', ''])
def test_unsafe_ids_are_refused_by_the_ledger(ledger, fid):
    with pytest.raises(LedgerError, match='invalid fault id'):
        ledger._path(fid)


@pytest.mark.parametrize('state_dir', ['rel', 'rel/dir', './x', '', None])
def test_relative_state_dir_is_refused_naming_the_value(state_dir):
    with pytest.raises(LedgerError) as err:
        Ledger(state_dir)
    assert 'absolute path' in str(err.value)
    assert repr(state_dir) in str(err.value)


def test_ensure_creates_private_dirs(tmp_path):
    ledger = Ledger(str(tmp_path / 'a' / 'b'))
    assert not ledger.exists()
    ledger.ensure().ensure()  # idempotent
    assert ledger.exists()
    assert mode(ledger.state_dir) == 0o700
    assert mode(ledger.faults_dir) == 0o700


def test_new_record_expires_after_ttl(ledger):
    rec = record(ledger, ttl=60, now=1000.0, experiment='exp1', detail={'k': 1})
    assert rec['id'] == 'trigger--tracking-off'
    assert (rec['created_at'], rec['expires_at']) == (1000.0, 1060.0)
    assert rec['status'] == 'pending'
    assert rec['reaper'] is None
    assert (rec['experiment'], rec['detail']) == ('exp1', {'k': 1})


def test_write_is_atomic_private_and_round_trips(ledger):
    rec = record(ledger)
    path = ledger.write(rec)
    assert path == os.path.join(ledger.faults_dir, rec['id'] + '.json')
    assert os.listdir(ledger.faults_dir) == [rec['id'] + '.json']  # no temp file left
    assert mode(path) == 0o600
    assert ledger.read(rec['id']) == rec
    rec['status'] = 'active'
    ledger.write(rec)
    assert ledger.read(rec['id'])['status'] == 'active'
    assert os.listdir(ledger.faults_dir) == [rec['id'] + '.json']


def test_failed_write_keeps_the_old_record_and_leaves_no_temp(ledger):
    rec = record(ledger)
    ledger.write(rec)
    broken = dict(rec, detail={'not json': object()})
    with pytest.raises(TypeError):
        ledger.write(broken)
    assert os.listdir(ledger.faults_dir) == [rec['id'] + '.json']
    assert ledger.read(rec['id']) == rec


def test_read_missing_is_none(ledger):
    assert ledger.read('trigger--nothing') is None


def test_list_skips_temp_and_dot_files_and_reports_corrupt_records(ledger):
    good = record(ledger, name='good')
    ledger.write(good)
    for junk, text in (('.trigger--good.abc.tmp', '{'), ('.hidden.json', '{}'), ('notes.txt', 'x'),
                       ('trigger--good.secret', '{}')):
        with open(os.path.join(ledger.faults_dir, junk), 'w') as handle:
            handle.write(text)
    with open(os.path.join(ledger.faults_dir, 'trigger--bad.json'), 'w') as handle:
        handle.write('{"id": "trigger--bad", ')
    listed = ledger.list()
    assert [r['id'] for r in listed] == ['trigger--bad', 'trigger--good']
    bad = listed[0]
    assert bad['corrupt'] is True and bad['undo'] == [] and bad['error']
    assert listed[1] == good


def test_list_of_a_missing_ledger_is_empty(tmp_path):
    ledger = Ledger(str(tmp_path / 'never'))
    assert ledger.list() == []
    assert not os.path.exists(ledger.state_dir)  # listing creates nothing


def test_secret_is_private_separate_and_deleted_with_the_record(ledger):
    rec = record(ledger)
    ledger.write_secret(rec['id'], {'login_password': 's3cr3t'})
    ledger.write(rec)
    secret_path = ledger._path(rec['id'], '.secret')
    assert mode(secret_path) == 0o600
    assert sorted(os.listdir(ledger.faults_dir)) == [rec['id'] + '.json', rec['id'] + '.secret']
    with open(ledger._path(rec['id'])) as handle:
        assert 's3cr3t' not in handle.read()
    assert ledger.read_secret(rec['id']) == {'login_password': 's3cr3t'}
    assert [r['id'] for r in ledger.list()] == [rec['id']]
    ledger.delete(rec['id'])
    assert os.listdir(ledger.faults_dir) == []
    assert ledger.read_secret(rec['id']) == {}


def test_delete_is_idempotent(ledger, tmp_path):
    rec = record(ledger)
    ledger.write(rec)
    ledger.delete(rec['id'])
    ledger.delete(rec['id'])
    assert ledger.read(rec['id']) is None
    Ledger(str(tmp_path / 'never')).delete(rec['id'])  # no ledger at all: still fine


def _try_lock(path):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_lock_is_exclusive_and_released_even_on_error(ledger):
    lock_path = os.path.join(ledger.state_dir, _ledger.LOCK_FILE)
    with ledger.lock():
        assert mode(lock_path) == 0o600
        assert not _try_lock(lock_path)
    assert _try_lock(lock_path)
    with pytest.raises(RuntimeError):
        with ledger.lock():
            raise RuntimeError('boom')
    assert _try_lock(lock_path)


def test_lock_serialises_threads(ledger):
    events = []

    def second():
        with Ledger(ledger.state_dir).lock():
            events.append('second acquired')

    with ledger.lock():
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), 'second lock holder got in while the first held the lock'
        events.append('first released')
    thread.join(5)
    assert not thread.is_alive()
    assert events == ['first released', 'second acquired']


@pytest.mark.parametrize('extra, expected_keys', [
    ({}, {'id', 'kind', 'name', 'experiment', 'created_at', 'expires_at', 'ttl', 'status', 'undo', 'reaper'}),
    ({'last_error': 'UndoError: x'}, {'id', 'kind', 'name', 'experiment', 'created_at', 'expires_at', 'ttl', 'status',
                                      'undo', 'reaper', 'last_error'}),
])
def test_summarize_returns_only_safe_keys(ledger, extra, expected_keys):
    rec = dict(record(ledger), **extra)
    rec['login_password'] = 'never shown'
    summary = _ledger.summarize(rec)
    assert set(summary) == expected_keys
    assert 'host' not in summary and 'detail' not in summary


# -- state dir security (a local user must not get root through it) ---------------------------------
def test_a_state_dir_writable_by_others_is_refused(tmp_path):
    path = tmp_path / 'state'
    path.mkdir(mode=0o777)
    os.chmod(str(path), 0o777)  # pre-created by a local user, say
    with pytest.raises(LedgerError, match=r'writable by group or others \(mode 0777\)'):
        Ledger(str(path)).ensure()
    assert not (path / 'faults').exists(), 'nothing is created in a refused state dir'


def test_a_state_dir_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / 'state'
    path.mkdir(mode=0o700)
    os.chown(str(path), 65534, 65534)
    with pytest.raises(LedgerError, match='owned by uid 65534, not by the user running pggit.chaos'):
        Ledger(str(path)).ensure()


def test_a_faults_folder_owned_by_another_user_is_refused(tmp_path):
    ledger = Ledger(str(tmp_path / 'state')).ensure()
    os.chown(ledger.faults_dir, 65534, 65534)
    with pytest.raises(LedgerError, match='faults is owned by uid 65534'):
        ledger.ensure()


def test_a_lib_folder_writable_by_others_is_refused(tmp_path):
    ledger = Ledger(str(tmp_path / 'state')).ensure()
    lib = ledger.lib_dir()
    assert mode(lib) == 0o700
    os.chmod(lib, 0o757)
    with pytest.raises(LedgerError, match='lib is writable by group or others'):
        ledger.lib_dir()


def test_a_symlinked_state_dir_is_refused(tmp_path):
    real = tmp_path / 'real'
    real.mkdir(mode=0o700)
    link = tmp_path / 'state'
    link.symlink_to(real)
    with pytest.raises(LedgerError, match='is a symbolic link'):
        Ledger(str(link)).ensure()


def test_a_parent_another_user_can_write_is_refused(tmp_path):
    parent = tmp_path / 'shared'
    parent.mkdir()
    os.chmod(str(parent), 0o777)  # no sticky bit: anyone may rename our state dir away
    with pytest.raises(LedgerError, match='parent .*shared is writable by group or others without the sticky bit'):
        Ledger(str(parent / 'state')).ensure()
    os.chmod(str(parent), 0o1777)  # like /tmp: fine
    Ledger(str(parent / 'state')).ensure()


def test_a_parent_owned_by_another_user_is_refused(tmp_path):
    parent = tmp_path / 'theirs'
    parent.mkdir(mode=0o755)
    os.chown(str(parent), 65534, 65534)
    with pytest.raises(LedgerError, match='its parent .*theirs is owned by uid 65534'):
        Ledger(str(parent / 'state')).ensure()


def test_the_secret_never_follows_a_planted_symlink(ledger, tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('untouched')
    fid = 'trigger--x'
    # An attacker who could plant links (the old code wrote <secret>.tmp by name).
    os.symlink(str(victim), os.path.join(ledger.faults_dir, fid + '.secret.tmp'))
    ledger.write_secret(fid, {'login_password': 'pw'})
    assert victim.read_text() == 'untouched'
    assert ledger.read_secret(fid) == {'login_password': 'pw'}
    assert mode(os.path.join(ledger.faults_dir, fid + '.secret')) == 0o600


def test_a_record_that_is_a_symlink_is_read_as_corrupt_not_followed(ledger, tmp_path):
    target = tmp_path / 'elsewhere.json'
    target.write_text('{"id": "trigger--x", "undo": []}')
    os.symlink(str(target), os.path.join(ledger.faults_dir, 'trigger--x.json'))
    record = ledger.read('trigger--x')
    assert record['corrupt'] is True
    assert 'symbolic link' in record['error']


def test_the_lock_file_is_never_followed(ledger, tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('x')
    os.symlink(str(victim), os.path.join(ledger.state_dir, '.lock.planted'))
    os.rename(os.path.join(ledger.state_dir, '.lock.planted'), os.path.join(ledger.state_dir, '.lock'))
    with pytest.raises(LedgerError, match='a symbolic link; refusing to follow it'):
        with ledger.lock():
            pass
    assert victim.read_text() == 'x'


def test_a_link_on_the_way_owned_by_another_user_is_refused(tmp_path):
    """/tmp/link (owned by nobody) -> a root-owned folder: the link's owner could retarget it at any time."""
    real = tmp_path / 'real'
    real.mkdir(mode=0o700)
    link = tmp_path / 'link'
    link.symlink_to(real)
    os.lchown(str(link), 65534, 65534)
    with pytest.raises(LedgerError, match='link is a symbolic link owned by uid 65534'):
        Ledger(str(link / 'state')).ensure()
    os.lchown(str(link), 0, 0)  # our own link is fine
    Ledger(str(link / 'state')).ensure()
