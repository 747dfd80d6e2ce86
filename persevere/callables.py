"""What Flow and Task objects share: they stand in for the function they wrap."""

from __future__ import annotations

from typing import Any

from .journal.results import SERIALIZERS
from .statemachine.retries import RetryPolicy


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
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        object.__setattr__(wrapper, attr, getattr(fn, attr, None))
    object.__setattr__(wrapper, "__wrapped__", fn)
