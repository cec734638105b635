"""A window "from the module's start" counts the module's own Python start-up (0.2 to 0.3 s on a target): the window
probe watches that much less, and a count_from=start workload stops that much earlier, when Ansible runs them as a
program. Run in-process (the tests' way), they count from main()."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time

import pytest
from modrun import run_module

from ansible_collections.pggit.chaos.plugins.module_utils import _clock
from ansible_collections.pggit.chaos.plugins.modules import pggit_verify, pggit_workload


def test_process_age_of_a_fresh_program_counts_its_start_up():
    code = textwrap.dedent('''
        import time
        time.sleep(0.4)
        from ansible_collections.pggit.chaos.plugins.module_utils._clock import process_age
        print(process_age(10), process_age(0.25))
    ''')
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))).stdout.split()
    age, capped = float(out[0]), float(out[1])
    assert 0.38 <= age < 5, age  # /proc's 10 ms resolution
    assert capped == 0.25


def test_process_age_is_zero_when_proc_cannot_say(monkeypatch):
    monkeypatch.setattr(_clock, 'real_start', lambda pid: None)
    assert _clock.process_age(10) == 0.0
    monkeypatch.setattr(_clock, 'real_start', lambda pid: time.time() + 30)  # a clock step back: never negative
    assert _clock.process_age(10) == 0.0


class _Watched(Exception):
    pass


@pytest.mark.parametrize('as_program, expected', [(True, 7.3), (False, 8.0)])
def test_the_window_probe_watches_less_by_its_start_up(monkeypatch, as_program, expected):
    seen = {}

    def watch(self, duration, interval, abort_after, monitor=None):
        seen['duration'] = duration
        raise _Watched()

    monkeypatch.setattr(pggit_verify, 'process_age', lambda limit: min(0.7, limit))
    monkeypatch.setattr(pggit_verify.Probe, 'watch', watch)
    monkeypatch.setattr(pggit_verify, 'ensure_psycopg2', lambda module: None)
    with pytest.raises(_Watched):
        run_module(functools.partial(pggit_verify.main, as_program=as_program),
                   dict(watch_duration=8, monitor=False, login_host='198.18.0.1'))
    assert seen['duration'] == pytest.approx(expected)


def test_a_count_from_start_workload_stops_earlier_by_its_start_up(monkeypatch, tmp_path):
    monkeypatch.setattr(pggit_workload, 'process_age', lambda limit: 2.0)
    before = time.time()
    result, failed = run_module(functools.partial(pggit_workload.main, as_program=True),
                                dict(run_id='r1', duration=5.5, count_from='start', state_dir=str(tmp_path / 's')),
                                check_mode=True)
    after = time.time()
    assert not failed, result['msg']
    assert before + 3.5 - 0.001 <= result['planned']['options']['stop_at'] <= after + 3.5 + 0.001
