"""Hooks due: which state hooks a transition owes, until they have run (an outbox).

A transition that has hooks to run records "hooks due for (run, version,
event)" in the same commit; after they run, the row is marked done. A process
that dies in between leaves the row due, and the next execution of the run
(a resume) runs them. A crash found by another process (``persevere runs
ls``, which never loads user code) is recorded due the same way and its
``on_crashed`` hooks run at the resume.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from .. import clock
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

#: The hook list that fires on a transition into each state type.
EVENTS = {
    "RUNNING": "on_running",
    "COMPLETED": "on_completion",
    "FAILED": "on_failure",
    "CRASHED": "on_crashed",
    "CANCELLED": "on_cancellation",
}

_DUE = "INSERT OR IGNORE INTO hooks_due (run_id, version, event, due_ms) VALUES (?, ?, ?, ?)"
_DONE = "UPDATE hooks_due SET done_ms = ?, error = ? WHERE run_id = ? AND version = ? AND event = ?"


class HooksDue:
    """The hooks-due table of one journal (``journal.hooks``)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    @staticmethod
    def due_op(run_id: str, version: int, event: str, fence: str | None = None) -> Op:
        """Record that ``event``'s hooks are owed for this transition (commit it with it)."""
        return Op(_DUE, (run_id, version, event, clock.now_ms()), fence=fence)

    def done(self, run_id: str, version: int, event: str, error: str | None) -> None:
        """The hooks ran (``error`` says how the first failing one failed) (deferred)."""
        self._journal.writer.defer(Op(_DONE, (clock.now_ms(), error, run_id, version, event)))

    def owed(self, flow_run_id: str) -> dict[str, list[tuple[int, str]]]:
        """Hooks still due for a flow run and its task runs: run id -> [(version, event)]."""
        rows = self._journal.query(
            "SELECT run_id, version, event FROM hooks_due WHERE done_ms IS NULL "
            "AND (run_id = ? OR (run_id > ? AND run_id < ?)) ORDER BY run_id, version",
            (flow_run_id, flow_run_id + ".", flow_run_id + "/"),
        )
        owed: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for row in rows:
            owed[row["run_id"]].append((row["version"], row["event"]))
        return dict(owed)
