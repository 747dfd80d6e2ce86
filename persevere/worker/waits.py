"""Durable waits that end by time: suspended runs to wake, pauses that time out."""

from __future__ import annotations

from ..journal import Journal


def housekeeping(journal: Journal) -> list[str]:
    """Wake suspended runs whose time has come and end pauses that timed out (filled in by
    the pause/sleep work).

    Called by every scheduler pass (:meth:`persevere.worker.scheduler.Scheduler.tick`);
    returns what it did, a line each.
    """
    return []
