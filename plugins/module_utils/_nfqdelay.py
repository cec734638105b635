# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-nfqdelay``: delay, jitter and loss for one NFQUEUE.

Where the kernel has no netem, an iptables rule in our chain sends matching
packets to NFQUEUE ``--queue-num N --queue-bypass`` and this daemon holds each
one for ``delay +/- jitter`` ms before accepting it, or drops it with the loss
probability.  It also delays flows that were already open.  Every matching
packet goes through it, whatever the delay (0 ms included): what a 0 ms run
measures is the cost of that trip, the same at any delay.

It stops by itself at ``--until`` (the fault's expires_at), on SIGTERM, or
when its ledger record is gone; on the way out it releases every packet it
still holds.  ``--queue-bypass`` lets traffic through once it is gone, which
is why the module waits until the queue is listed as bound (readiness) before
it reports the fault as injected.  Without the binding, or with a queue it
cannot bind, the daemon says why and exits at once.

How it stays cheap per packet (issue 11):

- The main thread sits in the binding's own receive loop
  (``NetfilterQueue.run(block=True)``): one ``recv`` and one verdict per packet,
  with no ``select`` and no empty ``recv`` around each one.  A packet whose hold
  is 0 gets its verdict inside the callback; held packets go on a heap.
- A timer thread releases held packets when they fall due (it sleeps until the
  earliest one, so no packet waits for a tick) and checks the stop conditions
  every ``TICK`` seconds.  The callback releases due packets too, so under
  load the timer rarely needs to wake.  One lock orders both threads; the
  verdict calls hold the GIL, so libnetfilter_queue is never entered twice.
- To stop, the timer thread interrupts the receive loop with SIGUSR1 until the
  main thread has left it (the handler only raises where it is safe: in the
  loop's own frame, never inside a packet callback).
- At 0 ms with no jitter and no loss nothing is ever held or dropped, so the
  queue is bound to ``Server.pass_through``: the verdict is given in the
  callback without the lock.  The packet still makes the whole trip through
  the queue and this process; only the Python bookkeeping around the verdict
  is shorter.

What it still costs: most of the per-packet cost is the kernel's trip
through user space, not Python.  Each packet wakes the daemon and is
re-injected by its verdict.  On the 2-core lab this loop spends 16-18 us of
CPU per packet (18-23 us for the select() loop before it, 10-13 us for a
minimal C program that only accepts), yet pgbench select-only loses about
35-45 % of its TPS through any of them (``bench/network.py``): the loss is
the extra wake-up and context switches per packet, which no user-space
verdict avoids.  A raised scheduling priority (nice -10) showed no gain and
is not used.  Pgbench select-only sends about one packet per transaction
through the queue (its queries; the ACKs ride on them), so there is nothing
to skip with the rule either.  A delay inside the kernel, with no trip to user
space, needs netem, or a qdisc that holds packets to a time set by BPF (fq,
etf): the lab kernel has none of them built (only htb, tbf, ingress, fifo).
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import signal
import sys
import threading
import time

PROC_TAG = 'pggit-chaos-nfqdelay'
# How often the timer thread checks --until, signals and (every RECORD_CHECK s) the record, at the latest.
TICK = 0.2
RECORD_CHECK = 1.0


class Delayer(object):
    """The packet schedule, independent of netfilterqueue (unit-testable)."""

    def __init__(self, delay_ms, jitter_ms=0.0, loss_pct=0.0, rng=None, clock=time.monotonic):
        self.delay = delay_ms / 1000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss_pct / 100.0
        self.rng = rng or random.Random()
        self.clock = clock
        self.heap = []
        self.counter = itertools.count()
        self.stats = {'seen': 0, 'dropped': 0, 'accepted': 0}
        # Nothing to hold or drop, ever: every packet is accepted where it arrives (Server.pass_through).
        self.passes = not (self.delay > 0 or self.jitter > 0 or self.loss > 0)

    def hold_for(self):
        if not self.jitter:
            return self.delay
        return max(0.0, self.rng.gauss(self.delay, self.jitter))

    def on_packet(self, packet):
        """Drop, accept or hold one packet.  True when it is now the earliest held packet (wake the timer)."""
        stats = self.stats
        stats['seen'] += 1
        if self.loss and self.rng.random() < self.loss:
            stats['dropped'] += 1
            packet.drop()
            return False
        hold = self.hold_for() if self.jitter else self.delay
        if hold <= 0:
            stats['accepted'] += 1
            packet.accept()
            return False
        due = self.clock() + hold
        heap = self.heap
        earliest = not heap or due < heap[0][0]
        heapq.heappush(heap, (due, next(self.counter), packet))
        return earliest

    def _accept(self, packet):
        self.stats['accepted'] += 1
        packet.accept()

    def release_due(self):
        heap = self.heap
        if not heap:
            return
        now = self.clock()
        while heap and heap[0][0] <= now:
            self._accept(heapq.heappop(heap)[2])

    def release_all(self):
        while self.heap:
            self._accept(heapq.heappop(self.heap)[2])

    def next_timeout(self, cap=TICK):
        if not self.heap:
            return cap
        return max(0.0, min(cap, self.heap[0][0] - self.clock()))


class _Stop(Exception):
    """Raised by a signal handler to leave the receive loop."""


class Server(object):
    """Runs a Delayer on a bound queue: the callback, the timer thread and the stop rules.

    ``queue`` needs ``run(block=True)`` (NetfilterQueue's); ``wall`` is the
    clock of ``until`` (epoch seconds).  Unit tests drive ``callback``,
    ``timer_step`` and ``should_stop`` with fake clocks and packets.
    """

    def __init__(self, queue, delayer, until, record=None, wall=time.time, exists=os.path.exists, tick=TICK):
        self.queue = queue
        self.delayer = delayer
        self.until = until
        self.record = record
        self.wall = wall
        self.exists = exists
        self.tick = tick
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stop = []  # why it stops; set by signal handlers and the timer
        self.closing = False  # under the lock: the timer gives no verdict any more
        self.left = False  # the main thread has left (or never entered) the receive loop
        self.checked = None

    # -- the main thread -------------------------------------------------
    def handler(self):
        """The packet callback to bind: pass_through when the delayer never holds nor drops, else callback."""
        return self.pass_through if self.delayer.passes else self.callback

    def pass_through(self, packet):
        """Accept at once, without the lock: with nothing ever held, the timer thread gives no verdict."""
        stats = self.delayer.stats
        stats['seen'] += 1
        stats['accepted'] += 1
        packet.accept()

    def callback(self, packet):
        delayer = self.delayer
        with self.lock:
            if delayer.on_packet(packet):
                self.cond.notify()  # a new earliest due time: the timer thread must sleep less
            elif delayer.heap:
                delayer.release_due()

    def serve(self):
        """The receive loop: returns once a stop is asked (a signal handler raised _Stop in it) or recv failed."""
        try:
            while not self.stop:
                self.queue.run(True)  # block=True; returns only if recv says EAGAIN (a non-blocking socket)
        except _Stop:
            pass
        finally:
            self.left = True

    def on_signal(self, signum, frame):
        """SIGTERM/SIGINT ask to stop; SIGUSR1 is the timer thread's poke.  Raise only in serve()'s own frame."""
        if signum != signal.SIGUSR1:
            self.stop.append(signal.Signals(signum).name)
        if self.stop and frame is not None and frame.f_code is Server.serve.__code__:
            raise _Stop()
        # Inside a packet callback (or before serve): the timer thread pokes again shortly.

    def close(self):
        """Release every held packet; after this the timer gives no verdict."""
        self.left = True
        with self.cond:
            self.closing = True
            self.delayer.release_all()
            self.cond.notify()

    # -- the timer thread -----------------------------------------------
    def should_stop(self):
        """Why the daemon must stop now, or None (checks the record at most every RECORD_CHECK s)."""
        if self.stop:
            return self.stop[0]
        now = self.wall()
        if now >= self.until:
            return 'expired'
        if self.record and (self.checked is None or now - self.checked >= RECORD_CHECK):
            self.checked = now
            if not self.exists(self.record):
                return 'record gone'
        return None

    def timer_step(self):
        """One round of the timer, under the lock: release due packets, check the stop rules.

        Returns how long to sleep next, or None when the daemon must stop."""
        if self.closing:
            return None
        self.delayer.release_due()
        why = self.should_stop()
        if why:
            if why not in self.stop:
                self.stop.append(why)
            return None
        return self.delayer.next_timeout(self.tick)

    def timer(self, main_thread_id, poke_every=0.01):
        with self.cond:
            while True:
                wait = self.timer_step()
                if wait is None:
                    break
                self.cond.wait(wait)
        # Leave the receive loop: a poke that lands inside a callback is ignored, so poke until it has left.
        while not self.left:
            signal.pthread_kill(main_thread_id, signal.SIGUSR1)
            time.sleep(poke_every)


def _say(msg):
    sys.stdout.write('%s %s[%d] %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), PROC_TAG, os.getpid(), msg))
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROC_TAG)
    parser.add_argument('--queue', type=int, required=True)
    parser.add_argument('--delay-ms', type=float, default=0.0)
    parser.add_argument('--jitter-ms', type=float, default=0.0)
    parser.add_argument('--loss-pct', type=float, default=0.0)
    parser.add_argument('--until', type=float, required=True)
    parser.add_argument('--record', help='ledger record; the daemon stops when it is gone')
    args = parser.parse_args(argv)
    try:
        from netfilterqueue import COPY_META, NetfilterQueue  # target-side dependency, imported only here
    except ImportError as exc:
        _say('cannot start: the Python package netfilterqueue is missing for %s (%s); install it (and libnetfilter-queue) '
             'on the target' % (sys.executable, exc))
        return 3

    delayer = Delayer(args.delay_ms, args.jitter_ms, args.loss_pct)
    queue = NetfilterQueue()
    server = Server(queue, delayer, args.until, args.record)
    try:
        # Only the verdict matters: copy packet metadata, never the payload.
        queue.bind(args.queue, server.handler(), max_len=8192, mode=COPY_META)
    except OSError as exc:
        _say('cannot bind NFQUEUE %d: %s (is another program bound to it? is this root?)' % (args.queue, exc))
        return 4
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, server.on_signal)
    _say('bound NFQUEUE %d; delay %gms jitter %gms loss %g%%' % (args.queue, args.delay_ms, args.jitter_ms, args.loss_pct))
    timer = threading.Thread(target=server.timer, args=(threading.get_ident(),), name='nfqdelay-timer')
    timer.daemon = True
    try:
        timer.start()
        server.serve()
    finally:
        server.close()
        queue.unbind()
    timer.join(2.0)
    _say('queue %d stopped (%s): %r' % (args.queue, server.stop[0] if server.stop else 'expired', delayer.stats))
    return 0
