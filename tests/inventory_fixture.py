"""A real Ansible inventory in a temporary folder, and the task variables a play would hand an action plugin.

Used by the opt-in tests: the opt-in must come from the inventory, so the tests build a real one
(inventory file, host_vars and group_vars next to it) and read it through ansible-core's own objects.
"""
from __future__ import annotations

import os

import yaml

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager


class Inventory(object):
    def __init__(self, folder, hosts, files=None):
        """``hosts``: the YAML inventory as a dict; ``files``: {'host_vars/pg1.yml': {...}, 'group_vars/db.yml': {...}}."""
        folder = str(folder)
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, 'hosts.yml')
        with open(self.path, 'w') as handle:
            yaml.safe_dump(hosts, handle)
        for name, content in (files or {}).items():
            path = os.path.join(folder, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as handle:
                yaml.safe_dump(content, handle)
        self.loader = DataLoader()
        self.inventory = InventoryManager(loader=self.loader, sources=[self.path])
        self.variable_manager = VariableManager(loader=self.loader, inventory=self.inventory)
        self.hostvars = HostVars(self.inventory, self.variable_manager, self.loader)

    def task_vars(self, host, **overrides):
        """What a task on ``host`` sees: its inventory variables (effective values), then ``overrides`` (extra/play vars)."""
        variables = dict(self.variable_manager.get_vars(host=self.inventory.get_host(host), include_hostvars=False))
        variables.update(overrides)
        variables['hostvars'] = self.hostvars
        variables.setdefault('inventory_hostname', host)
        return variables

    def add_host(self, name, groups=(), **host_vars):
        """What ``add_host`` does to the live inventory at run time (ansible-core's own code path)."""
        self.inventory.add_dynamic_host({'host_name': name, 'groups': list(groups), 'host_vars': host_vars}, {})


def hosts(**host_vars):
    """A YAML inventory with hosts in group ``db``: hosts(pg1={'pggit_chaos_allowed': True}, pg2={})."""
    return {'all': {'children': {'db': {'hosts': dict((name, dict(v, ansible_connection='local')) for name, v in host_vars.items())}}}}
