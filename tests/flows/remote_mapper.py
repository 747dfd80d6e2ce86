"""A flow that maps tasks over the runner named by REMOTE_MAPPER_RUNNER.

REMOTE_MAPPER_RUNNER: "thread", "process" or "dask:<scheduler address>".
Each body appends "index idempotency-key pid" to the side file it is given
(a parameter, not an environment variable: Dask workers do not share this
process's environment), after a short pause.
"""

from __future__ import annotations

import os
import time

from persevere import (
    DaskTaskRunner,
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
    flow,
    idempotency_key,
    task,
)


def _runner() -> TaskRunner:
    name = os.environ.get("REMOTE_MAPPER_RUNNER", "thread")
    if name == "process":
        return ProcessPoolTaskRunner(max_workers=2)
    if name.startswith("dask:"):
        return DaskTaskRunner(address=name.removeprefix("dask:"))
    return ThreadPoolTaskRunner(max_workers=2)


@task
def square(i: int, side: str, pause: float) -> int:
    time.sleep(pause)
    with open(side, "a") as out:
        out.write(f"{i} {idempotency_key()} {os.getpid()}\n")
    return i * i


@flow(task_runner=_runner())
def remote_mapper(side: str, n: int = 24, pause: float = 0.05) -> int:
    return sum(square.map(range(n), side=side, pause=pause).result())
