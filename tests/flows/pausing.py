"""Flows that sleep, pause and suspend, for the tests of durable waits."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import persevere
from persevere import flow, task


@dataclasses.dataclass
class Approval:
    approved: bool
    comment: str = ""


def _mark(name: str) -> None:
    """Append a line to the side file, so a test can count executions."""
    side = os.environ.get("PAUSING_SIDE")
    if side:
        with Path(side).open("a") as f:
            f.write(name + "\n")


@task
def prepare(x: int) -> int:
    _mark("prepare")
    return x * 2


@task
def publish(y: int) -> int:
    _mark("publish")
    return y + 1


@flow
def approval(x: int = 1, timeout: float = 600) -> dict[str, object]:
    y = prepare(x)
    answer = persevere.suspend_flow_run(timeout=timeout, key="review", wait_for_input=Approval)
    if not answer.approved:
        return {"published": None, "comment": answer.comment}
    return {"published": publish(y), "comment": answer.comment}


@flow
def gate(x: int = 1, timeout: float = 600, on_timeout: str = "fail") -> int:
    y = prepare(x)
    persevere.pause_flow_run(timeout=timeout, key="gate", on_timeout=on_timeout)
    return publish(y)


@flow
def yes_no(x: int = 1) -> object:
    y = prepare(x)
    ok = persevere.suspend_flow_run(key="go", wait_for_input=bool)
    return publish(y) if ok else "stopped"


@flow
def sleepy(x: int = 1, seconds: float = 1.0) -> int:
    y = prepare(x)
    persevere.sleep(seconds)
    return publish(y)
