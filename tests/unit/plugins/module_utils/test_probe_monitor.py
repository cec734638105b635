"""The chaos monitor's sampling loop (a thread beside the watch's health rounds), with fake samplers."""
from __future__ import annotations

import threading
import time

from ansible_collections.pggit.chaos.plugins.module_utils._probe import Monitor, Probe

ROW = (1795800000.0, False, 3, 1, 0, True, 2, 0, 42, '[["lab-2", "198.18.0.12", 0]]')


class Rows(object):
    def __init__(self, fail_at=()):
        self.calls = 0
        self.fail_at = fail_at
        self.closed = False

    def __call__(self):
        self.calls += 1
        if self.calls in self.fail_at:
            raise RuntimeError('connection refused')
        return (time.time(),) + ROW[1:]

    def close(self):
        self.closed = True


def test_monitor_samples_on_its_interval_until_stopped_and_closes_its_connection():
    rows = Rows(fail_at=(2,))
    monitor = Monitor(rows, interval=0.2, phase='window')
    monitor.start()
    time.sleep(1.05)
    series = monitor.stop()
    assert 4 <= len(series) <= 7, len(series)  # about 6; a loaded machine may lose one
    assert rows.closed
    assert series[1]['pggit_health'] == 'down' and series[1]['error'] == 'connection refused'
    assert all(s['pggit_health'] == 'ok' and s['history_rows'] == 42 for s in series if s is not series[1])
    assert [s['phase'] for s in series] == ['window'] * len(series)
    assert monitor.cost()['samples'] == len(series)
    assert not [t for t in threading.enumerate() if t.name == 'pggit-chaos-monitor']


def test_a_slow_sample_is_not_followed_by_a_burst():
    rows = Rows()
    slow = [0.5]

    def sampler():
        time.sleep(slow.pop() if slow else 0)
        return rows()
    monitor = Monitor(sampler, interval=0.2)
    monitor.start()
    time.sleep(1.0)
    series = monitor.stop()
    # 0.5 s late: one sample at once, then every 0.2 s again (about 4 in all), not the missed ticks in a burst (6).
    assert 3 <= len(series) <= 5, [round(s['t'] % 10, 2) for s in series]
    gaps = [b['t'] - a['t'] for a, b in zip(series[1:], series[2:])]
    assert gaps and min(gaps) > 0.15, gaps


def test_watch_runs_the_monitor_beside_its_rounds_and_returns_the_series():
    probe = Probe({'login_host': 'x'}, connect=None)
    probe.run_once = lambda: {'healthy': True, 'failed_checks': [], 'findings': [], 'at': time.time()}
    monitor = Monitor(Rows(), interval=0.2)
    result = probe.watch(0.9, 0.3, 2, monitor=monitor)
    assert len(result['rounds']) >= 3 and len(result['series']) >= 4
    assert result['monitor_cost']['samples'] == len(result['series'])
    assert not [t for t in threading.enumerate() if t.name == 'pggit-chaos-monitor']


def test_watch_stops_the_monitor_when_a_round_raises():
    probe = Probe({'login_host': 'x'}, connect=None)

    def boom():
        raise KeyError('x')
    probe.run_once = boom
    monitor = Monitor(Rows(), interval=0.2)
    try:
        probe.watch(5, 1, 2, monitor=monitor)
    except KeyError:
        pass
    assert monitor._stop.is_set() and not monitor._thread.is_alive()


def test_watch_without_a_monitor_has_no_series():
    probe = Probe({'login_host': 'x'}, connect=None)
    probe.run_once = lambda: {'healthy': True, 'failed_checks': [], 'findings': [], 'at': time.time()}
    assert 'series' not in probe.watch(0.3, 0.2, 2)


def test_sample_time_is_the_monitors_clock_not_the_servers():
    """clock_skew runs the server under libfaketime an hour back: its clock_timestamp() must not place the window's
    samples an hour before the experiment's timeline (and away from the workload's op_times)."""
    skewed = Rows()

    def sampler():
        return (time.time() - 3600,) + skewed()[1:]
    monitor = Monitor(sampler, clock=lambda: 1795800000.25)
    sample = monitor.sample()
    monitor.stop()
    assert sample['t'] == 1795800000.25
    assert abs(sample['server_t'] - (time.time() - 3600)) < 60
