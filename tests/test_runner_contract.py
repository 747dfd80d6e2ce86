"""One contract for every task runner: threads, worker processes, a Dask cluster.

Each test runs against the three runners. The Dask cluster (two worker
processes, one thread each) is started once for the module and reached by
address (so once per xdist worker that runs a Dask case). Bodies signal
the test through files, since a remote body shares no memory with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from persevere import (
    DaskTaskRunner,
    ProcessPoolTaskRunner,
    RemoteTaskError,
    SerializationError,
    StateType,
    TaskRunCancelled,
    TaskRunner,
    ThreadPoolTaskRunner,
    allow_failure,
    flow,
    get_run_context,
    get_run_logger,
    idempotency_key,
    task,
)
from persevere.journal import Journal

from .conftest import FLOWS, cli_env, run_cli, wait_for

#: Engine threads per flow run, for tests that fill them: a Dask runner keeps
#: twice the cluster's threads in flight (at least 8).
ENGINES = {"thread": 2, "process": 2, "dask": 8}


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(params=["thread", "process", "dask"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runner(kind: str, request: pytest.FixtureRequest) -> TaskRunner:
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=ENGINES[kind])
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=ENGINES[kind])
    return DaskTaskRunner(address=request.getfixturevalue("dask_address"))


# Tasks live at module level, so that worker processes find them by name.


@task
def square(x: int) -> list[int]:
    return [x * x, os.getpid()]


@task
def add(x: int, y: int) -> int:
    return x + y


class Oops(Exception):
    """An exception of the test's own."""


class Picky(Exception):
    """Pickles, but does not load: its __init__ takes two arguments."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


@task
def fail(how: str) -> int:
    if how == "oops":
        raise Oops("it went wrong")
    raise Picky(7, "picky about pickles")


@task(retries=2)
def flaky(folder: str) -> int:
    """Fails on its first two attempts (counted in files: a retry may run in another process)."""
    attempts = len(list(Path(folder).iterdir()))
    (Path(folder) / f"attempt-{attempts}").touch()
    if attempts < 2:
        raise ValueError(f"attempt {attempts} fails")
    return attempts


@task
def type_of(value: object) -> str:
    return type(value).__name__


@task
def write(path: str, text: str, pause: float) -> str:
    time.sleep(pause)
    Path(path).write_text(text)
    return text


@task
def read(path: str) -> str:
    return Path(path).read_text()


@task
def hold(gate: str, seconds: float = 20, tell: str = "") -> str:
    """Wait until the gate file exists (at most ``seconds``); first name its pid in ``tell``."""
    if tell:
        (Path(tell) / f"{os.getpid()}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + seconds
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            return "gate never opened"
        time.sleep(0.01)
    return "passed"


@task
def chatty(i: int) -> list[str]:
    get_run_logger().info("hello from the body", i=i)
    print(f"printed {i}")
    ctx = get_run_context()
    return [idempotency_key(), getattr(ctx, "task_run_id", "")]


@task(timeout_seconds=0.5)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def test_results_of_submit_and_map(runner: TaskRunner, kind: str, journal: Journal) -> None:
    @flow(task_runner=runner)
    def mapped() -> tuple[list[list[int]], int]:
        futures = square.map(range(6))
        return futures.result(), add.submit(20, 22).result()

    results, total = mapped()
    assert [value for value, _ in results] == [0, 1, 4, 9, 16, 25]
    assert total == 42
    pids = {pid for _, pid in results}
    if kind == "thread":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids  # the bodies ran elsewhere
    [run] = journal.list_flow_runs()
    runs = journal.task_runs(run.id)
    assert [t.state_name for t in runs] == ["Completed"] * 7
    assert [journal.load_task_result(t)[0] for t in runs[:6]] == [0, 1, 4, 9, 16, 25]


def test_exceptions_keep_type_and_message_and_are_journaled(
    runner: TaskRunner, kind: str, journal: Journal
) -> None:
    seen: list[Any] = []

    @flow(task_runner=runner)
    def failing() -> None:
        futures = fail.submit("oops"), fail.submit("picky")
        seen.extend(f.result(raise_on_failure=False) for f in futures)

    failing()
    oops, picky = seen
    assert type(oops) is Oops and str(oops) == "it went wrong"
    if kind == "thread":
        assert type(picky) is Picky
    else:  # it could not come back as itself: named, with its message
        assert isinstance(picky, RemoteTaskError)
        assert picky.type_name.endswith("Picky") and picky.message == "7: picky about pickles"
        assert "Picky: 7: picky about pickles" in str(picky)
        assert "raise Oops" in str(oops.__cause__)  # the worker's traceback, as text
    [run] = journal.list_flow_runs()
    first, second = journal.task_runs(run.id)
    assert (first.state_name, first.state_message) == ("Failed", "Oops: it went wrong")
    assert second.state_name == "Failed" and "7: picky about pickles" in second.state_message


def test_a_remote_body_is_retried(runner: TaskRunner, tmp_path: Path, journal: Journal) -> None:
    @flow(task_runner=runner)
    def retried(folder: str) -> int:
        return int(flaky.submit(folder).result())

    attempts = tmp_path / "attempts"
    attempts.mkdir()
    assert retried(str(attempts)) == 2
    assert len(list(attempts.iterdir())) == 3
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert (t.state_name, t.attempt, t.retries_used) == ("Completed", 3, 2)
    assert [h.name for h in journal.history(t.id)].count("AwaitingRetry") == 2


def test_futures_as_inputs_wait_for_and_allow_failure(
    runner: TaskRunner, tmp_path: Path, journal: Journal
) -> None:
    note = str(tmp_path / "note.txt")

    @flow(task_runner=runner)
    def wired() -> list[object]:
        two = add.submit(1, 1)
        four = add.submit(two, two)
        broken = fail.submit("oops")
        blocked = add.submit(broken, 1)
        tolerant = type_of.submit(allow_failure(broken))
        written = write.submit(note, "written first", 0.2)
        after = read.submit(note, wait_for=[written])
        blocked.wait()
        return [four.result(), tolerant.result(), after.result(), blocked.state.name]

    assert wired() == [4, "Oops", "written first", "Failed"]
    [run] = journal.list_flow_runs()
    keys = Counter(t.task_key for t in journal.task_runs(run.id))
    assert keys == Counter(add=2, fail=1, type_of=1, write=1, read=1)  # blocked never started


def test_cancel_a_call_that_has_not_started(
    runner: TaskRunner, kind: str, tmp_path: Path, journal: Journal
) -> None:
    gate = tmp_path / "gate"

    def running(future: Any) -> bool:
        run_id = get_run_context().flow_run_id
        return any(
            t.id == future.task_run_id and t.state_name == "Running"
            for t in journal.task_runs(run_id)
        )

    @flow(task_runner=runner)
    def cancelling() -> list[object]:
        holders = [hold.submit(str(gate)) for _ in range(ENGINES[kind])]
        queued = add.submit(1, 2)  # every engine thread is busy: it waits its turn
        cancelled, state = queued.cancel(), queued.state
        with pytest.raises(TaskRunCancelled, match="cancelled before it started"):
            queued.result()
        wait_for(lambda: running(holders[0]))
        running_cancelled = holders[0].cancel()
        gate.touch()
        held = [h.result() for h in holders]
        return [cancelled, state.type, running_cancelled, holders[0].cancel(), held]

    cancelled, state_type, running_cancelled, done_cancelled, held = cancelling()
    assert cancelled is True and state_type is StateType.CANCELLED
    assert running_cancelled is False and done_cancelled is False  # too late for those
    assert held == ["passed"] * ENGINES[kind]
    [run] = journal.list_flow_runs()
    assert {t.task_key for t in journal.task_runs(run.id)} == {"hold"}  # never journaled


def test_a_failing_flow_cancels_calls_not_started(
    runner: TaskRunner, kind: str, tmp_path: Path, journal: Journal
) -> None:
    gate = tmp_path / "gate"
    seen: list[Any] = []

    @flow(task_runner=runner)
    def failing() -> None:
        holders = [hold.submit(str(gate), 0.3) for _ in range(ENGINES[kind])]
        seen.extend(add.submit(i, i) for i in range(3))  # queued behind the holders
        seen.extend(holders)
        raise RuntimeError("the flow fails")

    with pytest.raises(RuntimeError, match="the flow fails"):
        failing()
    queued, holders = seen[:3], seen[3:]
    assert all(f.cancelled() for f in queued)
    assert all(f.state.name == "Completed" for f in holders)  # waited for: they had started
    [run] = journal.list_flow_runs()
    assert run.state_name == "Failed"
    assert {t.task_key for t in journal.task_runs(run.id)} == {"hold"}


def _alive(pid: int) -> bool:
    """True if the process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _scheduler_is_empty(dask_scheduler: Any) -> bool:
    return not dask_scheduler.tasks


class Stop(BaseException):
    """Ends a flow the way Ctrl-C does: not an error of the flow's own."""


def test_stopping_a_flow_abandons_its_running_bodies(
    runner: TaskRunner, kind: str, tmp_path: Path, journal: Journal, request: pytest.FixtureRequest
) -> None:
    if kind == "thread":
        pytest.skip("a thread cannot be stopped from outside: its body runs on")
    gate, told = tmp_path / "gate", tmp_path / "told"
    told.mkdir()
    queued: list[Any] = []

    @flow(task_runner=runner)
    def stopped() -> None:
        for _ in range(ENGINES[kind]):  # two run; Dask queues the others itself
            hold.submit(str(gate), 20, str(told))
        queued.append(add.submit(1, 1))  # every engine thread is busy
        wait_for(lambda: len(list(told.iterdir())) >= 2)
        raise Stop

    started = time.monotonic()
    try:
        with pytest.raises(Stop):
            stopped()
        assert time.monotonic() - started < 15  # the bodies would hold for 20 s
        assert queued[0].cancelled()
        [run] = journal.list_flow_runs()
        assert run.state_name == "Crashed"
        assert {t.task_key for t in journal.task_runs(run.id)} == {"hold"}
        if kind == "process":  # the worker processes were killed
            pids = {int(name.name.split("-")[0]) for name in told.iterdir()}
            wait_for(lambda: not any(_alive(pid) for pid in pids))
        else:  # the cluster holds nothing of the flow any more: cancelled, released
            distributed = pytest.importorskip("distributed")
            address = request.getfixturevalue("dask_address")
            with distributed.Client(address, set_as_default=False) as client:
                wait_for(lambda: client.run_on_scheduler(_scheduler_is_empty))
    finally:
        gate.touch()  # free the Dask worker threads (they cannot be stopped) for other tests


def test_logs_prints_and_idempotency_key_from_the_body(
    runner: TaskRunner, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "INFO")

    @flow(task_runner=runner, log_prints=True)
    def talking() -> list[list[str]]:
        return chatty.map(range(3)).result()

    answers = talking()
    [run] = journal.list_flow_runs()
    runs = journal.task_runs(run.id)
    assert answers == [[f"{run.id}:chatty:{i}", runs[i].id] for i in range(3)]
    lines = journal.logs(run.id)
    for i, t in enumerate(runs):
        mine = [(line.message, line.extra) for line in lines if line.task_run_id == t.id]
        assert ("hello from the body", json.dumps({"i": i})) in mine
        assert (f"printed {i}", None) in mine


def test_timeout_of_a_body(runner: TaskRunner, journal: Journal) -> None:
    @flow(task_runner=runner)
    def timing() -> list[str]:
        slow, quick = sleepy.submit(10), sleepy.submit(0)
        slow.wait()
        return [slow.state.name, quick.result()]

    started = time.monotonic()
    assert timing() == ["TimedOut", "woke"]
    assert time.monotonic() - started < 8
    [run] = journal.list_flow_runs()
    slow = journal.task_runs(run.id)[0]
    assert (slow.state_name, slow.state_message) == (
        "TimedOut",
        "RunTimeout: task 'sleepy' timed out after 0.5 s",
    )


def test_arguments_that_cannot_be_pickled(runner: TaskRunner, kind: str, journal: Journal) -> None:
    import threading

    seen: list[Any] = []

    @flow(task_runner=runner)
    def unpicklable() -> None:
        seen.append(type_of.submit(threading.Lock()).result(raise_on_failure=False))

    unpicklable()
    [outcome] = seen
    if kind == "thread":
        assert outcome == "lock"
    else:
        assert isinstance(outcome, SerializationError)
        assert "task 'type_of' cannot be sent to a worker" in str(outcome)


def test_a_killed_flow_resumes_replaying_what_completed(
    kind: str, db: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    n = 24
    runner = kind if kind != "dask" else f"dask:{request.getfixturevalue('dask_address')}"
    env = {"REMOTE_MAPPER_RUNNER": runner}
    side = tmp_path / "side.txt"
    entry = f"{FLOWS / 'remote_mapper.py'}:remote_mapper"
    params = ["-p", f"side={side}", "-p", f"n={n}", "-p", "pause=0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "persevere", "run", entry, *params],
        env=cli_env(db, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 6, timeout=30)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    first = [line.split() for line in side.read_text().splitlines()]
    [run] = json.loads(run_cli(db, "runs", "ls", "--json").stdout)
    shown = json.loads(run_cli(db, "runs", "show", run["id"], "--json").stdout)
    completed = {t["position"] for t in shown["task_runs"] if t["state_name"] == "Completed"}
    assert completed, "nothing completed before the kill"
    done = run_cli(db, "runs", "resume", run["id"], **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == sum(i * i for i in range(n))
    lines = [line.split() for line in side.read_text().splitlines()]
    ran = Counter(int(i) for i, _, _ in lines)
    assert set(ran) == set(range(n))
    assert all(ran[i] == 1 for i in completed)  # replayed, not run again
    assert sum(1 for c in ran.values() if c > 1) <= ENGINES[kind]  # at most those in flight
    for i, key, _ in lines:  # the same identity for the same call, before and after
        assert key == f"{run['id']}:square:{i}"
    if kind != "thread":
        assert all(int(pid) != proc.pid for _, _, pid in first)  # bodies ran elsewhere
    if kind == "process":  # the flow's worker processes left when it was killed
        wait_for(lambda: not any(_alive(int(pid)) for _, _, pid in first))
    shown = json.loads(run_cli(db, "runs", "show", run["id"], "--json").stdout)
    assert [(t["position"], t["dynamic_key"]) for t in shown["task_runs"]] == [
        (i, i) for i in range(n)
    ]
