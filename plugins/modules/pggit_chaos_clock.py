#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_chaos_clock
short_description: Skew the clock PostgreSQL sees (libfaketime), never the machine's
version_added: 0.2.0
description:
  - Makes the PostgreSQL server on the target host see a clock that is O(offset_s) seconds off
    the real one, and returns the offset it measured on the server and which clock each kind of
    server process uses. The machine's own clock is never touched. Network namespaces share it,
    so C(date -s) would move the controller's clock and every reaper's too.
  - How. libfaketime is preloaded into the postmaster (C(LD_PRELOAD)), which reads the fake
    time from a timestamp file in the state dir (C(<state_dir>/clock/clock--<name>.faketime),
    mode 0644, written atomically) on every time call (C(FAKETIME_NO_CACHE=1)). Putting the
    preload in takes one restart of the server. Calling the module again with another
    O(offset_s) or O(mode) while the fault is in place only rewrites the file. The same
    postmaster then sees the new clock within a moment, with no second restart, and the task
    reports C(changed) and the new offset.
  - The restart costs what a restart costs in production. C(pg_ctl stop -m fast) ends every
    session (clients see their connection terminated), rolls back open transactions and takes a
    checkpoint. The server is then started again the way it was started (C(pg_ctl start) as the
    data directory's owner, with the options of C(postmaster.opts), its log, inside the
    postmaster's cgroups), with its own environment plus the preload. An C(LD_PRELOAD) the server
    already has (libjemalloc, say) stays, behind libfaketime. Replicas of this server
    lose their stream for the moment of the restart. The revert restarts it once more.
  - Not every process of the server follows the fake clock, and the task reports which do.
    On PostgreSQL 15 with libfaketime 0.9.10, client backends, the checkpointer and the
    background writer saw the fake clock, and the walwriter, the autovacuum launcher and the
    logical replication launcher saw the real one, although all of them have the library
    loaded. So a skewed server has a mixed clock, as real skew often does.
  - The undo is recorded in the fault ledger before the first restart. It is a restart without
    libfaketime and its variables, with the server's own C(LD_PRELOAD) as it was before the
    fault (only while the postmaster's C(/proc/<pid>/environ) still holds a libfaketime
    preload; a server that is down is started), then the removal of the timestamp file. The revert (O(state=absent),
    C(pggit_chaos_revert), the red button) and the TTL reaper run it, so the server gets its
    true clock back even when the controller dies.
  - Where it cannot work. A server that systemd manages (its unit owns the environment) is
    refused. A remote server (the data directory is not on the target host), a login role that
    cannot read C(data_directory), or a task not run as root fails before anything is touched.
    The state dir gets the search (C(x)) bit for others, so that the server's user can read
    the timestamp file inside it. Its C(faults/) and C(lib/) folders stay private. The revert of
    the last clock fault on the host removes C(clock/) and gives the state dir its mode back. A statically
    linked server, or one whose time calls bypass the C library, does not see the fake clock.
    The module then fails, because the measured offset is not the one asked, and rolls back.
    Without the package C(faketime) (C(libfaketime.so.1)) on the host it fails before anything
    is touched.
  - Every time call of the server reads the timestamp file. This costs a little CPU, which is
    part of the fault.
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
  - pggit.chaos.fault
attributes:
  check_mode:
    support: full
    details: Shows the timestamp file it would write and the restart it would do, and does neither.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  offset_s:
    description:
      - How far the server's clock is off the real clock, in seconds; negative goes back in time.
        At most ten years either way (315576000 seconds).
      - Required with O(state=present).
    type: float
  mode:
    description:
      - V(jump) writes C(+<offset_s>) or C(-<offset_s>) into the timestamp file. The server's clock
        is then that far off, at once, and stays so.
      - V(drift) writes C(<+|-><base> x<rate>), libfaketime's speed syntax. The server's clock then
        runs C(rate) times as fast as the real one, so that its offset grows steadily from what it
        is now (0 at the first injection) to O(offset_s) when the fault's O(ttl) ends. It is
        refused when the clock would have to stop or run backwards (O(offset_s) at or below
        minus the time left). libfaketime scales sleeps and timeouts of the server by the same
        rate.
      - V(strobe) (a clock that jumps back and forth by itself) is refused. It needs a program on
        the host that rewrites the timestamp file. An experiment strobes with repeated calls that
        alternate O(offset_s), each of which rewrites the file without a restart.
    type: str
    default: jump
    choices: [jump, drift, strobe]
'''

EXAMPLES = r'''
- name: Put the primary's clock one hour back (one restart of the server)
  pggit.chaos.pggit_chaos_clock:
    name: skew
    ttl: 300
    offset_s: -3600
  become: true

- name: Then jump it forward during the window (the file is rewritten, no restart)
  pggit.chaos.pggit_chaos_clock:
    name: skew
    ttl: 300
    offset_s: 1800
  become: true

- name: Give the server its true clock back (a restart without the preload)
  pggit.chaos.pggit_chaos_clock:
    name: skew
    state: absent
  become: true
'''

RETURN = r'''
offset_s:
  description: The offset asked, in seconds (for V(drift), the offset reached when the fault ends).
  returned: state=present
  type: float
mode:
  description: V(jump) or V(drift).
  returned: state=present
  type: str
timestamp_file:
  description: The libfaketime timestamp file (C(FAKETIME_TIMESTAMP_FILE)) and, in C(timestamp), what it holds.
  returned: state=present
  type: str
timestamp:
  description: What the timestamp file holds, such as C(-3600) or C(+0 x1.02).
  returned: state=present
  type: str
preload:
  description: The libfaketime library preloaded into the postmaster (in front of the server's own C(LD_PRELOAD), if any).
  returned: state=present
  type: str
postmaster_pid_before:
  description: The postmaster before the call.
  returned: state=present
  type: int
postmaster_pid_after:
  description: The postmaster after the call; the same pid when only the file was rewritten.
  returned: state=present
  type: int
restarted:
  description: Whether this call restarted the server.
  returned: state=present
  type: bool
measured_offset_s:
  description: C(clock_timestamp()) on the server minus the controller-independent real time on the target, measured after the change.
  returned: when the fault was injected or changed, or is in place
  type: float
clocks:
  description:
    - Per kind of server process (C(backend_type) with underscores, and C(postmaster)), the clock it used.
      V(fake) or V(real), V(mixed) when processes of one kind differ, V(unknown) when the offset its
      processes started with was too small to tell (under 2 s, so always at the start of a V(drift)).
    - Read from each process's own start stamp (C(pg_stat_activity.backend_start),
      C(pg_postmaster_start_time())) against the real time it started, from C(/proc).
  returned: when the fault was injected or changed, or is in place
  type: dict
  sample: {postmaster: fake, client_backend: fake, checkpointer: fake, background_writer: fake, walwriter: real,
           autovacuum_launcher: real, logical_replication_launcher: real}
processes:
  description: Each server process with C(pid), C(kind), C(clock), C(measured_offset_s), C(expected_offset_s),
    C(preload_in_environ) (whether its C(/proc/<pid>/environ) still shows the preload; PostgreSQL overwrites that
    area with its process title in children) and C(preload_mapped) (libfaketime is mapped in its memory).
  returned: when the fault was injected or changed, or is in place
  type: list
  elements: dict
server:
  description: The server, as found before the call (data directory, postmaster pid, how it is started).
  returned: state=present
  type: dict
fault_id:
  description: Ledger id of the fault, C(clock--<name>).
  returned: always
  type: str
'''

import os
import time

from ansible_collections.pggit.chaos.plugins.module_utils import _clock, _ledger, _restart, _server, _steps
from ansible_collections.pggit.chaos.plugins.module_utils.chaos import ChaosError, ChaosModule, Fault
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import connect_or_fail, postgres_argument_spec

APP = 'pggit-chaos-clock'
# How long the server has to show the asked offset after a change (libfaketime reads the file on each call).
SETTLE_S = 3.0


def check_options(module):
    """Refuse bad options of state=present before anything is touched, naming the option and the value."""
    params = module.params
    msg = _clock.check_offset(params['offset_s'])
    if msg:
        module.fail_json(msg=msg, changed=False)
    if params['mode'] == 'strobe':
        module.fail_json(msg='mode=strobe is not supported: a clock that jumps back and forth by itself needs a program '
                             'that rewrites the timestamp file; strobe from the experiment instead, with repeated calls of '
                             'mode=jump alternating offset_s (each rewrites the file, with no restart)', changed=False)
    if params['mode'] == 'drift' and params['offset_s'] <= -params['ttl']:
        module.fail_json(msg='offset_s=%s with mode=drift over ttl=%s s would make the clock stop or run backwards; '
                             'offset_s must be above -%s' % (params['offset_s'], params['ttl'], params['ttl']), changed=False)
    try:
        _clock.find_libfaketime()
    except ChaosError as exc:
        module.fail_json(msg='offset_s=%s cannot be applied: %s' % (params['offset_s'], exc), changed=False)


def preload_value(faketime, original=None):
    """The postmaster's LD_PRELOAD during the fault: libfaketime first, then what it preloaded before (kept as it was)."""
    return '%s:%s' % (faketime, original) if original else faketime


class ClockFault(Fault):
    kind = 'clock'
    # A second call with another offset or mode rewrites the timestamp file in place (finish()), without a restart.
    volatile_options = None

    def __init__(self, module):
        super(ClockFault, self).__init__(module)
        self.info = None

    def fid(self):
        return _ledger.fault_id(self.kind, self.params['name'])

    def timestamp_file(self):
        return _clock.file_path(self.params['state_dir'], self.fid())

    def observe(self):
        conn = connect_or_fail(self.module, application_name=APP)
        try:
            self.info = _server.server_info(conn.cursor())
        finally:
            conn.close()
        env = _restart.environ_of(self.info['postmaster_pid']) or {}
        return {'server': _server.summary(self.info), 'preload': _restart.faketime_preload(env),
                'timestamp_file': env.get('FAKETIME_TIMESTAMP_FILE'), 'ld_preload': env.get('LD_PRELOAD') or None}

    def in_place(self, record, current):
        detail = record.get('detail') or {}
        return bool(current.get('preload')) and current.get('timestamp_file') == detail.get('timestamp_file')

    def content_for(self, now, start, current_text=None):
        """What the file must hold for the options, given what it holds now and when the postmaster started."""
        offset = self.params['offset_s']
        if self.params['mode'] == 'jump':
            return _clock.content(offset)
        current = _clock.offset_at(current_text, now, start) if current_text else 0.0
        until = (self.record or {}).get('expires_at') or now + self.params['ttl']
        base, rate = _clock.drift_file(current or 0.0, offset, now, until, start)
        return _clock.content(base, rate)

    def plan(self, current):
        if self.info.get('systemd_unit'):
            raise ChaosError('the server is managed by the systemd unit %s, whose unit file owns its environment: the '
                             'faketime preload cannot be put in by a restart, so nothing was done' % self.info['systemd_unit'])
        if current.get('preload'):
            raise ChaosError('the postmaster %s already runs with LD_PRELOAD %s (timestamp file %s), which is not this '
                             "fault's: nothing was done" % (self.info['postmaster_pid'], current['preload'], current.get('timestamp_file')))
        # The server's own LD_PRELOAD (say libjemalloc) stays: libfaketime goes in front, and the revert puts the original back.
        restart = dict(_server.start_step(self.info), type='pg_restart', unless_env_clean=list(_clock.ENV_DROP),
                       ld_preload=current.get('ld_preload'))
        problem = _steps.STEP_CHECKS['pg_restart'](restart, self.params['state_dir'])
        if problem:
            raise ChaosError('the server in %s cannot be restarted by the revert: %s; nothing was done' % (
                self.info['data_directory'], problem))
        path = self.timestamp_file()
        now = time.time()
        preview = self.content_for(now, now)
        detail = {'offset_s': self.params['offset_s'], 'mode': self.params['mode'], 'timestamp_file': path,
                  'timestamp': preview.strip(), 'preload': _clock.find_libfaketime(), 'server': current['server'],
                  'postmaster_pid_before': self.info['postmaster_pid'], 'ld_preload_before': current.get('ld_preload')}
        undo = [{'type': 'remove_path', 'path': path, 'root': self.params['state_dir']}, restart]
        state_dir = self.params['state_dir']
        if os.path.isdir(state_dir):  # not yet in check mode
            # Runs last: the state dir's own mode back (and clock/ gone) once no clock fault is left.
            undo.insert(0, {'type': 'clock_dir_restore', 'state_dir': state_dir, 'mode': os.stat(state_dir).st_mode & 0o7777})
        return undo, detail, dict(current, preload=detail['preload'], timestamp_file=path, timestamp=detail['timestamp'])

    # -- the file --------------------------------------------------------------
    def _prepare_dir(self):
        """<state_dir>/clock (0755), and the search bit on the state dir, so that the server's user reaches the file."""
        state_dir = self.params['state_dir']
        mode = os.stat(state_dir).st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(state_dir, mode | 0o011)
        folder = os.path.join(state_dir, _clock.CLOCK_DIR)
        try:
            os.mkdir(folder, 0o755)
        except OSError:
            if not os.path.isdir(folder) or os.path.islink(folder):
                raise ChaosError('%s exists and is not a folder' % folder)
        _ledger.check_private_dir(folder, 'state_dir folder')
        os.chmod(folder, 0o755)
        return folder

    def _write(self, path, text):
        _ledger.write_atomic(path, text, 0o644)

    def _check_readable(self, path, text):
        import pwd  # pylint: disable=import-outside-toplevel
        account = pwd.getpwnam(self.info['owner'])
        rc, out = _restart._run_as(['/bin/cat', path], account, None, None, 10)  # pylint: disable=protected-access
        if rc != 0 or out != text:
            raise ChaosError('the server user %s cannot read the timestamp file %s (%s): a folder above it is not searchable '
                             'by that user; choose a state_dir whose parents others may search' % (
                                 account.pw_name, path, ' '.join((out or '').split()) or 'exit %s' % rc))

    # -- measuring -------------------------------------------------------------
    def _measure(self, history, start):
        """measured_offset_s, clocks and processes, with the offset settled to what the file says (within 1 s)."""
        conn = connect_or_fail(self.module, application_name=APP)
        try:
            cur = conn.cursor()
            deadline = time.time() + SETTLE_S
            while True:
                measured = _clock.measure_offset(cur)
                want = _clock.offset_at(history[-1]['timestamp'], time.time(), start)
                if abs(measured - want) <= _clock.TOLERANCE_S or time.time() > deadline:
                    break
                time.sleep(0.1)

            def expected(t):
                text = None
                for entry in history:
                    if entry['at'] <= t + 0.05:
                        text = entry['timestamp']
                return _clock.offset_at(text, t, start) if text else 0.0
            procs = _clock.process_clocks(cur, self.info_pid(), expected, _restart.environ_of, _restart.faketime_preload,
                                          _restart.maps_faketime)
        finally:
            conn.close()
        if abs(measured - want) > _clock.TOLERANCE_S:
            raise ChaosError('the server does not show the asked clock: clock_timestamp() is %+.3f s off the real time, '
                             'not %+.3f s (timestamp file %s); a server whose time calls bypass the C library does not '
                             'follow libfaketime' % (measured, want, history[-1]['timestamp']))
        return {'measured_offset_s': measured, 'clocks': _clock.summarize(procs), 'processes': procs}

    def info_pid(self):
        return _server.postmaster_pid(self.info['data_directory'])

    # -- inject ----------------------------------------------------------------
    def apply(self, detail):
        path = detail['timestamp_file']
        self._prepare_dir()
        now = time.time()
        text = self.content_for(now, now)
        self._write(path, text)
        self._check_readable(path, text)
        env = {'LD_PRELOAD': preload_value(detail['preload'], detail.get('ld_preload_before')),
               'FAKETIME_TIMESTAMP_FILE': path, 'FAKETIME_NO_CACHE': '1'}
        written = time.time()
        new_pid = _restart.restart(self.info, env=env, drop_env=[n for n in _clock.ENV_DROP if n not in env])
        start = _clock.real_start(new_pid) or written
        if self.params['mode'] == 'drift':
            # The rate counts from the postmaster's start: aim again from there, so the offset is 0 now.
            text = self.content_for(time.time(), start, _clock.content(0.0))
            self._write(path, text)
        history = [{'at': written - 1.0, 'timestamp': text.strip()}]
        self._remember(history=history, timestamp=text.strip(), postmaster_start=start, postmaster_pid_after=new_pid)
        result = {'offset_s': self.params['offset_s'], 'mode': self.params['mode'], 'timestamp_file': path,
                  'timestamp': text.strip(), 'preload': detail['preload'], 'restarted': True,
                  'postmaster_pid_before': detail['postmaster_pid_before'], 'postmaster_pid_after': new_pid}
        result.update(self._measure(history, start))
        return result

    def _remember(self, **changes):
        """Keep what the revert and later calls need in the record's detail (the record on disk is the truth)."""
        ledger = self.ledger or _ledger.Ledger(self.params['state_dir'])
        with ledger.lock():
            record = ledger.read(self.fid())
            if record is None:
                return
            record.setdefault('detail', {}).update(changes)
            ledger.write(record)

    # -- a second call: rewrite the file ----------------------------------------
    def finish(self, result):
        if self.params['state'] != 'present':
            return
        current = result.get('current') or {}
        if current.get('server'):
            result.setdefault('server', current['server'])
        if 'planned' in result:
            if self.module.check_mode:
                result['msg'] = ('would write %s into %s and restart the server with LD_PRELOAD=%s; changed nothing'
                                 % (result['planned']['timestamp'], result['planned']['timestamp_file'], result['planned']['preload']))
            else:
                result['msg'] = ('%s: the server restarted with libfaketime; clock_timestamp() is %+.3f s off the real time; '
                                 'clocks: %s' % (result.get('msg', ''), result.get('measured_offset_s', 0.0),
                                                 ', '.join('%s %s' % kv for kv in sorted((result.get('clocks') or {}).items()))))
            return
        if 'record' not in result:
            return
        ledger = _ledger.Ledger(self.params['state_dir'])
        record = ledger.read(self.fid()) or {}
        detail = record.get('detail') or {}
        self.record = record
        path = detail.get('timestamp_file') or self.timestamp_file()
        start = detail.get('postmaster_start') or _clock.real_start(self.info['postmaster_pid']) or time.time()
        try:
            with open(path) as handle:
                old = handle.read()
        except (IOError, OSError) as exc:
            raise ChaosError('the timestamp file %s of the fault in place cannot be read: %s' % (path, exc))
        same = detail.get('offset_s') == self.params['offset_s'] and detail.get('mode') == self.params['mode']
        text = old if same else self.content_for(time.time(), start, old)
        pid = self.info['postmaster_pid']
        result.update(offset_s=self.params['offset_s'], mode=self.params['mode'], timestamp_file=path, timestamp=text.strip(),
                      preload=current.get('preload'), postmaster_pid_before=pid, postmaster_pid_after=pid, restarted=False)
        if same:
            result.update(self._measure(detail.get('history') or [{'at': 0, 'timestamp': old.strip()}], start))
            return
        result['changed'] = True
        if self.module.check_mode:
            result['msg'] = 'would rewrite %s from %s to %s (no restart)' % (path, old.strip(), text.strip())
            return
        self._write(path, text)
        history = (detail.get('history') or []) + [{'at': time.time() - 0.05, 'timestamp': text.strip()}]
        self._remember(offset_s=self.params['offset_s'], mode=self.params['mode'], timestamp=text.strip(), history=history)
        result.update(self._measure(history, start))
        result['postmaster_pid_after'] = self.info_pid()
        result['msg'] = 'rewrote %s from %s to %s, no restart: clock_timestamp() is %+.3f s off the real time' % (
            path, old.strip(), text.strip(), result['measured_offset_s'])


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        offset_s=dict(type='float'),
        mode=dict(type='str', default='jump', choices=list(_clock.MODES)),
    )
    chaos = ChaosModule(argument_spec, required_if=[('state', 'present', ('offset_s',))])
    if chaos.params['state'] == 'present':
        check_options(chaos.module)  # before the state dir is touched: bad input leaves nothing behind
    chaos.run(ClockFault)


if __name__ == '__main__':
    main()
