"""Flows for the deployment tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from persevere import flow


@flow
def greet(name: str, punctuation: str = "!") -> str:
    """Say hello."""
    return f"hello {name}{punctuation}"


@flow
def add(a: int, b: int = 1) -> int:
    return a + b


@flow
def dated(when: dt.date, label: str | None = None) -> dict[str, Any]:
    return {"when": when.isoformat(), "weekday": when.isoweekday(), "label": label}


@flow
def anything(**kwargs: Any) -> dict[str, Any]:
    return kwargs


@flow
def boom() -> None:
    raise RuntimeError("kaboom on purpose")


class Box:
    """A value only this module's importers can unpickle."""

    def __init__(self, value: int) -> None:
        self.value = value


@flow(result_serializer="pickle")
def boxed() -> Box:
    return Box(7)


@flow(name="team/etl")
def slashed() -> None:
    pass


#: A flow made from another with other options, under its own module-level name.
add_with_retries = add.with_options(retries=2)
