"""Durable tasks per second on the thread runner, against raw SQLite group commit.

Prints:
- persevere: a flow that maps N no-op tasks over the thread runner, as
  durable task runs per second (each journaled Pending, Running, Completed
  with its result, as in a sequential flow);
- raw SQLite: the same rows (a task run row and its three history rows)
  inserted 100 task runs per transaction, WAL, synchronous=NORMAL, on the same
  disk in the same run: the ceiling for a writer that group-commits;
- their ratio.

Targets (the issue): >= 10,000 durable tasks/s on 2 cores, goal 20,000.
Not a test: nothing here fails on speed; each figure is the best of a few rounds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path


def raw_group_commit(path: Path, n: int, per_commit: int = 100) -> float:
    """Task runs per second written by raw SQLite, ``per_commit`` per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE task_runs (id TEXT PRIMARY KEY, state TEXT, version INTEGER, "
        "result BLOB) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE states (run_id TEXT, version INTEGER, state TEXT, ts INTEGER, "
        "PRIMARY KEY (run_id, version)) WITHOUT ROWID"
    )
    start = time.perf_counter()
    for first in range(0, n, per_commit):
        conn.execute("BEGIN IMMEDIATE")
        for i in range(first, min(first + per_commit, n)):
            run_id = f"run.{i:08d}"
            conn.execute("INSERT INTO task_runs VALUES (?, 'COMPLETED', 3, ?)", (run_id, b"1"))
            conn.execute(
                "INSERT INTO states VALUES (?, 1, 'PENDING', 0), (?, 2, 'RUNNING', 0), "
                "(?, 3, 'COMPLETED', 0)",
                (run_id, run_id, run_id),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def persevere_mapped(n: int, workers: int) -> float:
    """Durable task runs per second for a flow mapping ``n`` no-op tasks."""
    from persevere import ThreadPoolTaskRunner, flow, task

    @task
    def noop(i: int) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def mapped(n: int) -> int:
        return len(noop.map(range(n)).result())

    mapped(10)  # warm up: open the journal, import what is imported lazily
    start = time.perf_counter()
    mapped(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="tasks per flow (default 10,000)")
    parser.add_argument("--workers", type=int, default=4, help="threads (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="persevere-bench-") as tmp:
        os.environ.update(PERSEVERE_HOME=str(Path(tmp) / "home"), PERSEVERE_LOG_LEVEL="WARNING")
        os.environ.pop("PERSEVERE_DB", None)
        raw, ours = [], []
        for i in range(options.rounds):
            raw.append(raw_group_commit(Path(tmp) / f"raw-{i}.db", options.n))
            ours.append(persevere_mapped(options.n, options.workers))
        print(f"raw SQLite, 100 task runs per commit:        {max(raw):9,.0f} task runs/s")
        print(
            f"persevere, {options.n:,} mapped tasks, {options.workers} threads: "
            f"{max(ours):9,.0f} task runs/s"
        )
        print(f"ratio persevere / raw:                        {max(ours) / max(raw):9.3f}")
        print("target >= 10,000 task runs/s (goal 20,000)")


if __name__ == "__main__":
    main()
