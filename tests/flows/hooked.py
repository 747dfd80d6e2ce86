"""A flow with hooks on everything; each hook appends "<event> <name> <state>" to a side file.

HOOKED_SIDE_FILE: the side file. HOOKED_FAIL: the task "second" raises.
HOOKED_KILL: the process SIGKILLs itself inside "second".
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from persevere import State, flow, task


def _note(event: str) -> Any:
    def hook(obj: Any, run: Any, state: State) -> None:
        with open(os.environ["HOOKED_SIDE_FILE"], "a") as side:
            side.write(f"{event} {obj.name} {state.name}\n")

    hook.__qualname__ = f"note_{event}"
    return hook


HOOKS = {e: [_note(e)] for e in ("on_running", "on_completion", "on_failure", "on_crashed")}


@task(**HOOKS)
def first() -> int:
    return 1


@task(**HOOKS)
def second(x: int) -> int:
    if os.environ.get("HOOKED_KILL"):
        time.sleep(0.2)  # long enough for the start of this task run to be committed
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("HOOKED_FAIL"):
        raise RuntimeError("second fails")
    return x + 1


@flow(**HOOKS)
def hooked() -> int:
    return second(first())
