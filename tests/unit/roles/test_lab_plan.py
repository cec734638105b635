"""The lab's name decides everything it creates (roles/pggit_lab/files/pggit_lab_plan.py), and one lab's names never
match another's; lab_down's reaper claims paths whole (pggit_lab_reap.py)."""
from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re

import pytest

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'roles', 'pggit_lab', 'files')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(FILES, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_mod = _load('pggit_lab_plan')
reap_mod = _load('pggit_lab_reap')
PlanError = plan_mod.PlanError


def test_the_demo_lab_keeps_its_names_and_subnet():
    lab = plan_mod.plan('lab', 3)
    assert (lab['dir'], lab['bridge'], lab['bridge_address'], lab['subnet']) == \
        ('/var/tmp/pggit-lab-lab', 'pgglab0', '198.18.0.1', '198.18.0.0/24')
    assert [(n['name'], n['netns'], n['veth'], n['address']) for n in lab['nodes']] == [
        ('lab-1', 'pgglab-1', 'pgglab1h', '198.18.0.11'),
        ('lab-2', 'pgglab-2', 'pgglab2h', '198.18.0.12'),
        ('lab-3', 'pgglab-3', 'pgglab3h', '198.18.0.13')]
    assert [n['primary'] for n in lab['nodes']] == [True, False, False]
    assert [n['region'] for n in lab['nodes']] == ['region_a', 'region_a', 'region_b']
    assert lab['nodes'][0]['state_dir'] == '/var/tmp/pggit-lab-lab/hosts/lab-1/state'


def test_another_name_gets_its_own_everything():
    lab, test = plan_mod.plan('lab', 8), plan_mod.plan('test', 8)
    assert test['dir'] == '/var/tmp/pggit-lab-test' and test['bridge'] == 'pggtest0'
    assert test['nodes'][0]['netns'] == 'pggtest-1' and test['nodes'][0]['veth'] == 'pggtest1h'
    net = ipaddress.ip_network(test['subnet'])
    assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network('198.18.0.0/15'))
    assert not net.overlaps(ipaddress.ip_network(lab['subnet']))
    assert plan_mod.plan('test', 1)['subnet'] == test['subnet'], 'the subnet is derived deterministically'
    assert all(ipaddress.ip_address(n['address']) in net for n in test['nodes'])
    assert {n['address'] for n in test['nodes']}.isdisjoint(n['address'] for n in lab['nodes'])


@pytest.mark.parametrize('name', ['abcdefghij', 'z', '0123456789'])
def test_interface_names_fit_in_15_characters(name):
    lab = plan_mod.plan(name, 8)
    for ifname in [lab['bridge']] + [n['veth'] for n in lab['nodes']]:
        assert len(ifname) <= 15, ifname


@pytest.mark.parametrize('one, other', [('lab', 'lab1'), ('lab', 'la'), ('a', 'a0'), ('a', 'ah'), ('t1', 't12'),
                                        ('test', 'lab')])
def test_one_labs_patterns_never_match_anothers_names(one, other):
    a, b = plan_mod.plan(one, 8), plan_mod.plan(other, 8)
    for mine, theirs in ((a, b), (b, a)):
        own_links = [mine['bridge']] + [n['veth'] for n in mine['nodes']]
        other_links = [theirs['bridge']] + [n['veth'] for n in theirs['nodes']]
        assert all(re.match(mine['link_regex'], link) for link in own_links)
        assert not [link for link in other_links if re.match(mine['link_regex'], link)]
        assert all(re.match(mine['netns_regex'], n['netns']) for n in mine['nodes'])
        assert not [n['netns'] for n in theirs['nodes'] if re.match(mine['netns_regex'], n['netns'])]
        assert all(re.match(mine['cgroup_regex'], n['cgroup_name']) for n in mine['nodes'])
        assert not [n['cgroup_name'] for n in theirs['nodes'] if re.match(mine['cgroup_regex'], n['cgroup_name'])]
        assert not (mine['dir'] + '/').startswith(theirs['dir'] + '/')


@pytest.mark.parametrize('name', ['Lab', 'a-b', 'a_b', 'abcdefghijk', '', 'a b', '../x', 'lab\n', 'é'])
def test_a_bad_name_is_refused_naming_the_option_and_value(name):
    with pytest.raises(PlanError) as err:
        plan_mod.plan(name, 1)
    assert 'pggit_lab_name' in str(err.value) and repr(name) in str(err.value)
    assert '15' in str(err.value)


@pytest.mark.parametrize('index, subnet', [(0, '198.18.0.0/24'), ('7', '198.18.7.0/24'), (255, '198.18.255.0/24'),
                                           (256, '198.19.0.0/24'), (511, '198.19.255.0/24')])
def test_an_explicit_subnet_index(index, subnet):
    assert plan_mod.plan('h2', 1, index)['subnet'] == subnet
    assert plan_mod.plan('h2', 1, index)['nodes'][0]['address'] == subnet.replace('0/24', '11')


@pytest.mark.parametrize('index', [512, -1, 'x', '1.5'])
def test_a_bad_subnet_index_is_refused(index):
    with pytest.raises(PlanError, match=r'pggit_lab_subnet_index must be an integer from 0 to 511, got %r' % (index,)):
        plan_mod.plan('h2', 1, index)


@pytest.mark.parametrize('hosts', [0, 9, 'x', ''])
def test_a_bad_host_count_is_refused(hosts):
    with pytest.raises(PlanError, match=r'pggit_lab_hosts must be an integer from 1 to 8, got %r' % (hosts,)):
        plan_mod.plan('h2', hosts)


@pytest.mark.parametrize('lab_dir', ['/tmp', 'relative/dir', '/var/tmp/../x', '/'])
def test_a_shallow_or_unnormalized_lab_dir_is_refused(lab_dir):
    with pytest.raises(PlanError, match='pggit_lab_dir'):
        plan_mod.plan('h2', 1, lab_dir=lab_dir)


def _addr(ifname, *cidrs):
    return {'ifname': ifname, 'addr_info': [{'family': 'inet', 'local': c.split('/')[0], 'prefixlen': int(c.split('/')[1])}
                                            for c in cidrs]}


def test_a_subnet_held_by_another_lab_is_refused_naming_both():
    mine = plan_mod.plan('h2', 1, 300)
    with pytest.raises(PlanError) as err:
        plan_mod.check_addresses(mine, [_addr('lo', '127.0.0.1/8'), _addr('pggother0', '198.19.44.1/24')])
    msg = str(err.value)
    assert 'pggit_lab_name=h2' in msg and '198.19.44.0/24' in msg and 'pggit_lab_subnet_index=300' in msg
    assert 'pggother0' in msg and 'lab other' in msg


def test_a_subnet_held_by_anything_else_is_refused():
    with pytest.raises(PlanError, match='already used by eth9'):
        plan_mod.check_addresses(plan_mod.plan('lab', 1), [_addr('eth9', '198.18.0.0/16')])


def test_our_own_bridge_and_unrelated_addresses_pass():
    mine = plan_mod.plan('h2', 1, 300)
    plan_mod.check_addresses(mine, [_addr('lo', '127.0.0.1/8'), _addr('eth0', '10.0.0.5/24'),
                                    _addr('pggh20', '198.19.44.1/24'), _addr('pgglab0', '198.18.0.1/24'),
                                    {'ifname': 'pggh21h', 'addr_info': []}])


def test_our_bridge_with_another_subnet_is_refused():
    with pytest.raises(PlanError, match=r'lab h2 is already up with subnet 198.19.44.0/24 on its bridge pggh20'):
        plan_mod.check_addresses(plan_mod.plan('h2', 1, 301), [_addr('pggh20', '198.19.44.1/24')])


def test_an_unsafe_lab_dir_is_refused(tmp_path):
    plan_mod.check_dir(str(tmp_path / 'missing'))
    ok = tmp_path / 'ok'
    ok.mkdir(mode=0o755)
    plan_mod.check_dir(str(ok))
    open_dir = tmp_path / 'open'
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(PlanError, match=r'pggit_lab_dir=%s is owned by uid \d+ with mode 0777' % re.escape(str(open_dir))):
        plan_mod.check_dir(str(open_dir))
    link = tmp_path / 'link'
    link.symlink_to(ok)
    with pytest.raises(PlanError, match=r'pggit_lab_dir=%s exists and is not a directory' % re.escape(str(link))):
        plan_mod.check_dir(str(link))


def test_main_prints_the_plan_or_a_failure(capsys):
    assert plan_mod.main(['--name', 'lab', '--hosts', '1']) == 0
    assert json.loads(capsys.readouterr().out)['nodes'][0]['netns'] == 'pgglab-1'
    assert plan_mod.main(['--name', 'Bad!']) == 1
    out = json.loads(capsys.readouterr().out)
    assert out['failed'] is True and "pggit_lab_name must be 1 to 10 characters" in out['msg']


@pytest.mark.parametrize('cmdline, claimed', [
    ('python3 /x/pggit-lab-a/hosts/lab-1/state/lib/pggit-chaos-reaper.py --state-dir /x/pggit-lab-a/hosts/lab-1/state',
     True),
    ('sshd: -E /x/pggit-lab-a/hosts/lab-1/sshd.log', True),
    ('ssh: /x/pggit-lab-a/ssh/cm-abc [mux]', True),
    ('ssh -o ControlPath=/x/pggit-lab-a/ssh/cm-%C host', True),
    ('tail -f /x/pggit-lab-a', True),
    ('python3 /x/pggit-lab-ab/hosts/lab-1/state/lib/pggit-chaos-reaper.py', False),
    ('python3 /x/pggit-lab-a.old/run', False),
    ('python3 /y/x/pggit-lab-a/run', False),
    ("python3 -c 'import time; time.sleep(60)' pggit-chaos-reaper", False),
    ('python3 /var/lib/pggit/state/lib/pggit-chaos-reaper.py --fault-id trigger--x', False),
])
def test_the_reaper_claims_the_lab_dir_whole_and_never_a_name_alone(cmdline, claimed):
    assert reap_mod._names_dir(cmdline, {'/x/pggit-lab-a'}) is claimed


def test_a_lab_dir_marked_for_another_lab_is_refused_up_and_down(tmp_path, capsys):
    lab_dir = tmp_path / 'labdir'
    lab_dir.mkdir()
    plan_mod.check_owner(plan_mod.plan('h2', 1, lab_dir=str(lab_dir)))  # no marker yet: a fresh or older lab
    (lab_dir / plan_mod.MARKER).write_text('lab\n')
    plan_mod.check_owner(plan_mod.plan('lab', 1, lab_dir=str(lab_dir)))
    with pytest.raises(PlanError, match=r"pggit_lab_dir=%s belongs to the lab 'lab', not to pggit_lab_name=h2"
                       % re.escape(str(lab_dir))):
        plan_mod.check_owner(plan_mod.plan('h2', 1, lab_dir=str(lab_dir)))
    assert plan_mod.main(['--name', 'h2', '--dir', str(lab_dir)]) == 1  # the lab_down call
    assert 'belongs to the lab' in json.loads(capsys.readouterr().out)['msg']
