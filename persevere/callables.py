"""What Flow and Task objects share: they stand in for the function they wrap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .journal.results import SERIALIZERS
from .statemachine import State
from .statemachine.retries import RetryPolicy

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
