# Copyright: pggit.chaos contributors
# MIT License
"""Detached engine programs: the copy of the engine they run from, and how they start.

Every background program of the collection (the TTL reaper, the NFQUEUE delay
daemon, ...) is an *engine program*: a ``main()`` in a module_utils file,
registered in :data:`PROGRAMS` under its process tag.  :func:`spawn` copies
the engine into ``<state_dir>/lib`` and starts the program there, detached
(own session, no terminal), so it survives the SSH session and the
controller.  The tag is in its command line, which is how pid-reuse guards
recognise it.
"""
from __future__ import annotations

import importlib
import os
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _steps
from ansible_collections.pggit.chaos.plugins.module_utils._errors import DaemonError

# Process tag -> the module_utils file that holds the program's main().
PROGRAMS = {
    'pggit-chaos-reaper': '_reaper',
    'pggit-chaos-nfqdelay': '_nfqdelay',
    'pggit-chaos-killer': '_killer',
    'pggit-chaos-workload': '_workload',
    'pggit-chaos-locker': '_locker',
    'pggit-chaos-stress': '_stress',
    'pggit-chaos-load': '_pgbench',
    'pggit-chaos-holder': '_holder',
}
# Files copied into <state_dir>/lib: every program and everything they import.
ENGINE = ('_errors', '_ledger', '_steps', '_undo', '_pgconn', '_daemon', '_boot', '_reaper', '_nfqdelay', '_results',
          '_program', '_killer', '_locker', '_checker', '_workload', '_cgroup', '_server', '_stress',
          '_restart', '_hostloss', '_failover', '_holder', '_pgbench')
_PKG = ('ansible_collections', 'pggit', 'chaos', 'plugins', 'module_utils')


def _module(name):
    return importlib.import_module('.'.join(_PKG + (name,)))


def _bundled():  # pragma: no cover - never called
    """Name every ENGINE file in an import statement.

    A module reaches its target as one AnsiballZ payload holding only the
    module_utils that its code imports by statement; the engine files loaded
    by name above would be missing there.  This function is never called: its
    imports are only read when the payload is built.  test_daemon checks that
    it names every ENGINE file."""
    # pylint: disable=unused-import,import-outside-toplevel,cyclic-import
    from ansible_collections.pggit.chaos.plugins.module_utils import (  # noqa: F401
        _boot, _cgroup, _checker, _errors, _failover, _holder, _hostloss, _killer, _locker, _nfqdelay, _pgconn, _program, _reaper, _restart, _results, _server,
        _stress, _undo, _workload, _pgbench)


def _source(module):
    loader = getattr(module, '__loader__', None)
    text = None
    if loader is not None and hasattr(loader, 'get_source'):
        try:
            text = loader.get_source(module.__name__)
        except Exception:  # pylint: disable=broad-except
            text = None
    if text is None:
        with open(module.__file__) as handle:
            text = handle.read()
    return text


def _write_if_changed(path, text, mode=0o600):
    """Write text to path unless it already holds it; never through a link."""
    try:
        with os.fdopen(_ledger.open_private(path, os.O_RDONLY)) as handle:
            if handle.read() == text:
                return
    except (IOError, OSError):
        pass
    _ledger.write_atomic(path, text, mode)


# The entry script of a program.  It runs under `python -I` (no user site, no
# PYTHON* variables, not its own folder on sys.path) and touches no search
# path at all: it registers the engine copy's packages by their folders, so
# nothing in lib/ can shadow the standard library, and no other copy of the
# collection (site-packages) can stand in for this one.
_ENTRY = """import os, sys, types
lib = %(lib)r
parts = %(pkg)r
for depth in range(1, len(parts) + 1):
    package = types.ModuleType('.'.join(parts[:depth]))
    package.__path__ = [os.path.join(lib, *parts[:depth])]
    sys.modules[package.__name__] = package
from ansible_collections.pggit.chaos.plugins.module_utils import %(name)s
sys.exit(%(name)s.main(sys.argv[1:]))
"""


def install_engine(state_dir):
    """Copy the engine into <state_dir>/lib (checked private); return {process tag: entry script}."""
    lib = _ledger.Ledger(state_dir).lib_dir()
    pkg = lib
    for part in _PKG:
        pkg = os.path.join(pkg, part)
        if not os.path.isdir(pkg):
            os.mkdir(pkg, 0o700)
        _ledger.check_private_dir(pkg, 'state_dir folder')
    for name in ENGINE:
        _write_if_changed(os.path.join(pkg, name + '.py'), _source(_module(name)))
    scripts = {}
    for tag, name in PROGRAMS.items():
        scripts[tag] = os.path.join(lib, tag + '.py')
        _write_if_changed(scripts[tag], _ENTRY % {'lib': lib, 'pkg': list(_PKG), 'name': name})
    return scripts


def argv_for(script, args=(), python=None):
    """How a program is run: isolated interpreter, the entry script, its arguments."""
    return [python or sys.executable, '-I', script] + list(args)


def log_path(state_dir, tag):
    return os.path.join(state_dir, tag.replace('pggit-chaos-', '') + '.log')


def log_tail(state_dir, tag, lines=5):
    """The last lines of a program's log, for error messages."""
    try:
        with open(log_path(state_dir, tag), 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            text = handle.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''
    return ' | '.join(line.strip() for line in text.strip().splitlines()[-lines:])


def spawn(state_dir, tag, args, python=None, ready=None, ready_timeout=5.0):
    """Start a detached engine program (no terminal, own session). Returns {pid, starttime, script}.

    ``ready``: a callable that returns True once the program has proven that
    it does its job (a bound queue, a held lock, ...).  Until it does, the
    program is not started as far as the caller knows: when it exits first,
    or ``ready_timeout`` seconds pass, it is stopped and :class:`DaemonError`
    says why, with the tail of its log.  A fault that cannot prove it is in
    place has failed.
    """
    script = install_engine(state_dir)[tag]
    argv = argv_for(script, args, python)
    log = log_path(state_dir, tag)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.setsid()
            if os.fork():
                os._exit(0)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            os.chdir('/')
            null = os.open(os.devnull, os.O_RDWR)
            out = _ledger.open_private(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, 65536)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(write_end)
    os.waitpid(pid, 0)
    data = b''
    while True:
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if not data:
        raise RuntimeError('%s did not start' % tag)
    child = int(data)
    # Wait for exec so the recorded cmdline carries the tag: the pid-reuse guards match on it.  Before its exec the
    # child is a copy of this process, whose own command line may carry the tag too (a reaper arming another at boot),
    # and during the exec its command line reads empty: only a command line with the tag that is not ours proves it.
    mine = _steps.proc_cmdline(os.getpid())
    deadline = time.monotonic() + 5
    execed = False
    gone = 0
    while not execed and time.monotonic() < deadline and gone < 2:
        cmdline = _steps.proc_cmdline(child)
        execed = tag in cmdline and cmdline != mine
        if not execed:
            gone = gone + 1 if _steps.proc_starttime(child) is None else 0  # twice gone: it died before its exec
            time.sleep(0.01)
    started = {'pid': child, 'starttime': _steps.proc_starttime(child), 'script': script}
    if started['starttime'] is None or not execed:
        # A program that exits at once can be gone before its cmdline is read:
        # to a caller waiting for ready, that is the same failure as exiting later.
        tail = log_tail(state_dir, tag)
        why = 'exited before it was ready' if ready is not None else 'did not start'
        raise DaemonError('%s (pid %s) %s: %s' % (tag, child, why, tail or 'it exited before its program ran'))
    if ready is not None:
        _await_ready(state_dir, tag, started, ready, ready_timeout)
    return started


def _await_ready(state_dir, tag, started, ready, timeout):
    deadline = time.monotonic() + timeout
    while not ready():
        alive = _steps.same_process(started['pid'], started['starttime'])
        if not alive or time.monotonic() > deadline:
            _steps.stop_process(started['pid'], started['starttime'], tag, grace=1.0)
            why = 'exited before it was ready' if not alive else 'was not ready after %gs' % timeout
            tail = log_tail(state_dir, tag)
            raise DaemonError('%s (pid %s) %s%s' % (tag, started['pid'], why, ': ' + tail if tail else ''))
        time.sleep(0.05)
