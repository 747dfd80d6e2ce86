"""Formatting runs, histories, task runs and logs for people and for ``--json``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from ..exceptions import PersevereError
from ..journal import FlowRun, Journal, TaskRun, Transition, from_json
from ..statemachine import StateType


def iso(ms: int | None) -> str | None:
    """UTC ISO 8601 for JSON output."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


def local(ms: int | None) -> str:
    """Local time for tables."""
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: int | None, end: int | None) -> float | None:
    """Seconds between two instants, if both are known."""
    return None if start is None or end is None else (end - start) / 1000


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (dt.timedelta,)):
        return value.total_seconds()
    return str(value)  # UUID, Decimal, Path, and anything else: its text


def jsonable(value: Any) -> Any:
    """A value as plain JSON: dates as ISO text, sets as lists, the rest as text."""
    return json.loads(json.dumps(value, default=_plain))


def stored(text: str) -> Any:
    """Stored typed JSON for display; as raw JSON when its classes are not imported here."""
    try:
        return jsonable(from_json(text))
    except (PersevereError, ValueError):
        return json.loads(text)


def parameters_of(run: FlowRun) -> Any:
    """A run's parameters for display."""
    try:
        return jsonable(from_json(run.parameters))
    except ValueError:
        return run.parameters


def run_summary(run: FlowRun) -> dict[str, Any]:
    """The fields of ``runs ls --json``."""
    return {
        "id": run.id,
        "flow_name": run.flow_name,
        "state_type": run.state_type.value,
        "state_name": run.state_name,
        "state_message": run.state_message,
        "run_key": run.run_key,
        "created": iso(run.created_ms),
        "started": iso(run.started_ms),
        "ended": iso(run.ended_ms),
        "parameters": parameters_of(run),
        "parent_flow_run_id": run.parent_flow_run_id,
        "entrypoint": run.entrypoint,
        **_pause_of(run),
    }


def _pause_of(run: FlowRun) -> dict[str, Any]:
    """How a paused run goes on: the input it waits for, its deadline, its wake-up."""
    if run.state_type is not StateType.PAUSED:
        return {}
    return {
        "pause": {
            "input_schema": json.loads(run.pause_input) if run.pause_input else None,
            "times_out": iso(run.pause_deadline_ms),
            "on_timeout": run.pause_on_timeout,
            "wakes": iso(run.scheduled_ms) if run.state_name == "Suspended" else None,
        }
    }


def task_summary(task: TaskRun) -> dict[str, Any]:
    """One task run for ``runs show``."""
    return {
        "id": task.id,
        "position": task.position,
        "task_key": task.task_key,
        "dynamic_key": task.dynamic_key,
        "kind": task.kind,
        "state_type": task.state_type.value,
        "state_name": task.state_name,
        "state_message": task.state_message,
        "attempts": task.attempt,
        "duration_seconds": duration(task.started_ms, task.ended_ms),
        "upstream": task.upstream_ids,
    }


def upstream_label(flow_run_id: str, upstream: list[str]) -> str:
    """Upstream task runs as ``#3,#4`` (positions in this run) or ids from elsewhere."""
    prefix = flow_run_id + "."
    return ",".join(f"#{int(i[len(prefix) :])}" if i.startswith(prefix) else i for i in upstream)


def task_graph_dot(flow_run_id: str, tasks: list[dict[str, Any]]) -> str:
    """The task runs of a flow run and the edges from their inputs, in Graphviz DOT."""
    lines = [f'digraph "{flow_run_id}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for t in tasks:
        label = f"#{t['position']} {t['task_key']}-{t['dynamic_key']}\\n{t['state_name']}"
        lines.append(f'  "{t["id"]}" [label="{_dot_text(label)}"];')
    for t in tasks:
        lines.extend(f'  "{u}" -> "{t["id"]}";' for u in t["upstream"])
    lines.append("}")
    return "\n".join(lines)


def _dot_text(text: str) -> str:
    return text.replace('"', '\\"')


def transition_summary(move: Transition) -> dict[str, Any]:
    """One history row for ``runs show``."""
    return {
        "version": move.version,
        "from_type": move.from_type.value if move.from_type else None,
        "type": move.to_type.value,
        "name": move.name,
        "timestamp": iso(move.ts_ms),
        "message": move.message,
    }


def result_of(journal: Journal, run: FlowRun) -> tuple[bool, Any]:
    """(True, value) when the run completed with a JSON result."""
    if run.state_type is not StateType.COMPLETED or not run.result_id:
        return False, None
    data, serializer = journal.result_bytes(run.result_id)
    if serializer != "json":
        return False, None
    return True, jsonable(from_json(data))


def local_of(iso_text: str) -> str:
    """An ISO timestamp from the JSON form, as local time for the table."""
    import datetime as dt

    return local(int(dt.datetime.fromisoformat(iso_text).timestamp() * 1000))


def echo_table(rows: list[list[str]], headers: list[str]) -> None:
    """Print rows as aligned columns."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
