"""What events and automations cost: an emitted event, an idle pass, evaluation.

Prints, measured in one run on one disk:

- a raw SQLite commit (UPDATE + INSERT, as bench/overhead.py), the yardstick;
- `emit` of one event (durable: its own transaction), per event;
- an idle evaluator pass with A automations (nothing new: reads, no write lock);
- a pass that reads a backlog of E events, most not of interest (task-run
  events), some matching: per event read, with A automations;
- a firing with a notify action, from the event to the action done.

The clock is a test clock. Not a test: nothing here fails on speed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from scheduler import raw_commit_seconds  # type: ignore[import-not-found]

from persevere import clock
from persevere.journal import Journal
from persevere.journal.events import TASK_EVENT
from persevere.settings import Settings
from persevere.testing import TestClock
from persevere.worker.evaluator import Evaluator

NOTE = [{"type": "notify", "message": "{{ event.payload.n }}", "level": "info"}]


def journal_in(folder: str) -> Journal:
    path = Path(folder) / "bench.db"
    settings = Settings.from_env()
    return Journal(path, Settings(**{**settings.__dict__, "database": path}))


def timed(work, rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    clock.use(TestClock("2026-11-23T06:00:00Z"))
    with tempfile.TemporaryDirectory() as folder:
        raw = raw_commit_seconds(Path(folder) / "raw.db", 2000)
        print(f"raw SQLite commit:                                {raw * 1e6:8.1f} µs")
        journal = journal_in(folder)
        n = 2000
        emitted = timed(lambda: [journal.events.emit("bench.ping", {"id": "b"}) for _ in range(n)])
        print(f"emit one event (durable), per event:              {emitted / n * 1e6:8.1f} µs"
              f"  ({emitted / n / raw:.2f} x raw)")  # fmt: skip
        for count in (10, 100):
            for i in range(len(journal.automations.all()), count):
                journal.automations.create(f"a{i}", {"match": f"bench.match.{i}"}, NOTE)
            evaluator = Evaluator(journal)
            evaluator.tick()
            idle = timed(evaluator.tick, 20)
            print(f"idle pass, {count:3d} automations:                    {idle * 1e3:8.3f} ms")
        backlog = 10_000
        task = "persevere.task-run."
        rows = [(f"x.{i:08d}/3", task + "Completed", 1, 1, f"{task}x.{i:08d}")
                for i in range(backlog)]  # fmt: skip
        journal.writer.transaction(lambda conn: conn.executemany(TASK_EVENT, rows))
        for i in range(100):
            journal.events.emit(f"bench.match.{i % 100}", {"id": "b"}, {"n": i})
        start = time.perf_counter()
        lines = Evaluator(journal).tick()
        took = time.perf_counter() - start
        fired = sum(1 for line in lines if " fired: " in line)
        print(f"pass over {backlog + 100} events (100 matching, 100 automations): "
              f"{took * 1e3:8.1f} ms, {took / (backlog + 100) * 1e6:.2f} µs per event, "
              f"{fired} firings and their actions")  # fmt: skip


if __name__ == "__main__":
    main()
