"""Flows for worker tests, steered by environment variables and side files.

WORKERS_SIDE_FILE: every task body appends its task run id and the time (ms) here.
WORKERS_KILL_FILE: `killed_once` SIGKILLs its own process the first time
(while this file does not exist; it creates it).
WORKERS_PID_FILE: `sleeper` writes the pid of its shell here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from persevere import flow, task
from persevere.context import task_run_context


def _mark() -> None:
    ctx = task_run_context.get()
    assert ctx is not None
    with open(os.environ["WORKERS_SIDE_FILE"], "a") as side:
        side.write(f"{ctx.task_run_id} {time.time_ns() // 1_000_000}\n")


@task
def step(i: int, seconds: float = 0.02) -> int:
    _mark()
    time.sleep(seconds)
    return i * 10


@flow
def short(n: int = 3, seconds: float = 0.02) -> int:
    return sum(step(i, seconds) for i in range(n))


@task
def die_once() -> None:
    _mark()
    kill_file = Path(os.environ["WORKERS_KILL_FILE"])
    if not kill_file.exists():
        kill_file.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)


@flow
def killed_once() -> int:
    first = step(1)
    die_once()
    return first + step(2)


@flow(max_auto_resumes=2)
def always_crashes() -> None:
    step(1)
    os.kill(os.getpid(), signal.SIGKILL)


@task
def shell_sleep() -> int:
    _mark()
    process = subprocess.Popen("sleep 600; true", shell=True)
    Path(os.environ["WORKERS_PID_FILE"]).write_text(str(process.pid))
    return process.wait()


def _note_cancelled(flow: object, run: object, state: object) -> None:
    with open(os.environ["WORKERS_SIDE_FILE"], "a") as side:
        side.write("on_cancellation 0\n")


@flow(on_cancellation=[_note_cancelled])
def sleeper() -> int:
    step(1)
    return shell_sleep()


@task
def hold() -> None:
    """Sleeps WORKERS_HOLD_SECONDS (default 0): long under one worker, short under another."""
    _mark()
    time.sleep(float(os.environ.get("WORKERS_HOLD_SECONDS", "0")))


@flow
def held() -> int:
    first = step(1)
    hold()
    return first
