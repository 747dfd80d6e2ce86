"""Concurrency limits across real processes: never more than the limit, never a leaked slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from persevere import ConcurrencySlotTimeout, concurrency
from persevere.journal import close_all, open_journal

from .conftest import FLOWS, cli_env, most_at_once, run_cli, wait_for

LIMITED = f"{FLOWS / 'limited.py'}:limited"


def start_flow(db: Path, *params: str) -> subprocess.Popen[str]:
    args = [a for p in params for a in ("-p", p)]
    return subprocess.Popen(
        [sys.executable, "-m", "persevere", "run", LIMITED, *args],
        env=cli_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def inspect(db: Path) -> dict[str, Any]:
    done = run_cli(db, "concurrency-limit", "inspect", "db", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_limit_of_two_holds_across_three_flow_processes(db: Path) -> None:
    assert run_cli(db, "concurrency-limit", "create", "db", "2").returncode == 0
    procs = [start_flow(db, f"n={n}", "seconds=0.2") for n in (7, 7, 6)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    journal = open_journal(db)
    runs = journal.list_flow_runs()
    tasks = [t for r in runs for t in journal.task_runs(r.id)]
    assert len(runs) == 3 and len(tasks) == 20
    assert all(t.state_name == "Completed" and t.attempt == 1 for t in tasks)
    intervals = [(t.started_ms, t.ended_ms) for t in tasks]
    assert all(end - start >= 200 for start, end in intervals)
    assert most_at_once(intervals) <= 2
    # Some waited, and each of those says so in its history.
    waited = [
        t for t in tasks if any(h.name == "AwaitingConcurrencySlot" for h in journal.history(t.id))
    ]
    assert waited
    for t in waited:
        names = [h.name for h in journal.history(t.id)]
        assert names == ["Pending", "AwaitingConcurrencySlot", "Pending", "Running", "Completed"]
    assert inspect(db)["holders"] == [] and inspect(db)["waiters"] == []


def test_a_holder_killed_with_sigkill_does_not_keep_its_slot(db: Path) -> None:
    assert run_cli(db, "concurrency-limit", "create", "db", "1").returncode == 0
    holder = start_flow(db, "n=1", "seconds=120")
    waiter = None
    try:
        wait_for(lambda: len(inspect(db)["holders"]) == 1, timeout=30)
        [held] = inspect(db)["holders"]
        assert held["task"] == "hold-0" and held["owner"].endswith(f":{holder.pid}")
        waiter = start_flow(db, "n=2", "seconds=0.05")
        wait_for(lambda: len(inspect(db)["waiters"]) >= 1, timeout=30)
        assert waiter.poll() is None  # it waits while the slot is held
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=30)
        out, err = waiter.communicate(timeout=60)  # freed at once on this host
        assert waiter.returncode == 0, err
        assert json.loads(out) == 0 + 1
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    shown = inspect(db)
    assert shown["holders"] == [] and shown["active_slots"] == 0
    states = {r["state_name"] for r in json.loads(run_cli(db, "runs", "ls", "--json").stdout)}
    assert states == {"Completed", "Crashed"}


def test_a_slot_held_by_plain_code_is_freed_when_its_process_dies(db: Path) -> None:
    assert run_cli(db, "concurrency-limit", "create", "db", "1").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "limited.py"), "120"],
        env=cli_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        with (
            pytest.raises(ConcurrencySlotTimeout, match="'db'"),
            concurrency("db", timeout_seconds=0.3),
        ):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        with concurrency("db", timeout_seconds=10):
            assert len(inspect(db)["holders"]) == 1  # ours
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    close_all()
    assert inspect(db)["holders"] == []
