"""The run engine in-process: journaling, failures, replay, run keys, subflows, logs."""

from __future__ import annotations

import importlib
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from persevere import (
    NonDeterminismError,
    RunKeyConflict,
    RunNotResumable,
    SerializationError,
    State,
    StateType,
    flow,
    task,
)
from persevere.exceptions import LeaseLost
from persevere.journal import Journal
from persevere.worker import resume

from .conftest import FLOWS


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("RESUMABLE_SIDE_FILE", str(path))
    return path


def executed(side: Path) -> Counter[str]:
    """How many times each task body ran, from the side file."""
    if not side.exists():
        return Counter()
    return Counter(line.split()[0] for line in side.read_text().splitlines())


@pytest.fixture
def flows(side: Path) -> Any:
    return importlib.import_module("tests.flows.resumable")


def history(journal: Journal, run_id: str) -> list[str]:
    return [t.name for t in journal.history(run_id)]


def test_flow_returns_its_value_and_journals_every_transition(journal: Journal, flows: Any) -> None:
    assert flows.etl() == 60
    [run] = journal.list_flow_runs()
    assert (run.state_type, run.flow_name) == (StateType.COMPLETED, "etl")
    assert history(journal, run.id) == ["Pending", "Running", "Completed"]
    tasks = journal.task_runs(run.id)
    assert [(t.position, t.task_key, t.dynamic_key) for t in tasks] == [
        (0, "extract", 0), (1, "transform", 0), (2, "load", 0)
    ]  # fmt: skip
    for t in tasks:
        assert history(journal, t.id) == ["Pending", "Running", "Completed"]
        assert t.state_type is StateType.COMPLETED
    assert journal.load_task_result(tasks[1]) == [10, 20, 30]
    assert journal.load_result(run.result_id) == 60


def test_task_failure_fails_task_and_flow_and_reraises(
    journal: Journal, flows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "transform")
    with pytest.raises(RuntimeError, match="transform failed on purpose"):
        flows.etl()
    [run] = journal.list_flow_runs()
    assert run.state_name == "Failed"
    assert "transform failed on purpose" in run.state_message
    states = [(t.task_key, t.state_name) for t in journal.task_runs(run.id)]
    assert states == [("extract", "Completed"), ("transform", "Failed")]


def test_return_state_gives_the_final_state(
    journal: Journal, flows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = flows.etl(return_state=True)
    assert isinstance(ok, State) and ok.is_completed() and ok.result() == 60
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "load")
    bad = flows.etl(return_state=True)
    assert bad.is_failed() and bad.type is StateType.FAILED
    with pytest.raises(RuntimeError):
        bad.result()
    assert isinstance(bad.result(raise_on_failure=False), RuntimeError)


def test_task_return_state_lets_the_flow_go_on(journal: Journal) -> None:
    @task
    def boom() -> int:
        raise ValueError("no")

    @task
    def fine() -> int:
        return 1

    @flow
    def tolerant() -> str:
        state = boom(return_state=True)
        return f"{state.name}:{fine()}"

    assert tolerant() == "Failed:1"


def test_resume_replays_completed_tasks_and_runs_the_rest(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "load")
    state = flows.etl(return_state=True)
    assert state.is_failed()
    monkeypatch.delenv("RESUMABLE_FAIL_AT")
    resumed, run = resume(journal, state.run_id)
    assert resumed.is_completed() and resumed.result() == 60
    assert executed(side) == Counter(extract=1, transform=1, load=2)
    [load_run] = [t for t in journal.task_runs(run.id) if t.task_key == "load"]
    assert load_run.attempt == 2
    assert history(journal, load_run.id) == [
        "Pending", "Running", "Failed", "Scheduled", "Pending", "Running", "Completed"
    ]  # fmt: skip
    assert history(journal, run.id)[-4:] == ["Scheduled", "Pending", "Running", "Completed"]


def test_idempotency_key_is_stable_across_reexecution(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "load")
    state = flows.etl(return_state=True)
    monkeypatch.delenv("RESUMABLE_FAIL_AT")
    resume(journal, state.run_id)
    keys = [line.split()[1] for line in side.read_text().splitlines() if line.startswith("load")]
    assert len(keys) == 2 and keys[0] == keys[1] == f"{state.run_id}:load:0"


def test_changed_call_order_is_a_non_determinism_error(
    journal: Journal, flows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "load")
    first = flows.etl(return_state=True)
    monkeypatch.delenv("RESUMABLE_FAIL_AT")
    monkeypatch.setenv("RESUMABLE_SWAP", "1")
    state, run = resume(journal, first.run_id)
    assert state.is_failed()
    error = state.data
    assert isinstance(error, NonDeterminismError)
    assert (error.position, error.recorded, error.called) == (1, "task transform", "task audit")
    assert "#1" in run.state_message and "transform" in run.state_message


def test_run_key_returns_a_completed_run_without_running_again(
    journal: Journal, flows: Any, side: Path
) -> None:
    keyed = flows.etl.with_options(run_key="nightly-2026-11-21")
    assert keyed() == 60
    assert keyed() == 60
    assert executed(side) == Counter(extract=1, transform=1, load=1)
    assert len(journal.list_flow_runs()) == 1


def test_run_key_resumes_an_unfinished_run(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = flows.etl.with_options(run_key="k1")
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "transform")
    with pytest.raises(RuntimeError):
        keyed()
    monkeypatch.delenv("RESUMABLE_FAIL_AT")
    assert keyed() == 60
    assert executed(side) == Counter(extract=1, transform=2, load=1)
    [run] = journal.list_flow_runs()
    assert run.run_key == "k1" and run.state_type is StateType.COMPLETED


def test_run_key_with_other_parameters_is_refused(journal: Journal, flows: Any) -> None:
    flows.etl.with_options(run_key="k2")(day="2026-01-01")
    with pytest.raises(RunKeyConflict, match="k2"):
        flows.etl.with_options(run_key="k2")(day="2026-01-02")


def test_subflows_are_child_runs_replayed_as_a_unit(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "never")
    assert flows.parent() == [10, 20, 30]
    runs = {r.flow_name: r for r in journal.list_flow_runs(flow_name="parent")}
    parent_run = runs["parent"]
    children = journal.list_flow_runs(flow_name="child")
    assert len(children) == 3
    calls = [t for t in journal.task_runs(parent_run.id) if t.kind == "flow"]
    assert {c.parent_task_run_id for c in children} == {t.id for t in calls}
    assert all(c.parent_flow_run_id == parent_run.id for c in children)
    assert [journal.load_task_result(t) for t in calls] == [10, 20, 30]


def test_resume_of_parent_replays_finished_children_and_resumes_the_failed_one(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = flows.transform.fn

    def flaky(rows: list[int]) -> list[int]:
        calls["n"] += 1
        if rows == [2] and calls["n"] < 10:
            raise RuntimeError("second child fails once")
        return original(rows)

    monkeypatch.setattr(flows, "transform", flows.transform.with_options(fn=flaky))
    state = flows.parent(return_state=True)
    assert state.is_failed()
    calls["n"] = 100
    resumed, _ = resume(journal, state.run_id)  # resume reloads the module from its file
    assert resumed.result() == [10, 20, 30]
    bodies = Counter(line for line in side.read_text().splitlines() if "child-body" in line)
    assert bodies == Counter({"child-body 1": 1, "child-body 2": 2, "child-body 3": 1})


def test_resume_refuses_completed_and_subflow_runs(journal: Journal, flows: Any) -> None:
    flows.parent()
    [parent_run] = journal.list_flow_runs(flow_name="parent")
    with pytest.raises(RunNotResumable, match="Completed"):
        resume(journal, parent_run.id)
    child_run = journal.list_flow_runs(flow_name="child")[0]
    with pytest.raises(RunNotResumable, match="subflow"):
        resume(journal, child_run.id)


def test_logs_and_prints_are_stored_with_the_run(
    journal: Journal, flows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "INFO")
    flows.etl()
    [run] = journal.list_flow_runs()
    journal.flush()
    messages = [line.message for line in journal.logs(run.id)]
    assert "extracted 3 rows" in messages
    assert "loaded" in messages
    [loaded] = [line for line in journal.logs(run.id) if line.message == "loaded"]
    assert loaded.task_run_id is not None and '"rows": 3' in (loaded.extra or "")


def test_unserializable_result_fails_the_task_with_a_clear_message(journal: Journal) -> None:
    @task
    def handle() -> object:
        return object()

    @flow
    def holder() -> None:
        handle()

    with pytest.raises(SerializationError, match='result_serializer="pickle"'):
        holder()
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert t.state_name == "Failed" and "'handle'" in t.state_message


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_pickle_serializer_round_trips_on_replay(journal: Journal) -> None:
    runs = {"n": 0}

    @task(result_serializer="pickle")
    def make(x: int) -> Point:
        runs["n"] += 1
        return Point(x)

    @task
    def fail_once() -> None:
        if runs["n"] < 2:
            runs["n"] += 1
            raise RuntimeError("once")

    @flow(result_serializer="pickle")
    def pointy() -> int:
        p = make(7)
        fail_once()
        return p.x

    state = pointy.with_options(run_key="pk")(return_state=True)
    assert state.is_failed()
    assert pointy.with_options(run_key="pk")() == 7
    assert runs["n"] == 2  # make() ran once, fail_once() failed once


def test_task_outside_a_flow_is_a_plain_call(journal: Journal) -> None:
    @task
    def plain(x: int) -> int:
        return x + 1

    assert plain(1) == 2
    assert journal.list_flow_runs() == []


def test_a_stolen_lease_stops_the_run_without_writing(journal: Journal, db: Path) -> None:
    @task
    def step(i: int) -> int:
        if i == 1:  # another process takes the run over
            other = sqlite3.connect(db)
            other.execute("UPDATE flow_runs SET lease_token = 'theirs'")
            other.commit()
            other.close()
        return i

    @flow
    def stolen() -> None:
        for i in range(3):
            step(i)

    with pytest.raises(LeaseLost):
        stolen()
    [run] = journal.list_flow_runs()
    assert [t.position for t in journal.task_runs(run.id)] == [0]
    assert run.state_type is StateType.RUNNING  # left to its new owner


def test_tasks_in_a_flow_file_module_are_importable() -> None:
    assert (FLOWS / "resumable.py").exists()


def test_allow_failure_lets_a_task_run_after_a_failed_one(journal: Journal) -> None:
    from persevere import allow_failure

    received: list[object] = []

    @task
    def produce(fail: bool) -> int:
        if fail:
            raise ValueError("upstream broke")
        return 5

    @task
    def consume(value: object) -> str:
        received.append(value)
        return type(value).__name__

    @flow
    def tolerant() -> list[str]:
        ok = produce(False, return_state=True)
        bad = produce(True, return_state=True)
        return [consume(ok), consume(allow_failure(bad)), consume(allow_failure(7))]

    assert tolerant() == ["int", "ValueError", "int"]
    assert received[0] == 5 and str(received[1]) == "upstream broke" and received[2] == 7


def test_a_failed_state_passed_on_stops_the_next_task(journal: Journal) -> None:
    ran: list[int] = []

    @task
    def produce() -> int:
        raise ValueError("upstream broke")

    @task
    def consume(value: int) -> int:
        ran.append(value)
        return value

    @flow
    def strict() -> int:
        return consume(produce(return_state=True))

    with pytest.raises(ValueError, match="upstream broke"):
        strict()
    assert ran == []
    [run] = journal.list_flow_runs()
    assert [t.task_key for t in journal.task_runs(run.id)] == ["produce"]
