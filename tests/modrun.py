"""Run a module's main() in-process and capture its exit_json/fail_json."""
from __future__ import annotations

from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    def __init__(self, result, failed):
        super(ModuleExit, self).__init__(result.get('msg'))
        self.result = result
        self.failed = failed


def _exit(self, **kwargs):
    kwargs.setdefault('changed', False)
    raise ModuleExit(kwargs, False)


def _fail(self, msg, **kwargs):
    kwargs['msg'] = msg
    kwargs['failed'] = True
    raise ModuleExit(kwargs, True)


def run_module(main, args, check_mode=False, diff=False):
    """Return (result, failed). Never lets SystemExit escape."""
    args = dict(args)
    if check_mode:
        args['_ansible_check_mode'] = True
    if diff:
        args['_ansible_diff'] = True
    with patch_module_args(args), \
            mock.patch.object(basic.AnsibleModule, 'exit_json', _exit), \
            mock.patch.object(basic.AnsibleModule, 'fail_json', _fail):
        try:
            main()
        except ModuleExit as done:
            return done.result, done.failed
    raise AssertionError('module returned without exit_json or fail_json')
