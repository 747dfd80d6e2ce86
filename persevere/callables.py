"""What Flow and Task objects share: they stand in for the function they wrap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .journal.results import SERIALIZERS


def adopt(wrapper: Any, fn: Callable[..., Any], result_serializer: str) -> None:
    """Check the options common to flows and tasks; give ``wrapper`` ``fn``'s identity.

    ``wrapper`` is a frozen dataclass, hence ``object.__setattr__``.
    """
    if result_serializer not in SERIALIZERS:
        raise ValueError(f"result_serializer={result_serializer!r}; use one of {SERIALIZERS}")
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        object.__setattr__(wrapper, attr, getattr(fn, attr, None))
    object.__setattr__(wrapper, "__wrapped__", fn)
