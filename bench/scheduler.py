"""What a scheduler pass costs: idle, and per run it makes.

A worker runs one scheduler pass every poll (1 s by default), so an idle pass
must be cheap: it reads every active schedule with two counts in one query,
and a schedule's next time after its cursor, remembered while the cursor
stays; it takes no write lock. Prints, measured in one run on one disk:

- a raw SQLite commit (UPDATE + INSERT, as bench/overhead.py), the yardstick;
- an idle pass over S schedules (a worker's scheduler, which remembers the
  next times; and a fresh one, which computes them all: `Harness.tick`);
- a pass that makes runs: per run made (a run row and its first history row,
  one transaction per schedule);
- catch-up of a per-minute cron after a year down (policy latest).

The clock is a test clock, so "a day later" costs nothing. Not a test:
nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from persevere import clock
from persevere.journal import Journal
from persevere.settings import Settings
from persevere.testing import TestClock
from persevere.worker import scheduling
from persevere.worker.scheduler import Scheduler
from persevere.worker.scheduling import ScheduleSpec


def raw_commit_seconds(path: Path, n: int) -> float:
    """Seconds per raw transaction: UPDATE by primary key + INSERT history, committed."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, state TEXT, version INTEGER)")
    conn.execute(
        "CREATE TABLE history (run_id TEXT, version INTEGER, PRIMARY KEY (run_id, version))"
    )
    conn.execute("INSERT INTO runs VALUES ('r', 'PENDING', 0)")
    start = time.perf_counter()
    for version in range(1, n + 1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET version = ? WHERE id = 'r'", (version,))
        conn.execute("INSERT INTO history VALUES ('r', ?)", (version,))
        conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter() - start) / n


def journal_with(folder: Path, schedules: int) -> Journal:
    """A database with one deployment and ``schedules`` schedules: crons, intervals, rrules."""
    journal = Journal(folder / f"bench-{schedules}.db", Settings.from_env())
    deployment = journal.deployments.put(
        flow_name="bench", name="d", entrypoint="/bench.py:bench", parameters={}, signature={}
    )
    kinds = [
        ("cron", "*/5 * * * *"),
        ("cron", "0 7 * * 1-5"),
        ("interval", "1m"),
        ("interval", "1h"),
        ("rrule", "FREQ=WEEKLY;BYDAY=MO,WE"),
    ]
    for i in range(schedules):
        kind, expression = kinds[i % len(kinds)]
        spec = ScheduleSpec(kind, expression, timezone="Europe/Berlin")
        scheduling.add(journal, deployment, spec)
    return journal


def add_history(journal: Journal, n: int) -> None:
    """``n`` completed runs of the schedules, at past times: a long life's worth."""
    ids = [r[0] for r in journal.query("SELECT id FROM schedules")]
    rows = [(f"h{i:012d}", ids[i % len(ids)], 1_700_000_000_000 + i * 60_000) for i in range(n)]
    journal.writer.transaction(
        lambda conn: conn.executemany(
            "INSERT INTO flow_runs (id, flow_name, state_type, state_name, version, created_ms, "
            "schedule_id, schedule_ms, scheduled_ms, work_queue, run_count) "
            "VALUES (?1, 'bench', 'COMPLETED', 'Completed', 4, ?3, ?2, ?3, ?3, 'default', 1)",
            rows,
        )
    )


def per_pass(scheduler_of: Callable[[], Scheduler], rounds: int, test_clock: TestClock) -> float:
    """Median seconds per idle pass; the clock moves 1 ms per pass."""
    times = []
    for _ in range(rounds):
        scheduler = scheduler_of()
        test_clock.advance(seconds=0.001)
        start = time.perf_counter()
        lines = scheduler.tick()
        times.append(time.perf_counter() - start)
        assert lines == [], lines  # idle: nothing made, nothing late
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--history", type=int, default=100_000)
    args = parser.parse_args()
    test_clock = TestClock("2026-03-02T12:00:30+00:00")
    clock.use(test_clock)
    with tempfile.TemporaryDirectory(prefix="persevere-bench-") as name:
        folder = Path(name)
        raw = min(raw_commit_seconds(folder / f"raw{i}.db", 2000) for i in range(3))
        print(f"raw SQLite commit (UPDATE + INSERT):     {raw * 1e6:8.1f} µs")
        for count in args.schedules:
            journal = journal_with(folder, count)
            worker_scheduler = Scheduler(journal)
            start = time.perf_counter()
            worker_scheduler.tick()  # makes the runs ahead of time
            made = journal.query("SELECT count(*) FROM flow_runs")[0][0]
            making = time.perf_counter() - start
            each = making / made
            print(f"{count} schedules: first pass made {made} runs in {making * 1e3:.1f} ms: "
                  f"{each * 1e6:.1f} µs per run made ({each / raw:.1f} commits)")  # fmt: skip
            idle = per_pass(lambda s=worker_scheduler: s, args.rounds, test_clock)
            fresh = per_pass(lambda j=journal: Scheduler(j), max(20, args.rounds // 10), test_clock)
            per = idle / count * 1e6
            print(f"  idle pass, a worker's scheduler:         {idle * 1e6:8.1f} µs "
                  f"({per:.1f} µs per schedule, {idle / raw:.1f} commits)")  # fmt: skip
            print(f"  idle pass, a fresh scheduler (no memory): {fresh * 1e6:8.1f} µs "
                  f"({fresh / count * 1e6:.1f} µs per schedule)")  # fmt: skip
            add_history(journal, args.history)
            idle = per_pass(lambda s=worker_scheduler: s, args.rounds, test_clock)
            print(f"  idle pass with {args.history} finished runs of theirs in the journal: "
                  f"{idle * 1e6:.1f} µs")  # fmt: skip
            journal.close()
        journal = Journal(folder / "year.db", Settings.from_env())
        deployment = journal.deployments.put(
            flow_name="bench", name="d", entrypoint="/bench.py:bench", parameters={}, signature={}
        )
        scheduling.add(journal, deployment, ScheduleSpec("cron", "* * * * *"))
        test_clock.advance(days=365)
        start = time.perf_counter()
        Scheduler(journal).tick()
        year = time.perf_counter() - start
        print(f"a per-minute cron down for a year, catch-up latest: {year * 1e3:.1f} ms")
        journal.close()


if __name__ == "__main__":
    main()
