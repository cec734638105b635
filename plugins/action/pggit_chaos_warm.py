# Copyright: pggit.chaos contributors
# MIT License
"""Start building the payloads of the modules a run's roles use, in the background, on the controller."""
from __future__ import annotations

import os

from ansible import constants as C
from ansible.plugins.action import ActionBase

from ansible_collections.pggit.chaos.plugins.module_utils._warm_spec import warm_argument_spec
from ansible_collections.pggit.chaos.plugins.plugin_utils import _warm


def _collection_paths():
    try:
        from ansible.utils.collection_loader import AnsibleCollectionConfig  # pylint: disable=import-outside-toplevel
        return [p for p in AnsibleCollectionConfig.collection_paths or [] if isinstance(p, str)]
    except Exception:  # pylint: disable=broad-except
        return []


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=warm_argument_spec())
        if not 1 <= args['timeout'] <= 3600:
            result.update(failed=True, changed=False, msg='timeout must be 1 to 3600 seconds, got timeout=%s' % args['timeout'])
            return result
        modules = _warm.modules_of_roles(args['roles'])
        result.update(changed=False, modules=modules, pid=None)
        if not modules:
            result['msg'] = 'no module of the collection to prepare for roles %s' % ', '.join(args['roles'])
            return result
        compression = C.config.get_config_value('DEFAULT_MODULE_COMPRESSION', variables=task_vars)
        try:
            result['pid'] = _warm.start(modules, C.DEFAULT_LOCAL_TMP, os.getppid(), args['timeout'], compression,
                                        _collection_paths())
        except OSError as exc:  # a warm-up that cannot start costs nothing: each worker builds its module itself
            result['msg'] = 'the payloads are built as each module is first used: %s' % exc
            return result
        result['msg'] = 'building %d module payload(s) in the background' % len(modules)
        return result
