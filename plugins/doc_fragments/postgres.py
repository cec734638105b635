# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host running the database. Empty means a local Unix socket.
    type: str
    default: ''
    aliases: [host, login_hostname]
  login_port:
    description:
      - Database port to connect to, from 1 to 65535.
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description:
      - The user to connect as.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - The password to authenticate with. Never logged, never written to the
        fault record; when a revert needs it, it is kept in a C(0600) side file
        next to the record and removed with it.
    type: str
    default: ''
  login_unix_socket:
    description:
      - Path to a Unix domain socket directory for local connections. Takes
        precedence over O(login_host).
    type: str
    default: ''
    aliases: [unix_socket]
  db:
    description:
      - Name of the database where pgGit is installed.
    type: str
    default: pggit
    aliases: [login_db]
  ssl_mode:
    description:
      - libpq C(sslmode) for the connection.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  connect_timeout:
    description:
      - Seconds to wait for a connection, from 1 to 600.
    type: int
    default: 10
requirements:
  - psycopg2 on the target host
'''
