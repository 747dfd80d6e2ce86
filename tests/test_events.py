"""Events: emitting them (Python and CLI, idempotent by id, bad input refused), persevere's
own events (flow runs and task runs, deployments, schedules, work queues), `events ls`
filters, `events tail` as a real process, pruning, and no events for rolled-back writes.

Flows run in this process; task-run events are written by the writer's flusher
after the commit, so tests flush it (``journal.writer.flush_in_background()``)
before reading them.
"""

from __future__ import annotations

import builtins
import datetime as dt
import itertools
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persevere
from persevere import clock, flow, task
from persevere.exceptions import VersionConflict
from persevere.journal import Journal, Op
from persevere.journal.events import Event, iso
from persevere.journal.statements import INSERT_STATE
from persevere.testing import TestClock

from .conftest import FLOWS, cli_env, error_line, invoke, ok, run_cli

pytestmark = pytest.mark.timeout(60)

DEPLOYED = FLOWS / "deployed.py"
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Work in a temporary folder; undo what loading entrypoints does to the process.
    Every state change of a task run is an event here (the default is the final ones)."""
    monkeypatch.setenv("PERSEVERE_TASK_RUN_EVENTS", "all")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(builtins, "print", builtins.print)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("deployed", "persevere_entrypoint")):
            del sys.modules[name]


@pytest.fixture
def tc() -> Iterator[TestClock]:
    test_clock = TestClock("2026-03-28T12:00:00+00:00")
    previous = clock.use(test_clock)
    yield test_clock
    clock.use(previous)


# -- flows run in this process ---------------------------------------------------------


@task
def extract(n: int) -> list[int]:
    return list(range(n))


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def explode(n: int) -> int:
    raise RuntimeError(f"bucket {n} is empty")


ATTEMPTS: list[int] = []


@task(retries=2)
def flaky() -> int:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) < 3:
        raise RuntimeError(f"flaky attempt {len(ATTEMPTS)}")
    return len(ATTEMPTS)


@flow(name="ev-retrying")
def retrying() -> int:
    return flaky()


@flow(name="ev-pair")
def pair(n: int = 3) -> int:
    return total(extract(n))


@flow(name="ev-failing")
def failing() -> None:
    explode(7)


# -- helpers ---------------------------------------------------------------------------


def all_events(journal: Journal) -> list[Event]:
    journal.writer.flush_in_background()  # the task-run events the flusher owes
    return journal.events.after(0, 10_000)


def named(events: list[Event], prefix: str) -> list[Event]:
    return [e for e in events if e.event.startswith(prefix)]


def run_id_of(journal: Journal, flow_name: str) -> str:
    rows = journal.query("SELECT id FROM flow_runs WHERE flow_name = ?", (flow_name,))
    assert len(rows) == 1
    return str(rows[0][0])


def ls_json(*args: str) -> list[dict[str, Any]]:
    found = json.loads(ok("events", "ls", "--json", *args).stdout)
    assert isinstance(found, list)
    return found


# -- emit from Python ------------------------------------------------------------------


def test_emitted_event_round_trips(journal: Journal) -> None:
    occurred = dt.datetime(2026, 3, 1, 7, 30, 15, 250_000, tzinfo=dt.timezone.utc)
    event = persevere.emit_event(
        "s3.file.arrived",
        {"id": "bucket/sales", "region": "eu-west-1"},
        {"path": "q3.csv", "size": 12, "tags": ["a", "b"], "meta": {"ok": True}},
        related=[{"id": "team/finance", "role": "owner"}],
        id="evt-1",
        occurred=occurred,
    )
    stored = journal.events.by_id("evt-1")
    assert stored == event
    assert stored.event == "s3.file.arrived"
    assert stored.resource == {"id": "bucket/sales", "region": "eu-west-1"}
    assert stored.related == ({"id": "team/finance", "role": "owner"},)
    assert stored.payload == {
        "path": "q3.csv",
        "size": 12,
        "tags": ["a", "b"],
        "meta": {"ok": True},
    }
    assert stored.occurred_ms == int(occurred.timestamp() * 1000)
    assert stored.to_json()["occurred"] == "2026-03-01T07:30:15.250Z"
    assert journal.events.last_seq() == stored.seq


def test_emit_without_payload_or_id_gets_an_empty_payload_and_a_fresh_id(journal: Journal) -> None:
    before = clock.now_ms()
    first, new1 = journal.events.emit("app.ping", {"id": "svc/a"})
    second, new2 = journal.events.emit("app.ping", {"id": "svc/a"})
    assert new1 and new2
    assert first.id != second.id and first.id and second.id
    assert first.payload == {} and first.related == ()
    assert before <= first.occurred_ms <= clock.now_ms()
    assert second.seq > first.seq


def test_the_same_id_twice_is_journaled_once(journal: Journal) -> None:
    first, new = journal.events.emit("s3.file.arrived", {"id": "b/1"}, {"n": 1}, id="same")
    again, new_again = journal.events.emit("s3.file.arrived", {"id": "b/1"}, {"n": 2}, id="same")
    assert new is True and new_again is False
    assert again == first and again.payload == {"n": 1}
    assert [e.id for e in journal.events.after(0)] == ["same"]
    # persevere.emit_event says the same: the first one, and nothing new journaled.
    assert persevere.emit_event("s3.file.arrived", {"id": "b/1"}, {"n": 3}, id="same") == first
    assert journal.events.last_seq() == first.seq


@pytest.mark.parametrize(
    ("name", "resource", "payload", "expected"),
    [
        ("s3.file.arrived", {"region": "eu"}, None, "needs an 'id' label"),
        ("s3.file.arrived", {"id": "  "}, None, "needs an 'id' label"),
        ("s3.file.arrived", "bucket/sales", None, "must be a mapping of labels"),
        ("s3 file arrived", {"id": "b"}, None, "without spaces or '*'"),
        ("s3.*", {"id": "b"}, None, "without spaces or '*'"),
        ("", {"id": "b"}, None, "must be a dotted name"),
        ("s3.file.arrived", {"id": "b"}, ["not", "an", "object"], "must be a JSON object"),
        ("s3.file.arrived", {"id": "b"}, "text", "must be a JSON object"),
        ("s3.file.arrived", {"id": "b"}, {"when": object()}, "cannot be stored as JSON"),
        ("s3.file.arrived", {"id": "b"}, {"x": float("nan")}, "cannot be stored as JSON"),
    ],
)
def test_bad_events_are_refused_in_one_line(
    journal: Journal, name: str, resource: Any, payload: Any, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected) as info:
        journal.events.emit(name, resource, payload)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=expected):
        persevere.emit_event(name, resource, payload)
    assert journal.events.last_seq() == 0  # nothing journaled


def test_a_related_resource_without_id_is_refused(journal: Journal) -> None:
    with pytest.raises(ValueError, match="related resource needs an 'id'"):
        journal.events.emit("a.b", {"id": "x"}, related=[{"role": "owner"}])
    assert journal.events.last_seq() == 0


# -- emit from the command line --------------------------------------------------------


def test_cli_emit_prints_the_id_and_a_repeat_is_journaled_once(db: Path, journal: Journal) -> None:
    out = ok(
        "events", "emit", "s3.file.arrived", "-r", "id=bucket/sales", "-r", "region=eu",
        "-p", '{"path": "q3.csv"}', "--related", '{"id": "team/fin", "role": "owner"}',
        "--occurred", "2026-03-01T07:00:00Z",
    ).stdout.strip()  # fmt: skip
    event = journal.events.by_id(out)
    assert event.event == "s3.file.arrived"
    assert event.resource == {"id": "bucket/sales", "region": "eu"}
    assert event.payload == {"path": "q3.csv"}
    assert event.related == ({"id": "team/fin", "role": "owner"},)
    assert event.to_json()["occurred"] == "2026-03-01T07:00:00.000Z"

    args = ("events", "emit", "job.done", "-r", "id=job/1", "--id", "job-1-done")
    assert ok(*args, "-p", '{"n": 1}').stdout == "job-1-done\n"
    again = ok(*args, "-p", '{"n": 2}').stdout
    assert again == "job-1-done (journaled already: not emitted again)\n"
    assert journal.events.by_id("job-1-done").payload == {"n": 1}
    assert len(journal.events.after(0)) == 2


def test_cli_emit_as_a_real_process(db: Path, journal: Journal) -> None:
    done = run_cli(db, "events", "emit", "deploy.finished", "-r", "id=app/web", "--id", "d-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "d-1\n"
    assert journal.events.by_id("d-1").resource == {"id": "app/web"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-r", "id=b", "-p", "{not json"], "--payload is not JSON"),
        (["-r", "id=b", "-p", "[1, 2]"], "must be a JSON object"),
        (["-r", "region=eu"], "needs an 'id' label"),
        (["-r", "id"], "must be label=value"),
        (["-r", "=b"], "must be label=value"),
        (["-r", "id=b", "--related", "nope"], "--related is not JSON"),
        (["-r", "id=b", "--related", '"team/fin"'], "must be a mapping of labels"),
        (["-r", "id=b", "--related", '{"role": "owner"}'], "related resource needs an 'id'"),
        (["-r", "id=b", "--occurred", "yesterday-ish"], "neither a time"),
    ],
)
def test_cli_emit_bad_input_is_one_line_exit_2(
    journal: Journal, args: list[str], expected: str
) -> None:
    line = error_line(invoke("events", "emit", "s3.file.arrived", *args))
    assert expected in line
    assert journal.events.last_seq() == 0


def test_cli_emit_bad_name_as_a_real_process_has_no_traceback(db: Path) -> None:
    done = run_cli(db, "events", "emit", "bad name", "-r", "id=b")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "dotted name" in lines[0]


# -- persevere's own events: flow runs and task runs -----------------------------------


def test_a_flow_run_and_its_tasks_journal_their_state_changes(journal: Journal) -> None:
    assert pair(4) == 6
    run_id = run_id_of(journal, "ev-pair")
    events = all_events(journal)

    flow_events = named(events, "persevere.flow-run.")
    assert [e.event for e in flow_events] == [
        "persevere.flow-run.Pending",
        "persevere.flow-run.Running",
        "persevere.flow-run.Completed",
    ]
    for event, (kind, previous) in zip(
        flow_events,
        [("PENDING", None), ("RUNNING", "PENDING"), ("COMPLETED", "RUNNING")],
        strict=True,
    ):
        assert event.resource["id"] == f"persevere.flow-run.{run_id}"
        assert event.resource["flow"] == "ev-pair"
        assert event.resource["state"] == kind
        assert event.payload["state"]["type"] == kind
        assert event.payload["state"]["name"] == event.event.rsplit(".", 1)[1]
        assert event.payload["previous"] == (None if previous is None else {"type": previous})
        assert event.payload["flow_run_id"] == run_id
        assert {"id": "persevere.flow.ev-pair", "role": "flow", "name": "ev-pair"} in event.related

    task_events = named(events, "persevere.task-run.")
    by_task: dict[str, list[Event]] = {}
    for event in task_events:
        by_task.setdefault(event.resource["id"], []).append(event)
    assert len(by_task) == 2
    assert sorted(es[0].resource["task"] for es in by_task.values()) == ["extract", "total"]
    for resource_id, es in by_task.items():
        assert resource_id.startswith(f"persevere.task-run.{run_id}.")
        assert [e.event for e in es] == [
            "persevere.task-run.Pending",
            "persevere.task-run.Running",
            "persevere.task-run.Completed",
        ]
        assert [e.payload["state"]["type"] for e in es] == ["PENDING", "RUNNING", "COMPLETED"]
        for e in es:
            assert e.resource["flow"] == "ev-pair"
            assert e.payload["flow_run_id"] == run_id
            assert e.payload["task_run_id"] == resource_id.removeprefix("persevere.task-run.")
            roles = {r["role"]: r["id"] for r in e.related}
            assert roles["flow-run"] == f"persevere.flow-run.{run_id}"
            assert roles["flow"] == "persevere.flow.ev-pair"

    assert len(events) == 3 + 6
    assert len({e.id for e in events}) == len(events)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_failing_task_journals_failed_with_its_message(journal: Journal) -> None:
    with pytest.raises(RuntimeError, match="bucket 7 is empty"):
        failing()
    events = all_events(journal)
    failed = [e for e in events if e.event == "persevere.task-run.Failed"]
    assert len(failed) == 1
    assert failed[0].resource["task"] == "explode"
    assert failed[0].payload["state"]["type"] == "FAILED"
    assert "bucket 7 is empty" in failed[0].payload["state"]["message"]
    assert [e.event for e in named(events, "persevere.flow-run.")][
        -1
    ] == "persevere.flow-run.Failed"
    assert "persevere.task-run.Completed" not in {e.event for e in events}


def test_a_retried_task_journals_each_attempt(journal: Journal) -> None:
    ATTEMPTS.clear()
    assert retrying() == 3
    events = named(all_events(journal), "persevere.task-run.")
    assert [e.event.rsplit(".", 1)[1] for e in events] == [
        "Pending", "Running", "AwaitingRetry",
        "Pending", "Retrying", "AwaitingRetry",
        "Pending", "Retrying", "Completed",
    ]  # fmt: skip
    assert [e.payload["version"] for e in events] == list(range(1, 10))
    assert [e.payload["state"]["message"] for e in events if "Await" in e.event] == [
        "RuntimeError: flaky attempt 1",
        "RuntimeError: flaky attempt 2",
    ]
    assert {e.resource["task"] for e in events} == {"flaky"}


def test_a_script_that_ends_right_after_its_flow_keeps_its_task_events(
    db: Path, journal: Journal, tmp_path: Path
) -> None:
    script = tmp_path / "quick.py"
    script.write_text(
        "from persevere import flow, task\n"
        "@task\ndef a(): return 1\n"
        "@flow(name='quick')\ndef quick(): return a() + a()\n"
        "quick()\n"
    )
    root = str(Path(__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, str(script)],
        env=cli_env(db, PYTHONPATH=root, PERSEVERE_TASK_RUN_EVENTS="all"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    names = [e.event for e in journal.events.after(0)]
    assert names.count("persevere.task-run.Completed") == 2
    assert names.count("persevere.task-run.Pending") == 2
    assert names.count("persevere.flow-run.Completed") == 1


def test_many_runs_give_unique_ids_and_ascending_seqs(journal: Journal) -> None:
    for n in range(5):
        pair(n)
    persevere.emit_event("app.between", {"id": "x"})
    pair(9)
    events = all_events(journal)
    assert len(named(events, "persevere.flow-run.")) == 6 * 3
    assert len(named(events, "persevere.task-run.")) == 6 * 2 * 3
    assert len({e.id for e in events}) == len(events)
    assert all(a.seq < b.seq for a, b in itertools.pairwise(events))


def test_task_events_are_not_written_for_a_rolled_back_commit(journal: Journal) -> None:
    pair(2)
    all_events(journal)
    task_id = str(
        journal.query("SELECT id FROM task_runs WHERE task_key = 'total'")[0][0]
    )  # a real task run of a real flow run
    version = int(journal.query("SELECT version FROM task_runs WHERE id = ?", (task_id,))[0][0])
    before = journal.events.last_seq()

    def state(v: int) -> Op:
        return Op(INSERT_STATE, (task_id, v, "COMPLETED", "FAILED", "Failed", 1, "late", None))

    stale = Op(
        "UPDATE task_runs SET version = version + 1 WHERE id = ? AND version = ?",
        (task_id, version + 50),
        expect=(task_id, version + 50, "task_runs"),
    )
    with pytest.raises(VersionConflict):
        journal.writer.commit([state(version + 1), stale])
    assert journal.events.after(before) == [] and all_events(journal)[-1].seq == before

    def conflicting(conn: Any) -> None:
        journal.writer.apply(conn, [state(version + 1), stale])

    with pytest.raises(VersionConflict):
        journal.writer.transaction(conflicting)
    assert all_events(journal)[-1].seq == before

    # The same write committed does give its event (so the checks above can fail).
    journal.writer.commit([state(version + 1)])
    new = [e for e in all_events(journal) if e.seq > before]
    assert [(e.id, e.event) for e in new] == [
        (f"{task_id}/{version + 1}", "persevere.task-run.Failed")
    ]


# -- deployments, schedules and work queues --------------------------------------------


def test_work_queue_events(journal: Journal) -> None:
    journal.deployments.create_queue("batch", limit=2)
    journal.deployments.pause_queue("batch")
    journal.deployments.pause_queue("batch")  # paused already: no change, no event
    journal.deployments.pause_queue("batch", paused=False)
    journal.deployments.set_queue_limit("batch", 5)
    journal.deployments.delete_queue("batch")
    events = named(all_events(journal), "persevere.work-queue.")
    assert [e.event for e in events] == [
        "persevere.work-queue.created",
        "persevere.work-queue.paused",
        "persevere.work-queue.resumed",
        "persevere.work-queue.updated",
        "persevere.work-queue.deleted",
    ]
    for event in events:
        assert event.resource == {"id": "persevere.work-queue.batch", "name": "batch"}
    assert [bool(e.payload["paused"]) for e in events] == [False, True, False, False, False]
    assert [e.payload["concurrency_limit"] for e in events] == [2, 2, 2, 5, 5]
    assert len({e.id for e in events}) == 5


def test_queue_and_schedule_flags_in_payloads_are_json_booleans(journal: Journal) -> None:
    journal.deployments.create_queue("batch")
    ok("deploy", f"{DEPLOYED}:add", "--name", "n", "-p", "a=1", "--interval", "1h")
    ok("deployments", "pause-schedule", "add/n")
    (queue,) = ls_json("-n", "persevere.work-queue.created", "-r", "name=batch")
    (paused,) = ls_json("-n", "*.schedule-paused")
    assert queue["payload"]["paused"] is False
    assert paused["payload"]["active"] is False


def test_work_queue_events_from_the_cli(journal: Journal) -> None:
    ok("queues", "create", "ingest")
    ok("queues", "pause", "ingest")
    ok("queues", "resume", "ingest")
    names = [e.event for e in named(all_events(journal), "persevere.work-queue.")]
    assert names == [
        "persevere.work-queue.created",
        "persevere.work-queue.paused",
        "persevere.work-queue.resumed",
    ]


def test_deployment_and_schedule_events(journal: Journal) -> None:
    ok("deploy", f"{DEPLOYED}:add", "--name", "nightly", "-p", "a=1", "--interval", "1h")
    deployment = journal.deployments.find("add/nightly")
    assert deployment is not None
    ok(
        "deploy",
        f"{DEPLOYED}:add",
        "--name",
        "nightly",
        "-p",
        "a=1",
        "-p",
        "b=5",
        "--interval",
        "1h",
    )
    ok("deployments", "pause-schedule", "add/nightly")
    ok("deployments", "resume-schedule", "add/nightly")
    ok("deployments", "delete", "add/nightly")

    resource_id = f"persevere.deployment.{deployment.id}"
    events = [e for e in all_events(journal) if e.event.startswith("persevere.deployment.")]
    names = [e.event for e in events]
    assert names[0] == "persevere.deployment.created"
    assert names[-1] == "persevere.deployment.deleted"
    assert "persevere.deployment.updated" in names
    assert "persevere.deployment.schedule-created" in names
    paused = names.index("persevere.deployment.schedule-paused")
    resumed = names.index("persevere.deployment.schedule-resumed")
    assert names.index("persevere.deployment.updated") < paused < resumed
    assert names.count("persevere.deployment.schedule-paused") == 1
    assert names.count("persevere.deployment.schedule-resumed") == 1
    for event in events:
        assert event.resource["id"] == resource_id
        assert event.resource["name"] == deployment.name == "add/nightly"
    created = events[0]
    assert {"id": "persevere.flow.add", "role": "flow", "name": "add"} in created.related
    assert {"role": "work-queue", "name": "default"}.items() <= next(
        r for r in created.related if r["role"] == "work-queue"
    ).items()
    schedule_ids = {r["id"] for r in events[paused].related if r["role"] == "schedule"}
    assert not events[paused].payload["active"] and events[resumed].payload["active"]
    assert events[paused].payload["schedule"] == events[resumed].payload["schedule"]
    assert schedule_ids == {f"persevere.schedule.{events[paused].payload['schedule']}"}


def test_a_deployment_made_from_python_journals_created_then_updated(journal: Journal) -> None:
    from persevere.worker import deploying

    from .flows import deployed

    _, new = deploying.deploy(deployed.greet, "hello", journal=journal)
    _, new_again = deploying.deploy(deployed.greet, "hello", {"punctuation": "?"}, journal=journal)
    assert new and not new_again
    names = [e.event for e in named(all_events(journal), "persevere.deployment.")]
    assert names == ["persevere.deployment.created", "persevere.deployment.updated"]


# -- events ls ----------------------------------------------------------------------------


def test_ls_filters_by_name_pattern_resource_and_limit(journal: Journal) -> None:
    pair(1)
    journal.writer.flush_in_background()  # its task-run events come before what follows
    emit = journal.events.emit
    emit("s3.file.arrived", {"id": "bucket/sales", "region": "eu"}, {"path": "a.csv"})
    emit("s3.file.deleted", {"id": "bucket/sales", "region": "us"})
    emit("s3.file.arrived", {"id": "bucket/hr", "region": "eu"})
    emit("s3x.other", {"id": "bucket/sales"})
    emit("gcs.file.arrived", {"id": "other/sales", "region": "eu"})

    flow_names = [e["event"] for e in ls_json("--name", "persevere.flow-run.*")]
    assert flow_names == [
        "persevere.flow-run.Pending",
        "persevere.flow-run.Running",
        "persevere.flow-run.Completed",
    ]
    assert len(ls_json("--name", "persevere.task-run.*")) == 2 * 3
    assert len(ls_json("--name", "persevere.*")) == 9

    s3 = ls_json("--name", "s3.*")
    assert [(e["event"], e["resource"]["id"]) for e in s3] == [
        ("s3.file.arrived", "bucket/sales"),
        ("s3.file.deleted", "bucket/sales"),
        ("s3.file.arrived", "bucket/hr"),
    ]
    both = ls_json("-n", "s3.*.arrived", "-n", "gcs.*")
    assert [e["resource"]["id"] for e in both] == ["bucket/sales", "bucket/hr", "other/sales"]

    buckets = ls_json("--resource", "id=bucket/*")
    assert [e["event"] for e in buckets] == [
        "s3.file.arrived",
        "s3.file.deleted",
        "s3.file.arrived",
        "s3x.other",
    ]
    eu_buckets = ls_json("-r", "id=bucket/*", "-r", "region=eu")
    assert [e["resource"]["id"] for e in eu_buckets] == ["bucket/sales", "bucket/hr"]
    assert [e["resource"]["id"] for e in ls_json("-r", "region=e*")] == [
        "bucket/sales",
        "bucket/hr",
        "other/sales",
    ]
    assert ls_json("-r", "id=bucket/sales", "-n", "s3.*.arrived")[0]["payload"] == {"path": "a.csv"}

    newest_two = ls_json("--limit", "2")
    assert [e["event"] for e in newest_two] == ["s3x.other", "gcs.file.arrived"]
    assert [e["resource"]["id"] for e in ls_json("-r", "region=eu", "--limit", "1")] == [
        "other/sales"
    ]


def test_ls_json_is_oldest_first_with_iso_times_and_seq(journal: Journal) -> None:
    for n in range(3):
        journal.events.emit("app.tick", {"id": "clock"}, {"n": n}, id=f"tick-{n}")
    shown = ls_json()
    assert [e["payload"]["n"] for e in shown] == [0, 1, 2]
    assert [e["seq"] for e in shown] == sorted(e["seq"] for e in shown)
    for item in shown:
        event = journal.events.by_id(item["id"])
        assert item["seq"] == event.seq
        assert item["occurred"] == iso(event.occurred_ms)
        parsed = dt.datetime.fromisoformat(item["occurred"].replace("Z", "+00:00"))
        assert int(parsed.timestamp() * 1000) == event.occurred_ms
        assert set(item) == {"id", "event", "occurred", "resource", "related", "payload", "seq"}


def test_ls_text_shows_name_resource_and_payload(journal: Journal) -> None:
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales", "region": "eu"}, {"p": 1})
    lines = ok("events", "ls").stdout.splitlines()
    assert len(lines) == 1
    assert "s3.file.arrived" in lines[0] and "bucket/sales" in lines[0]
    assert "region=eu" in lines[0] and '{"p": 1}' in lines[0]


def test_ls_since_a_span_back_or_a_time(journal: Journal) -> None:
    now = clock.now_ms()
    journal.events.emit("app.old", {"id": "x"}, occurred_ms=now - 3 * HOUR_MS)
    journal.events.emit("app.recent", {"id": "x"}, occurred_ms=now - 30 * 60_000)
    journal.events.emit("app.now", {"id": "x"})
    assert [e["event"] for e in ls_json("--since", "1h")] == ["app.recent", "app.now"]
    assert [e["event"] for e in ls_json("--since", "4h")] == ["app.old", "app.recent", "app.now"]
    since = iso(now - 2 * HOUR_MS)
    assert [e["event"] for e in ls_json("--since", since)] == ["app.recent", "app.now"]
    since_naive = dt.datetime.fromtimestamp((now - 10 * 60_000) / 1000, dt.timezone.utc)
    text = since_naive.replace(tzinfo=None).isoformat(timespec="seconds")  # UTC by default
    assert [e["event"] for e in ls_json("--since", text)] == ["app.now"]
    assert "neither a time" in error_line(invoke("events", "ls", "--since", "last tuesday"))


def test_ls_bad_resource_filter_is_one_line(journal: Journal) -> None:
    assert "must be label=value" in error_line(invoke("events", "ls", "-r", "bucket"))


def test_ls_as_a_real_process(db: Path, journal: Journal) -> None:
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, id="e1")
    journal.events.emit("other.thing", {"id": "bucket/sales"}, id="e2")
    done = run_cli(db, "events", "ls", "--json", "-n", "s3.*")
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e in json.loads(done.stdout)] == ["e1"]


# -- events tail, a real process ----------------------------------------------------------


class Tail:
    """`persevere events tail ...` as a real process, its stdout read by a thread."""

    def __init__(self, db: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "persevere", "events", "tail", "--json", *args],
            env=cli_env(db),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float = 20) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"tail printed nothing within {timeout} s")
        parsed = json.loads(line)
        assert isinstance(parsed, dict)
        return parsed

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"tail did not end within {timeout} s")
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


@pytest.fixture
def start_iso() -> str:
    """A time just before the test: `tail --since` it sees every event the test emits."""
    return iso(clock.now_ms() - 1)


def test_tail_prints_new_events_as_json_lines_and_stops_after_count(
    db: Path, journal: Journal, start_iso: str
) -> None:
    journal.events.emit("app.before", {"id": "x"}, occurred_ms=clock.now_ms() - HOUR_MS)
    tail = Tail(
        db, "--count", "2", "--timeout", "20", "--poll-seconds", "0.05", "--since", start_iso
    )
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, {"n": 1}, id="first")
    first = tail.next_line()  # now it is following: the next one is new to it
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, {"n": 2}, id="second")
    second = tail.next_line()
    code, stderr = tail.finish()
    assert code == 0, stderr
    assert (first["id"], first["payload"]) == ("first", {"n": 1})
    assert (second["id"], second["payload"]) == ("second", {"n": 2})
    assert second["seq"] > first["seq"]
    assert first["resource"] == {"id": "bucket/sales"} and first["event"] == "s3.file.arrived"
    assert tail.lines.empty()


def test_tail_with_name_skips_other_events(db: Path, journal: Journal, start_iso: str) -> None:
    tail = Tail(
        db, "--count", "2", "--timeout", "20", "--poll-seconds", "0.05",
        "--name", "s3.*", "-r", "id=b*", "--since", start_iso,
    )  # fmt: skip
    journal.events.emit("gcs.file.arrived", {"id": "b"}, id="skip-1")
    journal.events.emit("s3.file.arrived", {"id": "other"}, id="skip-0")
    journal.events.emit("s3.file.arrived", {"id": "b"}, id="take-1")
    assert tail.next_line()["id"] == "take-1"
    journal.events.emit("s3x.file.arrived", {"id": "b"}, id="skip-2")
    journal.events.emit("s3.file.deleted", {"id": "b"}, id="take-2")
    assert tail.next_line()["id"] == "take-2"
    code, stderr = tail.finish()
    assert code == 0, stderr
    assert tail.lines.empty()


def test_tail_follows_run_events(db: Path, journal: Journal, start_iso: str) -> None:
    tail = Tail(
        db, "--count", "3", "--timeout", "20", "--poll-seconds", "0.05",
        "-n", "persevere.flow-run.*", "--since", start_iso,
    )  # fmt: skip
    pair(2)
    got = [tail.next_line() for _ in range(3)]
    assert [e["event"] for e in got] == [
        "persevere.flow-run.Pending",
        "persevere.flow-run.Running",
        "persevere.flow-run.Completed",
    ]
    assert {e["resource"]["flow"] for e in got} == {"ev-pair"}
    assert tail.finish()[0] == 0


def test_tail_ends_at_its_timeout_with_exit_0(db: Path, journal: Journal) -> None:
    tail = Tail(db, "--timeout", "0.5", "--poll-seconds", "0.05")
    code, stderr = tail.finish()
    assert code == 0, stderr
    assert tail.lines.empty()


# -- pruning ------------------------------------------------------------------------------


def test_prune_deletes_old_events_but_never_the_newest(journal: Journal, tc: TestClock) -> None:
    old, _ = journal.events.emit("app.a", {"id": "x"}, id="a")
    tc.advance(hours=1)
    middle, _ = journal.events.emit("app.b", {"id": "x"}, id="b")
    tc.advance(hours=1)
    newest, _ = journal.events.emit("app.c", {"id": "x"}, id="c")

    assert journal.events.prune(middle.received_ms) == 1  # received before b: a only
    assert [e.id for e in journal.events.after(0)] == ["b", "c"]
    assert journal.events.prune(tc.now_ms() + HOUR_MS) == 1  # everything is old: c stays
    assert [e.id for e in journal.events.after(0)] == ["c"]
    assert journal.events.prune(tc.now_ms() + HOUR_MS) == 0
    assert journal.events.last_seq() == newest.seq

    later, _ = journal.events.emit("app.d", {"id": "x"}, id="d")
    assert later.seq > newest.seq > middle.seq > old.seq
    # a pruned id is not remembered: emitting it again journals it anew, with a new seq
    again, new = journal.events.emit("app.a", {"id": "x"}, id="a")
    assert new and again.seq > later.seq


def test_prune_before_everything_deletes_nothing(journal: Journal) -> None:
    first, _ = journal.events.emit("app.a", {"id": "x"})
    journal.events.emit("app.b", {"id": "x"})
    assert journal.events.prune(first.received_ms) == 0
    assert len(journal.events.after(0)) == 2


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("final", ["persevere.task-run.Completed", "persevere.task-run.Failed"]),
        ("", ["persevere.task-run.Completed", "persevere.task-run.Failed"]),  # the default
        ("none", []),
    ],
)
def test_task_run_events_setting_keeps_final_states_or_none(
    db: Path, monkeypatch: pytest.MonkeyPatch, setting: str, expected: list[str]
) -> None:
    from persevere.journal import open_journal

    if setting:
        monkeypatch.setenv("PERSEVERE_TASK_RUN_EVENTS", setting)
    else:
        monkeypatch.delenv("PERSEVERE_TASK_RUN_EVENTS")
    journal = open_journal(db)
    assert pair(2) == 1  # one task run each for extract and total, both Completed
    with pytest.raises(RuntimeError):
        failing()
    journal.writer.flush_in_background()
    names = [e.event for e in all_events(journal) if e.event.startswith("persevere.task-run.")]
    assert sorted(set(names)) == expected
    assert names.count("persevere.task-run.Completed") == (0 if setting == "none" else 2)
    flows = [e.event for e in all_events(journal) if e.event.startswith("persevere.flow-run.")]
    assert "persevere.flow-run.Completed" in flows and "persevere.flow-run.Failed" in flows


def test_task_run_events_setting_is_checked(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSEVERE_TASK_RUN_EVENTS", "some")
    line = error_line(invoke("events", "ls"))
    assert "PERSEVERE_TASK_RUN_EVENTS='some' must be all, final or none" in line
