"""Events and automations, end to end, in one process and a few seconds.

a) A file lands in a bucket: the event ``s3.file.arrived`` makes a run of the
   ``ingest/on-arrival`` deployment with the file's path, and a worker runs it.
b) The sales data must be refreshed by 09:00 London time on weekdays. When the
   ``sales.refreshed`` event has not come by then, an error is raised and the
   ``fallback_refresh/daily`` deployment runs. Two days pass on a test clock.

    python examples/automations.py        # a temporary database, unless PERSEVERE_DB is set

The same automations as a file: ``persevere automations create examples/automations.yaml``.
Exit code 0 only if everything shown happened as described.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
import zoneinfo
from typing import Any

import persevere
from persevere import clock, flow, task
from persevere.automations import Automation, create_automation
from persevere.journal import Journal, close_all, new_id, open_journal
from persevere.testing import TestClock
from persevere.worker.child import run_claimed
from persevere.worker.owners import this_process
from persevere.worker.scheduler import Scheduler
from persevere.worker.supervisor import Worker

LONDON = zoneinfo.ZoneInfo("Europe/London")
INGEST: dict[str, Any] = {  # the automations of examples/automations.yaml
    "name": "ingest-new-sales-files",
    "trigger": {"match": "s3.file.arrived", "resource": {"id": "bucket/sales*"}},
    "actions": [
        {
            "type": "run-deployment",
            "deployment": "ingest/on-arrival",
            "parameters": {"path": "{{ event.payload.path }}"},
        }
    ],
}
REFRESH: dict[str, Any] = {
    "name": "sales-refreshed-by-9",
    "trigger": {
        "type": "deadline",
        "expect": "sales.refreshed",
        "by": "09:00",
        "timezone": "Europe/London",
        "days": "weekdays",
    },
    "actions": [
        {"type": "notify", "level": "error", "message": "{{ firing.reason }}"},
        {"type": "run-deployment", "deployment": "fallback_refresh/daily"},
    ],
}


@task
def download(path: str) -> list[str]:
    return [f"{path}#row{i}" for i in range(3)]  # stands for reading the file


@task
def load(rows: list[str]) -> int:
    return len(rows)


@flow
def ingest(path: str) -> str:
    return f"loaded {load(download(path))} rows from {path}"


@flow
def fallback_refresh() -> str:
    return "sales refreshed from yesterday's snapshot"


problems: list[str] = []


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def check(ok: bool, what: str) -> None:
    print(f"    [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        problems.append(what)


def history(journal: Journal, name: str) -> None:
    """What `persevere automations history NAME` prints (times in London)."""
    print(f"    $ persevere automations history {name}")
    firings = journal.automations.history(journal.automations.get(name))
    for f in firings:
        when = dt.datetime.fromtimestamp(f.fired_ms / 1000, LONDON).strftime("%a %Y-%m-%d %H:%M")
        print(f"    {when}  {f.status:<7}  {f.reason}")
        for i, o in enumerate(f.outcomes):
            print(f"        action {i} {o['type']}: {o['status']}  {o.get('outcome') or ''}")
    if not firings:
        print("    no firings yet")


def define(journal: Journal, spec: dict[str, Any]) -> Automation:
    """Create the automation afresh (and drop what an earlier run left in PERSEVERE_DB)."""
    if any(a.name == spec["name"] for a in journal.automations.all()):
        journal.automations.delete(spec["name"])  # its firings go with it
    return create_automation(spec["name"], spec["trigger"], spec["actions"], journal=journal)


def file_arrival(journal: Journal) -> None:
    say("a) a file arrives in the bucket; an automation runs the ingest deployment")
    ingest.deploy("on-arrival", queue="ingest")
    automation = define(journal, INGEST)
    path = "s3://bucket/sales-eu/2026-11-21.csv"
    # The bucket's notifier would do this (or `persevere events emit s3.file.arrived ...`).
    persevere.emit_event("s3.file.arrived", {"id": "bucket/sales-eu"}, {"path": path})
    print(f"    emitted s3.file.arrived for bucket/sales-eu, path {path}")
    # A worker's housekeeping pass evaluates the automations (no separate process
    # needed), then it claims the run and executes it in a process of its own.
    worker = Worker(journal, name="example-worker", queues=["ingest"], poll_seconds=0.1,
                    say=lambda line: print(f"    worker | {line}", flush=True))  # fmt: skip
    worker.register()
    run, give_up = None, time.monotonic() + 30
    while time.monotonic() < give_up:
        worker.tick()
        fired = journal.automations.history(automation, 1)
        if fired:
            run = journal.find_flow_run_by_key(f"automation/{fired[0].id}/0")
        if run is not None and not worker.children and run.state_name != "Scheduled":
            break
        time.sleep(0.05)
    journal.workers.stopped(worker.name)
    history(journal, INGEST["name"])
    check(run is not None, "the event made one run of ingest/on-arrival")
    if run is not None:
        run = journal.get_flow_run(run.id)
        result = journal.load_result(run.result_id) if run.result_id else None
        check(run.state_name == "Completed", f"the worker ran it: {run.state_name}")
        check(result == f"loaded 3 rows from {path}", f"with the file's path: {result!r}")


def missed_refresh(journal: Journal, now: TestClock) -> None:
    say("b) the 9 AM sales refresh, on a test clock from Monday 2026-11-23 07:00")
    fallback_refresh.deploy("daily", queue="reports")
    # Made at Monday 07:00 by the clock: Monday's window runs from now to 09:00.
    automation = define(journal, REFRESH)
    scheduler = Scheduler(journal, say=lambda line: print(f"    scheduler | {line}", flush=True))

    def at(when: str) -> None:  # move the clock, then one scheduler pass (as a worker does)
        now.set(dt.datetime.fromisoformat(when).replace(tzinfo=LONDON))
        print(f"    -- {now.now.astimezone(LONDON):%a %H:%M} London")
        if not scheduler.tick():
            print("    scheduler | (nothing to do)")

    at("2026-11-23T08:30")
    persevere.emit_event("sales.refreshed", {"id": "warehouse/sales"}, {"rows": 1200})
    print("    emitted sales.refreshed (the refresh job finished on time)")
    at("2026-11-23T09:00")
    at("2026-11-23T12:00")
    check(not journal.automations.history(automation), "Monday: refreshed by 09:00, no firing")

    print("    (Tuesday: the refresh job does not run)")
    at("2026-11-24T08:59")
    at("2026-11-24T09:00")
    firings = journal.automations.history(automation)
    check(len(firings) == 1, f"Tuesday 09:00: one firing ({len(firings)})")
    notes = journal.events.newest(10, names=["persevere.automation.notification"])
    mine = [n for n in notes if firings and n.payload.get("firing") == firings[0].id]
    check([n.payload.get("level") for n in mine] == ["error"], "an error notification event")
    run = journal.find_flow_run_by_key(f"automation/{firings[0].id}/1") if firings else None
    check(run is not None, "the fallback run was made")
    if run is not None:
        # A worker would run it in a process of its own, on the real clock; here it runs
        # in this process, on the test clock, as that process would: claim, then execute.
        token = new_id()
        claimed = journal.workers.claim("example-worker", ["reports"], this_process(), token)
        check(claimed is not None and claimed.id == run.id, "a worker claimed the fallback run")
        run_claimed(run.id, token)
        run = journal.get_flow_run(run.id)
        result = journal.load_result(run.result_id) if run.result_id else None
        check(run.state_name == "Completed", f"the fallback run ran: {run.state_name}, {result!r}")
    at("2026-11-24T12:00")
    check(len(journal.automations.history(automation)) == 1, "no second firing that day")
    history(journal, REFRESH["name"])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="persevere-automations-") as folder:
        os.environ.setdefault("PERSEVERE_DB", os.path.join(folder, "persevere.db"))
        print(f"database: {os.environ['PERSEVERE_DB']}")
        journal = open_journal()
        file_arrival(journal)  # real time, a real worker
        test_clock = TestClock("2026-11-23T07:00:00Z")  # a Monday, GMT (= UTC) in London
        previous = clock.use(test_clock)  # what persevere.testing.harness does, on this database
        try:
            missed_refresh(journal, test_clock)
        finally:
            clock.use(previous)
            close_all()
    say("all as described" if not problems else f"{len(problems)} problem(s): {problems}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
