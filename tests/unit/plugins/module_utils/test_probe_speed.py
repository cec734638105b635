"""The probe's timing: a watch ends at the window's end (not one slow round after it), and a replica's
convergence is polled inside one module run."""
from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._probe import Probe

TARGET = dict(login_host='db1', login_port=5433, login_user='app', db='shop')


class Clock(object):
    def __init__(self):
        self.now = 500.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds


def slow_probe(round_s, digests=None):
    """A probe whose rounds take ``round_s`` seconds; round i reads digests[i] (the last repeats)."""
    clock = Clock()
    probe = Probe(dict(TARGET), connect=None, clock=clock)
    starts = []

    def run_once():
        starts.append(clock.now)
        clock.now += round_s
        digest = digests[min(len(starts), len(digests)) - 1] if digests else None
        return {'healthy': True, 'failed_checks': [], 'findings': [], 'at': clock.now,
                'history': {'digest': digest, 'rows': len(starts)} if digests else None}
    probe.run_once = run_once
    return probe, clock, starts


@pytest.mark.parametrize('round_s', [0.5, 1.5, 3.0])
def test_watch_with_slow_rounds_ends_at_the_window_end(round_s):
    probe, clock, starts = slow_probe(round_s)
    result = probe.watch(10, 2, 2, sleep=clock.sleep)
    # The watch covered the window (a round ran up to its end), and did not overrun it by a slow round.
    assert clock.now == pytest.approx(510.0)
    assert starts[-1] + round_s == pytest.approx(510.0)
    assert result['healthy'] is True and len(result['rounds']) == len(starts)
    # Never more than the interval between the end of a round and the start of the next (no hole in the watch).
    assert all(b - (a + round_s) <= 2 + 1e-9 for a, b in zip(starts, starts[1:]))


def test_watch_with_instant_rounds_still_probes_at_the_window_end():
    probe, clock, starts = slow_probe(0.0)
    probe.watch(10, 2, 2, sleep=clock.sleep)
    assert starts == [500.0, 502.0, 504.0, 506.0, 508.0, 510.0]


def test_wait_history_stops_as_soon_as_the_digest_matches():
    probe, clock, starts = slow_probe(0.1, digests=['a', 'a', 'b'])
    result = probe.wait_history('b', 30, interval=0.5, sleep=clock.sleep)
    assert result['converged'] is True and result['history_rounds'] == 3
    assert result['waited_s'] == pytest.approx(3 * 0.1 + 2 * 0.5)


def test_wait_history_gives_up_at_the_timeout_and_says_so():
    probe, clock, starts = slow_probe(0.1, digests=['a'])
    result = probe.wait_history('b', 5, interval=0.5, sleep=clock.sleep)
    assert result['converged'] is False and result['history']['digest'] == 'a'
    assert clock.now - 500.0 == pytest.approx(5.0, abs=0.11)


def test_wait_history_with_no_time_probes_once():
    probe, clock, starts = slow_probe(0.1, digests=['a'])
    result = probe.wait_history('b', 0, sleep=clock.sleep)
    assert result['converged'] is False and len(starts) == 1


def test_watch_after_one_slow_round_does_not_burst():
    """A slow first round (a cold connection) then fast ones: rounds stay spread, the last one is the last."""
    clock = Clock()
    probe = Probe(dict(TARGET), connect=None, clock=clock)
    starts = []

    def run_once():
        starts.append(clock.now)
        clock.now += 3.0 if len(starts) == 1 else 0.05
        return {'healthy': True, 'failed_checks': [], 'findings': [], 'at': clock.now}
    probe.run_once = run_once
    probe.watch(10, 2, 2, sleep=clock.sleep)
    assert len(starts) <= 7
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:]))
    assert 509.0 <= clock.now <= 510.0 + 1e-9
