"""The HA lab (make lab LAB_HA=patroni): the plan's witness and etcd placement, the Patroni settings in one place,
the inventory it writes (both modes), and the daemon helper pggit_lab_ha.py (readiness, stop by pid file)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import jinja2
import pytest
import yaml

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'roles', 'pggit_lab')
FILES = os.path.join(ROLE, 'files')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(FILES, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_mod = _load('pggit_lab_plan')
ha_mod = _load('pggit_lab_ha')
reap_mod = _load('pggit_lab_reap')

with open(os.path.join(ROLE, 'defaults', 'main.yml')) as _handle:
    DEFAULTS = yaml.safe_load(_handle)
SETTINGS = DEFAULTS['pggit_lab_patroni_settings']


# ---- the plan -------------------------------------------------------------------------------------------------

def test_the_witness_is_a_host_of_its_own_in_region_c():
    lab = plan_mod.plan('hla', 3, ha='patroni')
    witness = lab['witness']
    base = lab['subnet'].rsplit('.', 1)[0]
    assert (witness['name'], witness['netns'], witness['veth'], witness['address'], witness['region']) == \
        ('hla-w', 'pgghla-w', 'pgghlawh', base + '.20', 'region_c')
    assert witness['witness'] and witness['etcd'] and not witness['primary']
    assert witness['dir'] == '/var/tmp/pggit-lab-hla/hosts/hla-w' and 'pgdata' not in witness
    assert witness['address'] not in [n['address'] for n in lab['nodes']]
    assert lab['hosts'] == lab['nodes'] + [witness]
    assert re.match(lab['netns_regex'], witness['netns']) and re.match(lab['link_regex'], witness['veth'])


@pytest.mark.parametrize('hosts', range(3, 9))
def test_etcd_runs_on_lab_1_the_last_region_b_host_and_the_witness(hosts):
    lab = plan_mod.plan('hla', hosts, ha='patroni')
    last_b = [n['name'] for n in lab['nodes'] if n['region'] == 'region_b'][-1]
    members = lab['etcd_members']
    assert [m['name'] for m in members] == ['lab-1', last_b, 'hla-w']
    assert [n['name'] for n in lab['hosts'] if n['etcd']] == sorted(['lab-1', last_b]) + ['hla-w']
    # losing either data region (or the witness's) leaves 2 of 3 members: a quorum
    for region in ('region_a', 'region_b', 'region_c'):
        assert len([m for m in members if m['region'] != region]) == 2, region
    assert lab['etcd_initial_cluster'] == ','.join('%s=http://%s:2380' % (m['name'], m['address']) for m in members)
    assert all(m['etcd_url'] == 'http://%s:2379' % m['address'] for m in members)


def test_every_data_host_gets_its_patroni_and_only_members_get_etcd():
    lab = plan_mod.plan('hla', 3, ha='patroni')
    for node in lab['nodes']:
        assert node['patroni_url'] == 'http://%s:8008' % node['address']
        assert node['patroni_config'] == node['dir'] + '/patroni.yml'
        assert node['patroni_pid'].startswith(lab['dir'] + '/')
        assert ('etcd_url' in node) is node['etcd']
    assert lab['patroni_scope'] == 'pggit-lab-hla' and lab['etcd_token'] == 'pggit-lab-hla'


def test_the_plain_lab_has_no_witness_and_no_patroni():
    lab = plan_mod.plan('hla', 3)
    assert lab['ha'] == 'none' and 'witness' not in lab and 'etcd_members' not in lab
    assert lab['hosts'] == lab['nodes'] and not any(n['etcd'] or 'patroni_url' in n for n in lab['nodes'])
    assert plan_mod.plan('hla', 3, ha='')['ha'] == 'none'


def test_lab_down_patterns_cover_the_witness_without_being_told_the_mode():
    down = plan_mod.plan('hla')  # what lab_down plans: no hosts, no mode
    up = plan_mod.plan('hla', 3, ha='patroni')
    assert re.match(down['netns_regex'], up['witness']['netns'])
    assert re.match(down['link_regex'], up['witness']['veth'])


@pytest.mark.parametrize('one, other', [('hla', 'hlaw'), ('a', 'aw'), ('a', 'w'), ('hla', 'hla2'), ('ab', 'a')])
def test_one_labs_patterns_never_match_another_labs_witness(one, other):
    a, b = plan_mod.plan(one, 3, ha='patroni'), plan_mod.plan(other, 3, ha='patroni')
    for mine, theirs in ((a, b), (b, a)):
        links = [theirs['bridge']] + [n['veth'] for n in theirs['hosts']]
        assert not [link for link in links if re.match(mine['link_regex'], link)]
        assert not [n['netns'] for n in theirs['hosts'] if re.match(mine['netns_regex'], n['netns'])]


def test_the_witness_veth_fits_in_15_characters():
    assert len(plan_mod.plan('abcdefghij', 8, ha='patroni')['witness']['veth']) == 15


@pytest.mark.parametrize('hosts', [1, 2])
def test_ha_needs_three_hosts(hosts):
    with pytest.raises(plan_mod.PlanError, match=r'pggit_lab_hosts must be at least 3 with pggit_lab_ha=patroni.*got %r'
                       % hosts):
        plan_mod.plan('hla', hosts, ha='patroni')


@pytest.mark.parametrize('ha', ['Patroni', 'etcd', 'yes'])
def test_a_bad_ha_mode_is_refused_naming_the_option_and_value(ha):
    with pytest.raises(plan_mod.PlanError, match=r"pggit_lab_ha must be one of none, patroni .*got %r" % ha):
        plan_mod.plan('hla', 3, ha=ha)


def test_main_takes_the_ha_mode(capsys):
    assert plan_mod.main(['--name', 'hla', '--hosts', '3', '--ha', 'patroni']) == 0
    assert json.loads(capsys.readouterr().out)['witness']['name'] == 'hla-w'


# ---- the settings, in one place --------------------------------------------------------------------------------

def test_the_patroni_settings_are_the_contracts_and_patroni_accepts_their_timings():
    assert SETTINGS == {'ttl': 20, 'loop_wait': 2, 'retry_timeout': 3, 'synchronous_mode': True,
                        'synchronous_node_count': 2, 'maximum_lag_on_failover': 1048576, 'use_pg_rewind': True,
                        'use_slots': True, 'data_checksums': True}
    assert SETTINGS['loop_wait'] + 2 * SETTINGS['retry_timeout'] <= SETTINGS['ttl']
    assert SETTINGS['ttl'] >= 20, 'Patroni 4 raises a ttl below 20 to 20: the reports would carry a ttl it never used'


def _config(**changes):
    config = {'ttl': 20, 'loop_wait': 2, 'retry_timeout': 3, 'maximum_lag_on_failover': 1048576,
              'synchronous_mode': True, 'synchronous_node_count': 2,
              'postgresql': {'use_pg_rewind': True, 'use_slots': True, 'parameters': {}}}
    config.update(changes)
    return config


def test_settings_patroni_does_not_use_are_named():
    assert ha_mod.settings_differ(SETTINGS, _config()) == []
    assert ha_mod.settings_differ(dict(SETTINGS, ttl=10), _config()) == \
        ['ttl: pggit_lab_patroni_settings says 10, Patroni runs with 20']
    assert ha_mod.settings_differ(SETTINGS, _config(postgresql={})) == [
        'use_pg_rewind: pggit_lab_patroni_settings says true, Patroni runs with its default',
        'use_slots: pggit_lab_patroni_settings says true, Patroni runs with its default']


def test_wait_fails_when_patroni_runs_with_other_settings():
    ready = {'members': [_member('lab-1', 'leader', 'running')]}
    answers = {'/cluster': ready, '/config': _config(ttl=20)}

    def fetch(url):
        return answers['/' + url.rsplit('/', 1)[1]]

    with pytest.raises(ha_mod.HaError, match=r'ttl: pggit_lab_patroni_settings says 10, Patroni runs with 20'):
        ha_mod.wait_cluster(['http://x:8008'], 0, settings=dict(SETTINGS, ttl=10), fetch=fetch, sleep=lambda s: None)
    assert ha_mod.wait_cluster(['http://x:8008'], 0, settings=SETTINGS, fetch=fetch)['config']['ttl'] == 20


def _env():
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters['bool'] = lambda value: value if isinstance(value, bool) else str(value).lower() in ('1', 'true', 'yes', 'on')
    env.filters['to_json'] = json.dumps
    env.filters['to_nice_yaml'] = lambda value, indent=2: yaml.safe_dump(value, default_flow_style=False, indent=indent)
    env.loader = jinja2.FileSystemLoader(os.path.join(ROLE, 'templates'))
    return env


def _render(name, lab, node=None, **extra):
    values = dict(ansible_managed='Ansible managed', _pggit_lab_plan=lab, _pggit_lab_nodes=lab['nodes'],
                  _pggit_lab_node=node, _pggit_lab_ps=SETTINGS, pggit_lab_patroni_settings=SETTINGS,
                  pggit_lab_pg_bin='/usr/lib/postgresql/15/bin', pggit_lab_python='/venv/bin/python',
                  pggit_lab_patroni='pypi', _pggit_lab_patroni_dir='/venv/bin', _pggit_lab_patroni_version='4.1.5')
    values.update(extra)
    return _env().get_template(name).render(**values)


def test_patroni_gets_the_settings_the_etcd_members_and_checksums():
    lab = plan_mod.plan('hla', 3, ha='patroni')
    config = yaml.safe_load(_render('patroni.yml.j2', lab, lab['nodes'][1]))
    assert config['name'] == 'lab-2' and config['scope'] == 'pggit-lab-hla'
    assert config['restapi']['listen'] == lab['nodes'][1]['address'] + ':8008'
    assert config['etcd3']['hosts'] == [m['address'] + ':2379' for m in lab['etcd_members']]
    dcs = config['bootstrap']['dcs']
    for key in ('ttl', 'loop_wait', 'retry_timeout', 'synchronous_mode', 'synchronous_node_count',
                'maximum_lag_on_failover'):
        assert dcs[key] == SETTINGS[key], key
    assert dcs['postgresql']['use_pg_rewind'] is True and dcs['postgresql']['use_slots'] is True
    assert dcs['postgresql']['parameters']['wal_log_hints'] == 'on'
    assert 'data-checksums' in config['bootstrap']['initdb']
    assert config['postgresql']['data_dir'] == lab['nodes'][1]['pgdata']
    assert config['postgresql']['custom_conf'] == lab['nodes'][1]['dir'] + '/postgresql.lab.conf'


@pytest.mark.parametrize('ha', ['none', 'patroni'])
def test_postgresql_conf_has_what_pg_rewind_needs_in_both_modes(ha):
    lab = plan_mod.plan('hla', 3, ha=ha)
    text = _render('postgresql.conf.j2', lab, lab['nodes'][0])
    assert re.search(r'^full_page_writes = on$', text, re.M) and re.search(r'^wal_log_hints = on$', text, re.M)
    assert ('logging_collector = on' in text) is (ha == 'patroni')


def _inventory(ha):
    lab = plan_mod.plan('hla', 3, ha=ha)
    return lab, yaml.safe_load(_render('hosts.yml.j2', lab))


def test_the_ha_inventory_follows_the_contract():
    lab, inv = _inventory('patroni')
    groups = inv['all']['children']
    assert inv['all']['vars']['pggit_lab']['ha'] == 'patroni'
    assert inv['all']['vars']['pggit_lab']['patroni_settings'] == SETTINGS
    assert 'pggit_primary' not in groups and 'pggit_replicas' not in groups
    targets = groups['chaos_targets']['hosts']
    assert sorted(targets) == ['lab-1', 'lab-2', 'lab-3'] and sorted(groups['pggit_cluster']['hosts']) == sorted(targets)
    for name, host in targets.items():
        node = next(n for n in lab['nodes'] if n['name'] == name)
        assert host['pggit_ha'] == 'patroni' and host['pggit_patroni_url'] == node['patroni_url']
        assert host['pggit_patroni_config'] == node['patroni_config'] and host['pggit_patroni_bin'] == '/venv/bin'
        assert ('pggit_etcd_url' in host) is node['etcd']
    assert list(groups['pggit_dcs']['hosts']) == ['lab-1', 'lab-3', 'hla-w']
    witness = groups['pggit_dcs']['hosts']['hla-w']
    assert witness['ansible_host'] == lab['witness']['address'] and witness['pggit_chaos_allowed'] is False
    assert witness['pggit_region'] == 'region_c' and witness['pggit_etcd_url'] == lab['witness']['etcd_url']
    assert list(groups['region_c']['hosts']) == ['hla-w']
    assert sorted(groups['region_a']['hosts']) == ['lab-1', 'lab-2'] and list(groups['region_b']['hosts']) == ['lab-3']


def test_the_plain_inventory_keeps_its_static_groups_and_gains_pggit_cluster():
    _lab, inv = _inventory('none')
    groups = inv['all']['children']
    assert inv['all']['vars']['pggit_lab']['ha'] == 'none'
    assert 'patroni_settings' not in inv['all']['vars']['pggit_lab']
    assert list(groups['pggit_primary']['hosts']) == ['lab-1'] and sorted(groups['pggit_replicas']['hosts']) == \
        ['lab-2', 'lab-3']
    assert sorted(groups['pggit_cluster']['hosts']) == ['lab-1', 'lab-2', 'lab-3']
    assert all(h['pggit_ha'] == 'none' and 'pggit_patroni_url' not in h for h in groups['chaos_targets']['hosts'].values())
    assert 'pggit_dcs' not in groups and 'region_c' not in groups


# ---- pggit_lab_ha.py ------------------------------------------------------------------------------------------

def _member(name, role, state):
    return {'name': name, 'role': role, 'state': state, 'host': '198.18.0.%d' % (10 + int(name[-1]))}


@pytest.mark.parametrize('members, sync, ready, why', [
    ([_member('lab-1', 'leader', 'running'), _member('lab-2', 'sync_standby', 'streaming'),
      _member('lab-3', 'sync_standby', 'streaming')], 2, True, ''),
    ([_member('lab-1', 'leader', 'running'), _member('lab-2', 'sync_standby', 'streaming'),
      _member('lab-3', 'replica', 'streaming')], 2, False, '1 of 2 synchronous standbys (lab-2)'),
    ([_member('lab-1', 'leader', 'running'), _member('lab-2', 'replica', 'starting'),
      _member('lab-3', 'replica', 'streaming')], 0, False, 'not streaming: lab-2 (starting)'),
    ([_member('lab-1', 'leader', 'running'), _member('lab-2', 'replica', 'streaming')], 0, False,
     '2 of 3 members registered'),
    ([_member('lab-1', 'replica', 'running'), _member('lab-2', 'replica', 'streaming'),
      _member('lab-3', 'replica', 'streaming')], 0, False, 'leaders: none'),
    ([_member('lab-1', 'leader', 'running'), _member('lab-2', 'leader', 'running'),
      _member('lab-3', 'replica', 'streaming')], 0, False, "leaders: ['lab-1', 'lab-2']"),
    ([_member('lab-1', 'leader', 'starting'), _member('lab-2', 'replica', 'streaming'),
      _member('lab-3', 'replica', 'streaming')], 0, False, 'the leader lab-1 is starting'),
])
def test_the_cluster_is_ready_with_one_running_leader_and_every_replica_streaming(members, sync, ready, why):
    assert ha_mod.cluster_ready({'members': members}, 3, sync)[0::2] == (ready, why)


def test_members_zero_waits_for_the_leader_alone():
    assert ha_mod.cluster_ready({'members': [_member('lab-1', 'leader', 'running')]}, 0)[0] is True


def test_wait_names_what_is_missing_when_it_times_out():
    answers = [{'members': [_member('lab-1', 'leader', 'running')]}]
    with pytest.raises(ha_mod.HaError, match=r'not ready after 0s .*1 of 3 members registered'):
        ha_mod.wait_cluster(['http://x:8008'], 3, timeout=0, fetch=lambda url: answers[0], sleep=lambda s: None)
    ready = {'members': [_member('lab-1', 'leader', 'running'), _member('lab-2', 'sync_standby', 'streaming'),
                         _member('lab-3', 'sync_standby', 'streaming')]}
    result = ha_mod.wait_cluster(['http://x:8008'], 3, 2, timeout=5, fetch=lambda url: ready, sleep=lambda s: None)
    assert result['leader'] == 'lab-1' and result['leader_host'] == '198.18.0.11'


def test_etcd_health_true_only():
    assert ha_mod.etcd_ready({'a': {'health': 'true'}, 'b': {'health': 'false'}, 'c': 'connection refused'}) == ['b', 'c']


def test_the_launch_argv_keeps_the_pid_and_the_tag_is_checked():
    argv = ha_mod.launch_argv(['/bin/patroni', '/lab/p.yml'], 'pgghla-1', 'postgres', ['HOME=/h'])
    assert argv == ['ip', 'netns', 'exec', 'pgghla-1', 'setpriv', '--reuid', 'postgres', '--regid', 'postgres',
                    '--init-groups', 'env', '-i', 'HOME=/h', '/bin/patroni', '/lab/p.yml']
    with pytest.raises(ha_mod.HaError, match="--tag '/other' is not in the command line"):
        ha_mod.start('/tmp/x.pid', '/tmp/x.log', 'ns', ['/bin/patroni', '/lab/p.yml'], '/other')
    with pytest.raises(ha_mod.HaError, match="--env must be KEY=VALUE, got 'oops'"):
        ha_mod.launch_argv(['x'], 'ns', env=['oops'])


def test_stop_kills_the_labs_patroni_and_etcd_by_pid_file_and_spares_a_reused_pid(tmp_path):
    lab = tmp_path / 'pggit-lab-t'
    host = lab / 'hosts' / 'lab-1'
    host.mkdir(parents=True)
    config = host / 'patroni.yml'
    ours = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', str(config)],
                            start_new_session=True)
    stranger = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', str(tmp_path / 'elsewhere')],
                                start_new_session=True)
    try:
        (host / 'patroni.pid').write_text('%d\n' % ours.pid)
        (host / 'etcd.pid').write_text('%d\n' % stranger.pid)  # a pid reused by a process that is not the lab's
        result = ha_mod.stop(str(lab), timeout=5)
        assert ours.wait(timeout=5) == -signal.SIGKILL
        assert list(result['killed']) == [ours.pid]
        time.sleep(0.1)
        assert stranger.poll() is None
    finally:
        for proc in (ours, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)


@pytest.mark.parametrize('comm, cmdline, manager', [
    ('etcd', ['/usr/bin/etcd', '--name', 'lab-1'], True),
    ('patroni', ['/usr/bin/python3', '-S', '/lab/patroni-bin/patroni', '/lab/p.yml'], True),
    ('python3', ['/usr/bin/python3', '-S', '/lab/patroni-bin/patroni', '/lab/p.yml'], True),
    ('python3', ['/venv/bin/python', '/venv/bin/patroni', '/lab/p.yml'], True),
    ('postgres', ['/usr/lib/postgresql/15/bin/postgres', '-D', '/lab/data'], False),
    ('python3', ['python3', '-c', 'x', '/lab/patroni'], False),
])
def test_the_reaper_tells_the_managers(comm, cmdline, manager):
    assert reap_mod.is_manager(comm, cmdline) is manager


def test_patroni_3_0_says_running_for_a_streaming_replica_and_only_then_it_counts():
    old = {'members': [_member('lab-1', 'leader', 'running'), _member('lab-2', 'sync_standby', 'running'),
                       _member('lab-3', 'sync_standby', 'running')]}
    assert ha_mod.cluster_ready(old, 3, 2)[0] is False
    assert ha_mod.cluster_ready(old, 3, 2, ('streaming', 'running'))[0] is True
