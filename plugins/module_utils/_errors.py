# Copyright: pggit.chaos contributors
# MIT License
"""The engine's exceptions: one base, so callers can catch every engine failure at once.

Standard library only: the detached reaper imports this file too.
"""
from __future__ import annotations


class ChaosError(Exception):
    """Base of every error the fault engine raises on purpose."""


class LedgerError(ChaosError):
    """The state dir or a ledger record cannot be used (bad path, owner, mode or content)."""


class UndoError(ChaosError):
    """An undo step could not be carried out; the record stays and the reaper retries."""


class DaemonError(ChaosError):
    """A detached engine program did not start, or could not prove that it does its job."""
