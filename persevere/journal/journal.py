"""The Journal: every operation the engine and the CLI need, named for what it does.

All SQL of persevere lives in this package. Each public write is either
durable (committed before it returns, together with whatever was deferred
before it) or deferred (committed with the next durable write, or by the
flusher within ``flush_seconds``); the docstrings say which.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import clock
from ..exceptions import RunNotFound
from ..settings import Settings
from ..statemachine import Owner, StateType, check_move, path_to_pending
from .cache import Cache
from .connection import configure, connect
from .deployments import Deployments
from .events import TASK_EVENT, TASK_EVENTS, Events, changes_a_flow_run
from .files import ResultFiles
from .hooks import HooksDue
from .limits import Limits
from .pauses import Pauses
from .records import (
    FlowRun,
    LogLine,
    StoredResult,
    TaskRun,
    TaskStart,
    Transition,
    from_row,
)
from .results import Codec, content_id
from .schema import ensure_schema
from .statements import (
    FLOW_COLUMNS,
    INLINE_LIMIT,
    INSERT_RESULT,
    INSERT_RESULT_FILE,
    INSERT_STATE,
    TASK_COLUMNS,
    await_retry,
    copied_tasks,
    end_with_tasks,
    finish_task,
    move,
    new_id,
    rerun_task,
    restart_task,
    start_task,
    task_run_id,
    waiting_task,
)
from .workers import Workers
from .writer import Op, Writer

if TYPE_CHECKING:
    from .automations import Automations
    from .schedules import Schedules


class Journal:
    """The durable record of runs, on one SQLite file.

    Use :func:`open_journal` to get the process's journal for a file: one
    connection (one writer) per file per process.
    """

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        conn = connect(path)
        try:
            ensure_schema(conn, path)  # refuses a foreign or newer file before any write
            configure(conn, path, settings.synchronous)
        except BaseException:
            conn.close()
            raise
        conn.row_factory = sqlite3.Row
        self._conn = conn
        self.writer = Writer(conn, int(settings.lease_seconds * 1000), settings.flush_seconds)
        self.writer.after_commit = TASK_EVENTS[settings.task_run_events]
        self.writer.later_sql = TASK_EVENT
        self.writer.later_first = changes_a_flow_run
        self.codec = Codec(path.with_name(path.name + ".key"))
        self.files = ResultFiles(path.with_name(path.name + ".results"))
        self.cache = Cache(self)
        self.hooks = HooksDue(self)
        self.limits = Limits(self)
        self.deployments = Deployments(self)
        self.workers = Workers(self)
        self.pauses = Pauses(self)
        self.events = Events(self)

    @functools.cached_property
    def schedules(self) -> Schedules:
        """Schedules of deployments and the scheduler's transactions."""
        from .schedules import Schedules  # deferred: `import persevere` need not pay for it

        return Schedules(self)

    @functools.cached_property
    def automations(self) -> Automations:
        """Automations, their evaluation and their firings."""
        from .automations import Automations  # deferred, like schedules

        return Automations(self)

    # -- reading ------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read (under the writer's lock: never half of a batch)."""
        with self.writer.lock:
            return self._conn.execute(sql, params).fetchall()

    def get_flow_run(self, run_id: str) -> FlowRun:
        """The flow run with this exact id."""
        rows = self.query(f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return from_row(FlowRun, rows[0])

    def resolve_flow_run(self, id_or_prefix: str) -> FlowRun:
        """The flow run whose id is, or uniquely starts with, ``id_or_prefix``."""
        if not id_or_prefix or any(c not in "0123456789abcdef" for c in id_or_prefix):
            raise RunNotFound(id_or_prefix)
        rows = self.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE id >= ? AND id < ? LIMIT 2",
            (id_or_prefix, id_or_prefix + "g"),
        )
        if not rows:
            raise RunNotFound(id_or_prefix)
        if len(rows) > 1:
            raise RunNotFound(
                id_or_prefix,
                f"run id prefix {id_or_prefix!r} matches several runs; give more of it",
            )
        return from_row(FlowRun, rows[0])

    def find_flow_run_by_key(self, run_key: str) -> FlowRun | None:
        """The flow run started with this run key, if any."""
        rows = self.query(f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE run_key = ?", (run_key,))
        return from_row(FlowRun, rows[0]) if rows else None

    def child_flow_run(self, parent_task_run_id: str) -> FlowRun | None:
        """The subflow run started by a parent's task run, if it was started."""
        rows = self.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs WHERE parent_task_run_id = ?",
            (parent_task_run_id,),
        )
        return from_row(FlowRun, rows[0]) if rows else None

    def list_flow_runs(
        self, state_type: StateType | None = None, flow_name: str | None = None, limit: int = 50
    ) -> list[FlowRun]:
        """Flow runs, newest first, optionally filtered."""
        where, params = [], []
        if state_type is not None:
            where.append("state_type = ?")
            params.append(state_type.value)
        if flow_name is not None:
            where.append("flow_name = ?")
            params.append(flow_name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs {clause} ORDER BY created_ms DESC, rowid DESC "
            "LIMIT ?",
            [*params, limit],
        )
        return [from_row(FlowRun, r) for r in rows]

    def active_flow_runs(self) -> list[FlowRun]:
        """Flow runs that claim to be executing (Pending or Running, with an owner)."""
        rows = self.query(
            f"SELECT {FLOW_COLUMNS} FROM flow_runs "
            "WHERE state_type IN ('PENDING', 'RUNNING') AND owner_pid IS NOT NULL"
        )
        return [from_row(FlowRun, r) for r in rows]

    def task_runs(self, flow_run_id: str) -> list[TaskRun]:
        """A flow run's task runs, in call order."""
        rows = self.query(  # ids are "<flow run id>.<position>": a range of the key
            f"SELECT {TASK_COLUMNS} FROM task_runs WHERE id > ? AND id < ? ORDER BY id",
            (flow_run_id + ".", flow_run_id + "/"),
        )
        return [from_row(TaskRun, r) for r in rows]

    def history(self, run_id: str) -> list[Transition]:
        """Every journaled transition of a run, oldest first."""
        rows = self.query("SELECT * FROM states WHERE run_id = ? ORDER BY version", (run_id,))
        return [from_row(Transition, r) for r in rows]

    def logs(self, flow_run_id: str, after_id: int = 0) -> list[LogLine]:
        """Log lines of a flow run (and its task runs), oldest first."""
        rows = self.query(
            "SELECT * FROM logs WHERE flow_run_id = ? AND id > ? ORDER BY id",
            (flow_run_id, after_id),
        )
        return [from_row(LogLine, r) for r in rows]

    def load_result(self, result_id: str) -> Any:
        """The value stored under a result id."""
        data, serializer = self.result_bytes(result_id)
        return self.codec.loads(data, serializer)

    def result_bytes(self, result_id: str) -> tuple[bytes, str]:
        """The stored bytes of a result and the serializer that wrote them."""
        rows = self.query("SELECT serializer, data, path FROM results WHERE id = ?", (result_id,))
        if not rows:
            raise RunNotFound(result_id, f"result {result_id} is missing from the journal")
        serializer = str(rows[0]["serializer"])
        if rows[0]["data"] is None:  # a large result, in the result store
            return self.files.get(rows[0]["path"], result_id, serializer), serializer
        return bytes(rows[0]["data"]), serializer

    # -- results ------------------------------------------------------------

    def store(
        self,
        value: Any,
        serializer: str,
        what: str,
        fence: str | None = None,
        inline: bool = True,
    ) -> StoredResult:
        """Serialize a value: kept inline if small (and ``inline``), else in ``results``."""
        data = self.codec.dumps(value, serializer, what)
        if inline and len(data) <= INLINE_LIMIT:
            return StoredResult(serializer, data, None, None)
        result_id = content_id(serializer, data)
        now = clock.now_ms()
        if len(data) > self.settings.result_file_bytes:
            relative = self.files.put(result_id, data)  # before the commit that refers to it
            op = Op(
                INSERT_RESULT_FILE, (result_id, serializer, relative, len(data), now), fence=fence
            )
        else:
            op = Op(INSERT_RESULT, (result_id, serializer, data, len(data), now), fence=fence)
        return StoredResult(serializer, None, result_id, op)

    def load_stored(self, stored: StoredResult) -> Any:
        """The value of a stored result (inline or by reference)."""
        if stored.data is not None:
            return self.codec.loads(bytes(stored.data), stored.serializer)
        return self.load_result(stored.result_id) if stored.result_id else None

    def load_task_result(self, task: TaskRun) -> Any:
        """The value a completed task run returned."""
        if task.result is not None and task.result_serializer:
            return self.codec.loads(bytes(task.result), task.result_serializer)
        if task.result_id:
            return self.load_result(task.result_id)
        return None

    # -- flow runs ----------------------------------------------------------

    def create_flow_run(
        self,
        *,
        flow_name: str,
        entrypoint: str | None,
        parameters: str,
        run_key: str | None = None,
        parent_flow_run_id: str | None = None,
        parent_task_run_id: str | None = None,
        owner: Owner | None = None,
    ) -> FlowRun:
        """Create a flow run in Pending (durable).

        If ``run_key`` is taken already (another process won the race), the
        run that holds it is returned instead.
        """
        run_id, now = new_id(), clock.now_ms()
        check_move(None, StateType.PENDING, "Pending", run_id)
        try:
            self._insert_flow_run(
                run_id,
                now,
                flow_name,
                entrypoint,
                parameters,
                run_key,
                parent_flow_run_id,
                parent_task_run_id,
                owner,
            )
        except sqlite3.IntegrityError:
            existing = self.find_flow_run_by_key(run_key) if run_key else None
            if existing is None:
                raise
            return existing
        return self.get_flow_run(run_id)

    def _insert_flow_run(
        self,
        run_id: str,
        now: int,
        flow_name: str,
        entrypoint: str | None,
        parameters: str,
        run_key: str | None,
        parent_flow_run_id: str | None,
        parent_task_run_id: str | None,
        owner: Owner | None,
        message: str = "",
        also: Sequence[Op] = (),
    ) -> None:
        self.writer.commit(
            [
                Op(
                    "INSERT INTO flow_runs (id, flow_name, entrypoint, parameters, state_type, "
                    "state_name, version, run_key, parent_flow_run_id, parent_task_run_id, "
                    "owner_host, owner_pid, owner_started, lease_expires_ms, created_ms) "
                    "VALUES (?, ?, ?, ?, 'PENDING', 'Pending', 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        flow_name,
                        entrypoint,
                        parameters,
                        run_key,
                        parent_flow_run_id,
                        parent_task_run_id,
                        owner.host if owner else None,
                        owner.pid if owner else None,
                        owner.started if owner else None,
                        now + int(self.settings.lease_seconds * 1000) if owner else None,
                        now,
                    ),
                ),
                Op(INSERT_STATE, (run_id, 1, None, "PENDING", "Pending", now, message, None)),
                *also,
            ]
        )

    def fork_flow_run(self, source: FlowRun, position: int, owner: Owner, message: str) -> FlowRun:
        """A new run of the same flow and parameters, with ``source``'s completed task runs
        before ``position`` copied into it (durable).

        Executing the new run replays the copies and runs the rest: a retry
        from a chosen task that leaves the source run and its history as they are.
        """
        run_id, now = new_id(), clock.now_ms()
        copies = copied_tasks(self.task_runs(source.id), position, source.id, run_id, now)
        self._insert_flow_run(
            run_id,
            now,
            source.flow_name,
            source.entrypoint,
            source.parameters,
            None,
            None,
            None,
            owner,
            message,
            copies,
        )
        return self.get_flow_run(run_id)

    def claim_flow_run(
        self,
        run: FlowRun,
        owner: Owner,
        token: str,
        name: str = "Running",
        max_auto_resumes: int | None = None,
    ) -> FlowRun:
        """Move a Pending run to Running (or Retrying) under this owner and lease (durable, CAS).

        ``max_auto_resumes`` records the flow's option for the workers that
        resume the run if it crashes.
        """
        now = clock.now_ms()
        sets = {
            "max_auto_resumes": max_auto_resumes,
            "lease_token": token,
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_started": owner.started,
            "lease_expires_ms": now + int(self.settings.lease_seconds * 1000),
            "started_ms": now,
            "ended_ms": None,
            "run_count": run.run_count + 1,
        }
        self.writer.commit(
            move(
                "flow_runs",
                run.id,
                run.state_type,
                run.version,
                StateType.RUNNING,
                name,
                "",
                now,
                sets,
            )
        )
        self.writer.hold(run.id, token, now)
        return self.get_flow_run(run.id)

    def finish_flow_run(
        self,
        run: FlowRun,
        target: StateType,
        name: str,
        message: str = "",
        result: StoredResult | None = None,
        extra: dict[str, Any] | None = None,
        also: Sequence[Op] = (),
    ) -> FlowRun:
        """Journal the state this execution of a run ends in, and give up its lease (durable).

        That is a final state (with the run's result), or AwaitingRetry (with
        ``extra`` holding its wake-up time). A flow run's result is always kept
        in ``results`` (store it with ``inline=False``), so that a parent's
        task run can refer to it.
        """
        now = clock.now_ms()
        sets: dict[str, Any] = {"ended_ms": now, "lease_token": None, **(extra or {})}
        ops = []
        if result is not None:
            sets["result_id"] = result.result_id
            if result.op is not None:
                ops.append(result.op)
        ops += move(
            "flow_runs",
            run.id,
            run.state_type,
            run.version,
            target,
            name,
            message,
            now,
            sets,
            fence=run.id,
        )
        self.writer.commit([*ops, *also])  # a lost compare-and-set keeps the lease
        self.writer.release(run.id)
        return self.get_flow_run(run.id)

    def reschedule_flow_run(self, run: FlowRun, message: str) -> FlowRun:
        """Bring an unfinished run back to Pending to execute it again (durable, CAS).

        A run waiting for its retry keeps its count of retries used; any other
        starts a new count (a resume is a new chance).
        """
        now, ops = clock.now_ms(), []
        state, version = run.state_type, run.version
        retrying = run.state_name == "AwaitingRetry"
        for target, name in path_to_pending(state):
            sets: dict[str, Any] = {}
            if target is StateType.PENDING:
                sets = {"worker_name": None}
                if not retrying:
                    sets.update(retries_used=0, auto_resumes=0)
            ops += move("flow_runs", run.id, state, version, target, name, message, now, sets)
            state, version = target, version + 1
        self.writer.commit(ops)
        return self.get_flow_run(run.id)

    def mark_crashed(self, run: FlowRun, message: str) -> FlowRun:
        """Declare a run's owner dead: the run and its in-flight task runs become Crashed."""
        in_flight = (StateType.PENDING, StateType.RUNNING)
        ops = end_with_tasks(
            run, run.state_type, run.version, StateType.CRASHED, "Crashed", message,
            clock.now_ms(), self.task_runs(run.id), in_flight, "on_crashed",
        )  # fmt: skip
        ops.append(HooksDue.due_op(run.id, run.version + 1, "on_crashed"))
        self.writer.commit(ops)
        return self.get_flow_run(run.id)

    # -- task runs (the hot path) --------------------------------------------

    def start_task_run(
        self,
        flow_run_id: str,
        position: int,
        task_key: str,
        dynamic_key: int,
        kind: str,
        upstream: str | None = None,
    ) -> TaskStart:
        """Journal a new task run Pending -> Running (deferred)."""
        now = clock.now_ms()
        start = start_task(flow_run_id, position, task_key, dynamic_key, kind, now, upstream)
        self.writer.defer(*start.ops)
        return start

    def await_slot(
        self,
        flow_run_id: str,
        position: int,
        task_key: str,
        dynamic_key: int,
        upstream: str | None,
        message: str,
    ) -> TaskRun:
        """Journal a new task run as waiting for concurrency slots (durable); returns it."""
        now = clock.now_ms()
        ops = waiting_task(flow_run_id, position, task_key, dynamic_key, upstream, message, now)
        self.writer.commit(ops)
        task_id = task_run_id(flow_run_id, position)
        rows = self.query(f"SELECT {TASK_COLUMNS} FROM task_runs WHERE id = ?", (task_id,))
        return from_row(TaskRun, rows[0])

    def restart_task_run(self, task: TaskRun, message: str) -> TaskStart:
        """Run a recorded, unfinished task run again: back to Running (deferred)."""
        ops, start = restart_task(task, message, clock.now_ms())
        self.writer.defer(*ops)
        return start

    def await_retry(self, start: TaskStart, wake_ms: int, message: str) -> TaskStart:
        """A failed attempt will be retried at ``wake_ms`` (durable: survives a crash)."""
        ops, waiting = await_retry(start, wake_ms, message, clock.now_ms())
        self.writer.commit(ops)
        return waiting

    def retry_task_run(self, waiting: TaskStart) -> TaskStart:
        """The next attempt of a task run that waited for its retry (deferred)."""
        moves = path_to_pending(StateType.SCHEDULED)
        ops, start = rerun_task(waiting, StateType.SCHEDULED, moves, "", clock.now_ms(), "Retrying")
        self.writer.defer(*ops)
        return start

    def finish_task_run(
        self,
        start: TaskStart,
        target: StateType,
        name: str,
        message: str = "",
        result: StoredResult | None = None,
        also: Sequence[Op] = (),
        then: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        """Journal a task run's final state and result (durable), with ``also`` in the commit.

        A fast task, whose start is still waiting to be committed, is written
        as one row (see :func:`statements.finish_task`). With ``then``, return
        at once; ``then(error)`` is called after the commit
        (:meth:`Writer.commit_later`).
        """
        collapse = bool(start.ops) and self.writer.withdraw(start.ops)
        ops = [*finish_task(start, target, name, message, result, clock.now_ms(), collapse), *also]
        if then is None:
            self.writer.commit(ops)
        else:
            self.writer.commit_later(ops, then)

    # -- logs ---------------------------------------------------------------

    def log(
        self,
        flow_run_id: str | None,
        task_run_id: str | None,
        level: str,
        logger: str,
        message: str,
        extra: str | None = None,
        ts_ms: int | None = None,
    ) -> None:
        """Capture a log line (deferred)."""
        self.writer.defer(
            Op(
                "INSERT INTO logs (flow_run_id, task_run_id, level, ts_ms, logger, message, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (flow_run_id, task_run_id, level, ts_ms or clock.now_ms(), logger, message, extra),
            )
        )

    def flush(self, ops: Iterable[Op] = ()) -> None:
        """Commit everything deferred, and ``ops`` with it (durable)."""
        self.writer.commit(ops)

    def integrity_check(self) -> str:
        """SQLite's own check of the file: ``"ok"`` when sound."""
        return str(self.query("PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        """Commit what is pending and close the connection."""
        self.writer.close()
        with self.writer.lock:
            self._conn.close()
