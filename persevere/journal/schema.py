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


#: Migration n brings a database from version n-1 to version n.
MIGRATIONS: list[Callable[[Any], None]] = [_v1, _v2, _v3, _v4]
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
