"""Large results in files beside the database, and pruning old runs."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from persevere import INPUTS, SerializationError, clock, flow, task
from persevere.cli import cli
from persevere.journal import Journal, close_all, open_journal
from persevere.journal.maintenance import prune
from persevere.statemachine import StateType

from .conftest import wait_for


@pytest.fixture
def small_files(db: Path, monkeypatch: pytest.MonkeyPatch) -> Journal:
    """A journal that sends results over 1,000 bytes to files."""
    monkeypatch.setenv("PERSEVERE_RESULT_FILE_BYTES", "1000")
    close_all()
    return open_journal(db)


@task
def big(n: int) -> str:
    return "x" * n


@flow
def makes_big(n: int = 5000) -> int:
    return len(big(n))


def task_result_row(journal: Journal) -> Any:
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    return t


def test_a_large_result_is_a_private_file_read_back_on_replay(
    small_files: Journal, db: Path
) -> None:
    assert makes_big() == 5000
    t = task_result_row(small_files)
    assert t.result is None and t.result_id
    path = small_files.files.path_of(t.result_id)
    assert path.is_file() and path.parent.parent == db.with_name(db.name + ".results")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert small_files.load_task_result(t) == "x" * 5000


def test_a_small_result_stays_in_the_database(small_files: Journal) -> None:
    makes_big(10)
    t = task_result_row(small_files)
    assert t.result is not None and t.result_id is None


def test_a_changed_result_file_is_refused(small_files: Journal) -> None:
    makes_big()
    t = task_result_row(small_files)
    small_files.files.path_of(t.result_id).write_text('"tampered"')
    with pytest.raises(SerializationError, match="changed outside persevere"):
        small_files.load_task_result(t)


def test_prune_removes_old_runs_and_keeps_what_is_referenced(
    small_files: Journal, db: Path
) -> None:
    calls: list[int] = []

    @task(cache_policy=INPUTS)
    def cached_big(n: int) -> str:
        calls.append(n)
        return "y" * n

    @flow
    def churn(i: int) -> int:
        for j in range(20):
            big(2000 + i * 100 + j)  # a distinct large result each
        return len(cached_big(3000))

    for i in range(4):
        churn(i)
    cutoff = clock.now_ms() + 1
    wait_for(lambda: clock.now_ms() > cutoff, timeout=5, every=0.001)
    churn(4)
    kept_recent = small_files.list_flow_runs()[0]
    files_before = list(small_files.files.root.glob("*/*"))
    report = prune(small_files, before_ms=cutoff, state_types=[StateType.COMPLETED])
    assert report.flow_runs == 4 and report.task_runs == 4 * 21
    assert report.bytes_after < report.bytes_before
    [left] = small_files.list_flow_runs()
    assert left.id == kept_recent.id
    for t in small_files.task_runs(left.id):
        assert small_files.load_task_result(t)  # everything it refers to is still there
    assert len(list(small_files.files.root.glob("*/*"))) == 21 < len(files_before)
    assert churn(9) == 3000 and calls == [3000]  # the cache entry survived the prune


def test_prune_never_touches_unfinished_runs(journal: Journal) -> None:
    run = journal.create_flow_run(flow_name="waiting", entrypoint=None, parameters="{}")
    report = prune(journal, before_ms=10**15)
    assert report.flow_runs == 0
    assert journal.get_flow_run(run.id).state_type is StateType.PENDING


def test_prune_command(small_files: Journal) -> None:
    makes_big()
    runner = CliRunner()
    kept = runner.invoke(cli, ["runs", "prune", "--older-than", "1d"])
    assert kept.exit_code == 0 and "removed 0 flow runs" in kept.output
    bad = runner.invoke(cli, ["runs", "prune", "--older-than", "soon"])
    assert bad.exit_code == 2 and "30d" in bad.output
    bad = runner.invoke(cli, ["runs", "prune", "--older-than", "1d", "--state", "RUNNING"])
    assert bad.exit_code == 2
