"""Work out, from a lab's name, everything the lab creates; print it as JSON.

One machine can hold several labs. Everything a lab creates is derived from
its name, so two names never share a directory, a namespace, an interface or a
subnet:

- directory        /var/tmp/pggit-lab-<name> (unless --dir says otherwise)
- namespaces       pgg<name>-<N>, N = 1..8
- bridge           pgg<name>0, addressed <subnet>.1/24
- veths            pgg<name><N>h (root end), eth0 inside the namespace
- subnet           a /24 inside 198.18.0.0/15: index 0 (198.18.0.0/24) for the
                   default lab ``lab``, otherwise 1 + sha256(name) mod 511, or
                   --subnet-index; index i is 198.(18 + i // 256).(i % 256).0/24
- host addresses   <subnet>.(10 + N)
- cgroups          pggit-lab-<name>-lab-<N>, children of lab_up's own cgroups
                   (see pggit_lab_cgroup.py)
- HA (--ha patroni) a witness host <name>-w (namespace pgg<name>-w, veth
                   pgg<name>wh, address <subnet>.20, region_c) that runs etcd
                   only; etcd members on lab-1 (region_a), the last region_b
                   host and the witness, so that losing either data region
                   leaves 2 of 3 members: a quorum. Every host's Patroni
                   listens on <address>:8008, etcd on <address>:2379/2380.

The regexes (lab_down's) always cover the witness, so lab_down removes an HA
lab and a plain one alike, without being told which it was.

Names are 1 to 10 characters from [a-z0-9]: a Linux interface name has at most
15, and the veth name adds 5. No name is a prefix of another's interface names
(the namespace suffix has a dash, which names cannot contain; bridges end in 0,
veths in a digit and h), so the regexes printed here match one lab only.

--check (used by lab_up) also reads `ip -j addr show` and refuses a subnet
that another interface already holds (another lab, or anything else), a
bridge of ours that holds another subnet, and a lab directory that is a
symlink, not owned by root or writable by others. Always (lab_down too) it
refuses a lab directory whose marker file (MARKER, written by lab_up) names
another lab. Errors go to stdout as {"failed": true, "msg": ...} with exit
code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys

DEFAULT_NAME = 'lab'
NAME_RE = re.compile(r'[a-z0-9]{1,10}')
RANGE = ipaddress.ip_network('198.18.0.0/15')
SUBNETS = 512  # /24s in the /15
MAX_HOSTS = 8
HA_MODES = ('none', 'patroni')
HA_MIN_HOSTS = 3
WITNESS_HOST = 20  # the witness address: <subnet>.20, above the data hosts' .11-.18
PATRONI_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT = 8008, 2379, 2380
MARKER = '.pggit-lab-name'


class PlanError(Exception):
    pass


def check_name(name):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PlanError(
            'pggit_lab_name must be 1 to 10 characters from a-z and 0-9, because it names network interfaces '
            '(at most 15 characters), got %r' % (name,))
    return name


def subnet_index(name, explicit=None):
    """The /24 index (0..511) of a lab: explicit, else 0 for the default lab, else from the name's hash."""
    if explicit not in (None, ''):
        try:
            index = int(str(explicit).strip())
        except ValueError:
            index = -1
        if not 0 <= index < SUBNETS:
            raise PlanError('pggit_lab_subnet_index must be an integer from 0 to %d, got %r' % (SUBNETS - 1, explicit))
        return index
    if name == DEFAULT_NAME:
        return 0
    return 1 + int(hashlib.sha256(name.encode('ascii')).hexdigest(), 16) % (SUBNETS - 1)


def subnet(index):
    return ipaddress.ip_network('198.%d.%d.0/24' % (18 + index // 256, index % 256))


def check_ha(ha):
    """'none' or 'patroni' (empty means none); PlanError naming the option otherwise."""
    value = 'none' if ha in (None, '') else ha
    if value not in HA_MODES:
        raise PlanError('pggit_lab_ha must be one of %s (empty means none), got %r' % (', '.join(HA_MODES), ha))
    return value


def plan(name, hosts=None, index=None, lab_dir=None, ha=None):
    """Everything lab <name> creates. hosts=None: only what lab_down needs (no node list)."""
    check_name(name)
    ha = check_ha(ha)
    net = subnet(subnet_index(name, index))
    prefix = 'pgg' + name
    lab_dir = lab_dir or '/var/tmp/pggit-lab-' + name
    if not re.match(r'^/[^/]+/.+', lab_dir) or os.path.normpath(lab_dir) != lab_dir.rstrip('/'):
        raise PlanError('pggit_lab_dir must be a normalized absolute path at least two levels deep, because lab_down '
                        'removes it whole, got %r' % (lab_dir,))
    lab_dir = lab_dir.rstrip('/')
    base = str(net.network_address).rsplit('.', 1)[0]
    result = {
        'name': name,
        'dir': lab_dir,
        'subnet': str(net),
        'subnet_index': subnet_index(name, index),
        'prefixlen': net.prefixlen,
        'bridge': prefix + '0',
        'bridge_address': base + '.1',
        'ha': ha,
        # [0-9w]: the data hosts and the witness of an HA lab (lab_down removes both kinds)
        'netns_regex': '^%s-[0-9w]$' % prefix,
        'link_regex': '^%s([0-9w]h|0)$' % prefix,
        'cgroup_regex': '^pggit-lab-%s-lab-[0-9]$' % name,
    }
    if hosts is None:
        return result
    try:
        count = int(str(hosts).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_HOSTS:
        raise PlanError('pggit_lab_hosts must be an integer from 1 to %d, got %r' % (MAX_HOSTS, hosts))
    if ha != 'none' and count < HA_MIN_HOSTS:
        raise PlanError('pggit_lab_hosts must be at least %d with pggit_lab_ha=%s (a region_b host to fail over to, '
                        'and an etcd member there), got %r' % (HA_MIN_HOSTS, ha, hosts))
    nodes = []
    for i in range(1, count + 1):
        host_dir = '%s/hosts/lab-%d' % (lab_dir, i)
        nodes.append({
            'index': i,
            'name': 'lab-%d' % i,
            'netns': '%s-%d' % (prefix, i),
            'veth': '%s%dh' % (prefix, i),
            'iface': 'eth0',
            'address': '%s.%d' % (base, 10 + i),
            'primary': i == 1,
            'region': 'region_a' if i <= 2 or i % 2 == 0 else 'region_b',
            'dir': host_dir,
            'state_dir': host_dir + '/state',
            'run_dir': host_dir + '/run',
            'pgdata_mount': host_dir + '/pgdata',
            'pgdata': host_dir + '/pgdata/data',
            'log': host_dir + '/postgresql.log',
            'host_key': host_dir + '/ssh_host_ed25519_key',
            'sshd_pid': host_dir + '/run/sshd.pid',
            'sshd_log': host_dir + '/sshd.log',
            'cgroup_name': 'pggit-lab-%s-lab-%d' % (name, i),
            'witness': False,
            'etcd': False,
        })
    result['nodes'] = nodes
    result['hosts'] = list(nodes)
    if ha == 'patroni':
        _plan_ha(result, name, prefix, base, lab_dir)
    return result


def _etcd(node):
    """Make node an etcd member: its URLs, data (on a tmpfs of its own), pid file and log."""
    node.update({
        'etcd': True,
        'etcd_url': 'http://%s:%d' % (node['address'], ETCD_CLIENT_PORT),
        'etcd_peer_url': 'http://%s:%d' % (node['address'], ETCD_PEER_PORT),
        'etcd_mount': node['dir'] + '/etcd',
        'etcd_data': node['dir'] + '/etcd/data',
        'etcd_pid': node['dir'] + '/etcd.pid',
        'etcd_log': node['dir'] + '/etcd.log',
    })


def _plan_ha(result, name, prefix, base, lab_dir):
    """The Patroni side of each data host, the witness, and the etcd members (see the module docstring)."""
    nodes = result['nodes']
    for node in nodes:
        node.update({
            'patroni_url': 'http://%s:%d' % (node['address'], PATRONI_PORT),
            'patroni_config': node['dir'] + '/patroni.yml',
            'patroni_pid': node['dir'] + '/patroni.pid',
            'patroni_log': node['dir'] + '/patroni.log',
        })
    witness_dir = '%s/hosts/%s-w' % (lab_dir, name)
    witness = {
        'index': 'w',
        'name': '%s-w' % name,
        'netns': '%s-w' % prefix,
        'veth': '%swh' % prefix,
        'iface': 'eth0',
        'address': '%s.%d' % (base, WITNESS_HOST),
        'primary': False,
        'region': 'region_c',
        'dir': witness_dir,
        'state_dir': witness_dir + '/state',
        'run_dir': witness_dir + '/run',
        'host_key': witness_dir + '/ssh_host_ed25519_key',
        'sshd_pid': witness_dir + '/run/sshd.pid',
        'sshd_log': witness_dir + '/sshd.log',
        'witness': True,
        'etcd': False,
    }
    region_b = [node for node in nodes if node['region'] == 'region_b']
    members = [nodes[0], region_b[-1], witness]
    for node in members:
        _etcd(node)
    result['witness'] = witness
    result['hosts'] = nodes + [witness]
    keys = ('name', 'address', 'region', 'etcd_url', 'etcd_peer_url')
    result['etcd_members'] = [dict((key, node[key]) for key in keys) for node in members]
    result['etcd_initial_cluster'] = ','.join('%s=%s' % (node['name'], node['etcd_peer_url']) for node in members)
    result['etcd_token'] = 'pggit-lab-' + name
    result['patroni_scope'] = 'pggit-lab-' + name


def check_addresses(lab, links):
    """Refuse a subnet already in use; links is the parsed output of `ip -j addr show`."""
    net = ipaddress.ip_network(lab['subnet'])
    for link in links:
        ifname = link.get('ifname', '?')
        for info in link.get('addr_info') or []:
            if info.get('family') != 'inet':
                continue
            try:
                other = ipaddress.ip_network('%s/%s' % (info['local'], info.get('prefixlen', 32)), strict=False)
            except (KeyError, ValueError):
                continue
            if ifname == lab['bridge']:
                if other != net and other.overlaps(RANGE):
                    raise PlanError(
                        'lab %s is already up with subnet %s on its bridge %s, not %s (pggit_lab_subnet_index=%d): '
                        'take it down first (make lab-down LAB_NAME=%s) or keep its subnet index'
                        % (lab['name'], other, ifname, net, lab['subnet_index'], lab['name']))
            elif other.overlaps(net):
                owner = re.match(r'^pgg([a-z0-9]+)0$', ifname)
                raise PlanError(
                    'pggit_lab_name=%s: its subnet %s (pggit_lab_subnet_index=%d) is already used by %s (%s/%s)%s; '
                    'choose another pggit_lab_subnet_index from 0 to %d (make lab LAB_SUBNET_INDEX=...)'
                    % (lab['name'], net, lab['subnet_index'], ifname, info['local'], info.get('prefixlen', 32),
                       ', the bridge of lab %s' % owner.group(1) if owner else '', SUBNETS - 1))


def check_dir(lab_dir):
    """Refuse a lab directory someone else could have prepared: lab_up runs as root and mounts on it."""
    try:
        st = os.lstat(lab_dir)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise PlanError('pggit_lab_dir=%s exists and is not a directory (a symlink?): remove it or choose another'
                        % lab_dir)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        values = (lab_dir, st.st_uid, stat.S_IMODE(st.st_mode), os.geteuid())
        raise PlanError('pggit_lab_dir=%s is owned by uid %d with mode %04o: it must be owned by uid %d and writable by '
                        'no one else; remove it or choose another' % values)


def check_owner(lab):
    """Refuse a lab directory that lab_up made for another lab name."""
    try:
        with open(os.path.join(lab['dir'], MARKER)) as handle:
            owner = handle.read().strip()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PlanError('pggit_lab_dir=%s: cannot read its %s: %s' % (lab['dir'], MARKER, exc))
    if owner != lab['name']:
        raise PlanError('pggit_lab_dir=%s belongs to the lab %r, not to pggit_lab_name=%s: refusing to touch it'
                        % (lab['dir'], owner, lab['name']))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--name', required=True)
    parser.add_argument('--hosts', default=None)
    parser.add_argument('--subnet-index', default='')
    parser.add_argument('--dir', default='')
    parser.add_argument('--ha', default='', help='none (default) or patroni')
    parser.add_argument('--check', action='store_true', help='check the machine for collisions (lab_up)')
    args = parser.parse_args(argv)
    try:
        lab = plan(args.name, args.hosts, args.subnet_index, args.dir or None, args.ha)
        check_owner(lab)
        if args.check:
            check_dir(lab['dir'])
            out = subprocess.run(['ip', '-j', 'addr', 'show'], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise PlanError('ip -j addr show failed: %s' % out.stderr.strip())
            check_addresses(lab, json.loads(out.stdout or '[]'))
    except PlanError as exc:
        json.dump({'failed': True, 'msg': str(exc)}, sys.stdout)
        return 1
    json.dump(lab, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
