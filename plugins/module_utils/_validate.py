# Copyright: pggit.chaos contributors
# MIT License
"""Bounds on numeric options, with one message shape: name, bounds and the value given."""
from __future__ import annotations


class RangeError(ValueError):
    pass


def range_error(name, value, low, high=None, unit=''):
    """The message for an out-of-range value, or None when it is fine (None is fine: not set)."""
    if value is None:
        return None
    if high is None:
        return None if value >= low else '%s must be at least %s%s, got %s' % (name, low, unit, value)
    return None if low <= value <= high else '%s must be between %s and %s%s, got %s' % (name, low, high, unit, value)


def check_range(name, value, low, high=None, unit=''):
    msg = range_error(name, value, low, high, unit)
    if msg:
        raise RangeError(msg)


def fail_on_ranges(module, ranges):
    """ranges: (option, low, high[, unit]) tuples; the first bad one fails the module."""
    for bounds in ranges:
        msg = range_error(bounds[0], module.params[bounds[0]], *bounds[1:])
        if msg:
            module.fail_json(msg=msg)
