"""Flows for the CLI tests, steered by environment variables read at call time.

CLI_TEST_SIDE: every flow and task body appends its name (one line) to this file.
CLI_TEST_FAIL: while the file it names exists, task `second` raises and flow
`interruptible` raises KeyboardInterrupt.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from persevere import flow, get_run_logger, task


def _mark(name: str) -> None:
    path = os.environ.get("CLI_TEST_SIDE")
    if path:
        with open(path, "a") as side:
            side.write(name + "\n")


def _failing() -> bool:
    fail = os.environ.get("CLI_TEST_FAIL")
    return bool(fail) and os.path.exists(fail)


@task
def first(n: int) -> int:
    _mark("first")
    return n + 1


@task
def second(x: int) -> int:
    _mark("second")
    if _failing():
        raise RuntimeError("second failed on purpose")
    return x * 10


@flow
def pipeline(n: int = 1) -> int:
    """(n + 1) * 10, in two tasks."""
    _mark("pipeline")
    return second(first(n))


@flow
def typed(n: int, when: dt.date, xs: list[int] | None = None, label: str = "x") -> dict[str, Any]:
    return {
        "n": n,
        "n_type": type(n).__name__,
        "when": when.isoformat(),
        "when_type": type(when).__name__,
        "xs": xs,
        "label": label,
    }


@flow
def echo(value: Any) -> dict[str, Any]:
    """The value as the flow received it, and its Python type."""
    return {"value": value, "type": type(value).__name__}


@flow
def boom() -> None:
    _mark("boom")
    raise RuntimeError("kaboom on purpose")


@flow(log_prints=True)
def chatty(n: int = 2) -> str:
    get_run_logger().warning("logger line", n=n)
    print(f"printed line {n}")
    return "ok"


@flow(result_serializer="pickle")
def pickled() -> set[int]:
    return {1, 2}


@flow
def interruptible() -> str:
    _mark("interruptible")
    if _failing():
        raise KeyboardInterrupt
    return "done"


@flow
def child(x: int) -> int:
    _mark("child")
    return second(x)


@flow
def parent() -> int:
    return child(1)


def not_a_flow() -> None:
    """A plain function: `persevere run` must refuse it."""


@flow
def twice() -> int:
    """Two calls of one task: dynamic keys 0 and 1."""
    return first(1) + first(2)


@flow
def interruptible_parent() -> str:
    """Ctrl-C (a KeyboardInterrupt) while its subflow runs."""
    return interruptible()
