# Copyright: pggit.chaos contributors
# MIT License
"""Where the chaos reports go when a job runs under ansible-runner (AWX, AAP, ansible-navigator).

ansible-runner exports the job's artifact directory to ansible-playbook as
``AWX_ISOLATED_DATA_DIR``: ``<private_data_dir>/artifacts/<ident>`` on a plain
host, ``/runner/artifacts/<ident>`` inside an execution environment.  That is
the one folder of a job that the runner keeps (and, under AWX, streams back
from the execution node with the job's events); the project checkout, where the
built-in default ``reports`` would land, is thrown away with the job.

The rule, in order:

1. ``PGGIT_CHAOS_REPORT_DIR`` or ``[pggit_chaos] report_dir`` in ansible.cfg, when set: always.
2. Under ansible-runner: ``<artifact dir>/chaos``.
3. Else the built-in default, ``reports`` (relative to the playbook's working folder).
"""
from __future__ import annotations

import os

RUNNER_ARTIFACT_ENV = 'AWX_ISOLATED_DATA_DIR'
SUBDIR = 'chaos'


def report_dir(configured, origin, environ=None):
    """The folder for the reports, from the callback option's value and its origin ('default', 'env: ...', 'ini: ...')."""
    environ = os.environ if environ is None else environ
    if origin and origin != 'default':
        return configured
    artifacts = (environ.get(RUNNER_ARTIFACT_ENV) or '').strip()
    if artifacts:
        return os.path.join(artifacts, SUBDIR)
    return configured
