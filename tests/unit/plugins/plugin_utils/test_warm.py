"""pggit_chaos_warm's helper (no lab): which payloads it builds, in what order, and when it stops."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from ansible_collections.pggit.chaos.plugins.plugin_utils import _warm

RATIO_ROLES = ['pggit.chaos.pggit_chaos_connections', 'pggit.chaos.pggit_chaos_trigger', 'pggit.chaos.pggit_chaos_latency',
               'pggit.chaos.pggit_chaos_partition']
ACTIONS = os.path.join(_warm.collection_root(), 'plugins', 'action')


def test_the_modules_of_the_roles_in_the_order_a_run_first_uses_them():
    assert _warm.modules_of_roles(RATIO_ROLES) == [
        'pggit.chaos.pggit_verify',  # the lifecycle's steady state before
        'pggit.chaos.pggit_workload', 'pggit.chaos.pggit_chaos_connections',  # the first experiment
        'pggit.chaos.pggit_chaos_revert',  # its finish
        'pggit.chaos.pggit_chaos_trigger', 'pggit.chaos.pggit_chaos_latency', 'pggit.chaos.pggit_chaos_partition']


def test_modules_that_never_leave_the_controller_are_not_built():
    modules = _warm.modules_of_roles(['pggit.chaos.pggit_chaos_ramp', 'pggit_chaos_compose'])
    assert 'pggit.chaos.pggit_chaos_verdict' not in modules and 'pggit.chaos.pggit_chaos_ramp' not in modules
    assert 'pggit.chaos.pggit_chaos_revert' in modules  # the lifecycle's, named by finish
    # Each module left out as controller-only really is: its action plugin never sends a module to a host.
    for name in _warm.LOCAL_ONLY:
        with open(os.path.join(ACTIONS, name + '.py')) as handle:
            source = handle.read()
        assert '_execute_module' not in source and '_fault_action' not in source, name


def test_names_outside_the_collection_are_ignored():
    assert _warm.modules_of_roles(['../../etc', 'other.coll.pggit_chaos_trigger', '', None, 'pggit.chaos.pggit_nope']) == \
        _warm.modules_of_roles([])
    assert _warm.modules_of_roles([]) == ['pggit.chaos.pggit_verify', 'pggit.chaos.pggit_chaos_revert']


def test_it_goes_on_only_while_the_run_and_its_tmp_are_there(tmp_path):
    now = time.time()
    assert _warm.go_on(os.getpid(), now + 60, str(tmp_path))
    assert not _warm.go_on(os.getpid(), now - 1, str(tmp_path))  # past its timeout
    assert not _warm.go_on(os.getpid(), now + 60, str(tmp_path / 'gone'))  # the run removed its local tmp
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    assert not _warm.go_on(dead.pid, now + 60, str(tmp_path))  # the run's main process is gone


def _run_helper(tmp_path, parent, modules):
    """The helper as the action starts it; wait for it; the cache's payload files."""
    pid = _warm.start(modules, str(tmp_path), parent, 60, 'ZIP_DEFLATED', [os.path.join(_warm.collection_root(), '..', '..', '..')])
    deadline = time.time() + 60
    while time.time() < deadline and os.path.exists('/proc/%d' % pid):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            break
        time.sleep(0.05)
    cache = tmp_path / 'ansiballz_cache'
    return sorted(n for n in os.listdir(str(cache)) if not n.endswith(('.lock', '-part'))) if cache.is_dir() else []


def test_the_helper_builds_into_the_runs_cache_and_skips_what_it_cannot_build(tmp_path):
    built = _run_helper(tmp_path, os.getpid(), ['pggit.chaos.pggit_nope', 'pggit.chaos.pggit_verify'])
    assert built == ['ansible_collections.pggit.chaos.plugins.modules.pggit_verify-ZIP_DEFLATED-none']


def test_the_helper_builds_nothing_for_a_run_that_is_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    assert _run_helper(tmp_path, dead.pid, ['pggit.chaos.pggit_verify']) == []


def test_the_helper_never_writes_the_runs_cache_in_place(tmp_path):
    # Before ansible-core 2.19 a worker builds a payload under a lock of the run's own processes, which the helper does
    # not share, into <cache>/<name>-part and renames that into place: a helper writing the same -part could truncate
    # the file a worker is about to rename, or rename it away under the worker (whose task then fails). The helper
    # builds in its own directory and links the finished payload in; here the run's -part is not even writable.
    name = 'ansible_collections.pggit.chaos.plugins.modules.pggit_verify-ZIP_DEFLATED-none'
    (tmp_path / 'ansiballz_cache' / (name + '-part')).mkdir(parents=True)
    assert _run_helper(tmp_path, os.getpid(), ['pggit.chaos.pggit_verify']) == [name]
    assert [n for n in os.listdir(str(tmp_path)) if n != 'ansiballz_cache'] == []  # its own directory is gone


def test_a_payload_a_worker_put_in_the_cache_first_stays(tmp_path):
    own, cache = tmp_path / 'own', tmp_path / 'cache'
    own.mkdir()
    cache.mkdir()
    for name, text in (('a-ZIP_DEFLATED-none', 'helper'), ('b-ZIP_DEFLATED-none', 'helper'), ('c.lock', ''), ('d-part', 'half')):
        (own / name).write_text(text)
    (cache / 'a-ZIP_DEFLATED-none').write_text('worker')
    done = set()
    _warm.publish(str(own), str(cache), done)
    assert done == {'a-ZIP_DEFLATED-none', 'b-ZIP_DEFLATED-none'}
    assert sorted(os.listdir(str(cache))) == ['a-ZIP_DEFLATED-none', 'b-ZIP_DEFLATED-none']  # no lock, no half payload
    assert (cache / 'a-ZIP_DEFLATED-none').read_text() == 'worker' and (cache / 'b-ZIP_DEFLATED-none').read_text() == 'helper'


def test_a_run_that_ends_during_a_build_is_left_without_a_trace(tmp_path):
    run_tmp = tmp_path / 'ansible-local-1'
    run_tmp.mkdir()
    built = []

    def build(fqcn, compression, own):
        built.append(fqcn)
        shutil.rmtree(str(run_tmp))  # the run ends meanwhile: its exit removes its local tmp
        os.makedirs(os.path.join(own, 'ansiballz_cache'))  # and ansible-core makes the cache's parents again
        with open(os.path.join(own, 'ansiballz_cache', fqcn + '-ZIP_DEFLATED-none'), 'w') as handle:
            handle.write('payload')
        return True

    modules = ['pggit.chaos.pggit_verify', 'pggit.chaos.pggit_workload']
    assert _warm.warm(modules, str(run_tmp), os.getpid(), time.time() + 60, 'ZIP_DEFLATED', build=build) == 0
    assert built == modules[:1] and not run_tmp.exists(), list(os.walk(str(run_tmp)))
