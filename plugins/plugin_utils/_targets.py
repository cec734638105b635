# Copyright: pggit.chaos contributors
# MIT License
"""Target selection: the opt-in decisions of a play's hosts, then the blast radius."""
from __future__ import annotations

import math
import re

_PCT = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*%\s*$')


def blast_limit(max_hosts, eligible, name='chaos_max_hosts'):
    """Number of hosts a blast radius allows out of ``eligible``; ValueError names ``name`` and the value."""
    if max_hosts in (None, '', 'all'):
        return eligible
    text = str(max_hosts)
    match = _PCT.match(text)
    if match:
        pct = float(match.group(1))
        if not 0 < pct <= 100:
            raise ValueError("%s must be a percentage in (0, 100], got '%s'" % (name, text))
        return min(eligible, max(1, int(math.floor(eligible * pct / 100.0))))
    try:
        count = int(text)
    except ValueError:
        raise ValueError("%s must be a count such as 2, a percentage such as '50%%' or 'all', got '%s'" % (name, text)) from None
    if count < 1:
        raise ValueError("%s must be at least 1, got '%s'" % (name, text))
    return min(eligible, count)


def select(hosts, allowed, max_hosts='all', name='chaos_max_hosts'):
    """Split ``hosts`` (in order) into selected, refused and spared.

    ``allowed`` maps a host to its opt-in decision (True/False); hosts missing
    from it are refused.  At most the blast radius of the opted-in hosts are
    selected, in the order given; the rest are spared.
    """
    refused = [h for h in hosts if not allowed.get(h)]
    eligible = [h for h in hosts if h not in refused]
    limit = blast_limit(max_hosts, len(eligible), name)
    return {'selected': eligible[:limit], 'refused': refused, 'spared': eligible[limit:], 'limit': limit}
