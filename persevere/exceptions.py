"""Every error type a persevere user can see.

One root, :class:`PersevereError`, so that a caller can catch "anything from
persevere"; a subclass per thing a user or caller can act on, carrying the ids
it concerns as attributes. Signals that user code must not swallow with
``except Exception`` derive from :class:`BaseException` instead.
"""

from __future__ import annotations

import signal
from concurrent.futures import CancelledError


class PersevereError(Exception):
    """Root of every error persevere raises on purpose."""


class InvalidTransition(PersevereError):
    """A move between two states that the state graph does not allow."""

    def __init__(self, source: str, target: str, run_id: str | None = None) -> None:
        self.source = source
        self.target = target
        self.run_id = run_id
        where = f" for run {run_id}" if run_id else ""
        super().__init__(f"illegal transition {source} -> {target}{where}")


class VersionConflict(PersevereError):
    """A compare-and-set lost: somebody else moved the run first."""

    def __init__(self, run_id: str, expected: int, actual: int | None) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {run_id} was changed by another writer "
            f"(expected version {expected}, found {actual}); reload it and try again"
        )


class LeaseLost(PersevereError):
    """This process no longer owns the run it is executing."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"lost the lease on run {run_id}: another process took it over "
            "(it was declared crashed); this execution stops"
        )


class RunNotFound(PersevereError, LookupError):
    """No run matches the id (or id prefix) given."""

    def __init__(self, run_id: str, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(detail or f"no run with id {run_id!r}; `persevere runs ls` lists them")


class RunNotResumable(PersevereError):
    """The run is in a state from which it cannot be resumed."""

    def __init__(self, run_id: str, state_name: str, why: str = "") -> None:
        self.run_id = run_id
        self.state_name = state_name
        super().__init__(
            why or f"run {run_id} is {state_name}; only Crashed, Failed or Cancelled runs resume"
        )


class RunKeyConflict(PersevereError):
    """A run key is already taken by a run of another flow or other parameters."""

    def __init__(self, run_key: str, detail: str) -> None:
        self.run_key = run_key
        super().__init__(f"run key {run_key!r} {detail}")


class NonDeterminismError(PersevereError):
    """Replayed flow code called a different task than the journal recorded."""

    def __init__(self, run_id: str, position: int, recorded: str, called: str) -> None:
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.called = called
        super().__init__(
            f"non-deterministic replay of run {run_id}: call #{position} was task "
            f"{recorded!r} when recorded, but the flow now calls {called!r} there; "
            "restore the old call order or start a new run"
        )


class SerializationError(PersevereError, TypeError):
    """A value could not be stored or loaded with the chosen serializer."""


class TamperedResult(SerializationError):
    """A signed result failed its HMAC check; it is refused, never unpickled."""


class DatabaseError(PersevereError):
    """The database file cannot be used (not SQLite, unreadable, ...)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}")


class SchemaTooNew(DatabaseError):
    """The database was written by a newer persevere; it is left untouched."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            path,
            f"schema version {found} is newer than this persevere supports ({supported}); "
            "upgrade persevere (the file was not changed)",
        )


class EntrypointError(PersevereError):
    """A ``file.py:func`` or ``module:func`` reference that cannot be loaded."""


class ParameterError(PersevereError, TypeError):
    """A flow parameter that is missing, unknown or of the wrong type."""


class RunTimeout(PersevereError, TimeoutError):
    """A task or flow ran past its ``timeout_seconds``; it ends TimedOut."""

    def __init__(self, what: str, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"{what} timed out after {seconds:g} s")


class TaskRunCancelled(PersevereError, CancelledError):
    """A submitted task call was cancelled before it started; it has no result."""

    def __init__(self, task_name: str, task_run_id: str | None) -> None:
        self.task_name = task_name
        self.task_run_id = task_run_id
        super().__init__(f"task {task_name!r} was cancelled before it started, so it has no result")

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return (type(self), (self.task_name, self.task_run_id))


class TaskProcessDied(PersevereError):
    """The process running a task's body died (killed, out of memory) before it answered."""

    def __init__(self, task_name: str, pid: int | None, exitcode: int | None) -> None:
        self.task_name = task_name
        self.pid = pid
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            how = f"was killed by {_signal_name(-exitcode)}"
            if exitcode == -signal.SIGKILL:
                how += " (out of memory?)"
        else:
            how = f"exited with code {exitcode} (see its stderr)" if exitcode else "went away"
        super().__init__(
            f"the process running task {task_name!r} (pid {pid}) {how} before the body "
            "returned; the attempt failed, and a retry runs in a new process"
        )

    def __reduce__(self) -> tuple[type, tuple[str, int | None, int | None]]:
        return (type(self), (self.task_name, self.pid, self.exitcode))


class RemoteTaskError(PersevereError):
    """A task body run in another process raised an exception that could not be sent back."""

    def __init__(self, task_name: str, type_name: str, message: str) -> None:
        self.task_name = task_name
        self.type_name = type_name
        self.message = message
        super().__init__(
            f"task {task_name!r} raised {type_name}: {message} "
            "(the exception itself could not be pickled back from the worker)"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.task_name, self.type_name, self.message))


class MissingDependency(PersevereError, ImportError):
    """An optional feature whose extra is not installed."""

    def __init__(self, feature: str, missing: str, extra: str) -> None:
        self.missing = missing
        super().__init__(
            f"{feature} needs {missing}, which is not installed: pip install 'persevere[{extra}]'"
        )


class TaskRunnerClosed(BaseException):
    """The task runner was shut down under a task body (its flow run is ending).

    A ``BaseException``: the call is journaled Crashed and not retried; a
    resume runs it again.
    """

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        super().__init__(
            f"the task runner was shut down before task {task_name!r} finished "
            "(its flow run ended); resume the run to run it again"
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a flow run; it was journaled Crashed and can be resumed.

    A ``KeyboardInterrupt``, so code that catches that still does.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} was interrupted; `persevere runs resume {run_id}` goes on")


class Abort(PersevereError):
    """Raise inside a task or flow to fail it at once, without retries."""


class ConcurrencyError(PersevereError):
    """A concurrency limit that cannot be used as asked (missing, too small, no decay)."""


class ConcurrencySlotTimeout(PersevereError, TimeoutError):
    """No concurrency slot was free within ``timeout_seconds``."""

    def __init__(self, names: list[str], seconds: float, reason: str) -> None:
        self.names = names
        self.seconds = seconds
        super().__init__(
            f"no slot of {', '.join(repr(n) for n in names)} within {seconds:g} s ({reason})"
        )


class DeploymentNotFound(PersevereError, LookupError):
    """No deployment has the name given."""

    def __init__(self, name: str, near: list[str] | None = None) -> None:
        self.name = name
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        if "/" not in name:
            hint = "; deployment names are flow-name/deployment-name" + hint
        super().__init__(f"no deployment {name!r}{hint} (`persevere deployments ls` lists them)")


class QueueNotFound(PersevereError, LookupError):
    """No work queue has the name given."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no work queue {name!r}; `persevere queues ls` lists them, "
            f"`persevere queues create {name}` makes it"
        )


class RunNotCancellable(PersevereError):
    """The run has ended, or cannot be cancelled from here."""

    def __init__(self, run_id: str, why: str) -> None:
        self.run_id = run_id
        super().__init__(why)


class Terminated(BaseException):
    """SIGTERM reached a process executing a flow run (a cancel, or a worker
    shutting down). Not an ``Exception``: the flow's code does not catch it."""

    def __init__(self, signum: int = 15) -> None:
        self.signum = signum
        self.run_id: str | None = None  # the outermost flow run it stopped, once journaled
        super().__init__(f"terminated by signal {signum}")


class RunSuspended(PersevereError):
    """The flow run suspended itself (``suspend_flow_run``, or a long ``persevere.sleep``
    under a worker): its process let go of it, and a resume (or its wake-up time) goes on
    at the line after the call."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} is suspended: {message}")


class PauseRejected(PersevereError):
    """Raised at a ``pause_flow_run`` / ``suspend_flow_run`` call that was rejected
    (``persevere runs reject``) and waited for no input to carry a yes or no.

    ``reason`` is what the rejecter gave (may be empty); ``by`` says who rejected it.
    """

    def __init__(self, run_id: str, key: str, detail: str) -> None:
        self.run_id, self.key = run_id, key
        by, _, reason = detail.partition(": ")
        self.by = by.removeprefix("rejected by ")
        self.reason = reason
        super().__init__(f"pause {key!r} of run {run_id} was {detail or 'rejected'}")


class InputError(PersevereError, ValueError):
    """An input given to resume a paused run does not fit the type the pause waits for."""

    def __init__(self, run_id: str, detail: str) -> None:
        self.run_id = run_id
        super().__init__(f"input refused for run {run_id}: {detail}; the run stays Paused")


class Suspend(BaseException):
    """The engine's signal that the run has been journaled Suspended: unwind the flow."""


class PauseTimedOut(BaseException):
    """The engine's signal that a pause timed out: end the run Failed (or Cancelled)."""

    def __init__(self, cancel: bool, message: str) -> None:
        self.cancel = cancel
        super().__init__(message)


class RunEnded(BaseException):
    """The engine's signal that somebody ended the run while it was paused (a cancel)."""


class ScheduleNotFound(PersevereError, LookupError):
    """No schedule of the deployment has the id (or id prefix) given."""

    def __init__(self, deployment: str, schedule_id: str, detail: str = "") -> None:
        self.deployment = deployment
        self.schedule_id = schedule_id
        super().__init__(
            detail
            or f"deployment {deployment!r} has no schedule {schedule_id!r} "
            f"(`persevere deployments schedule ls {deployment}` lists them)"
        )


class AutomationNotFound(PersevereError, LookupError):
    """No automation (or firing) has the name or id given."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no automation {name!r} (`persevere automations ls` lists them; a name, an id "
            "or a unique id prefix of 4 or more characters will do)"
        )
