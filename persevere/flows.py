"""The ``@flow`` decorator and the Flow object it makes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .callables import Hook, RunOptions
from .statemachine import State
from .statemachine.retries import DelaySpec
from .worker import deploying, run_flow
from .worker.deploying import DEFAULT_QUEUE, Deployment
from .worker.runners import TaskRunner, ThreadPoolTaskRunner

if TYPE_CHECKING:
    from .schedules import Schedule

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Flow(RunOptions, Generic[P, R]):
    """A Python function whose calls are durable, journaled flow runs.

    Call it like the function. ``return_state=True`` returns the final
    :class:`~persevere.State` instead of the value.
    """

    fn: Callable[P, R]
    name: str
    log_prints: bool = False
    result_serializer: str = "json"
    run_key: str | None = None
    description: str | None = None
    task_runner: TaskRunner = dataclasses.field(default_factory=ThreadPoolTaskRunner)
    max_auto_resumes: int = 3

    __persevere_flow__ = True

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return_state = bool(kwargs.pop("return_state", False))
        return run_flow(self, args, kwargs, return_state)  # type: ignore[no-any-return]

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy of this flow with other options, e.g. ``with_options(run_key="nightly")``."""
        return dataclasses.replace(self, **changes)

    def deploy(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        queue: str = DEFAULT_QUEUE,
        tags: Iterable[str] = (),
        description: str | None = None,
        schedules: Iterable[Schedule] | None = None,
    ) -> Deployment:
        """Register this flow as deployment ``<flow name>/<name>``, or update it.

        A worker (``persevere worker start``) polling ``queue`` executes the
        runs made with ``persevere deployments run`` or
        :func:`persevere.run_deployment`. The flow must be defined at the top
        level of a ``.py`` file: the worker imports it from there (so call
        ``deploy`` under ``if __name__ == "__main__":``, not on import).

        Args:
            name: the deployment's name (without ``/``).
            parameters: default parameters of its runs, checked against the flow.
            queue: the work queue its runs wait on (made if missing).
            tags: tags of the deployment and its runs.
            description: shown by ``persevere deployments inspect`` (default:
                the flow's description).
            schedules: ``persevere.Cron``, ``Interval`` or ``RRule`` objects: when
                runs are made by themselves. They replace the deployment's
                schedules (one already there as given is kept, with its runs
                made ahead); None (the default) keeps them.

        Returns:
            The deployment as stored.
        """
        specs = None if schedules is None else [s.spec() for s in schedules]
        deployment, _ = deploying.deploy(
            self, name, parameters, queue, tags, description, schedules=specs
        )
        return deployment


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    *,
    name: str | None = None,
    log_prints: bool = False,
    result_serializer: str = "json",
    run_key: str | None = None,
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: DelaySpec = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[[Any, Any, State], bool] | None = None,
    on_running: Sequence[Hook] = (),
    on_completion: Sequence[Hook] = (),
    on_failure: Sequence[Hook] = (),
    on_crashed: Sequence[Hook] = (),
    on_cancellation: Sequence[Hook] = (),
    timeout_seconds: float | None = None,
    task_runner: TaskRunner | None = None,
    max_auto_resumes: int = 3,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    log_prints: bool = False,
    result_serializer: str = "json",
    run_key: str | None = None,
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: DelaySpec = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[[Any, Any, State], bool] | None = None,
    on_running: Sequence[Hook] = (),
    on_completion: Sequence[Hook] = (),
    on_failure: Sequence[Hook] = (),
    on_crashed: Sequence[Hook] = (),
    on_cancellation: Sequence[Hook] = (),
    timeout_seconds: float | None = None,
    task_runner: TaskRunner | None = None,
    max_auto_resumes: int = 3,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow: each call is a durable flow run.

    Args:
        name: the flow's name (default: the function's name).
        log_prints: also store what ``print`` writes with the run's logs.
        result_serializer: ``"json"`` (default) or ``"pickle"`` (signed).
        run_key: an idempotency key; a second call with the same key resumes
            the unfinished run or returns the completed run's result.
        description: shown by ``persevere`` listings (default: the docstring).
        retries, retry_delay_seconds, retry_jitter_factor, retry_condition_fn:
            as on ``@task``. A retried flow run replays its completed task
            runs and runs again from the one that failed.
        on_running, on_completion, on_failure, on_crashed, on_cancellation:
            functions ``(flow, flow_run, state)`` run once per transition into
            that state, even across a resume. ``on_crashed`` runs when the
            crash is found by the process that resumes the run.
        timeout_seconds: end the run TimedOut at this deadline (by an
            interrupt, as ``@task(timeout_mode="interrupt")``).
        task_runner: where ``.submit`` and ``.map`` run task bodies (default
            ``ThreadPoolTaskRunner()``). The run waits for every submitted
            call before it ends.
        max_auto_resumes: how many times in a row a worker resumes a run of
            this flow by itself after it crashed (its process died); 0: never.
    """
    if isinstance(max_auto_resumes, bool) or not isinstance(max_auto_resumes, int):
        raise TypeError(f"max_auto_resumes must be an int, not {max_auto_resumes!r}")
    if max_auto_resumes < 0:
        raise ValueError(f"max_auto_resumes must be 0 or more, not {max_auto_resumes}")

    def decorate(f: Callable[P, R]) -> Flow[P, R]:
        return Flow(
            f,
            name or f.__name__,
            log_prints,
            result_serializer,
            run_key,
            description or (f.__doc__ or "").strip() or None,
            task_runner or ThreadPoolTaskRunner(),
            max_auto_resumes,
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
        )

    return decorate(fn) if fn is not None else decorate
