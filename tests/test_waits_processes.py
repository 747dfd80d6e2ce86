"""Durable waits with real processes: a sleep killed and resumed, a run suspended by
``persevere run`` and resumed by another command, a pause answered from another
process, and suspended runs under a worker that frees its slot meanwhile.

Flows are in tests/flows/pausing.py; they append ``prepare``/``publish`` to the
file PAUSING_SIDE names, so each test counts what executed (and what was
replayed instead). Every wait polls the journal with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from persevere.journal import FlowRun, Journal, TaskRun
from persevere.journal.deployments import Deployment
from persevere.statemachine import StateType
from persevere.worker import reap, waits

from .conftest import FLOWS, cli_env, run_cli, wait_for

pytestmark = pytest.mark.timeout(60)

FLOW_FILE = FLOWS / "pausing.py"


@pytest.fixture
def side(tmp_path: Path) -> Path:
    return tmp_path / "side.txt"


def executed(side: Path) -> Counter[str]:
    return Counter(side.read_text().splitlines() if side.exists() else [])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Started processes (flows, workers); any still alive at the end are stopped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)  # a worker: release at once
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(
    started: list[subprocess.Popen[str]], db: Path, *args: str, **env: str
) -> subprocess.Popen[str]:
    """``python -m persevere ARGS`` in the background; its output to files beside the db."""
    log = db.parent / f"process-{len(started)}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "persevere", *args],
        env=cli_env(db, **env),
        stdout=open(f"{log}.out", "w"),  # noqa: SIM115 -- the child holds it
        stderr=open(f"{log}.err", "w"),  # noqa: SIM115
        text=True,
    )
    started.append(proc)
    return proc


def output_of(db: Path, index: int) -> tuple[str, str]:
    log = db.parent / f"process-{index}"
    return Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()


def newest_run(journal: Journal, flow_name: str) -> FlowRun | None:
    found = journal.list_flow_runs(None, flow_name, 1)
    return found[0] if found else None


def state_of(journal: Journal, run_id: str) -> str:
    return journal.get_flow_run(run_id).state_name


def task(journal: Journal, run_id: str, key: str) -> TaskRun:
    return next(t for t in journal.task_runs(run_id) if t.task_key == key)


def deploy(journal: Journal, function: str) -> Deployment:
    return journal.deployments.put(
        flow_name=function,
        name="test",
        entrypoint=f"{FLOW_FILE}:{function}",
        parameters={},
        signature={},
        work_queue="default",
    )


def schedule(
    journal: Journal, function: str, after: FlowRun | None = None, **params: object
) -> FlowRun:
    """A run of a deployment of ``function``; due just ``after`` that run, if given
    (a worker claims due runs oldest first; ids made in one millisecond sort at random)."""
    due = None if after is None or after.scheduled_ms is None else after.scheduled_ms + 1
    return journal.deployments.schedule_run(
        deploy(journal, function), json.dumps(params), scheduled_ms=due
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- a sleep killed and resumed -----------------------------------------------------------


def test_a_sleep_killed_midway_is_resumed_and_sleeps_only_the_rest(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc = start(
        processes, db, "run", f"{FLOW_FILE}:sleepy", "-p", "seconds=3", PAUSING_SIDE=str(side)
    )

    def sleeping() -> TaskRun | None:
        run = newest_run(journal, "sleepy")
        if run is None:
            return None
        tasks = [t for t in journal.task_runs(run.id) if t.kind == "sleep"]
        ok = tasks and tasks[0].state_name == "Running" and tasks[0].next_attempt_ms
        return tasks[0] if ok else None

    sleep = wait_for(sleeping, timeout=20)
    assert isinstance(sleep, TaskRun) and sleep.next_attempt_ms is not None
    wake_ms = sleep.next_attempt_ms
    run_id = sleep.flow_run_id
    first_start = journal.history(run_id)[1].ts_ms  # Pending -> Running, the first time
    assert 3_000 <= wake_ms - first_start <= 4_000  # 3 s after the sleep began
    wait_for(lambda: now_ms() >= wake_ms - 1_200, timeout=5)  # 1.8 s of 3 slept
    proc.kill()
    killed_ms = now_ms()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    remaining = (wake_ms - killed_ms) / 1000
    assert 0.2 < remaining <= 1.2

    resumed = run_cli(db, "runs", "resume", run_id, PAUSING_SIDE=str(side))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "3"

    done = journal.get_flow_run(run_id)
    assert done.state_name == "Completed" and done.ended_ms is not None
    sleep = task(journal, run_id, "sleep")
    assert (sleep.state_name, sleep.attempt, sleep.next_attempt_ms) == ("Completed", 2, wake_ms)
    assert sleep.started_ms is not None and sleep.ended_ms is not None
    # Timed from the journal, not from the outside: a loaded machine may take a
    # second or two to start the resuming process, which says nothing of the sleep.
    assert sleep.ended_ms >= wake_ms  # it did sleep until the wake-up time
    resumed_at = sleep.started_ms  # the second attempt of the sleep
    assert sleep.ended_ms - max(wake_ms, resumed_at) < 1_000  # and went on at once
    # Only the rest: a full second sleep would end 3 s after the resume began.
    assert sleep.ended_ms - resumed_at < 3_000 - 500, (sleep.ended_ms - resumed_at, remaining)
    assert executed(side) == {"prepare": 1, "publish": 1}
    messages = [t.message for t in journal.history(run_id)]
    assert any(m.startswith("its process ") and m.endswith(" is gone") for m in messages)


# -- suspended by `persevere run`, resumed by another command ---------------------------


def test_a_run_suspended_by_persevere_run_is_resumed_with_input_by_another_command(
    db: Path, journal: Journal, side: Path
) -> None:
    env = {"PAUSING_SIDE": str(side)}
    first = run_cli(db, "run", f"{FLOW_FILE}:approval", "-p", "x=5", **env)
    assert first.returncode == 3, first.stderr
    match = re.search(r"run ([0-9a-f]{32}) Suspended: paused at 'review'", first.stderr)
    assert match, first.stderr
    run_id = match.group(1)
    shown = run_cli(db, "runs", "show", run_id)
    assert f"run {run_id}  flow approval  Suspended (PAUSED)" in shown.stdout
    assert "waits for:  {approved: boolean, comment: string?}" in shown.stdout

    bad = run_cli(db, "runs", "resume", run_id, "--input", '{"approved": "yes"}', **env)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"Error: input refused for run {run_id}: field 'approved': 'yes' is not of type "
        "'boolean'; the run stays Paused"
    ]
    assert state_of(journal, run_id) == "Suspended"

    good = run_cli(
        db, "runs", "resume", run_id, "--input", '{"approved": true, "comment": "ok"}', **env
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"published": 11, "comment": "ok"}
    assert executed(side) == {"prepare": 1, "publish": 1}  # prepare replayed, not re-run
    prepare = task(journal, run_id, "prepare")
    assert (prepare.state_name, prepare.attempt) == ("Completed", 1)


# -- a pause answered from another process -----------------------------------------------


def test_a_pause_in_a_live_process_is_approved_from_another_and_the_first_goes_on(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc = start(processes, db, "run", f"{FLOW_FILE}:gate", PAUSING_SIDE=str(side))

    def paused() -> FlowRun | None:
        run = newest_run(journal, "gate")
        return run if run is not None and run.state_name == "Paused" else None

    run = wait_for(paused, timeout=20)
    assert isinstance(run, FlowRun) and run.owner_pid == proc.pid

    approved = run_cli(db, "runs", "approve", run.id, PAUSING_SIDE=str(side))
    assert approved.returncode == 0, approved.stderr
    assert re.fullmatch(
        rf"run {run.id} resumed: \S+:{proc.pid} goes on with it\n", approved.stderr
    ), approved.stderr
    assert proc.wait(timeout=20) == 0
    out, err = output_of(db, 0)
    assert out.strip() == "3", err

    done = journal.get_flow_run(run.id)
    assert done.state_name == "Completed" and done.owner_pid == proc.pid
    history = [(t.name, t.message) for t in journal.history(run.id)]
    assert [name for name, _ in history] == ["Pending", "Running", "Paused", "Running", "Completed"]
    resumed_by = history[3][1]
    assert resumed_by.startswith("resumed by ") and not resumed_by.endswith(f":{proc.pid}")
    assert executed(side) == {"prepare": 1, "publish": 1}


def test_a_paused_process_killed_then_approved_goes_on_in_the_approving_process(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc = start(processes, db, "run", f"{FLOW_FILE}:gate", PAUSING_SIDE=str(side))

    def paused() -> FlowRun | None:
        run = newest_run(journal, "gate")
        return run if run is not None and run.state_name == "Paused" else None

    run = wait_for(paused, timeout=20)
    assert isinstance(run, FlowRun)
    proc.kill()
    proc.wait(timeout=10)
    assert reap(journal) == []  # a paused run is not Running: its dead process crashed nothing
    assert state_of(journal, run.id) == "Paused"  # its pause is still open to an answer

    approved = run_cli(db, "runs", "approve", run.id, PAUSING_SIDE=str(side))
    assert approved.returncode == 0, approved.stderr
    assert f"run {run.id} resumed: executing it here" in approved.stderr
    assert approved.stdout.strip() == "3"
    done = journal.get_flow_run(run.id)
    assert done.state_name == "Completed" and done.owner_pid not in (None, proc.pid)
    assert executed(side) == {"prepare": 1, "publish": 1}  # prepare replayed


def test_a_pause_whose_process_died_is_ended_by_housekeeping_at_its_deadline(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc = start(processes, db, "run", f"{FLOW_FILE}:gate", "-p", "timeout=2")

    def paused() -> FlowRun | None:
        run = newest_run(journal, "gate")
        return run if run is not None and run.state_name == "Paused" else None

    run = wait_for(paused, timeout=20)
    assert isinstance(run, FlowRun) and run.pause_deadline_ms is not None
    assert waits.housekeeping(journal) == []  # its process waits: its own to end
    proc.kill()
    proc.wait(timeout=10)
    assert waits.housekeeping(journal) == []  # not yet

    wait_for(lambda: now_ms() > run.pause_deadline_ms, timeout=5)  # type: ignore[operator]
    assert waits.housekeeping(journal) == [f"run {run.id} (gate) TimedOut: its pause timed out"]
    ended = journal.get_flow_run(run.id)
    assert (ended.state_type, ended.state_name) == (StateType.FAILED, "TimedOut")


# -- under a worker ------------------------------------------------------------------------


def start_worker(
    started: list[subprocess.Popen[str]], db: Path, side: Path, **env: str
) -> subprocess.Popen[str]:
    return start(
        started, db, "worker", "start", "--limit", "1", "--poll-seconds", "0.1",
        PAUSING_SIDE=str(side), **env,
    )  # fmt: skip


def test_a_run_suspended_under_a_worker_frees_its_slot_and_is_resumed_by_it(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    suspending = schedule(journal, "approval", x=1)
    other = schedule(journal, "quick", after=suspending)  # it needs the only slot
    start_worker(processes, db, side)

    wait_for(lambda: state_of(journal, other.id) == "Completed", timeout=30)
    assert state_of(journal, suspending.id) == "Suspended"  # and the slot was free
    suspended = journal.get_flow_run(suspending.id)
    assert suspended.lease_token is None

    resumed = run_cli(
        db, "runs", "resume", suspending.id, "--input", '{"approved": true, "comment": "go"}'
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == (
        f"run {suspending.id} resumed: Scheduled on work queue 'default', where a worker takes it\n"
    )
    wait_for(lambda: state_of(journal, suspending.id) == "Completed", timeout=30)

    done = journal.get_flow_run(suspending.id)
    assert journal.load_result(done.result_id) == {"published": 3, "comment": "go"}
    names = [t.name for t in journal.history(suspending.id)]
    assert names == [
        "Scheduled", "Pending", "Running", "Suspended",
        "Scheduled", "Pending", "Running", "Completed",
    ]  # fmt: skip
    assert executed(side) == {"prepare": 1, "publish": 1}  # resumed at the line after


def test_a_long_sleep_under_a_worker_suspends_the_run_and_the_worker_wakes_it(
    db: Path, journal: Journal, side: Path, processes: list[subprocess.Popen[str]]
) -> None:
    sleeping = schedule(journal, "sleepy", seconds=3)
    other = schedule(journal, "quick", after=sleeping)
    start_worker(processes, db, side, PERSEVERE_SUSPEND_AFTER_SECONDS="1")

    wait_for(lambda: state_of(journal, other.id) == "Completed", timeout=30)
    suspended = journal.get_flow_run(sleeping.id)
    assert suspended.state_name == "Suspended"  # 3 s > 1 s: it let its slot go
    assert suspended.state_message.startswith("sleeping until ")
    wake_ms = task(journal, sleeping.id, "sleep").next_attempt_ms
    assert wake_ms is not None and suspended.scheduled_ms == wake_ms

    wait_for(lambda: state_of(journal, sleeping.id) == "Completed", timeout=30)
    done = journal.get_flow_run(sleeping.id)
    assert done.ended_ms is not None and done.ended_ms >= wake_ms
    assert done.ended_ms - wake_ms < 5_000  # woken at its time, give or take a round
    assert journal.load_result(done.result_id) == 3
    assert executed(side) == {"prepare": 1, "publish": 1}
