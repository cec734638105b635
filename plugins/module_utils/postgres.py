# Copyright: pggit.chaos contributors
# MIT License
"""Connection options shared by every module that talks to PostgreSQL.

Option names follow community.postgresql so that existing ``module_defaults``
can be reused; they are documented once in the ``pggit.chaos.postgres`` doc
fragment.
"""
from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.pggit.chaos.plugins.module_utils import _pgconn
from ansible_collections.pggit.chaos.plugins.module_utils._validate import fail_on_ranges

SSL_MODES = ['allow', 'disable', 'prefer', 'require', 'verify-ca', 'verify-full']


def postgres_argument_spec():
    """A fresh argspec dict; modules .update() it with their own options."""
    return dict(
        login_host=dict(type='str', default='', aliases=['host', 'login_hostname']),
        login_port=dict(type='int', default=5432, aliases=['port']),
        login_user=dict(type='str', default='postgres', aliases=['login']),
        login_password=dict(type='str', default='', no_log=True),
        login_unix_socket=dict(type='str', default='', aliases=['unix_socket']),
        db=dict(type='str', default='pggit', aliases=['login_db']),
        ssl_mode=dict(type='str', default='prefer', choices=SSL_MODES),
        connect_timeout=dict(type='int', default=10),
    )


def check_postgres_params(module):
    fail_on_ranges(module, (('login_port', 1, 65535), ('connect_timeout', 1, 600, ' seconds')))


def ensure_psycopg2(module):
    if not _pgconn.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(_pgconn.PSYCOPG2_IMPORT_ERROR))


def connect_or_fail(module, application_name='pggit-chaos', autocommit=True):
    """Connect, or fail naming the host, port, database and user tried."""
    ensure_psycopg2(module)
    check_postgres_params(module)
    try:
        return _pgconn.connect(module.params, application_name=application_name, autocommit=autocommit)
    except _pgconn.psycopg2.Error as exc:
        module.fail_json(msg='unable to connect to %s: %s' % (_pgconn.describe(module.params), _pgconn.one_line(exc)))
    return None
