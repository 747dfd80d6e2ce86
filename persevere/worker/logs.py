"""Run logs: structlog loggers tagged with run ids, captured into the journal.

The run ids come from the run context (contextvars) at the moment a line is
emitted, so a logger works in threads started by a task too. Each line goes
to stderr and, inside a run, into the journal's ``logs`` table (as a deferred
write: it rides along with the next commit). persevere configures its own
logger chain and leaves the global structlog configuration to the user.

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
from typing import Any

from .. import clock, settings
from ..context import flow_run_context, task_run_context

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


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
    if flow_ctx is None:
        return event
    task_ctx = task_run_context.get()
    event["run"] = flow_ctx.run.flow_name + "/" + flow_ctx.run.id[-8:]
    if task_ctx is not None:
        event["task"] = f"{task_ctx.task_key}-{task_ctx.dynamic_key}"
    extra = {
        k: v
        for k, v in event.items()
        if k not in ("event", "level", "ts_ms", "run", "task", "logger")
    }
    flow_ctx.journal.log(
        flow_ctx.run.id,
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
    return _base(settings.current().log_level.lower()).bind(logger=name)


_original_print = builtins.print


def _print(*args: Any, **kwargs: Any) -> None:
    _original_print(*args, **kwargs)
    flow_ctx = flow_run_context.get()
    if flow_ctx is None or not flow_ctx.log_prints:
        return
    if kwargs.get("file") not in (None, sys.stdout):
        return
    task_ctx = task_run_context.get()
    message = str(kwargs.get("sep", " ")).join(str(a) for a in args)
    flow_ctx.journal.log(
        flow_ctx.run.id, task_ctx.task_run_id if task_ctx else None, "INFO", "print", message
    )


def capture_prints() -> None:
    """Store what ``print`` writes to stdout inside runs whose flow has ``log_prints``.

    Output still goes to stdout as usual; the journal keeps a copy.
    """
    if builtins.print is not _print:
        builtins.print = _print
