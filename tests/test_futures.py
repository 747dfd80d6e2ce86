"""Submitted tasks: futures, map, deterministic identities, and a resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from persevere import (
    PersevereFuture,
    ThreadPoolTaskRunner,
    allow_failure,
    as_completed,
    flow,
    task,
    unmapped,
    wait,
)
from persevere.exceptions import LeaseLost
from persevere.journal import Journal
from persevere.statemachine import State

from .conftest import FLOWS, cli_env, run_cli, wait_for


@task
def double(x: int) -> int:
    return 2 * x


@task
def slow(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def test_submit_returns_a_future_with_result_state_and_wait(journal: Journal) -> None:
    @flow
    def one() -> list[object]:
        future = double.submit(21)
        assert isinstance(future, PersevereFuture)
        future.wait()
        return [future.result(), future.state.name, future.task_run_id is not None]

    assert one() == [42, "Completed", True]


def test_map_with_unmapped_and_as_completed(journal: Journal) -> None:
    @task
    def scale(x: int, factor: int) -> int:
        return x * factor

    @flow
    def many() -> tuple[list[int], list[int]]:
        futures = scale.map([1, 2, 3], unmapped(10))
        wait(futures)
        return futures.result(), sorted(f.result() for f in as_completed(futures))

    assert many() == ([10, 20, 30], [10, 20, 30])


def test_map_by_keyword_and_position_mixed(journal: Journal) -> None:
    @task
    def line(a: int, b: int, c: str = "") -> str:
        return f"{a}{b}{c}"

    @flow
    def mixed() -> list[list[str]]:
        return [
            line.map(a=[1, 2], b=unmapped(0)).result(),
            line.map([1, 2], b=[3, 4], c=unmapped("!")).result(),
            line.map(unmapped(5), [6, 7, 8]).result(),
            line.map([], b=[]).result(),
        ]

    assert mixed() == [["10", "20"], ["13!", "24!"], ["56", "57", "58"], []]


def test_map_refuses_iterables_of_different_lengths(journal: Journal) -> None:
    @flow
    def uneven() -> None:
        double.map([1, 2], [3])

    with pytest.raises(ValueError, match="lengths"):
        uneven()


def test_identities_follow_program_order_not_completion_order(journal: Journal) -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=5))
    def racing() -> list[int]:
        # the first submitted finishes last
        futures = [slow.submit(i, 0.05 * (5 - i)) for i in range(5)]
        return [f.result() for f in futures]

    assert racing() == [0, 1, 2, 3, 4]
    [run] = journal.list_flow_runs()
    tasks = journal.task_runs(run.id)
    assert [(t.position, t.dynamic_key) for t in tasks] == [(i, i) for i in range(5)]
    assert [journal.load_task_result(t) for t in tasks] == [0, 1, 2, 3, 4]
    assert tasks[0].ended_ms >= tasks[4].ended_ms  # they did finish the other way round


def test_futures_as_inputs_and_failed_upstreams(journal: Journal) -> None:
    ran: list[object] = []

    @task
    def broken() -> int:
        raise ValueError("upstream broke")

    @task
    def consume(x: object) -> str:
        ran.append(x)
        return type(x).__name__

    @flow
    def chain() -> list[str]:
        good = double.submit(5)
        bad = broken.submit()
        blocked = consume.submit(bad)
        tolerant = consume.submit(allow_failure(bad))
        after = consume.submit(good, wait_for=[good])
        return [
            consume.submit(good).result(),
            blocked.state.name if blocked.wait() is None else "",
            tolerant.result(),
            after.result(),
        ]

    assert chain() == ["int", "Failed", "ValueError", "int"]
    assert 10 in ran and not any(isinstance(x, int) and x != 10 for x in ran)
    [run] = journal.list_flow_runs()
    assert Counter(t.task_key for t in journal.task_runs(run.id)) == Counter(
        double=1,
        broken=1,
        consume=3,  # the blocked call never became a task run
    )


def test_the_flow_waits_for_every_submitted_call(journal: Journal) -> None:
    @flow
    def fire_and_forget() -> str:
        slow.submit(1, 0.2)
        return "returned"

    assert fire_and_forget() == "returned"
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert t.state_name == "Completed" and t.ended_ms <= run.ended_ms


def test_a_future_is_done_only_once_its_completed_state_is_committed(
    journal: Journal, db: Path
) -> None:
    seen: list[tuple[object, ...]] = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def watched() -> None:
        for future in as_completed(double.map(range(100))):
            with sqlite3.connect(db) as other:  # sees only what was committed
                row = other.execute(
                    "SELECT state_name, result FROM task_runs WHERE id = ?", (future.task_run_id,)
                ).fetchone()
            seen.append((*row, future.result()))

    watched()
    assert len(seen) == 100
    assert all(row[0] == "Completed" and row[1] == str(row[2]).encode() for row in seen)


def test_a_submitted_task_whose_run_was_taken_over_ends_failed(journal: Journal, db: Path) -> None:
    @task
    def step() -> int:
        other = sqlite3.connect(db)  # another process takes the run over
        other.execute("UPDATE flow_runs SET lease_token = 'theirs'")
        other.commit()
        other.close()
        return 1

    states: list[State] = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def stolen() -> None:
        future = step.submit()
        future.wait()
        states.append(future.state)

    with pytest.raises(LeaseLost):
        stolen()
    assert states[0].is_failed() and isinstance(states[0].data, LeaseLost)
    [run] = journal.list_flow_runs()
    assert journal.task_runs(run.id) == []  # nothing written for the new owner's run


def test_submit_outside_a_flow_runs_at_once() -> None:
    future = double.submit(4)
    assert future.state.is_completed() and future.result() == 8


def test_a_killed_map_resumes_replaying_what_completed(db: Path, tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    env = {"MAPPER_SIDE_FILE": str(side), "MAPPER_PAUSE": "0.02"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "persevere", "run", f"{FLOWS / 'mapper.py'}:mapper"],
        env=cli_env(db, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 80)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    first = {int(line.split()[0]): line.split()[1] for line in side.read_text().splitlines()}
    [run] = json.loads(run_cli(db, "runs", "ls", "--json").stdout)
    done = run_cli(db, "runs", "resume", run["id"], **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sum(i * i for i in range(200))
    lines = [line.split() for line in side.read_text().splitlines()]
    ran = Counter(int(i) for i, _ in lines)
    assert set(ran) == set(range(200))
    assert sum(1 for c in ran.values() if c > 1) <= 4  # at most the ones in flight
    for i, key in lines:  # the same identity for the same call, before and after
        assert key == f"{run['id']}:square:{i}"
        if int(i) in first:
            assert first[int(i)] == key
    shown = json.loads(run_cli(db, "runs", "show", run["id"], "--json").stdout)
    assert [(t["position"], t["dynamic_key"]) for t in shown["task_runs"]] == [
        (i, i) for i in range(200)
    ]
