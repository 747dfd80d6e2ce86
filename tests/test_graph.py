"""The task run graph: each task run records the task runs its inputs came from."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from persevere import allow_failure, flow, task
from persevere.journal import Journal, close_all, open_journal
from persevere.journal.schema import SCHEMA_VERSION

from .conftest import FLOWS, run_cli
from .flows.graph import diamond, number


@task
def broken() -> int:
    raise ValueError("no")


def upstream_positions(journal: Journal, run_id: str) -> dict[int, list[int]]:
    return {
        t.position: [int(u.rsplit(".", 1)[1]) for u in t.upstream_ids]
        for t in journal.task_runs(run_id)
    }


def test_each_task_run_records_where_its_inputs_came_from(journal: Journal) -> None:
    assert diamond() == [1 + 1 + 4, 1 + 1, 1 + 1, 5, 7]
    [run] = journal.list_flow_runs()
    assert upstream_positions(journal, run.id) == {
        0: [],
        1: [0],
        2: [1],
        3: [0, 1],
        4: [0, 1, 3],
        5: [0],
        6: [0],
        7: [1],
        8: [6, 7],
        9: [],
        10: [9],
        11: [],
    }


def test_a_failed_upstream_wrapped_in_allow_failure_is_recorded(journal: Journal) -> None:
    @task
    def describe(x: object) -> str:
        return type(x).__name__

    @flow
    def tolerant() -> str:
        bad = broken.submit()
        return describe(allow_failure(bad))

    assert tolerant() == "ValueError"
    [run] = journal.list_flow_runs()
    assert upstream_positions(journal, run.id) == {0: [], 1: [0]}


def test_runs_show_prints_the_graph(db: Path, journal: Journal) -> None:
    diamond()
    [run] = journal.list_flow_runs()
    close_all()
    doc = json.loads(run_cli(db, "runs", "show", run.id, "--json").stdout)
    assert doc["task_runs"][4]["upstream"] == [f"{run.id}.{p:08d}" for p in (0, 1, 3)]
    text = run_cli(db, "runs", "show", run.id).stdout.splitlines()
    header = next(line for line in text if line.startswith("#"))
    assert "INPUTS FROM" in header
    row = next(line for line in text if line.startswith("4 "))
    assert "#0,#1,#3" in row.split()
    dot = run_cli(db, "runs", "show", run.id, "--dot")
    assert dot.returncode == 0, dot.stderr
    lines = dot.stdout.splitlines()
    assert lines[0] == f'digraph "{run.id}" {{' and lines[-1] == "}"
    edges = {line.strip() for line in lines if "->" in line}
    assert f'"{run.id}.00000006" -> "{run.id}.00000008";' in edges
    assert len(edges) == 13  # one per recorded input
    assert sum(1 for line in lines if "[label=" in line) == 12


def test_a_retry_from_a_task_points_the_copies_at_the_copies(db: Path) -> None:
    first = run_cli(db, "run", f"{FLOWS / 'graph.py'}:diamond")
    assert first.returncode == 0, first.stderr
    [run] = open_journal(db).list_flow_runs()
    close_all()
    # Retrying from #8 copies #0-#7 into a new run; their edges must stay inside it.
    done = run_cli(db, "runs", "retry", run.id, "--from-task", "total-2")
    assert done.returncode == 0, done.stderr
    journal = open_journal(db)
    new = next(r for r in journal.list_flow_runs() if r.id != run.id)
    copies = {t.position: t.upstream_ids for t in journal.task_runs(new.id)}
    assert copies[4] == [f"{new.id}.{p:08d}" for p in (0, 1, 3)]
    assert copies[7] == [f"{new.id}.00000001"]


def test_a_version_1_database_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    from persevere.journal import schema

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    db.table("schema_version").create({"version": int})
    db.table("schema_version").insert({"version": 1})
    schema._v1(db)
    conn.execute(
        "INSERT INTO flow_runs (id, flow_name, state_type, state_name, version, created_ms) "
        "VALUES ('r1', 'old', 'COMPLETED', 'Completed', 3, 1)"
    )
    conn.execute(
        "INSERT INTO task_runs (id, flow_run_id, position, task_key, dynamic_key, state_type, "
        "state_name, version, created_ms) VALUES ('r1.00000000', 'r1', 0, 't', 0, 'COMPLETED', "
        "'Completed', 3, 1)"
    )
    conn.close()
    journal = open_journal(path)
    assert journal.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION
    [old] = journal.task_runs("r1")
    assert old.task_key == "t" and old.upstream_ids == []
    assert journal.query("SELECT count(*) FROM concurrency_limits")[0][0] == 0
    # v3: deployments, work queues, workers; the old run is on no queue
    run = journal.get_flow_run("r1")
    assert (run.state_name, run.auto_resumes, run.work_queue, run.worker_name) == (
        "Completed", 0, None, None
    )  # fmt: skip
    assert journal.deployments.all() == [] and journal.workers.all() == []


def test_futures_inside_containers_are_resolved_and_other_containers_kept(
    journal: Journal,
) -> None:
    import collections

    Point = collections.namedtuple("Point", "x y")
    plain = collections.OrderedDict(k=1)

    @task
    def echo(*values: object) -> list[object]:
        return [[type(v).__name__, list(v) if isinstance(v, tuple) else sorted(v)] for v in values]

    @flow
    def shapes() -> list[object]:
        a = number.submit(1)
        return echo(Point(1, 2), Point(a, 3), (a, 2), {a}, plain)

    assert shapes() == [
        ["Point", [1, 2]], ["Point", [1, 3]], ["tuple", [1, 2]], ["set", [1]],
        ["OrderedDict", ["k"]],
    ]  # fmt: skip
