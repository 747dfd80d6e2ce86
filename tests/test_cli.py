"""The `persevere` command line: every command, every bad input.

Most cases go through click's CliRunner in this process (fast); a few run
`python -m persevere` as a real process, end to end. Flows live in
tests/flows/cli_flows.py and are steered by CLI_TEST_SIDE (a side file each
flow and task body appends its name to, to count executions) and CLI_TEST_FAIL
(while the file it names exists, task `second` raises).
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import re
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import persevere
from persevere.cli import cli
from persevere.exceptions import EntrypointError
from persevere.journal import SCHEMA_VERSION, close_all

from .conftest import FLOWS, error_line, invoke, ok, run_cli

pytestmark = pytest.mark.timeout(60)

FLOW_FILE = FLOWS / "cli_flows.py"
RUN_KEYS = {"id", "flow_name", "state_type", "state_name", "run_key", "created", "parameters"}


def ep(name: str) -> str:
    """The file entrypoint of a flow in tests/flows/cli_flows.py."""
    return f"{FLOW_FILE}:{name}"


# -- fixtures and helpers -------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Work in a temporary folder; undo what loading entrypoints does to the process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # _import_file prepends folders
    monkeypatch.setattr(builtins, "print", builtins.print)  # log_prints replaces print
    for name in ("CLI_TEST_SIDE", "CLI_TEST_FAIL", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("cli_", "persevere_entrypoint", "clipkg_")):
            del sys.modules[name]


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("CLI_TEST_SIDE", str(path))
    return path


@pytest.fixture
def fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file whose existence makes task `second` fail; not created yet."""
    path = tmp_path / "fail-now"
    monkeypatch.setenv("CLI_TEST_FAIL", str(path))
    return path


def executed(side: Path) -> Counter[str]:
    """How many times each flow or task body ran."""
    if not side.exists():
        return Counter()
    return Counter(side.read_text().splitlines())


def runs_json(*args: str) -> list[dict[str, Any]]:
    found = json.loads(ok("runs", "ls", "--json", *args).stdout)
    assert isinstance(found, list)
    return found


def show_json(run_id: str) -> dict[str, Any]:
    doc = json.loads(ok("runs", "show", run_id, "--json").stdout)
    assert isinstance(doc, dict)
    return doc


def run_id_in(stderr: str) -> str:
    match = re.search(r"\brun ([0-9a-f]{32}) ", stderr)
    assert match, stderr
    return match.group(1)


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


# -- persevere run: entrypoints and results ---------------------------------------


def test_run_file_entrypoint_prints_json_result(db: Path, side: Path) -> None:
    result = ok("run", ep("pipeline"), "-p", "n=2")
    assert json.loads(result.stdout) == 30
    assert result.stdout.count("\n") == 1
    run_id = run_id_in(result.stderr)
    assert "Completed" in result.stderr
    [run] = runs_json()
    assert (run["id"], run["flow_name"], run["state_type"]) == (run_id, "pipeline", "COMPLETED")
    assert run["parameters"] == {"n": 2}
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}


def test_run_relative_file_entrypoint(db: Path, tmp_path: Path) -> None:
    write(tmp_path / "sub" / "cli_rel.py", DOUBLE_FLOW)
    result = ok("run", "sub/cli_rel.py:double", "-p", "x=21")  # cwd is tmp_path
    assert json.loads(result.stdout) == 42


def test_run_module_entrypoint_on_sys_path(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"clipkg_{uuid.uuid4().hex[:8]}"
    write(tmp_path / "mods" / package / "__init__.py", "")
    write(tmp_path / "mods" / package / "flows.py", DOUBLE_FLOW)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    result = ok("run", f"{package}.flows:double", "-p", "x=4")
    assert json.loads(result.stdout) == 8
    [run] = runs_json()
    assert run["entrypoint"] == f"{tmp_path / 'mods' / package / 'flows.py'}:double"


@pytest.mark.parametrize(
    ("raw", "value", "type_name"),
    [
        ("3", 3, "int"),
        ("3.5", 3.5, "float"),
        ("true", True, "bool"),
        ("null", None, "NoneType"),
        ('{"a": [1, 2]}', {"a": [1, 2]}, "dict"),
        ("[1, 2]", [1, 2], "list"),
        ('"3"', "3", "str"),
        ("hello", "hello", "str"),
        ("hello world", "hello world", "str"),
        ("[1, 2", "[1, 2", "str"),
        ("a=b", "a=b", "str"),
        ("", "", "str"),
    ],
)
def test_param_values_are_json_when_they_parse_else_strings(
    db: Path, raw: str, value: Any, type_name: str
) -> None:
    result = ok("run", ep("echo"), "-p", f"value={raw}")
    assert json.loads(result.stdout) == {"value": value, "type": type_name}


def test_params_are_coerced_against_type_hints(db: Path) -> None:
    result = ok(
        "run", ep("typed"), "-p", "n=3", "-p", "when=2026-01-02", "-p", "xs=[1,2]", "-p", "label=hi"
    )
    assert json.loads(result.stdout) == {
        "n": 3,
        "n_type": "int",
        "when": "2026-01-02",
        "when_type": "date",
        "xs": [1, 2],
        "label": "hi",
    }
    # JSON strings that spell the right type are coerced too
    result = ok("run", ep("typed"), "-p", 'n="7"', "-p", "when=2026-12-31", "-p", 'xs=["1",2]')
    out = json.loads(result.stdout)
    assert (out["n"], out["n_type"], out["xs"], out["label"]) == (7, "int", [1, 2], "x")
    newest = runs_json()[0]
    assert (newest["parameters"]["n"], newest["parameters"]["xs"]) == (7, [1, 2])


def test_str_param_given_digits_is_a_string(db: Path) -> None:
    result = invoke("run", ep("typed"), "-p", "n=1", "-p", "when=2026-01-02", "-p", "label=123")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] == "123"


@pytest.mark.parametrize(
    ("param", "name"),
    [
        ("n=abc", "n"),
        ("n=1.5", "n"),
        ("when=2026-13-02", "when"),
        ("when=yesterday", "when"),
        ('xs=[1,"a"]', "xs"),
        ("xs=1", "xs"),
    ],
)
def test_bad_param_value_is_one_line_naming_it(db: Path, side: Path, param: str, name: str) -> None:
    args = {"n": "n=1", "when": "when=2026-01-02"}
    args[param.split("=")[0]] = param
    result = invoke("run", ep("typed"), *(a for v in args.values() for a in ("-p", v)))
    line = error_line(result)
    assert f"parameter {name!r}" in line
    assert runs_json() == []  # no run was created


def test_unknown_param_is_one_line_naming_it(db: Path, side: Path) -> None:
    line = error_line(invoke("run", ep("pipeline"), "-p", "n=1", "-p", "zz=1"))
    assert "'zz'" in line
    assert "it takes: n" in line
    assert executed(side) == {}


def test_missing_required_param_is_one_line_naming_it(db: Path) -> None:
    line = error_line(invoke("run", ep("typed"), "-p", "when=2026-01-02"))
    assert "needs parameter 'n'" in line
    assert runs_json() == []


@pytest.mark.parametrize("param", ["n", "=3", " =3", ""])
def test_malformed_param_is_one_line(db: Path, side: Path, param: str) -> None:
    line = error_line(invoke("run", ep("pipeline"), "-p", param))
    assert "NAME=VALUE" in line
    assert executed(side) == {}


def _bad_import(tmp_path: Path) -> str:
    path = write(tmp_path / "cli_bad_import.py", 'raise RuntimeError("no import")')
    return f"{path}:f"


def _bad_syntax(tmp_path: Path) -> str:
    path = write(tmp_path / "cli_bad_syntax.py", "def f(:")
    return f"{path}:f"


@pytest.mark.parametrize(
    ("make_entrypoint", "expected"),
    [
        (lambda tmp: f"{tmp / 'nope.py'}:f", "no such file"),
        (lambda tmp: f"{tmp}:f", "no such file"),
        (lambda tmp: ep("nope"), "has no 'nope'"),
        (lambda tmp: ep("pipeline.nope"), "has no 'pipeline.nope'"),
        (lambda tmp: ep("not_a_flow"), "is not a flow"),
        (lambda tmp: ep("first"), "is not a flow"),  # a task
        (lambda tmp: str(FLOW_FILE), "must look like"),
        (lambda tmp: f"{FLOW_FILE}:", "must look like"),
        (lambda tmp: ":pipeline", "must look like"),
        (lambda tmp: "pipeline", "must look like"),
        (lambda tmp: "cli_no_such_module_xyz:f", "cannot import module"),
        (lambda tmp: "os:getcwd", "is not a flow"),
        (_bad_import, "RuntimeError: no import"),
        (_bad_syntax, "SyntaxError"),
    ],
)
def test_bad_entrypoint_is_one_line(
    db: Path, tmp_path: Path, make_entrypoint: Any, expected: str
) -> None:
    line = error_line(invoke("run", make_entrypoint(tmp_path)))
    assert expected in line


def test_module_raising_on_import_is_one_line(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "mods" / "cli_raises_on_import.py", 'raise RuntimeError("no import")')
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    result = CliRunner().invoke(cli, ["run", "cli_raises_on_import:f"])
    assert result.exit_code == 2, result.output
    assert "RuntimeError: no import" in error_line(result)


def test_debug_raises_instead_of_one_line(db: Path, tmp_path: Path) -> None:
    args = ["run", f"{tmp_path / 'nope.py'}:f"]
    quiet = CliRunner().invoke(cli, args)
    assert quiet.exit_code == 2 and quiet.exception is not None
    assert isinstance(quiet.exception, SystemExit)
    loud = CliRunner().invoke(cli, ["--debug", *args])
    assert isinstance(loud.exception, EntrypointError)
    assert loud.exit_code == 1


def test_flow_that_raises_exits_1_naming_the_run(db: Path, side: Path) -> None:
    result = invoke("run", ep("boom"))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    first_line = result.stderr.splitlines()[0]
    [run] = runs_json()
    assert first_line == f"run {run['id']} Failed: RuntimeError: kaboom on purpose"
    assert f"persevere runs resume {run['id']}" in result.stderr
    assert (run["state_type"], run["state_name"]) == ("FAILED", "Failed")
    assert executed(side) == {"boom": 1}


def test_interrupted_run_exits_130_and_resumes(db: Path, side: Path, fail: Path) -> None:
    fail.touch()
    result = invoke("run", ep("interruptible"))
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    [run] = runs_json()
    assert run["state_type"] == "CRASHED"
    assert result.stderr.strip().splitlines() == [
        f"run {run['id']} interrupted; `persevere runs resume {run['id']}` goes on"
    ]
    fail.unlink()
    resumed = ok("runs", "resume", run["id"])
    assert json.loads(resumed.stdout) == "done"
    assert executed(side) == {"interruptible": 2}


def test_interrupted_subflow_names_a_run_that_resumes(db: Path, side: Path, fail: Path) -> None:
    fail.touch()
    result = invoke("run", ep("interruptible_parent"))
    assert result.exit_code == 130, result.output
    named = run_id_in(result.stderr)
    fail.unlink()
    resumed = invoke("runs", "resume", named)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout) == "done"


# -- persevere run --run-key ---------------------------------------------------------


def test_run_key_returns_the_stored_result_without_running_again(db: Path, side: Path) -> None:
    first = ok("run", ep("pipeline"), "-p", "n=2", "--run-key", "nightly")
    assert json.loads(first.stdout) == 30
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}
    again = ok("run", ep("pipeline"), "-p", "n=2", "--run-key", "nightly")
    assert again.stdout == first.stdout
    assert run_id_in(again.stderr) == run_id_in(first.stderr)
    coerced = ok(
        "run", ep("pipeline"), "-p", 'n="2"', "--run-key", "nightly"
    )  # same after coercion
    assert coerced.stdout == first.stdout
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}
    [run] = runs_json()
    assert run["run_key"] == "nightly"


def test_run_key_treats_defaults_as_given(db: Path, side: Path) -> None:
    ok("run", ep("pipeline"), "--run-key", "k")
    again = ok("run", ep("pipeline"), "-p", "n=1", "--run-key", "k")
    assert json.loads(again.stdout) == 20
    assert executed(side)["pipeline"] == 1


def test_run_key_with_other_parameters_or_flow_is_refused(db: Path, side: Path) -> None:
    ok("run", ep("pipeline"), "-p", "n=2", "--run-key", "nightly")
    line = error_line(invoke("run", ep("pipeline"), "-p", "n=3", "--run-key", "nightly"))
    assert "run key 'nightly'" in line
    assert "other parameters" in line
    line = error_line(invoke("run", ep("boom"), "--run-key", "nightly"))
    assert "run key 'nightly'" in line
    assert "'pipeline'" in line
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}
    assert len(runs_json()) == 1


def test_run_key_after_a_failure_resumes_the_run(db: Path, side: Path, fail: Path) -> None:
    fail.touch()
    failed = invoke("run", ep("pipeline"), "--run-key", "retry-me")
    assert failed.exit_code == 1, failed.output
    fail.unlink()
    done = ok("run", ep("pipeline"), "--run-key", "retry-me")
    assert json.loads(done.stdout) == 20
    assert run_id_in(done.stderr) == run_id_in(failed.stderr)
    assert executed(side) == {"pipeline": 2, "first": 1, "second": 2}


# -- persevere runs ls ---------------------------------------------------------------


@pytest.fixture
def three_runs(db: Path) -> list[str]:
    """Ids of: pipeline (Completed), boom (Failed), pipeline with a run key (Completed)."""
    ids = []
    for args in (
        ["run", ep("pipeline")],
        ["run", ep("boom")],
        ["run", ep("pipeline"), "-p", "n=5", "--run-key", "the-key"],
    ):
        ids.append(run_id_in(invoke(*args).stderr))
        time.sleep(0.003)  # distinct created_ms (see test_runs_ls_orders_runs_of_one_millisecond)
    return ids


def test_runs_ls_table(three_runs: list[str]) -> None:
    lines = ok("runs", "ls").stdout.splitlines()
    assert lines[0].split() == ["ID", "FLOW", "STATE", "CREATED", "RUN", "KEY"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == three_runs[::-1]  # newest first
    assert [(r[1], r[2]) for r in rows] == [
        ("pipeline", "Completed"), ("boom", "Failed"), ("pipeline", "Completed")
    ]  # fmt: skip
    assert rows[0][-1] == "the-key"
    assert len(rows[1]) == 5  # no run key
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", rows[0][3])


def test_runs_ls_json(three_runs: list[str]) -> None:
    found = runs_json()
    assert [r["id"] for r in found] == three_runs[::-1]
    for run in found:
        assert set(run) >= RUN_KEYS
        assert dt.datetime.fromisoformat(run["created"]).tzinfo is not None
    newest, failed, oldest = found
    assert (newest["run_key"], newest["parameters"], newest["state_name"]) == (
        "the-key", {"n": 5}, "Completed"
    )  # fmt: skip
    assert (failed["flow_name"], failed["state_type"], failed["state_name"]) == (
        "boom", "FAILED", "Failed"
    )  # fmt: skip
    assert "kaboom on purpose" in failed["state_message"]
    assert (oldest["run_key"], oldest["parameters"]) == (None, {"n": 1})
    assert newest["created"] >= failed["created"] >= oldest["created"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--state", "COMPLETED"], [2, 0]),
        (["--state", "completed"], [2, 0]),
        (["--state", "failed"], [1]),
        (["--state", "Failed"], [1]),
        (["--state", "crashed"], []),
        (["--flow", "boom"], [1]),
        (["--flow", "pipeline"], [2, 0]),
        (["--flow", "nosuch"], []),
        (["--limit", "1"], [2]),
        (["--limit", "2"], [2, 1]),
        (["--state", "completed", "--flow", "pipeline", "--limit", "1"], [2]),
    ],
)
def test_runs_ls_filters(three_runs: list[str], options: list[str], expected: list[int]) -> None:
    assert [r["id"] for r in runs_json(*options)] == [three_runs[i] for i in expected]
    table = ok("runs", "ls", *options).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [three_runs[i] for i in expected]


@pytest.mark.parametrize(
    "options",
    [["--state", "BOGUS"], ["--state", ""], ["--limit", "0"], ["--limit", "x"], ["--nope"]],
)
def test_runs_ls_bad_options(db: Path, options: list[str]) -> None:
    result = invoke("runs", "ls", *options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert "Error" in result.stderr


def test_runs_ls_on_an_empty_database(db: Path) -> None:
    assert ok("runs", "ls").stdout.split() == ["ID", "FLOW", "STATE", "CREATED", "RUN", "KEY"]
    assert runs_json() == []


def test_runs_ls_orders_runs_of_one_millisecond(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persevere.clock, "now_ms", lambda: 1_800_000_000_000)
    created = [run_id_in(ok("run", ep("echo"), "-p", f"value={i}").stderr) for i in range(8)]
    assert [r["id"] for r in runs_json()] == created[::-1]


# -- persevere runs show ---------------------------------------------------------


def test_runs_show_text(db: Path) -> None:
    run_id = run_id_in(ok("run", ep("pipeline"), "-p", "n=2", "--run-key", "k1").stderr)
    out = ok("runs", "show", run_id).stdout
    lines = out.splitlines()
    assert lines[0] == f"run {run_id}  flow pipeline  Completed (COMPLETED)"
    assert '  parameters: {"n": 2}' in lines
    assert "  run key:    k1" in lines
    assert f"  entrypoint: {ep('pipeline')}" in lines
    history = lines[lines.index("history:") + 1 : lines.index("task runs:") - 1]
    assert history[0].split() == ["V", "TYPE", "NAME", "TIME", "MESSAGE"]
    assert [row.split()[:3] for row in history[1:]] == [
        ["1", "PENDING", "Pending"], ["2", "RUNNING", "Running"], ["3", "COMPLETED", "Completed"]
    ]  # fmt: skip
    tasks = lines[lines.index("task runs:") + 1 : lines.index("result: 30") - 1]
    assert tasks[0].split() == [
        "#", "TASK", "STATE", "ATTEMPTS", "DURATION", "INPUTS", "FROM", "MESSAGE"
    ]  # fmt: skip
    rows = [row.split() for row in tasks[1:]]
    assert [r[:4] for r in rows] == [
        ["0", "first-0", "Completed", "1"], ["1", "second-0", "Completed", "1"]
    ]  # fmt: skip
    assert all(re.fullmatch(r"\d+\.\d{3}s", r[4]) for r in rows)
    assert lines[-1] == "result: 30"


def test_runs_show_json(db: Path) -> None:
    run_id = run_id_in(ok("run", ep("twice")).stderr)
    doc = show_json(run_id)
    assert set(doc) >= RUN_KEYS | {"history", "task_runs", "result"}
    assert (doc["id"], doc["flow_name"], doc["state_type"], doc["result"]) == (
        run_id, "twice", "COMPLETED", 5
    )  # fmt: skip
    assert [(h["type"], h["name"]) for h in doc["history"]] == [
        ("PENDING", "Pending"), ("RUNNING", "Running"), ("COMPLETED", "Completed")
    ]  # fmt: skip
    stamps = [dt.datetime.fromisoformat(h["timestamp"]) for h in doc["history"]]
    assert stamps == sorted(stamps)
    assert all(h["message"] == "" for h in doc["history"])
    tasks = doc["task_runs"]
    assert [(t["task_key"], t["dynamic_key"], t["state_name"], t["attempts"]) for t in tasks] == [
        ("first", 0, "Completed", 1), ("first", 1, "Completed", 1)
    ]  # fmt: skip
    assert all(isinstance(t["duration_seconds"], float) for t in tasks)
    assert all(t["duration_seconds"] >= 0 for t in tasks)


def test_runs_show_failed_run_has_its_message_and_no_result(db: Path, fail: Path) -> None:
    fail.touch()
    run_id = run_id_in(invoke("run", ep("pipeline")).stderr)
    doc = show_json(run_id)
    assert "result" not in doc
    assert doc["state_message"] == "RuntimeError: second failed on purpose"
    assert (doc["history"][-1]["type"], doc["history"][-1]["message"]) == (
        "FAILED", "RuntimeError: second failed on purpose"
    )  # fmt: skip
    assert [(t["task_key"], t["state_name"]) for t in doc["task_runs"]] == [
        ("first", "Completed"), ("second", "Failed")
    ]  # fmt: skip
    assert doc["task_runs"][1]["state_message"] == "RuntimeError: second failed on purpose"
    out = ok("runs", "show", run_id).stdout
    assert "  message:    RuntimeError: second failed on purpose" in out.splitlines()
    assert "result:" not in out


def test_runs_show_omits_a_result_that_is_not_json(db: Path) -> None:
    run_id = run_id_in(ok("run", ep("pickled")).stderr)
    doc = show_json(run_id)
    assert doc["state_type"] == "COMPLETED"
    assert "result" not in doc
    assert "result:" not in ok("runs", "show", run_id).stdout


def test_runs_show_accepts_a_unique_id_prefix(db: Path) -> None:
    a = run_id_in(ok("run", ep("pipeline")).stderr)
    b = run_id_in(invoke("run", ep("boom")).stderr)
    short = next(a[:n] for n in range(1, 33) if not b.startswith(a[:n]))
    assert show_json(short)["id"] == a
    assert ok("runs", "show", short).stdout.startswith(f"run {a} ")
    common = a[: next(n for n in range(32) if a[n] != b[n])]
    assert common  # same era: ids share their leading time digits
    assert "several runs" in error_line(invoke("runs", "show", common))


@pytest.mark.parametrize("command", [["runs", "show"], ["runs", "logs"], ["runs", "resume"]])
@pytest.mark.parametrize("run_id", ["f" * 32, "0123abc", "not-an-id", "ABCDEF"])
def test_unknown_run_id_is_one_line(db: Path, command: list[str], run_id: str) -> None:
    ok("run", ep("pipeline"))
    line = error_line(invoke(*command, run_id))
    assert f"no run with id {run_id!r}" in line


# -- persevere runs logs ---------------------------------------------------------


def test_runs_logs_shows_logger_and_print_lines(db: Path) -> None:
    result = ok("run", ep("chatty"), "-p", "n=7")
    assert result.stdout.splitlines() == ["printed line 7", '"ok"']
    run_id = run_id_in(result.stderr)
    lines = ok("runs", "logs", run_id).stdout.splitlines()
    logged = [line for line in lines if "logger line" in line]
    printed = [line for line in lines if "printed line 7" in line]
    assert len(logged) == 1 and len(printed) == 1
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING +logger line \{\"n\": 7\}$", logged[0])
    assert " INFO " in printed[0]
    entries = json.loads(ok("runs", "logs", run_id, "--json").stdout)
    by_message = {e["message"]: e for e in entries}
    assert by_message["logger line"]["level"] == "WARNING"
    assert by_message["logger line"]["extra"] == {"n": 7}
    assert (by_message["printed line 7"]["level"], by_message["printed line 7"]["logger"]) == (
        "INFO", "print"
    )  # fmt: skip


def test_runs_logs_of_a_run_at_info_level(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "INFO")
    run_id = run_id_in(ok("run", ep("pipeline")).stderr)
    other = run_id_in(ok("run", ep("chatty")).stderr)
    out = ok("runs", "logs", run_id).stdout
    assert "Flow run 'pipeline' started" in out
    assert "Finished in state Completed (2 task runs executed)" in out
    assert "printed line" not in out and "logger line" not in out  # other run's lines
    assert "printed line 2" in ok("runs", "logs", other).stdout


def test_prints_of_a_flow_without_log_prints_are_not_stored(db: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path / "cli_prints.py",
        "from persevere import flow\n\n"
        "@flow\ndef p() -> int:\n    print('not kept')\n    return 1\n",
    )
    result = ok("run", f"{path}:p")
    assert "not kept" in result.stdout
    assert ok("runs", "logs", run_id_in(result.stderr)).stdout == ""


# -- persevere runs resume -------------------------------------------------------


def test_resume_a_completed_run_is_refused(db: Path, side: Path) -> None:
    run_id = run_id_in(ok("run", ep("pipeline")).stderr)
    line = error_line(invoke("runs", "resume", run_id))
    assert f"run {run_id} is Completed" in line
    assert "only Crashed, Failed or Cancelled runs resume" in line
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}


def test_resume_a_failed_run_after_the_fix_skips_completed_tasks(
    db: Path, side: Path, fail: Path
) -> None:
    fail.touch()
    failed = invoke("run", ep("pipeline"), "-p", "n=4")
    assert failed.exit_code == 1, failed.output
    run_id = run_id_in(failed.stderr)
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}

    still = invoke("runs", "resume", run_id[:20])  # not fixed yet: fails again
    assert still.exit_code == 1, still.output
    assert still.stderr.startswith(f"run {run_id} Failed: RuntimeError: second failed")
    fail.unlink()
    done = ok("runs", "resume", run_id)
    assert json.loads(done.stdout) == 50
    assert done.stderr.startswith(f"run {run_id} Completed")
    assert executed(side) == {"pipeline": 3, "first": 1, "second": 3}

    doc = show_json(run_id)
    assert (doc["state_type"], doc["result"]) == ("COMPLETED", 50)
    assert [(t["task_key"], t["attempts"]) for t in doc["task_runs"]] == [
        ("first", 1), ("second", 3)
    ]  # fmt: skip
    names = [h["name"] for h in doc["history"]]
    assert names.count("Failed") == 2 and names[-1] == "Completed"
    assert "only Crashed, Failed or Cancelled" in error_line(invoke("runs", "resume", run_id))


def test_resume_a_subflow_is_refused(db: Path, side: Path, fail: Path) -> None:
    fail.touch()
    assert invoke("run", ep("parent")).exit_code == 1
    [child] = [r for r in runs_json() if r["parent_flow_run_id"]]
    assert child["flow_name"] == "child"
    line = error_line(invoke("runs", "resume", child["id"]))
    assert "is a subflow of run" in line and child["parent_flow_run_id"] in line
    fail.unlink()
    assert json.loads(ok("runs", "resume", child["parent_flow_run_id"]).stdout) == 10


def test_resume_when_the_entrypoint_file_is_gone(db: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path / "cli_gone.py",
        "from persevere import flow\n\n@flow\ndef g() -> None:\n    raise ValueError('x')\n",
    )
    run_id = run_id_in(invoke("run", f"{path}:g").stderr)
    path.unlink()
    del sys.modules["cli_gone"]
    assert "no such file" in error_line(invoke("runs", "resume", run_id))


# -- database problems and --db ------------------------------------------------------


def sibling_files(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir() if p.name.startswith(path.name)}


@pytest.mark.parametrize(
    "args",
    [["runs", "ls"], ["run", ep("pipeline")], ["runs", "show", "abc"], ["runs", "logs", "a"]],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(
    db: Path, side: Path, args: list[str]
) -> None:
    content = b"these are my notes, not a database\n" * 10
    db.write_bytes(content)
    line = error_line(invoke(*args))
    assert str(db) in line and "not an SQLite database" in line
    assert db.read_bytes() == content
    assert sibling_files(db) == {db.name}  # no -wal, -shm or .key beside it
    assert executed(side) == {}


def test_a_database_path_that_is_a_folder_is_refused(db: Path) -> None:
    db.mkdir()
    result = invoke("runs", "ls")  # PERSEVERE_DB is checked by click, like --db
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"File '{db}' is a directory" in result.stderr


def make_newer(db: Path) -> None:
    """Create a persevere database, then mark it as written by a newer version."""
    ok("run", ep("pipeline"))
    close_all()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 999")
    conn.close()


def test_a_newer_database_is_refused_and_left_alone(db: Path, side: Path) -> None:
    make_newer(db)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    runs_before = executed(side)
    for args in (["runs", "ls"], ["run", ep("pipeline")], ["runs", "show", "0"]):
        line = error_line(invoke(*args))
        assert "schema version 999 is newer" in line
        assert f"supports ({SCHEMA_VERSION})" in line
        close_all()
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert executed(side) == runs_before


def test_a_newer_database_not_in_wal_mode_is_left_alone(db: Path) -> None:
    make_newer(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    before = db.read_bytes()
    assert "newer" in error_line(invoke("runs", "ls"))
    close_all()
    assert db.read_bytes() == before


def test_db_option_works_like_the_environment(db: Path, tmp_path: Path, side: Path) -> None:
    other = tmp_path / "elsewhere" / "other.db"
    result = ok("--db", str(other), "run", ep("pipeline"))
    assert other.is_file()
    run_id = run_id_in(result.stderr)
    listing = json.loads(ok("--db", str(other), "runs", "ls", "--json").stdout)
    assert [r["id"] for r in listing] == [run_id]
    assert json.loads(ok("--db", str(other), "runs", "show", run_id, "--json").stdout)["result"]
    assert json.loads(ok("--db", str(db), "runs", "ls", "--json").stdout) == []


def test_db_option_rejects_a_folder(db: Path, tmp_path: Path) -> None:
    result = invoke("--db", str(tmp_path), "runs", "ls")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "directory" in result.stderr


# -- help, version, usage ------------------------------------------------------------


def test_version_and_help(db: Path) -> None:
    assert persevere.__version__ in ok("--version").stdout
    top = ok("--help").stdout
    assert "run" in top and "runs" in top and "--db" in top and "--debug" in top
    sub = ok("runs", "--help").stdout
    for command in ("ls", "show", "logs", "resume"):
        assert re.search(rf"^\s+{command}\b", sub, re.M), sub
    assert "NAME=VALUE" in ok("run", "--help").stdout
    assert not db.exists()  # help and version do not touch the database


@pytest.mark.parametrize(
    "args",
    [[], ["bogus"], ["run"], ["runs"], ["runs", "bogus"], ["runs", "show"], ["runs", "logs"],
     ["runs", "resume"], ["run", ep("pipeline"), "-p"], ["run", ep("pipeline"), "--run-key"]],
)  # fmt: skip
def test_usage_errors_exit_2(db: Path, args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Usage:" in result.output or "requires an argument" in result.stderr


# -- end to end: real processes ---------------------------------------------------


def test_e2e_run_file_entrypoint_and_show(db: Path) -> None:
    done = run_cli(
        db, "run", ep("typed"), "-p", "n=3", "-p", "when=2026-01-02", "-p", "xs=[1,2]", timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "n": 3, "n_type": "int", "when": "2026-01-02", "when_type": "date", "xs": [1, 2],
        "label": "x",
    }  # fmt: skip
    shown = run_cli(db, "runs", "show", run_id_in(done.stderr), "--json", timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"]["when"] == "2026-01-02"


def test_e2e_module_entrypoint_on_pythonpath(db: Path, tmp_path: Path) -> None:
    write(tmp_path / "mods" / "cli_e2e_module.py", DOUBLE_FLOW)
    done = run_cli(
        db,
        "run",
        "cli_e2e_module:double",
        "-p",
        "x=5",
        timeout=30,
        PYTHONPATH=str(tmp_path / "mods"),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 10


def test_e2e_bad_input_is_one_line_and_debug_shows_a_traceback(db: Path) -> None:
    bad = run_cli(db, "run", ep("typed"), "-p", "n=abc", "-p", "when=2026-01-02", timeout=30)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "Error: parameter 'n' of flow 'typed': Input should be a valid integer, "
        "unable to parse string as an integer (got 'abc')"
    ]
    loud = run_cli(db, "--debug", "run", ep("nope"), timeout=30)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr
    assert "EntrypointError" in loud.stderr


def test_e2e_failed_run_resumes_in_another_process(db: Path, tmp_path: Path) -> None:
    side, fail = tmp_path / "side.txt", tmp_path / "fail-now"
    env = {"CLI_TEST_SIDE": str(side), "CLI_TEST_FAIL": str(fail)}
    fail.touch()
    failed = run_cli(db, "run", ep("pipeline"), "-p", "n=2", timeout=30, **env)
    assert failed.returncode == 1, failed.stderr
    run_id = run_id_in(failed.stderr)
    assert f"run {run_id} Failed: RuntimeError: second failed on purpose" in failed.stderr
    assert "Traceback" not in failed.stderr
    fail.unlink()
    done = run_cli(db, "runs", "resume", run_id, timeout=30, **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 30
    assert executed(side) == {"pipeline": 2, "first": 1, "second": 2}


def test_e2e_run_key_in_a_second_process_does_not_run_again(db: Path, tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    args = ("run", ep("pipeline"), "-p", "n=3", "--run-key", "once")
    first = run_cli(db, *args, timeout=30, CLI_TEST_SIDE=str(side))
    second = run_cli(db, *args, timeout=30, CLI_TEST_SIDE=str(side))
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout) == 40
    assert executed(side) == {"pipeline": 1, "first": 1, "second": 1}
    other = run_cli(db, "run", ep("pipeline"), "-p", "n=4", "--run-key", "once", timeout=30)
    assert other.returncode == 2
    assert "run key 'once'" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_e2e_database_problems(db: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    bad = run_cli(notes, "runs", "ls", timeout=30)
    assert bad.returncode == 2
    assert "not an SQLite database" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert notes.read_text() == "hello\n"

    assert run_cli(db, "run", ep("pipeline"), timeout=30).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 999")
    conn.close()
    before = db.read_bytes()
    newer = run_cli(db, "runs", "ls", timeout=30)
    assert newer.returncode == 2
    assert "newer" in newer.stderr
    assert len(newer.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before


def test_e2e_db_option_version_and_help(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    done = run_cli(db, "--db", str(other), "run", ep("pipeline"), timeout=30)
    assert done.returncode == 0, done.stderr
    listed = run_cli(db, "--db", str(other), "runs", "ls", "--json", timeout=30)
    assert [r["id"] for r in json.loads(listed.stdout)] == [run_id_in(done.stderr)]
    default = run_cli(db, "runs", "ls", "--json", timeout=30)
    assert json.loads(default.stdout) == []
    version = run_cli(db, "--version", timeout=30)
    assert version.returncode == 0 and persevere.__version__ in version.stdout
    helped = run_cli(db, "--help", timeout=30)
    assert helped.returncode == 0 and "runs" in helped.stdout
