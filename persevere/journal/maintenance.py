"""Pruning old runs: their history, logs and the results nothing refers to any more.

Only runs in a final state (completed, failed, crashed, cancelled) that ended
before the cutoff are removed, with their subflow runs, task runs, history
rows and logs, in one transaction. A result is removed only when no remaining
flow run, task run, cache entry or stored parameters refer to it; its file,
if it has one, is deleted after the commit. Then the file is vacuumed so the
space goes back to the disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..statemachine import FINAL_TYPES, StateType
from .journal import Journal

_DOOMED = """
WITH RECURSIVE doomed(id) AS (
    SELECT id FROM flow_runs
    WHERE parent_flow_run_id IS NULL AND ended_ms < ? AND state_type IN ({types})
    UNION
    SELECT f.id FROM flow_runs f JOIN doomed d ON f.parent_flow_run_id = d.id
)
"""
_UNREFERENCED = """
SELECT id, path FROM results r
WHERE NOT EXISTS (SELECT 1 FROM flow_runs f WHERE f.result_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM task_runs t WHERE t.result_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM cache c WHERE c.result_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM flow_runs p WHERE instr(p.parameters, r.id) > 0)
"""


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed, and the database's size before and after."""

    flow_runs: int
    task_runs: int
    results: int
    files: int
    bytes_before: int
    bytes_after: int


def _size(journal: Journal) -> int:
    return sum(
        p.stat().st_size
        for p in (journal.path, journal.path.with_name(journal.path.name + "-wal"))
        if p.exists()
    )


def prune(
    journal: Journal, before_ms: int, state_types: Iterable[StateType] = FINAL_TYPES
) -> PruneReport:
    """Remove finished runs that ended before ``before_ms`` (see the module docstring)."""
    types = sorted({t.value for t in state_types} & {t.value for t in FINAL_TYPES})
    if not types:
        raise ValueError("only runs in a final state can be pruned")
    before = _size(journal)
    doomed = _DOOMED.format(types=", ".join("?" * len(types)))
    params = (before_ms, *types)
    conn, writer = journal.writer.conn, journal.writer
    with writer.lock:
        writer.commit()  # nothing deferred may ride along with the deletes
        conn.execute("BEGIN IMMEDIATE")
        try:
            flows = conn.execute(f"{doomed} SELECT count(*) FROM doomed", params).fetchone()[0]
            tasks = conn.execute(
                f"{doomed} SELECT count(*) FROM task_runs WHERE flow_run_id IN doomed", params
            ).fetchone()[0]
            conn.execute(f"{doomed} DELETE FROM task_runs WHERE flow_run_id IN doomed", params)
            conn.execute(
                f"{doomed} DELETE FROM states WHERE substr(run_id, 1, 32) IN doomed", params
            )
            conn.execute(f"{doomed} DELETE FROM logs WHERE flow_run_id IN doomed", params)
            conn.execute(f"{doomed} DELETE FROM flow_runs WHERE id IN doomed", params)
            unreferenced = conn.execute(_UNREFERENCED).fetchall()
            conn.executemany("DELETE FROM results WHERE id = ?", [(r[0],) for r in unreferenced])
            known = {r[0] for r in conn.execute("SELECT id FROM results WHERE path IS NOT NULL")}
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        paths = [r[1] for r in unreferenced if r[1]]
        files = journal.files.remove(paths) + journal.files.remove(journal.files.orphans(known))
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return PruneReport(flows, tasks, len(unreferenced), files, before, _size(journal))
