"""Deployments and work queues: `persevere deploy`, `deployments`, `queues`, `Flow.deploy`,
`run_deployment`.

There is no worker loop here: where a run must execute, the test plays the
worker, claiming the run with ``journal.workers.claim`` and executing it in
this process (:func:`work_one`), as a worker does.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persevere
from persevere import flow
from persevere.exceptions import (
    DeploymentNotFound,
    EntrypointError,
    ParameterError,
    QueueNotFound,
    RunKeyConflict,
)
from persevere.journal import SCHEMA_VERSION, FlowRun, Journal, from_json, new_id, open_journal
from persevere.journal.results import to_json
from persevere.statemachine import StateType
from persevere.worker import deploying, entrypoints, execute, parameters
from persevere.worker.owners import this_process

from .conftest import FLOWS, cli_env, error_line, invoke, ok, run_cli, wait_for
from .flows import deployed

pytestmark = pytest.mark.timeout(60)

FLOW_FILE = FLOWS / "deployed.py"


def ep(name: str) -> str:
    return f"{FLOW_FILE}:{name}"


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Work in a temporary folder; undo what loading entrypoints does to the process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(builtins, "print", builtins.print)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("deployed", "persevere_entrypoint", "dep_")):
            del sys.modules[name]


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def work_one(journal: Journal, queues: list[str] | None = None) -> FlowRun:
    """Play a worker: claim the next due run and execute it here, to its end."""
    run = journal.workers.claim("test-worker", queues or [], this_process(), new_id())
    assert run is not None, "no run to claim"
    assert run.entrypoint is not None
    found = entrypoints.load(run.entrypoint)
    _, ended = execute(journal, found, run, deploying.run_parameters(journal, found, run))
    return ended


def stored_parameters(journal: Journal, run_id: str) -> Any:
    return parameters.decode(journal, journal.get_flow_run(run_id).parameters)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


DOUBLE_FLOW = """
from persevere import flow

@flow
def double(x: int) -> int:
    return 2 * x
"""


# -- persevere deploy -------------------------------------------------------------------


def test_deploy_registers_entrypoint_defaults_queue_and_signature(db: Path) -> None:
    result = ok(
        "deploy", ep("greet"), "--name", "hello", "-p", "punctuation=?",
        "--tag", "b", "--tag", "a", "--description", "says hello",
    )  # fmt: skip
    assert result.stdout == "created deployment 'greet/hello' on work queue 'default'\n"
    [doc] = as_json("deployments", "ls")
    assert doc["name"] == "greet/hello"
    assert (doc["flow_name"], doc["deployment_name"]) == ("greet", "hello")
    assert doc["entrypoint"] == f"{FLOW_FILE.resolve()}:greet"
    assert doc["parameters"] == {"punctuation": "?"}
    assert (doc["work_queue"], doc["tags"], doc["description"]) == (
        "default",
        ["a", "b"],
        "says hello",
    )
    shown = as_json("deployments", "inspect", "greet/hello")
    assert shown["signature"] == {
        "parameters": [
            {"name": "name", "required": True, "annotation": "str", "takes_text": True},
            {"name": "punctuation", "required": False, "annotation": "str", "takes_text": True},
        ],
        "var_keyword": False,
    }
    assert shown["runs"] == []
    [queue] = as_json("queues", "ls")
    assert queue["name"] == "default"


def test_deploying_again_updates_and_replaces_the_defaults(db: Path) -> None:
    ok("deploy", ep("add"), "--name", "nightly", "-p", "a=1", "-p", "b=2")
    first = as_json("deployments", "inspect", "add/nightly")
    result = ok("deploy", ep("add"), "--name", "nightly", "-p", "b=5", "--queue", "batch")
    assert result.stdout.startswith("updated deployment 'add/nightly' on work queue 'batch'")
    again = as_json("deployments", "inspect", "add/nightly")
    assert (again["id"], again["created"]) == (first["id"], first["created"])
    assert again["updated"] >= first["updated"]
    assert again["parameters"] == {"b": 5}  # what was given now, not merged with before
    assert again["work_queue"] == "batch"
    assert [q["name"] for q in as_json("queues", "ls")] == ["batch", "default"]
    assert len(as_json("deployments", "ls")) == 1


def test_description_defaults_to_the_flows_docstring(db: Path) -> None:
    ok("deploy", ep("greet"), "--name", "hello")
    assert as_json("deployments", "inspect", "greet/hello")["description"] == "Say hello."


def test_defaults_are_coerced_and_stored_typed(db: Path, journal: Journal) -> None:
    ok("deploy", ep("dated"), "--name", "d", "-p", "when=2026-03-04", "-p", "label=123")
    deployment = journal.deployments.get("dated/d")
    assert from_json(deployment.parameters) == {"when": dt.date(2026, 3, 4), "label": "123"}


def test_relative_file_entrypoint_is_stored_absolute(db: Path, tmp_path: Path) -> None:
    write(tmp_path / "sub" / "dep_rel.py", DOUBLE_FLOW)
    ok("deploy", "sub/dep_rel.py:double", "--name", "d")
    [doc] = as_json("deployments", "ls")
    assert doc["entrypoint"] == f"{(tmp_path / 'sub' / 'dep_rel.py').resolve()}:double"


def test_module_entrypoint_is_stored_as_its_file(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "mods" / "dep_pkg" / "__init__.py", "")
    write(tmp_path / "mods" / "dep_pkg" / "flows.py", DOUBLE_FLOW)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    ok("deploy", "dep_pkg.flows:double", "--name", "d")
    [doc] = as_json("deployments", "ls")
    assert doc["entrypoint"] == f"{(tmp_path / 'mods' / 'dep_pkg' / 'flows.py').resolve()}:double"


def test_a_flow_made_by_with_options_keeps_its_own_name(db: Path, journal: Journal) -> None:
    ok("deploy", ep("add_with_retries"), "--name", "r")
    deployment = journal.deployments.get("add/r")
    assert deployment.entrypoint == f"{FLOW_FILE.resolve()}:add_with_retries"
    assert entrypoints.load(deployment.entrypoint).retry_policy.retries == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([ep("nope"), "--name", "x"], "has no 'nope'"),
        ([f"{FLOW_FILE}", "--name", "x"], "must look like"),
        ([f"{FLOWS / 'missing.py'}:f", "--name", "x"], "no such file"),
        ([ep("greet"), "--name", "x", "-p", "zz=1"], "has no parameter 'zz'"),
        ([ep("add"), "--name", "x", "-p", "a=one"], "parameter 'a'"),
        ([ep("dated"), "--name", "x", "-p", "when=someday"], "parameter 'when'"),
        ([ep("add"), "--name", "x", "-p", "a"], "NAME=VALUE"),
        ([ep("add"), "--name", "x/y"], "deployment name 'x/y'"),
        ([ep("add"), "--name", " x"], "deployment name ' x'"),
        ([ep("add"), "--name", "x", "--queue", "a,b"], "work queue name 'a,b'"),
        ([ep("slashed"), "--name", "x"], "flow name 'team/etl'"),
    ],
)
def test_bad_deploy_is_one_line_and_registers_nothing(
    db: Path, args: list[str], expected: str
) -> None:
    assert expected in error_line(invoke("deploy", *args))
    assert as_json("deployments", "ls") == []


def test_deploy_needs_a_name(db: Path) -> None:
    result = invoke("deploy", ep("add"))
    assert result.exit_code == 2
    assert "--name" in result.stderr


# -- Flow.deploy --------------------------------------------------------------------------


def test_flow_deploy_returns_the_deployment(db: Path, journal: Journal) -> None:
    deployment = deployed.add.deploy(
        name="py", parameters={"b": "3"}, queue="python", tags=["x"], description="from Python"
    )
    assert isinstance(deployment, persevere.Deployment)
    assert deployment.name == "add/py"
    assert deployment.entrypoint == f"{FLOW_FILE.resolve()}:add"
    assert from_json(deployment.parameters) == {"b": 3}  # coerced to the flow's int
    assert (deployment.work_queue, deployment.tag_list) == ("python", ["x"])
    assert deployment.description == "from Python"
    again = deployed.add.deploy("py")
    assert again.id == deployment.id
    assert (again.parameters, again.work_queue, again.description) == ("{}", "default", "")
    assert journal.deployments.get("add/py") == again


def test_flow_deploy_checks_defaults(db: Path) -> None:
    with pytest.raises(ParameterError, match="has no parameter 'c'"):
        deployed.add.deploy("bad", parameters={"c": 1})
    with pytest.raises(ParameterError, match="parameter 'a'"):
        deployed.add.deploy("bad", parameters={"a": "one"})
    with pytest.raises(ParameterError, match="storable as JSON"):
        deployed.anything.deploy("bad", parameters={"x": object()})
    with pytest.raises(TypeError, match="list of strings"):
        deployed.add.deploy("bad", tags="nightly")
    with pytest.raises(DeploymentNotFound):
        open_journal().deployments.get("add/bad")


def test_a_flow_defined_inside_a_function_cannot_be_deployed(db: Path) -> None:
    @flow
    def local_flow() -> int:
        return 1

    with pytest.raises(EntrypointError, match="defined interactively or inside a function"):
        local_flow.deploy("x")


def test_a_with_options_copy_without_a_module_name_cannot_be_deployed(db: Path) -> None:
    copy = deployed.add.with_options(name="other")
    with pytest.raises(EntrypointError, match="holds no name for it"):
        copy.deploy("x")
    # an equal copy is the same flow: it deploys under the module's name
    same = deployed.add.with_options()
    assert same.deploy("x").entrypoint == f"{FLOW_FILE.resolve()}:add"


# -- persevere deployments run -----------------------------------------------------------


def test_run_makes_a_scheduled_run_with_merged_parameters_on_the_queue(
    db: Path, journal: Journal
) -> None:
    ok("deploy", ep("greet"), "--name", "hello", "-p", "punctuation=?", "--queue", "greetings")
    result = ok("deployments", "run", "greet/hello", "-p", "name=ann")
    run_id = result.stdout.strip()
    assert result.stdout == f"{run_id}\n"
    assert "work queue 'greetings'" in result.stderr
    assert "persevere worker start" in result.stderr
    run = journal.get_flow_run(run_id)
    assert (run.state_type, run.state_name) == (StateType.SCHEDULED, "Scheduled")
    assert run.work_queue == "greetings"
    assert run.deployment_id == journal.deployments.get("greet/hello").id
    assert run.entrypoint == f"{FLOW_FILE.resolve()}:greet"
    assert stored_parameters(journal, run_id) == {"name": "ann", "punctuation": "?"}
    overridden = ok("deployments", "run", "greet/hello", "-p", "name=bo", "-p", "punctuation=.")
    assert stored_parameters(journal, overridden.stdout.strip()) == {
        "name": "bo",
        "punctuation": ".",
    }
    [queue] = [q for q in as_json("queues", "ls") if q["name"] == "greetings"]
    assert (queue["scheduled"], queue["running"]) == (2, 0)
    shown = as_json("deployments", "inspect", "greet/hello")
    assert [r["id"] for r in shown["runs"]] == [overridden.stdout.strip(), run_id]


def test_run_json_prints_the_run(db: Path) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1")
    doc = as_json("deployments", "run", "add/n")
    assert (doc["state_name"], doc["parameters"]) == ("Scheduled", {"a": 1})
    line = error_line(invoke("deployments", "run", "add/n", "--json", "--watch"))
    assert "--watch and --json" in line


def test_the_worker_executes_a_run_with_coerced_parameters(db: Path, journal: Journal) -> None:
    ok("deploy", ep("dated"), "--name", "d", "-p", "when=2026-03-04")
    run_id = ok("deployments", "run", "dated/d", "-p", "label=123").stdout.strip()
    # a str parameter keeps the text given, even where it parses as JSON
    assert stored_parameters(journal, run_id) == {"when": dt.date(2026, 3, 4), "label": "123"}
    ended = work_one(journal)
    assert ended.id == run_id and ended.state_type is StateType.COMPLETED
    assert journal.load_result(ended.result_id or "") == {
        "when": "2026-03-04", "weekday": 3, "label": "123"
    }  # fmt: skip
    # an int given as a JSON string is stored as given and coerced by the worker
    ok("deploy", ep("add"), "--name", "n")
    run_id = ok("deployments", "run", "add/n", "-p", 'a="41"').stdout.strip()
    assert stored_parameters(journal, run_id) == {"a": "41"}
    ended = work_one(journal)
    assert journal.load_result(ended.result_id or "") == 42


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-p", "zz=1"], "deployment 'add/n' has no parameter 'zz'; it takes: a, b"),
        (["-p", "b=2"], "deployment 'add/n' needs parameter 'a'"),
        (["-p", "a"], "NAME=VALUE"),
        (["-p", "__persevere__=1"], "has no parameter '__persevere__'"),
    ],
)
def test_run_checks_names_against_the_stored_signature(
    db: Path, args: list[str], expected: str
) -> None:
    ok("deploy", ep("add"), "--name", "n")
    assert expected in error_line(invoke("deployments", "run", "add/n", *args))
    assert as_json("runs", "ls") == []


def test_run_checks_names_without_importing_the_flow(
    db: Path, tmp_path: Path, journal: Journal
) -> None:
    source = write(tmp_path / "dep_gone.py", DOUBLE_FLOW)
    ok("deploy", f"{source}:double", "--name", "d")
    source.unlink()  # only a worker's machine has the code now
    line = error_line(invoke("deployments", "run", "double/d", "-p", "y=1"))
    assert "has no parameter 'y'; it takes: x" in line
    run_id = ok("deployments", "run", "double/d", "-p", "x=2").stdout.strip()
    assert stored_parameters(journal, run_id) == {"x": 2}


def test_a_flow_taking_kwargs_accepts_any_name(db: Path, journal: Journal) -> None:
    ok("deploy", ep("anything"), "--name", "a", "-p", "k=1")
    run_id = ok("deployments", "run", "anything/a", "-p", "other=[1, 2]").stdout.strip()
    assert stored_parameters(journal, run_id) == {"k": 1, "other": [1, 2]}
    assert "**kwargs" in ok("deployments", "inspect", "anything/a").stdout


def test_run_key_returns_the_same_run(db: Path, journal: Journal) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1")
    first = ok("deployments", "run", "add/n", "--run-key", "k1")
    again = ok("deployments", "run", "add/n", "--run-key", "k1")
    same_values = ok("deployments", "run", "add/n", "--run-key", "k1", "-p", "a=1")
    assert first.stdout == again.stdout == same_values.stdout
    assert "exists already (Scheduled)" in again.stderr
    assert len(as_json("runs", "ls")) == 1
    work_one(journal)
    done = ok("deployments", "run", "add/n", "--run-key", "k1")
    assert done.stdout == first.stdout
    assert "exists already (Completed)" in done.stderr
    assert len(as_json("runs", "ls")) == 1


def test_run_key_with_other_parameters_or_another_deployment_is_refused(db: Path) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1")
    ok("deploy", ep("add"), "--name", "m", "-p", "a=1")
    ok("deployments", "run", "add/n", "--run-key", "k1")
    line = error_line(invoke("deployments", "run", "add/n", "--run-key", "k1", "-p", "a=2"))
    assert "run key 'k1'" in line and "other parameters" in line
    line = error_line(invoke("deployments", "run", "add/m", "--run-key", "k1"))
    assert "run key 'k1'" in line and "another deployment" in line
    assert len(as_json("runs", "ls")) == 1


def test_run_key_of_a_run_not_from_a_deployment_is_refused(db: Path, journal: Journal) -> None:
    assert deployed.add.with_options(run_key="k2")(1) == 2
    deployed.add.deploy("n")
    with pytest.raises(RunKeyConflict, match="of no deployment"):
        persevere.run_deployment("add/n", {"a": 1}, run_key="k2")


def test_unknown_deployment_gives_a_did_you_mean_hint(db: Path) -> None:
    ok("deploy", ep("greet"), "--name", "hello")
    line = error_line(invoke("deployments", "run", "greet/helo"))
    assert line == (
        "Error: no deployment 'greet/helo'; did you mean greet/hello? "
        "(`persevere deployments ls` lists them)"
    )
    line = error_line(invoke("deployments", "inspect", "hello"))
    assert "deployment names are flow-name/deployment-name; did you mean greet/hello?" in line
    line = error_line(invoke("deployments", "delete", "zzz/qqq"))
    assert "no deployment 'zzz/qqq'" in line and "did you mean" not in line


def test_inspect_shows_queue_parameters_and_recent_runs(db: Path) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "b=2", "--tag", "t1", "--queue", "q")
    ok("queues", "pause", "q")
    result = ok("deployments", "run", "add/n", "-p", "a=1")
    run_id = result.stdout.strip()
    assert "work queue 'q' is paused" in result.stderr
    text = ok("deployments", "inspect", "add/n").stdout
    assert f"entrypoint:  {FLOW_FILE.resolve()}:add" in text
    assert "work queue:  q (paused)" in text
    assert 'parameters:  {"b": 2}' in text
    assert "takes:       a: int (required), b: int" in text
    assert "tags:        t1" in text
    assert run_id in text and "Scheduled" in text
    listed = ok("deployments", "ls").stdout.splitlines()
    assert listed[0].split() == ["NAME", "QUEUE", "SCHEDULES", "TAGS", "UPDATED", "ENTRYPOINT"]
    assert listed[1].startswith("add/n")


# -- deleting a deployment -------------------------------------------------------------


def test_delete_cancels_the_runs_waiting_for_a_worker(db: Path, journal: Journal) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1")
    waiting = [ok("deployments", "run", "add/n").stdout.strip() for _ in range(2)]
    claimed = journal.workers.claim("w", [], this_process(), new_id())
    assert claimed is not None and claimed.id in waiting
    [other] = set(waiting) - {claimed.id}
    result = ok("deployments", "delete", "add/n")
    assert result.stdout == "deleted deployment 'add/n'; cancelled 1 scheduled run\n"
    gone = journal.get_flow_run(other)
    assert (gone.state_type, gone.state_message) == (
        StateType.CANCELLED, "deployment add/n was deleted"
    )  # fmt: skip
    assert journal.get_flow_run(claimed.id).state_type is StateType.PENDING  # it goes on
    assert as_json("deployments", "ls") == []
    assert "no deployment 'add/n'" in error_line(invoke("deployments", "run", "add/n"))
    # the runs and their history stay
    assert {r["id"] for r in as_json("runs", "ls")} == set(waiting)


# -- --watch ----------------------------------------------------------------------------------


def _watch(db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "persevere", "deployments", "run", *args, "--watch"],
        env=cli_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _scheduled(journal: Journal) -> FlowRun:
    def find() -> FlowRun | None:
        found = journal.list_flow_runs(StateType.SCHEDULED)
        return found[0] if found else None

    run = wait_for(find)
    assert isinstance(run, FlowRun)
    return run


def test_watch_follows_the_run_and_exits_0_when_it_completes(db: Path, journal: Journal) -> None:
    deployed.greet.deploy("hello")
    watcher = _watch(db, "greet/hello", "-p", "name=ann")
    try:
        run = _scheduled(journal)
        assert work_one(journal).state_type is StateType.COMPLETED
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert json.loads(out) == "hello ann!"
    lines = err.splitlines()
    assert lines[0].startswith(f"scheduled run {run.id} of greet/hello")
    names = [line.split(None, 2)[2].split(":")[0] for line in lines[1:-1]]
    assert names == ["Scheduled", "Pending", "Running", "Completed"]
    assert "claimed by worker test-worker" in err
    assert lines[-1] == f"run {run.id} Completed"


def test_watch_exits_1_when_the_run_fails(db: Path, journal: Journal) -> None:
    deployed.boom.deploy("b")
    watcher = _watch(db, "boom/b")
    try:
        run = _scheduled(journal)
        assert work_one(journal).state_type is StateType.FAILED
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 1, err
    assert out == ""
    assert f"run {run.id} Failed: RuntimeError: kaboom on purpose" in err
    assert "Traceback" not in err


def test_watch_says_when_the_result_cannot_be_loaded_here(db: Path, journal: Journal) -> None:
    ok("deploy", ep("boxed"), "--name", "b")
    run = persevere.run_deployment("boxed/b", run_key="box")
    assert work_one(journal).state_type is StateType.COMPLETED
    # a pickled instance of a class of the flow's module, which the watcher cannot import
    result = run_cli(db, "deployments", "run", "boxed/b", "--run-key", "box", "--watch")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "its result cannot be loaded here: ModuleNotFoundError" in result.stderr
    assert result.stderr.strip().endswith(f"run {run.id} Completed")
    assert "Traceback" not in result.stderr


def test_watch_of_a_finished_run_key_reports_at_once(db: Path, journal: Journal) -> None:
    deployed.add.deploy("n", parameters={"a": 4})
    run = persevere.run_deployment("add/n", run_key="once")
    work_one(journal)
    result = run_cli(db, "deployments", "run", "add/n", "--run-key", "once", "--watch")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 5
    assert f"run key 'once': run {run.id} exists already (Completed)" in result.stderr


def test_ctrl_c_stops_watching_not_the_run(db: Path, journal: Journal) -> None:
    deployed.add.deploy("n", parameters={"a": 1})
    watcher = _watch(db, "add/n")
    try:
        assert watcher.stderr is not None
        assert watcher.stderr.readline().startswith("scheduled run")
        assert "Scheduled" in watcher.stderr.readline()  # printed while it follows the run
        run = _scheduled(journal)
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 130, err
    assert out == ""
    assert f"stopped watching run {run.id}; it goes on" in err
    assert "Traceback" not in err
    assert journal.get_flow_run(run.id).state_name == "Scheduled"


@pytest.mark.parametrize(
    ("state", "auto_resumes", "max_auto_resumes", "queue", "ended"),
    [
        (StateType.COMPLETED, 0, None, "q", True),
        (StateType.FAILED, 0, None, "q", True),
        (StateType.CANCELLED, 0, None, "q", True),
        (StateType.RUNNING, 0, None, "q", False),
        (StateType.SCHEDULED, 0, None, "q", False),
        (StateType.CRASHED, 0, None, "q", False),  # a worker resumes it
        (StateType.CRASHED, 2, None, "q", False),
        (StateType.CRASHED, 3, None, "q", True),  # no automatic resumes left
        (StateType.CRASHED, 0, 0, "q", True),
        (StateType.CRASHED, 0, None, None, True),  # not on a queue: nobody resumes it
    ],
)
def test_a_run_has_ended_when_final_and_no_worker_resumes_it(
    journal: Journal,
    state: StateType,
    auto_resumes: int,
    max_auto_resumes: int | None,
    queue: str | None,
    ended: bool,
) -> None:
    deployed.add.deploy("n", parameters={"a": 1})
    base = persevere.run_deployment("add/n")
    run = dataclasses.replace(
        base,
        state_type=state,
        auto_resumes=auto_resumes,
        max_auto_resumes=max_auto_resumes,
        work_queue=queue,
    )
    assert deploying.has_ended(run) is ended


# -- run_deployment ------------------------------------------------------------------------


def test_run_deployment_returns_the_scheduled_run(db: Path, journal: Journal) -> None:
    deployed.greet.deploy("hello", parameters={"punctuation": "."})
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    run = persevere.run_deployment("greet/hello", {"name": "cy"}, scheduled_time=later)
    assert (run.state_name, run.work_queue) == ("Scheduled", "default")
    assert run.scheduled_ms == int(later.timestamp() * 1000)
    assert stored_parameters(journal, run.id) == {"name": "cy", "punctuation": "."}
    assert journal.workers.claim("w", [], this_process(), new_id()) is None  # not due yet
    assert persevere.run_deployment("greet/hello", {"name": "cy"}, run_key="r").id != run.id
    with pytest.raises(ParameterError, match="needs parameter 'name'"):
        persevere.run_deployment("greet/hello")
    with pytest.raises(ParameterError, match="storable as JSON"):
        persevere.run_deployment("greet/hello", {"name": object()})
    with pytest.raises(DeploymentNotFound, match="did you mean greet/hello"):
        persevere.run_deployment("greet/hell")


def test_run_deployment_waits_until_the_timeout(db: Path, journal: Journal) -> None:
    deployed.add.deploy("n", parameters={"a": 1})
    started = time.monotonic()
    run = persevere.run_deployment("add/n", timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert run.state_name == "Scheduled"  # no worker: it still waits, and goes on


def test_run_deployment_waits_for_the_end(db: Path, journal: Journal) -> None:
    deployed.add.deploy("n", parameters={"a": 1})
    worker = threading.Thread(target=lambda: (_scheduled(journal), work_one(journal)))
    worker.start()
    run = persevere.run_deployment("add/n", {"b": 10}, timeout=30)
    worker.join(timeout=30)
    assert run.state_type is StateType.COMPLETED
    assert journal.load_result(run.result_id or "") == 11


# -- parameters round trip (property) -------------------------------------------------------

# Mostly a few names, so that defaults and overrides often share some.
NAMES = st.sampled_from(["a", "b", "c", "return", "kwargs"]) | st.text(
    min_size=1, max_size=8
).filter(lambda n: n != "__persevere__")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
TYPED_VALUES = JSON_VALUES | st.dates() | st.tuples(st.integers(), st.text(max_size=3))


@given(
    defaults=st.dictionaries(NAMES, TYPED_VALUES, max_size=4),
    overrides=st.dictionaries(NAMES, TYPED_VALUES, max_size=4),
)
def test_merging_gives_the_defaults_with_the_overrides_laid_over(
    defaults: dict[str, Any], overrides: dict[str, Any]
) -> None:
    merged = deploying.merge(to_json(defaults), overrides)
    assert from_json(merged) == {**defaults, **overrides}
    # the same values give the same text, whatever their order (run keys compare it)
    assert deploying.merge(to_json(dict(reversed(defaults.items()))), overrides) == merged


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    defaults=st.dictionaries(NAMES, JSON_VALUES, max_size=4),
    overrides=st.dictionaries(NAMES, JSON_VALUES, max_size=4),
)
def test_a_run_stores_exactly_the_defaults_merged_with_the_overrides(
    journal: Journal, defaults: dict[str, Any], overrides: dict[str, Any]
) -> None:
    deployed.anything.deploy("prop", parameters=defaults)
    run = persevere.run_deployment("anything/prop", overrides)
    assert stored_parameters(journal, run.id) == {**defaults, **overrides}


# -- work queues -----------------------------------------------------------------------------


def test_queue_create_ls_pause_resume_set_limit_delete(db: Path) -> None:
    assert ok("queues", "create", "q1", "--limit", "2", "--description", "batch jobs").stdout == (
        "created work queue 'q1' (limit 2)\n"
    )
    [doc] = as_json("queues", "ls")
    assert {k: doc[k] for k in ("name", "concurrency_limit", "paused", "scheduled", "running")} == {
        "name": "q1", "concurrency_limit": 2, "paused": False, "scheduled": 0, "running": 0
    }  # fmt: skip
    assert doc["description"] == "batch jobs"
    ok("queues", "pause", "q1")
    assert as_json("queues", "ls")[0]["paused"] is True
    ok("queues", "resume", "q1")
    assert as_json("queues", "ls")[0]["paused"] is False
    assert ok("queues", "set-limit", "q1", "none").stdout == "work queue 'q1': no limit\n"
    assert as_json("queues", "ls")[0]["concurrency_limit"] is None
    ok("queues", "set-limit", "q1", "0")
    assert as_json("queues", "ls")[0]["concurrency_limit"] == 0
    table = ok("queues", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "LIMIT", "PAUSED", "SCHEDULED", "RUNNING", "DESCRIPTION"]
    assert table[1].split() == ["q1", "0", "no", "0", "0", "batch", "jobs"]
    assert ok("queues", "delete", "q1").stdout == "deleted work queue 'q1'\n"
    assert as_json("queues", "ls") == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["create", "q1"], "work queue 'q1' exists already"),
        (["create", "q2", "--limit", "-1"], "queue limit '-1' must be a whole number"),
        (["create", "q2", "--limit", "abc"], "queue limit 'abc'"),
        (["create", "a,b"], "work queue name 'a,b'"),
        (["create", ""], "work queue name ''"),
        (["set-limit", "q1", "-3"], "queue limit '-3'"),
        (["set-limit", "q1", "many"], "queue limit 'many'"),
        (["set-limit", "nope", "1"], "no work queue 'nope'"),
        (["pause", "nope"], "no work queue 'nope'; `persevere queues ls` lists them"),
        (["resume", "nope"], "no work queue 'nope'"),
        (["delete", "nope"], "no work queue 'nope'"),
    ],
)
def test_bad_queue_commands_are_one_line(db: Path, args: list[str], expected: str) -> None:
    ok("queues", "create", "q1")
    assert expected in error_line(invoke("queues", *args))
    assert [q["name"] for q in as_json("queues", "ls")] == ["q1"]


def test_a_queue_in_use_is_not_deleted(db: Path, journal: Journal) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1", "--queue", "q")
    line = error_line(invoke("queues", "delete", "q"))
    assert "used by deployments add/n; delete them first" in line
    ok("deployments", "run", "add/n")
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1", "--queue", "other")  # its run stays on q
    line = error_line(invoke("queues", "delete", "q"))
    assert "has 1 unfinished runs (1 scheduled, 0 running" in line
    work_one(journal, ["q"])
    ok("queues", "delete", "q")


def test_pause_and_limits_decide_what_a_worker_may_claim(db: Path, journal: Journal) -> None:
    ok("deploy", ep("add"), "--name", "n", "-p", "a=1", "--queue", "q")
    first, second = (ok("deployments", "run", "add/n").stdout.strip() for _ in range(2))

    def claim() -> FlowRun | None:
        return journal.workers.claim("w", ["q"], this_process(), new_id())

    ok("queues", "pause", "q")
    assert claim() is None
    ok("queues", "resume", "q")
    ok("queues", "set-limit", "q", "1")
    taken = claim()
    assert taken is not None and taken.id in (first, second)
    assert claim() is None  # the queue's one place is taken
    assert as_json("queues", "ls")[0]["running"] == 1
    ok("queues", "set-limit", "q", "none")
    again = claim()
    assert again is not None and {again.id, taken.id} == {first, second}


def test_queue_errors_from_python(journal: Journal) -> None:
    with pytest.raises(QueueNotFound):
        journal.deployments.pause_queue("nope")
    with pytest.raises(ValueError, match="0 or more"):
        journal.deployments.create_queue("q", limit=-1)


# -- schema ------------------------------------------------------------------------------------


def test_a_version_2_database_is_migrated_keeping_its_data(db: Path, tmp_path: Path) -> None:
    import sqlite_utils

    from persevere.journal import schema

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.table("schema_version").create({"version": int})
    db.table("schema_version").insert({"version": 2})
    schema._v1(db)
    schema._v2(db)
    conn.execute(
        "INSERT INTO flow_runs (id, flow_name, entrypoint, parameters, state_type, state_name, "
        "version, created_ms) VALUES ('r1', 'add', NULL, '{\"a\":1}', 'COMPLETED', "
        "'Completed', 3, 1)"
    )
    conn.execute(
        "INSERT INTO task_runs (id, flow_run_id, position, task_key, dynamic_key, state_type, "
        "state_name, version, created_ms, upstream) VALUES ('r1.00000000', 'r1', 0, 't', 0, "
        "'COMPLETED', 'Completed', 3, 1, NULL)"
    )
    conn.execute(
        "INSERT INTO concurrency_limits (name, slots, created_ms, updated_ms) "
        "VALUES ('db', 3, 1, 1)"
    )
    conn.close()

    journal = open_journal(path)
    assert journal.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION == 5
    old = journal.get_flow_run("r1")
    assert (old.flow_name, old.state_name, old.parameters) == ("add", "Completed", '{"a":1}')
    assert (old.auto_resumes, old.worker_name, old.work_queue, old.tags) == (0, None, None, None)
    assert [t.task_key for t in journal.task_runs("r1")] == ["t"]
    limit = journal.limits.get("db")
    assert limit is not None and limit.slots == 3
    assert journal.deployments.all() == [] and journal.deployments.queues() == []
    # and the new tables work
    deployment, created = deploying.deploy(deployed.add, "n", {"a": 2}, journal=journal)
    assert created
    _, run = deploying.schedule("add/n", {}, journal=journal)
    assert run.work_queue == "default" and run.deployment_id == deployment.id
