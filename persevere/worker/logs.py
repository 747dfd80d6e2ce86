"""Run logs: structlog loggers tagged with run ids, captured into the journal.

The run ids come from the run context (contextvars) at the moment a line is
emitted, so a logger works in threads started by a task too. Each line goes
to stderr and, inside a run, into the journal's ``logs`` table (as a deferred
write: it rides along with the next commit). persevere configures its own
logger chain and leaves the global structlog configuration to the user.

A task body run in another process (process and Dask runners) has no
journal there: its lines are collected in a :class:`BodyLines` and sent back
with the body's outcome, and the flow's process writes them.

structlog costs ~55 ms to import, a third of the import budget, so it is
imported on the first log line, not with ``import persevere``.
"""

from __future__ import annotations

import builtins
import datetime as dt
import functools
import json
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

from .. import clock, settings
from ..context import flow_run_context, task_run_context

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

#: One captured line: the arguments of ``Journal.log``.
CapturedLine = tuple[str, "str | None", str, str, str, "str | None", "int | None"]


class BodyLines:
    """Where log lines go inside a task body run in another process.

    Holds the lines (as ``Journal.log`` arguments) until the body's outcome
    is sent back; the flow's process then writes them with :func:`write_lines`.
    """

    def __init__(self, flow_run_id: str, run_label: str, log_prints: bool, log_level: str) -> None:
        self.flow_run_id = flow_run_id
        self.run_label = run_label
        self.log_prints = log_prints
        self.log_level = log_level
        self.lines: list[CapturedLine] = []

    def log(
        self,
        flow_run_id: str,
        task_run_id: str | None,
        level: str,
        logger: str,
        message: str,
        extra: str | None = None,
        ts_ms: int | None = None,
    ) -> None:
        """Keep a line (the signature of ``Journal.log``)."""
        self.lines.append(
            (flow_run_id, task_run_id, level, logger, message, extra, ts_ms or clock.now_ms())
        )


#: Set while a task body runs in a process that has no flow run of its own.
body_lines: ContextVar[BodyLines | None] = ContextVar("persevere_body_lines", default=None)


def run_label(run: Any) -> str:
    """How a log line names its flow run: ``flow/last-8-of-id``."""
    return f"{run.flow_name}/{run.id[-8:]}"


def write_lines(lines: list[CapturedLine]) -> None:
    """Journal lines a task body logged in another process (in the flow's process)."""
    flow_ctx = flow_run_context.get()
    if flow_ctx is None:
        return
    for line in lines:
        flow_ctx.journal.log(*line)


class _Stderr:
    """structlog's output end: writes each rendered line to the current stderr."""

    def _write(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    msg = debug = info = warning = warn = error = critical = exception = fatal = log = _write


def _capture(
    logger: Any, method_name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Tag the line with the run it belongs to and store it in that run's journal."""
    level = event.pop("level", method_name).upper()
    event["level"] = "WARNING" if level == "WARN" else level
    event["ts_ms"] = clock.now_ms()
    flow_ctx = flow_run_context.get()
    if flow_ctx is not None:
        sink: Any = flow_ctx.journal
        flow_run_id, event["run"] = flow_ctx.run.id, run_label(flow_ctx.run)
    else:
        sink = body_lines.get()
        if sink is None:
            return event
        flow_run_id, event["run"] = sink.flow_run_id, sink.run_label
    task_ctx = task_run_context.get()
    if task_ctx is not None:
        event["task"] = f"{task_ctx.task_key}-{task_ctx.dynamic_key}"
    extra = {
        k: v
        for k, v in event.items()
        if k not in ("event", "level", "ts_ms", "run", "task", "logger")
    }
    sink.log(
        flow_run_id,
        task_ctx.task_run_id if task_ctx else None,
        event["level"],
        str(event.get("logger", "")),
        str(event.get("event", "")),
        json.dumps(extra, default=str) if extra else None,
        event["ts_ms"],
    )
    return event


def _render(logger: Any, method_name: str, event: MutableMapping[str, Any]) -> str:
    """One console line: ``time | LEVEL | flow/run task | message key=value``."""
    stamp = dt.datetime.fromtimestamp(event.pop("ts_ms") / 1000).strftime("%H:%M:%S.%f")[:-3]
    level = event.pop("level")
    where = " ".join(str(event.pop(k)) for k in ("run", "task") if k in event)
    event.pop("logger", None)
    message = str(event.pop("event", ""))
    tail = "".join(f" {k}={v!r}" for k, v in event.items())
    return f"{stamp} | {level:<7} | {where or '-'} | {message}{tail}"


@functools.cache
def _base(level: str) -> Any:
    import structlog  # deferred: see the module docstring

    return structlog.wrap_logger(
        _Stderr(),
        processors=[_capture, _render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        cache_logger_on_first_use=True,
    )


def get_run_logger(name: str = "persevere.run") -> Any:
    """A structlog logger for the run executing now.

    Lines go to stderr and are stored with the run (``persevere runs logs``).
    Use it like any structlog logger: ``logger.info("loaded", rows=42)``.
    """
    lines = body_lines.get()
    level = lines.log_level if lines is not None else settings.current().log_level
    return _base(level.lower()).bind(logger=name)


_original_print = builtins.print


def _print(*args: Any, **kwargs: Any) -> None:
    _original_print(*args, **kwargs)
    flow_ctx = flow_run_context.get()
    if flow_ctx is not None:
        sink: Any = flow_ctx.journal
        flow_run_id, log_prints = flow_ctx.run.id, flow_ctx.log_prints
    else:
        sink = body_lines.get()
        if sink is None:
            return
        flow_run_id, log_prints = sink.flow_run_id, sink.log_prints
    if not log_prints or kwargs.get("file") not in (None, sys.stdout):
        return
    task_ctx = task_run_context.get()
    message = str(kwargs.get("sep", " ")).join(str(a) for a in args)
    sink.log(flow_run_id, task_ctx.task_run_id if task_ctx else None, "INFO", "print", message)


def capture_prints() -> None:
    """Store what ``print`` writes to stdout inside runs whose flow has ``log_prints``.

    Output still goes to stdout as usual; the journal keeps a copy.
    """
    if builtins.print is not _print:
        builtins.print = _print
