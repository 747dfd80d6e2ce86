"""Workers as real processes: claims, crashes resumed by themselves, cancel, stop, queues.

Each test starts `persevere worker start` processes on its own database,
makes deployment runs with the journal API, and checks the outcome from the
journal: histories, task runs, and the side files the flows in
tests/flows/workerflows.py write (one line per task body executed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from persevere.journal import FlowRun, Journal
from persevere.journal.deployments import Deployment
from persevere.statemachine import FINAL_TYPES, StateType
from persevere.worker.owners import process_start

from .conftest import FLOWS, cli_env, most_at_once, run_cli, wait_for

FLOWS_FILE = FLOWS / "workerflows.py"
SETTLED = FINAL_TYPES - {StateType.CRASHED}
HOLDING_ENDS = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED", "SCHEDULED"}


@pytest.fixture
def side(tmp_path: Path) -> Path:
    return tmp_path / "side.txt"


@pytest.fixture
def workers(db: Path, side: Path, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started workers; any still alive at the end are killed with their runs."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)  # the second: release at once
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_worker(
    started: list[subprocess.Popen[bytes]],
    db: Path,
    side: Path,
    *args: str,
    **env: str,
) -> subprocess.Popen[bytes]:
    log = open(db.parent / f"worker-{len(started)}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "persevere", "worker", "start", "--poll-seconds", "0.1", *args],
        env=cli_env(db, WORKERS_SIDE_FILE=str(side), **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    started.append(proc)
    return proc


def deploy(journal: Journal, function: str, queue: str = "default") -> Deployment:
    return journal.deployments.put(
        flow_name=function,
        name="test",
        entrypoint=f"{FLOWS_FILE}:{function}",
        parameters={},
        signature={},
        work_queue=queue,
    )


def schedule(journal: Journal, deployment: Deployment, **params: object) -> FlowRun:
    return journal.deployments.schedule_run(deployment, json.dumps(params))


def states(journal: Journal, runs: list[FlowRun]) -> list[str]:
    return [journal.get_flow_run(r.id).state_name for r in runs]


def all_final(journal: Journal, runs: list[FlowRun]) -> bool:
    """All ended for good (a Crashed run is resumed by a worker: not yet)."""
    return all(journal.get_flow_run(r.id).state_type in SETTLED for r in runs)


def check_single_holder(journal: Journal, run_id: str) -> list[str]:
    """The workers that claimed the run, in order; fails if a claim came while one held it."""
    holder: str | None = None
    claims = []
    for t in journal.history(run_id):
        if t.to_type is StateType.PENDING and t.message.startswith("claimed by worker "):
            assert holder is None, f"run {run_id} claimed by {t.message} while {holder} held it"
            holder = t.message.removeprefix("claimed by worker ")
            claims.append(holder)
        elif t.to_type.value in HOLDING_ENDS:
            holder = None
    return claims


def starts(side: Path) -> dict[str, list[int]]:
    """When each task run's body started, by task run id (and hooks, by name)."""
    found: dict[str, list[int]] = {}
    for line in side.read_text().splitlines() if side.exists() else []:
        key, ms = line.split()
        found.setdefault(key, []).append(int(ms))
    return found


def executions(side: Path) -> Counter[str]:
    return Counter({key: len(times) for key, times in starts(side).items()})


def check_replayed_not_rerun(journal: Journal, run_id: str, started: dict[str, list[int]]) -> None:
    """No task run's body started after the task run completed (a completed task is
    replayed, never executed again), and each ran at most once more per crash of its
    flow run (at-least-once for what was in flight)."""
    crashes = sum(1 for t in journal.history(run_id) if t.to_type is StateType.CRASHED)
    for task in journal.task_runs(run_id):
        assert task.state_type is StateType.COMPLETED and task.ended_ms is not None
        times = started[task.id]
        assert 1 <= len(times) <= 1 + crashes, (task.id, times, crashes)
        assert max(times) <= task.ended_ms, (task.id, times, task.ended_ms)


def test_two_workers_hundred_runs_one_worker_killed_with_its_runs(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    deployment = deploy(journal, "short")
    runs = [schedule(journal, deployment, n=3, seconds=0.02) for _ in range(100)]
    a = start_worker(workers, db, side, "--name", "a", "--limit", "4")
    start_worker(workers, db, side, "--name", "b", "--limit", "4")

    def done() -> int:
        return sum(s == "Completed" for s in states(journal, runs))

    wait_for(lambda: done() >= 25, timeout=90)
    # Worker a's host goes: the worker and every run process it started.
    a.kill()
    a.wait()
    for run in journal.workers.held_by("a"):
        if run.owner_pid is not None and run.owner_pid != a.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.owner_pid, signal.SIGKILL)
    assert done() < 100
    wait_for(lambda: all_final(journal, runs), timeout=120)

    assert states(journal, runs) == ["Completed"] * 100
    assert all(journal.load_result(journal.get_flow_run(r.id).result_id) == 30 for r in runs)
    started = starts(side)
    claimed_by: Counter[str] = Counter()
    for run in runs:
        claims = check_single_holder(journal, run.id)
        claimed_by.update(set(claims))
        check_replayed_not_rerun(journal, run.id, started)
    assert claimed_by["a"] > 0 and claimed_by["b"] > 0
    resumed = [
        r for r in runs if any("resumed automatically" in t.message for t in journal.history(r.id))
    ]
    assert resumed, "worker b resumed none of worker a's runs"


def test_a_run_whose_process_is_killed_is_crashed_and_resumed_by_itself(
    db: Path, journal: Journal, side: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = schedule(journal, deploy(journal, "killed_once"))
    start_worker(workers, db, side, WORKERS_KILL_FILE=str(tmp_path / "killed"))
    wait_for(lambda: all_final(journal, [run]), timeout=60)
    done = journal.get_flow_run(run.id)
    assert done.state_name == "Completed" and journal.load_result(done.result_id) == 30
    messages = [t.message for t in journal.history(run.id)]
    assert "its process exited (signal SIGKILL)" in messages
    assert "resumed automatically after a crash (1 of 3)" in messages
    ran = executions(side)
    step_0, die_once, step_1 = journal.task_runs(run.id)
    assert ran[step_0.id] == 1  # replayed on the resume, not executed again
    assert ran[die_once.id] == 2  # in flight at the kill: executed again
    assert ran[step_1.id] == 1
    assert done.auto_resumes == 1


def test_a_run_that_crashes_every_time_stops_after_its_automatic_resumes(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = schedule(journal, deploy(journal, "always_crashes"))  # max_auto_resumes=2
    start_worker(workers, db, side)

    def given_up() -> bool:
        now = journal.get_flow_run(run.id)
        return now.state_name == "Crashed" and now.auto_resumes == 2

    wait_for(given_up, timeout=60)
    deadline = time.monotonic() + 1.0  # ten more worker polls: it stays Crashed
    while time.monotonic() < deadline:
        assert journal.get_flow_run(run.id).state_name == "Crashed"
        time.sleep(0.1)
    crashes = [t for t in journal.history(run.id) if t.to_type is StateType.CRASHED]
    assert len(crashes) == 3  # the first execution and two automatic resumes
    [step] = journal.task_runs(run.id)
    assert executions(side)[step.id] == 1


def test_cancel_kills_the_runs_process_group_and_fires_its_hook(
    db: Path, journal: Journal, side: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    pid_file = tmp_path / "shell.pid"
    run = schedule(journal, deploy(journal, "sleeper"))
    start_worker(workers, db, side, "--kill-grace-seconds", "5", WORKERS_PID_FILE=str(pid_file))
    wait_for(pid_file.exists, timeout=60)
    wait_for(lambda: pid_file.read_text().strip(), timeout=5)
    shell = int(pid_file.read_text())
    assert process_start(shell) is not None
    started = time.monotonic()
    done = run_cli(db, "runs", "cancel", run.id, "--grace-seconds", "5")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: process_start(shell) is None, timeout=5)
    assert time.monotonic() - started < 10
    ended = journal.get_flow_run(run.id)
    assert ended.state_name == "Cancelled"
    assert [t.name for t in journal.history(run.id)][-2:] == ["Cancelling", "Cancelled"]
    assert "on_cancellation" in side.read_text().split()
    assert [t.state_name for t in journal.task_runs(run.id)] == ["Completed", "Cancelled"]


def test_cancel_of_a_scheduled_run_is_at_once_and_it_never_runs(
    db: Path, journal: Journal, side: Path
) -> None:
    run = schedule(journal, deploy(journal, "short"))
    done = run_cli(db, "runs", "cancel", run.id)
    assert done.returncode == 0, done.stderr
    assert journal.get_flow_run(run.id).state_name == "Cancelled"
    again = run_cli(db, "runs", "cancel", run.id)
    assert again.returncode == 2 and "nothing to cancel" in again.stderr
    assert "Traceback" not in again.stderr


def test_sigterm_to_a_worker_releases_its_runs_to_another_worker(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = schedule(journal, deploy(journal, "held"))
    a = start_worker(
        workers,
        db,
        side,
        "--name",
        "a",
        "--grace-seconds",
        "0.3",
        "--kill-grace-seconds",
        "2",
        WORKERS_HOLD_SECONDS="120",
    )
    wait_for(lambda: len(executions(side)) == 2, timeout=60)  # step, then hold started
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=15) == 0
    released = journal.get_flow_run(run.id)
    assert released.state_name == "Scheduled"
    assert "released by worker a" in released.state_message
    assert released.auto_resumes == 0
    start_worker(workers, db, side, "--name", "b", WORKERS_HOLD_SECONDS="0")
    wait_for(lambda: all_final(journal, [run]), timeout=60)
    assert journal.get_flow_run(run.id).state_name == "Completed"
    assert check_single_holder(journal, run.id) == ["a", "b"]
    step, hold = journal.task_runs(run.id)
    ran = executions(side)
    assert ran[step.id] == 1 and ran[hold.id] == 2


def test_sigterm_to_a_worker_lets_runs_finish_within_the_grace_period(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    run = schedule(journal, deploy(journal, "held"))
    a = start_worker(workers, db, side, "--grace-seconds", "30", WORKERS_HOLD_SECONDS="1")
    wait_for(lambda: len(executions(side)) == 2, timeout=60)
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=30) == 0
    assert journal.get_flow_run(run.id).state_name == "Completed"
    assert [w.stopped_ms is not None for w in journal.workers.all()] == [True]


def test_queue_limit_holds_across_workers_and_a_paused_queue_waits(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    journal.deployments.create_queue("narrow", limit=1)
    journal.deployments.create_queue("held")
    journal.deployments.pause_queue("held")
    narrow = deploy(journal, "short", queue="narrow")
    runs = [schedule(journal, narrow, n=1, seconds=0.3) for _ in range(4)]
    waiting = schedule(journal, deploy(journal, "held", queue="held"))
    for name in ("a", "b"):
        start_worker(workers, db, side, "--name", name, "--limit", "4")
    wait_for(lambda: all_final(journal, runs), timeout=60)
    assert states(journal, runs) == ["Completed"] * 4
    spans = []
    for run in runs:
        history = journal.history(run.id)
        claimed = next(t.ts_ms for t in history if t.to_type is StateType.PENDING)
        spans.append((claimed, history[-1].ts_ms))
    assert most_at_once(spans) == 1
    assert journal.get_flow_run(waiting.id).state_name == "Scheduled"  # its queue is paused
    journal.deployments.pause_queue("held", paused=False)
    wait_for(lambda: all_final(journal, [waiting]), timeout=60)
    assert journal.get_flow_run(waiting.id).state_name == "Completed"


def test_workers_ls_shows_live_workers(
    db: Path, journal: Journal, side: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    proc = start_worker(workers, db, side, "--name", "w1", "--queue", "default", "--limit", "2")
    wait_for(lambda: journal.workers.get("w1") is not None, timeout=30)
    listing = run_cli(db, "workers", "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert row["name"] == "w1" and row["pid"] == proc.pid and row["queues"] == ["default"]
    assert row["limit"] == 2 and row["status"] == "live"
    taken = run_cli(db, "worker", "start", "--name", "w1", timeout=30)
    assert taken.returncode == 2 and "is running" in taken.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert json.loads(run_cli(db, "workers", "ls", "--json").stdout) == []
    shown = json.loads(run_cli(db, "workers", "ls", "--all", "--json").stdout)
    assert [w["status"] for w in shown] == ["stopped"]
    bad = run_cli(db, "worker", "start", "--limit", "0", timeout=30)
    assert bad.returncode == 2 and "--limit" in bad.stderr


def test_cancel_of_a_foreground_run_stops_the_shell_commands_it_started(
    db: Path, journal: Journal, side: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "shell.pid"
    proc = subprocess.Popen(  # in the test's process group, as a script would start it
        [sys.executable, "-m", "persevere", "run", f"{FLOWS_FILE}:sleeper"],
        env=cli_env(db, WORKERS_SIDE_FILE=str(side), WORKERS_PID_FILE=str(pid_file)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
        shell = int(pid_file.read_text())
        [run] = journal.list_flow_runs()
        done = run_cli(db, "runs", "cancel", run.id, "--grace-seconds", "5")
        assert done.returncode == 0, done.stderr
        assert proc.wait(timeout=15) == 143
        wait_for(lambda: process_start(shell) is None, timeout=5)
        assert journal.get_flow_run(run.id).state_name == "Cancelled"
        assert "on_cancellation" in side.read_text().split()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_does_not_crash_a_run_another_worker_took_over(
    db: Path, journal: Journal, side: Path
) -> None:
    from persevere.journal import new_id
    from persevere.statemachine import Owner
    from persevere.worker.owners import this_process
    from persevere.worker.supervisor import Child, Worker

    run = schedule(journal, deploy(journal, "short"))
    first = new_id()
    claimed = journal.workers.claim("w1", [], this_process(), first)
    assert claimed is not None and claimed.id == run.id
    crashed = journal.mark_crashed(claimed, "its process is gone")  # w1 stalled, say
    journal.workers.reschedule(crashed, "resumed", automatic=True)
    other = Owner("elsewhere", 4242, "x")
    retaken = journal.workers.claim("w2", [], other, new_id())
    assert retaken is not None
    journal.claim_flow_run(retaken, other, retaken.lease_token or "", "Running")
    w1 = Worker(journal, name="w1", say=lambda line: None)
    exited = subprocess.Popen(["true"])
    exited.wait()
    w1.children[run.id] = Child(run.id, first, exited)
    w1._collect()  # its child exited: the run is not w1's any more
    now = journal.get_flow_run(run.id)
    assert (now.state_name, now.worker_name) == ("Running", "w2")
