# Copyright: pggit.chaos contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host running the database. Empty means libpq's default local Unix
        socket, or O(login_unix_socket) when that is set.
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
      - Path to a Unix domain socket directory for local connections.
      - As in community.postgresql, it is used only when O(login_host) is
        empty or V(localhost); with any other O(login_host) the connection
        goes over TCP to that host, and the module warns that the socket is
        not used.
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
  ca_cert:
    description:
      - Path of a file with the certificate authorities that sign the
        server's certificate (libpq C(sslrootcert)). With O(ssl_mode=verify-ca)
        or O(ssl_mode=verify-full) the server's certificate is checked against it.
      - Stored in the fault record (it is a path, not a secret) so that the
        reaper can reconnect with it.
    type: str
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - Path of the client certificate file (libpq C(sslcert)), for
        certificate authentication.
      - Stored in the fault record (it is a path, not a secret).
    type: path
  ssl_key:
    description:
      - Path of the client certificate's private key (libpq C(sslkey)).
      - Stored in the fault record (it is a path, not the key itself).
    type: path
  connect_params:
    description:
      - Further libpq connection keywords, passed to C(psycopg2.connect()),
        for example C(keepalives_idle) or C(options).
      - Keys set by a named option (C(host), C(hostaddr), C(port), C(user),
        C(password), C(dbname), C(sslmode), C(sslrootcert), C(sslcert),
        C(sslkey), C(connect_timeout)) and C(application_name) are refused;
        use the named option. Unknown keywords are refused by libpq's own check.
      - Stored in the fault record so that the reaper reconnects the same
        way, except C(sslpassword), which is kept with the password in the
        record's C(0600) side file.
    type: dict
    default: {}
  connect_timeout:
    description:
      - Seconds to wait for a connection, from 1 to 600.
    type: int
    default: 10
requirements:
  - psycopg2 on the target host
'''
