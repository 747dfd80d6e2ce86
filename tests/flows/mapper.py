"""A flow that maps 200 tasks over 4 threads; each appends "index key" to a side file."""

from __future__ import annotations

import os
import random
import time

from persevere import ThreadPoolTaskRunner, flow, idempotency_key, task


@task
def square(i: int) -> int:
    time.sleep(random.random() * float(os.environ.get("MAPPER_PAUSE", "0.01")))
    with open(os.environ["MAPPER_SIDE_FILE"], "a") as side:
        side.write(f"{i} {idempotency_key()}\n")
    return i * i


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def mapper(n: int = 200) -> int:
    return sum(square.map(range(n)).result())
