#!/usr/bin/python
# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r'''
module: pggit_cluster_info
short_description: Find who leads a PostgreSQL cluster, from Patroni or from the servers themselves
version_added: 0.3.0
description:
  - Reads the state of a PostgreSQL cluster and returns its leader, every member with its
    role, state, timeline and lag, the synchronous standbys and the HA settings. It changes
    nothing, so it runs in check mode too and always reports C(changed=false).
  - With Patroni (O(ha=patroni)) it asks the REST API of the first URL of O(patroni_urls)
    that answers C(GET /cluster) and C(GET /config) (and C(GET /history) for the timeline
    history). The leader is whoever Patroni says holds the leader key, never assumed.
  - Without an HA manager (O(ha=none)) it connects to every member of O(members) with the
    login options and asks C(pg_is_in_recovery()), C(pg_stat_replication) and the timeline of
    C(pg_control_checkpoint()). A member that cannot be reached is reported with state
    V(unreachable), never skipped. Two members out of recovery mean no leader (C(leader) is
    null, C(primaries) names both).
  - With O(etcd_urls) it also lists the etcd members (the v3 HTTP gateway,
    C(POST /v3/cluster/member/list)) with the health of each, and with O(lost_region) it fails
    when the members left after the loss of that region cannot make a quorum.
  - Run it where the REST API, the database ports and etcd are reachable (the controller, or
    any member).
author: pggit.chaos maintainers (@pggit)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - pggit.chaos.postgres
attributes:
  check_mode:
    support: full
    details: It only reads.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  ha:
    description:
      - V(patroni) asks Patroni's REST API (O(patroni_urls) required); V(none) asks every
        member over SQL (O(members) required); V(auto) picks V(patroni) when O(patroni_urls)
        is given, else V(none).
    type: str
    default: auto
    choices: [auto, patroni, none]
  patroni_urls:
    description:
      - Base URLs of Patroni REST APIs, such as C(http://10.0.0.1:8008), tried in order.
    type: list
    elements: str
    default: []
  members:
    description:
      - The members of a cluster without an HA manager. Each is asked with the login options
        of this module, its own O(members[].host) and O(members[].port) in place of
        O(login_host) and O(login_port).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The member's name (an inventory host name).
        type: str
        required: true
      host:
        description: Its address.
        type: str
        required: true
      port:
        description: Its PostgreSQL port.
        type: int
        default: 5432
  etcd_urls:
    description:
      - Client URLs of etcd members (C(http://10.0.0.1:2379)); the member list is asked of the
        first that answers, the health of each member at its own client URL.
    type: list
    elements: str
    default: []
  etcd_regions:
    description:
      - The region of each etcd member, keyed by its client URL or its etcd name. Members
        not named here have region V(unknown), and O(lost_region) counts them as lost (a quorum
        is never assumed).
    type: dict
    default: {}
  lost_region:
    description:
      - Fail unless the healthy etcd members outside this region make a quorum (a majority of
        all members). Needs O(etcd_urls).
    type: str
  timeout:
    description:
      - Seconds to wait for each REST or etcd answer, from 1 to 60.
    type: int
    default: 3
'''

EXAMPLES = r'''
- name: Find the leader of a Patroni cluster
  pggit.chaos.pggit_cluster_info:
    patroni_urls: "{{ groups['pggit_cluster'] | map('extract', hostvars, 'pggit_patroni_url') | list }}"
  register: cluster
  run_once: true

- name: Find the primary of a plain streaming cluster
  pggit.chaos.pggit_cluster_info:
    ha: none
    members:
      - {name: lab-1, host: 198.18.0.11}
      - {name: lab-2, host: 198.18.0.12}
    db: pggit

- name: Refuse a region failover that would leave etcd without a quorum
  pggit.chaos.pggit_cluster_info:
    patroni_urls: [http://198.18.0.11:8008]
    etcd_urls: [http://198.18.0.11:2379, http://198.18.0.13:2379, http://198.18.0.19:2379]
    etcd_regions: {http://198.18.0.11:2379: region_a, http://198.18.0.13:2379: region_b, http://198.18.0.19:2379: region_c}
    lost_region: region_a
'''

RETURN = r'''
ha:
  description: How the state was read, V(patroni) or V(none).
  returned: always
  type: str
scope:
  description: Patroni's cluster name (its C(scope)); null without Patroni.
  returned: success
  type: str
leader:
  description: The name of the leader (Patroni's leader, or the one primary); null when there is none.
  returned: success
  type: str
  sample: lab-1
members:
  description:
    - Every member, with C(name), C(host), C(port), C(role) (V(leader), V(sync_standby),
      V(replica), V(quorum_standby), V(standby_leader) or V(unknown)), C(state) (Patroni's,
      or V(running), V(streaming), V(in archive recovery), V(unreachable)), C(timeline),
      C(lag) (bytes, null when unknown), C(api_url) and C(tags).
  returned: success
  type: list
  elements: dict
  sample: [{name: lab-1, host: 198.18.0.11, port: 5432, role: leader, state: running, timeline: 3, lag: null,
            api_url: 'http://198.18.0.11:8008/patroni', tags: {}}]
sync_standbys:
  description: Names of the synchronous standbys.
  returned: success
  type: list
  elements: str
timeline:
  description: The leader's timeline (the highest one seen when there is no leader).
  returned: success
  type: int
settings:
  description: Patroni's dynamic configuration (C(GET /config)), such as C(ttl), C(loop_wait) and C(synchronous_mode); empty without Patroni.
  returned: success
  type: dict
source:
  description: The REST URL that answered, or V(sql).
  returned: success
  type: str
history:
  description: Patroni's timeline history (C(GET /history)), when it answered.
  returned: with Patroni
  type: list
  elements: list
primaries:
  description: Without Patroni, the members that are not in recovery.
  returned: with O(ha=none)
  type: list
  elements: str
dcs:
  description:
    - The etcd members (C(id), C(name), C(client_urls), C(peer_urls), C(healthy), C(error),
      C(region)), C(healthy) (count), C(quorum) (majority of all members), and with
      O(lost_region) C(after_loss) (C(surviving) names, C(ok)).
  returned: when O(etcd_urls) is given
  type: dict
'''

from ansible_collections.pggit.chaos.plugins.module_utils import _ha
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges
from ansible_collections.pggit.chaos.plugins.module_utils.postgres import check_postgres_params, ensure_psycopg2, postgres_argument_spec

from ansible.module_utils.basic import AnsibleModule

RANGES = (('timeout', 1, 60, ' seconds'),)


def argument_spec():
    spec = postgres_argument_spec()
    spec.update(
        ha=dict(type='str', default='auto', choices=['auto', 'patroni', 'none']),
        patroni_urls=dict(type='list', elements='str', default=[]),
        members=dict(type='list', elements='dict', default=[], options=dict(
            name=dict(type='str', required=True),
            host=dict(type='str', required=True),
            port=dict(type='int', default=5432),
        )),
        etcd_urls=dict(type='list', elements='str', default=[]),
        etcd_regions=dict(type='dict', default={}),
        lost_region=dict(type='str'),
        timeout=dict(type='int', default=3),
    )
    return spec


def check_options(module):
    """Bad options fail before anything is asked, naming the option and the value."""
    params = module.params
    fail_on_ranges(module, RANGES)
    ha = params['ha']
    if ha == 'auto':
        ha = 'patroni' if params['patroni_urls'] else 'none'
    if ha == 'patroni' and not params['patroni_urls']:
        module.fail_json(msg='ha=patroni needs patroni_urls (the REST API of each member, such as http://10.0.0.1:8008), got none')
    if ha == 'none' and not params['members']:
        module.fail_json(msg='ha=%s needs members (a list of {name, host, port}) when no patroni_urls are given, got none' % params['ha'])
    for option in ('patroni_urls', 'etcd_urls'):
        for url in params[option]:
            problem = _ha.check_url(url, option)
            if problem:
                module.fail_json(msg=problem)
    if ha == 'none':
        problem = _ha.plain_members_problem(params['members'])
        if problem:
            module.fail_json(msg=problem)
        check_postgres_params(module)
    if params['lost_region'] is not None and not params['etcd_urls']:
        module.fail_json(msg='lost_region=%s needs etcd_urls (the DCS whose quorum it checks), got none' % params['lost_region'])
    if params['lost_region'] is not None and not params['lost_region'].strip():
        module.fail_json(msg="lost_region must name a region, got '%s'" % params['lost_region'])
    return ha


def dcs(params):
    members = _ha.with_regions(_ha.etcd_members(params['etcd_urls'], params['timeout']), params['etcd_regions'])
    found = {'members': members, 'healthy': sum(1 for m in members if m['healthy']), 'quorum': len(members) // 2 + 1}
    if params['lost_region'] is not None:
        found['after_loss'] = _ha.dcs_quorum(members, params['lost_region'])
    return found


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ha = check_options(module)
    params = module.params
    result = dict(changed=False, ha=ha)
    try:
        if ha == 'patroni':
            result.update(_ha.cluster_state(params['patroni_urls'], params['timeout']))
        else:
            ensure_psycopg2(module)
            result.update(_ha.plain_state(params['members'], params, params['timeout']))
        if params['etcd_urls']:
            result['dcs'] = dcs(params)
    except ChaosError as exc:
        module.fail_json(msg=str(exc), **result)
    after = (result.get('dcs') or {}).get('after_loss')
    if after is not None and not after['ok']:
        regions = ', '.join('%s: %s' % (k, ' '.join(v)) for k, v in sorted(after['by_region'].items()))
        unplaced = ('. Members with no region in etcd_regions count as lost: %s' % ', '.join(after['unplaced'])
                    if after.get('unplaced') else '')
        module.fail_json(msg='lost_region=%s: the etcd members left (%s) are %d of %d, fewer than the quorum of %d: the cluster could '
                             'not elect a new leader. Members by region: %s%s'
                             % (params['lost_region'], ', '.join(after['surviving']) or 'none', len(after['surviving']),
                                after['members'], after['quorum'], regions, unplaced), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
