from __future__ import annotations

import random
import statistics
import sys

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils import _nfqdelay
from ansible_collections.pggit.chaos.plugins.module_utils._nfqdelay import Delayer


class Clock(object):
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class Packet(object):
    """Records its verdict in a shared log, once."""

    def __init__(self, name, log):
        self.name = name
        self.log = log

    def accept(self):
        self.log.append(('accept', self.name))

    def drop(self):
        self.log.append(('drop', self.name))


class ScriptedRng(object):
    """gauss() and random() return scripted values, so hold times are exact."""

    def __init__(self, gauss=(), uniform=()):
        self.gauss_values = list(gauss)
        self.uniform_values = list(uniform)

    def gauss(self, mu, sigma):
        return self.gauss_values.pop(0)

    def random(self):
        return self.uniform_values.pop(0)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def log():
    return []


def send(delayer, log, names):
    for name in names:
        delayer.on_packet(Packet(name, log))


def accepted(log):
    return [name for verdict, name in log if verdict == 'accept']


def test_packets_are_accepted_only_after_the_delay(clock, log):
    delayer = Delayer(125, clock=clock)  # binary fractions: due times compare exactly
    send(delayer, log, ['a'])
    clock.now += 0.0625
    send(delayer, log, ['b'])
    for step, due in [(0.0625 - 2 ** -20, []), (2 ** -20, ['a']), (0.0625 - 2 ** -20, ['a']), (2 ** -20, ['a', 'b'])]:
        clock.now += step
        delayer.release_due()
        assert accepted(log) == due
    assert delayer.heap == []
    assert delayer.stats == {'seen': 2, 'dropped': 0, 'accepted': 2}


def test_release_due_follows_due_time_not_arrival(clock, log):
    delayer = Delayer(100, 50, rng=ScriptedRng(gauss=[0.5, 0.125, 0.25, 0.125]), clock=clock)
    send(delayer, log, ['a', 'b', 'c', 'd'])
    clock.now += 0.25
    delayer.release_due()
    assert accepted(log) == ['b', 'd', 'c']  # equal due times keep arrival order
    clock.now += 1
    delayer.release_due()
    assert accepted(log) == ['b', 'd', 'c', 'a']


@pytest.mark.parametrize('delay_ms, jitter_ms, gauss', [(0, 0, []), (100, 50, [-0.25]), (100, 50, [0.0])])
def test_zero_or_negative_hold_is_accepted_at_once(clock, log, delay_ms, jitter_ms, gauss):
    delayer = Delayer(delay_ms, jitter_ms, rng=ScriptedRng(gauss=gauss), clock=clock)
    send(delayer, log, ['a'])
    assert log == [('accept', 'a')]
    assert delayer.heap == []


@pytest.mark.parametrize('delay_ms, jitter_ms, seed', [(100, 20, 7), (250, 5, 11)])
def test_jitter_spreads_hold_times_around_the_delay(delay_ms, jitter_ms, seed):
    delayer = Delayer(delay_ms, jitter_ms, rng=random.Random(seed))
    holds = [delayer.hold_for() for _ignored in range(20000)]
    assert statistics.mean(holds) == pytest.approx(delay_ms / 1000.0, abs=0.05 * jitter_ms / 1000.0)
    assert statistics.pstdev(holds) == pytest.approx(jitter_ms / 1000.0, rel=0.03)
    assert min(holds) >= 0


def test_jitter_larger_than_delay_never_holds_negative():
    delayer = Delayer(10, 50, rng=random.Random(3))
    holds = [delayer.hold_for() for _ignored in range(5000)]
    assert min(holds) == 0.0
    assert 0.3 < holds.count(0.0) / float(len(holds)) < 0.6  # P(N(10, 50) < 0) is about 0.42


def test_no_jitter_holds_exactly_the_delay():
    rng = ScriptedRng()  # any call to gauss() would fail
    assert Delayer(80, rng=rng).hold_for() == pytest.approx(0.08)


@pytest.mark.parametrize('loss_pct, seed', [(10, 1), (25, 2), (50, 3)])
def test_loss_drops_about_that_fraction(clock, log, loss_pct, seed):
    delayer = Delayer(0, loss_pct=loss_pct, rng=random.Random(seed), clock=clock)
    send(delayer, log, range(10000))
    dropped = [name for verdict, name in log if verdict == 'drop']
    assert abs(len(dropped) / 100.0 - loss_pct) <= 2
    assert len(log) == 10000 and len(set(name for _verdict, name in log)) == 10000  # one verdict per packet
    assert delayer.stats == {'seen': 10000, 'dropped': len(dropped), 'accepted': 10000 - len(dropped)}


@pytest.mark.parametrize('loss_pct, verdicts', [(0, ['accept'] * 3), (100, ['drop'] * 3)])
def test_loss_extremes(clock, log, loss_pct, verdicts):
    delayer = Delayer(0, loss_pct=loss_pct, rng=random.Random(5), clock=clock)
    send(delayer, log, 'abc')
    assert [verdict for verdict, _name in log] == verdicts


def test_dropped_packets_are_never_held(clock, log):
    delayer = Delayer(100, loss_pct=50, rng=ScriptedRng(uniform=[0.4, 0.6]), clock=clock)
    send(delayer, log, ['lost', 'kept'])
    assert log == [('drop', 'lost')]
    assert [entry[2].name for entry in delayer.heap] == ['kept']


def test_release_all_accepts_everything_held(clock, log):
    delayer = Delayer(5000, 1000, rng=random.Random(9), clock=clock)
    send(delayer, log, range(50))
    assert log == []
    delayer.release_all()
    assert sorted(accepted(log)) == list(range(50))
    assert delayer.heap == []
    assert delayer.stats == {'seen': 50, 'dropped': 0, 'accepted': 50}
    delayer.release_all()
    assert len(log) == 50


@pytest.mark.parametrize('due_in, cap, timeout', [
    (None, None, 0.2),
    (None, 1.5, 1.5),
    (0.125, None, 0.125),
    (5.0, None, 0.2),
    (5.0, 10.0, 5.0),
    (-1.0, None, 0.0),
])
def test_next_timeout(clock, log, due_in, cap, timeout):
    delayer = Delayer(1000, clock=clock)
    if due_in is not None:
        send(delayer, log, ['a'])
        clock.now += 1.0 - due_in
    got = delayer.next_timeout() if cap is None else delayer.next_timeout(cap)
    assert got == pytest.approx(timeout)


def test_stats_count_every_verdict(clock, log):
    delayer = Delayer(125, loss_pct=50, rng=ScriptedRng(uniform=[0.1, 0.9, 0.9, 0.2]), clock=clock)
    send(delayer, log, 'abcd')
    assert delayer.stats == {'seen': 4, 'dropped': 2, 'accepted': 0}
    clock.now += 0.125
    delayer.release_due()
    assert delayer.stats == {'seen': 4, 'dropped': 2, 'accepted': 2}
    assert log == [('drop', 'a'), ('drop', 'd'), ('accept', 'b'), ('accept', 'c')]


def test_help_needs_no_netfilterqueue(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'netfilterqueue', None)  # importing it now raises ImportError
    with pytest.raises(SystemExit) as done:
        _nfqdelay.main(['--help'])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: pggit-chaos-nfqdelay')
    for option in ('--queue', '--delay-ms', '--jitter-ms', '--loss-pct', '--until', '--record'):
        assert option in out


@pytest.mark.parametrize('argv', [[], ['--queue', '1000'], ['--until', '1', '--queue', 'x']])
def test_bad_arguments_exit_before_netfilterqueue(monkeypatch, capsys, argv):
    monkeypatch.setitem(sys.modules, 'netfilterqueue', None)
    with pytest.raises(SystemExit) as done:
        _nfqdelay.main(argv)
    assert done.value.code == 2
    assert 'pggit-chaos-nfqdelay: error:' in capsys.readouterr().err


def test_missing_binding_says_why_and_exits_at_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'netfilterqueue', None)
    assert _nfqdelay.main(['--queue', '1000', '--until', '1']) == 3
    out = capsys.readouterr().out
    assert 'cannot start: the Python package netfilterqueue is missing for %s' % sys.executable in out


def test_a_queue_that_cannot_be_bound_says_why_and_exits_at_once(monkeypatch, capsys):
    class Queue(object):
        def bind(self, *args, **kwargs):
            raise OSError('Failed to create queue 1000.')

    fake = type(sys)('netfilterqueue')
    fake.COPY_META, fake.NetfilterQueue = 1, Queue
    monkeypatch.setitem(sys.modules, 'netfilterqueue', fake)
    assert _nfqdelay.main(['--queue', '1000', '--until', '1']) == 4
    assert 'cannot bind NFQUEUE 1000: Failed to create queue 1000.' in capsys.readouterr().out


# -- the loop around the schedule (issue 11: the daemon's cost) -------------------------------------------
import functools  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from ansible_collections.pggit.chaos.plugins.module_utils._nfqdelay import Server  # noqa: E402


class Wall(object):
    def __init__(self, now=5000.0):
        self.now = now

    def __call__(self):
        return self.now


def server_for(delayer, until=6000.0, record=None, exists=None, wall=None):
    return Server(object(), delayer, until, record, wall=wall or Wall(), exists=exists or (lambda path: True))


def test_on_packet_says_when_the_timer_must_wake(clock, log):
    delayer = Delayer(100, 50, rng=ScriptedRng(gauss=[0.5, 0.75, 0.25, 0.25, 0.0]), clock=clock)
    flags = [delayer.on_packet(Packet(name, log)) for name in 'abcde']
    # a: first held; b: later than a; c: earlier than a; d: same due as c (not earlier); e: hold 0, accepted at once
    assert flags == [True, False, True, False, False]
    assert log == [('accept', 'e')]


def test_the_callback_gives_zero_hold_verdicts_at_once_and_releases_what_fell_due(clock, log):
    delayer = Delayer(125, clock=clock)
    server = server_for(delayer)
    server.callback(Packet('a', log))
    assert log == []
    clock.now += 0.125
    server.callback(Packet('b', log))  # arriving after a fell due: a goes now, without the timer
    assert accepted(log) == ['a']
    zero = Delayer(0, clock=clock)
    server_for(zero).callback(Packet('z', log))
    assert accepted(log) == ['a', 'z']


def test_the_callback_wakes_the_timer_only_for_a_new_earliest_packet(clock, log):
    delayer = Delayer(125, clock=clock)
    server = server_for(delayer)
    woken = []
    server.cond = type('Cond', (), {'notify': lambda self: woken.append(1)})()
    server.callback(Packet('a', log))
    clock.now += 0.01
    server.callback(Packet('b', log))
    assert woken == [1]


def test_timer_step_releases_due_packets_and_sleeps_until_the_next(clock, log):
    delayer = Delayer(125, clock=clock)
    server = server_for(delayer)
    send(delayer, log, ['a'])
    clock.now += 0.0625
    send(delayer, log, ['b'])
    assert server.timer_step() == pytest.approx(0.0625)
    clock.now += 0.0625
    assert server.timer_step() == pytest.approx(0.0625)
    assert accepted(log) == ['a']
    clock.now += 0.0625
    assert server.timer_step() == pytest.approx(0.2)  # nothing held: the stop-check tick
    assert accepted(log) == ['a', 'b']


@pytest.mark.parametrize('until, stop, present, why', [
    (6000.0, [], True, None),
    (5000.0, [], True, 'expired'),
    (6000.0, ['SIGTERM'], True, 'SIGTERM'),
    (6000.0, [], False, 'record gone'),
])
def test_should_stop(until, stop, present, why):
    server = server_for(Delayer(0), until=until, record='/state/faults/x.json', exists=lambda path: present)
    server.stop.extend(stop)
    assert server.should_stop() == why


def test_the_record_is_checked_at_most_once_a_second():
    wall, seen = Wall(), []

    def exists(path):
        seen.append(wall.now)
        return True
    server = server_for(Delayer(0), record='/state/faults/x.json', exists=exists, wall=wall)
    for _n in range(30):
        assert server.should_stop() is None
        wall.now += 0.1
    assert len(seen) == 3


def test_a_stop_found_by_the_timer_ends_it_and_no_verdict_follows_close(clock, log):
    delayer = Delayer(125, clock=clock)
    server = server_for(delayer, until=5000.0)
    send(delayer, log, ['a'])
    assert server.timer_step() is None and server.stop == ['expired']
    server.left = True  # nothing to poke in this test
    server.close()
    assert accepted(log) == ['a'] and delayer.heap == []
    send(delayer, log, ['b'])
    assert server.timer_step() is None  # closing: the timer gives no verdict any more
    assert accepted(log) == ['a']


class Frame(object):
    def __init__(self, code):
        self.f_code = code


def test_signals_raise_only_in_the_receive_loop_frame():
    server = server_for(Delayer(0))
    in_loop, in_callback = Frame(Server.serve.__code__), Frame(Server.callback.__code__)
    server.on_signal(signal.SIGUSR1, in_loop)  # a poke without a stop asked: nothing
    server.on_signal(signal.SIGTERM, in_callback)  # asked inside a callback: remembered, not raised
    assert server.stop == ['SIGTERM']
    server.on_signal(signal.SIGUSR1, in_callback)
    with pytest.raises(_nfqdelay._Stop):
        server.on_signal(signal.SIGUSR1, in_loop)


@pytest.fixture
def restore_signals():
    saved = dict((s, signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1))
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class PipeQueue(object):
    """A stand-in for NetfilterQueue: run(True) blocks in C (os.read on a pipe), as recv does."""

    instances = []

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        self.run = functools.partial(os.read, self.read_end)
        self.callback = None
        self.unbound = False
        PipeQueue.instances.append(self)

    def bind(self, queue, callback, max_len, mode):
        self.callback = callback

    def unbind(self):
        self.unbound = True
        os.close(self.read_end)
        os.close(self.write_end)


@pytest.fixture
def pipe_binding(monkeypatch, restore_signals):
    fake = type(sys)('netfilterqueue')
    fake.COPY_META, fake.NetfilterQueue = 1, PipeQueue
    monkeypatch.setitem(sys.modules, 'netfilterqueue', fake)
    del PipeQueue.instances[:]
    return PipeQueue.instances


class TimedPacket(object):
    def __init__(self):
        self.sent = time.monotonic()
        self.verdict = None

    def accept(self):
        self.verdict = ('accept', time.monotonic() - self.sent)

    def drop(self):
        self.verdict = ('drop', time.monotonic() - self.sent)


def test_main_holds_packets_for_the_delay_and_stops_at_until_out_of_a_blocked_receive(pipe_binding, capsys):
    packets = [TimedPacket() for _n in range(3)]

    def feed():
        while not pipe_binding or pipe_binding[0].callback is None:
            time.sleep(0.005)
        for packet in packets:
            pipe_binding[0].callback(packet)
            time.sleep(0.02)
    feeder = threading.Thread(target=feed)
    feeder.start()
    started = time.time()
    assert _nfqdelay.main(['--queue', '1000', '--delay-ms', '50', '--until', str(started + 0.6)]) == 0
    feeder.join()
    took = time.time() - started
    assert 0.55 < took < 2.0, 'stops at --until although the main thread blocks in the receive loop: %.2fs' % took
    for packet in packets:
        verdict, held = packet.verdict
        # never early; late only by what a loaded machine's scheduler adds (fidelity is bench/network.py's job)
        assert verdict == 'accept' and 0.049 < held < 0.5, [p.verdict for p in packets]
    assert pipe_binding[0].unbound
    out = capsys.readouterr().out
    assert 'stopped (expired)' in out and "'accepted': 3" in out


def test_main_releases_held_packets_when_its_record_goes(pipe_binding, capsys, tmp_path):
    record = tmp_path / 'x.json'
    record.write_text('{}')
    held = TimedPacket()

    def feed_then_revert():
        while not pipe_binding or pipe_binding[0].callback is None:
            time.sleep(0.005)
        pipe_binding[0].callback(held)
        record.unlink()
    feeder = threading.Thread(target=feed_then_revert)
    feeder.start()
    started = time.time()
    assert _nfqdelay.main(['--queue', '1000', '--delay-ms', '60000', '--until', str(started + 30), '--record', str(record)]) == 0
    feeder.join()
    assert time.time() - started < 3
    assert held.verdict[0] == 'accept' and held.verdict[1] < 3  # released on the way out, long before its 60 s
    assert 'stopped (record gone)' in capsys.readouterr().out


def test_main_stops_on_sigterm_while_blocked(pipe_binding, capsys):
    main_thread = threading.get_ident()

    def terminate():
        while not pipe_binding or pipe_binding[0].callback is None:
            time.sleep(0.005)
        time.sleep(0.1)
        signal.pthread_kill(main_thread, signal.SIGTERM)
    killer = threading.Thread(target=terminate)
    killer.start()
    started = time.time()
    assert _nfqdelay.main(['--queue', '1000', '--until', str(started + 30)]) == 0
    killer.join()
    assert time.time() - started < 2
    assert 'stopped (SIGTERM)' in capsys.readouterr().out


@pytest.mark.parametrize('delay_ms, jitter_ms, loss_pct, passes', [
    (0, 0, 0, True),
    (0.0, 0.0, 0.0, True),
    (1, 0, 0, False),
    (0, 5, 0, False),
    (0, 0, 0.5, False),
    (100, 20, 10, False),
])
def test_only_a_delayer_that_never_holds_nor_drops_is_bound_without_the_lock(delay_ms, jitter_ms, loss_pct, passes):
    server = server_for(Delayer(delay_ms, jitter_ms, loss_pct))
    assert server.delayer.passes is passes
    assert server.handler() == (server.pass_through if passes else server.callback)


def test_pass_through_accepts_at_once_counts_and_never_takes_the_lock(clock, log):
    delayer = Delayer(0, clock=clock)
    server = server_for(delayer)
    server.lock = None  # any use of the lock would raise
    for name in 'abc':
        server.pass_through(Packet(name, log))
    assert log == [('accept', 'a'), ('accept', 'b'), ('accept', 'c')]
    assert delayer.stats == {'seen': 3, 'dropped': 0, 'accepted': 3} and delayer.heap == []


def test_main_at_zero_delay_binds_the_pass_through_and_every_packet_is_still_queued_to_it(pipe_binding, capsys):
    packets = [TimedPacket() for _n in range(5)]

    def feed():
        while not pipe_binding or pipe_binding[0].callback is None:
            time.sleep(0.005)
        for packet in packets:
            pipe_binding[0].callback(packet)
    feeder = threading.Thread(target=feed)
    feeder.start()
    assert _nfqdelay.main(['--queue', '1000', '--delay-ms', '0', '--until', str(time.time() + 0.4)]) == 0
    feeder.join()
    assert pipe_binding[0].callback.__func__ is Server.pass_through
    assert [p.verdict[0] for p in packets] == ['accept'] * 5
    assert "'seen': 5, 'dropped': 0, 'accepted': 5" in capsys.readouterr().out
