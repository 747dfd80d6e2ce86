"""The schema and its forward-only migrations.

The version lives in a one-row ``schema_version`` table. Opening a database
at the current version costs one SELECT; sqlite-utils (~70 ms to import) is
loaded only when there is something to create or migrate. A database from a
newer persevere is refused and never altered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import DatabaseError, SchemaTooNew


def _v1(db: Any) -> None:
    db.table("flow_runs").create(
        {
            "id": str,
            "flow_name": str,
            "entrypoint": str,
            "parameters": str,
            "state_type": str,
            "state_name": str,
            "state_message": str,
            "version": int,
            "run_key": str,
            "parent_flow_run_id": str,
            "parent_task_run_id": str,
            "deployment_id": str,
            "work_queue": str,
            "lease_token": str,
            "owner_host": str,
            "owner_pid": int,
            "owner_started": str,
            "lease_expires_ms": int,
            "scheduled_ms": int,
            "created_ms": int,
            "started_ms": int,
            "ended_ms": int,
            "result_id": str,
            "run_count": int,
            "retries_used": int,
        },
        pk="id",
        not_null=["flow_name", "state_type", "state_name", "version", "created_ms"],
        defaults={"parameters": "{}", "state_message": "", "run_count": 0, "retries_used": 0},
    )
    db.table("flow_runs").create_index(["run_key"], unique=True)
    db.table("flow_runs").create_index(["state_type"])
    db.table("flow_runs").create_index(["created_ms"])
    db.table("flow_runs").create_index(["parent_task_run_id"])
    # A task run's id is "<flow run id>.<position, 8 digits>", so the primary
    # key sorts like (flow run, position) and no other index is needed: with
    # WITHOUT ROWID, inserting a task run touches one B-tree page, not three
    # (each page touched is a page written to the WAL on commit).
    # Small results live in the row itself; larger ones in ``results``.
    db.execute(
        """CREATE TABLE task_runs (
            id TEXT PRIMARY KEY,
            flow_run_id TEXT NOT NULL REFERENCES flow_runs(id),
            position INTEGER NOT NULL, task_key TEXT NOT NULL, dynamic_key INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'task', cache_key TEXT, inputs_hash TEXT,
            state_type TEXT NOT NULL, state_name TEXT NOT NULL,
            state_message TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1, next_attempt_ms INTEGER,
            retries_used INTEGER NOT NULL DEFAULT 0,
            result_serializer TEXT, result BLOB, result_id TEXT,
            created_ms INTEGER NOT NULL, started_ms INTEGER, ended_ms INTEGER
        ) WITHOUT ROWID"""
    )
    # The append-only history of every transition of every run (flow or task).
    db.execute(
        """CREATE TABLE states (
            run_id TEXT NOT NULL, version INTEGER NOT NULL,
            from_type TEXT, to_type TEXT NOT NULL, name TEXT NOT NULL,
            ts_ms INTEGER NOT NULL, message TEXT NOT NULL DEFAULT '', details TEXT,
            PRIMARY KEY (run_id, version)) WITHOUT ROWID"""
    )
    # State hooks owed by a transition, until they have run (an outbox).
    db.execute(
        """CREATE TABLE hooks_due (
            run_id TEXT NOT NULL, version INTEGER NOT NULL, event TEXT NOT NULL,
            due_ms INTEGER NOT NULL, done_ms INTEGER, error TEXT,
            PRIMARY KEY (run_id, version, event)
        ) WITHOUT ROWID"""
    )
    # Cross-run cache entries: a cache key and the result stored for it.
    db.execute(
        """CREATE TABLE cache (
            key TEXT PRIMARY KEY, task_key TEXT NOT NULL, task_run_id TEXT,
            result_serializer TEXT, result BLOB, result_id TEXT,
            created_ms INTEGER NOT NULL, expires_ms INTEGER
        )"""
    )
    db.table("results").create(
        {"id": str, "serializer": str, "data": bytes, "path": str, "size": int, "created_ms": int},
        pk="id",
        not_null=["serializer", "size", "created_ms"],
    )
    db.table("logs").create(
        {
            "id": int,
            "flow_run_id": str,
            "task_run_id": str,
            "level": str,
            "ts_ms": int,
            "logger": str,
            "message": str,
            "extra": str,
        },
        pk="id",
        not_null=["level", "ts_ms", "message"],
    )
    db.table("logs").create_index(["flow_run_id", "id"])


def _v2(db: Any) -> None:
    # The task runs a task run's inputs came from (space-separated ids), for the graph.
    db.table("task_runs").add_column("upstream", str)
    # Concurrency limits. A limit caps the slots held at once; with a decay,
    # released slots (and rate-limit uses) drain away at that many per second.
    db.execute(
        """CREATE TABLE concurrency_limits (
            name TEXT PRIMARY KEY, slots INTEGER NOT NULL,
            decay_per_second REAL NOT NULL DEFAULT 0,
            decaying REAL NOT NULL DEFAULT 0, decayed_ms INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
        )"""
    )
    # Held slots. Each is a lease: live while its holder's process lives and,
    # for a holder inside a flow run, while that run still holds the lease
    # token written here.
    db.execute(
        """CREATE TABLE concurrency_slots (
            name TEXT NOT NULL, holder TEXT NOT NULL, occupy INTEGER NOT NULL,
            flow_run_id TEXT, lease_token TEXT,
            owner_host TEXT NOT NULL, owner_pid INTEGER NOT NULL, owner_started TEXT NOT NULL,
            acquired_ms INTEGER NOT NULL,
            PRIMARY KEY (name, holder)
        ) WITHOUT ROWID"""
    )
    # Who waits for slots, in the order they asked (``ticket``, one per
    # request, shared by the rows of its names), with the same liveness
    # fields as a slot; ``seen_ms`` is refreshed by every attempt.
    db.execute(
        """CREATE TABLE concurrency_waiters (
            name TEXT NOT NULL, ticket INTEGER NOT NULL, holder TEXT NOT NULL,
            occupy INTEGER NOT NULL, flow_run_id TEXT, lease_token TEXT,
            owner_host TEXT NOT NULL, owner_pid INTEGER NOT NULL, owner_started TEXT NOT NULL,
            since_ms INTEGER NOT NULL, seen_ms INTEGER NOT NULL,
            PRIMARY KEY (name, ticket)
        ) WITHOUT ROWID"""
    )
    # Where tickets come from: AUTOINCREMENT never hands out a number twice.
    db.execute("CREATE TABLE concurrency_tickets (ticket INTEGER PRIMARY KEY AUTOINCREMENT)")


def _v3(db: Any) -> None:
    # Deployments: a flow's entrypoint with default parameters, on a work queue.
    # ``name`` is "flow-name/deployment-name"; ``signature`` (JSON) lists the
    # flow's parameters, so a run's parameters are checked where it is made.
    db.execute(
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, flow_name TEXT NOT NULL,
            entrypoint TEXT NOT NULL, parameters TEXT NOT NULL DEFAULT '{}',
            signature TEXT NOT NULL DEFAULT '{}', work_queue TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]', description TEXT NOT NULL DEFAULT '',
            created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
        )"""
    )
    # Work queues: where Scheduled runs wait for a worker. ``concurrency_limit``
    # caps how many of a queue's runs are Pending or Running at once.
    db.execute(
        """CREATE TABLE work_queues (
            name TEXT PRIMARY KEY, concurrency_limit INTEGER, paused INTEGER NOT NULL DEFAULT 0,
            description TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL
        )"""
    )
    # Workers, as they announce themselves; a worker is live while it heartbeats.
    db.execute(
        """CREATE TABLE workers (
            name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            owner_started TEXT NOT NULL, queues TEXT NOT NULL, run_limit INTEGER NOT NULL,
            started_ms INTEGER NOT NULL, heartbeat_ms INTEGER NOT NULL, stopped_ms INTEGER
        )"""
    )
    runs = db.table("flow_runs")
    runs.add_column("worker_name", str)  # the worker that claimed the run
    runs.add_column("auto_resumes", int, not_null_default=0)  # automatic resumes in a row
    runs.add_column("max_auto_resumes", int)  # the flow's option, written when it runs
    runs.add_column("tags", str)
    runs.create_index(["work_queue", "state_type", "scheduled_ms"])
    runs.create_index(["worker_name", "state_type"])


def _v4(db: Any) -> None:
    # Schedules of deployments. ``kind`` is cron, interval or rrule, with its
    # ``expression`` read in ``timezone``; ``anchor_ms`` is where an interval
    # (or a rule without DTSTART) counts from. ``parameters`` override the
    # deployment's. ``catchup`` (skip, latest, all, with ``catchup_cap``)
    # says which missed or late times still run; a run not started within
    # ``grace_ms`` of its time is Late. ``cursor_ms``: the latest time the
    # scheduler has dealt with (made a run for, or skipped).
    db.execute(
        """CREATE TABLE schedules (
            id TEXT PRIMARY KEY, deployment_id TEXT NOT NULL, kind TEXT NOT NULL,
            expression TEXT NOT NULL, timezone TEXT NOT NULL DEFAULT 'UTC', anchor_ms INTEGER,
            parameters TEXT NOT NULL DEFAULT '{}', active INTEGER NOT NULL DEFAULT 1,
            catchup TEXT NOT NULL DEFAULT 'latest', catchup_cap INTEGER NOT NULL DEFAULT 100,
            grace_ms INTEGER NOT NULL DEFAULT 60000, cursor_ms INTEGER,
            created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
        )"""
    )
    db.execute("CREATE INDEX schedules_deployment ON schedules (deployment_id)")
    runs = db.table("flow_runs")
    # The schedule and the time it made the run for: one run per pair, however
    # many schedulers run at once (NULLs, runs of no schedule, are distinct).
    runs.add_column("schedule_id", str)
    runs.add_column("schedule_ms", int)
    db.execute("CREATE UNIQUE INDEX flow_runs_schedule ON flow_runs (schedule_id, schedule_ms)")
    # A Paused run: when its pause times out (NULL: never), and what then
    # (fail or cancel); the JSON schema of the input it waits for, if any.
    runs.add_column("pause_deadline_ms", int)
    runs.add_column("pause_on_timeout", str)
    runs.add_column("pause_input", str)
    runs.create_index(["state_type", "pause_deadline_ms"])


def _v5(db: Any) -> None:
    # Events, in the order they were written (``seq``). ``id`` is the event's
    # own id: an emitted event (``derived`` 0) with an id already here is
    # ignored. State changes of runs are ``derived`` (1): written once by
    # persevere, so they skip the unique index (one B-tree less per event),
    # and stored lean: ``resource``/``related``/``payload`` NULL, filled in
    # from the run when read (see journal/events.py).
    db.execute(
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL, event TEXT NOT NULL,
            occurred_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
            resource_id TEXT NOT NULL, resource TEXT, related TEXT, payload TEXT,
            derived INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE UNIQUE INDEX events_id ON events (id) WHERE derived = 0")
    # Automations: a trigger and actions (JSON specs). ``cursor_seq``: the
    # last event evaluated; ``state``: the trigger's evaluation state (JSON);
    # ``due_ms``: when time alone next matters to it (a deadline, a window).
    db.execute(
        """CREATE TABLE automations (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
            trigger TEXT NOT NULL, actions TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1,
            cursor_seq INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}',
            due_ms INTEGER, version INTEGER NOT NULL DEFAULT 1,
            created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
        )"""
    )
    # Each firing of an automation, with its actions' outcomes (JSON list).
    # ``id`` is the automation's id and the trigger's firing key: a firing
    # is journaled once however many evaluators run. Its actions are run by
    # whoever holds its lease (``lease_token`` until ``lease_expires_ms``);
    # ``next_ms``: when its unfinished actions are due (a retry's backoff).
    db.execute(
        """CREATE TABLE firings (
            id TEXT PRIMARY KEY, automation_id TEXT NOT NULL, fired_ms INTEGER NOT NULL,
            path TEXT NOT NULL, reason TEXT NOT NULL, event_ids TEXT NOT NULL,
            event TEXT, grp TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL,
            actions TEXT NOT NULL, next_ms INTEGER, lease_token TEXT, lease_expires_ms INTEGER,
            ended_ms INTEGER
        )"""
    )
    db.execute("CREATE INDEX firings_automation ON firings (automation_id, fired_ms)")
    db.execute("CREATE INDEX firings_due ON firings (status, next_ms)")
    # When a flow run's state last changed (its event's time).
    db.table("flow_runs").add_column("state_ms", int)
    for statement in EVENT_TRIGGERS:
        db.execute(statement)


# The events of flow runs, deployments, schedules and work queues, written by
# SQLite in the transaction of the change itself, whatever code made it (a
# flow run's state change bumps its version). (A
# task run's events are written by the writer after its commit instead: see
# journal/events.py.) Random ids for changes that have no natural one.
_RANDOM_ID = "lower(hex(randomblob(16)))"


def _when(row: str) -> str:
    """The time of a change: the row's ``updated_ms`` (persevere's clock, which
    tests may control); a deleted row has none, so SQLite's clock."""
    return f"{row}.updated_ms" if row == "NEW" else _NOW


def _bool(column: str) -> str:
    """A 0/1 column as a JSON boolean inside json_object()."""
    return f"json(CASE WHEN {column} THEN 'true' ELSE 'false' END)"


_NOW = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
EVENT_TRIGGERS = [
    # On flow_runs, not on states: a trigger on states, even one whose WHEN is
    # false for task runs, costs every task's commit about 9 µs.
    """CREATE TRIGGER events_flow_runs_created AFTER INSERT ON flow_runs BEGIN
        INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, derived)
        VALUES (NEW.id || '/' || NEW.version, 'persevere.flow-run.' || NEW.state_name,
                NEW.created_ms, NEW.created_ms, 'persevere.flow-run.' || NEW.id, 1);
    END""",
    """CREATE TRIGGER events_flow_runs_moved AFTER UPDATE OF version ON flow_runs
        WHEN NEW.version IS NOT OLD.version BEGIN
        INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, derived)
        VALUES (NEW.id || '/' || NEW.version, 'persevere.flow-run.' || NEW.state_name,
                coalesce(NEW.state_ms, NEW.created_ms), coalesce(NEW.state_ms, NEW.created_ms),
                'persevere.flow-run.' || NEW.id, 1);
    END""",
    *(
        f"""CREATE TRIGGER events_deployments_{verb} AFTER {when} ON deployments BEGIN
        INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, resource, related,
                            payload, derived)
        VALUES ({_RANDOM_ID}, 'persevere.deployment.{verb}d', {_when(row)}, {_when(row)},
                'persevere.deployment.' || {row}.id,
                json_object('id', 'persevere.deployment.' || {row}.id, 'name', {row}.name),
                json_array(json_object('id', 'persevere.flow.' || {row}.flow_name,
                                       'role', 'flow', 'name', {row}.flow_name),
                           json_object('id', 'persevere.work-queue.' || {row}.work_queue,
                                       'role', 'work-queue', 'name', {row}.work_queue)),
                json_object('work_queue', {row}.work_queue), 1);
    END"""
        for verb, when, row in (
            ("create", "INSERT", "NEW"),
            ("update", "UPDATE", "NEW"),
            ("delete", "DELETE", "OLD"),
        )
    ),
    *(
        f"""CREATE TRIGGER events_work_queues_{name} AFTER {when} ON work_queues {cond} BEGIN
        INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, resource, related,
                            payload, derived)
        VALUES ({_RANDOM_ID}, 'persevere.work-queue.' || {event}, {_when(row)}, {_when(row)},
                'persevere.work-queue.' || {row}.name,
                json_object('id', 'persevere.work-queue.' || {row}.name, 'name', {row}.name),
                '[]', json_object('paused', {_bool(row + ".paused")},
                                  'concurrency_limit', {row}.concurrency_limit), 1);
    END"""
        for name, when, cond, event, row in (
            ("created", "INSERT", "", "'created'", "NEW"),
            (
                "updated",
                "UPDATE",
                "WHEN OLD.paused IS NOT NEW.paused "
                "OR OLD.concurrency_limit IS NOT NEW.concurrency_limit "
                "OR OLD.description IS NOT NEW.description",
                "CASE WHEN OLD.paused IS NOT NEW.paused THEN "
                "CASE WHEN NEW.paused THEN 'paused' ELSE 'resumed' END ELSE 'updated' END",
                "NEW",
            ),
            ("deleted", "DELETE", "", "'deleted'", "OLD"),
        )
    ),
    *(
        f"""CREATE TRIGGER events_schedules_{name} AFTER {when} ON schedules {cond} BEGIN
        INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, resource, related,
                            payload, derived)
        SELECT {_RANDOM_ID}, 'persevere.deployment.schedule-' || {event}, {_when(row)},
               {_when(row)},
                'persevere.deployment.' || {row}.deployment_id,
                json_object('id', 'persevere.deployment.' || {row}.deployment_id,
                            'name', d.name),
                json_array(json_object('id', 'persevere.schedule.' || {row}.id,
                                       'role', 'schedule')),
                json_object('schedule', {row}.id, 'kind', {row}.kind,
                            'expression', {row}.expression,
                            'active', {_bool(row + ".active")}), 1
        FROM (SELECT 1) LEFT JOIN deployments d ON d.id = {row}.deployment_id;
    END"""
        for name, when, cond, event, row in (
            ("created", "INSERT", "", "'created'", "NEW"),
            (
                "active",
                "UPDATE OF active",
                "WHEN OLD.active IS NOT NEW.active",
                "CASE WHEN NEW.active THEN 'resumed' ELSE 'paused' END",
                "NEW",
            ),
            ("deleted", "DELETE", "", "'deleted'", "OLD"),
        )
    ),
]


#: Migration n brings a database from version n-1 to version n.
MIGRATIONS: list[Callable[[Any], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)


def _read_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return int(row[0]) if row else 0


def _has_foreign_tables(conn: sqlite3.Connection) -> bool:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'schema_version'"
    ).fetchall()
    return bool(rows)


def ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`, or refuse a newer one."""
    try:
        found = _read_version(conn)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(str(path), f"cannot be read as a database ({exc})") from None
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(str(path), found, SCHEMA_VERSION)
    if found == 0 and _has_foreign_tables(conn):
        raise DatabaseError(
            str(path),
            "is an SQLite database of another application (it has tables but no persevere "
            "schema; the file was not changed); point PERSEVERE_DB at a persevere database "
            "or a new file",
        )
    import sqlite_utils  # deferred: only a new or old database pays for it

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _read_version(conn)  # another process may have migrated meanwhile
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(str(path), found, SCHEMA_VERSION)
        if found == 0 and not db.table("schema_version").exists():
            db.table("schema_version").create({"version": int})
            db.table("schema_version").insert({"version": 0})
        for number in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[number - 1](db)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
