"""The fault lifecycle (ChaosModule) with real reaper processes and a small file fault."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _ledger, _reaper, _steps, chaos
from modrun import run_module
from waiting import wait_for


class FileFault(chaos.Fault):
    """Writes <state_dir>/fault-<name> (after ``slow`` seconds); the undo removes it."""

    kind = 'file'

    def path(self):
        return os.path.join(self.params['state_dir'], 'fault-' + self.params['name'])

    def observe(self):
        return {'exists': os.path.isfile(self.path())}

    def in_place(self, record, current):
        return current['exists']

    def plan(self, current):
        undo = [{'type': 'remove_path', 'path': self.path(), 'root': self.params['state_dir']}]
        return undo, {'path': self.path()}, {'exists': True}

    def apply(self, detail):
        time.sleep(float(os.environ.get('TEST_FILE_FAULT_SLOW', '0')))
        with open(detail['path'], 'w') as handle:
            handle.write('fault')
        return {'budget_ms': self.remaining_ms()}


def main():
    chaos.ChaosModule().run(FileFault)


@pytest.fixture
def state_dir(tmp_path):
    path = str(tmp_path / 'state')
    yield path
    ledger = _ledger.Ledger(path)
    for record in ledger.list() if ledger.exists() else []:
        reaper = record.get('reaper') or {}
        if reaper.get('pid'):
            _steps.stop_process(reaper['pid'], reaper.get('starttime'))
        ledger.delete(record['id'])


@pytest.fixture(autouse=True)
def no_boot_hooks(monkeypatch, tmp_path):
    # This machine has neither systemd nor cron; make that explicit so no test writes under /etc.
    monkeypatch.setattr(_boot, 'SYSTEMD_RUN', str(tmp_path / 'no-systemd'))
    monkeypatch.setattr(_boot, 'CRON_DIR', str(tmp_path / 'no-cron'))


def inject(state_dir, name='f', ttl=30, **extra):
    return run_module(main, dict(name=name, ttl=ttl, state_dir=state_dir, **extra))


def test_inject_arms_a_reaper_and_records_the_missing_boot_hook(state_dir):
    result, failed = inject(state_dir)
    assert not failed, result['msg']
    record = _ledger.Ledger(state_dir).read('file--f')
    assert record['status'] == 'active' and record['applier'] is None
    assert _reaper.alive(record)
    assert record['boot_hook']['kind'] == 'none'
    assert 'playbooks/revert.yml' in result['boot_hook']['why']  # under /tmp: no hook, and it says why
    assert 0 < result['budget_ms'] <= 30000


def test_an_apply_slower_than_the_ttl_is_reverted_after_it_lands(state_dir, monkeypatch):
    monkeypatch.setattr(chaos, 'TTL_MIN', 1)
    monkeypatch.setenv('TEST_FILE_FAULT_SLOW', '2.5')
    result, failed = inject(state_dir, ttl=1)
    assert failed
    assert 'longer than its ttl of 1 s' in result['msg'] and 'reverted again' in result['msg']
    assert result['revert']['result'] == 'reverted'
    # Before the fix the record came back as 'active' with no reaper: a permanent fault.
    assert not os.path.exists(os.path.join(state_dir, 'fault-f')), 'the late apply left its fault behind'
    assert _ledger.Ledger(state_dir).list() == []
    log = open(os.path.join(state_dir, 'reaper.log')).read()
    assert 'still applying' in log  # the reaper did fire during the apply, and deferred


def test_a_dead_reaper_is_rearmed_by_the_next_call(state_dir):
    inject(state_dir)
    ledger = _ledger.Ledger(state_dir)
    old = ledger.read('file--f')['reaper']
    os.kill(old['pid'], signal.SIGKILL)
    assert wait_for(lambda: not _steps.same_process(old['pid'], old['starttime']), 5)
    result, failed = inject(state_dir)
    assert not failed and result['changed']
    assert 'already in place' in result['msg']
    new = ledger.read('file--f')['reaper']
    assert new['pid'] != old['pid'] and result['rearmed']['pid'] == new['pid']
    assert _reaper.alive(ledger.read('file--f'))


def test_an_expired_record_whose_reaper_died_is_reverted_at_once(state_dir):
    inject(state_dir)
    ledger = _ledger.Ledger(state_dir)
    record = ledger.read('file--f')
    _steps.stop_process(record['reaper']['pid'], record['reaper']['starttime'])
    record['expires_at'] = time.time() - 60  # e.g. the host was down past the TTL
    ledger.write(record)
    result, failed = inject(state_dir, _ansible_check_mode=True)
    assert not failed and 'would revert file--f' in result['expired_record']
    assert ledger.read('file--f')['expires_at'] == record['expires_at'], 'check mode changes nothing'
    result, failed = inject(state_dir)
    assert not failed
    assert result['expired_record']['result'] == 'reverted'
    fresh = ledger.read('file--f')
    assert fresh['expires_at'] > time.time() + 20 and _reaper.alive(fresh)


def test_a_failed_cleanup_of_the_old_record_fails_and_arms_no_second_reaper(state_dir):
    inject(state_dir)
    ledger = _ledger.Ledger(state_dir)
    record = ledger.read('file--f')
    # The old fault is not in place any more and its undo cannot run (a folder where the file was).
    os.unlink(os.path.join(state_dir, 'fault-f'))
    os.mkdir(os.path.join(state_dir, 'fault-f'))
    result, failed = inject(state_dir)
    assert failed
    assert 'could not be reverted, so it is not injected again' in result['msg']
    after = ledger.read('file--f')
    assert after['reaper'] == record['reaper'] and after['created_at'] == record['created_at']
    reapers = [p for p in os.listdir('/proc') if p.isdigit() and state_dir in _steps.proc_cmdline(int(p))]
    assert len(reapers) == 1
    os.rmdir(os.path.join(state_dir, 'fault-f'))


@pytest.mark.parametrize('name', ['a/b', 'a\nb', 'café', '', 'n' * 129, '.hidden'])
def test_a_name_outside_the_id_alphabet_is_refused_and_nothing_is_written(state_dir, name):
    result, failed = inject(state_dir, name=name)
    assert failed and result['changed'] is False
    assert result['msg'].startswith('name must be 1 to 128 characters') and repr(name) in result['msg']
    assert not os.path.exists(os.path.join(state_dir, 'faults')) or not os.listdir(os.path.join(state_dir, 'faults'))


def test_a_state_dir_writable_by_others_fails_unchanged_naming_the_option(tmp_path):
    bad = tmp_path / 'state'
    bad.mkdir()
    os.chmod(str(bad), 0o777)
    result, failed = inject(str(bad))
    assert failed and result['changed'] is False
    assert result['msg'].startswith('state_dir') and str(bad) in result['msg']
    assert not (bad / 'faults').exists()


def test_check_mode_on_a_missing_state_dir_creates_nothing(tmp_path):
    path = tmp_path / 'never'
    result, failed = run_module(main, dict(name='f', ttl=30, state_dir=str(path)), check_mode=True)
    assert not failed and result['changed']
    assert not path.exists()


def test_bound_sql_sets_both_timeouts_from_what_is_left_of_the_ttl():
    class Cursor(object):
        def __init__(self):
            self.sql = []

        def execute(self, text, args):
            self.sql.append((text, args))

    fault = FileFault.__new__(FileFault)
    fault.deadline = time.time() + 4
    cursor = Cursor()
    budget = fault.bound_sql(cursor)
    assert 3000 < budget <= 4000
    assert cursor.sql == [('SET LOCAL lock_timeout = %s', (budget,)), ('SET LOCAL statement_timeout = %s', (budget,))]
    fault.deadline = time.time() - 10
    assert fault.remaining_ms() == 1


class SecretFileFault(FileFault):
    def secret(self):
        return {'login_password': 's3cret-pw'}


def test_the_secret_goes_to_the_side_file_never_into_the_record(state_dir):
    result, failed = run_module(lambda: chaos.ChaosModule().run(SecretFileFault), dict(name='f', ttl=30, state_dir=state_dir))
    assert not failed, result['msg']
    with open(os.path.join(state_dir, 'faults', 'file--f.json')) as handle:
        text = handle.read()
    record = json.loads(text)
    assert set(record) >= {'id', 'undo', 'reaper', 'applier', 'boot_hook', 'expires_at'}
    assert 's3cret-pw' not in text and 's3cret-pw' not in json.dumps(result)
    assert _ledger.Ledger(state_dir).read_secret('file--f') == {'login_password': 's3cret-pw'}


def test_any_call_tends_an_orphaned_record_of_another_fault(state_dir):
    """A module SIGKILLed between writing its record and arming its reaper left a record nobody watches."""
    ledger = _ledger.Ledger(state_dir).ensure()
    orphan_path = os.path.join(state_dir, 'fault-orphan')
    open(orphan_path, 'w').close()
    orphan = ledger.new_record('file', 'orphan', 30, [{'type': 'remove_path', 'path': orphan_path, 'root': state_dir}])
    orphan['applier'] = {'pid': 999999, 'starttime': 1}  # the module that wrote it is gone
    ledger.write(orphan)
    expired_path = os.path.join(state_dir, 'fault-old')
    open(expired_path, 'w').close()
    old = ledger.new_record('file', 'old', 30, [{'type': 'remove_path', 'path': expired_path, 'root': state_dir}],
                            now=time.time() - 60)
    old.update(status='active', reaper={'pid': 999999, 'starttime': 1})
    ledger.write(old)
    result, failed = inject(state_dir, name='another')
    assert not failed, result['msg']
    tended = dict((t['id'], t) for t in result['tended'])
    assert tended['file--old']['reverted'] == 'reverted' and not os.path.exists(expired_path)
    assert 'rearmed' in tended['file--orphan'] and _reaper.alive(ledger.read('file--orphan'))


# -- the same fault asked with other options ---------------------------------------------------------------------------
class ContentFault(FileFault):
    """The file holds ``content``; ``wait_s`` only says how long to wait (volatile); ``token`` is a secret."""

    volatile_options = ('wait_s',)

    def apply(self, detail):
        with open(detail['path'], 'w') as handle:
            handle.write(self.params['content'])
        return {}


def content_main():
    chaos.ChaosModule(dict(content=dict(type='str', default='a'), wait_s=dict(type='float', default=0),
                           token=dict(type='str', no_log=True))).run(ContentFault)


def inject_content(state_dir, check_mode=False, **extra):
    return run_module(content_main, dict(name='f', ttl=30, state_dir=state_dir, **extra), check_mode=check_mode)


def held(state_dir):
    with open(os.path.join(state_dir, 'fault-f')) as handle:
        return handle.read()


def test_the_same_fault_with_other_options_is_replaced_not_kept(state_dir):
    ledger = _ledger.Ledger(state_dir)
    result, failed = inject_content(state_dir, content='a', token='s3cret')
    assert not failed and result['changed'] and held(state_dir) == 'a'
    first = ledger.read('file--f')
    assert first['options'] == {'content': 'a'}, 'no lifecycle, volatile or no_log option is kept'
    assert 's3cret' not in json.dumps(first)

    result, failed = inject_content(state_dir, content='a', wait_s=5, token='other')
    assert not failed and not result['changed'] and 'already in place' in result['msg'] and 'replaced' not in result

    result, failed = inject_content(state_dir, content='b', check_mode=True)
    assert not failed and result['changed'] and result['msg'].startswith('would replace file--f')
    assert result['replaced'] == {'content': {'before': 'a', 'after': 'b'}}
    assert held(state_dir) == 'a' and ledger.read('file--f')['reaper'] == first['reaper'], 'check mode changed something'

    result, failed = inject_content(state_dir, content='b')
    assert not failed and result['changed'], result
    assert result['replaced'] == {'content': {'before': 'a', 'after': 'b'}}
    assert result['stale_reverted']['result'] == 'reverted'
    assert held(state_dir) == 'b'
    second = ledger.read('file--f')
    assert second['options'] == {'content': 'b'} and second['status'] == 'active' and _reaper.alive(second)
    assert wait_for(lambda: not _steps.same_process(first['reaper']['pid'], first['reaper']['starttime']), 5), \
        'the replaced fault kept its reaper'
    assert [r['id'] for r in ledger.list()] == ['file--f']


def test_a_record_from_before_options_were_kept_is_judged_by_in_place_alone(state_dir):
    inject_content(state_dir, content='a')
    ledger = _ledger.Ledger(state_dir)
    with ledger.lock():
        record = ledger.read('file--f')
        del record['options']
        ledger.write(record)
    result, failed = inject_content(state_dir, content='b')
    assert not failed and not result['changed'] and 'already in place' in result['msg']
    assert held(state_dir) == 'a'


def test_option_changes_names_each_changed_option():
    assert chaos.option_changes({'a': 1, 'b': [1]}, {'a': 1, 'b': [2], 'c': None}) == {'b': {'before': [1], 'after': [2]}}
    assert chaos.option_changes(None, {'a': 1}) == {} and chaos.option_changes({'a': 1}, None) == {}


class QuietContentFault(ContentFault):
    """Nothing to inject when ``content`` is empty."""

    def noop_reason(self, current):
        return 'content is empty: nothing to write' if not self.params['content'] else None


def quiet_content_main():
    chaos.ChaosModule(dict(content=dict(type='str', default='a'), wait_s=dict(type='float', default=0),
                           token=dict(type='str', no_log=True))).run(QuietContentFault)


def test_a_replace_with_nothing_to_inject_says_the_fault_in_place_was_reverted(state_dir):
    result, failed = run_module(quiet_content_main, dict(name='f', ttl=30, state_dir=state_dir, content='a'))
    assert not failed and held(state_dir) == 'a'
    result, failed = run_module(quiet_content_main, dict(name='f', ttl=30, state_dir=state_dir, content=''))
    assert not failed and result['changed'] and not os.path.exists(os.path.join(state_dir, 'fault-f'))
    assert result['msg'].startswith('reverted file--f (in place with other options: content)'), result['msg']
    assert 'content is empty' in result['msg'] and _ledger.Ledger(state_dir).list() == []
