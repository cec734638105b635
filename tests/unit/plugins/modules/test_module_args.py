"""Every module refuses bad input before touching anything, and documents exactly the options it takes."""
from __future__ import annotations

import importlib
import os

import pytest
import yaml

from modrun import run_module

from ansible.module_utils import basic

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn

PREFIX = 'ansible_collections.pggit.chaos.plugins'
MODULES_DIR = os.path.join(os.path.dirname(importlib.import_module(PREFIX).__path__[0]), 'plugins', 'modules')
MODULES = sorted(f[:-3] for f in os.listdir(MODULES_DIR) if f.endswith('.py') and not f.startswith('_'))


def load(name):
    return importlib.import_module('%s.modules.%s' % (PREFIX, name))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty cwd (where a relative state_dir would land) and no database."""
    def refuse(*args, **kwargs):
        raise AssertionError('the module connected to PostgreSQL')
    monkeypatch.setattr(_pgconn.psycopg2, 'connect', refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (module, args, option named in the message, value shown in the message)
BAD = [
    ('pggit_chaos_trigger', dict(name='off', ttl=1), 'ttl', '1'),
    ('pggit_chaos_trigger', dict(name='off', ttl=86401), 'ttl', '86401'),
    ('pggit_chaos_trigger', dict(name='  '), 'name', "'  '"),
    ('pggit_chaos_trigger', dict(name='off', state_dir='rel'), 'state_dir', "'rel'"),
    ('pggit_chaos_trigger', dict(name='off', state_dir='rel', state='absent'), 'state_dir', "'rel'"),
    ('pggit_chaos_trigger', dict(name='off', drop_schema='public'), 'drop_schema', "'public'"),
    ('pggit_chaos_trigger', dict(name='off', drop_schema='pg_catalog'), 'drop_schema', "'pg_catalog'"),
    ('pggit_chaos_trigger', dict(name='off', login_port=70000), 'login_port', '70000'),
    ('pggit_chaos_trigger', dict(name='off', state='paused'), 'state', 'paused'),
    ('pggit_chaos_trigger', dict(name='off', ssl_mode='sometimes'), 'ssl_mode', 'sometimes'),
    ('pggit_chaos_trigger', dict(), 'name', 'missing required arguments'),
    ('pggit_chaos_trigger', dict(name='a/b'), 'name', "'a/b'"),
    ('pggit_chaos_trigger', dict(name='off', connect_params={'dbname': 'x'}), 'connect_params', "'dbname'"),
    ('pggit_chaos_select', dict(max_hosts='x'), 'pggit_chaos_select', 'action plugin'),
    ('pggit_chaos_warm', dict(roles=['pggit.chaos.pggit_chaos_trigger']), 'pggit_chaos_warm', 'action plugin'),
    ('pggit_workload', dict(run_id='r1', count_from='later'), 'count_from', 'later'),
    ('pggit_verify', dict(connect_params={'host': 'elsewhere'}), 'connect_params', "'host'"),
    ('pggit_verify', dict(connect_params={'keepalive': 1}), 'connect_params', '"keepalive"'),
    ('pggit_verify', dict(canary_schema='pg_catalog'), 'canary_schema', "'pg_catalog'"),
    ('pggit_verify', dict(watch_interval=0.01), 'watch_interval', '0.01'),
    ('pggit_verify', dict(canary_timeout_ms=50), 'canary_timeout_ms', '50'),
    ('pggit_verify', dict(monitor_interval=0), 'monitor_interval', '0.0'),
    ('pggit_verify', dict(monitor_timeout_ms=50), 'monitor_timeout_ms', '50'),
    ('pggit_verify', dict(max_connections_pct=150), 'max_connections_pct', '150'),
    ('pggit_verify', dict(max_replication_lag_bytes=-1), 'max_replication_lag_bytes', '-1'),
    ('pggit_verify', dict(abort_after=-1), 'abort_after', '-1'),
    ('pggit_verify', dict(wait_for_digest='abc'), 'wait_for_digest', 'history_digest=false'),
    ('pggit_verify', dict(wait_for_digest='abc', history_digest=True, watch_duration=5), 'wait_for_digest', 'watch_duration=5'),
    ('pggit_verify', dict(wait_for_digest='abc', history_digest=True, wait_timeout=-1), 'wait_timeout', '-1'),
    ('pggit_verify', dict(health_check='maybe'), 'health_check', 'maybe'),
    ('pggit_verify', dict(connect_timeout=0), 'connect_timeout', '0'),
    ('pggit_workload', dict(run_id='X'), 'run_id', "'X'"),
    ('pggit_workload', dict(run_id='r' * 25), 'run_id', 'r' * 25),
    ('pggit_workload', dict(run_id='r1', duration=0), 'duration', '0'),
    ('pggit_workload', dict(run_id='r1', max_ops=0), 'max_ops', '0'),
    ('pggit_workload', dict(run_id='r1', interval=61), 'interval', '61'),
    ('pggit_workload', dict(run_id='r1', statement_timeout_ms=99), 'statement_timeout_ms', '99'),
    ('pggit_workload', dict(run_id='r1', state='gone'), 'state', 'gone'),
    ('pggit_workload', dict(run_id='r1', login_port=0), 'login_port', '0'),
    ('pggit_chaos_revert', dict(state_dir='rel'), 'state_dir', "'rel'"),
    ('pggit_chaos_revert', dict(fail_on_error='perhaps'), 'fail_on_error', 'perhaps'),
    ('pggit_chaos_connections', dict(name='k', count=0), 'count', '0'),
    ('pggit_chaos_connections', dict(name='k', percent=101), 'percent', '101'),
    ('pggit_chaos_connections', dict(name='k', count=1, application_name=''), 'application_name', "''"),
    ('pggit_chaos_revert', dict(kinds=['nope']), 'kinds', 'nope'),
    ('pggit_workload', dict(run_id='r1', schema='PUBLIC'), 'schema', 'PUBLIC'),
    ('pggit_workload', dict(run_id='r1', duration=30, ttl=20), 'ttl', '20'),
    ('pggit_workload', dict(run_id='r1', hosts=['198.18.0.11,198.18.0.12']), 'hosts', '198.18.0.11,198.18.0.12'),
    ('pggit_workload', dict(run_id='r1', target_session_attrs='read-only'), 'target_session_attrs', 'read-only'),
    ('pggit_workload', dict(run_id='r1', workers=0), 'workers', '0'),
    ('pggit_workload', dict(run_id='r1', workers=65), 'workers', '65'),
    ('pggit_workload', dict(run_id='r1', tracking_cost=-1), 'tracking_cost', '-1'),
    ('pggit_chaos_verdict', dict(experiment='x', reverted='maybe'), 'reverted', 'maybe'),
    ('pggit_chaos_verdict', dict(experiment='x'), 'pggit_chaos_verdict', 'action plugin'),
    ('pggit_chaos_ramp', dict(ramp={}, experiments=['network_latency']), 'pggit_chaos_ramp', 'action plugin'),
    ('pggit_chaos_latency', dict(name='l', port=5432, delay_ms=-5), 'delay_ms', '-5'),
    ('pggit_chaos_latency', dict(name='l', port=5432, delay_ms=60001), 'delay_ms', '60001'),
    ('pggit_chaos_latency', dict(name='l', port=5432, loss_pct=101), 'loss_pct', '101'),
    ('pggit_chaos_latency', dict(name='l', port=5432, delay_ms=0), 'delay_ms', '0'),
    ('pggit_chaos_latency', dict(name='l', peers=['10.0.0.300']), 'peers', "'10.0.0.300'"),
    ('pggit_chaos_latency', dict(name='l', port=5432, method='tc'), 'method', 'tc'),
    ('pggit_chaos_partition', dict(name='p', peers=['not-an-address']), 'peers', "'not-an-address'"),
    ('pggit_chaos_partition', dict(name='p', peers=['fe80::1']), 'peers', "'fe80::1/128'"),
    ('pggit_chaos_partition', dict(name='p', peers=['198.18.0.1'], exclude_peers=['x']), 'exclude_peers', "'x'"),
    ('pggit_chaos_partition', dict(name='p', port=70000), 'port', '70000'),
    ('pggit_chaos_partition', dict(name='p'), 'peers, a port', 'none of them'),
    ('pggit_chaos_partition', dict(name='p', peers=['198.18.0.1'], direction='sideways'), 'direction', 'sideways'),
    ('pggit_chaos_bandwidth', dict(name='b', peers=['198.18.0.1'], rate_kbit=1), 'rate_kbit', '1'),
    ('pggit_chaos_bandwidth', dict(name='b', peers=['198.18.0.999'], rate_kbit=100), 'peers', "'198.18.0.999'"),
    ('pggit_chaos_bandwidth', dict(name='b', rate_kbit=100), 'peers or a port', 'neither'),
    # pggit_cluster_info
    ('pggit_cluster_info', dict(ha='patroni'), 'patroni_urls', 'got none'),
    ('pggit_cluster_info', dict(), 'members', 'got none'),
    ('pggit_cluster_info', dict(patroni_urls=['lab-1:8008']), 'patroni_urls', "'lab-1:8008'"),
    ('pggit_cluster_info', dict(patroni_urls=['http://x:8008'], etcd_urls=['ftp://e']), 'etcd_urls', "'ftp://e'"),
    ('pggit_cluster_info', dict(patroni_urls=['http://x:8008'], timeout=0), 'timeout', '0'),
    ('pggit_cluster_info', dict(patroni_urls=['http://x:8008'], lost_region='region_a'), 'lost_region', 'region_a'),
    ('pggit_cluster_info', dict(members=[{'name': 'a', 'host': 'h', 'port': 0}]), 'port', '0'),
    ('pggit_cluster_info', dict(ha='sometimes'), 'ha', 'sometimes'),
    # pggit_chaos_host (refused cgroups need a server: tests/integration/test_host_fault.py)
    ('pggit_chaos_host', dict(name='h'), 'mode', 'missing'),
    ('pggit_chaos_host', dict(name='h', mode='hang'), 'mode', 'hang'),
    ('pggit_chaos_host', dict(name='h', mode='freeze', ttl=2), 'ttl', '2'),
    # pggit_chaos_disk
    ('pggit_chaos_disk', dict(name='d', fill_pct=0), 'fill_pct', '0'),
    ('pggit_chaos_disk', dict(name='d', fill_pct=101), 'fill_pct', '101'),
    ('pggit_chaos_disk', dict(name='d', free_mb=-1), 'free_mb', '-1'),
    ('pggit_chaos_disk', dict(name='d', fill_pct=50, free_mb=10), 'fill_pct', 'free_mb'),
    ('pggit_chaos_disk', dict(name='d'), 'fill_pct', 'missing'),
    ('pggit_chaos_disk', dict(name='d', target='path', path='/nonexistent/pggit-chaos-nowhere', free_mb=1), 'path',
     "'/nonexistent/pggit-chaos-nowhere'"),
    ('pggit_chaos_disk', dict(name='d', target='path', path='rel/dir', free_mb=1), 'path', "'rel/dir'"),
    ('pggit_chaos_disk', dict(name='d', target='path', free_mb=1), 'target', 'path'),
    ('pggit_chaos_disk', dict(name='d', path='/srv', free_mb=1), 'path', 'target=data'),
    ('pggit_chaos_disk', dict(name='d', target='disk', free_mb=1), 'target', 'disk'),
    ('pggit_chaos_disk', dict(name='d', free_mb=1, rate_mb_s=0), 'rate_mb_s', '0'),
    ('pggit_chaos_disk', dict(name='d', target='path', path='/', free_mb=1), 'allow_root_fs', 'root filesystem'),
    # pggit_chaos_failover
    ('pggit_chaos_failover', dict(name='f'), 'members', 'state is present'),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}]), 'members', "'name': 'a'"),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'b', 'host': 'h2'}], candidate='zz'),
     'candidate=zz', 'a, b'),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'b', 'host': 'h2'}],
                                  original_primary='zz'), 'original_primary=zz', 'a, b'),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'a', 'host': 'h2'}]), 'members', 'a appears twice'),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'b', 'host': 'h 2'}]), 'members[2].host', "'h 2'"),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'b', 'host': 'h2', 'port': 0}]),
     'members[2].port', '0'),
    ('pggit_chaos_failover', dict(name='f', members=[{'name': 'a', 'host': 'h1'}, {'name': 'b', 'host': 'h2'}], action='explode'),
     'action', 'explode'),
    # pggit_chaos_process
    ('pggit_chaos_process', dict(name='p', role='bgwriter'), 'role', 'bgwriter'),
    ('pggit_chaos_process', dict(name='p', role='backend', signal='HUP'), 'signal', 'HUP'),
    ('pggit_chaos_process', dict(name='p', role='backend', count=0), 'count', '0'),
    ('pggit_chaos_process', dict(name='p', role='backend', pid=1), 'pid', '1'),
    ('pggit_chaos_process', dict(name='p', role='postmaster', pid=4242), 'pid=4242', 'role=postmaster'),
    ('pggit_chaos_process', dict(name='p', role='checkpointer', application_name='app%'), 'application_name=app%', 'role=checkpointer'),
    ('pggit_chaos_process', dict(name='p', role='backend', user=' '), 'user', "' '"),
    ('pggit_chaos_process', dict(name='p'), 'role', 'state is present'),
    ('pggit_chaos_process', dict(name='p', role='postmaster', signal='TERM'), 'signal=TERM', 'role=postmaster'),
    # pggit_chaos_lock
    ('pggit_chaos_lock', dict(name='l', mode='super exclusive'), 'mode', "'super exclusive'"),
    ('pggit_chaos_lock', dict(name='l', tables=['public.accounts']), 'tables', "'public.accounts'"),
    ('pggit_chaos_lock', dict(name='l', tables=['pggit.a.b']), 'tables', "'pggit.a.b'"),
    ('pggit_chaos_lock', dict(name='l', tables=[]), 'tables', '[]'),
    ('pggit_chaos_lock', dict(name='l', advisory_keys=[2 ** 63]), 'advisory_keys', str(2 ** 63)),
    ('pggit_chaos_lock', dict(name='l', acquire_timeout_ms=-1), 'acquire_timeout_ms', '-1'),
    ('pggit_chaos_lock', dict(name='l', acquire_timeout_ms=60001), 'acquire_timeout_ms', '60001'),
    ('pggit_chaos_lock', dict(name='l', ttl=2), 'ttl', '2'),
    # pggit_verify amcheck
    ('pggit_verify', dict(amcheck='yes'), 'amcheck', 'yes'),
    ('pggit_verify', dict(amcheck='check', amcheck_timeout_ms=10), 'amcheck_timeout_ms', '10'),
    ('pggit_verify', dict(amcheck_create=True), 'amcheck_create', 'amcheck=none'),
    ('pggit_verify', dict(amcheck='check', amcheck_create='maybe'), 'amcheck_create', 'maybe'),
    # pggit_chaos_stress
    ('pggit_chaos_stress', dict(name='s', resource='disk'), 'resource', 'disk'),
    ('pggit_chaos_stress', dict(name='s'), 'resource', 'state is present'),
    ('pggit_chaos_stress', dict(name='s', resource='memory'), 'memory_pct', 'neither'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_pct=0), 'memory_pct', '0'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_pct=101), 'memory_pct', '101'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_pct=50, memory_mb=10), 'memory_pct', 'memory_mb'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_mb=0), 'memory_mb', '0'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_mb=10 ** 12, confine='none'), 'memory_mb', str(10 ** 12)),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', memory_pct=50), 'memory_pct', 'resource=cpu'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', cpu_load=0), 'cpu_load', '0'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', cpu_load=101), 'cpu_load', '101'),
    ('pggit_chaos_stress', dict(name='s', resource='memory', memory_mb=10, cpu_load=50), 'cpu_load', 'resource=memory'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', cpu_workers=0), 'cpu_workers', '0'),
    ('pggit_chaos_stress', dict(name='s', resource='io', io_workers=65), 'io_workers', '65'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', io_workers=2), 'io_workers', 'resource=cpu'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', oom_score_adj=1001), 'oom_score_adj', '1001'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', oom_score_adj=-1001), 'oom_score_adj', '-1001'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', watch_s=-1), 'watch_s', '-1'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', ttl=60, watch_s=60), 'watch_s', '60'),
    ('pggit_chaos_stress', dict(name='s', resource='cpu', confine='host'), 'confine', 'host'),
    # pggit_chaos_clock (missing libfaketime: tests/unit/plugins/modules/test_clock_setting.py, with a monkeypatched path)
    ('pggit_chaos_clock', dict(name='c'), 'offset_s', 'state is present'),
    ('pggit_chaos_clock', dict(name='c', offset_s=315576001), 'offset_s', '315576001'),
    ('pggit_chaos_clock', dict(name='c', offset_s=-4e8), 'offset_s', '-400000000'),
    ('pggit_chaos_clock', dict(name='c', offset_s=float('nan')), 'offset_s', 'nan'),
    ('pggit_chaos_clock', dict(name='c', offset_s=60, mode='warp'), 'mode', 'warp'),
    ('pggit_chaos_clock', dict(name='c', offset_s=60, mode='strobe'), 'mode', 'strobe'),
    ('pggit_chaos_clock', dict(name='c', offset_s=-600, mode='drift', ttl=300), 'offset_s', '-600'),
    # pggit_chaos_setting (an unknown name needs the server: test_clock_setting.py, with a fake pg_settings)
    ('pggit_chaos_setting', dict(name='s'), 'settings', 'state is present'),
    ('pggit_chaos_setting', dict(name='s', settings={}), 'settings', '{}'),
    ('pggit_chaos_setting', dict(name='s', settings={'work mem': '4MB'}), 'settings', "'work mem'"),
    ('pggit_chaos_setting', dict(name='s', settings={'shared_buffers': '1GB'}), 'shared_buffers', "'postmaster'"),
    ('pggit_chaos_setting', dict(name='s', settings={'search_path': 'a, b'}), 'settings', 'search_path'),
    ('pggit_chaos_setting', dict(name='s', settings={'work_mem': ['4MB']}), 'work_mem', "['4MB']"),
    # pggit_chaos_corrupt (an index that is not a btree or not pgGit's, a block past the end and the missing
    # pggit_chaos_destructive opt-in need a server or the CLI: tests/integration/test_corrupt_fault.py)
    ('pggit_chaos_corrupt', dict(name='c', mode='shred'), 'mode', 'shred'),
    ('pggit_chaos_corrupt', dict(name='c', reveal='evict'), 'reveal', 'evict'),
    ('pggit_chaos_corrupt', dict(name='c', recover='pray'), 'recover', 'pray'),
    ('pggit_chaos_corrupt', dict(name='c', block=0), 'block', '0'),
    ('pggit_chaos_corrupt', dict(name='c', block=-3), 'block', '-3'),
    ('pggit_chaos_corrupt', dict(name='c', index=' '), 'index', "' '"),
    ('pggit_chaos_corrupt', dict(name='c', index='public.users_pkey'), 'index=public.users_pkey', 'schema pggit'),
    ('pggit_chaos_corrupt', dict(name='c', index='pggit.'), 'index=pggit.', 'schema pggit'),
    # pggit_chaos_lock, the deadlock phase (an unknown then_table needs the server: tests/integration/test_lock_fault.py)
    ('pggit_chaos_lock', dict(name='l', then_tables=['public.accounts']), 'then_tables', "'public.accounts'"),
    ('pggit_chaos_lock', dict(name='l', then_tables=['pggit.a.b']), 'then_tables', "'pggit.a.b'"),
    ('pggit_chaos_lock', dict(name='l', then_tables=['objects'], then_mode='sharish'), 'then_mode', "'sharish'"),
    ('pggit_chaos_lock', dict(name='l', then_tables=['objects'], then_after_ms=-1), 'then_after_ms', '-1'),
    ('pggit_chaos_lock', dict(name='l', then_tables=['objects'], then_after_ms=600001), 'then_after_ms', '600001'),
    # pggit_chaos_sessions (a role that exists and is not ours: tests/unit/plugins/modules/test_sessions.py, with a fake cursor)
    ('pggit_chaos_sessions', dict(name='s', count=0), 'count', '0'),
    ('pggit_chaos_sessions', dict(name='s', count=5001), 'count', '5001'),
    ('pggit_chaos_sessions', dict(name='s', role='pg_monitor'), 'role', "'pg_monitor'"),
    ('pggit_chaos_sessions', dict(name='s', role='postgres'), 'role', "'postgres'"),
    ('pggit_chaos_sessions', dict(name='s', role='Bad-Role'), 'role', "'Bad-Role'"),
    ('pggit_chaos_sessions', dict(name='s', role='chaos', login_user='chaos'), 'role', "'chaos'"),
    ('pggit_chaos_sessions', dict(name='s', fill_timeout=0), 'fill_timeout', '0'),
    # pggit_chaos_load (a database of that name that is not ours: tests/unit/plugins/modules/test_load.py)
    ('pggit_chaos_load', dict(name='l', clients=0), 'clients', '0'),
    ('pggit_chaos_load', dict(name='l', clients=1001), 'clients', '1001'),
    ('pggit_chaos_load', dict(name='l', rate=-5), 'rate', '-5'),
    ('pggit_chaos_load', dict(name='l', mode='tpcc'), 'mode', 'tpcc'),
    ('pggit_chaos_load', dict(name='l', duration=0), 'duration', '0'),
    ('pggit_chaos_load', dict(name='l', scale=0), 'scale', '0'),
    ('pggit_chaos_load', dict(name='l', duration=60, ttl=30), 'duration', 'ttl=30'),
]


@pytest.mark.parametrize('name, args, option, value', BAD, ids=['%s-%s-%s' % (b[0], b[2], b[3]) for b in BAD])
def test_bad_input_fails_naming_option_and_value(workdir, name, args, option, value):
    result, failed = run_module(load(name).main, args)
    assert failed
    assert option in result['msg'] and value in result['msg'], result['msg']
    assert result.get('changed') is not True
    assert os.listdir(str(workdir)) == []  # no ledger, no state dir, nothing


def test_every_module_has_bad_input_cases():
    assert sorted(set(b[0] for b in BAD)) == MODULES


# -- documentation and argument spec agree ---------------------------------------
class SpecCaptured(Exception):
    pass


def argument_spec(name, monkeypatch):
    """The argspec main() builds, captured at AnsibleModule() before any argument is read."""
    def capture(self, argument_spec, **kwargs):
        raise SpecCaptured(argument_spec)
    monkeypatch.setattr(basic.AnsibleModule, '__init__', capture)
    with pytest.raises(SpecCaptured) as captured:
        load(name).main()
    return captured.value.args[0]


def documented_options(name):
    doc = yaml.safe_load(load(name).DOCUMENTATION)
    options = {}
    for fragment in doc.get('extends_documentation_fragment') or []:
        if not fragment.startswith('pggit.chaos.'):
            continue  # ansible.builtin fragments document attributes, not options
        parts = fragment.split('.')[2:]
        source = importlib.import_module('%s.doc_fragments.%s' % (PREFIX, parts[0])).ModuleDocFragment
        text = getattr(source, parts[1].upper() if len(parts) > 1 else 'DOCUMENTATION')
        options.update(yaml.safe_load(text)['options'])
    options.update(doc.get('options') or {})
    return options


def flatten(options, key, prefix=''):
    """{'a': spec, 'a.sub': spec} from nested options; ``key`` names the nesting (options or suboptions)."""
    flat = {}
    for name, spec in (options or {}).items():
        flat[prefix + name] = spec
        flat.update(flatten(spec.get(key), key, prefix + name + '.'))
    return flat


def normalised(spec, field):
    value = spec.get(field)
    if field == 'type':
        return value or 'str'
    if field == 'required':
        return bool(value)
    if field == 'aliases':
        return sorted(value or [])
    return value


@pytest.fixture(params=MODULES)
def both(request, monkeypatch):
    code = flatten(argument_spec(request.param, monkeypatch), 'options')
    docs = flatten(documented_options(request.param), 'suboptions')
    return code, docs


def test_documented_options_are_the_argument_spec(both):
    code, docs = both
    assert sorted(docs) == sorted(code)


@pytest.mark.parametrize('field', ['default', 'type', 'elements', 'choices', 'required', 'aliases'])
def test_documented_option_fields_match_the_code(both, field):
    code, docs = both
    mismatched = dict((name, (normalised(docs[name], field), normalised(code[name], field)))
                      for name in set(code) & set(docs) if normalised(docs[name], field) != normalised(code[name], field))
    assert mismatched == {}, '%s differs (docs, code): %s' % (field, mismatched)


def test_secrets_are_no_log(monkeypatch):
    for name in MODULES:
        spec = flatten(argument_spec(name, monkeypatch), 'options')
        if 'login_password' in spec:
            assert spec['login_password'].get('no_log') is True, name


@pytest.mark.parametrize('name', MODULES)
def test_doc_blocks_parse_and_examples_use_the_module(name):
    module = load(name)
    doc, examples, returns = (yaml.safe_load(getattr(module, b)) for b in ('DOCUMENTATION', 'EXAMPLES', 'RETURN'))
    assert doc['module'] == name
    assert isinstance(returns, dict) and returns
    assert any('pggit.chaos.' + name in task for task in examples)
