"""A real HTTP server on 127.0.0.1 for tests, and recorded answers of Patroni 4 and etcd 3.4."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

# GET /cluster of Patroni 4.1 (synchronous_mode: true, one sync standby, one replica), as it answers it.
CLUSTER = {
    'members': [
        {'name': 'lab-1', 'role': 'leader', 'state': 'running', 'api_url': 'http://198.18.0.11:8008/patroni', 'host': '198.18.0.11',
         'port': 5432, 'timeline': 3},
        {'name': 'lab-2', 'role': 'sync_standby', 'state': 'streaming', 'api_url': 'http://198.18.0.12:8008/patroni',
         'host': '198.18.0.12', 'port': 5432, 'timeline': 3, 'receive_lag': 0, 'receive_lsn': '0/5000148', 'replay_lag': 0,
         'replay_lsn': '0/5000148', 'lag': 0, 'lsn': '0/5000148'},
        {'name': 'lab-3', 'role': 'replica', 'state': 'streaming', 'api_url': 'http://198.18.0.13:8008/patroni', 'host': '198.18.0.13',
         'port': 5432, 'timeline': 3, 'tags': {'nofailover': True}, 'lag': 'unknown'},
    ],
    'scope': 'pggit-lab',
}
CONFIG = {'ttl': 10, 'loop_wait': 2, 'retry_timeout': 3, 'maximum_lag_on_failover': 1048576, 'synchronous_mode': True,
          'synchronous_node_count': 2, 'postgresql': {'use_pg_rewind': True, 'use_slots': True,
                                                      'parameters': {'wal_log_hints': 'on'}}}
HISTORY = [[1, 25623960, 'no recovery target specified', '2026-11-27T22:01:02.123456+00:00', 'lab-2'],
           [2, 50331808, 'no recovery target specified', '2026-11-27T22:05:10.654321+00:00', 'lab-1']]
MEMBER_LIST = {'header': {'cluster_id': '14841639068965178418', 'member_id': '10276657743932975437', 'raft_term': '2'},
               'members': [{'ID': '10276657743932975437', 'name': 'lab-1', 'peerURLs': ['http://198.18.0.11:2380'],
                            'clientURLs': []},
                           {'ID': '2', 'name': 'lab-3', 'peerURLs': ['http://198.18.0.13:2380'], 'clientURLs': []},
                           {'ID': '3', 'name': 'hlb-w', 'peerURLs': ['http://198.18.0.19:2380'], 'clientURLs': []}]}


class Fake(object):
    """A real HTTP server on 127.0.0.1: answers[path] = (status, body) or a callable; requests are recorded."""

    def __init__(self):
        self.answers = {}
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method):
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                fake.requests.append((method, self.path, body))
                status, payload = fake.answers.get(self.path, (404, {'error': 'no such path'}))
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # noqa: N802
                self._answer('GET')

            def do_POST(self):  # noqa: N802
                self._answer('POST')

            def log_message(self, *args):
                pass

        self.server = HTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
