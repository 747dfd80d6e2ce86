"""`persevere runs retry RUN_ID --from-task TASK`: a new run from a chosen task on."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from persevere import RunNotFound, RunNotResumable
from persevere.cli import cli
from persevere.journal import Journal
from persevere.worker import retry_from


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("RESUMABLE_SIDE_FILE", str(path))
    return path


@pytest.fixture
def flows(side: Path) -> Any:
    return importlib.import_module("tests.flows.resumable")


def executed(side: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in side.read_text().splitlines())


def test_retry_from_a_task_copies_what_came_before_and_runs_the_rest(
    journal: Journal, flows: Any, side: Path
) -> None:
    flows.etl()
    [source] = journal.list_flow_runs()
    source_history = journal.history(source.id)
    state, run = retry_from(journal, source.id, "transform")
    assert state.result() == 60 and run.id != source.id
    assert executed(side) == Counter(extract=1, transform=2, load=2)
    tasks = journal.task_runs(run.id)
    assert [(t.task_key, t.state_name) for t in tasks] == [
        ("extract", "Completed"), ("transform", "Completed"), ("load", "Completed")
    ]  # fmt: skip
    assert tasks[0].state_message == f"copied from run {source.id}"
    assert journal.load_task_result(tasks[0]) == [1, 2, 3]
    assert journal.history(run.id)[0].message == f"retry of run {source.id} from transform-0"
    assert journal.history(source.id) == source_history  # the source is left as it was


def test_retry_of_a_failed_run_from_its_first_task_runs_everything(
    journal: Journal, flows: Any, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FAIL_AT", "load")
    assert flows.etl(return_state=True).is_failed()
    monkeypatch.delenv("RESUMABLE_FAIL_AT")
    source = journal.list_flow_runs()[0]
    state, _ = retry_from(journal, source.id, "extract-0")
    assert state.result() == 60
    assert executed(side) == Counter(extract=2, transform=2, load=2)


def test_retry_names_the_tasks_when_the_task_is_unknown(journal: Journal, flows: Any) -> None:
    flows.etl()
    [source] = journal.list_flow_runs()
    with pytest.raises(RunNotFound, match="extract-0, transform-0, load-0"):
        retry_from(journal, source.id, "nope")


def test_an_unfinished_run_or_a_subflow_is_not_retried(journal: Journal, flows: Any) -> None:
    pending = journal.create_flow_run(flow_name="etl", entrypoint=None, parameters="{}")
    with pytest.raises(RunNotResumable, match="finished"):
        retry_from(journal, pending.id, "extract")
    flows.parent()
    child = journal.list_flow_runs(flow_name="child")[0]
    with pytest.raises(RunNotResumable, match="subflow"):
        retry_from(journal, child.id, "transform")


def test_retry_command(journal: Journal, flows: Any, side: Path) -> None:
    flows.etl()
    [source] = journal.list_flow_runs()
    runner = CliRunner()
    done = runner.invoke(cli, ["runs", "retry", source.id, "--from-task", "load"])
    assert done.exit_code == 0, done.output
    assert "60" in done.output
    assert executed(side) == Counter(extract=1, transform=1, load=2)
    bad = runner.invoke(cli, ["runs", "retry", source.id, "--from-task", "nope"])
    assert bad.exit_code == 2 and "has no task run 'nope'" in bad.output
    missing = runner.invoke(cli, ["runs", "retry", source.id])
    assert missing.exit_code == 2
