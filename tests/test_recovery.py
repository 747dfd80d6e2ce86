"""Declaring runs Crashed when their owner is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from persevere.journal import Journal
from persevere.statemachine import Owner, StateType
from persevere.worker import reap, refresh
from persevere.worker.owners import process_start, this_process


def dead_local_owner() -> Owner:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid) or "?"
    child.wait(timeout=30)
    return Owner(this_process().host, child.pid, started)


def running_run(journal: Journal, owner: Owner) -> str:
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    run = journal.claim_flow_run(run, owner, "token")
    journal.start_task_run(run.id, 0, "t", 0, "task")
    journal.flush()
    journal.writer.release(run.id)  # from now on, as if another process held it
    return run.id


def test_a_run_whose_local_owner_died_is_crashed_with_its_task_runs(journal: Journal) -> None:
    run_id = running_run(journal, dead_local_owner())
    [crashed] = reap(journal)
    assert crashed.id == run_id and crashed.state_name == "Crashed"
    assert "is gone" in crashed.state_message
    [t] = journal.task_runs(run_id)
    assert t.state_type is StateType.CRASHED
    assert reap(journal) == []  # nothing left to reap


def test_a_run_of_a_live_local_owner_is_left_alone(journal: Journal) -> None:
    me = this_process()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = Owner(me.host, sleeper.pid, process_start(sleeper.pid) or "?")
        run_id = running_run(journal, owner)
        assert reap(journal) == []
        assert refresh(journal, journal.get_flow_run(run_id)).state_type is StateType.RUNNING
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    assert [r.id for r in reap(journal)] == [run_id]


def test_a_remote_owner_is_crashed_only_when_its_lease_expired(journal: Journal, db: Path) -> None:
    import sqlite3

    run_id = running_run(journal, Owner("another-host", 1, "boot:1"))
    assert reap(journal) == []
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE flow_runs SET lease_expires_ms = 1 WHERE id = ?", (run_id,))
    [crashed] = reap(journal)
    assert crashed.id == run_id
