"""Rows of the journal as typed, immutable records."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..statemachine import Owner, StateType
from .writer import Op, Writes

T = TypeVar("T")

#: Automatic resumes in a row of a crashed run, unless its flow says otherwise.
DEFAULT_AUTO_RESUMES = 3


def from_row(cls: type[T], row: sqlite3.Row) -> T:
    """Build a record from a row that has (at least) the record's columns."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = row[f.name]
        if f.name in ("state_type", "from_type", "to_type") and value is not None:
            value = StateType(value)
        values[f.name] = value
    return cls(**values)


@dataclass(frozen=True)
class FlowRun:
    """A flow run as the journal holds it."""

    id: str
    flow_name: str
    entrypoint: str | None
    parameters: str
    state_type: StateType
    state_name: str
    state_message: str
    version: int
    run_key: str | None
    parent_flow_run_id: str | None
    parent_task_run_id: str | None
    lease_token: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_started: str | None
    lease_expires_ms: int | None
    scheduled_ms: int | None
    created_ms: int
    started_ms: int | None
    ended_ms: int | None
    result_id: str | None
    run_count: int
    retries_used: int
    deployment_id: str | None = None
    work_queue: str | None = None
    worker_name: str | None = None
    auto_resumes: int = 0
    max_auto_resumes: int | None = None
    tags: str | None = None
    schedule_id: str | None = None
    schedule_ms: int | None = None
    pause_deadline_ms: int | None = None
    pause_on_timeout: str | None = None
    pause_input: str | None = None

    @property
    def auto_resumes_allowed(self) -> int:
        """How many automatic resumes in a row its flow allows (``max_auto_resumes``)."""
        return DEFAULT_AUTO_RESUMES if self.max_auto_resumes is None else self.max_auto_resumes

    @property
    def owner(self) -> Owner | None:
        """The process that holds (or last held) this run."""
        if self.owner_host is None or self.owner_pid is None:
            return None
        return Owner(self.owner_host, self.owner_pid, self.owner_started or "")


@dataclass(frozen=True)
class TaskRun:
    """A task run (or the call of a subflow) inside a flow run."""

    id: str
    flow_run_id: str
    position: int
    task_key: str
    dynamic_key: int
    kind: str
    state_type: StateType
    state_name: str
    state_message: str
    version: int
    attempt: int
    next_attempt_ms: int | None
    retries_used: int
    result_serializer: str | None
    result: bytes | None
    result_id: str | None
    created_ms: int
    started_ms: int | None
    ended_ms: int | None
    upstream: str | None = None

    @property
    def upstream_ids(self) -> list[str]:
        """The task runs this one's inputs came from (futures, States, ``wait_for``)."""
        return self.upstream.split() if self.upstream else []


@dataclass(slots=True)
class TaskStart:
    """A task run just started: its id, version, and the deferred writes that record it.

    Never changed once made (:func:`dataclasses.replace` makes the next one),
    but not frozen: one is built per task run, and frozen takes 5 times as long.
    """

    id: str
    flow_run_id: str
    position: int
    task_key: str
    dynamic_key: int
    kind: str
    created_ms: int
    version: int
    ops: tuple[Op | Writes, ...]
    attempt: int = 1
    retries_used: int = 0
    upstream: str | None = None


@dataclass(slots=True)
class StoredResult:
    """A serialized value: inline bytes, or a reference into ``results`` with its write.

    Not frozen, as :class:`TaskStart`: one per task run.
    """

    serializer: str
    data: bytes | None
    result_id: str | None
    op: Op | None


@dataclass(frozen=True)
class CacheEntry:
    """A cached result of a task, under its cache key."""

    key: str
    task_key: str
    task_run_id: str | None
    result_serializer: str | None
    result: bytes | None
    result_id: str | None
    created_ms: int
    expires_ms: int | None

    @property
    def stored(self) -> StoredResult:
        """The cached result, as a task run refers to it."""
        return StoredResult(self.result_serializer or "json", self.result, self.result_id, None)


@dataclass(frozen=True)
class Transition:
    """One journaled move of a run."""

    run_id: str
    version: int
    from_type: StateType | None
    to_type: StateType
    name: str
    ts_ms: int
    message: str
    details: str | None


@dataclass(frozen=True)
class LogLine:
    """One captured log line."""

    id: int
    flow_run_id: str | None
    task_run_id: str | None
    level: str
    ts_ms: int
    logger: str | None
    message: str
    extra: str | None
