from __future__ import annotations

import pytest

from ansible_collections.pggit.chaos.plugins.module_utils._validate import RangeError, check_range, range_error


@pytest.mark.parametrize('args, message', [
    (('ttl', 1, 5, 86400, ' seconds'), 'ttl must be between 5 and 86400 seconds, got 1'),
    (('ttl', 86401, 5, 86400, ' seconds'), 'ttl must be between 5 and 86400 seconds, got 86401'),
    (('lag', -1, 0), 'lag must be at least 0, got -1'),
    (('ttl', 5, 5, 86400), None),
    (('ttl', 86400, 5, 86400), None),
    (('lag', 0, 0), None),
    (('unset', None, 1, 2), None),
])
def test_range_error(args, message):
    assert range_error(*args) == message


def test_check_range_raises_the_message():
    with pytest.raises(RangeError, match='^port must be between 1 and 65535, got 0$'):
        check_range('port', 0, 1, 65535)
