"""A flow for crash tests: each task appends its index to a side file.

Fault points (read once, at import, so a resume in another process has none):
CRASHY_KILL_AFTER=k SIGKILLs the process right after task k returned;
CRASHY_KILL_INSIDE=k SIGKILLs it inside task k, after its side effect.
"""

from __future__ import annotations

import os
import signal
import time

from persevere import flow, idempotency_key, task

SIDE_FILE = os.environ.get("CRASHY_SIDE_FILE", "side.txt")
KILL_AFTER = int(os.environ.get("CRASHY_KILL_AFTER", "-1"))
KILL_INSIDE = int(os.environ.get("CRASHY_KILL_INSIDE", "-1"))
PAUSE = float(os.environ.get("CRASHY_PAUSE", "0"))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task
def step(i: int) -> int:
    with open(SIDE_FILE, "a") as side:
        side.write(f"{i} {idempotency_key()}\n")
    if i == KILL_INSIDE:
        _die()
    if PAUSE:
        time.sleep(PAUSE)
    return i * i


@flow
def crashy(n: int = 20) -> int:
    total = 0
    for i in range(n):
        total += step(i)
        if i == KILL_AFTER:
            _die()
    return total


if __name__ == "__main__":
    print(crashy())
