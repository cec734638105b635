from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.pggit.chaos.plugins.filter.select_targets import FilterModule, blast_limit, select_targets

HOSTS = ['pg1', 'pg2', 'pg3', 'pg4', 'pg5']
MISSING = object()


def opted_in(hosts=None):
    hosts = HOSTS if hosts is None else hosts
    return dict((h, {'pggit_chaos_allowed': True}) for h in hosts)


@pytest.mark.parametrize('value', [MISSING, None, False, 'false', 'no', 'maybe', '', 'true please', 0, [], {}])
def test_hosts_without_opt_in_are_refused(value):
    hostvars = opted_in()
    if value is MISSING:
        del hostvars['pg2']['pggit_chaos_allowed']
    else:
        hostvars['pg2']['pggit_chaos_allowed'] = value
    result = select_targets(HOSTS, hostvars)
    assert result['refused'] == ['pg2']
    assert 'pg2' not in result['selected'] + result['spared']


@pytest.mark.parametrize('value', [True, 'true', 'True', 'yes', 'on', 1])
def test_ansible_true_values_opt_in(value):
    hostvars = opted_in()
    hostvars['pg2']['pggit_chaos_allowed'] = value
    assert select_targets(HOSTS, hostvars)['selected'] == HOSTS


def test_host_missing_from_hostvars_is_refused():
    assert select_targets(['pg1', 'ghost'], opted_in(['pg1'])) == {'selected': ['pg1'], 'refused': ['ghost'], 'spared': [], 'limit': 1}


@pytest.mark.parametrize('max_hosts, selected', [
    ('all', HOSTS),
    (None, HOSTS),
    ('', HOSTS),
    (2, ['pg1', 'pg2']),
    ('2', ['pg1', 'pg2']),
    (' 3 ', ['pg1', 'pg2', 'pg3']),
    (50, HOSTS),
    ('50%', ['pg1', 'pg2']),  # 2.5 floors to 2
    (' 50 % ', ['pg1', 'pg2']),
    ('10%', ['pg1']),  # 0.5 floors to 0, but at least one
    ('33.4%', ['pg1']),
    ('100%', HOSTS),
    ('99.9%', ['pg1', 'pg2', 'pg3', 'pg4']),
])
def test_blast_radius(max_hosts, selected):
    result = select_targets(HOSTS, opted_in(), max_hosts)
    assert result['selected'] == selected
    assert result['spared'] == HOSTS[len(selected):]
    assert result['refused'] == []
    assert result['limit'] == len(selected)


def test_blast_radius_counts_only_opted_in_hosts_in_order():
    hostvars = opted_in(['pg2', 'pg4', 'pg5'])
    result = select_targets(HOSTS, hostvars, '2')
    assert result == {'selected': ['pg2', 'pg4'], 'refused': ['pg1', 'pg3'], 'spared': ['pg5'], 'limit': 2}


@pytest.mark.parametrize('max_hosts', ['50%', 1, 'all'])
def test_nobody_opted_in_selects_nobody(max_hosts):
    assert select_targets(HOSTS, {}, max_hosts) == {'selected': [], 'refused': HOSTS, 'spared': [], 'limit': 0}


@pytest.mark.parametrize('max_hosts, shown', [
    (0, "'0'"),
    ('-1', "'-1'"),
    ('0%', "'0%'"),
    ('150%', "'150%'"),
    ('half', "'half'"),
    ('2.5', "'2.5'"),
    ('all hosts', "'all hosts'"),
    ('50%%', "'50%%'"),
])
def test_bad_blast_radius_names_the_variable_and_value(max_hosts, shown):
    with pytest.raises(AnsibleFilterError) as err:
        blast_limit(max_hosts, 5)
    assert 'chaos_max_hosts' in str(err.value)
    assert 'got %s' % shown in str(err.value)


def test_registered_under_its_name():
    assert FilterModule().filters() == {'select_targets': select_targets}
