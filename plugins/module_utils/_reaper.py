# Copyright: pggit.chaos contributors
# MIT License
"""Target-side expiry (TTL) for faults.

:func:`arm` copies the revert engine (this file and the files it imports) into
``<state_dir>/lib`` and starts a detached process, ``pggit-chaos-reaper``, that
owns no terminal, survives the SSH session and the controller, and calls the
same :func:`_undo.revert_one` at ``expires_at``.  It exits as soon as its
record is gone (normal revert), so it never outlives its fault, and it gives up
after a bounded number of failed attempts.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _ledger, _nfqdelay, _pgconn, _undo

PROC_TAG = 'pggit-chaos-reaper'
RETRY_SECONDS = 5.0
GIVE_UP_AFTER = 600.0
POLL_SECONDS = 0.25
_ENGINE = (_ledger, _nfqdelay, _pgconn, _undo)
# Detached programs, by process tag: the module that holds their main().
ENTRIES = {PROC_TAG: '_reaper', _nfqdelay.PROC_TAG: '_nfqdelay'}
_PKG = ('ansible_collections', 'pggit', 'chaos', 'plugins', 'module_utils')


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
    try:
        with open(path) as handle:
            if handle.read() == text:
                return
    except (IOError, OSError):
        pass
    tmp = '%s.%d.tmp' % (path, os.getpid())
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def install_engine(state_dir):
    """Copy the engine next to the ledger; return {process tag: entry script}."""
    lib = os.path.join(state_dir, 'lib')
    pkg = os.path.join(lib, *_PKG)
    if not os.path.isdir(pkg):
        os.makedirs(pkg, 0o700)
    for module in _ENGINE + (sys.modules[__name__],):
        _write_if_changed(os.path.join(pkg, module.__name__.rsplit('.', 1)[-1] + '.py'), _source(module))
    scripts = {}
    for tag, name in ENTRIES.items():
        scripts[tag] = os.path.join(lib, tag + '.py')
        _write_if_changed(scripts[tag], (
            'import sys\n'
            'sys.path.insert(0, %r)\n'
            'from ansible_collections.pggit.chaos.plugins.module_utils import %s\n'
            'sys.exit(%s.main(sys.argv[1:]))\n') % (lib, name, name))
    return scripts


def spawn(state_dir, tag, args, python=None):
    """Start a detached engine program (no terminal, own session). Returns {pid, starttime}."""
    script = install_engine(state_dir)[tag]
    argv = [python or sys.executable, script] + list(args)
    log = os.path.join(state_dir, tag.replace('pggit-chaos-', '') + '.log')
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
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
    # Wait for exec so the recorded cmdline carries the tag.
    deadline = time.time() + 5
    while time.time() < deadline and tag not in _undo.proc_cmdline(child):
        time.sleep(0.01)
    return {'pid': child, 'starttime': _undo.proc_starttime(child), 'script': script}


def arm(ledger, fid, python=None):
    """Start the detached reaper for one fault. Returns {pid, starttime}."""
    return spawn(ledger.state_dir, PROC_TAG, ['--state-dir', ledger.state_dir, '--fault-id', fid], python)


def _log(msg):
    sys.stdout.write('%s %s[%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), PROC_TAG, os.getpid(), msg))
    sys.stdout.flush()


def watch(ledger, fid, clock=time.time, sleep=time.sleep):
    """Sleep until the fault expires, then revert it; exit when it is gone."""
    first_try = None
    while True:
        record = ledger.read(fid)
        if record is None:
            return 0
        now = clock()
        expires = float(record.get('expires_at') or now)
        if now < expires:
            sleep(min(POLL_SECONDS, expires - now))
            continue
        first_try = first_try or now
        result = _undo.revert_one(ledger, fid, reason='ttl-expired')
        _log('%s: %s %s' % (fid, result['result'], result.get('error', '')))
        if result['result'] in ('reverted', 'absent'):
            return 0
        if now - first_try > GIVE_UP_AFTER:
            _log('%s: giving up after %ds; the record stays in the ledger' % (fid, GIVE_UP_AFTER))
            return 2
        sleep(RETRY_SECONDS)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROC_TAG)
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('--fault-id', required=True)
    args = parser.parse_args(argv)
    return watch(_ledger.Ledger(args.state_dir), args.fault_id)
