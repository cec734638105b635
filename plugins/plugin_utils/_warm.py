# Copyright: pggit.chaos contributors
# MIT License
"""Build the AnsiballZ payloads of the modules a run will use, in the background, into ansible-core's own cache.

ansible-core builds a module's payload the first time a run uses the module, in the worker that runs the task, and
keeps it for the rest of the run in ``<local tmp>/ansiballz_cache``. Our modules carry the fault engine (every engine
program is installed on the target from the payload), about 420 kB of source that ansible-core parses each time: the
first call of each module costs 0.3 to 0.6 s more than the next one, 3 to 4 s over a suite of five experiments.

:func:`start` runs :func:`main` in a detached process at the start of the run. It builds, one after the other and at a
low priority, the payloads of the modules the run's roles name, through the same ``modify_module`` the workers call,
into a directory of its own in the run's local tmp, and hard-links each finished payload into the run's cache: a worker
finds the payload ready, or builds it itself as without the helper. It never writes the run's cache in place: before
ansible-core 2.19 a worker builds under a lock that only the run's own processes share, into ``<name>-part`` renamed
into place, and a helper writing that file too could truncate it or rename it away under the worker. A link never
replaces a payload a worker put there first, and a worker's rename replaces a link whole. It writes nothing else and
contacts no host. It stops when the run's main process is gone, when the local tmp is gone, or after ``timeout``
seconds, whichever comes first. A payload it cannot build or link (another ansible-core, a module that moved) is left to
the worker, as without it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

COLLECTION = 'pggit.chaos'
# Modules whose action plugin decides on the controller and never sends the module to a host: nothing to build.
LOCAL_ONLY = frozenset(('pggit_chaos_ramp', 'pggit_chaos_select', 'pggit_chaos_verdict', 'pggit_chaos_warm'))
ROLE_RE = re.compile(r'^(?:pggit\.chaos\.)?(pggit_[a-z0-9_]+)$')
# The lifecycle role every experiment includes: its begin tasks run first, its finish tasks last.
LIFECYCLE = 'pggit_experiment'


def collection_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _named(items):
    """Short names of the collection's actions that the tasks call, blocks opened, in the order of the file."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        for key in ('block', 'rescue', 'always'):
            if isinstance(item.get(key), list):
                yield from _named(item[key])
        for key in item:
            if isinstance(key, str) and key.startswith(COLLECTION + '.'):
                yield key[len(COLLECTION) + 1:]


def _task_files(root, role):
    tasks = os.path.join(root, 'roles', role, 'tasks')
    if not os.path.isdir(tasks):
        return []
    names = sorted(n for n in os.listdir(tasks) if n.endswith(('.yml', '.yaml')))
    return [os.path.join(tasks, n) for n in sorted(names, key=lambda n: n.split('.')[0] != 'main')]


def modules_of_roles(roles, root=None):
    """FQCNs of the collection's modules that the roles' task files name, each once, in a likely order of first use.

    The lifecycle's begin file comes first (the steady-state probe), then the first role's files (main first), then
    the rest of the lifecycle (the revert), then the other roles'. Role names outside the collection, and modules
    that only run on the controller, are left out."""
    root = root or collection_root()
    files = [os.path.join(root, 'roles', LIFECYCLE, 'tasks', 'begin.yml')]
    for number, role in enumerate(roles or []):
        match = ROLE_RE.match(str(role).strip())
        if match and match.group(1) != LIFECYCLE:
            files.extend(_task_files(root, match.group(1)))
        if number == 0:
            files.extend(f for f in _task_files(root, LIFECYCLE) if f not in files)
    files.extend(f for f in _task_files(root, LIFECYCLE) if f not in files)
    found = []
    for path in files:
        try:
            with open(path) as handle:
                tasks = yaml.safe_load(handle)
        except (IOError, OSError, yaml.YAMLError):
            continue
        for name in _named(tasks if isinstance(tasks, list) else []):
            if (name not in found and name not in LOCAL_ONLY
                    and os.path.isfile(os.path.join(root, 'plugins', 'modules', name + '.py'))):
                found.append(name)
    return ['%s.%s' % (COLLECTION, name) for name in found]


def start(modules, local_tmp, parent, timeout, compression, collection_paths):
    """Start :func:`main` detached (its own session, no terminal, no output); return its pid."""
    argv = [sys.executable, os.path.abspath(__file__).replace('.pyc', '.py'), '--local-tmp', local_tmp,
            '--parent', str(parent), '--deadline', '%.3f' % (time.time() + timeout), '--compression', compression]
    for path in collection_paths:
        argv += ['--collections-path', path]
    proc = subprocess.Popen(argv + ['--'] + list(modules), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    return proc.pid


def go_on(parent, deadline, local_tmp, clock=time.time):
    """Whether the warm-up may build one more payload: the run is still there and so is its local tmp."""
    # Imported here: the helper runs this file as a script, and finds the collection only once its plugin loader is set.
    from ansible_collections.pggit.chaos.plugins.module_utils import _steps  # pylint: disable=import-outside-toplevel
    return clock() < deadline and _steps.same_process(parent) and os.path.isdir(local_tmp)


def build(fqcn, compression, local_tmp):  # pragma: no cover - exercised by tests/unit/plugins/plugin_utils/test_warm.py in a subprocess
    """One payload, through ansible-core's own builder, into the cache of ``local_tmp`` (the helper's own directory)."""
    # pylint: disable=import-outside-toplevel
    from ansible import constants as C
    from ansible.executor import module_common
    from ansible.plugins.loader import module_loader
    from ansible.template import Templar
    context = module_loader.find_plugin_with_context(fqcn)
    if not context.resolved:
        return False
    C.DEFAULT_LOCAL_TMP = local_tmp
    module_common.modify_module(module_name=fqcn, module_path=context.plugin_resolved_path, module_args={},
                                templar=Templar(loader=None), task_vars={'ansible_python_interpreter': sys.executable},
                                module_compression=compression)
    return True


def publish(own_cache, cache, done):
    """Hard-link each finished payload of the helper's cache into the run's, unless a worker put it there first;
    the names linked (or found there) are added to ``done``."""
    try:
        names = sorted(n for n in os.listdir(own_cache) if not n.endswith(('.lock', '-part')) and n not in done)
    except OSError:
        return
    for name in names:
        try:
            try:
                os.mkdir(cache)  # not makedirs: never the run's local tmp again once the run removed it
            except FileExistsError:
                pass
            os.link(os.path.join(own_cache, name), os.path.join(cache, name))
        except FileExistsError:
            pass  # a worker built it first: its payload stays
        except OSError:
            continue  # the worker builds it, as it would without the warm-up
        done.add(name)


def warm(modules, local_tmp, parent, deadline, compression, build=build):
    """Build the payloads in a directory of the helper's own in ``local_tmp`` and link each into the run's cache; return
    how many the run's cache holds."""
    try:
        own = tempfile.mkdtemp(prefix='pggit-warm-', dir=local_tmp)
        # Gone with the run's local tmp, and never made again by a build (a directory made again may get the same inode).
        mark = os.path.join(own, 'run')
        with open(mark, 'w'):
            pass
    except OSError:
        return 0
    done = set()
    try:
        for fqcn in modules:
            if not go_on(parent, deadline, local_tmp):
                break
            try:
                built = build(fqcn, compression, own)
            except Exception:  # pylint: disable=broad-except
                built = False  # the worker builds it, as it would without the warm-up
            if not os.path.exists(mark):
                break  # the run ended during the build
            if built:
                publish(os.path.join(own, 'ansiballz_cache'), os.path.join(local_tmp, 'ansiballz_cache'), done)
    finally:
        # A build the run's end overtook made the removed local tmp again (ansible-core makes the cache's parents).
        shutil.rmtree(own if os.path.exists(mark) else local_tmp, ignore_errors=True)
    return len(done)


def main(argv=None):  # pragma: no cover - runs in the detached process
    import argparse  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser()
    parser.add_argument('--local-tmp', required=True)
    parser.add_argument('--parent', type=int, required=True)
    parser.add_argument('--deadline', type=float, required=True)
    parser.add_argument('--compression', default='ZIP_DEFLATED')
    parser.add_argument('--collections-path', action='append', default=[])
    parser.add_argument('modules', nargs='*')
    args = parser.parse_args(argv)
    try:
        os.nice(10)
    except OSError:
        pass
    from ansible.plugins.loader import init_plugin_loader  # pylint: disable=import-outside-toplevel
    init_plugin_loader(args.collections_path)
    return 0 if warm(args.modules, args.local_tmp, args.parent, args.deadline, args.compression) else 1


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
