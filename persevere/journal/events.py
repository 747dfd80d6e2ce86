"""Events: what happened, in the order it was journaled.

An event has a dotted name (``s3.file.arrived``), a resource (an ``id`` and
labels), related resources, a JSON payload, the time it occurred, and an id.
Emitted events with an id already journaled are ignored (emit is idempotent).

persevere's own events come from three places:

- a flow run's state change: an SQLite trigger on ``states`` writes the event
  in the transaction of the change, whatever code made it;
- deployments, schedules and work queues: SQLite triggers too (journal/schema.py);
- a task run's state change: the writer hands each committed batch to
  :func:`task_events`, which turns its task-run history rows into event rows
  that the flusher commits within ``flush_seconds``.

Design note. A task run's events are not written in its own commit: one more
row there (and one more B-tree page per commit) costs about a fifth of a
sequential task's whole overhead, while a batch of them written by the
flusher costs about a microsecond each. The price: a process killed in those
few milliseconds loses those task-run events (the states themselves are in
the journal). Run events are stored lean (name, resource id, time) and
filled in from the run when read, so the hot path builds no JSON; the labels
then reflect the run as it is when read (its deployment, tags), which change
rarely if ever.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import clock
from ..exceptions import PersevereError
from .statements import INSERT_STATE, INSERT_THREE_STATES
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

FLOW_RUN = "persevere.flow-run."
TASK_RUN = "persevere.task-run."
_COLUMNS = "seq, id, event, occurred_ms, received_ms, resource_id, resource, related, payload"
TASK_EVENT = (
    "INSERT INTO events (id, event, occurred_ms, received_ms, resource_id, derived) "
    "VALUES (?, ?, ?, ?, ?, 1)"
)
_EMIT = (
    "INSERT OR IGNORE INTO events (id, event, occurred_ms, received_ms, resource_id, resource, "
    "related, payload, derived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
)


@dataclass(frozen=True)
class Event:
    """An event as the journal holds it (the resource's labels include its ``id``)."""

    seq: int
    id: str
    event: str
    occurred_ms: int
    received_ms: int
    resource: dict[str, str]
    related: tuple[dict[str, str], ...]
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (``occurred`` in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "event": self.event,
            "occurred": iso(self.occurred_ms),
            "resource": self.resource,
            "related": list(self.related),
            "payload": self.payload,
            "seq": self.seq,
        }


def iso(ms: int) -> str:
    """An instant in ISO 8601 UTC with milliseconds."""
    import datetime as dt

    moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_events(batch: Sequence[Op], now: int, rows: list[Any]) -> None:
    """Append the event rows (:data:`TASK_EVENT`) of the task-run history rows in a
    committed batch to ``rows`` (cheap: no JSON)."""
    for op in batch:
        sql = op.sql
        if sql is INSERT_STATE:
            p = op.params
            if "." in p[0]:
                rows.append((f"{p[0]}/{p[1]}", TASK_RUN + p[4], p[5], now, TASK_RUN + p[0]))
        elif sql is INSERT_THREE_STATES:
            p = op.params
            task, created, resource = p[0], p[1], TASK_RUN + p[0]
            rows.append((task + "/1", TASK_RUN + "Pending", created, now, resource))
            rows.append((task + "/2", TASK_RUN + "Running", created, now, resource))
            rows.append((task + "/3", TASK_RUN + p[6], p[7], now, resource))


def final_task_events(batch: Sequence[Op], now: int, rows: list[Any]) -> None:
    """Like :func:`task_events`, for the states that end a task run's attempt only
    (Completed, Failed, Crashed, Cancelled, AwaitingRetry, ...: not Pending, Running)."""
    for op in batch:
        sql = op.sql
        if sql is INSERT_STATE:
            p = op.params
            if "." in p[0] and p[3] not in _UNDERWAY:
                rows.append((f"{p[0]}/{p[1]}", TASK_RUN + p[4], p[5], now, TASK_RUN + p[0]))
        elif sql is INSERT_THREE_STATES:
            p = op.params
            rows.append((p[0] + "/3", TASK_RUN + p[6], p[7], now, TASK_RUN + p[0]))


def changes_a_flow_run(batch: Sequence[Op]) -> bool:
    """True if a batch journals a flow run's state (whose event must come after
    the events of its task runs queued before it)."""
    return any(op.sql is INSERT_STATE and "." not in op.params[0] for op in batch)


#: What ``PERSEVERE_TASK_RUN_EVENTS`` picks.
TASK_EVENTS = {"all": task_events, "final": final_task_events, "none": None}
_UNDERWAY = frozenset({"PENDING", "RUNNING"})


def check_event(
    event: str,
    resource: Mapping[str, Any],
    payload: Any,
    related: Sequence[Mapping[str, Any]] | None,
) -> tuple[str, str, str, str]:
    """Validate an event's parts; return the resource id and the JSON of resource,
    related and payload. Raises ValueError (one line) on bad input."""
    name = event.strip() if isinstance(event, str) else ""
    if not name or any(c.isspace() for c in name) or "*" in name:
        raise ValueError(
            f"event name {event!r} must be a dotted name without spaces or '*', "
            "e.g. s3.file.arrived"
        )
    labels = _labels(resource, "resource")
    links = [_labels(r, "related resource") for r in related or ()]
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValueError('the payload must be a JSON object, e.g. {"path": "s3://b/k"}')
    try:
        payload_json = json.dumps(payload, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the payload cannot be stored as JSON ({exc})") from None
    return labels["id"], json.dumps(labels), json.dumps(links), payload_json


def _labels(resource: Mapping[str, Any], what: str) -> dict[str, str]:
    if not isinstance(resource, Mapping):
        raise ValueError(f"a {what} must be a mapping of labels with an 'id', e.g. id=bucket/sales")
    labels = {str(k): str(v) for k, v in resource.items() if v is not None}
    if not labels.get("id", "").strip():
        raise ValueError(f"a {what} needs an 'id' label, e.g. id=bucket/sales")
    return labels


class Events:
    """The journal's events: emit, read, follow, prune."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def emit(
        self,
        event: str,
        resource: Mapping[str, Any],
        payload: Any = None,
        related: Sequence[Mapping[str, Any]] | None = None,
        id: str | None = None,
        occurred_ms: int | None = None,
    ) -> tuple[Event, bool]:
        """Journal an event (durable); returns it and whether it is new.

        An event whose ``id`` is journaled already is not written again: the
        one journaled is returned, with False.
        """
        resource_id, labels, links, data = check_event(event, resource, payload, related)
        event_id = id if id is not None else uuid.uuid4().hex
        if not isinstance(event_id, str) or not event_id.strip():
            raise ValueError("an event id must be a non-empty string")
        now = clock.now_ms()
        occurred = now if occurred_ms is None else int(occurred_ms)
        values = (event_id, event.strip(), occurred, now, resource_id, labels, links, data)

        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute(_EMIT, values).rowcount == 1

        new = self._journal.writer.transaction(work)
        return self.by_id(event_id), new

    def by_id(self, event_id: str) -> Event:
        """The journaled (emitted) event with this id."""
        rows = self._journal.query(
            f"SELECT {_COLUMNS} FROM events WHERE id = ? AND derived = 0", (event_id,)
        )
        if not rows:
            raise PersevereError(f"no event with id {event_id!r}")
        return self.fill(rows)[0]

    def last_seq(self) -> int:
        """The seq of the newest event (0 if none)."""
        return int(self._journal.query("SELECT coalesce(max(seq), 0) FROM events")[0][0])

    def after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Events after ``seq``, oldest first (what an evaluator or ``tail`` reads next)."""
        rows = self._journal.query(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return self.fill(rows)

    def newest(
        self,
        limit: int = 50,
        since_ms: int | None = None,
        before_seq: int | None = None,
        resource_id: str | None = None,
        names: Sequence[str] = (),
    ) -> list[Event]:
        """The newest events (newest first), by time, resource id and name patterns (``*``)."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if since_ms is not None:
            where.append("occurred_ms >= ?")
            params.append(since_ms)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        if resource_id is not None:
            where.append("resource_id GLOB ?")
            params.append(_glob(resource_id))
        if names:
            where.append("(" + " OR ".join("event GLOB ?" for _ in names) + ")")
            params.extend(_glob(n) for n in names)
        rows = self._journal.query(
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return self.fill(rows)

    def prune(self, before_ms: int, batch: int = 10_000) -> int:
        """Delete events received before ``before_ms`` (oldest first, at most
        ``batch``), never the newest one (its seq must never be handed out again)."""

        def work(conn: sqlite3.Connection) -> int:
            # Among the oldest ``batch`` (by seq): received times of different
            # writers' clocks need not rise with seq, so each row is judged.
            return conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?) "
                "AND received_ms < ? AND seq < (SELECT max(seq) FROM events)",
                (batch, before_ms),
            ).rowcount

        return self._journal.writer.transaction(work)

    # -- filling in run events ----------------------------------------------------

    def fill(self, rows: Iterable[sqlite3.Row]) -> list[Event]:
        """Events from rows; run events get their labels, related resources and payload."""
        runs: dict[str, tuple[dict[str, str], list[dict[str, str]]]] = {}
        out = []
        for row in rows:
            if row["resource"] is not None:
                out.append(
                    Event(
                        row["seq"], row["id"], row["event"], row["occurred_ms"],
                        row["received_ms"], json.loads(row["resource"]),
                        tuple(json.loads(row["related"] or "[]")),
                        json.loads(row["payload"] or "{}"),
                    )
                )  # fmt: skip
            else:
                out.append(self._run_event(row, runs))
        return out

    def _run_event(
        self, row: sqlite3.Row, runs: dict[str, tuple[dict[str, str], list[dict[str, str]]]]
    ) -> Event:
        resource_id: str = row["resource_id"]
        is_task = resource_id.startswith(TASK_RUN)
        run_id = resource_id[len(TASK_RUN if is_task else FLOW_RUN) :]
        version = int(row["id"].rsplit("/", 1)[1])
        flow_run_id = run_id.rsplit(".", 1)[0] if is_task else run_id
        if flow_run_id not in runs:
            runs[flow_run_id] = self._flow_run_labels(flow_run_id)
        flow_labels, flow_related = runs[flow_run_id]
        state = self._journal.query(
            "SELECT from_type, to_type, name, message FROM states WHERE run_id = ? AND version = ?",
            (run_id, version),
        )
        to_type = state[0]["to_type"] if state else None
        payload: dict[str, Any] = {
            "state": {
                "type": to_type,
                "name": state[0]["name"] if state else row["event"].rsplit(".", 1)[1],
                "message": state[0]["message"] if state else "",
            },
            "previous": {"type": state[0]["from_type"]}
            if state and state[0]["from_type"]
            else None,
            "version": version,
            "flow_run_id": flow_run_id,
        }
        resource = {"id": resource_id, "state": to_type or ""}
        if is_task:
            task = self._journal.query(
                "SELECT task_key, kind FROM task_runs WHERE id = ?", (run_id,)
            )
            resource.update(
                task=task[0]["task_key"] if task else "", kind=task[0]["kind"] if task else ""
            )
            resource["flow"] = flow_labels.get("flow", "")
            payload["task_run_id"] = run_id
            related = [{"id": FLOW_RUN + flow_run_id, "role": "flow-run"}, *flow_related]
        else:
            resource.update(flow_labels)
            related = list(flow_related)
        return Event(
            row["seq"], row["id"], row["event"], row["occurred_ms"], row["received_ms"],
            resource, tuple(related), payload,
        )  # fmt: skip

    def _flow_run_labels(self, run_id: str) -> tuple[dict[str, str], list[dict[str, str]]]:
        rows = self._journal.query(
            "SELECT r.flow_name, r.deployment_id, r.work_queue, r.tags, d.name AS deployment "
            "FROM flow_runs r LEFT JOIN deployments d ON d.id = r.deployment_id WHERE r.id = ?",
            (run_id,),
        )
        if not rows:
            return {}, []
        r = rows[0]
        labels = {"flow": r["flow_name"]}
        related = [
            {"id": f"persevere.flow.{r['flow_name']}", "role": "flow", "name": r["flow_name"]}
        ]
        if r["deployment_id"]:
            labels["deployment"] = r["deployment"] or ""
            related.append({"id": f"persevere.deployment.{r['deployment_id']}",
                            "role": "deployment", "name": r["deployment"] or ""})  # fmt: skip
        if r["work_queue"]:
            labels["work-queue"] = r["work_queue"]
            related.append({"id": f"persevere.work-queue.{r['work_queue']}",
                            "role": "work-queue", "name": r["work_queue"]})  # fmt: skip
        for tag in json.loads(r["tags"] or "[]"):
            related.append({"id": f"persevere.tag.{tag}", "role": "tag", "name": str(tag)})
        return labels, related


def _glob(pattern: str) -> str:
    """A ``*`` pattern as an SQLite GLOB (its other wildcards taken literally)."""
    out = []
    for c in pattern:
        out.append(f"[{c}]" if c in "?[]" else c)
    return "".join(out)
