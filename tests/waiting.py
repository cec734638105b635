"""Polling with a bound, shared by the integration and lab tests."""
from __future__ import annotations

import time


def wait_until(predicate, deadline, step=0.2):
    """Poll predicate until it is truthy or the epoch deadline passes; return its last value."""
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def wait_for(predicate, timeout, step=0.2):
    return wait_until(predicate, time.time() + timeout, step)
