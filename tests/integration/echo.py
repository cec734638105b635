"""A bounded TCP echo server and RTT client for network fault tests (198.18.0.0/15 only)."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time


def serve(addr, port, lifetime):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(16)
    srv.settimeout(1.0)
    end = time.time() + lifetime
    while time.time() < end:
        try:
            conn, _peer = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=_echo, args=(conn, end), daemon=True).start()


def _echo(conn, end):
    conn.settimeout(max(1.0, end - time.time()))
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def rtt(addr, port, seconds, size=1):
    """Round trips on one connection for `seconds`; one JSON line per sample."""
    conn = socket.create_connection((addr, port), timeout=5)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = time.time() + seconds
    payload = b'x' * size
    while time.time() < end:
        started = time.time()
        conn.sendall(payload)
        got = 0
        while got < size:
            got += len(conn.recv(65536))
        print(json.dumps({'at': started, 'ms': (time.time() - started) * 1000.0}), flush=True)
        time.sleep(0.05)


def connect(addr, port, timeout):
    try:
        socket.create_connection((addr, port), timeout=timeout).close()
        print('ok')
    except OSError as exc:
        print('error %s' % exc)


if __name__ == '__main__':
    command = sys.argv[1]
    if command == 'serve':
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif command == 'rtt':
        rtt(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 1)
    else:
        connect(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
