"""Flows that sleep, pause and suspend, for the tests of durable waits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from pathlib import Path

import pydantic

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
def approval(x: int = 1, timeout: float = 600, on_timeout: str = "fail") -> dict[str, object]:
    y = prepare(x)
    answer = persevere.suspend_flow_run(
        timeout=timeout, key="review", wait_for_input=Approval, on_timeout=on_timeout
    )
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


class Order(pydantic.BaseModel):
    item: str
    quantity: int = pydantic.Field(ge=1)


class Decision(pydantic.BaseModel):
    approved: bool
    reason: str | None = None


class Window(pydantic.BaseModel):
    start: dt.date
    at: dt.datetime | None = None
    ticket: uuid.UUID | None = None


INPUT_TYPES: dict[str, object] = {
    "dataclass": Approval,
    "model": Order,
    "decision": Decision,
    "window": Window,
    "bool": bool,
    "none": None,
}


@flow
def typed_gate(kind: str = "none", timeout: float | None = 600) -> dict[str, object]:
    """Pauses (its process waits) for an input of the type ``kind`` names; says what it got."""
    y = prepare(1)
    answer = persevere.pause_flow_run(timeout=timeout, wait_for_input=INPUT_TYPES[kind])
    shape = type(answer).__name__
    if dataclasses.is_dataclass(answer):
        return {"type": shape, "value": dataclasses.asdict(answer), "y": y}  # type: ignore[arg-type]
    if isinstance(answer, pydantic.BaseModel):
        return {"type": shape, "value": answer.model_dump(mode="json"), "y": y}
    return {"type": shape, "value": answer, "y": y}


@flow
def rejectable(x: int = 1) -> object:
    """A pause waiting for no input whose rejection the flow catches."""
    y = prepare(x)
    try:
        persevere.pause_flow_run(key="check")
    except persevere.PauseRejected as exc:
        return f"rejected: {exc.reason}"
    return publish(y)


@flow
def two_gates(x: int = 1) -> int:
    y = prepare(x)
    persevere.pause_flow_run(key="first")
    z = publish(y)
    persevere.pause_flow_run(key="second")
    return publish(z)


@flow
def keyed(x: int = 1) -> int:
    """Suspends at a key read from PAUSING_KEY (changing it changes the code's pause)."""
    y = prepare(x)
    persevere.suspend_flow_run(key=os.environ.get("PAUSING_KEY", "first"))
    return publish(y)


@flow
def sleep_then_check(x: int = 1, seconds: float = 3600) -> int:
    """Sleeps, then fails while the file PAUSING_FAIL names exists."""
    y = prepare(x)
    persevere.sleep(seconds)
    fail = os.environ.get("PAUSING_FAIL")
    if fail and Path(fail).exists():
        raise RuntimeError("failing after the sleep, on purpose")
    return publish(y)


@flow
def suspending_child() -> None:
    persevere.suspend_flow_run(key="inner")


@flow
def parent_of_suspender() -> None:
    suspending_child()


@task
def sleeps_inside(seconds: float) -> str:
    persevere.sleep(seconds)
    return "slept"


@task
def pauses_inside() -> None:
    persevere.pause_flow_run()


@flow
def task_sleeps(seconds: float = 3600) -> str:
    return sleeps_inside(seconds)


@flow
def task_pauses() -> None:
    pauses_inside()


@flow
def quick() -> str:
    """A flow that needs a worker's slot for a moment (marks nothing)."""
    return "done"


def _note_cancelled(flow: object, run: object, state: object) -> None:
    _mark("on_cancellation")


@flow(on_cancellation=[_note_cancelled])
def hooked_gate(x: int = 1, timeout: float = 600, on_timeout: str = "fail") -> int:
    """``gate`` with an ``on_cancellation`` hook (it marks the side file)."""
    y = prepare(x)
    persevere.pause_flow_run(timeout=timeout, key="gate", on_timeout=on_timeout)
    return publish(y)
