"""Task bodies run in another process: what is sent there, and what comes back.

The process and Dask runners run only a task's *body* elsewhere; the engine
(replay, journal writes, retries, hooks) stays in the flow's process, which
alone holds the journal. A body travels as bytes both ways, so both runners
share this one trampoline:

- :func:`pack` (flow's process): the function, its arguments, the task run's
  context and how to log, pickled with cloudpickle. The function's module is
  pickled by value when a worker could not import it by name: ``__main__``,
  files loaded by ``persevere run path/file.py:func``, modules not found on
  ``sys.path``.
- :func:`run_packed` (worker): sets the task run context (so
  ``idempotency_key()`` and ``get_run_context()`` work), collects log lines
  and prints, runs the body with its timeout, and pickles the outcome: the
  value or the exception (with its traceback as text), and the lines.
- :func:`unpack` (flow's process): journals the lines, then returns the value
  or raises the exception; one that could not be pickled becomes a
  :class:`~persevere.exceptions.RemoteTaskError` naming its type and message.

Rejected: letting multiprocessing or Dask pickle the call and the outcome
(each reports unpicklable values and exceptions its own way, and a failed
body would lose its log lines), and running the whole engine remotely (the
journal must stay with the flow's process).
"""

from __future__ import annotations

import importlib.machinery
import pickle
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from .. import settings
from ..context import TaskRunContext, flow_run_context, task_run_context
from ..exceptions import RemoteTaskError, RunTimeout, SerializationError
from . import entrypoints
from .logs import BodyLines, CapturedLine, body_lines, capture_prints, run_label, write_lines
from .timeouts import call_with_timeout

_PROTOCOL = pickle.HIGHEST_PROTOCOL


@dataclass(frozen=True)
class BodyCall:
    """One task body to run in a worker, and what it needs there."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_name: str
    context: TaskRunContext | None
    flow_run_id: str
    run_label: str
    log_prints: bool
    log_level: str
    timeout_seconds: float | None
    timeout_mode: str


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, kept as text (set as its cause)."""

    def __str__(self) -> str:
        return "\n\nin the worker process:\n" + str(self.args[0]).rstrip()


_by_value: dict[str, bool] = {}
_by_value_lock = threading.Lock()


def ships_by_value(module_name: str) -> bool:
    """True if a worker cannot import this module by name, so its code goes by value."""
    known = _by_value.get(module_name)
    if known is not None:
        return known
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module_name in entrypoints.loaded_from_files:
        answer = True
    elif module is None or getattr(module, "__spec__", None) is None:
        answer = module is not None  # made at run time: no file to import it from
    else:
        top = module_name.partition(".")[0]
        found = importlib.machinery.PathFinder.find_spec(top, sys.path)
        loaded = getattr(sys.modules.get(top), "__spec__", None)
        answer = found is None or loaded is None or found.origin != loaded.origin
    _by_value[module_name] = answer
    return answer


def pack(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The bytes a worker needs to run this task call's body (in the flow's process)."""
    import cloudpickle  # deferred: only remote runners need it

    flow_ctx = flow_run_context.get()
    call = BodyCall(
        task.fn,
        args,
        kwargs,
        task.name,
        task_run_context.get(),
        flow_ctx.run.id if flow_ctx else "",
        run_label(flow_ctx.run) if flow_ctx else "",
        bool(flow_ctx and flow_ctx.log_prints),
        settings.current().log_level,
        task.timeout_seconds,
        task.timeout_mode,
    )
    module = sys.modules.get(getattr(task.fn, "__module__", None) or "")
    try:
        if (
            module is None
            or module.__name__ == "__main__"  # cloudpickle ships __main__ by value itself
            or module.__name__ in cloudpickle.list_registry_pickle_by_value()
            or not ships_by_value(module.__name__)
        ):
            blob = cloudpickle.dumps(call, protocol=_PROTOCOL)
        else:
            # Registered only while pickling, so results pickled for the journal
            # keep referring to the module's classes by name.
            with _by_value_lock:
                cloudpickle.register_pickle_by_value(module)
                try:
                    blob = cloudpickle.dumps(call, protocol=_PROTOCOL)
                finally:
                    cloudpickle.unregister_pickle_by_value(module)
    except Exception as exc:
        raise SerializationError(
            f"task {task.name!r} cannot be sent to a worker: its function or arguments "
            f"cannot be pickled ({type(exc).__name__}: {exc}); pass picklable arguments "
            "or run it on ThreadPoolTaskRunner"
        ) from exc
    return pickle.dumps((task.name, blob), protocol=_PROTOCOL)


def run_packed(payload: bytes) -> bytes:
    """Run a packed task body here (in the worker); the outcome, packed."""
    task_name, blob = pickle.loads(payload)  # from the flow's process: trusted
    try:
        call: BodyCall = pickle.loads(blob)
    except Exception as exc:
        error = SerializationError(
            f"task {task_name!r} could not be loaded in the worker "
            f"({type(exc).__name__}: {exc}); its module must be importable there"
        )
        return _outcome([], "raised", error, task_name)
    lines = BodyLines(call.flow_run_id, call.run_label, call.log_prints, call.log_level)
    if call.log_prints:
        capture_prints()
    lines_token = body_lines.set(lines)
    context_token = task_run_context.set(call.context)
    own = None
    try:
        if call.timeout_seconds is None:
            value = call.fn(*call.args, **call.kwargs)
        else:
            own = RunTimeout(f"task {task_name!r}", call.timeout_seconds)
            value = call_with_timeout(
                call.fn, call.args, call.kwargs, call.timeout_seconds, call.timeout_mode, own
            )
    except BaseException as exc:
        status = "timed_out" if exc is own else "raised"
        return _outcome(lines.lines, status, exc, task_name, traceback.format_exc())
    finally:
        task_run_context.reset(context_token)
        body_lines.reset(lines_token)
    return _outcome(lines.lines, "ok", value, task_name)


def _outcome(
    lines: list[CapturedLine], status: str, value: Any, task_name: str, trace: str = ""
) -> bytes:
    import cloudpickle

    type_name = message = ""
    if status != "ok":
        type_name, message = _qualified(type(value)), str(value)
    blob: bytes | None = None
    try:
        pickled: bytes = cloudpickle.dumps(value, protocol=_PROTOCOL)
        if status != "ok":
            pickle.loads(pickled)  # some exceptions pickle but do not load (their __init__)
        blob = pickled
    except Exception as exc:
        if status == "ok":
            error = SerializationError(
                f"the result of task {task_name!r} (of type {type(value).__qualname__}) "
                f"cannot be sent back from the worker ({type(exc).__name__}: {exc}); "
                "return a picklable value"
            )
            return _outcome(lines, "raised", error, task_name)
    return pickle.dumps((lines, status, blob, type_name, message, trace), protocol=_PROTOCOL)


def _qualified(cls: type) -> str:
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def unpack(data: bytes, task: Any, timeout: RunTimeout | None) -> Any:
    """A worker's outcome, back in the flow's process: journal its lines; return or raise."""
    lines, status, blob, type_name, message, trace = pickle.loads(data)  # our worker's
    write_lines(lines)
    if status == "timed_out" and timeout is not None:
        raise timeout  # this task's own deadline: the engine treats it as such
    value = None
    try:
        value = pickle.loads(blob) if blob is not None else None
    except Exception as exc:
        if status == "ok":
            raise SerializationError(
                f"the result of task {task.name!r} could not be loaded in the flow's process "
                f"({type(exc).__name__}: {exc})"
            ) from None
    if status == "ok":
        return value
    if not isinstance(value, BaseException):
        value = RemoteTaskError(task.name, type_name, message)
    if trace and value.__cause__ is None:
        value.__cause__ = RemoteTraceback(trace)
    raise value
