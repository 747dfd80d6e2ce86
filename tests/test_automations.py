"""Events and automations in this process, on the harness's test clock: triggers (reactive,
deadline, absence, compound, sequence), every action, webhooks retried with backoff,
idempotency across restarts, crashes and two evaluators, the CLI and the Python API.

Each test drives time with ``h.clock`` and runs one scheduler pass with ``h.tick()``
(which evaluates the automations and runs their actions). Real processes are in
tests/test_automation_processes.py.
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import persevere
from persevere.automations import create_automation
from persevere.journal import Journal, close_all, new_id
from persevere.journal.automations import Automation, Firing
from persevere.testing import Harness, TestClock, harness
from persevere.worker import deploying, scheduling
from persevere.worker.evaluator import Evaluator
from persevere.worker.owners import this_process
from persevere.worker.scheduling import ScheduleSpec

from .conftest import error_line, invoke, ok
from .flows import automated

pytestmark = pytest.mark.timeout(30)

MONDAY = "2026-11-23T06:00:00Z"  # London is on UTC in November
SATURDAY = "2026-11-28T06:00:00Z"
ARRIVED = {"match": "s3.file.arrived"}
NOTE = [{"type": "notify", "message": "fired"}]
INGEST = {
    "type": "run-deployment",
    "deployment": "ingest/prod",
    "parameters": {"path": "{{ event.payload.path }}"},
}


@pytest.fixture
def h() -> Iterator[Harness]:
    with harness(start=MONDAY) as test_harness:
        yield test_harness


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


# -- helpers ---------------------------------------------------------------------------------


def create(h: Harness, name: str, trigger: dict[str, Any], actions: Any = None) -> Automation:
    return h.journal.automations.create(name, trigger, list(actions or NOTE))


def emit(h: Harness, name: str = "s3.file.arrived", rid: str = "bucket/sales", **payload: Any):
    event, new = h.journal.events.emit(name, {"id": rid}, payload)
    assert new
    return event


def firings(h: Harness, name: str) -> list[Firing]:
    """The automation's firings, oldest first."""
    journal = h.journal
    return list(reversed(journal.automations.history(journal.automations.get(name), 1000)))


def sql(journal: Journal, statement: str, params: tuple[Any, ...] = ()) -> int:
    return journal.writer.transaction(lambda conn: conn.execute(statement, params).rowcount)


def deploy_ingest(h: Harness, **kw: Any) -> Any:
    deployment, _ = deploying.deploy(automated.ingest, "prod", journal=h.journal, **kw)
    return deployment


def runs_of(journal: Journal, flow: str = "ingest") -> list[sqlite3.Row]:
    return journal.query(
        "SELECT id, state_name, state_type, parameters, run_key FROM flow_runs WHERE flow_name = ? "
        "ORDER BY created_ms, id",
        (flow,),
    )


def notifications(journal: Journal) -> list[Any]:
    return journal.events.newest(100, names=["persevere.automation.notification"])


# -- reactive triggers -------------------------------------------------------------------------


def test_one_matching_event_fires_once_and_others_do_not(h: Harness) -> None:
    create(h, "arrivals", {"match": "s3.file.*", "resource": {"id": "bucket/sales*"}})
    emit(h, "s3.file.deleted", "bucket/other")  # resource does not match
    emit(h, "gcs.file.arrived", "bucket/sales")  # name does not match
    h.tick()
    assert firings(h, "arrivals") == []
    event = emit(h, rid="bucket/sales-eu", path="q3.csv")
    lines = h.tick()
    assert any("automation arrivals fired" in line for line in lines), lines
    h.clock.advance(60)
    h.tick()
    h.tick()
    [firing] = firings(h, "arrivals")
    assert json.loads(firing.event_ids) == [event.id]
    assert firing.status == "done"
    assert firing.event_json is not None and firing.event_json["payload"] == {"path": "q3.csv"}


def test_threshold_fires_on_the_third_inside_the_window_not_when_spread(h: Harness) -> None:
    create(h, "burst", {"match": "s3.file.arrived", "threshold": 3, "within": "1m"})
    spread = [emit(h, n=i) for i in range(1)]
    for _ in range(2):
        h.clock.advance(40)
        spread.append(emit(h))
        h.tick()
    assert firings(h, "burst") == []  # 3 events over 80 s: never 3 in a minute
    h.clock.advance(120)
    close = [emit(h)]
    h.tick()
    h.clock.advance(20)
    close.append(emit(h))
    h.tick()
    assert firings(h, "burst") == []
    h.clock.advance(20)
    close.append(emit(h))
    h.tick()
    [firing] = firings(h, "burst")
    assert json.loads(firing.event_ids) == [e.id for e in close]
    assert firing.reason.startswith("3 events matching s3.file.arrived within 1m")


def test_for_each_counts_per_label_value(h: Harness) -> None:
    create(h, "per-bucket", {"match": "s3.file.arrived", "threshold": 2, "for_each": ["id"]})
    emit(h, rid="a")
    emit(h, rid="b")
    h.tick()
    assert firings(h, "per-bucket") == []  # one each, not two in all
    emit(h, rid="a")
    h.tick()
    [firing] = firings(h, "per-bucket")
    assert json.loads(firing.grp) == {"id": "a"}
    emit(h, rid="b")
    h.tick()
    assert [json.loads(f.grp) for f in firings(h, "per-bucket")] == [{"id": "a"}, {"id": "b"}]


def test_history_shows_the_firing_its_events_and_each_action_outcome(h: Harness) -> None:
    deploy_ingest(h)
    create(h, "ingest", ARRIVED, [INGEST, {"type": "notify", "message": "got it"}])
    event = emit(h, path="q3.csv")
    h.tick()
    [firing] = h.journal.automations.history(h.journal.automations.get("ingest"))
    assert json.loads(firing.event_ids) == [event.id]
    assert [(o["type"], o["status"], o["attempts"]) for o in firing.outcomes] == [
        ("run-deployment", "done", 1),
        ("notify", "done", 1),
    ]
    text = ok("automations", "history", "ingest").output
    assert "done" in text and "1 event matching s3.file.arrived" in text
    assert f"events: {event.id}" in text
    assert "action 0 run-deployment: done after 1 attempt(s) run " in text
    assert "action 1 notify: done after 1 attempt(s) notified (warning): got it" in text
    [item] = json.loads(ok("automations", "history", "ingest", "--json").output)
    assert item["id"] == firing.id and item["events"] == [event.id]
    assert item["status"] == "done"
    assert [a["status"] for a in item["actions"]] == ["done", "done"]


# -- proactive: deadline and absence -------------------------------------------------------

DEADLINE = {
    "type": "deadline",
    "expect": "etl.finished",
    "by": "09:00",
    "timezone": "Europe/London",
    "days": "weekdays",
}


def test_deadline_met_does_not_fire(h: Harness) -> None:
    create(h, "sla", DEADLINE)
    h.clock.set("2026-11-23T08:30:00Z")
    emit(h, "etl.finished", "etl/daily")
    h.tick()
    h.clock.set("2026-11-23T09:01:00Z")
    h.tick()
    assert firings(h, "sla") == []


def test_deadline_missed_fires_once_after_the_time(h: Harness) -> None:
    create(h, "sla", DEADLINE)
    h.clock.set("2026-11-23T08:59:00Z")
    h.tick()
    assert firings(h, "sla") == []
    h.clock.set("2026-11-23T09:01:00Z")
    h.tick()
    h.clock.advance(minutes=30)
    h.tick()
    h.tick()
    [firing] = firings(h, "sla")
    assert "09:00" in firing.reason and "Europe/London" in firing.reason
    assert "2026-11-23" in firing.reason and "none arrived" in firing.reason
    assert firing.fired_ms == TestClock("2026-11-23T09:00:00Z").now_ms()  # at the deadline
    assert firing.status == "done"


def test_deadline_on_a_weekend_does_not_fire(h: Harness) -> None:
    h.clock.set(SATURDAY)
    create(h, "sla", DEADLINE)
    for when in ("2026-11-28T09:30:00Z", "2026-11-29T09:30:00Z", "2026-11-29T23:00:00Z"):
        h.clock.set(when)
        h.tick()
    assert firings(h, "sla") == []
    h.clock.set("2026-11-30T09:01:00Z")  # Monday: the weekday deadline does fire
    h.tick()
    assert len(firings(h, "sla")) == 1


ABSENCE = {"type": "absence", "expect": "job.done", "after": "job.started", "within": "10m"}


def test_absence_after_an_event_met(h: Harness) -> None:
    create(h, "done-in-time", ABSENCE)
    emit(h, "job.started", "job/1")
    h.clock.advance(minutes=5)
    emit(h, "job.done", "job/1")
    h.tick()
    h.clock.advance(minutes=30)
    h.tick()
    assert firings(h, "done-in-time") == []


def test_absence_after_an_event_missed(h: Harness) -> None:
    create(h, "done-in-time", ABSENCE)
    started = emit(h, "job.started", "job/1")
    h.tick()
    h.clock.advance(minutes=9)
    h.tick()
    assert firings(h, "done-in-time") == []
    h.clock.advance(minutes=2)
    h.tick()
    h.tick()
    [firing] = firings(h, "done-in-time")
    assert "expected job.done within 10m after job.started" in firing.reason
    assert json.loads(firing.event_ids) == [started.id]
    h.clock.advance(minutes=5)
    emit(h, "job.done", "job/1")  # too late: nothing more
    h.tick()
    assert len(firings(h, "done-in-time")) == 1


# -- compound and sequence ------------------------------------------------------------------

PAIR = [{"match": "a.happened"}, {"match": "b.happened"}]


def test_compound_fires_when_all_happened_within_the_window(h: Harness) -> None:
    create(h, "both", {"type": "compound", "triggers": PAIR, "require": "all", "within": "5m"})
    emit(h, "a.happened", "x")
    h.clock.advance(minutes=10)
    emit(h, "b.happened", "x")  # 10 minutes apart: too far
    h.tick()
    assert firings(h, "both") == []
    h.clock.advance(minutes=1)
    a = emit(h, "a.happened", "x")  # within 5m of the b before
    h.tick()
    [firing] = firings(h, "both")
    assert a.id in json.loads(firing.event_ids)
    assert firing.reason.startswith("2 of 2 triggers fired")


def test_sequence_fires_in_order_only(h: Harness) -> None:
    create(h, "a-then-b", {"type": "sequence", "triggers": PAIR, "within": "5m"})
    emit(h, "b.happened", "x")
    h.clock.advance(30)
    emit(h, "b.happened", "x")
    h.tick()
    assert firings(h, "a-then-b") == []
    h.clock.advance(30)
    a = emit(h, "a.happened", "x")
    h.clock.advance(30)
    b = emit(h, "b.happened", "x")
    h.tick()
    [firing] = firings(h, "a-then-b")
    assert json.loads(firing.event_ids) == [a.id, b.id]
    assert firing.reason.startswith("2 triggers fired in order")


# -- actions ---------------------------------------------------------------------------------


def test_run_deployment_makes_one_run_with_the_templated_parameter(h: Harness) -> None:
    deploy_ingest(h)
    create(h, "ingest", ARRIVED, [INGEST])
    emit(h, path="s3://bucket/q3.csv")
    h.tick()
    h.clock.advance(120)
    h.tick()
    [run] = runs_of(h.journal)
    assert run["state_type"] == "SCHEDULED"  # Late by now: nobody works its queue
    assert json.loads(run["parameters"]) == {"path": "s3://bucket/q3.csv"}
    [firing] = firings(h, "ingest")
    assert run["run_key"] == f"automation/{firing.id}/0"
    assert firing.outcomes[0]["outcome"] == f"run {run['id']} of ingest/prod (Scheduled)"


def test_run_deployment_again_after_a_crash_makes_no_second_run(h: Harness) -> None:
    deploy_ingest(h)
    create(h, "ingest", ARRIVED, [INGEST])
    emit(h, path="q3.csv")
    h.tick()
    [firing] = firings(h, "ingest")
    # As if the process died after the run was made, before the outcome was recorded:
    pending = json.dumps([{"type": "run-deployment", "status": "pending", "attempts": 0}])
    changed = sql(
        h.journal,
        "UPDATE firings SET status = 'pending', actions = ?, next_ms = ?, ended_ms = NULL "
        "WHERE id = ?",
        (pending, h.clock.now_ms(), firing.id),
    )
    assert changed == 1
    lines = h.tick()
    assert any("run-deployment done" in line for line in lines), lines  # it did run again
    h.tick()
    assert len(runs_of(h.journal)) == 1
    [again] = firings(h, "ingest")
    assert again.status == "done" and again.outcomes[0]["attempts"] == 1


def test_pause_and_resume_schedule(h: Harness) -> None:
    deployment = deploy_ingest(h, defaults={"path": "x"})
    scheduling.add(h.journal, deployment, ScheduleSpec("interval", "1h"))
    create(
        h, "stop", {"match": "ops.stop"}, [{"type": "pause-schedule", "deployment": "ingest/prod"}]
    )
    create(h, "go", {"match": "ops.go"}, [{"type": "resume-schedule", "deployment": "ingest/prod"}])
    emit(h, "ops.stop", "ops")
    h.tick()
    assert [s.is_active for s in h.journal.schedules.of(deployment)] == [False]
    assert firings(h, "stop")[0].outcomes[0]["outcome"] == "1 schedule(s) of ingest/prod paused"
    emit(h, "ops.go", "ops")
    h.tick()
    assert [s.is_active for s in h.journal.schedules.of(deployment)] == [True]


def test_pause_and_resume_work_queue(h: Harness) -> None:
    deploy_ingest(h, queue="ingesting")
    create(h, "stop", {"match": "ops.stop"}, [{"type": "pause-work-queue", "queue": "ingesting"}])
    create(h, "go", {"match": "ops.go"}, [{"type": "resume-work-queue", "queue": "ingesting"}])
    emit(h, "ops.stop", "ops")
    h.tick()
    assert h.journal.deployments.queue("ingesting").paused
    emit(h, "ops.go", "ops")
    h.tick()
    assert not h.journal.deployments.queue("ingesting").paused
    assert [f.status for f in firings(h, "stop") + firings(h, "go")] == ["done", "done"]


def test_cancel_flow_run_of_a_scheduled_run(h: Harness) -> None:
    deploy_ingest(h)
    create(
        h, "no-ingest", {"match": "persevere.flow-run.Scheduled"},
        [{"type": "cancel-flow-run", "reason": "frozen"}],
    )  # fmt: skip
    _, run = deploying.schedule("ingest/prod", {"path": "x"}, journal=h.journal)
    h.tick()
    after = h.journal.get_flow_run(run.id)
    assert after.state_name == "Cancelled"
    assert "frozen" in (after.state_message or "")
    [firing] = firings(h, "no-ingest")
    assert firing.status == "done"


def test_resume_flow_run_of_a_paused_run(h: Harness) -> None:
    create(h, "go", {"match": "persevere.flow-run.Suspended"}, [{"type": "resume-flow-run"}])
    state = automated.waits_for_go(return_state=True)
    assert state.name == "Suspended"
    h.tick()
    run = h.journal.get_flow_run(state.run_id)
    assert run.state_name != "Suspended", run.state_name
    [firing] = firings(h, "go")
    assert firing.status == "done", firing.outcomes
    assert "resumed" in firing.outcomes[0]["outcome"]


def test_resume_flow_run_of_a_crashed_run_on_a_queue(h: Harness) -> None:
    deploy_ingest(h)
    _, run = deploying.schedule("ingest/prod", {"path": "x"}, journal=h.journal)
    claimed = h.journal.workers.claim("w1", [], this_process(), new_id())
    assert claimed is not None and claimed.id == run.id
    create(h, "revive", {"match": "persevere.flow-run.Crashed"}, [{"type": "resume-flow-run"}])
    h.journal.mark_crashed(claimed, "the worker died")
    h.tick()
    assert h.journal.get_flow_run(run.id).state_name == "Scheduled"
    [firing] = firings(h, "revive")
    assert firing.outcomes[0]["outcome"] == f"run {run.id} Scheduled again for a worker"


def test_suspend_flow_run_fails_with_a_clear_outcome(h: Harness) -> None:
    deploy_ingest(h)
    create(h, "suspend", {"match": "persevere.flow-run.Scheduled"}, [{"type": "suspend-flow-run"}])
    _, run = deploying.schedule("ingest/prod", {"path": "x"}, journal=h.journal)
    h.tick()
    [firing] = firings(h, "suspend")
    assert firing.status == "failed"
    [outcome] = firing.outcomes
    assert outcome["status"] == "failed"
    assert "a run can only suspend itself" in outcome["error"]
    assert "\n" not in outcome["error"]
    assert h.journal.get_flow_run(run.id).state_name == "Scheduled"


def test_notify_journals_a_notification_event(h: Harness) -> None:
    create(h, "tell", ARRIVED, [{"type": "notify", "message": "file {{ event.payload.path }}"}])
    emit(h, path="q3.csv")
    h.tick()
    h.tick()
    [note] = notifications(h.journal)
    [firing] = firings(h, "tell")
    assert note.payload["message"] == "file q3.csv"
    assert note.payload["firing"] == firing.id
    assert note.resource["name"] == "tell"


def test_pause_and_resume_automation(h: Harness) -> None:
    create(h, "watched", ARRIVED)
    create(
        h, "stop", {"match": "ops.stop"}, [{"type": "pause-automation", "automation": "watched"}]
    )
    create(h, "go", {"match": "ops.go"}, [{"type": "resume-automation", "automation": "watched"}])
    create(h, "once", {"match": "once.*"}, [{"type": "pause-automation"}])  # itself
    emit(h, "ops.stop", "ops")
    h.tick()
    assert not h.journal.automations.get("watched").enabled
    emit(h)
    h.tick()
    assert firings(h, "watched") == []
    emit(h, "ops.go", "ops")
    h.tick()
    assert h.journal.automations.get("watched").enabled
    emit(h)
    h.tick()
    assert len(firings(h, "watched")) == 1
    emit(h, "once.a", "x")
    h.tick()
    emit(h, "once.b", "x")
    h.tick()
    assert len(firings(h, "once")) == 1
    assert not h.journal.automations.get("once").enabled


# -- webhooks --------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server that records POSTs and answers ``failures`` times ``status``
    (then 200)."""

    def __init__(self, failures: int = 0, status: int = 500) -> None:
        self.failures, self.status = failures, status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((dict(self.headers), body))
                code = receiver.status if len(receiver.posts) <= receiver.failures else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(failures: int = 0, status: int = 500) -> Receiver:
        made.append(Receiver(failures, status))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_webhook_is_retried_with_backoff_until_done(h: Harness, receiver: Any) -> None:
    server = receiver(failures=2)
    create(h, "hook", ARRIVED, [{"type": "webhook", "url": server.url, "retries": 5}, *NOTE])
    event = emit(h, path="q3.csv")
    h.tick()
    assert len(server.posts) == 1
    waits = []
    while True:
        [firing] = firings(h, "hook")
        if firing.status != "pending":
            break
        assert firing.next_ms is not None and firing.next_ms > h.clock.now_ms()
        waits.append(firing.next_ms - h.clock.now_ms())
        h.clock.advance((firing.next_ms - h.clock.now_ms()) / 1000 - 0.5)
        h.tick()  # not due yet: no retry
        assert len(server.posts) == len(waits)
        h.clock.advance(1)
        h.tick()
        assert len(waits) < 10
    assert firing.status == "done"
    assert len(server.posts) == 3 and len(waits) == 2
    assert waits[1] > waits[0]  # backoff grows
    [outcome, note] = firing.outcomes
    assert (outcome["status"], outcome["attempts"]) == ("done", 3)
    assert note["attempts"] == 1  # the notify ran once, not again with each retry
    for headers, body in server.posts:
        assert {k.lower(): v for k, v in headers.items()}["idempotency-key"] == firing.id
        sent = json.loads(body)
        assert sent["event"]["id"] == event.id
        assert sent["event"]["payload"] == {"path": "q3.csv"}
        assert sent["firing"] == firing.id


def test_webhook_404_fails_at_once(h: Harness, receiver: Any) -> None:
    server = receiver(failures=100, status=404)
    create(h, "hook", ARRIVED, [{"type": "webhook", "url": server.url}])
    emit(h)
    h.tick()
    for _ in range(3):
        h.clock.advance(minutes=5)
        h.tick()
    [firing] = firings(h, "hook")
    assert firing.status == "failed"
    assert firing.outcomes[0]["attempts"] == 1 and "404" in firing.outcomes[0]["error"]
    assert len(server.posts) == 1


def test_webhook_retries_exhausted_fails(h: Harness, receiver: Any) -> None:
    server = receiver(failures=100)
    create(h, "hook", ARRIVED, [{"type": "webhook", "url": server.url, "retries": 2}])
    emit(h)
    h.tick()
    for _ in range(10):
        h.clock.advance(minutes=5)
        h.tick()
    [firing] = firings(h, "hook")
    assert firing.status == "failed"
    assert firing.outcomes[0]["attempts"] == 3 and "500" in firing.outcomes[0]["error"]
    assert len(server.posts) == 3


def test_a_bad_template_field_fails_that_action_only(h: Harness) -> None:
    create(
        h, "partly", ARRIVED,
        [{"type": "notify", "message": "{{ event.payload.missing }}"},
         {"type": "notify", "message": "still {{ event.payload.path }}"}],
    )  # fmt: skip
    emit(h, path="q3.csv")
    h.tick()
    [firing] = firings(h, "partly")
    bad, good = firing.outcomes
    assert bad["status"] == "failed" and "\n" not in bad["error"]
    assert "event.payload.missing" in bad["error"]
    assert (good["status"], good["outcome"]) == ("done", "notified (warning): still q3.csv")
    assert firing.status == "failed"
    assert [n.payload["message"] for n in notifications(h.journal)] == ["still q3.csv"]


# -- restarts, crashes, several evaluators ----------------------------------------------------


def test_a_restart_mid_window_fires_once(h: Harness) -> None:
    create(h, "pair", {"match": "s3.file.arrived", "threshold": 2, "within": "10m"})
    emit(h)
    h.tick()
    close_all()  # the evaluator's process restarts: a new journal, a new scheduler
    h.clock.advance(minutes=3)
    emit(h)
    h.tick()
    for _ in range(3):
        h.clock.advance(minutes=1)
        close_all()
        Evaluator(h.journal).tick()
        h.tick()
    assert len(firings(h, "pair")) == 1


def test_a_firing_leased_by_a_dead_evaluator_is_taken_over(h: Harness) -> None:
    deploy_ingest(h)
    automation = create(h, "ingest", ARRIVED, [INGEST])
    emit(h, path="q3.csv")
    [firing], _ = h.journal.automations.evaluate(automation.id, h.clock.now_ms())
    claimed = h.journal.automations.claim_firing(h.clock.now_ms())  # then the evaluator died
    assert claimed is not None and claimed[0].id == firing.id
    h.tick()
    assert runs_of(h.journal) == []  # its lease holds yet
    sql(h.journal, "UPDATE firings SET lease_expires_ms = ? WHERE id = ?",
        (h.clock.now_ms() - 1, firing.id))  # fmt: skip
    h.tick()
    h.tick()
    assert len(runs_of(h.journal)) == 1
    [done] = firings(h, "ingest")
    assert done.status == "done" and done.outcomes[0]["attempts"] == 1
    # the dead evaluator's late record is refused
    assert not h.journal.automations.record(claimed[0], claimed[1], done.outcomes)


def test_two_evaluators_in_one_process_fire_once_per_firing(h: Harness) -> None:
    deploy_ingest(h)
    create(
        h, "ingest", ARRIVED, [INGEST, {"type": "notify", "message": "{{ event.payload.path }}"}]
    )
    journal = h.journal
    evaluators = [Evaluator(journal), Evaluator(journal)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(evaluator: Evaluator) -> None:
        try:
            while not stop.is_set():
                evaluator.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(e,)) for e in evaluators]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            emit(h, rid=f"bucket/{i}", path=f"f{i}.csv")
        deadline = 200
        while sum(f.status == "done" for f in firings(h, "ingest")) < 30 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    done = firings(h, "ingest")
    assert len(done) == 30 and {f.status for f in done} == {"done"}
    runs = runs_of(journal)
    assert len(runs) == 30
    assert sorted(json.loads(r["parameters"])["path"] for r in runs) == sorted(
        f"f{i}.csv" for i in range(30)
    )
    assert len({r["run_key"] for r in runs}) == 30
    assert len(notifications(journal)) == 30
    assert all(o["attempts"] == 1 for f in done for o in f.outcomes)


# -- the CLI -------------------------------------------------------------------------------

YAML = """\
name: ingest
description: new files are ingested
trigger:
  match: s3.file.arrived
  resource: {id: "bucket/*"}
actions:
  - type: notify
    message: "got {{ event.payload.path }}"
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_cli_create_from_yaml_and_json(h: Harness, tmp_path: Path) -> None:
    out = ok("automations", "create", write(tmp_path, "a.yaml", YAML)).output
    assert "automation ingest created: 1 event matching s3.file.arrived" in out
    many = [
        {"name": "one", "trigger": {"match": "x.one"}, "actions": NOTE},
        {"name": "two", "trigger": {"match": "x.two"}, "actions": NOTE, "enabled": False},
    ]
    ok("automations", "create", write(tmp_path, "many.json", json.dumps(many)))
    ok(
        "automations",
        "create",
        write(tmp_path, "single.json", json.dumps({**many[0], "name": "three"})),
    )
    names = {a.name: bool(a.enabled) for a in h.journal.automations.all()}
    assert names == {"ingest": True, "one": True, "two": False, "three": True}
    assert h.journal.automations.get("ingest").description == "new files are ingested"
    emit(h, rid="bucket/x", path="p.csv")
    h.tick()
    assert len(firings(h, "ingest")) == 1


def test_cli_duplicate_needs_replace(h: Harness, tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", YAML)
    ok("automations", "create", path)
    line = error_line(invoke("automations", "create", path))
    assert "exists already" in line and "--replace" in line
    changed = write(tmp_path, "b.yaml", YAML.replace("s3.file.arrived", "s3.file.gone"))
    ok("automations", "create", changed, "--replace")
    [automation] = h.journal.automations.all()
    assert automation.trigger_spec["match"] == ["s3.file.gone"]
    assert automation.version == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("match: s3.file.arrived", "match: s3.file.arrived\n  threshold: 0"), "trigger.threshold"),
        (("match: s3.file.arrived", "type: sometimes"), "trigger.type"),
        (("type: notify", "type: shout"), "actions[0].type"),
        (("message:", "mesage:"), "actions[0]: notify has no field 'mesage'"),
    ],
)
def test_cli_invalid_trigger_or_action_is_one_line_and_creates_nothing(
    h: Harness, tmp_path: Path, change: tuple[str, str], field: str
) -> None:
    path = write(tmp_path, "bad.yaml", YAML.replace(*change))
    line = error_line(invoke("automations", "create", path))
    assert field in line
    assert h.journal.automations.all() == []


def test_cli_invalid_action_in_a_list_creates_none_of_them(h: Harness, tmp_path: Path) -> None:
    many = [
        {"name": "one", "trigger": {"match": "x.one"}, "actions": NOTE},
        {"name": "two", "trigger": {"match": "x.two"}, "actions": [{"type": "shout"}]},
    ]
    line = error_line(invoke("automations", "create", write(tmp_path, "m.json", json.dumps(many))))
    assert "actions[0].type" in line
    assert h.journal.automations.all() == []


def test_cli_ls_inspect_pause_resume_delete(h: Harness, tmp_path: Path) -> None:
    ok("automations", "create", write(tmp_path, "a.yaml", YAML))
    table = ok("automations", "ls").output
    assert "ingest" in table and "enabled" in table and "notify" in table
    [listed] = json.loads(ok("automations", "ls", "--json").output)
    assert listed["name"] == "ingest" and listed["enabled"] is True
    assert listed["trigger"]["match"] == ["s3.file.arrived"]
    text = ok("automations", "inspect", "ingest").output
    assert "trigger:  1 event matching s3.file.arrived" in text and "action 0: notify" in text
    inspected = json.loads(ok("automations", "inspect", "ingest", "--json").output)
    assert inspected["id"] == listed["id"]

    assert "automation ingest paused" in ok("automations", "pause", "ingest").output
    assert json.loads(ok("automations", "ls", "--json").output)[0]["enabled"] is False
    emit(h, rid="bucket/a")
    h.tick()
    ok("automations", "resume", "ingest")
    h.tick()
    h.tick()
    assert firings(h, "ingest") == []  # the event came while it was paused
    emit(h, rid="bucket/b")
    h.tick()
    assert len(firings(h, "ingest")) == 1

    assert "automation ingest deleted" in ok("automations", "delete", "ingest").output
    assert h.journal.automations.all() == []
    assert h.journal.query("SELECT count(*) FROM firings")[0][0] == 0


@pytest.mark.parametrize("command", ["inspect", "pause", "resume", "delete", "history"])
def test_cli_unknown_name_exits_2(h: Harness, command: str) -> None:
    line = error_line(invoke("automations", command, "nope"))
    assert "nope" in line


# -- the Python API --------------------------------------------------------------------------


def test_python_api_create_automation_and_emit_event(h: Harness) -> None:
    deploy_ingest(h)
    automation = create_automation(
        "ingest", trigger={"match": "s3.file.arrived", "resource": {"id": "bucket/*"}},
        actions=[INGEST], description="from Python",
    )  # fmt: skip
    assert automation.description == "from Python"
    event = persevere.emit_event("s3.file.arrived", {"id": "bucket/sales"}, {"path": "q4.csv"})
    again = persevere.emit_event("s3.file.arrived", {"id": "bucket/sales"}, id=event.id)
    assert again.seq == event.seq  # journaled once
    h.tick()
    [run] = runs_of(h.journal)
    assert json.loads(run["parameters"]) == {"path": "q4.csv"}
    with pytest.raises(ValueError, match=r"trigger\.threshold"):
        create_automation("bad", trigger={"match": "x", "threshold": 0}, actions=NOTE)
    with pytest.raises(ValueError, match="exists already"):
        create_automation("ingest", trigger={"match": "x"}, actions=NOTE)
