"""The ``@task`` decorator and the Task object it makes."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .callables import Hook, RunOptions
from .statemachine import State
from .statemachine.caching import NO_CACHE, CachePolicy
from .statemachine.retries import DelaySpec
from .worker import run_task
from .worker.task_runs import map_task, submit_task

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Task(RunOptions, Generic[P, R]):
    """A Python function whose calls inside a flow are journaled task runs.

    Inside a flow run, a call whose task run completed before (in an earlier
    execution of the same flow run) returns the recorded result without
    running the body. Outside a flow it is a plain function call.
    """

    fn: Callable[P, R]
    name: str
    result_serializer: str = "json"
    description: str | None = None
    cache_policy: CachePolicy = NO_CACHE
    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None
    cache_expiration: datetime.timedelta | None = None
    refresh_cache: bool = False
    timeout_mode: str = "interrupt"
    tags: Sequence[str] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timeout_mode not in ("interrupt", "process"):
            raise ValueError(f"timeout_mode={self.timeout_mode!r}; use 'interrupt' or 'process'")
        if isinstance(self.tags, str) or not all(isinstance(t, str) and t for t in self.tags):
            raise ValueError(f"tags={self.tags!r}; give a list of non-empty strings")
        object.__setattr__(self, "tags", tuple(dict.fromkeys(self.tags)))

    @property
    def task_key(self) -> str:
        """What identifies this task in the journal (with the call's dynamic key)."""
        return self.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return_state = bool(kwargs.pop("return_state", False))
        wait_for: Any = kwargs.pop("wait_for", None)
        return run_task(self, args, kwargs, return_state, None, wait_for)  # type: ignore[no-any-return]

    def submit(self, *args: Any, wait_for: list[Any] | None = None, **kwargs: Any) -> Any:
        """Run the call on the flow's task runner; returns a :class:`PersevereFuture` at once.

        Futures among the arguments are waited for and replaced by their
        values; ``wait_for`` names futures to wait for without passing them.
        """
        return submit_task(self, args, kwargs, wait_for)

    def map(self, *args: Any, wait_for: list[Any] | None = None, **kwargs: Any) -> Any:
        """Submit one call per element of the iterable arguments; ``unmapped(x)`` repeats x.

        Returns a list of futures with ``.result()`` for all of them. Every
        call waits for the futures in ``wait_for``.
        """
        return map_task(self, args, kwargs, wait_for)

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with other options."""
        return dataclasses.replace(self, **changes)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    result_serializer: str = "json",
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: DelaySpec = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[[Any, Any, State], bool] | None = None,
    cache_policy: CachePolicy = NO_CACHE,
    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None,
    cache_expiration: datetime.timedelta | None = None,
    refresh_cache: bool = False,
    on_running: Sequence[Hook] = (),
    on_completion: Sequence[Hook] = (),
    on_failure: Sequence[Hook] = (),
    on_crashed: Sequence[Hook] = (),
    on_cancellation: Sequence[Hook] = (),
    timeout_seconds: float | None = None,
    timeout_mode: str = "interrupt",
    tags: Sequence[str] = (),
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    result_serializer: str = "json",
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: DelaySpec = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[[Any, Any, State], bool] | None = None,
    cache_policy: CachePolicy = NO_CACHE,
    cache_key_fn: Callable[[Any, dict[str, Any]], str | None] | None = None,
    cache_expiration: datetime.timedelta | None = None,
    refresh_cache: bool = False,
    on_running: Sequence[Hook] = (),
    on_completion: Sequence[Hook] = (),
    on_failure: Sequence[Hook] = (),
    on_crashed: Sequence[Hook] = (),
    on_cancellation: Sequence[Hook] = (),
    timeout_seconds: float | None = None,
    timeout_mode: str = "interrupt",
    tags: Sequence[str] = (),
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: each call inside a flow is a journaled task run.

    Args:
        name: the task's name and key in the journal (default: the function's
            name). Renaming a task changes its key: a run recorded under the
            old name replays only under that name.
        result_serializer: ``"json"`` (default) or ``"pickle"`` (signed).
        description: free text (default: the docstring).
        retries: how many times a failed call is tried again. Each wait is
            journaled (AwaitingRetry, with its wake-up time), so a process
            killed during the wait resumes with the same attempt count and
            waits only for what is left.
        retry_delay_seconds: seconds before each retry: a number, a list (one
            per retry, the last repeated), a function of the retry number, or
            ``exponential_backoff(factor)``.
        retry_jitter_factor: spread each delay at random within ``delay * (1 ± f)``.
        retry_condition_fn: ``(task, task_run, state) -> bool``; a failure it
            answers False to is not retried. ``raise persevere.Abort(...)``
            is never retried.
        cache_policy: what a cross-run cache key is made of: ``INPUTS``,
            ``TASK_SOURCE``, ``FLOW_PARAMETERS``, combined with ``+``;
            ``INPUTS - "arg"`` leaves an argument out. Default ``NO_CACHE``.
            A call whose key has a live entry is journaled Cached and its
            body does not run. Entries are shared by every flow on the database.
        cache_key_fn: ``(task_run_context, inputs) -> str | None``: the key
            yourself (None: do not cache this call).
        cache_expiration: how long an entry is good for (default: forever).
        refresh_cache: run the body even on a hit, and replace the entry.
        on_running, on_completion, on_failure, on_crashed, on_cancellation:
            functions ``(task, task_run, state)`` run once per transition into
            that state, even across a resume; one that raises is logged and
            never changes the run's state.
        timeout_seconds: end the call TimedOut (type FAILED) at this deadline;
            a timed-out attempt is retried like a failed one.
        timeout_mode: ``"interrupt"`` (default) raises ``TimeoutError`` inside
            the body (in the main thread; elsewhere the body is left running
            in its thread); ``"process"`` runs the body in a child process
            that is killed with its process group at the deadline (its result
            must be picklable; Unix only).
        tags: labels; a tag that names a concurrency limit (``persevere
            concurrency-limit create TAG N``) lets at most N task runs with
            that tag run at once, across every flow and process on the
            database. The others wait, journaled AwaitingConcurrencySlot, and
            are admitted in the order they asked.
    """

    def decorate(f: Callable[P, R]) -> Task[P, R]:
        return Task(
            f,
            name or f.__name__,
            result_serializer,
            description or (f.__doc__ or "").strip() or None,
            cache_policy,
            cache_key_fn,
            cache_expiration,
            refresh_cache,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            retry_jitter_factor=retry_jitter_factor,
            retry_condition_fn=retry_condition_fn,
            on_running=on_running,
            on_completion=on_completion,
            on_failure=on_failure,
            on_crashed=on_crashed,
            on_cancellation=on_cancellation,
            timeout_seconds=timeout_seconds,
            timeout_mode=timeout_mode,
            tags=tags,
        )

    return decorate(fn) if fn is not None else decorate
