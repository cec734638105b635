"""The boot hook: installed with a fault, run the way boot runs it, removed when the ledger is empty."""
from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _boot, _ledger, _reaper, _steps, _undo


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Stand-ins for /run/systemd/system, /etc/systemd/system and /etc/cron.d."""
    paths = {'run': tmp_path / 'run-systemd', 'systemd': tmp_path / 'etc-systemd', 'cron': tmp_path / 'etc-cron.d'}
    for path in paths.values():
        path.mkdir()
    monkeypatch.setattr(_boot, 'SYSTEMD_RUN', str(paths['run']))
    monkeypatch.setattr(_boot, 'SYSTEMD_DIR', str(paths['systemd']))
    monkeypatch.setattr(_boot, 'CRON_DIR', str(paths['cron']))
    # tmp_path sits under /tmp, where a hook is refused (see the unsafe_for_boot tests below).
    monkeypatch.setattr(_boot, 'unsafe_for_boot', lambda state_dir: None)
    return paths


@pytest.fixture
def ledger(tmp_path):
    ledger = _ledger.Ledger(str(tmp_path / 'state')).ensure()
    yield ledger
    for record in ledger.list():
        reaper = record.get('reaper') or {}
        if reaper.get('pid'):
            _steps.stop_process(reaper['pid'], reaper.get('starttime'))
        ledger.delete(record['id'])


def fault_file(ledger, name, expires_in):
    """A record whose fault is a file in the state dir; its reaper is gone, as after a reboot."""
    path = os.path.join(ledger.state_dir, 'fault-' + name)
    with open(path, 'w') as handle:
        handle.write('fault')
    record = ledger.new_record('file', name, 60, [{'type': 'remove_path', 'path': path, 'root': ledger.state_dir}])
    record.update(status='active', expires_at=time.time() + expires_in,
                  reaper={'pid': 999999, 'starttime': 1})  # a process that no longer exists
    ledger.write(record)
    return record['id'], path


def exec_start(unit_path):
    with open(unit_path) as handle:
        line = next(text for text in handle if text.startswith('ExecStart='))
    return shlex.split(line[len('ExecStart='):].replace('%%', '%'))


def test_systemd_unit_reverts_expired_faults_and_rearms_the_rest_when_run_as_boot_runs_it(roots, ledger):
    expired, expired_path = fault_file(ledger, 'old', expires_in=-5)
    live, live_path = fault_file(ledger, 'new', expires_in=60)
    hook = _boot.install(ledger.state_dir)
    assert hook['kind'] == 'systemd'
    unit = open(hook['path']).read()
    assert 'Type=oneshot' in unit and 'KillMode=process' in unit and 'WantedBy=multi-user.target' in unit
    wants = roots['systemd'] / 'multi-user.target.wants' / os.path.basename(hook['path'])
    assert os.readlink(str(wants)) == hook['path']

    argv = exec_start(hook['path'])
    assert argv[1] == '-I' and argv[-3:] == ['--boot', '--state-dir', ledger.state_dir]
    proc = subprocess.run(argv, cwd='/', env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}, capture_output=True,
                          text=True, timeout=60, check=False)  # a bare environment, like systemd's
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert not os.path.exists(expired_path) and ledger.read(expired) is None
    assert os.path.exists(live_path), 'a fault that has not expired stays until its TTL'
    record = ledger.read(live)
    assert _reaper.alive(record), 'its reaper must be armed again'
    assert os.path.exists(hook['path']), 'a record is left, so the hook stays'

    # The re-armed reaper finishes the job; the last revert removes the hook.
    assert _undo.revert_one(ledger, live)['result'] == 'reverted'
    assert not os.path.exists(hook['path']) and not os.path.lexists(str(wants))


def test_cron_reboot_entry_where_there_is_no_systemd(roots, ledger, monkeypatch, tmp_path):
    os.rmdir(str(roots['run']))
    cron = tmp_path / 'crond'
    cron.write_text('')
    monkeypatch.setattr(_boot, 'CRON_DAEMONS', (str(cron),))
    expired, path = fault_file(ledger, 'old', expires_in=-1)
    hook = _boot.install(ledger.state_dir)
    assert hook == {'kind': 'cron', 'path': str(roots['cron'] / _boot.hook_name(ledger.state_dir))}
    line = [text for text in open(hook['path']) if text.startswith('@reboot')][0]
    assert line.startswith('@reboot root ')
    proc = subprocess.run(['/bin/sh', '-c', line[len('@reboot root '):]], cwd='/', capture_output=True, text=True,
                          timeout=60, check=False)  # cron hands the command to sh
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not os.path.exists(path) and ledger.list() == []
    assert not os.path.exists(hook['path']), 'an empty ledger leaves no hook behind'


def test_no_systemd_and_no_cron_is_said_plainly(roots, ledger, monkeypatch):
    os.rmdir(str(roots['run']))
    monkeypatch.setattr(_boot, 'CRON_DAEMONS', ('/nonexistent/cron',))
    hook = _boot.install(ledger.state_dir)
    assert hook['kind'] == 'none' and 'playbooks/revert.yml' in hook['why']
    assert os.listdir(str(roots['systemd'])) == [] and os.listdir(str(roots['cron'])) == []


def test_boot_with_no_ledger_does_nothing(tmp_path):
    assert _reaper.main(['--boot', '--state-dir', str(tmp_path / 'nothing-here')]) == 0
    assert not (tmp_path / 'nothing-here').exists()


def test_unit_quotes_paths_with_spaces_and_percent(roots, tmp_path):
    ledger = _ledger.Ledger(str(tmp_path / 'odd dir %n')).ensure()
    hook = _boot.install(ledger.state_dir)
    assert exec_start(hook['path'])[-1] == ledger.state_dir
    _boot.remove(ledger.state_dir)


@pytest.fixture
def strict_dir():
    """A folder no other user can write on the way to (/run is root's, 0755)."""
    path = '/run/pggit-chaos-test-%d' % os.getpid()
    os.mkdir(path, 0o700)
    yield path
    import shutil
    shutil.rmtree(path)


def test_a_state_dir_only_root_can_reach_may_have_a_hook(strict_dir):
    assert _boot.unsafe_for_boot(os.path.join(strict_dir, 'state')) is None or \
        'does not exist' in _boot.unsafe_for_boot(os.path.join(strict_dir, 'state'))
    os.mkdir(os.path.join(strict_dir, 'state'), 0o700)
    assert _boot.unsafe_for_boot(os.path.join(strict_dir, 'state')) is None


def test_no_hook_for_a_state_dir_under_tmp_or_a_link(tmp_path, strict_dir):
    # /tmp is sticky and world-writable: boot may empty it and anyone may then make the state dir there.
    ledger = _ledger.Ledger(str(tmp_path / 'state')).ensure()
    hook = _boot.install(ledger.state_dir)
    assert hook['kind'] == 'none' and '/tmp is writable by group or others (mode 1777)' in hook['why']
    os.symlink(strict_dir, os.path.join(strict_dir + '-link'))
    try:
        assert 'is a symbolic link' in _boot.unsafe_for_boot(strict_dir + '-link/state')
    finally:
        os.unlink(strict_dir + '-link')


def test_a_host_where_the_hook_cannot_be_written_gets_none_not_a_failure(roots, ledger):
    os.chmod(str(roots['systemd']), 0o500)
    try:
        if os.geteuid() == 0:  # root writes anyway; make the folder unusable instead
            os.rmdir(str(roots['systemd']))
            open(str(roots['systemd']), 'w').close()
        hook = _boot.install(ledger.state_dir)
    finally:
        if os.path.isfile(str(roots['systemd'])):
            os.unlink(str(roots['systemd']))
    assert hook['kind'] == 'none' and 'no boot hook' in hook['why'] and 'revert.yml' in hook['why']


def test_a_boot_whose_state_dir_is_gone_removes_its_own_hook(roots, tmp_path):
    state_dir = str(tmp_path / 'gone')
    _ledger.Ledger(state_dir).ensure()
    hook = _boot.install(state_dir)
    assert os.path.exists(hook['path'])
    import shutil
    shutil.rmtree(state_dir)
    assert _reaper.main(['--boot', '--state-dir', state_dir]) == 0
    assert not os.path.exists(hook['path'])


def test_unit_and_cron_lines_skip_when_the_ledger_folder_is_gone(roots, ledger):
    unit = _boot.unit_text(ledger.state_dir, ['/usr/bin/python3', '-I', 'x'])
    assert 'ConditionPathIsDirectory=%s/faults' % ledger.state_dir in unit
    cron = _boot.cron_text(ledger.state_dir, ['/usr/bin/python3', '-I', 'x'])
    assert '@reboot root [ -d %s/faults ] && ' % ledger.state_dir in cron
