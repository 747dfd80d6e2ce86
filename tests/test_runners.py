"""What only some task runners do: worker processes that die or hang, their own
Dask cluster, a missing extra, and shipping code a worker cannot import.

The behaviour every runner shares is in test_runner_contract.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from persevere import (
    DaskTaskRunner,
    ProcessPoolTaskRunner,
    TaskProcessDied,
    flow,
    task,
)
from persevere.exceptions import MissingDependency
from persevere.journal import Journal

from .conftest import cli_env, run_cli


@task(retries=1)
def die_once(marker: str) -> int:
    """SIGKILLs its own process on the first attempt."""
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@task
def pid_of(x: int) -> list[int]:
    return [x, os.getpid()]


@task(timeout_seconds=0.3)
def deaf(seconds: float) -> str:
    """Blocks SIGALRM, so only killing its process stops it (as C code that ignores signals)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return "never"


def test_a_dead_worker_fails_only_its_call_and_is_replaced(
    tmp_path: Path, journal: Journal
) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def dying(marker: str) -> list[Any]:
        victim = die_once.submit(marker)
        others = pid_of.map(range(4))
        return [victim.result(), others.result()]

    survivor_pid, others = dying(str(tmp_path / "died"))
    assert [x for x, _ in others] == [0, 1, 2, 3]
    [run] = journal.list_flow_runs()
    victim = journal.task_runs(run.id)[0]
    assert (victim.state_name, victim.attempt) == ("Completed", 2)
    [failed] = [h for h in journal.history(victim.id) if h.name == "AwaitingRetry"]
    assert "TaskProcessDied" in failed.message and "was killed by SIGKILL" in failed.message
    assert survivor_pid != os.getpid()


def test_a_dead_worker_without_retries_fails_the_call_clearly(
    tmp_path: Path, journal: Journal
) -> None:
    seen: list[Any] = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def dying(marker: str) -> None:
        victim = die_once.with_options(retries=0).submit(marker)
        after = pid_of.submit(7)  # the same engine thread: a new process
        seen.extend([victim.result(raise_on_failure=False), after.result()])

    dying(str(tmp_path / "died"))
    error, (seven, pid) = seen
    assert isinstance(error, TaskProcessDied) and error.exitcode == -signal.SIGKILL
    assert "was killed by SIGKILL (out of memory?) before the body returned" in str(error)
    assert seven == 7 and pid != os.getpid()


def test_a_body_that_ignores_its_deadline_is_killed(journal: Journal) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def hanging() -> list[Any]:
        stuck = deaf.submit(30)
        stuck.wait()
        return [stuck.state.name, pid_of.submit(1).result()[0]]

    started = time.monotonic()
    assert hanging() == ["TimedOut", 1]  # and the next call has a process again
    assert time.monotonic() - started < 10


def test_direct_calls_run_in_the_flow_process(journal: Journal) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def mixed() -> list[int]:
        return [pid_of(1)[1], pid_of.submit(2).result()[1]]

    direct, submitted = mixed()
    assert direct == os.getpid() and submitted != os.getpid()


def test_forkserver_start_method(journal: Journal) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1, start_method="forkserver"))
    def served() -> list[int]:
        return pid_of.submit(5).result()

    five, pid = served()
    assert five == 5 and pid != os.getpid()


def test_options_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="use 'spawn' or 'forkserver'"):
        ProcessPoolTaskRunner(start_method="fork")
    with pytest.raises(ValueError, match="at least 1"):
        ProcessPoolTaskRunner(max_workers=0)
    with pytest.raises(ValueError, match=r"either address= .* or cluster_class="):
        DaskTaskRunner(address="tcp://127.0.0.1:1", cluster_kwargs={"n_workers": 1})


def test_without_the_dask_extra_the_runner_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("dask", "distributed") else real(name, *a),
    )
    with pytest.raises(MissingDependency) as caught:
        DaskTaskRunner()
    assert str(caught.value) == (
        "DaskTaskRunner needs dask.distributed, which is not installed: "
        "pip install 'persevere[dask]'"
    )
    assert isinstance(caught.value, ImportError)


def test_import_persevere_stays_light() -> None:
    heavy = [
        "dask", "distributed", "multiprocessing", "cloudpickle", "structlog",
        "pydantic", "sqlite_utils", "click",
    ]  # fmt: skip
    code = f"import sys, persevere; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dask_runner_starts_and_closes_its_own_cluster(journal: Journal) -> None:
    distributed = pytest.importorskip("distributed")

    @task
    def where() -> str:
        return str(distributed.get_worker().scheduler.address)

    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    )

    @flow(task_runner=runner)
    def on_dask() -> str:
        return str(where.submit().result())

    address = on_dask()
    assert address.startswith("tcp://")
    with pytest.raises((OSError, TimeoutError)):  # closed with the flow run
        distributed.Client(address, timeout=1)


FLOW_FILE = """
import os
from persevere import ProcessPoolTaskRunner, flow, task

LOCAL = 40  # a global of a module the worker cannot import by name

@task
def add_local(x: int) -> list:
    return [x + LOCAL, os.getpid()]

@flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
def shipped(x: int = 2) -> list:
    return add_local.submit(x).result()
"""


def test_a_flow_file_a_worker_cannot_import_is_shipped_by_value(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "my-flow.py"  # not a module name: workers cannot import it
    path.write_text(FLOW_FILE)
    done = run_cli(db, "run", f"{path}:shipped")
    assert done.returncode == 0, done.stderr
    value, pid = json.loads(done.stdout)
    assert value == 42 and pid > 0


def test_a_script_run_as_main_ships_its_tasks(db: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        FLOW_FILE
        + textwrap.dedent("""
        if __name__ == "__main__":
            print(shipped(5)[0])
        """)
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        env=cli_env(db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "45"
