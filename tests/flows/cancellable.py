"""Flows for cancel and SIGTERM tests; side effects go to the file CANCELLABLE_SIDE_FILE.

``sleepy`` runs ``quick`` (notes "quick ran"), then ``nap``, which notes
"nap started" and sleeps CANCELLABLE_NAP seconds (default 30, read when the
task runs, so that a resume can make it short). Its flow hooks note
"<event> <flow name> <state name>". ``outer`` runs ``quick`` and then the
subflow ``inner``, which naps. ``patient`` fails and waits a minute for its
retry; ``instant`` returns at once.
"""

from __future__ import annotations

import os
import time
from typing import Any

from persevere import State, flow, task


def _note(line: str) -> None:
    with open(os.environ["CANCELLABLE_SIDE_FILE"], "a") as side:
        side.write(line + "\n")


def _hook(event: str) -> Any:
    def hook(obj: Any, run: Any, state: State) -> None:
        _note(f"{event} {obj.name} {state.name}")

    hook.__qualname__ = f"note_{event}"
    return hook


HOOKS = {e: [_hook(e)] for e in ("on_completion", "on_failure", "on_crashed", "on_cancellation")}


@task
def quick() -> int:
    _note("quick ran")
    return 1


@task
def nap() -> float:
    _note("nap started")
    seconds = float(os.environ.get("CANCELLABLE_NAP", "30"))
    time.sleep(seconds)
    return seconds


@flow(**HOOKS)
def sleepy() -> float:
    return quick() + nap()


@flow(**HOOKS)
def inner() -> float:
    return nap()


@flow(**HOOKS)
def outer() -> float:
    return quick() + inner()


@flow
def instant(x: int = 1) -> int:
    """A flow that returns at once (for a worker's handoff in the test process)."""
    return x + 1


@flow(retries=1, retry_delay_seconds=60, **HOOKS)
def patient() -> int:
    """Fails, and waits a minute in its process before its retry."""
    _note("patient ran")
    raise RuntimeError("not yet")
