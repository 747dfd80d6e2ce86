"""What Flow and Task objects share: they stand in for the function they wrap."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .journal.results import SERIALIZERS
from .statemachine import State
from .statemachine.retries import DelaySpec, RetryPolicy

#: A state hook: called with the Flow or Task, its run record and the new State.
Hook = Callable[[Any, Any, State], Any]
HOOK_EVENTS = ("on_running", "on_completion", "on_failure", "on_crashed", "on_cancellation")


def adopt(wrapper: Any) -> None:
    """Check the options common to flows and tasks; give the wrapper its function's identity.

    ``wrapper`` is a frozen Flow or Task dataclass, hence ``object.__setattr__``.
    Sets ``wrapper.retry_policy`` from its retry options.
    """
    fn, result_serializer = wrapper.fn, wrapper.result_serializer
    if result_serializer not in SERIALIZERS:
        raise ValueError(f"result_serializer={result_serializer!r}; use one of {SERIALIZERS}")
    policy = RetryPolicy(wrapper.retries, wrapper.retry_delay_seconds, wrapper.retry_jitter_factor)
    object.__setattr__(wrapper, "retry_policy", policy)
    for event in HOOK_EVENTS:
        hooks = getattr(wrapper, event)
        hooks = (hooks,) if callable(hooks) else tuple(hooks)
        if not all(callable(h) for h in hooks):
            raise ValueError(f"{event} takes functions (obj, run, state); got {hooks!r}")
        object.__setattr__(wrapper, event, hooks)
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        object.__setattr__(wrapper, attr, getattr(fn, attr, None))
    object.__setattr__(wrapper, "__wrapped__", fn)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The options flows and tasks share: retries, state hooks, a timeout.

    Keyword-only, so that Flow and Task keep their own positional fields.
    """

    retries: int = 0
    retry_delay_seconds: DelaySpec = 0
    retry_jitter_factor: float | None = None
    retry_condition_fn: Callable[[Any, Any, State], bool] | None = None
    on_running: Sequence[Hook] = ()
    on_completion: Sequence[Hook] = ()
    on_failure: Sequence[Hook] = ()
    on_crashed: Sequence[Hook] = ()
    on_cancellation: Sequence[Hook] = ()
    timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        adopt(self)
