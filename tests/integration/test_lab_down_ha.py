"""lab_down removes an HA lab whole (make lab LAB_HA=patroni) without being told it was one: real processes and
namespaces, the real playbook.

The lab is a fake one with a random name, built the way lab_up builds an HA lab: a data host's namespace
pgg<name>-1 running a "Patroni" (a program named patroni, its pid file <host dir>/patroni.pid, its command line
naming its config under the lab) that starts a "postmaster" (-D under the lab) and starts it again at once
whenever it dies, as Patroni does; an "etcd" (a program named etcd, data under the lab, pid file) in the witness's
namespace pgg<name>-w. Next to it, another lab whose name extends this one's has a witness namespace and an etcd
that must survive. After lab_down: no process names the lab directory, the namespaces, data and pid files are gone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A Patroni stand-in: keeps a "postmaster" alive (bounded: 120 s), restarting it within 50 ms of its death.
PATRONI = '''#!%s
import subprocess, sys, time
data = sys.argv[2]
child, deadline = None, time.time() + 120
while time.time() < deadline:
    if child is None or child.poll() is not None:
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '-D', data])
    time.sleep(0.05)
''' % sys.executable
ETCD = '#!%s\nimport time\ntime.sleep(120)\n' % sys.executable


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def program(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)
    os.chmod(path, 0o755)
    return path


def daemon(netns, argv, pidfile=None):
    """Start argv in netns in a session of its own (as pggit_lab_ha.py start does); its pid in pidfile."""
    proc = subprocess.Popen(['ip', 'netns', 'exec', netns] + argv, cwd='/', start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if pidfile:
        with open(pidfile, 'w') as handle:
            handle.write('%d\n' % proc.pid)
    return proc


def naming(path):
    """The pids of the processes whose command line names path."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                    if path.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_lab_down_removes_an_ha_lab_and_nothing_of_another(tmp_path):
    name = 'ha' + uuid.uuid4().hex[:5]
    other = name + 'w'  # its witness namespace pgg<name>w-w, its veth pgg<name>wwh: never this lab's
    lab_dir, other_dir = str(tmp_path / 'lab'), str(tmp_path / 'other')
    host, witness = os.path.join(lab_dir, 'hosts', 'lab-1'), os.path.join(lab_dir, 'hosts', name + '-w')
    namespaces = ['pgg%s-1' % name, 'pgg%s-w' % name, 'pgg%s-w' % other]
    procs = []
    inventory = tmp_path / 'inventory' / 'hosts.yml'
    inventory.parent.mkdir()
    inventory.write_text('all: {}\n')
    try:
        for ns in namespaces:
            assert sh('ip', 'netns', 'add', ns).returncode == 0
        os.makedirs(os.path.join(witness, 'etcd', 'data'))
        os.makedirs(os.path.join(host, 'pgdata', 'data'))
        config = os.path.join(host, 'patroni.yml')
        open(config, 'w').close()
        patroni = program(os.path.join(lab_dir, 'patroni-bin', 'patroni'), PATRONI)
        etcd = program(os.path.join(lab_dir, 'bin', 'etcd'), ETCD)
        other_etcd = program(os.path.join(other_dir, 'bin', 'etcd'), ETCD)
        procs.append(daemon(namespaces[0], [patroni, config, os.path.join(host, 'pgdata', 'data')],
                            os.path.join(host, 'patroni.pid')))
        procs.append(daemon(namespaces[1], [etcd, '--data-dir', os.path.join(witness, 'etcd', 'data')],
                            os.path.join(witness, 'etcd.pid')))
        survivor = daemon(namespaces[2], [other_etcd, '--data-dir', os.path.join(other_dir, 'etcd')])
        procs.append(survivor)
        for _attempt in range(100):  # the "postmaster" is up
            if len(naming(os.path.join(host, 'pgdata', 'data'))) >= 1 and len(naming(lab_dir)) >= 3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError('the fake lab did not start: %s' % naming(lab_dir))

        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
        env.pop('PGGIT_LAB_NAME', None)
        down = subprocess.run([os.path.join(BIN, 'ansible-playbook'), os.path.join(REPO, 'playbooks', 'lab_down.yml'),
                               '-i', 'localhost,', '-e', 'pggit_lab_name=%s' % name, '-e', 'pggit_lab_dir=%s' % lab_dir,
                               '-e', 'pggit_lab_inventory=%s' % inventory],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "Stop the lab's Patroni and etcd" in down.stdout

        time.sleep(0.3)  # a Patroni still alive would have restarted its postmaster by now
        assert naming(lab_dir) == [], 'processes of the lab are left'
        for proc in procs[:2]:
            assert proc.wait(timeout=10) == -signal.SIGKILL
        assert survivor.poll() is None, "another lab's etcd must survive"
        listed = sh('ip', 'netns', 'list').stdout.split()
        assert namespaces[0] not in listed and namespaces[1] not in listed and namespaces[2] in listed
        assert not os.path.exists(lab_dir) and os.path.isdir(other_dir)
    finally:
        for pid in naming(lab_dir) + naming(other_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for ns in namespaces:
            sh('ip', 'netns', 'delete', ns)
