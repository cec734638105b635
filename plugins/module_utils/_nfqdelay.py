# Copyright: pggit.chaos contributors
# MIT License
"""``pggit-chaos-nfqdelay``: delay, jitter and loss for one NFQUEUE.

Where the kernel has no netem, an iptables rule in our chain sends matching
packets to NFQUEUE ``--queue-num N --queue-bypass`` and this daemon holds each
one for ``delay +/- jitter`` ms before accepting it, or drops it with the loss
probability.  It also delays flows that were already open.

It stops by itself at ``--until`` (the fault's expires_at), on SIGTERM, or
when its ledger record is gone; on the way out it releases every packet it
still holds.  ``--queue-bypass`` lets traffic through once it is gone, which
is why the module waits until the queue is listed as bound (readiness) before
it reports the fault as injected.  Without the binding, or with a queue it
cannot bind, the daemon says why and exits at once.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import select
import signal
import sys
import time

PROC_TAG = 'pggit-chaos-nfqdelay'


class Delayer(object):
    """The packet schedule, independent of netfilterqueue (unit-testable)."""

    def __init__(self, delay_ms, jitter_ms=0.0, loss_pct=0.0, rng=None, clock=time.time):
        self.delay = delay_ms / 1000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss_pct / 100.0
        self.rng = rng or random.Random()
        self.clock = clock
        self.heap = []
        self.counter = itertools.count()
        self.stats = {'seen': 0, 'dropped': 0, 'accepted': 0}

    def hold_for(self):
        if not self.jitter:
            return self.delay
        return max(0.0, self.rng.gauss(self.delay, self.jitter))

    def on_packet(self, packet):
        self.stats['seen'] += 1
        if self.loss and self.rng.random() < self.loss:
            self.stats['dropped'] += 1
            packet.drop()
            return
        hold = self.hold_for()
        if hold <= 0:
            self._accept(packet)
            return
        heapq.heappush(self.heap, (self.clock() + hold, next(self.counter), packet))

    def _accept(self, packet):
        self.stats['accepted'] += 1
        packet.accept()

    def release_due(self):
        now = self.clock()
        while self.heap and self.heap[0][0] <= now:
            self._accept(heapq.heappop(self.heap)[2])

    def release_all(self):
        while self.heap:
            self._accept(heapq.heappop(self.heap)[2])

    def next_timeout(self, cap=0.2):
        if not self.heap:
            return cap
        return max(0.0, min(cap, self.heap[0][0] - self.clock()))


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
    try:
        # Only the verdict matters: copy packet metadata, never the payload.
        queue.bind(args.queue, delayer.on_packet, max_len=8192, mode=COPY_META)
    except OSError as exc:
        _say('cannot bind NFQUEUE %d: %s (is another program bound to it? is this root?)' % (args.queue, exc))
        return 4
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append('SIGTERM'))
    signal.signal(signal.SIGINT, lambda *a: stop.append('SIGINT'))
    _say('bound NFQUEUE %d; delay %gms jitter %gms loss %g%%' % (args.queue, args.delay_ms, args.jitter_ms, args.loss_pct))
    fd = queue.get_fd()
    checked = 0.0
    try:
        while not stop and time.time() < args.until:
            readable = select.select([fd], [], [], delayer.next_timeout())[0]
            if readable:
                queue.run(block=False)
            delayer.release_due()
            if args.record and time.time() - checked > 1.0:
                checked = time.time()
                if not os.path.exists(args.record):
                    stop.append('record gone')
    finally:
        delayer.release_all()
        queue.unbind()
    _say('queue %d stopped (%s): %r' % (args.queue, stop[0] if stop else 'expired', delayer.stats))
    return 0
