"""Each fault checks the tools it needs on the target and, when one is missing, fails before anything is recorded or
changed, with a message naming the Debian/Ubuntu and the RHEL/Fedora package (the EE cannot install them there)."""
from __future__ import annotations

import os

import pytest

import test_network_modules as network_tests

from test_network_modules import run_bandwidth, run_latency, run_partition

from ansible_collections.pggit.chaos.plugins.module_utils import _clock, _pgconn, _steps, _stress, postgres
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError


# The network modules' fakes (commands run, daemons spawned, netem, routes), shared with test_network_modules.
commands = network_tests.commands
netem = network_tests.netem
queues = network_tests.queues
routed = network_tests.routed
spawned = network_tests.spawned
state_dir = network_tests.state_dir


def assert_nothing_left(commands, state_dir):
    assert commands.mutating() == []
    assert commands.ledger_records() == {}
    assert not os.path.exists(os.path.join(state_dir, 'faults')) or os.listdir(os.path.join(state_dir, 'faults')) == []


def test_partition_without_iptables_names_the_package(commands, spawned, state_dir):
    commands.missing.add('iptables')
    result, failed = run_partition(state_dir)
    assert failed
    assert result['msg'] == ('iptables is not installed on this host (searched PATH and the sbin folders): install the '
                             'package iptables (Debian/Ubuntu: apt-get install iptables; RHEL/Fedora: dnf install iptables-nft)')
    assert_nothing_left(commands, state_dir)


def test_packet_loss_without_iptables_names_the_package(commands, spawned, netem, state_dir):
    commands.missing.add('iptables')
    result, failed = run_latency(state_dir, delay_ms=0, loss_pct=10, direction='in')
    assert failed and 'install the package iptables' in result['msg'] and 'iptables-nft' in result['msg'], result['msg']
    assert_nothing_left(commands, state_dir)


def test_bandwidth_without_tc_names_the_package(routed, spawned, state_dir):
    routed.missing.add('tc')
    result, failed = run_bandwidth(state_dir)
    assert failed
    assert result['msg'].startswith('tc is not installed on this host'), result['msg']
    assert 'apt-get install iproute2' in result['msg'] and 'dnf install iproute-tc' in result['msg']
    assert_nothing_left(routed, state_dir)


def test_bandwidth_without_ip_names_the_package(commands, spawned, state_dir):
    commands.missing.add('ip')
    result, failed = run_bandwidth(state_dir)
    assert failed
    assert result['msg'].startswith('ip is not installed on this host'), result['msg']
    assert 'apt-get install iproute2' in result['msg'] and 'dnf install iproute)' in result['msg']
    assert_nothing_left(commands, state_dir)


def test_tools_present_are_used_from_where_they_were_found(commands, spawned, state_dir):
    # the check itself: with iptables present the same run injects (so the failures above are the missing tool)
    result, failed = run_partition(state_dir)
    assert not failed, result['msg']
    assert commands.mutating() and all(argv[0] == '/usr/sbin/iptables' for argv in commands.mutating())


def test_missing_libfaketime_names_debian_and_rhel_packages(tmp_path):
    with pytest.raises(ChaosError) as caught:
        _clock.find_libfaketime([str(tmp_path)])
    assert 'apt-get install faketime' in str(caught.value) and 'dnf install libfaketime' in str(caught.value)


def test_missing_stress_ng_names_debian_and_rhel_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(_steps, 'BIN_DIRS', (str(tmp_path),))
    with pytest.raises(ChaosError) as caught:
        _stress.find_stress_ng()
    assert 'apt-get install stress-ng' in str(caught.value) and 'dnf install stress-ng' in str(caught.value)


def test_missing_psycopg2_names_the_packages(monkeypatch):
    monkeypatch.setattr(_pgconn, 'HAS_PSYCOPG2', False)
    monkeypatch.setattr(_pgconn, 'PSYCOPG2_IMPORT_ERROR', ImportError('No module named psycopg2'))
    failures = []

    class Module(object):
        def fail_json(self, **kwargs):
            failures.append(kwargs)
            raise SystemExit(1)

    with pytest.raises(SystemExit):
        postgres.ensure_psycopg2(Module())
    assert 'psycopg2' in failures[0]['msg'] and 'apt-get install python3-psycopg2' in failures[0]['msg']
    assert 'dnf install python3-psycopg2' in failures[0]['msg'] and 'psycopg2-binary' in failures[0]['msg']
