"""pggit_workload count_from: the module hands its own start plus the duration to the program (no database: check mode
shows the options the record would hold). Without it a workload given what is left of a fault window would run that long
again after a slow preparation, past the window."""
from __future__ import annotations

import os
import time

from modrun import run_module

from ansible_collections.pggit.chaos.plugins.modules import pggit_workload


def _planned(workdir, **args):
    args = dict(dict(run_id='r1', duration=5.5, state_dir=str(workdir / 'state')), **args)
    started = time.time()
    result, failed = run_module(pggit_workload.main, args, check_mode=True)
    assert not failed, result['msg']
    assert not os.path.exists(str(workdir / 'state'))  # check mode: no record
    return started, time.time(), result['planned']['options']


def test_count_from_start_gives_the_program_the_modules_deadline(tmp_path):
    before, after, options = _planned(tmp_path, count_from='start')
    assert before + 5.5 - 0.001 <= options['stop_at'] <= after + 5.5 + 0.001, (before, options['stop_at'], after)
    assert options['duration'] == 5.5


def test_by_default_the_duration_counts_from_the_first_ddl(tmp_path):
    assert _planned(tmp_path)[2]['stop_at'] is None
    assert _planned(tmp_path, count_from='ddl')[2]['stop_at'] is None
