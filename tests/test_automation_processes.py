"""Automations evaluated by real processes: two `persevere scheduler`s on one database fire
each firing once, an evaluator SIGKILLed mid-window loses nothing and doubles nothing,
and a worker runs the deployment run that a file-arrival event made.

Time is the system clock here; the test waits by polling the journal with a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from persevere.journal import Journal
from persevere.worker import deploying

from .conftest import FLOWS, start, wait_for
from .flows import automated

pytestmark = pytest.mark.timeout(90)

FLOW_FILE = FLOWS / "automated.py"
INGEST = {
    "type": "run-deployment",
    "deployment": "ingest/prod",
    "parameters": {"path": "{{ event.payload.path }}"},
}


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def deploy(journal: Journal) -> None:
    deploying.deploy(automated.ingest, "prod", given=f"{FLOW_FILE}:ingest", journal=journal)


def firing_statuses(journal: Journal) -> list[str]:
    return [r[0] for r in journal.query("SELECT status FROM firings ORDER BY id")]


def test_two_scheduler_processes_fire_each_firing_once(
    db: Path, journal: Journal, processes: list[subprocess.Popen[bytes]]
) -> None:
    deploy(journal)
    journal.automations.create(
        "ingest", {"match": "s3.file.arrived"},
        [INGEST, {"type": "notify", "message": "got {{ event.payload.path }}"}],
    )  # fmt: skip
    first, first_log = start(processes, db, "scheduler", "--poll-seconds", "0.2")
    second, second_log = start(processes, db, "scheduler", "--poll-seconds", "0.2")
    # Both are up (SIGTERM handled) before the events: a process still starting would not
    # take part, and a SIGTERM before its handler is installed ends it with -15.
    for log in (first_log, second_log):
        wait_for(lambda log=log: "scheduler started" in log.read_text(), timeout=30, every=0.05)
    for i in range(20):
        journal.events.emit(
            "s3.file.arrived", {"id": "bucket/sales"}, {"path": f"f{i}.csv"}, id=f"arrival-{i}"
        )
    wait_for(
        lambda: firing_statuses(journal) == ["done"] * 20 or len(firing_statuses(journal)) > 20,
        timeout=60,
        every=0.1,
    )
    assert (stop(first), stop(second)) == (0, 0)
    assert firing_statuses(journal) == ["done"] * 20
    runs = journal.query(
        "SELECT run_key, parameters FROM flow_runs WHERE flow_name = 'ingest' ORDER BY run_key"
    )
    assert len(runs) == 20 and len({r["run_key"] for r in runs}) == 20
    paths = sorted(json.loads(r["parameters"])["path"] for r in runs)
    assert paths == sorted(f"f{i}.csv" for i in range(20))
    events = [r[0] for r in journal.query("SELECT event_ids FROM firings")]
    assert sorted(json.loads(e)[0] for e in events) == sorted(f"arrival-{i}" for i in range(20))
    notes = journal.query(
        "SELECT count(*) FROM events WHERE event = 'persevere.automation.notification'"
    )
    assert notes[0][0] == 20
    logs = [first_log.read_text(), second_log.read_text()]
    for log in logs:
        assert "Traceback" not in log, log
        assert "scheduler stopped" in log
    fired = [log.count("automation ingest fired") for log in logs]
    made = [log.count("run-deployment done") for log in logs]
    print(f"firings by process: {fired}; runs made by process: {made}")  # shown with -s
    assert sum(fired) == 20 and sum(made) == 20


def test_an_evaluator_killed_mid_window_fires_once(
    db: Path, journal: Journal, processes: list[subprocess.Popen[bytes]]
) -> None:
    automation = journal.automations.create(
        "pair", {"match": "s3.file.arrived", "threshold": 2, "within": "10m"},
        [{"type": "notify", "message": "two files"}],
    )  # fmt: skip

    def cursor() -> int:
        return int(journal.automations.get(automation.id).cursor_seq)

    first, _ = start(processes, db, "scheduler", "--poll-seconds", "0.2")
    one, _ = journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, id="one")
    wait_for(lambda: cursor() >= one.seq, timeout=30, every=0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert journal.query("SELECT count(*) FROM firings")[0][0] == 0
    second, second_log = start(processes, db, "scheduler", "--poll-seconds", "0.2")
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, id="two")
    wait_for(lambda: firing_statuses(journal) == ["done"], timeout=30, every=0.05)
    later, _ = journal.events.emit("other.thing", {"id": "x"})
    wait_for(lambda: cursor() >= later.seq, timeout=30, every=0.05)
    assert stop(second) == 0
    [row] = journal.query("SELECT event_ids FROM firings")
    assert json.loads(row[0]) == ["one", "two"]
    assert "Traceback" not in second_log.read_text()


def test_a_worker_runs_the_deployment_an_event_asked_for(
    db: Path, journal: Journal, processes: list[subprocess.Popen[bytes]]
) -> None:
    side = db.parent / "ingested.txt"
    deploy(journal)
    journal.automations.create("ingest", {"match": "s3.file.arrived"}, [INGEST])
    worker, log = start(
        processes, db, "worker", "start", "--poll-seconds", "0.1", AUTOMATED_SIDE=str(side)
    )
    journal.events.emit("s3.file.arrived", {"id": "bucket/sales"}, {"path": "s3://b/q3.csv"})

    def completed() -> list[str]:
        rows = journal.query(
            "SELECT parameters FROM flow_runs WHERE flow_name = 'ingest' "
            "AND state_type = 'COMPLETED'"
        )
        return [json.loads(r[0])["path"] for r in rows]

    wait_for(completed, timeout=60, every=0.1)
    assert stop(worker) == 0
    assert completed() == ["s3://b/q3.csv"]
    assert side.read_text().splitlines() == ["s3://b/q3.csv"]
    assert "Traceback" not in log.read_text()
