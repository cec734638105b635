# Copyright: pggit.chaos contributors
# MIT License
"""The clock fault's pieces: libfaketime, its timestamp file, and which clock each server process sees.

libfaketime (``LD_PRELOAD``) reads ``FAKETIME_TIMESTAMP_FILE`` on every time
call when ``FAKETIME_NO_CACHE=1``; its content is ``<+|-><seconds>`` (a fixed
offset from the real clock) optionally followed by `` x<rate>`` (the clock
runs rate times as fast, from the moment the library started in the process:
the postmaster's start, which its children inherit).  So one restart puts the
preload in, and the skew changes later by rewriting the file.
"""
from __future__ import annotations

import math
import os
import re
import stat
import sys
import time

from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError

LIBFAKETIME = 'libfaketime.so.1'
PACKAGE = 'faketime'
RPM_PACKAGE = 'libfaketime'
# Where Debian, Ubuntu, Fedora and source builds put the preload library.
_MULTIARCH = getattr(sys.implementation, '_multiarch', None) or 'x86_64-linux-gnu'
LIBFAKETIME_DIRS = ('/usr/lib/x86_64-linux-gnu/faketime', '/usr/lib/%s/faketime' % _MULTIARCH, '/usr/lib64/faketime',
                    '/usr/lib/faketime', '/usr/local/lib/faketime')
# Ten years, the bound on offset_s.
MAX_OFFSET_S = 10 * 365.25 * 86400
MODES = ('jump', 'drift', 'strobe')
CLOCK_DIR = 'clock'
ENV_DROP = ('LD_PRELOAD', 'FAKETIME_TIMESTAMP_FILE', 'FAKETIME_NO_CACHE', 'FAKETIME_SHARED', 'FAKETIME')
# A process clock within this of the expected offset is fake, within this of zero real.
TOLERANCE_S = 1.0
_CONTENT_RE = re.compile(r'^([+-]\d+(?:\.\d+)?)(?:\s+x(\d+(?:\.\d+)?))?\s*$')


def find_libfaketime(dirs=None):
    """The path of libfaketime.so.1: a root-owned file nobody else may write; ChaosError naming the package when missing."""
    dirs = LIBFAKETIME_DIRS if dirs is None else dirs
    seen = []
    for folder in dirs:
        path = os.path.join(folder, LIBFAKETIME)
        if path in seen:
            continue
        seen.append(path)
        try:
            info = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise ChaosError('%s is not a root-owned file writable only by root: it is not preloaded into the server' % path)
        return path
    raise ChaosError('libfaketime is missing: %s not found in %s; install the package %s (apt-get install %s) on the '
                     'database host (RHEL/Fedora: dnf install %s, from EPEL on RHEL)'
                     % (LIBFAKETIME, ', '.join(seen), PACKAGE, PACKAGE, RPM_PACKAGE))


def check_offset(offset_s, name='offset_s'):
    """None when offset_s is a finite number of seconds within ten years either way, else the message."""
    if offset_s is None:
        return '%s is required' % name
    if not isinstance(offset_s, (int, float)) or math.isnan(offset_s) or math.isinf(offset_s):
        return '%s must be a finite number of seconds, got %s' % (name, offset_s)
    if abs(offset_s) > MAX_OFFSET_S:
        return '%s must be within 10 years either way (-%d to %d seconds), got %s' % (name, MAX_OFFSET_S, MAX_OFFSET_S, offset_s)
    return None


def _num(value):
    text = ('%.6f' % value).rstrip('0').rstrip('.')
    return '0' if text in ('', '-0') else text


def content(offset_s, rate=1.0):
    """What the timestamp file holds: ``+3600`` / ``-1.5`` (jump), ``+0 x1.01`` (drift)."""
    text = ('-' if offset_s < 0 else '+') + _num(abs(offset_s))
    if rate != 1.0:
        text += ' x' + _num(rate)
    return text + '\n'


def parse_content(text):
    """(offset_s, rate) from the timestamp file's text, or None when it is not ours."""
    match = _CONTENT_RE.match((text or '').strip())
    if not match:
        return None
    return float(match.group(1)), float(match.group(2)) if match.group(2) else 1.0


def offset_at(text, t, start):
    """The offset of a faked clock at real time t, for a process whose library started at real time start."""
    parsed = parse_content(text)
    if parsed is None:
        return None
    base, rate = parsed
    return base + (t - start) * (rate - 1.0)


def drift_file(current_offset, offset_s, now, until, start):
    """(base, rate) so that the offset is current_offset now and offset_s at until (both real times).

    ``start`` is the real time the postmaster started (where libfaketime's rate
    counts from).  Raises ChaosError when the clock would have to stop or run
    backwards (rate <= 0)."""
    span = until - now
    if span <= 0:
        raise ChaosError('drift needs time left before the fault ends, got %.1f s' % span)
    rate = 1.0 + (offset_s - current_offset) / span
    if rate <= 0.0:
        raise ChaosError('offset_s=%s with mode=drift over %.0f s would make the clock stop or run backwards '
                         '(rate %.4f); use a smaller offset, a longer ttl, or mode=jump' % (offset_s, span, rate))
    return current_offset - (now - start) * (rate - 1.0), rate


def file_path(state_dir, fid):
    return os.path.join(state_dir, CLOCK_DIR, fid.replace('/', '_') + '.faketime')


# -- which clock each process sees -----------------------------------------------
def _ticks():
    try:
        return os.sysconf('SC_CLK_TCK')
    except (ValueError, OSError):
        return 100


def real_start(pid):
    """The real (wall clock) time a process started, from /proc (10 ms resolution), or None."""
    try:
        with open('/proc/%s/stat' % ('self' if pid == 'self' else int(pid))) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
        with open('/proc/uptime') as handle:
            uptime = float(handle.read().split()[0])
    except (IOError, OSError, ValueError, IndexError):
        return None
    now = time.time()
    return now - uptime + int(fields[19]) / float(_ticks())


def process_age(limit):
    """Seconds since this process started (a module's Python start-up and imports), between 0 and limit; 0 unknown.

    A duration "from the module's start" counts from here: the start-up, 0.2 to 0.3 s on a busy target, is then
    part of it instead of being added to it. Both ends are this host's clock, so a controller's clock does not matter."""
    started = real_start('self')  # /proc/self: right also when /proc belongs to another PID namespace
    if started is None:
        return 0.0
    return min(max(time.time() - started, 0.0), max(float(limit), 0.0))


def classify(measured, expected):
    """fake, real or unknown: measured (the process's offset) against the offset the file gave it."""
    if measured is None or expected is None or abs(expected) <= 2 * TOLERANCE_S:
        return 'unknown'
    if abs(measured - expected) <= TOLERANCE_S:
        return 'fake'
    if abs(measured) <= TOLERANCE_S:
        return 'real'
    return 'unknown'


def kind_of(backend_type):
    return (backend_type or 'unknown').replace(' ', '_')


def summarize(processes):
    """Per process kind: fake, real, mixed (both seen) or unknown."""
    kinds = {}
    for proc in processes:
        kinds.setdefault(proc['kind'], set()).add(proc['clock'])
    result = {}
    for kind, clocks in sorted(kinds.items()):
        known = clocks - {'unknown'}
        result[kind] = 'mixed' if len(known) > 1 else (known.pop() if known else 'unknown')
    return result


ACTIVITY_SQL = ('SELECT pid, backend_type, extract(epoch FROM backend_start)::float8 FROM pg_stat_activity '
                'WHERE backend_start IS NOT NULL UNION ALL '
                "SELECT %s, 'postmaster', extract(epoch FROM pg_postmaster_start_time())::float8")


def process_clocks(cur, postmaster_pid, expected, environ_of, preload_of, maps_of):
    """[{pid, kind, clock, measured_offset_s, expected_offset_s, preload_in_environ, preload_mapped}] of every server process.

    A process's clock is read from its own start stamp (pg_stat_activity.backend_start,
    pg_postmaster_start_time()), which the process takes from its own clock when it
    starts, against the real time it started (/proc). ``expected(t)`` is the offset
    the timestamp file gave a process started at real time t."""
    cur.execute(ACTIVITY_SQL, (postmaster_pid,))
    found = []
    for pid, backend_type, stamp in cur.fetchall():
        started = real_start(pid)
        measured = round(stamp - started, 3) if started is not None and stamp is not None else None
        want = expected(started) if started is not None else None
        found.append({'pid': pid, 'kind': kind_of(backend_type), 'clock': classify(measured, want),
                      'measured_offset_s': measured, 'expected_offset_s': None if want is None else round(want, 3),
                      'preload_in_environ': bool(preload_of(environ_of(pid))), 'preload_mapped': maps_of(pid)})
    return found


def measure_offset(cur):
    """now() on the server (clock_timestamp()) minus the real time, midpoint of the round trip."""
    before = time.time()
    cur.execute('SELECT extract(epoch FROM clock_timestamp())::float8')
    stamp = cur.fetchone()[0]
    after = time.time()
    return round(stamp - (before + after) / 2.0, 3)
