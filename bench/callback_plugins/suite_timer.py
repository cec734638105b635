# Copyright: pggit.chaos contributors
# MIT License
"""Per-task timings for bench/suite.py (not part of the collection: bench sets ANSIBLE_CALLBACK_PLUGINS to this folder).

Writes one JSON line per finished task and host to the file named by PGGIT_SUITE_TIMER_FILE:
{"task": name, "role": role, "host": host, "start": epoch, "end": epoch, "status": ok|failed|skipped|unreachable}.
A task's start is when the strategy queued it (v2_playbook_on_task_start), so a host's time includes the wait for
a fork, and the wait of a task's `until` retries.
"""
from __future__ import annotations

DOCUMENTATION = r'''
name: suite_timer
type: aggregate
short_description: Per-task wall times as JSON lines, for bench/suite.py
description:
  - Writes one JSON line per finished task and host to the file named by E(PGGIT_SUITE_TIMER_FILE).
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'suite_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._path = os.environ.get('PGGIT_SUITE_TIMER_FILE')
        self._started = {}

    def _write(self, row):
        if self._path:
            with open(self._path, 'a') as handle:
                handle.write(json.dumps(row) + '\n')

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.time()

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_playbook_on_play_start(self, play):
        self._write({'play': play.get_name(), 'start': time.time()})

    def _done(self, result, status):
        task = result._task
        role = task._role.get_name() if task._role else ''
        self._write({'task': task.get_name(), 'role': role, 'action': task.action, 'host': result._host.get_name(),
                     'start': self._started.get(task._uuid), 'end': time.time(), 'status': status})

    def v2_runner_on_ok(self, result):
        self._done(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, 'failed')

    def v2_runner_on_skipped(self, result):
        self._done(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._done(result, 'unreachable')

    def v2_playbook_on_stats(self, stats):
        self._write({'stats': True, 'end': time.time()})
