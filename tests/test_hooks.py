"""State hooks: once per transition, also across resumes and crashes."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from persevere import State, flow, task
from persevere.journal import Journal
from persevere.worker import resume

from .conftest import FLOWS, cli_env, run_cli


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("HOOKED_SIDE_FILE", str(path))
    return path


def lines(side: Path) -> list[str]:
    return side.read_text().splitlines() if side.exists() else []


def test_each_hook_fires_once_per_transition(journal: Journal, side: Path) -> None:
    flows = importlib.import_module("tests.flows.hooked")
    assert flows.hooked() == 2
    assert lines(side) == [
        "on_running hooked Running",
        "on_running first Running",
        "on_completion first Completed",
        "on_running second Running",
        "on_completion second Completed",
        "on_completion hooked Completed",
    ]
    journal.flush()  # "done" marks are deferred writes
    due = journal.query("SELECT count(*), count(done_ms) FROM hooks_due")[0]
    assert tuple(due) == (6, 6)  # every transition's hooks recorded, and all done


def test_failure_hooks_and_a_resume_that_fires_nothing_twice(
    journal: Journal, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flows = importlib.import_module("tests.flows.hooked")
    monkeypatch.setenv("HOOKED_FAIL", "1")
    state = flows.hooked(return_state=True)
    assert state.is_failed()
    assert lines(side)[-2:] == ["on_failure second Failed", "on_failure hooked Failed"]
    monkeypatch.delenv("HOOKED_FAIL")
    before = len(lines(side))
    resumed, _ = resume(journal, state.run_id)
    assert resumed.result() == 2
    assert lines(side)[before:] == [  # first() replayed: none of its hooks again
        "on_running hooked Running",
        "on_running second Running",
        "on_completion second Completed",
        "on_completion hooked Completed",
    ]


def test_a_hook_that_raises_is_logged_and_changes_nothing(
    journal: Journal, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "WARNING")
    seen: list[str] = []

    def broken(obj: Any, run: Any, state: State) -> None:
        raise ValueError("hook bug")

    def fine(obj: Any, run: Any, state: State) -> None:
        seen.append(state.name)

    @task(on_completion=[broken, fine])
    def work() -> int:
        return 1

    @flow
    def sturdy() -> int:
        return work()

    assert sturdy() == 1
    assert seen == ["Completed"]
    assert "hook bug" in capsys.readouterr().err
    [run] = journal.list_flow_runs()
    assert run.state_name == "Completed"
    journal.flush()
    [(error,)] = [tuple(r) for r in journal.query("SELECT error FROM hooks_due")]
    assert "hook bug" in error


def test_hooks_must_be_functions() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        task(on_failure=["not a function"])(lambda: None)  # type: ignore[list-item]


def test_on_crashed_fires_once_when_the_crash_is_resumed(db: Path, side: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-m", "persevere", "run", f"{FLOWS / 'hooked.py'}:hooked"],
        env=cli_env(db, HOOKED_SIDE_FILE=str(side), HOOKED_KILL="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    [run] = json.loads(run_cli(db, "runs", "ls", "--json").stdout)  # finds the crash
    assert run["state_name"] == "Crashed"
    assert not any(line.startswith("on_crashed") for line in lines(side))  # no user code ran
    done = run_cli(db, "runs", "resume", run["id"], HOOKED_SIDE_FILE=str(side))
    assert done.returncode == 0, done.stderr
    crashed = [line for line in lines(side) if line.startswith("on_crashed")]
    assert crashed == ["on_crashed hooked Crashed", "on_crashed second Crashed"]
    again = run_cli(db, "runs", "resume", run["id"], HOOKED_SIDE_FILE=str(side))
    assert again.returncode == 2  # completed now
    assert [line for line in lines(side) if line.startswith("on_crashed")] == crashed


def test_a_cancelled_transition_runs_on_cancellation_hooks(journal: Journal) -> None:
    """Cancellation itself comes with workers; its hooks ride on the same mechanism."""
    from persevere.context import FlowRunContext
    from persevere.statemachine import StateType
    from persevere.worker import flow_runs, hooks

    seen: list[str] = []

    @flow(on_cancellation=[lambda f, r, s: seen.append(s.name)])
    def cancellable() -> None: ...

    assert hooks.event_of(StateType.CANCELLED) == "on_cancellation"
    run = journal.create_flow_run(flow_name="cancellable", entrypoint=None, parameters="{}")
    run = journal.claim_flow_run(run, hooks_owner(), "token")
    ctx = FlowRunContext(journal, run, cancellable, {})
    flow_runs._end(ctx, cancellable, StateType.CANCELLED, "Cancelled", "by the test")
    assert seen == ["Cancelled"]
    journal.flush()
    assert [
        tuple(r) for r in journal.query("SELECT event, done_ms IS NOT NULL FROM hooks_due")
    ] == [("on_cancellation", 1)]


def hooks_owner() -> Any:
    from persevere.worker.owners import this_process

    return this_process()
