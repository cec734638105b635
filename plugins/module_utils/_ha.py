# Copyright: pggit.chaos contributors
# MIT License
"""Who leads a PostgreSQL cluster, asked of the cluster itself.

- :func:`cluster_state` asks Patroni's REST API (``GET /cluster``, ``/config``,
  ``/history``) of the first member that answers;
- :func:`plain_state` asks every member over SQL when no HA manager runs
  (``pg_is_in_recovery()``, ``pg_stat_replication``, ``pg_control_checkpoint()``);
- both return the same shape: ``scope``, ``leader``, ``members`` (name, host,
  port, role, state, timeline, lag, api_url, tags), ``sync_standbys``,
  ``timeline``, ``settings``, ``source``;
- :func:`etcd_members` lists the DCS (etcd v3 through its HTTP gateway) with
  each member's health, and :func:`dcs_quorum` says whether the members left
  after the loss of one region still make a quorum;
- :func:`conninfo` builds the multi-host libpq string a client uses to follow
  the primary (``target_session_attrs=read-write``).

Standard library only (``urllib``), plus psycopg2 for :func:`plain_state`.
Every failure is a :class:`ChaosError` that names the URL or the member.
"""
from __future__ import annotations

import json
import re
import socket

from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._errors import ChaosError

DEFAULT_TIMEOUT = 3
# A REST answer larger than this is not Patroni's (a /cluster of 100 members is ~60 kB).
MAX_BODY = 4 * 1024 * 1024
# Patroni's roles, and the older names of the same thing.
LEADER_ROLES = ('leader', 'master', 'primary', 'standby_leader')
SYNC_ROLES = ('sync_standby', 'quorum_standby')
_KEYWORD_RE = re.compile(r'^[a-z_]+$')
TARGET_SESSION_ATTRS = ('any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby')

# One opener without proxies: cluster members are reached directly, never through a proxy from the environment.
_OPENER = build_opener(ProxyHandler({}))


def check_url(url, option='patroni_urls'):
    """None when url is an http(s) URL with a host, else why not (naming the option and the value)."""
    if not isinstance(url, str) or not url.strip():
        return '%s: every URL must be a non-empty string, got %r' % (option, url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # pylint: disable=pointless-statement  # raises ValueError on a bad port
    except ValueError as exc:
        return '%s: %r is not a URL: %s' % (option, url, exc)
    if '@' in parts.netloc:
        # Never echoed: the password would land in messages, results and logs (and urllib does not send it anyway).
        return '%s: %s://...@%s carries user:password@ credentials, which are not supported (no_log could not hide them)' % (
            option, parts.scheme, parts.netloc.rsplit('@', 1)[1])
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return "%s: %r is not an http:// or https:// URL with a host (such as 'http://10.0.0.1:8008')" % (option, url)
    return None


def _request(url, data=None, timeout=DEFAULT_TIMEOUT, accept_status=(200,)):
    """The parsed JSON body of one request; ChaosError naming the URL on any failure."""
    problem = check_url(url, 'url')
    if problem:
        raise ChaosError(problem)
    body = None if data is None else json.dumps(data).encode()
    request = Request(url, data=body, headers={'Accept': 'application/json', 'Content-Type': 'application/json'},
                      method='GET' if data is None else 'POST')
    try:
        response = _OPENER.open(request, timeout=timeout)
        status = response.getcode()
        raw = response.read(MAX_BODY + 1)
    except HTTPError as exc:
        status = exc.code
        try:
            raw = exc.read(MAX_BODY + 1)
        except Exception:  # pylint: disable=broad-except
            raw = b''
        if status not in accept_status:
            raise ChaosError('%s answered HTTP %s: %s' % (url, status, ' '.join(raw[:200].decode('utf-8', 'replace').split())
                                                          or exc.reason))
    except (URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, 'reason', exc)
        raise ChaosError('%s did not answer within %ss: %s' % (url, timeout, reason))
    if status not in accept_status:
        raise ChaosError('%s answered HTTP %s' % (url, status))
    if len(raw) > MAX_BODY:
        raise ChaosError('%s answered more than %d bytes: not a Patroni or etcd answer' % (url, MAX_BODY))
    try:
        return json.loads(raw.decode('utf-8'))
    except ValueError as exc:
        raise ChaosError('%s did not answer JSON (%s): %s' % (url, exc, ' '.join(raw[:200].decode('utf-8', 'replace').split())))


def patroni_get(url, path, timeout=DEFAULT_TIMEOUT):
    """GET <url><path> of a Patroni REST API; the parsed JSON.  Raises ChaosError naming the URL on any failure."""
    return _request(url.rstrip('/') + '/' + path.lstrip('/'), timeout=timeout)


def _lag(value):
    """Patroni's lag: bytes (int), or None when it says 'unknown' (or nothing)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _role(role):
    role = (role or '').lower()
    return 'leader' if role in ('master', 'primary') else role


def member_of(raw):
    """One member of GET /cluster in our shape."""
    port = raw.get('port')
    return {'name': raw.get('name'), 'host': raw.get('host'), 'port': int(port) if isinstance(port, int) or str(port).isdigit() else None,
            'role': _role(raw.get('role')), 'state': raw.get('state'), 'timeline': raw.get('timeline'),
            'lag': _lag(raw.get('lag')), 'api_url': raw.get('api_url'), 'tags': raw.get('tags') or {}}


def _shape(scope, members, settings, source, history=None):
    leaders = [m for m in members if m['role'] == 'leader'] or [m for m in members if m['role'] == 'standby_leader']
    leader = leaders[0] if leaders else None
    timelines = [m['timeline'] for m in members if isinstance(m.get('timeline'), int)]
    timeline = leader['timeline'] if leader and isinstance(leader.get('timeline'), int) else (max(timelines) if timelines else None)
    state = {'scope': scope, 'leader': leader['name'] if leader else None, 'members': members,
             'sync_standbys': [m['name'] for m in members if m['role'] in SYNC_ROLES], 'timeline': timeline,
             'settings': settings, 'source': source}
    if history is not None:
        state['history'] = history
    return state


def from_patroni(cluster, config, source, history=None):
    """cluster_state's shape from the bodies of GET /cluster, /config (and /history)."""
    if not isinstance(cluster, dict) or not isinstance(cluster.get('members'), list):
        raise ChaosError('%s/cluster did not answer a Patroni cluster (no members list): %r' % (source, cluster))
    members = [member_of(m) for m in cluster['members'] if isinstance(m, dict)]
    return _shape(cluster.get('scope'), members, config if isinstance(config, dict) else {}, source,
                  history if isinstance(history, list) else None)


def cluster_state(urls, timeout=DEFAULT_TIMEOUT):
    """The cluster as Patroni sees it, asked of each URL in turn until one answers /cluster and /config.

    Raises ChaosError naming every URL and why, when none answers."""
    if not urls:
        raise ChaosError('patroni_urls: no Patroni REST URL given')
    failures = []
    for url in urls:
        problem = check_url(url)
        if problem:
            raise ChaosError(problem)
    for url in urls:
        try:
            cluster = patroni_get(url, '/cluster', timeout)
            config = patroni_get(url, '/config', timeout)
        except ChaosError as exc:
            failures.append(str(exc))
            continue
        try:
            history = patroni_get(url, '/history', timeout)
        except ChaosError:
            history = None
        return from_patroni(cluster, config, url.rstrip('/'), history)
    raise ChaosError('no Patroni REST API answered: %s' % '; '.join(failures))


# -- no HA manager: ask every member ---------------------------------------------------
# The timeline: a primary's from the name of its current WAL file (pg_control_checkpoint() keeps the old one until the
# next checkpoint, tens of seconds after a promotion); a standby's from its walreceiver when it streams.
PLAIN_SQL = ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) "
             "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
             "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END")
REPLICATION_SQL = ("SELECT application_name, host(client_addr), state, sync_state, "
                   "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication")
RECEIVER_SQL = 'SELECT status, sender_host, received_tli FROM pg_stat_wal_receiver'


def _ask(member, params, timeout):
    conn_params = dict(params or {})
    conn_params.update(login_host=member['host'], login_port=member.get('port') or 5432, login_unix_socket='')
    conn_params['connect_timeout'] = conn_params.get('connect_timeout') or timeout
    conn = _pgconn.connect(conn_params, application_name='pggit-chaos-cluster-info')
    try:
        cur = conn.cursor()
        cur.execute(PLAIN_SQL)
        in_recovery, timeline, _lsn = cur.fetchone()
        found = {'in_recovery': bool(in_recovery), 'timeline': timeline, 'replication': [], 'receiver': None}
        if in_recovery:
            cur.execute(RECEIVER_SQL)
            row = cur.fetchone()
            found['receiver'] = {'status': row[0], 'sender_host': row[1], 'timeline': row[2]} if row else None
            if row and isinstance(row[2], int) and row[2] > (found['timeline'] or 0):
                found['timeline'] = row[2]
        else:
            cur.execute(REPLICATION_SQL)
            found['replication'] = [{'application_name': r[0], 'client_addr': r[1], 'state': r[2], 'sync_state': r[3], 'lag': r[4]}
                                    for r in cur.fetchall()]
        return found
    finally:
        conn.close()


def plain_members_problem(members):
    """None when members is a list of {name, host[, port]}, else why not."""
    if not isinstance(members, list) or not members:
        return 'members: give the cluster\'s members as a list of {name, host, port}, got %r' % (members,)
    names = set()
    for member in members:
        if not isinstance(member, dict) or not member.get('name') or not member.get('host'):
            return 'members: every member needs a name and a host, got %r' % (member,)
        port = member.get('port', 5432)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            return 'members: member %s: port must be from 1 to 65535, got %r' % (member['name'], port)
        if member['name'] in names:
            return 'members: the name %s is given twice' % member['name']
        names.add(member['name'])
    return None


def from_plain(members, answers):
    """cluster_state's shape from what each member said (answers: name -> dict from _ask, or {'error': text})."""
    primaries = [m['name'] for m in members if not (answers.get(m['name']) or {}).get('error')
                 and not answers[m['name']]['in_recovery']]
    rows = []
    for primary in primaries:
        rows += answers[primary]['replication']
    shaped = []
    for member in members:
        said = answers.get(member['name']) or {'error': 'not asked'}
        row = {'name': member['name'], 'host': member['host'], 'port': member.get('port') or 5432, 'role': 'unknown',
               'state': 'unreachable', 'timeline': None, 'lag': None, 'api_url': None, 'tags': {}}
        if said.get('error'):
            row['error'] = said['error']
        elif not said['in_recovery']:
            row.update(role='leader', state='running', timeline=said['timeline'], lag=0)
        else:
            seen = [r for r in rows if r['application_name'] == member['name'] or r['client_addr'] == member['host']]
            replica = seen[0] if seen else None
            receiver = said.get('receiver') or {}
            row.update(role='sync_standby' if replica and replica['sync_state'] in ('sync', 'quorum') else 'replica',
                       state='streaming' if receiver.get('status') == 'streaming' else 'in archive recovery',
                       timeline=said['timeline'], lag=replica['lag'] if replica else None)
        shaped.append(row)
    state = _shape(None, shaped, {}, 'sql')
    state['primaries'] = primaries
    if len(primaries) > 1:
        state['leader'] = None  # two primaries: nobody leads, that is a split brain
    return state


def plain_state(members, params=None, timeout=DEFAULT_TIMEOUT):
    """cluster_state's shape from SQL on every member (no HA manager).

    ``members``: [{name, host, port}]; ``params``: the login options shared by
    all (login_user, login_password, db, ssl_mode...).  A member that cannot
    be reached is reported (state ``unreachable``, ``error``), never skipped."""
    problem = plain_members_problem(members)
    if problem:
        raise ChaosError(problem)
    answers = {}
    errors = _pgconn.psycopg2.Error if _pgconn.HAS_PSYCOPG2 else RuntimeError
    for member in members:
        try:
            answers[member['name']] = _ask(member, params, timeout)
        except (errors, RuntimeError, ValueError) as exc:
            answers[member['name']] = {'error': '%s:%s: %s' % (member['host'], member.get('port') or 5432, _pgconn.one_line(exc))}
    return from_plain(members, answers)


# -- connection strings ------------------------------------------------------------------
def quote(value):
    """A libpq connection-string value in single quotes (backslash and quote escaped)."""
    return "'%s'" % str(value).replace('\\', '\\\\').replace("'", "\\'")


def conninfo(hosts, port, dbname, user, target_session_attrs='read-write', connect_timeout=3, **extra):
    """A multi-host libpq connection string: ``host='a,b,c' port='p,p,p' dbname=... target_session_attrs=...``.

    ``port``: one port for every host, or a list (one per host).  ``extra``:
    more libpq keywords (None values are left out).  Every value is quoted."""
    if isinstance(hosts, str):
        hosts = [hosts]
    if not hosts or not all(isinstance(h, str) and h.strip() and ',' not in h and not re.search(r'\s', h) for h in hosts):
        raise ChaosError('hosts must be a non-empty list of host names or addresses (no commas or blanks), got %r' % (hosts,))
    ports = list(port) if isinstance(port, (list, tuple)) else [port] * len(hosts)
    if len(ports) != len(hosts):
        raise ChaosError('port: give one port, or one per host (%d hosts), got %r' % (len(hosts), port))
    for value in ports:
        if isinstance(value, bool) or not str(value).isdigit() or not 1 <= int(value) <= 65535:
            raise ChaosError('port must be from 1 to 65535, got %r' % (value,))
    if target_session_attrs not in TARGET_SESSION_ATTRS:
        raise ChaosError('target_session_attrs must be one of %s, got %r' % (', '.join(TARGET_SESSION_ATTRS), target_session_attrs))
    pairs = [('host', ','.join(hosts)), ('port', ','.join(str(int(p)) for p in ports)), ('dbname', dbname), ('user', user),
             ('target_session_attrs', target_session_attrs), ('connect_timeout', connect_timeout)]
    for key in sorted(extra):
        if not _KEYWORD_RE.match(key) or key in ('host', 'hostaddr', 'port', 'dbname', 'user', 'target_session_attrs'):
            raise ChaosError('%s is not a libpq keyword conninfo takes as extra' % key)
        pairs.append((key, extra[key]))
    return ' '.join('%s=%s' % (key, quote(value)) for key, value in pairs if value is not None and value != '')


# -- the DCS (etcd v3) -------------------------------------------------------------------
def _etcd_health(client_urls, timeout):
    """(healthy, error) of one etcd member, asked at its first client URL that answers GET /health."""
    errors = []
    for url in client_urls:
        try:
            said = _request(url.rstrip('/') + '/health', timeout=timeout, accept_status=(200, 503))
        except ChaosError as exc:
            errors.append(str(exc))
            continue
        healthy = str((said or {}).get('health')).lower() == 'true'
        return healthy, None if healthy else '%s/health: %s' % (url.rstrip('/'), said)
    return False, '; '.join(errors) or 'no client URL'


def etcd_members(urls, timeout=DEFAULT_TIMEOUT):
    """The etcd cluster's members (POST /v3/cluster/member/list on the first URL that answers), each with its health.

    [{id, name, peer_urls, client_urls, healthy, error, source}].  Raises
    ChaosError naming every URL when none answers."""
    for url in urls or []:
        problem = check_url(url, 'etcd_urls')
        if problem:
            raise ChaosError(problem)
    if not urls:
        raise ChaosError('etcd_urls: no etcd URL given')
    failures = []
    for url in urls:
        try:
            listed = _request(url.rstrip('/') + '/v3/cluster/member/list', data={}, timeout=timeout)
        except ChaosError as exc:
            failures.append(str(exc))
            continue
        found = []
        for raw in (listed or {}).get('members') or []:
            client_urls = [u for u in raw.get('clientURLs') or [] if check_url(u, 'clientURLs') is None]
            healthy, error = _etcd_health(client_urls, timeout)
            found.append({'id': str(raw.get('ID')), 'name': raw.get('name') or '', 'peer_urls': raw.get('peerURLs') or [],
                          'client_urls': client_urls, 'healthy': healthy, 'error': error})
        if not found:
            failures.append('%s/v3/cluster/member/list listed no member' % url.rstrip('/'))
            continue
        return found
    raise ChaosError('no etcd member answered: %s' % '; '.join(failures))


def with_regions(members, regions):
    """members with a ``region`` each, from ``regions`` (client URL or member name -> region); None when unknown."""
    regions = dict((k.rstrip('/'), v) for k, v in (regions or {}).items())
    placed = []
    for member in members:
        region = regions.get(member.get('name'))
        for url in member.get('client_urls') or []:
            region = region or regions.get(url.rstrip('/'))
        placed.append(dict(member, region=region))
    return placed


def dcs_quorum(etcd_members, lost_region):
    """Whether the DCS keeps a quorum when every member in ``lost_region`` is lost.

    ``etcd_members``: [{name, region, healthy}] (an unhealthy member counts as
    lost already, and so does a member whose region is unknown: it may be in
    the lost region, and a quorum is never assumed).  Returns {members,
    by_region, surviving, quorum, ok, unplaced}: ``quorum`` is the majority of
    all members, ``surviving`` the healthy members known to be outside the
    lost region, ``unplaced`` the members with no region."""
    by_region = {}
    for member in etcd_members:
        by_region.setdefault(member.get('region') or 'unknown', []).append(member.get('name'))
    quorum = len(etcd_members) // 2 + 1
    surviving = [m.get('name') for m in etcd_members
                 if m.get('region') and m.get('region') != lost_region and m.get('healthy', True) is not False]
    return {'members': len(etcd_members), 'by_region': by_region, 'surviving': surviving, 'quorum': quorum,
            'ok': bool(etcd_members) and len(surviving) >= quorum, 'lost_region': lost_region,
            'unplaced': [m.get('name') for m in etcd_members if not m.get('region')]}
